"""The collectives' primitives: reduce, gather, index and move data over a map's two parts.

Inside ``distmap.vmap``, a mapped axis lives in two parts. The device's part is a
``jax.vmap`` axis (``frame.vmap_name``, ``split.local_size`` elements); on a mesh the rest
is the mesh axes its shards sit on (``split.mesh_axes``). Element ``g`` of the axis is
local element ``g % L`` of shard ``g // L`` (:class:`~.split.Split`), and any padding of an
uneven split sits at the end. Every named collective is written once here, against both
parts at the same time; on one device the mesh part is empty and the same code runs.

How each primitive uses the parts (``k`` shards of ``L`` elements):

* **index**: ``shard * L + local``, and whether that is a real element (not padding).
* **reduce** (sum, max, min): one ``jax.lax`` reduction over the mesh axes and the vmap axis
  together, so JAX reduces the device's part locally and all-reduces one value per device.
  Padding is masked first. Floating max/min go through an integer encoding with the same
  total order, so NaN wins on every path (XLA's all-reduce of floats drops NaNs on CPU).
* **gather**: the mesh part first (each device sends its block once), then the local part
  (no communication), then padding cut.
* **permute** (``ppermute``): one collective-permute of the local block per distinct shard
  offset among the pairs, then a local selection.
* **scatter_sum** (``psum_scatter``) and **all_to_all**: the data's scattered dimension seen as
  ``(shards, L)``: each part moves its own piece, padded to ``k * L`` and cut back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distmap._src.map.frames import MapFrame

Frames = tuple[MapFrame, ...]


def jax_names(fs: Frames) -> tuple[str, ...]:
    """Every JAX axis name behind the frames: each frame's mesh axes, then its vmap axis."""
    out: list[str] = []
    for f in fs:
        out.extend(f.mesh_axes)
        out.append(f.vmap_name)
    return tuple(out)


def index(fs: Frames) -> tuple[jax.Array, jax.Array]:
    """``(flat index over the frames, first major; whether this element is real rather than padding)``."""
    flat = jnp.zeros((), jnp.int32)
    valid = jnp.ones((), bool)
    for f in fs:
        i = f.split.index(f.vmap_name)
        flat = flat * f.size + i
        if f.split.padded:
            valid = valid & (i < f.size)
    return flat, valid


def _any_padded(fs: Frames) -> bool:
    return any(f.split.padded for f in fs)


def _explicit_typed(a: jax.Array) -> bool:
    """Whether ``a``'s type carries a sharding on a mesh with Explicit axes (traced under ``jax.set_mesh``).

    Under ``jax.vmap`` and ``jax.jit``, the psum/pmax/pmin batching rule of JAX 0.10-0.12 keeps
    the whole batch's sharding on each element's type and fails; ``all_gather`` has no such
    trouble, so such operands reduce over the vmap axis by a gather and a local reduction.
    Inside the mesh lowering every mesh axis is Manual, so this is a one-device map's case.
    """
    sharding = getattr(jax.typeof(a), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = jax.sharding.AxisType.Explicit
    return mesh is not None and any(t == explicit for t in getattr(mesh, "axis_types", ()))


# -- reduce ---------------------------------------------------------------------------------

_LAX: dict[str, Callable[..., jax.Array]] = {"sum": jax.lax.psum, "max": jax.lax.pmax, "min": jax.lax.pmin}
_LOCAL: dict[str, Callable[..., jax.Array]] = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min}


def _reduce_raw(a: jax.Array, fs: Frames, how: str) -> jax.Array:
    """``a`` reduced over every element of the frames, padding already neutral."""
    if not _explicit_typed(a):
        return _LAX[how](a, jax_names(fs))
    for f in fs:  # a one-device map under an Explicit mesh: see _explicit_typed
        a = _LOCAL[how](jax.lax.all_gather(a, f.vmap_name, axis=0), axis=0).astype(a.dtype)
    mesh_axes = tuple(n for f in fs for n in f.mesh_axes)
    return _LAX[how](a, mesh_axes) if mesh_axes else a


def reduce_sum(a: jax.Array, fs: Frames) -> jax.Array:
    """Sum over every real element of the frames; a bool counts as ``int32``, as ``jax.lax.psum`` has it."""
    if a.dtype == jnp.bool_:
        a = a.astype(jnp.int32)
    if _any_padded(fs):
        a = jnp.where(index(fs)[1], a, jnp.zeros((), a.dtype))
    return _reduce_raw(a, fs, "sum")


def reduce_extreme(a: jax.Array, fs: Frames, high: bool) -> jax.Array:
    """Max (``high``) or min over every real element of the frames; NaN wins; differentiable for floats."""
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        return _complex_extreme(a, fs, high)
    if jnp.issubdtype(a.dtype, jnp.floating):
        return _float_extreme(a, fs, high)
    if _any_padded(fs):
        a = jnp.where(index(fs)[1], a, _neutral(a.dtype, high))
    return _reduce_raw(a, fs, "max" if high else "min")


