"""``distmap.vmap`` on a mesh: collectives, per-device memory and runtime against plain JAX.

Run ``python benchmarks/bench_mesh.py`` from the repository root. It starts 8 simulated CPU
devices (set before JAX starts its backend) and maps a small MLP, ``tanh(x @ w1) @ w2`` per
example, over a batch of 4096 x 256 on a mesh ``{"data": 8}``, for an Explicit and an Auto
mesh, and prints these tables:

* **collectives**: the collective ops (all-reduce, all-gather, reduce-scatter, all-to-all,
  collective-permute, ``-start`` forms included) in ``compiled.as_text()`` of the jitted
  map, inputs already sharded as the mapping asks. Targets: a pure map has 0; a map with
  one ``pmean`` has exactly 1 all-reduce. For an uneven batch (4093 over 8 devices) the
  extra ops are listed: that is what uneven sizes cost.
* **named collectives**: each of ``psum``, ``pmax``, ``all_gather``, ``ppermute``,
  ``psum_scatter`` and ``all_to_all`` over the split axis, against the same collective written by
  hand with ``jax.lax`` inside ``jax.shard_map``: the collectives in the compiled HLO (target:
  the same) and the temporary bytes.
* **memory**: per-device argument and output bytes (``compiled.memory_analysis()``) of
  the sharded map against the same map compiled for one device. The arguments are the
  batch (split) and the weights (replicated), so the expected figure is
  ``(x / N + weights) / (x + weights)``; the output is split, so ``1 / N``.
* **runtime**: steady-state time of one call of the jitted map against (a) a hand-written
  ``jax.shard_map`` of ``jax.vmap`` of the same function and (b) ``jax.jit(jax.vmap(f,
  spmd_axis_name="data"))`` on ``NamedSharding`` inputs. The three are called in
  interleaved rounds; each ratio is the median of the per-round ratios, all in this run.
  Targets: <= 1.05 against (a), and no worse than (b) (<= 1.05, the noise band of a shared
  machine). "HLO same" says whether distmap's optimized HLO equals (a)'s, compared as text
  with names and metadata normalised away.
* **uneven**: the same timing for a batch of 4093 (padded to 4096 inside the map) against
  the even 4096, and which collectives the uneven map adds.
* **uneven host input**: the map called eagerly on host (numpy) arrays, which distmap places
  itself: per-device argument bytes of the compiled call against the padded share
  (``ceil(n / N)`` rows of x plus the replicated weights), and what the output of the
  uneven batch costs on each mesh kind (per-device output bytes, collectives).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

NUM_DEVICES = 8
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", NUM_DEVICES)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import distmap  # noqa: E402

RUNTIME_TARGET = 1.05  # against the hand-written shard_map + vmap
SPMD_TARGET = 1.05  # "no worse" than jit(vmap(spmd_axis_name=...)), within the noise of a shared machine

BATCH, FEATURE, HIDDEN = 4096, 256, 256
UNEVEN = 4093

_COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(")


# ------------------------------------------------------------------------------ the function mapped


def mlp_named(x, w1, w2):
    """One example: x (feature,), w1 (feature, hidden), w2 (hidden, feature) -> (feature,)."""
    h = distmap.tanh(distmap.dot(x, w1, axis="feature"))
    return distmap.dot(h, w2, axis="hidden")


def mlp_named_psum(x, w1, w2):
    """The same, centred by the batch mean: exactly one collective (a pmean)."""
    y = mlp_named(x, w1, w2)
    return y - distmap.pmean(y, "batch")


def mlp_raw(x, w1, w2):
    return jnp.tanh(x @ w1) @ w2


# ------------------------------------------------------------------------------ helpers


def make_mesh(kind: str) -> jax.sharding.Mesh:
    axis_type = AxisType.Explicit if kind == "Explicit" else AxisType.Auto
    return distmap.make_mesh({"data": NUM_DEVICES}, axis_types=axis_type)


def inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = distmap.named(rng.normal(size=(batch, FEATURE)).astype(np.float32), ("batch", "feature"))
    w1 = distmap.named((rng.normal(size=(FEATURE, HIDDEN)) / 16).astype(np.float32), ("feature", "hidden"))
    w2 = distmap.named((rng.normal(size=(HIDDEN, FEATURE)) / 16).astype(np.float32), ("hidden", "out"))
    return x, w1, w2


def on_mesh(tree, mesh):
    """Place as distmap's mapping asks: 'batch' split over 'data' where it divides, the rest replicated.

    An uneven batch cannot be held split (``distmap.shard`` refuses it), so it is placed whole.
    """
    x = tree[0]
    even = x.axis_size("batch") % mesh.shape["data"] == 0
    return distmap.shard(tree, {"batch": "data" if even else None}, mesh)


def count_collectives(compiled) -> Counter:
    return Counter(_COLLECTIVE.findall(compiled.as_text()))


def fmt_counts(c: Counter) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(c.items())) if c else "none"


def normalised_hlo(compiled) -> str:
    """Optimized HLO text without names, metadata, stack-frame tables or the module header."""
    text = compiled.as_text().split("\nFileNames")[0]
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    text = re.sub(r", stack_frame_id=\d+", "", text)
    text = re.sub(r"%[\w.\-]+", "%v", text)
    text = re.sub(r"^HloModule [^\n]*", "", text)
    return "\n".join(line for line in text.splitlines() if line.strip())


def sharded_map(fn, mesh):
    return jax.jit(distmap.vmap(fn, "batch", mesh=mesh, axis_mapping={"batch": "data"}))


def hand_written(mesh):
    """What a JAX user writes by hand: shard_map over 'data' of a vmap of the per-example function."""
    body = jax.vmap(mlp_raw, in_axes=(0, None, None))
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=P("data")))


def spmd_vmap():
    return jax.jit(jax.vmap(mlp_raw, in_axes=(0, None, None), spmd_axis_name="data"))


def interleaved(cases: dict[str, tuple[Callable, tuple]], rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each case, one sample per round, the cases alternating within each round."""
    for f, args in cases.values():
        jax.block_until_ready(f(*args))
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for label, (f, args) in cases.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = f(*args)
            jax.block_until_ready(out)
            times[label].append((time.perf_counter() - start) / calls)
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# ------------------------------------------------------------------------------ the four tables


