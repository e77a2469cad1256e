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
from distmap._src import mesh as mesh_lib
from distmap._src.named import NamedArray, is_named_array


def _one(x: Any, title: str = "NamedArray") -> str:
    arr, names, sizes = _parts(x)
    if isinstance(arr, jax.core.Tracer):
        raise errors.MeshError(
            "layout: the array is traced (inside jax.jit), so where it lies is not known yet; call layout on "
            "the jitted function's result, or distmap.visualize_shardings inside (it prints once compiled)."
        )
    return _describe(names, sizes, arr.dtype, arr.sharding, title)


def _parts(x: Any) -> tuple[Any, tuple[str, ...], tuple[int, ...]]:
    """The array, its axis names and sizes: a plain array's dimensions are named by position (``dim0``, ...)."""
    if isinstance(x, NamedArray):
        return x.array, x.axis_names, tuple(a.size for a in x.axes)
    shape = tuple(x.shape)
    return x, tuple(f"dim{i}" for i in range(len(shape))), shape


def _describe(names: tuple[str, ...], sizes: tuple[int, ...], dtype: Any, sharding: Any, title: str) -> str:
    head = f"{title} " + " ".join(f"{n}={s}" for n, s in zip(names, sizes)) + f" {dtype}"
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
    for name, size, part in zip(names, sizes, spec):
        axes = mesh_lib.entry_axes(part)
        if axes and mesh is not None:
            ways = 1
            for a in axes:
                ways *= mesh.shape[a]
            over = ", ".join(repr(a) for a in axes)
            lines.append(f"  {name:<{width}} {size:>{3}}  over {over} ({ways} way): blocks of {size // ways}")
        else:
            lines.append(f"  {name:<{width}} {size:>{3}}  whole on every device")
    index_map = sharding.devices_indices_map(tuple(sizes))
    cols = [max(len(n), 5) for n in names]
    lines.append("  device  " + "  ".join(f"{n:<{w}}" for n, w in zip(names, cols)))
    for dev in sorted(index_map, key=lambda d: d.id):
        idx = index_map[dev]
        cells = []
        for sl, size, w in zip(idx, sizes, cols):
            lo, hi, _ = sl.indices(size)
            cells.append(f"{f'{lo}:{hi}':<{w}}")
        lines.append(f"  {dev.id:<6}  " + "  ".join(cells).rstrip())
    return "\n".join(line.rstrip() for line in lines)


def _arrays(tree: Any) -> list[tuple[str, Any]]:
    """The NamedArrays and unnamed arrays of ``tree``, each with its path (empty for ``tree`` itself)."""
    if isinstance(tree, NamedArray) or _is_array(tree):
        return [("", tree)]
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_named_array)
    return [(jax.tree_util.keystr(p), v) for p, v in flat if isinstance(v, NamedArray) or _is_array(v)]


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array) or (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "sharding"))


def layout(tree: Any) -> str:
    """The picture for a NamedArray (or a plain array, its dimensions named ``dim0``, ``dim1``, ...), or for
    each array of a pytree (headed by its path).

    Each line of the table is one device: the slice of every named axis it holds.
    """
    found = _arrays(tree)
    if not found:
        raise TypeError(f"layout: expected an array or a pytree holding some, got {type(tree).__name__}.")
    return "\n\n".join(_one(v, p or ("NamedArray" if isinstance(v, NamedArray) else "array")) for p, v in found)


def visualize_shardings(tree: Any) -> None:
    """Print :func:`layout` (Haliax's name). Inside ``jax.jit`` the layout is known only once the program is
    compiled, so each array's picture is printed then (through ``jax.debug.inspect_array_sharding``)."""
    found = _arrays(tree)
    if not found:
        raise TypeError(f"visualize_shardings: expected an array or a pytree holding some, got {type(tree).__name__}.")
    for path, x in found:
        arr, names, sizes = _parts(x)
        title = path or ("NamedArray" if isinstance(x, NamedArray) else "array")
        if isinstance(arr, jax.core.Tracer):
            jax.debug.inspect_array_sharding(
                arr, callback=lambda sharding, n=names, s=sizes, d=arr.dtype, t=title: print(_describe(n, s, d, sharding, t))  # type: ignore[misc]  # mypy cannot type a lambda with a default
            )
        else:
            print(_describe(names, sizes, arr.dtype, arr.sharding, title))