def _neutral(dtype, high: bool):
    """The value that never wins a max (``high``) or min of ``dtype`` (integers and bools)."""
    if dtype == jnp.bool_:
        return jnp.asarray(not high)
    info = jnp.iinfo(dtype)
    return jnp.asarray(info.min if high else info.max, dtype)


_INT_OF = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def _encode(a: jax.Array, high: bool) -> jax.Array:
    """Floats as integers of the same width and the same total order; NaN above +inf (``high``) or below -inf."""
    it = _INT_OF[a.dtype.itemsize]
    top = jnp.iinfo(it).max
    i = jax.lax.bitcast_convert_type(a, it)
    key = jnp.where(i < 0, i ^ top, i)
    return jnp.where(jnp.isnan(a), jnp.iinfo(it).max if high else jnp.iinfo(it).min, key)


def _decode(key: jax.Array, dtype) -> jax.Array:
    top = jnp.iinfo(key.dtype).max
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ top, key), dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _float_extreme(a: jax.Array, fs: Frames, high: bool) -> jax.Array:
    key = _encode(a, high)
    if _any_padded(fs):
        key = jnp.where(index(fs)[1], key, _neutral(key.dtype, high))
    return _decode(_reduce_raw(key, fs, "max" if high else "min"), a.dtype)


@_float_extreme.defjvp
def _float_extreme_jvp(fs, high, primals, tangents):
    # jax.lax.pmax has no derivative; as jnp.max does, the elements that tie share the tangent.
    (a,), (t,) = primals, tangents
    out = _float_extreme(a, fs, high)
    hit = a == out
    if _any_padded(fs):
        hit = hit & index(fs)[1]
    hit = hit.astype(t.dtype)
    return out, _reduce_raw(t * hit, fs, "sum") / _reduce_raw(hit, fs, "sum")


def _complex_extreme(a: jax.Array, fs: Frames, high: bool) -> jax.Array:
    """Complex max/min (ordered as ``jax.lax.max`` orders them) by gathering the axis and reducing locally."""
    for f in reversed(fs):
        a = gather(a, f)
    flat = a.reshape((-1,) + a.shape[len(fs) :])
    op = jax.lax.max if high else jax.lax.min
    return functools.reduce(op, [flat[i] for i in range(flat.shape[0])])


# -- gather ---------------------------------------------------------------------------------


def gather(a: jax.Array, f: MapFrame) -> jax.Array:
    """Every real element's ``a``, stacked at dim 0 in axis order (size ``f.size``)."""
    split = f.split
    if not split.mesh_axes:
        return jax.lax.all_gather(a, f.vmap_name, axis=0, tiled=False)
    a = jax.lax.all_gather(a, split.mesh_axes, axis=0, tiled=False)  # (shards, ...): each block sent once
    a = jax.lax.all_gather(a, f.vmap_name, axis=1, tiled=False)  # (shards, local, ...): no communication
    return split.cut(a.reshape((split.padded_size,) + a.shape[2:]), 0)


def _local_gather(a: jax.Array, fs: Frames) -> jax.Array:
    """The device's block of every frame, flattened at dim 0 (first frame major): no communication."""
    for f in reversed(fs):
        a = jax.lax.all_gather(a, f.vmap_name, axis=0, tiled=False)
    lead = int(np.prod([f.split.local_size for f in fs]))
    return a.reshape((lead,) + a.shape[len(fs) :])


# -- permute --------------------------------------------------------------------------------


def permute(a: jax.Array, fs: Frames, pairs: Sequence[tuple[int, int]]) -> jax.Array:
    """``jax.lax.ppermute`` over the frames' flat index: ``a`` of element ``src`` goes to ``dst``; zeros elsewhere.

    The pairs are grouped by shard offset; each offset costs one collective-permute of the
    device's block (none for moves within a shard), followed by a local selection.
    """
    shards = [f.split.shards for f in fs]
    locals_ = [f.split.local_size for f in fs]
    n_shards, n_local = int(np.prod(shards)), int(np.prod(locals_))

    def locate(g: int) -> tuple[int, int]:
        s, l = 0, 0
        for f, rest in zip(fs, _suffix_products([f.size for f in fs])):
            gi, g = divmod(g, rest)
            si, li = f.split.locate(gi)
            s, l = s * f.split.shards + si, l * f.split.local_size + li
        return s, l

    # rounds[offset][dst shard, dst local] = src local (-1: nothing from this round)
    rounds: dict[int, np.ndarray] = {}
    for src, dst in pairs:
        (ss, sl), (ds, dl) = locate(src), locate(dst)
        table = rounds.setdefault((ds - ss) % n_shards, np.full((n_shards, n_local), -1, np.int32))
        table[ds, dl] = sl
    mesh_axes = tuple(x for f in fs for x in f.mesh_axes)
    shard = jax.lax.axis_index(mesh_axes) if mesh_axes else 0
    local = jnp.zeros((), jnp.int32)
    for f in fs:
        local = local * f.split.local_size + jax.lax.axis_index(f.vmap_name)
    out = jnp.zeros_like(a)
    for offset in sorted(rounds):
        table = rounds[offset]
        moved = a
        if offset:
            moved = jax.lax.ppermute(a, mesh_axes, [(s, (s + offset) % n_shards) for s in range(n_shards)])
        if len(fs) == 1 and (table == table[0]).all() and _completable(table[0]):
            # The same local move on every shard: JAX's own permute of the vmap axis (no gather).
            src_of = table[0]
            picked = jax.lax.ppermute(moved, fs[0].vmap_name, _complete(src_of))
            has = jnp.asarray(src_of >= 0)[local]
        else:
            src_local = jnp.asarray(table)[shard, local]
            picked = _local_gather(moved, fs)[jnp.maximum(src_local, 0)]
            has = src_local >= 0
        out = jnp.where(has, picked, out)
    return out


