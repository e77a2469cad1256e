"""The main job: train an ensemble of small MLPs on synthetic data, named axes mapped onto a mesh.

Every piece of distmap takes part: ``Stacked`` builds the ensemble, one
``distmap.vmap`` over ``(ensemble, batch)`` computes every member's loss on every
example, split over the mesh by the axis mapping from the flags; a named collective
(``distmap.pmean`` over ``batch``) normalises the hidden layer across the batch; and in
a multi-process run each process feeds its own rows through
``distmap.distributed.host_local_to_global``. Rank 0 prints progress, and at the end
the job trains again on one device without a mesh and checks that both agree.

With ``--checkpoint_dir=DIR`` (orbax-checkpoint: ``pip install -e ".[checkpoint]"``) the
sharded parameters are saved every ``--checkpoint_every`` steps, at the end, and when the run
is stopped (``distributed.stop_requested``: SIGTERM from a launcher or scheduler, the same
step on every rank; then the job ends with exit code 143, which no launcher restarts). Started
again with the same command it prints ``resumed from step K`` and ends with the same
parameters as a run that was never stopped (it prints their digest).

    python examples/ensemble.py --flagfile=configs/cpu_8dev.flags
    python launch/local.py --flagfile=configs/local_2proc.flags -- \\
        python examples/ensemble.py --flagfile=configs/local_2proc.flags --checkpoint_dir=/tmp/ens
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runs from a checkout too

import distmap.flags
from distmap import distributed  # at the top: a rank that exits non-zero then exits at once

distmap.flags.define_mesh_flags(mesh="data=-1", axis_mapping="batch=data")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps.")
_ENSEMBLE = flags.DEFINE_integer("ensemble_size", 4, "Members of the ensemble.")
_BATCH = flags.DEFINE_integer("batch_size", 512, "Global batch size, split over processes and devices.")
_FEATURES = flags.DEFINE_integer("features", 16, "Input features.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Hidden units per member.")
_LR = flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data and initialisation.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Print progress every this many steps.")
_CHECK = flags.DEFINE_bool("check", True, "Train again on one device at the end and compare.")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Save the sharded parameters here (orbax-checkpoint) and "
                                      "resume from the last checkpoint found there.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 10, "Save every this many steps (and at the end, and "
                                         "when stopped).", lower_bound=1)


AXES = ("ensemble", "batch", "feature", "hidden")  # every named axis of the program's arrays


def build(ensemble: int, features: int, hidden: int, seed: int) -> Any:
    """The ensemble: ``ensemble`` MLPs stacked along the named axis ``ensemble``."""
    import equinox as eqx
    import jax

    import distmap

    class MLP(eqx.Module):
        w1: distmap.NamedArray
        b1: distmap.NamedArray
        w2: distmap.NamedArray

        def __init__(self, key: jax.Array):
            k1, k2 = jax.random.split(key)
            self.w1 = distmap.random.normal(k1, {"feature": features, "hidden": hidden}) / features**0.5
            self.b1 = distmap.zeros({"hidden": hidden})
            self.w2 = distmap.random.normal(k2, {"hidden": hidden}) / hidden**0.5

        def __call__(self, x: distmap.NamedArray) -> distmap.NamedArray:
            h = distmap.dot(x, self.w1, axis="feature") + self.b1
            # Normalise each hidden unit over the whole batch: a named collective across the map.
            mu = distmap.pmean(h, "batch")
            var = distmap.pmean((h - mu) ** 2, "batch")
            h = distmap.tanh((h - mu) / distmap.sqrt(var + 1e-5))
            return distmap.dot(h, self.w2, axis="hidden")

    keys = jax.random.split(jax.random.key(seed), ensemble)
    return distmap.Stacked.init(distmap.Axis("ensemble", ensemble), MLP)(keys)


def make_data(batch: int, features: int, seed: int) -> tuple[Any, Any]:
    """A synthetic regression problem: ``y = sin(x . u) + 0.1 * noise``, the same on every process."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    u = rng.standard_normal(features).astype(np.float32) / features**0.5
    y = (np.sin(x @ u) + 0.1 * rng.standard_normal(batch)).astype(np.float32)
    return x, y