def collectives_table(kinds) -> tuple[list[tuple[str, ...]], bool]:
    rows, ok = [], True
    for kind in kinds:
        mesh = make_mesh(kind)
        for batch in (BATCH, UNEVEN):
            args = on_mesh(inputs(batch), mesh)
            for label, fn, expected in (("pure map", mlp_named, Counter()),
                                        ("one pmean", mlp_named_psum, Counter({"all-reduce": 1}))):
                with jax.set_mesh(mesh):
                    counts = count_collectives(sharded_map(fn, mesh).lower(*args).compile())
                even = batch % NUM_DEVICES == 0
                if even:
                    good = counts == expected
                    ok &= good
                    target = fmt_counts(expected)
                    verdict = "ok" if good else "MISSED"
                else:
                    extra = counts - expected
                    target = f"{fmt_counts(expected)} + at most 1 all-gather"
                    good = (counts & expected) == expected and sum(extra.values()) <= 1 and set(extra) <= {"all-gather"}
                    ok &= good
                    verdict = ("ok: uneven adds " + fmt_counts(extra)) if good else "MISSED"
                rows.append((kind, f"{label}, batch {batch}", fmt_counts(counts), target, verdict))
    return rows, ok


def _named_collectives(n: int) -> dict[str, tuple[Callable, Callable]]:
    """Each named collective over "batch" (n rows over the mesh's "data"), and the same written by hand with
    ``jax.lax`` inside ``jax.shard_map``: the per-device block ``b`` is ``(n / devices, FEATURE)``."""
    k = NUM_DEVICES
    local = n // k
    return {
        "psum": (lambda r: distmap.psum(r, "batch"),
                 lambda b: jax.vmap(lambda r: jax.lax.psum(r, ("data", "v")), axis_name="v")(b)),
        "pmax": (lambda r: distmap.pmax(r, "batch"),
                 lambda b: jax.vmap(lambda r: jax.lax.pmax(r, ("data", "v")), axis_name="v")(b)),
        "all_gather": (lambda r: distmap.all_gather(r, "batch").sum("batch"),
                       lambda b: jax.lax.all_gather(b, "data", tiled=True).sum(0, keepdims=True) + 0 * b),
        "ppermute (shift by one device)": (
            lambda r: distmap.ppermute(r, "batch", [(i, (i + local) % n) for i in range(n)]),
            lambda b: jax.lax.ppermute(b, "data", [(i, (i + 1) % k) for i in range(k)])),
        "psum_scatter (tiled)": (
            lambda r: distmap.psum_scatter(r, "batch", scatter_axis="feature", tiled=True),
            lambda b: jax.lax.psum_scatter(b.sum(0, keepdims=True), "data", scatter_dimension=1, tiled=True)),
        "all_to_all (tiled)": (
            lambda r: distmap.all_to_all(r, "batch", "feature", "feature", tiled=True),
            lambda b: jax.lax.all_to_all(b, "data", 1, 1, tiled=True)),
    }