def _suffix_products(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for s in reversed(sizes):
        out.append(acc)
        acc *= s
    return out[::-1]


def _completable(src_of: np.ndarray) -> bool:
    return len({int(s) for s in src_of if s >= 0}) == int((src_of >= 0).sum())


def _complete(src_of: np.ndarray) -> list[tuple[int, int]]:
    """A full permutation ``[(src, dst)]`` that agrees with ``src_of`` where it is set (JAX's vmap rule needs one)."""
    used = {int(s) for s in src_of if s >= 0}
    spare = iter(s for s in range(len(src_of)) if s not in used)
    return [(int(s) if s >= 0 else next(spare), d) for d, s in enumerate(src_of)]


# -- scatter and all-to-all -------------------------------------------------------------------


def scatter_sum(a: jax.Array, f: MapFrame, dim: int, tiled: bool) -> jax.Array:
    """``jax.lax.psum_scatter`` over one frame: the sum of ``a`` over the map, element ``g`` keeping piece ``g``
    of dimension ``dim`` (its size is ``f.size``, or a multiple of it when ``tiled``; untiled, ``dim`` goes)."""
    split = f.split
    if a.dtype == jnp.bool_:
        a = a.astype(jnp.int32)
    if split.padded:
        a = jnp.where(index((f,))[1], a, jnp.zeros((), a.dtype))
    piece = a.shape[dim] // f.size
    a = jnp.moveaxis(a, dim, 0)
    if split.padded:
        a = jnp.pad(a, [(0, (split.padded_size - f.size) * piece)] + [(0, 0)] * (a.ndim - 1))
    a = a.reshape((split.shards, split.local_size, piece) + a.shape[1:])
    # The local part first (no communication), then one reduce-scatter over the mesh. (The local
    # part scatters dimension 0: JAX's vmap rule for psum_scatter misplaces the batch otherwise.)
    a = jax.lax.psum_scatter(jnp.swapaxes(a, 0, 1), f.vmap_name, scatter_dimension=0, tiled=False)  # (shards, piece, ...)
    if split.mesh_axes:
        a = jax.lax.psum_scatter(a, split.mesh_axes, scatter_dimension=0, tiled=False)  # (piece, ...)
    else:
        a = a[0]
    if not tiled:
        return a[0]  # the scattered dimension goes, the others keep their order
    return jnp.moveaxis(a, 0, dim)


def all_to_all(a: jax.Array, f: MapFrame, split_dim: int, concat_dim: int, tiled: bool) -> jax.Array:
    """``jax.lax.all_to_all`` over one frame (dimensions as ``jax.lax`` counts them), padding of an uneven
    split sent nowhere and received from nowhere."""
    split = f.split
    n = f.size
    piece = a.shape[split_dim] // n
    rest_shape = a.shape[:split_dim] + a.shape[split_dim + 1 :]
    x = jnp.moveaxis(a, split_dim, 0).reshape((n, piece) + rest_shape)
    if split.padded:
        x = jnp.pad(x, [(0, split.padded_size - n)] + [(0, 0)] * (x.ndim - 1))
    x = jax.lax.all_to_all(x, split.mesh_axes + (f.vmap_name,), 0, 0, tiled=True)  # dim 0: the source
    x = split.cut(x, 0)  # (n sources, piece, *rest)
    if not tiled:
        x = x[:, 0]  # (n, *rest): the sources become a dimension at concat_dim
        return jnp.moveaxis(x, 0, concat_dim)
    # Put the piece back where the split dimension was, then fold the sources into concat_dim, source-major.
    x = jnp.moveaxis(x, 1, 1 + split_dim)  # (n, *a.shape with split_dim -> piece)
    x = jnp.moveaxis(x, 0, concat_dim)  # sources just before the concat dimension's own elements
    shape = list(x.shape)
    merged = shape[concat_dim] * shape[concat_dim + 1]
    return x.reshape(shape[:concat_dim] + [merged] + shape[concat_dim + 2 :])