def loss_fn(model: Any, x: Any, y: Any, **vmap_options: Any) -> Any:
    """Mean squared error, summed over the ensemble: one map over both named axes."""
    import distmap

    def per_example(member: Any, xb: Any, yb: Any) -> Any:
        return (member(xb) - yb) ** 2

    err = distmap.vmap(per_example, ("ensemble", "batch"), **vmap_options)(model.stacked, x, y)
    return err.mean("batch").sum().scalar()


def train(model: Any, x: Any, y: Any, steps: int, lr: float, *, log: Any = None, start: int = 0,
          after_step: Any = None, **vmap_options: Any) -> tuple[Any, list[float]]:
    """Plain SGD on the ensemble from step ``start`` to ``steps``; returns the trained model and the losses.

    ``after_step(steps_done, model)`` runs after every step; it returning ``True`` ends the loop.
    """
    import equinox as eqx
    import jax

    @eqx.filter_jit
    def step(m: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        loss, grads = eqx.filter_value_and_grad(lambda mm: loss_fn(mm, xb, yb, **vmap_options))(m)
        m = jax.tree_util.tree_map(lambda p, g: p - lr * g, m, grads)
        return m, loss

    losses = []
    for i in range(start, steps):
        model, loss = step(model, x, y)
        losses.append(float(loss))
        if log is not None:
            log(i, losses[-1])
        if after_step is not None and after_step(i + 1, model):
            break
    return model, losses


class Checkpoints:
    """The sharded parameters in ``directory``, through orbax-checkpoint (every process writes its shards).

    Example (two lines of ``main``)::

        ckpt = Checkpoints("/tmp/ens", every=10)
        model, start = ckpt.restore(model)   # (model, 0) when the folder holds no checkpoint
    """

    def __init__(self, directory: str, every: int):
        try:
            import orbax.checkpoint as ocp
        except ImportError:
            raise app.UsageError('--checkpoint_dir needs orbax-checkpoint: pip install -e ".[checkpoint]"') from None
        self._ocp = ocp
        self.every = every
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True))

    def restore(self, model: Any) -> tuple[Any, int]:
        """``(model, step)`` from the last checkpoint, laid out as ``model`` is; ``(model, 0)`` if there is none."""
        import equinox as eqx
        import jax

        step = self.manager.latest_step()
        if step is None:
            return model, 0
        params, static = eqx.partition(model, eqx.is_array)
        target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params)
        restored = self.manager.restore(step, args=self._ocp.args.StandardRestore(target))
        return eqx.combine(restored, static), int(step)

    def save(self, step: int, model: Any) -> None:
        """Save ``model``'s arrays as step ``step`` (written in the background; :meth:`close` waits)."""
        import equinox as eqx

        if self.manager.latest_step() != step:
            self.manager.save(step, args=self._ocp.args.StandardSave(eqx.filter(model, eqx.is_array)))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Joins the run a launcher started (or runs alone), and checks every rank has the same flags.
    distributed.initialize_from_flags()
    import jax
    import numpy as np

    mesh = distmap.flags.mesh_from_flags()  # --mesh, and --dcn_mesh on devices that span TPU slices
    try:  # a rule for an axis the program lacks (a typo) would split nothing: refuse it
        mapping = distmap.flags.axis_mapping_from_flags(axis_names=AXES)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    rank, nproc = jax.process_index(), jax.process_count()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"distmap ensemble: {nproc} process(es), {len(jax.devices())} devices, mesh {dict(mesh.shape)}, "
        f"axis mapping {mapping}")

    x_all, y_all = make_data(_BATCH.value, _FEATURES.value, _SEED.value)
    if _BATCH.value % nproc:
        raise app.UsageError(f"--batch_size={_BATCH.value} must divide among {nproc} processes.")
    rows = slice(rank * _BATCH.value // nproc, (rank + 1) * _BATCH.value // nproc)
    local = {
        "x": distmap.named(x_all[rows], ("batch", "feature")),
        "y": distmap.named(y_all[rows], ("batch",)),
    }
    with distmap.axis_mapping(mapping), jax.set_mesh(mesh):
        data = distributed.host_local_to_global(local, mesh=mesh)
        model = distmap.shard(build(_ENSEMBLE.value, _FEATURES.value, _HIDDEN.value, _SEED.value), mesh=mesh)
        ckpt = Checkpoints(_CHECKPOINT_DIR.value, _CHECKPOINT_EVERY.value) if _CHECKPOINT_DIR.value else None
        first = 0
        if ckpt is not None:
            model, first = ckpt.restore(model)
            if first:
                say(f"resumed from step {first}")

        start = [time.perf_counter()]
        stopped = []

        def after_step(done: int, m: Any) -> bool:
            # Every rank, every step: a stop (SIGTERM to any rank) is seen at the same step on all of them.
            stopping = distributed.stop_requested(done)
            if ckpt is not None and (stopping or done % ckpt.every == 0 or done == _STEPS.value):
                ckpt.save(done, m)
            if stopping:
                stopped.append(done)
            return stopping

        def log(i: int, loss: float) -> None:
            if i == first:
                start[0] = time.perf_counter()  # throughput after the first (compiling) step
            elif (i + 1) % _LOG_EVERY.value == 0 or i + 1 == _STEPS.value:
                # Every rank at the same point: a rank that skipped or added a step fails here, named,
                # before a loss of mismatched collectives is printed (a no-op without the progress watch).
                distributed.verify(f"step {i + 1}")
                rate = (i - first) * _BATCH.value * _ENSEMBLE.value / max(time.perf_counter() - start[0], 1e-9)
                say(f"step {i + 1:4d}  loss {loss:.5f}  {rate:,.0f} member-examples/s")

        model, losses = train(model, data["x"], data["y"], _STEPS.value, _LR.value, log=log, start=first,
                              after_step=after_step)
    if ckpt is not None:
        ckpt.close()
    if stopped:
        say(f"stopped at step {stopped[0]}: " + (f"saved to {_CHECKPOINT_DIR.value}" if ckpt else
                                                  "nothing saved (no --checkpoint_dir)"))
        sys.exit(distributed.EXIT_STOPPED)  # a stop, not a failure: launchers do not restart it
    if losses:
        say(f"loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    ours = jax.tree_util.tree_leaves(distributed.global_to_host_local(_replicated(model, mesh)))
    say(f"final parameters sha256 {_digest(ours)}")

    if not _CHECK.value:
        return 0
    # The same training on one device, no mesh: the results must agree.
    with jax.default_device(jax.local_devices()[0]):
        ref_model = build(_ENSEMBLE.value, _FEATURES.value, _HIDDEN.value, _SEED.value)
        ref_data = (distmap.named(x_all, ("batch", "feature")), distmap.named(y_all, ("batch",)))
        ref_model, ref_losses = train(ref_model, *ref_data, _STEPS.value, _LR.value)
    theirs = jax.tree_util.tree_leaves(ref_model)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ours, theirs))
    loss_diff = max((abs(a - b) for a, b in zip(losses, ref_losses[first:])), default=0.0)
    ok = diff < 1e-3 and loss_diff < 1e-4
    say(f"check against one device: max parameter difference {diff:.2e}, max loss difference {loss_diff:.2e}: "
        + ("OK" if ok else "MISMATCH"))
    return 0 if ok else 1


def _digest(leaves: list[Any]) -> str:
    """sha256 of the parameters' bytes, in order: equal digests, bit-identical parameters."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for leaf in leaves:
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _replicated(tree: Any, mesh: Any) -> Any:
    """Every array of ``tree`` gathered onto every device, so each process can read it whole."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))(tree)


def _main(argv: list[str]) -> None:
    code = main(argv)
    sys.exit(code)  # looked up after initialize(): a non-zero code takes distmap's fast exit


if __name__ == "__main__":
    app.run(_main)
