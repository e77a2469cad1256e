"""A Haliax-style decoder stack on a ``data x model`` mesh, run with distmap and, where it is installed, with Haliax.

The decoder is written once, in the names both libraries share (``dot``, ``named``, ``rename``, ``Stacked``,
``named_jit``, ...), and built twice from a table of names: distmap's, and Haliax's (its ``nn.softmax``,
``nn.Stacked``; a user switching renames exactly these). Each layer is RMSNorm -> attention with rotary
position embeddings and a causal mask -> RMSNorm -> a SiLU MLP, every projection a ``Linear`` written with
``dot``; the layers are one ``Stacked`` folded with ``gradient_checkpointing=True``. A training step (loss,
gradient, SGD update) runs under ``named_jit`` on a 4 x 2 mesh of CPU devices with an FSDP-style layout:
parameters split by ``{embed: data, mlp: model, heads: model}``, the computation by ``{batch: data, mlp:
model, heads: model}``.

Both sides start from the same weights and batch. Reported, side by side from one run: the loss, the
collectives in the compiled HLO, compiled temporary bytes, compile time (tracing and lowering; XLA's
compile; each the median CPU time of fresh builds, interleaved) and step time (median wall time of
interleaved repeats), and distmap's ratio to Haliax.

Run: ``python benchmarks/bench_decoder.py`` (distmap alone) or, in an environment where both distmap and
Haliax are installed (``pip install -e . marin-haliax``; Haliax is not a dependency of this project), the same
command prints both columns.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import re
import statistics
import time
import types
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import distmap

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
PARAMS = {"embed": "data", "mlp": "model", "heads": "model"}
COMPUTE = {"batch": "data", "mlp": "model", "heads": "model"}


def distmap_names() -> Any:
    """distmap's names for what the decoder uses."""
    return types.SimpleNamespace(
        Axis=distmap.Axis, named=distmap.named, dot=distmap.dot, rename=distmap.rename, mean=distmap.mean,
        rsqrt=distmap.rsqrt, softmax=distmap.softmax, silu=distmap.silu, sin=distmap.sin, cos=distmap.cos,
        where=distmap.where, arange=distmap.arange, broadcast_axis=distmap.broadcast_axis, concatenate=distmap.concatenate, sum=distmap.sum,
        Stacked=distmap.Stacked, named_jit=distmap.named_jit, shard=distmap.shard, axis_mapping=distmap.axis_mapping,
    )


def haliax_names() -> Any:
    """The same names in Haliax (imported only here: Haliax is not a dependency of distmap)."""
    import haliax as hax
    import haliax.nn as hnn

    return types.SimpleNamespace(
        Axis=hax.Axis, named=hax.named, dot=hax.dot, rename=hax.rename, mean=hax.mean, rsqrt=hax.rsqrt,
        softmax=hnn.softmax, silu=hnn.silu, sin=hax.sin, cos=hax.cos, where=hax.where, arange=hax.arange,
        broadcast_axis=hax.broadcast_axis,
        concatenate=hax.concatenate, sum=hax.sum, Stacked=hnn.Stacked, named_jit=hax.named_jit, shard=hax.shard,
        axis_mapping=hax.axis_mapping,
    )