def named_collectives_table(kinds) -> tuple[list[tuple[str, ...]], bool]:
    rows, ok = [], True
    n = BATCH // 16  # 256 rows: FEATURE (256) is a multiple of it, as psum_scatter/all_to_all need
    for kind in kinds:
        mesh = make_mesh(kind)
        x = distmap.shard(distmap.named(np.ones((n, FEATURE), np.float32), ("batch", "feature")), {"batch": "data"}, mesh)
        for label, (ours, by_hand) in _named_collectives(n).items():
            with jax.set_mesh(mesh):
                mine = sharded_map(ours, mesh).lower(x).compile()
                hand = jax.jit(jax.shard_map(by_hand, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False))
                theirs = hand.lower(x.array).compile()
            a, b = count_collectives(mine), count_collectives(theirs)
            good = a == b
            ok &= good
            rows.append((kind, label, fmt_counts(a), fmt_counts(b),
                         f"{mine.memory_analysis().temp_size_in_bytes / 2**10:.0f} / "
                         f"{theirs.memory_analysis().temp_size_in_bytes / 2**10:.0f} KiB",
                         "ok" if good else "MISSED"))
    return rows, ok


def memory_table(kinds) -> tuple[list[tuple[str, ...]], bool]:
    rows, ok = [], True
    x, w1, w2 = inputs(BATCH)
    one = jax.jit(distmap.vmap(mlp_named, "batch")).lower(x, w1, w2).compile().memory_analysis()
    x_bytes = x.array.nbytes
    w_bytes = w1.array.nbytes + w2.array.nbytes
    for kind in kinds:
        mesh = make_mesh(kind)
        for batch in (BATCH, UNEVEN):
            args = on_mesh(inputs(batch), mesh)
            with jax.set_mesh(mesh):
                mem = sharded_map(mlp_named, mesh).lower(*args).compile().memory_analysis()
            scale = batch / BATCH
            exp_args = (x_bytes * scale / NUM_DEVICES + w_bytes) / (x_bytes + w_bytes)
            exp_out = scale / NUM_DEVICES
            got_args = mem.argument_size_in_bytes / one.argument_size_in_bytes
            got_out = mem.output_size_in_bytes / one.output_size_in_bytes
            even = batch % NUM_DEVICES == 0
            if even:
                good = abs(got_args - exp_args) < 0.01 and abs(got_out - exp_out) < 0.01
                ok &= good
                verdict = "ok" if good else "MISSED"
            else:
                verdict = "uneven: " + ("input held whole" if got_args > 2 * exp_args else "input split") + ", " + (
                    "output gathered" if got_out > 2 * exp_out else "output split")
            rows.append((
                kind, f"batch {batch}",
                f"{mem.argument_size_in_bytes / 2**10:.0f} KiB / {one.argument_size_in_bytes / 2**10:.0f} KiB",
                f"{got_args:.3f} (expect {exp_args:.3f})",
                f"{mem.output_size_in_bytes / 2**10:.0f} KiB / {one.output_size_in_bytes / 2**10:.0f} KiB",
                f"{got_out:.3f} (expect {exp_out:.3f})",
                verdict,
            ))
    return rows, ok


