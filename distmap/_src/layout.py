"""A text picture of how NamedArrays lie over a mesh: which named axis is split over which mesh
axis, and which block of each named axis every device holds.

Example:
    >>> import distmap, jax
    >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
    >>> x = distmap.shard(distmap.zeros({"batch": 4, "feature": 2}), {"batch": "data"}, mesh)
    >>> print(distmap.layout(x))
    NamedArray batch=4 feature=2 float32 on mesh {'data': 1}
      batch    4  over 'data' (1 way): blocks of 4
      feature  2  whole on every device
      device  batch  feature
      0       0:4    0:2
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from distmap import errors
from distmap._src.named import NamedArray


def _one(x: NamedArray, title: str = "NamedArray") -> str:
    arr = x.array
    if isinstance(arr, jax.core.Tracer):
        raise errors.MeshError(
            "layout: the array is traced (inside jax.jit), so where it lies is not known yet; call layout on "
            "the jitted function's result, or use jax.debug.inspect_array_sharding inside."
        )
    sharding = arr.sharding
    names = x.axis_names
    head = f"{title} " + " ".join(f"{a.name}={a.size}" for a in x.axes) + f" {x.dtype}"
    if isinstance(sharding, NamedSharding):
        mesh = sharding.mesh
        head += f" on mesh {dict(mesh.shape)}"
        spec = tuple(sharding.spec) + (None,) * (len(names) - len(sharding.spec))
    else:
        head += f" on {len(sharding.device_set)} device(s) ({type(sharding).__name__})"
        spec = (None,) * len(names)
        mesh = None
    lines = [head]
    width = max([len(n) for n in names] + [6])
    for ax, part in zip(x.axes, spec):
        axes = () if part is None else ((part,) if isinstance(part, str) else tuple(part))
        if axes and mesh is not None:
            ways = 1
            for a in axes:
                ways *= mesh.shape[a]
            over = ", ".join(repr(a) for a in axes)
            lines.append(f"  {ax.name:<{width}} {ax.size:>{3}}  over {over} ({ways} way): blocks of {ax.size // ways}")
        else:
            lines.append(f"  {ax.name:<{width}} {ax.size:>{3}}  whole on every device")
    index_map = sharding.devices_indices_map(tuple(arr.shape))
    cols = [max(len(n), 5) for n in names]
    lines.append("  device  " + "  ".join(f"{n:<{w}}" for n, w in zip(names, cols)))
    for dev in sorted(index_map, key=lambda d: d.id):
        idx = index_map[dev]
        cells = []
        for sl, ax, w in zip(idx, x.axes, cols):
            lo, hi, _ = sl.indices(ax.size)
            cells.append(f"{f'{lo}:{hi}':<{w}}")
        lines.append(f"  {dev.id:<6}  " + "  ".join(cells).rstrip())
    return "\n".join(line.rstrip() for line in lines)


def layout(tree: Any) -> str:
    """The picture for a NamedArray, or for each NamedArray of a pytree (headed by its path).

    Each line of the table is one device: the slice of every named axis it holds.
    """
    if isinstance(tree, NamedArray):
        return _one(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: isinstance(v, NamedArray))
    parts = [_one(v, jax.tree_util.keystr(p) or "NamedArray") for p, v in flat if isinstance(v, NamedArray)]
    if not parts:
        raise TypeError(f"layout: expected a NamedArray or a pytree holding some, got {type(tree).__name__}.")
    return "\n\n".join(parts)


def visualize_shardings(tree: Any) -> None:
    """Print :func:`layout` (Haliax's name)."""
    print(layout(tree))
