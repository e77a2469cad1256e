"""The one-device lowering: one ``jax.vmap`` per mapped level, as the plan says.

Only arrays pass through ``jax.vmap``; NamedArrays are unwrapped to their arrays and
rewrapped with their inner axes inside the innermost level, Python scalars and static
values are closed over. Each level pushes a :class:`~.frames.MapFrame` while it traces,
so the named collectives know which JAX axis names stand behind a name. The mesh
lowering runs this same code on each device's shard, with its own frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from distmap import errors
from distmap._src import leaves as leaves_lib
from distmap._src.map import frames
from distmap._src.map.plan import Plan
from distmap._src.named import wrap

FrameFor = Callable[[int, int], frames.MapFrame]


def run(
    fn: Callable[..., Any],
    plan: Plan,
    arrays: Sequence[Any],
    leaves: Sequence[Any],
    *,
    sizes: Sequence[int] | None = None,
    chunk_size: int | None = None,
    frame_for: FrameFor | None = None,
) -> Any:
    """Map ``fn`` over the plan's levels (first outermost) and return its outputs with the mapped axes in front.

    Args:
        fn: the user's function.
        plan: the call's plan.
        arrays: the array of each of ``plan.arrays`` (a NamedArray's underlying array).
        leaves: the call's flat leaves, for the Python scalars and static values.
        sizes: the size of each level here (default: the plan's; a device's share on a mesh).
        chunk_size: map at most this many elements at once, in a sequential loop.
        frame_for: ``(level, size) -> MapFrame``, describing each level to the collectives
            (default: a plain vmap axis named as the mapped axis).
    """
    sizes = tuple(plan.sizes if sizes is None else sizes)
    out_info: list[Any] = []

    def innermost(dyn: Sequence[Any]) -> tuple[Any, ...]:
        full = list(leaves)
        for j, i in enumerate(plan.arrays):
            inner = plan.inner[i]
            full[i] = dyn[j] if inner is None else wrap(dyn[j], inner)
        a, k = jax.tree_util.tree_unflatten(plan.treedef, full)
        out = fn(*a, **k)
        out_tree, out_kinds, out_arrays = leaves_lib.split(out)
        for kind in out_kinds:
            if type(kind) is tuple and kind:
                clash = [ax.name for ax in kind if ax.name in plan.names]
                if clash:
                    raise errors.MappingError(
                        f"vmap over {clash[0]!r}: fn returned a NamedArray that already has axis {clash[0]!r} "
                        f"(axes {tuple(ax.name for ax in kind)}); rename it, since the map adds {clash[0]!r} to "
                        "every output."
                    )
        out_info[:] = [out_tree, out_kinds]
        return tuple(out_arrays)

    def level(lvl: int, dyn: Sequence[Any]) -> tuple[Any, ...]:
        if lvl == len(sizes):
            return innermost(dyn)
        size = sizes[lvl]
        name = plan.names[lvl]
        frame = frame_for(lvl, size) if frame_for is not None else frames.plain(name, size)
        # Whether a level is chunked is the plan's (global) decision, so collectives over it are
        # refused alike on one device and on a mesh; the loop runs where this part is larger.
        if chunk_size is not None and chunk_size < plan.sizes[lvl]:
            frame = dataclasses.replace(frame, chunked=True)

        def body(*d: Any) -> tuple[Any, ...]:
            return frames.traced_in(frame, level, lvl + 1, d)

        in_axes = plan.in_axes[lvl]
        if chunk_size is not None and chunk_size < size:
            return _chunked_call(body, dyn, in_axes, size, chunk_size)
        return jax.vmap(body, in_axes=in_axes, axis_name=frame.vmap_name, axis_size=size)(*dyn)

    out_arrays = level(0, arrays)
    out_tree, out_kinds = out_info
    return leaves_lib.join(out_tree, out_kinds, out_arrays, front=plan.front(sizes))


def _chunked_call(body, dyn: Sequence[Any], in_axes: Sequence[int | None], size: int, chunk: int):
    """``jax.vmap(body)`` over ``size`` elements, at most ``chunk`` at a time, in a sequential loop."""
    mapped_idx = [i for i, ax in enumerate(in_axes) if ax is not None]
    xs = [jnp.moveaxis(dyn[i], ax, 0) for i, ax in enumerate(in_axes) if ax is not None]
    if not xs:
        xs = [jnp.zeros((size,), jnp.int8)]  # only the loop's length matters

    def one(x_slices):
        full = list(dyn)
        for i, x in zip(mapped_idx, x_slices):
            full[i] = x
        return body(*full)

    return jax.lax.map(one, xs, batch_size=chunk)
