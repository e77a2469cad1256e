"""``distmap.vmap`` against the equivalent hand-written ``jax.vmap`` (explicit ``in_axes``).

Run ``python benchmarks/bench_vmap.py`` from the repository root. For each case (the same
per-example body, mapped by name with distmap and by position with jax) it prints:

* **HLO same**: whether the jitted versions compile to the same optimized HLO, compared
  as text with metadata, stack-frame tables and instruction names normalised away.
* **run**: steady-state time of one call of the compiled function (distmap / jax), in
  CPU time of the process. Target: 1.00 (same HLO; any difference is jit dispatch of
  the NamedArray pytrees).
* **trace**: ``jax.jit(f).trace(...)`` of a freshly built function each time, so no
  cache is hit (distmap / jax), in CPU time of the tracing thread. Target: <= 1.1x.
* **eager**: one un-jitted call of the mapped function (distmap / jax), in CPU time of
  the process. Target: <= 1.15x.

Every ratio is the ratio of medians over interleaved rounds (distmap and jax timed
alternately, so machine noise hits both alike), all measured in this one run. Everything
is timed in CPU time rather than wall time, so that on a shared machine the time slices
given to other processes do not land in one side's samples: tracing in CPU time of the
tracing thread (it is single-threaded Python), calls in CPU time of the process (XLA
runs them on its own threads too).

A second table shows ``chunk_size=c`` on an axis of size ``n`` for a body with a large
temporary: the compiled temporary memory (``memory_analysis().temp_size_in_bytes``) of
the chunked map against the unchunked one, next to ``c / n``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import distmap  # noqa: E402
from distmap import Axis, NamedArray  # noqa: E402

TRACE_TARGET = 1.1
EAGER_TARGET = 1.15


# ------------------------------------------------------------------------------ cases
#
# Each case builds fresh functions on demand (``make_distmap`` / ``make_jax`` return a new
# body wrapped by a new map each call), so tracing caches keyed on the function never hit.


class Case:
    def __init__(self, name: str, make_distmap: Callable[[], Callable], make_jax: Callable[[], Callable],
                 d_args: tuple, j_args: tuple, d_kwargs: dict | None = None, j_kwargs: dict | None = None):
        self.name = name
        self.make_distmap = make_distmap
        self.make_jax = make_jax
        self.d_args = d_args
        self.j_args = j_args
        self.d_kwargs = d_kwargs or {}
        self.j_kwargs = j_kwargs or {}


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def case_mlp(batch=256, feature=128, hidden=128) -> Case:
    """``tanh(x @ w)`` per example: x (batch, feature) named, w (feature, hidden) broadcast."""
    Hid = Axis("hidden", hidden)
    x = distmap.named(_rand((batch, feature), 0), ("batch", "feature"))
    w = distmap.named(_rand((feature, hidden), 1), ("feature", "hidden"))

    def make_distmap():
        def body(x, w):
            return NamedArray(jnp.tanh(x.array @ w.array), (Hid,))

        return distmap.vmap(body, "batch")

    def make_jax():
        def body(x, w):
            return jnp.tanh(x @ w)

        return jax.vmap(body, in_axes=(0, None))

    return Case("mlp: tanh(x @ w), 1 axis", make_distmap, make_jax, (x, w), (x.array, w.array))


def case_mlp_unnamed(batch=256, feature=128, hidden=128) -> Case:
    """The same on unnamed arrays, mapped by the default spec (dim 0) and ``args=(0, None)``."""
    x, w = _rand((batch, feature), 0), _rand((feature, hidden), 1)

    def make_distmap():
        def body(x, w):
            return jnp.tanh(x @ w)

        return distmap.vmap(body, "batch", args=(0, None))

    def make_jax():
        def body(x, w):
            return jnp.tanh(x @ w)

        return jax.vmap(body, in_axes=(0, None))

    return Case("mlp, unnamed arrays + specs", make_distmap, make_jax, (x, w), (x, w))


def case_positions(batch=128, feature=64, hidden=32) -> Case:
    """Several NamedArray args with the mapped axis in different positions, a keyword, a scalar."""
    Hid = Axis("hidden", hidden)
    a = distmap.named(_rand((feature, batch), 2), ("feature", "batch"))
    b = distmap.named(_rand((hidden, feature, batch), 3), ("hidden", "feature", "batch"))
    c = distmap.named(_rand((batch, hidden), 4), ("batch", "hidden"))
    bias = distmap.named(_rand((hidden,), 5), ("hidden",))
    u = _rand((batch, feature), 6)
    s = jnp.float32(0.5)

    def make_distmap():
        def body(a, b, c, u, s, *, bias):
            h = b.array @ (a.array * u)  # (hidden,)
            return NamedArray(jnp.tanh(h * s + bias.array) * c.array, (Hid,))

        return distmap.vmap(body, "batch")

    def make_jax():
        def body(a, b, c, u, s, bias):
            h = b @ (a * u)
            return jnp.tanh(h * s + bias) * c

        mapped = jax.vmap(body, in_axes=(1, 2, 0, 0, None, None))
        return lambda a, b, c, u, s, *, bias: mapped(a, b, c, u, s, bias)

    return Case(
        "6 args, axis in 3 positions",
        make_distmap,
        make_jax,
        (a, b, c, u, s),
        (a.array, b.array, c.array, u, s),
        {"bias": bias},
        {"bias": bias.array},
    )


def case_two_axes(batch=16, head=8, seq=32, dim=16) -> Case:
    """Attention scores over two mapped axes (``["batch", "head"]``): softmax(q k^T / sqrt(d)) v."""
    Seq, Dim = Axis("seq", seq), Axis("dim", dim)
    q = distmap.named(_rand((head, batch, seq, dim), 7), ("head", "batch", "seq", "dim"))
    k = distmap.named(_rand((batch, seq, head, dim), 8), ("batch", "seq", "head", "dim"))
    v = distmap.named(_rand((batch, head, seq, dim), 9), ("batch", "head", "seq", "dim"))

    def make_distmap():
        def body(q, k, v):  # q (seq, dim), k (seq, dim), v (seq, dim)
            w = jax.nn.softmax(q.array @ k.array.T / np.sqrt(dim), axis=-1)
            return NamedArray(w @ v.array, (Seq, Dim))

        return distmap.vmap(body, ["batch", "head"])

    def make_jax():
        def body(q, k, v):
            w = jax.nn.softmax(q @ k.T / np.sqrt(dim), axis=-1)
            return w @ v

        # outer: batch (q dim 1, k dim 0, v dim 0); inner: head (q dim 0, k dim 1, v dim 0)
        return jax.vmap(jax.vmap(body, in_axes=(0, 1, 0)), in_axes=(1, 0, 0))

    return Case("attention, 2 axes", make_distmap, make_jax, (q, k, v), (q.array, k.array, v.array))


def _cases() -> list[Case]:
    return [case_mlp(), case_mlp_unnamed(), case_positions(), case_two_axes()]


# -------------------------------------------------------------------------------- HLO

_META = re.compile(r',?\s*metadata=\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
_NAME = re.compile(r"%([\w.\-]+)")
_SIG_PARAM = re.compile(r"([(,]\s*)([\w.\-]+)(: )")


def normalise_hlo(text: str) -> str:
    """Optimized HLO text with metadata, stack-frame tables, the module name and instruction names removed."""
    lines = []
    in_tables = False
    for line in text.splitlines():
        if line.startswith("HloModule"):
            line = re.sub(r"^HloModule [^,]+", "HloModule m", line)
            in_tables = True
            lines.append(line)
            continue
        if in_tables:
            if line.startswith(("%", "ENTRY")):
                in_tables = False
            else:
                continue  # FileNames / FunctionNames / FileLocations / StackFrames
        lines.append(line)
    text = "\n".join(lines)
    text = _META.sub("", text)
    names: dict[str, str] = {}

    def canon(name: str) -> str:
        return names.setdefault(name, f"v{len(names)}")

    out = []
    for line in text.splitlines():
        if line.startswith(("%", "ENTRY")):  # a computation's signature
            line = _SIG_PARAM.sub(lambda m: m.group(1) + canon(m.group(2)) + m.group(3), line)
        line = _NAME.sub(lambda m: "%" + canon(m.group(1)), line)
        out.append(line)
    return "\n".join(out)


def compiled(f: Callable, args: tuple, kwargs: dict) -> Any:
    return jax.jit(f).lower(*args, **kwargs).compile()


# ----------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, reps: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each thunk, timed by ``clock`` in alternating rounds of ``reps`` calls."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm up
        jax.block_until_ready(f())
    for _ in range(rounds):
        for k, f in fns.items():
            start = clock()
            for _ in range(reps):
                out = f()
            jax.block_until_ready(out)
            times[k].append((clock() - start) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_case(case: Case, rounds: int) -> dict[str, Any]:
    d_kw, j_kw = case.d_kwargs, case.j_kwargs
    fd, fj = case.make_distmap(), case.make_jax()
    # outputs agree (the tests check semantics; this guards the benchmark itself)
    od, oj = jax.jit(fd)(*case.d_args, **d_kw), jax.jit(fj)(*case.j_args, **j_kw)
    np.testing.assert_allclose(np.asarray(od.array if isinstance(od, NamedArray) else od), np.asarray(oj),
                               rtol=2e-5, atol=2e-5)

    cd, cj = compiled(fd, case.d_args, d_kw), compiled(fj, case.j_args, j_kw)
    hd, hj = normalise_hlo(cd.as_text()), normalise_hlo(cj.as_text())
    same_hlo = hd == hj
    if not same_hlo:
        diff = difflib.unified_diff(hj.splitlines(), hd.splitlines(), "jax.vmap", "distmap.vmap", lineterm="")
        print(f"[{case.name}] optimized HLO differs:\n" + "\n".join(list(diff)[:60]), file=sys.stderr)

    jd, jj = jax.jit(fd), jax.jit(fj)
    run = interleaved(
        {"d": lambda: jd(*case.d_args, **d_kw), "j": lambda: jj(*case.j_args, **j_kw)}, 2 * rounds, reps=10,
        clock=time.process_time,
    )

    def trace_d():
        return jax.jit(case.make_distmap()).trace(*case.d_args, **d_kw)

    def trace_j():
        return jax.jit(case.make_jax()).trace(*case.j_args, **j_kw)

    # Single calls, alternating, many rounds. Tracing is single-threaded Python, so it is timed
    # in CPU time of this thread, which time slices given to other processes do not inflate;
    # eager calls also run XLA work on other threads, so they are timed in CPU time of the process.
    trace = interleaved({"d": lambda: (trace_d(), 0)[1], "j": lambda: (trace_j(), 0)[1]}, 4 * rounds, reps=1,
                        clock=time.thread_time)

    eager = interleaved(
        {"d": lambda: fd(*case.d_args, **d_kw), "j": lambda: fj(*case.j_args, **j_kw)}, 4 * rounds, reps=1,
        clock=time.process_time,
    )
    return {"same_hlo": same_hlo, "run": run, "trace": trace, "eager": eager}


# ------------------------------------------------------------------------------ chunks


def chunk_memory(n: int = 64, d: int = 128, chunks=(64, 32, 16, 8, 4, 1)) -> list[tuple[Any, int, float]]:
    """Compiled temp bytes of a body with a (d, d) temporary, mapped over n elements in chunks of c.

    The temporary is a cumulative sum over an outer product, which XLA materialises (a
    matmul chain would not do: XLA:CPU fuses its intermediates and reports no temp at all).
    """
    x = _rand((n, d), 10)
    w = distmap.named(_rand((d, d), 11), ("i", "j"))
    Out = Axis("j", d)

    def body(x, w):
        t = jnp.cumsum(jnp.tanh(jnp.outer(x, x)), axis=0)  # (d, d) temporary per example
        return NamedArray(t.sum(0) @ w.array, (Out,))

    rows = []
    base = None
    for c in (None,) + tuple(chunks):
        f = distmap.vmap(body, "batch", chunk_size=c)
        temp = compiled(f, (x, w), {}).memory_analysis().temp_size_in_bytes
        if base is None:
            base = temp
        rows.append((c, temp, temp / base if base else float("nan")))
    return rows


# -------------------------------------------------------------------------------- main


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="interleaved timing rounds per measurement")
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, python {sys.version.split()[0]}")
    rows = []
    ok = True
    for case in _cases():
        r = bench_case(case, args.rounds)
        run = r["run"]["d"] / r["run"]["j"]
        trace = r["trace"]["d"] / r["trace"]["j"]
        eager = r["eager"]["d"] / r["eager"]["j"]
        ok &= r["same_hlo"] and trace <= TRACE_TARGET and eager <= EAGER_TARGET
        rows.append((
            case.name,
            "yes" if r["same_hlo"] else "NO",
            f"{run:.2f}x ({r['run']['j'] * 1e6:.0f} us)",
            f"{trace:.2f}x ({r['trace']['j'] * 1e3:.2f} ms)",
            f"{eager:.2f}x ({r['eager']['j'] * 1e3:.2f} ms)",
        ))
    print()
    _table(("case", "HLO same", "run (jax)", f"trace <= {TRACE_TARGET}x (jax)",
            f"eager <= {EAGER_TARGET}x (jax)"), rows)

    print()
    n = 64
    mem_rows = chunk_memory(n=n)
    _table(
        (f"chunk_size (n={n})", "temp bytes", "temp / unchunked", "c / n"),
        [("None (unchunked)" if c is None else c, f"{t:,}", f"{frac:.3f}", f"{(c or n) / n:.3f}")
         for c, t, frac in mem_rows],
    )
    print()
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