def runtime_table(kinds, rounds: int, calls: int) -> tuple[list[tuple[str, ...]], bool]:
    rows, ok = [], True
    for kind in kinds:
        mesh = make_mesh(kind)
        named = on_mesh(inputs(BATCH), mesh)
        raw = tuple(a.array for a in named)
        with jax.set_mesh(mesh):
            d = sharded_map(mlp_named, mesh)
            h = hand_written(mesh)
            s = spmd_vmap()
            same = normalised_hlo(d.lower(*named).compile()) == normalised_hlo(h.lower(*raw).compile())
            np.testing.assert_allclose(np.asarray(d(*named).array), np.asarray(h(*raw)), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(s(*raw)), np.asarray(h(*raw)), rtol=1e-5, atol=1e-5)
            t = interleaved({"distmap": (d, named), "shard_map": (h, raw), "spmd": (s, raw)}, rounds, calls)
        r_hand = median_ratio(t["distmap"], t["shard_map"])
        r_spmd = median_ratio(t["distmap"], t["spmd"])
        good_hand, good_spmd = r_hand <= RUNTIME_TARGET, r_spmd <= SPMD_TARGET
        ok &= good_hand and good_spmd
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        rows.append((kind, "vs shard_map(vmap(f))", f"{med['distmap']:.2f} ms", f"{med['shard_map']:.2f} ms",
                     f"{r_hand:.3f}x", f"<= {RUNTIME_TARGET}", "yes" if same else "no",
                     "ok" if good_hand else "MISSED"))
        rows.append((kind, "vs jit(vmap(spmd_axis_name))", f"{med['distmap']:.2f} ms", f"{med['spmd']:.2f} ms",
                     f"{r_spmd:.3f}x", f"<= {SPMD_TARGET}", "", "ok" if good_spmd else "MISSED"))
    return rows, ok


def uneven_table(kinds, rounds: int, calls: int) -> list[tuple[str, ...]]:
    rows = []
    for kind in kinds:
        mesh = make_mesh(kind)
        even = on_mesh(inputs(BATCH), mesh)
        uneven = on_mesh(inputs(UNEVEN), mesh)
        for label, fn in (("pure map", mlp_named), ("one pmean", mlp_named_psum)):
            with jax.set_mesh(mesh):
                f_even, f_uneven = sharded_map(fn, mesh), sharded_map(fn, mesh)
                c_even = count_collectives(f_even.lower(*even).compile())
                c_uneven = count_collectives(f_uneven.lower(*uneven).compile())
                t = interleaved({"even": (f_even, even), "uneven": (f_uneven, uneven)}, rounds, calls)
            ratio = median_ratio(t["uneven"], t["even"])
            added = c_uneven - c_even
            rows.append((kind, label, f"{statistics.median(t['uneven']) * 1e3:.2f} ms",
                         f"{statistics.median(t['even']) * 1e3:.2f} ms", f"{ratio:.3f}x",
                         f"padding {BATCH - UNEVEN} rows; adds {fmt_counts(added)}"))
    return rows


