"""The main job: train an ensemble of small MLPs on synthetic data, named axes mapped onto a mesh.

Every piece of distmap takes part: ``Stacked`` builds the ensemble, one
``distmap.vmap`` over ``(ensemble, batch)`` computes every member's loss on every
example, split over the mesh by the axis mapping from the flags; a named collective
(``distmap.pmean`` over ``batch``) normalises the hidden layer across the batch; and in
a multi-process run each process feeds its own rows through
``distmap.distributed.host_local_to_global``. Rank 0 prints progress, and at the end
the job trains again on one device without a mesh and checks that both agree.

    python examples/ensemble.py --flagfile=configs/cpu_8dev.flags
    python launch/local.py --flagfile=configs/local_2proc.flags -- \\
        python examples/ensemble.py --flagfile=configs/local_2proc.flags
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runs from a checkout too

import distmap.flags  # noqa: E402
from distmap import distributed  # noqa: E402  (at the top: a rank that exits non-zero then exits at once)

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


def train(model: Any, x: Any, y: Any, steps: int, lr: float, *, log: Any = None, **vmap_options: Any) -> tuple[Any, list[float]]:
    """Plain SGD on the ensemble; returns the trained model and the losses."""
    import equinox as eqx
    import jax

    @eqx.filter_jit
    def step(m: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        loss, grads = eqx.filter_value_and_grad(lambda mm: loss_fn(mm, xb, yb, **vmap_options))(m)
        m = jax.tree_util.tree_map(lambda p, g: p - lr * g, m, grads)
        return m, loss

    losses = []
    for i in range(steps):
        model, loss = step(model, x, y)
        losses.append(float(loss))
        if log is not None:
            log(i, losses[-1])
    return model, losses


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

        start = [time.perf_counter()]

        def log(i: int, loss: float) -> None:
            if i == 0:
                start[0] = time.perf_counter()  # throughput after the first (compiling) step
            elif (i + 1) % _LOG_EVERY.value == 0 or i + 1 == _STEPS.value:
                # Every rank at the same point: a rank that skipped or added a step fails here, named,
                # before a loss of mismatched collectives is printed (a no-op without the progress watch).
                distributed.verify(f"step {i + 1}")
                rate = i * _BATCH.value * _ENSEMBLE.value / (time.perf_counter() - start[0])
                say(f"step {i + 1:4d}  loss {loss:.5f}  {rate:,.0f} member-examples/s")

        model, losses = train(model, data["x"], data["y"], _STEPS.value, _LR.value, log=log)
    say(f"loss {losses[0]:.5f} -> {losses[-1]:.5f}")

    if not _CHECK.value:
        return 0
    # The same training on one device, no mesh: the results must agree.
    with jax.default_device(jax.local_devices()[0]):
        ref_model = build(_ENSEMBLE.value, _FEATURES.value, _HIDDEN.value, _SEED.value)
        ref_data = (distmap.named(x_all, ("batch", "feature")), distmap.named(y_all, ("batch",)))
        ref_model, ref_losses = train(ref_model, *ref_data, _STEPS.value, _LR.value)
    ours = jax.tree_util.tree_leaves(distributed.global_to_host_local(_replicated(model, mesh)))
    theirs = jax.tree_util.tree_leaves(ref_model)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(ours, theirs))
    loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
    ok = diff < 1e-3 and loss_diff < 1e-4
    say(f"check against one device: max parameter difference {diff:.2e}, max loss difference {loss_diff:.2e}: "
        + ("OK" if ok else "MISMATCH"))
    return 0 if ok else 1


def _replicated(tree: Any, mesh: Any) -> Any:
    """Every array of ``tree`` gathered onto every device, so each process can read it whole."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))(tree)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
