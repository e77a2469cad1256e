"""``distmap.scan`` / ``fold`` / ``Stacked.fold`` against the same loop hand-written with ``jax.lax.scan``,
and what gradient checkpointing saves in a 16-layer stack.

Run ``python benchmarks/bench_scan.py`` from the repository root. For each case it prints:

* **HLO same**: whether the jitted versions compile to the same optimized HLO (compared as
  ``bench_vmap.py`` compares them: metadata and instruction names normalised away).
* **run**: steady-state time of one call of the compiled function (distmap / jax), CPU time
  of the process. Target: 1.00.
* **trace**: ``jax.jit(f).trace(...)`` of a freshly built function (distmap / jax), CPU time of
  the tracing thread. Target: <= 1.1x.

Ratios are ratios of medians over interleaved rounds, measured in this one run.

A second table gives the compiled temporary memory (``memory_analysis().temp_size_in_bytes``)
of ``jax.grad`` through a 16-layer ``Stacked.fold`` under each checkpointing policy, against no
checkpointing. Each layer is an MLP block (128 -> 256 -> 128, 64 Ki parameters) on a (2048, 128)
float32 activation (1 MiB): activations outweigh parameters, as in training at scale.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for p in (_ROOT, _HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import distmap  # noqa: E402
from bench_vmap import _rand, _table, interleaved, normalise_hlo  # noqa: E402
from distmap import Axis, NamedArray  # noqa: E402

TRACE_TARGET = 1.1


class Case:
    def __init__(self, name: str, make_distmap: Callable[[], Callable], make_jax: Callable[[], Callable],
                 d_args: tuple, j_args: tuple):
        self.name, self.make_distmap, self.make_jax = name, make_distmap, make_jax
        self.d_args, self.j_args = d_args, j_args


def case_fold(layers=16, batch=256, feature=128) -> Case:
    """``h = tanh(h @ w_i)`` over 16 layers: w (layer, feature, hidden) named, h (batch, feature)."""
    Hid = Axis("hidden", feature)
    w = distmap.named(_rand((layers, feature, feature), 0) * 0.1, ("layer", "feature", "hidden"))
    x = distmap.named(_rand((batch, feature), 1), ("batch", "feature"))

    def make_distmap():
        def layer(h, w):
            return NamedArray(jnp.tanh(h.array @ w.array), (h.axes[0], Hid)).rename({"hidden": "feature"})

        return distmap.fold(layer, "layer")

    def make_jax():
        def step(h, w):
            return jnp.tanh(h @ w), None

        return lambda x, w: jax.lax.scan(step, x, w)[0]

    return Case("fold: tanh(h @ w), 16 layers", make_distmap, make_jax, (x, w), (x.array, w.array))


def case_scan_ys(layers=16, batch=256, feature=128) -> Case:
    """A scan with per-step outputs and an unnamed per-layer bias (sliced on dim 0 by the default spec)."""
    w = distmap.named(_rand((feature, layers), 2) * 0.1, ("feature", "layer"))  # the looped axis last
    b = _rand((layers, feature), 3)
    x = distmap.named(_rand((batch, feature), 4), ("batch", "feature"))

    def make_distmap():
        def step(h, w, b):
            h = NamedArray(jnp.sin(h.array * w.array + b), h.axes)
            return h, h.array.sum(0)

        return distmap.scan(step, "layer")

    def make_jax():
        def step(h, wb):
            w, b = wb
            h = jnp.sin(h * w + b)
            return h, h.sum(0)

        return lambda x, w, b: jax.lax.scan(step, x, (w.T, b))

    return Case("scan: ys + unnamed per-layer bias", make_distmap, make_jax, (x, w, b), (x.array, w.array, b))


class Block(eqx.Module):
    w: NamedArray
    b: jax.Array

    def __call__(self, h: NamedArray) -> NamedArray:
        return NamedArray(jnp.tanh(h.array @ self.w.array + self.b), h.axes)


def case_stacked(layers=16, batch=256, feature=128) -> Case:
    """``Stacked.fold`` of an equinox Module, against ``jax.lax.scan`` over its arrays that rebuilds the
    layer by hand at each step (what one writes without ``Stacked``)."""
    keys = jax.random.split(jax.random.key(5), layers)
    net = distmap.Stacked.init(Axis("layer", layers), lambda key: Block(
        distmap.named(jax.random.normal(key, (feature, feature)) * 0.1, ("feature", "hidden")), jnp.zeros(feature)
    ))(keys)
    x = distmap.named(_rand((batch, feature), 6), ("batch", "feature"))

    def make_distmap():
        return lambda net, x: net.fold(x)

    def make_jax():  # the same module's arrays scanned by hand, each step rebuilding the layer and calling it
        def run(net, x):
            w_axes = net.stacked.w.axes[1:]

            def step(h, wb):
                w, b = wb
                return Block(NamedArray(w, w_axes), b)(h), None

            return jax.lax.scan(step, x, (net.stacked.w.array, net.stacked.b))[0]

        return run

    return Case("Stacked.fold, equinox Module", make_distmap, make_jax, (net, x), (net, x))


def bench_case(case: Case, rounds: int) -> dict:
    fd, fj = case.make_distmap(), case.make_jax()
    od, oj = jax.jit(fd)(*case.d_args), jax.jit(fj)(*case.j_args)
    for a, b in zip(jax.tree_util.tree_leaves(od), jax.tree_util.tree_leaves(oj)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
    hd = normalise_hlo(jax.jit(fd).lower(*case.d_args).compile().as_text())
    hj = normalise_hlo(jax.jit(fj).lower(*case.j_args).compile().as_text())
    jd, jj = jax.jit(fd), jax.jit(fj)
    run = interleaved({"d": lambda: jd(*case.d_args), "j": lambda: jj(*case.j_args)}, 2 * rounds, reps=5,
                      clock=time.process_time)

    def trace_d():
        return jax.jit(case.make_distmap()).trace(*case.d_args)

    def trace_j():
        return jax.jit(case.make_jax()).trace(*case.j_args)

    trace = interleaved({"d": lambda: (trace_d(), 0)[1], "j": lambda: (trace_j(), 0)[1]}, 4 * rounds, reps=1,
                        clock=time.thread_time)
    return {"same_hlo": hd == hj, "run": run, "trace": trace}


POLICIES = [("none", None), ("every layer, dots kept ('layer')", "layer"), ("carry only ('carry')", "carry"),
            ("Haliax's gradient_checkpointing=True", True),
            ("ScanCheckpointPolicy() (carries saved by name)", distmap.ScanCheckpointPolicy()),
            ("every 2nd layer (Checkpoint(every=2))", 2), ("every 4th layer (Checkpoint(every=4))", 4),
            ("ScanCheckpointPolicy(nested=4): 4 blocks of 4", distmap.ScanCheckpointPolicy(nested=4))]


def checkpoint_memory(layers=16, batch=2048, feature=128) -> list[tuple[str, int, float]]:
    """Temp bytes of ``jax.grad`` through a 16-layer Stacked.fold, per policy, and a hand-written twin."""
    keys = jax.random.split(jax.random.key(7), layers)
    x = distmap.named(_rand((batch, feature), 8), ("batch", "feature"))

    class Mlp(eqx.Module):
        w1: NamedArray
        w2: NamedArray

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.w1 = distmap.named(jax.random.normal(k1, (feature, 2 * feature)) * 0.05, ("feature", "wide"))
            self.w2 = distmap.named(jax.random.normal(k2, (2 * feature, feature)) * 0.05, ("wide", "out"))

        def __call__(self, h):
            u = distmap.gelu(distmap.dot(h, self.w1, axis="feature"))
            return (distmap.dot(distmap.sin(u) * u, self.w2, axis="wide")).rename({"out": "feature"}) + h

    rows = []
    base = None
    for label, policy in POLICIES:
        net = distmap.Stacked.init(Axis("layer", layers), Mlp, checkpoint=policy)(keys)
        loss = lambda net, x: net.fold(x).array.sum()  # noqa: E731
        temp = jax.jit(jax.grad(loss)).lower(net, x).compile().memory_analysis().temp_size_in_bytes
        base = temp if base is None else base
        rows.append((label, temp, temp / base))

    # the hand-written equivalent of 'carry': jax.checkpoint around the scan body
    net = distmap.Stacked.init(Axis("layer", layers), Mlp)(keys)

    def hand(w1, w2, h):
        def step(h, ws):
            a, b = ws
            u = jax.nn.gelu(h @ a)
            return (jnp.sin(u) * u) @ b + h, None

        return jax.lax.scan(jax.checkpoint(step), h, (w1, w2))[0].sum()

    temp = jax.jit(jax.grad(hand, argnums=(0, 1))).lower(
        net.stacked.w1.array, net.stacked.w2.array, x.array).compile().memory_analysis().temp_size_in_bytes
    rows.append(("hand-written jax.lax.scan(jax.checkpoint(step))", temp, temp / base))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per measurement")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, python {sys.version.split()[0]}")
    rows, ok = [], True
    for case in (case_fold(), case_scan_ys(), case_stacked()):
        r = bench_case(case, args.rounds)
        run = r["run"]["d"] / r["run"]["j"]
        trace = r["trace"]["d"] / r["trace"]["j"]
        ok &= r["same_hlo"] and trace <= TRACE_TARGET
        rows.append((case.name, "yes" if r["same_hlo"] else "NO", f"{run:.2f}x ({r['run']['j'] * 1e3:.2f} ms)",
                     f"{trace:.2f}x ({r['trace']['j'] * 1e3:.2f} ms)"))
    print()
    _table(("case", "HLO same", "run (jax)", f"trace <= {TRACE_TARGET}x (jax)"), rows)
    print()
    _table(("checkpoint policy, 16 layers", "grad temp bytes", "vs none"),
           [(label, f"{t:,}", f"{frac:.3f}") for label, t, frac in checkpoint_memory()])
    print()
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