def build(lib: Any, sizes: dict[str, int], weights: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """The decoder and its training step, written once in ``lib``'s names, with the given weights."""
    A = {n: lib.Axis(n, s) for n, s in sizes.items()}
    Embed, Heads, Head, Mlp, Pos, KPos, Layer = (A[n] for n in ("embed", "heads", "head", "mlp", "position",
                                                                 "key_position", "layer"))

    class Linear(eqx.Module):
        weight: Any

        def __call__(self, x, axis):
            return lib.dot(x, self.weight, axis=axis)

    class RMSNorm(eqx.Module):
        weight: Any

        def __call__(self, x):
            return x * lib.rsqrt(lib.mean(x * x, "embed") + 1e-6) * self.weight

    def rotary(x):  # rotate the two halves of "head" by position-dependent angles
        half = Head.size // 2
        freq = lib.named(1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half)), lib.Axis("head", half))
        angle = lib.broadcast_axis(lib.arange(Pos, dtype=jnp.float32), freq.axes) * freq
        x1, x2 = x["head", slice(0, half)], x["head", slice(half, Head.size)]
        c, s = lib.cos(angle), lib.sin(angle)
        return lib.concatenate("head", [x1 * c - x2 * s, x2 * c + x1 * s])

    class Block(eqx.Module):
        norm1: RMSNorm
        q: Linear
        k: Linear
        v: Linear
        o: Linear
        norm2: RMSNorm
        up: Linear
        down: Linear

        @staticmethod
        def init(norm1, q, k, v, o, norm2, up, down):
            return Block(RMSNorm(norm1), Linear(q), Linear(k), Linear(v), Linear(o), RMSNorm(norm2), Linear(up),
                         Linear(down))

        def __call__(self, x):
            h = self.norm1(x)
            q = rotary(self.q(h, "embed"))
            k = rotary(self.k(h, "embed")).rename({"position": "key_position"})
            v = self.v(h, "embed").rename({"position": "key_position"})
            scores = lib.dot(q, k, axis="head") * (Head.size ** -0.5)
            causal = lib.broadcast_axis(lib.arange(Pos), KPos) >= lib.arange(KPos)
            probs = lib.softmax(lib.where(causal, scores, -1e9), "key_position")
            attn = lib.dot(probs, v, axis="key_position")
            x = x + self.o(attn, ("heads", "head"))
            h = self.norm2(x)
            return x + self.down(lib.silu(self.up(h, "embed")), "mlp")

    shapes = {"norm1": (Layer, Embed), "q": (Layer, Embed, Heads, Head), "k": (Layer, Embed, Heads, Head),
              "v": (Layer, Embed, Heads, Head), "o": (Layer, Heads, Head, Embed), "norm2": (Layer, Embed),
              "up": (Layer, Embed, Mlp), "down": (Layer, Mlp, Embed)}
    named_w = {k: lib.named(jnp.asarray(weights[k]), shapes[k]) for k in shapes}
    stack = lib.Stacked.init(Layer, Block, gradient_checkpointing=True)(**named_w)

    def loss_fn(stack, x, target):
        y = stack.fold(x)
        return lib.mean((y - target) * (y - target)).scalar()

    def step(stack, x, target):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(stack, x, target)
        new = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, stack, grads)
        return loss, new

    train_step = lib.named_jit(step, axis_resources=COMPUTE, out_axis_resources=PARAMS, donate_args=(True,))
    return stack, train_step


def _collectives(hlo: str) -> dict[str, int]:
    return {k: len(re.findall(rf"= [^=]*\b{k}(?:-start)?\(", hlo)) for k in COLLECTIVES}


