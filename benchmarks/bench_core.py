"""Core overheads of distmap: jit dispatch on NamedArrays, and import time.

Run ``python benchmarks/bench_core.py`` from the repository root. It prints one
table:

* **dispatch**: steady-state time of one call to a jitted function (already
  compiled) given NamedArray arguments, against the same function given the raw
  arrays. The two are timed in interleaved rounds, so machine noise hits both
  alike, and the medians are compared. Target: ratio <= 1.3.
* **import**: in fresh subprocesses, the time ``import distmap`` and loading every
  public name (``from distmap import *``) take once ``jax`` and ``equinox`` are
  imported (median of several runs): distmap's own cost. ``import distmap`` alone
  loads no name (each loads from its module on first use). Target: <= 0.15 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

DISPATCH_TARGET = 1.3
IMPORT_TARGET_S = 0.15

_IMPORT_PROBE = """
import time
t0 = time.perf_counter()
import jax, equinox
t1 = time.perf_counter()
import distmap
from distmap import *  # every public name: import distmap alone loads them only on first use
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def _summed(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def dispatch(num_args: int, *, rounds: int = 30, calls: int = 300) -> tuple[float, float]:
    """Median seconds per call of a jitted sum of ``num_args`` arrays: (raw arrays, NamedArrays)."""
    import jax
    import jax.numpy as jnp

    import distmap

    raw = [jnp.full((8, 8), float(i)) for i in range(num_args)]
    named = [distmap.named(r, ("batch", "feature")) for r in raw]
    f_raw = jax.jit(_summed)
    f_named = jax.jit(_summed)
    jax.block_until_ready(f_raw(*raw))
    jax.block_until_ready(f_named(*named))
    times: dict[str, list[float]] = {"raw": [], "named": []}
    for _ in range(rounds):
        for label, f, args in (("raw", f_raw, raw), ("named", f_named, named)):
            start = time.perf_counter()
            for _ in range(calls):
                out = f(*args)
            jax.block_until_ready(out)
            times[label].append((time.perf_counter() - start) / calls)
    return statistics.median(times["raw"]), statistics.median(times["named"])


def import_overhead(runs: int = 7) -> tuple[float, float]:
    """Median seconds of ``import jax, equinox`` and of all of distmap after it, each in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
    jax_s, distmap_s = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True, env=env
        ).stdout.split()
        jax_s.append(float(out[0]))
        distmap_s.append(float(out[1]))
    return statistics.median(jax_s), statistics.median(distmap_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per case")
    parser.add_argument("--import-runs", type=int, default=7, help="fresh interpreters for the import timing")
    args = parser.parse_args(argv)

    rows = []
    ok = True
    for n in (2, 8):
        t_raw, t_named = dispatch(n, rounds=args.rounds)
        ratio = t_named / t_raw
        ok &= ratio <= DISPATCH_TARGET
        rows.append(
            (f"jit dispatch, {n} args", f"{t_raw * 1e6:.2f} us", f"{t_named * 1e6:.2f} us",
             f"{ratio:.2f}x", f"<= {DISPATCH_TARGET}x")
        )
    t_jax, t_distmap = import_overhead(args.import_runs)
    ok &= t_distmap <= IMPORT_TARGET_S
    rows.append(
        ("all of distmap after jax, equinox", f"{t_jax:.3f} s (deps)", f"{t_distmap:.3f} s", f"+{t_distmap:.3f} s",
         f"<= {IMPORT_TARGET_S} s")
    )

    header = ("case", "raw / baseline", "distmap", "overhead", "target")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