def _compiled_eager_call(f, *args):
    """The executable an eager call of the sharded map ``f`` runs (inputs placed by distmap), and its result.

    ``f`` must be a fresh mapped function: its first call makes its compilation cache, which is recorded.
    """
    from distmap._src.map import sharded

    seen = []
    real = sharded.Compiled

    class Recording(real):
        def __init__(self):
            super().__init__()
            jitted = self.jitted

            def record(static, fn_arrays, values):
                seen.append((jitted, static, fn_arrays, values))
                return jitted(static, fn_arrays, values)

            self.jitted = record

    sharded.Compiled = Recording
    try:
        out = f(*args)
    finally:
        sharded.Compiled = real
    (jitted, static, fn_arrays, values), = seen
    with jax.set_mesh(static.lowering.mesh):
        return jitted.lower(static, fn_arrays, values).compile(), out


def uneven_host_table(kinds) -> tuple[list[tuple[str, ...]], bool]:
    rows, ok = [], True
    for kind in kinds:
        mesh = make_mesh(kind)
        for batch in (BATCH, UNEVEN):
            f = distmap.vmap(mlp_named, "batch", mesh=mesh, axis_mapping={"batch": "data"})
            host = inputs(batch)  # numpy arrays inside: distmap places them
            compiled, out = _compiled_eager_call(f, *host)
            mem = compiled.memory_analysis()
            share = -(-batch // NUM_DEVICES) * FEATURE * 4
            w_bytes = (FEATURE * HIDDEN + HIDDEN * FEATURE) * 4
            expect = share + w_bytes
            got = mem.argument_size_in_bytes
            good = got <= expect
            ok &= good
            out_share = -(-batch // NUM_DEVICES) * FEATURE * 4
            counts = count_collectives(compiled)
            rows.append((
                kind, f"batch {batch}", f"{got / 2**10:.0f} KiB", f"<= {expect / 2**10:.0f} KiB",
                f"{mem.output_size_in_bytes / 2**10:.0f} KiB ({mem.output_size_in_bytes / out_share:.2f} x share)",
                fmt_counts(counts), str(out.array.sharding.spec), "ok" if good else "MISSED",
            ))
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=10, help="calls per timing sample")
    parser.add_argument("--kinds", default="Explicit,Auto", help="mesh axis types to run, comma-separated")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    print(f"jax {jax.__version__}, {len(jax.devices())} {jax.devices()[0].platform} devices; "
          f"MLP {FEATURE}->{HIDDEN}->{FEATURE} over batch {BATCH} (uneven: {UNEVEN}), mesh {{'data': {NUM_DEVICES}}}")

    ok = True
    rows, good = collectives_table(kinds)
    ok &= good
    print_table("collectives in the compiled HLO (inputs sharded as the mapping asks)",
                ("mesh", "case", "collectives", "target", "verdict"), rows)
    rows, good = named_collectives_table(kinds)
    ok &= good
    print_table(f"each named collective over 'batch' ({BATCH // 16} rows) against jax.lax in a hand-written shard_map",
                ("mesh", "collective", "distmap", "hand-written", "temp bytes (distmap / hand)", "verdict"), rows)
    rows, good = memory_table(kinds)
    ok &= good
    print_table("per-device bytes (memory_analysis) against one device",
                ("mesh", "case", "args (device / one)", "args ratio", "output (device / one)", "output ratio",
                 "verdict"),
                rows)
    rows, good = runtime_table(kinds, args.rounds, args.calls)
    ok &= good
    print_table(f"steady-state runtime, batch {BATCH} "
                f"(median of {args.rounds} interleaved rounds x {args.calls} calls)",
                ("mesh", "against", "distmap", "baseline", "ratio", "target", "HLO same", "verdict"), rows)
    print_table(f"uneven batch {UNEVEN} against even {BATCH}",
                ("mesh", "case", "uneven", "even", "ratio", "what uneven costs"),
                uneven_table(kinds, args.rounds, args.calls))
    rows, good = uneven_host_table(kinds)
    ok &= good
    print_table(f"host inputs placed by distmap, batch {BATCH} and {UNEVEN}: per-device bytes of the compiled call",
                ("mesh", "case", "args per device", "target (padded share)", "output per device", "collectives",
                 "output spec", "verdict"), rows)
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