def _inputs(sizes: dict[str, int], seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    L, D, H, Dh, M = (sizes[n] for n in ("layer", "embed", "heads", "head", "mlp"))
    B, S = sizes["batch"], sizes["position"]

    def w(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {"norm1": np.ones((L, D), np.float32), "norm2": np.ones((L, D), np.float32),
               "q": w(L, D, H, Dh, scale=D ** -0.5), "k": w(L, D, H, Dh, scale=D ** -0.5),
               "v": w(L, D, H, Dh, scale=D ** -0.5), "o": w(L, H, Dh, D, scale=(H * Dh) ** -0.5),
               "up": w(L, D, M, scale=D ** -0.5), "down": w(L, M, D, scale=M ** -0.5)}
    return weights, w(B, S, D, scale=1.0), w(B, S, D, scale=1.0)


class Side:
    """One library's decoder, placed and compiled once."""

    def __init__(self, label: str, lib: Any, sizes: dict[str, int], mesh: Any, set_mesh: Any):
        self.label, self.lib, self.mesh, self.set_mesh = label, lib, mesh, set_mesh
        weights, x, target = _inputs(sizes)
        with set_mesh(mesh):
            self.stack, self.step = build(lib, sizes, weights)
            self.stack = lib.shard(self.stack, PARAMS)
            axes = tuple(lib.Axis(n, sizes[n]) for n in ("batch", "position", "embed"))
            self.x = lib.shard(lib.named(jnp.asarray(x), axes), COMPUTE)
            self.target = lib.shard(lib.named(jnp.asarray(target), axes), COMPUTE)
            # CPU time of this process (all its threads): on a shared machine, wall time measures the neighbours too
            t0 = time.process_time()
            lowered = self.step.lower(self.stack, self.x, self.target)
            t1 = time.process_time()
            compiled = lowered.compile()
            self.trace_s, self.compile_s = t1 - t0, time.process_time() - t1
        self.hlo = compiled.as_text()
        self.collectives = _collectives(self.hlo)
        self.temp_bytes = compiled.memory_analysis().temp_size_in_bytes
        self.times: list[float] = []
        self.losses: list[float] = []

    def run(self) -> None:
        with self.set_mesh(self.mesh):
            t0 = time.perf_counter()
            loss, self.stack = self.step(self.stack, self.x, self.target)
            loss = float(jax.block_until_ready(loss))
        self.times.append(time.perf_counter() - t0)
        self.losses.append(loss)


def _version(label: str) -> str:
    """The version of the library the side ran: the installed distribution's, or where it was imported from."""
    from importlib import metadata

    module = __import__(label)
    dist = "marin-haliax" if label == "haliax" else label
    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return f"from {os.path.dirname(module.__file__)}"
    installed = os.path.realpath(str(found.locate_file(label)))
    here = os.path.realpath(os.path.dirname(module.__file__))
    return found.version if here == installed or label == "distmap" else f"from {here}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compiles", type=int, default=3, help="fresh builds per side (compile time: their median)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no_haliax", action="store_true", help="run distmap's side only")
    args = parser.parse_args()
    sizes = {"layer": args.layers, "embed": args.embed, "heads": 4, "head": args.embed // 4, "mlp": 4 * args.embed,
             "position": args.seq, "key_position": args.seq, "batch": args.batch}
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    libs = [("distmap", distmap_names)]
    if not args.no_haliax:
        try:
            import haliax  # noqa: F401
        except ImportError:
            print("(Haliax is not installed here: distmap's side only; pip install marin-haliax in a scratch venv)")
        else:
            libs.append(("haliax", haliax_names))
    times: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in libs}
    for _ in range(args.compiles):  # fresh modules each time, so nothing is reused from a cache; interleaved
        sides = [Side(label, names(), sizes, mesh, jax.set_mesh) for label, names in libs]
        for side in sides:
            times[side.label].append((side.trace_s, side.compile_s))
    for side in sides:
        side.trace_s = statistics.median(t for t, _ in times[side.label])
        side.compile_s = statistics.median(c for _, c in times[side.label])
    for _ in range(2):  # warm-up
        for s in sides:
            s.run()
    for s in sides:
        s.times.clear()
    for _ in range(args.repeats):  # interleaved
        for s in sides:
            s.run()
    print(f"decoder: {sizes['layer']} layers, embed {sizes['embed']}, 4 heads, mlp {sizes['mlp']}, seq {sizes['position']}, "
          f"batch {sizes['batch']}; mesh data=4 x model=2 (CPU); jax {jax.__version__}; medians of {args.compiles} "
          f"compiles and {args.repeats} steps" + "".join(f"; {lb} {_version(lb)}" for lb, _ in libs))
    rows = [("loss (first step)", lambda s: f"{s.losses[0]:.6f}"),
            ("loss (last step)", lambda s: f"{s.losses[-1]:.6f}"),
            *[(k, lambda s, k=k: str(s.collectives[k])) for k in COLLECTIVES],
            ("temp bytes", lambda s: f"{s.temp_bytes:,}"),
            ("trace + lower, CPU s (median)", lambda s: f"{s.trace_s:.2f}"),
            ("XLA compile, CPU s (median)", lambda s: f"{s.compile_s:.2f}"),
            ("step ms (median)", lambda s: f"{1e3 * statistics.median(s.times):.2f}")]
    head = ["", *[s.label for s in sides]] + (["distmap / haliax"] if len(sides) == 2 else [])
    print(" | ".join(head))
    for name, cell in rows:
        cells = [cell(s) for s in sides]
        if len(sides) == 2:
            a, b = (float(c.replace(",", "")) for c in cells)
            cells.append(f"{a / b:.3f}" if b else ("=" if a == b else "-"))
        print(" | ".join([name, *cells]))


if __name__ == "__main__":
    main()
