"""Haliax's partitioning helpers, by name: ``field(axis_names=...)``, ``set_mesh`` and ``auto_sharded``.

``auto_sharded(x)`` lays every NamedArray of ``x`` out as the *current* axis mapping asks, on the
current mesh, and does nothing where there is no mapping or no mesh. ``dot``, ``einsum`` and
``distmap.random.*`` apply it to their results, as Haliax does, so that inside a program run under
``distmap.axis_mapping(compute rules)`` every intermediate these make is pinned to the layout its
names ask for (XLA otherwise propagates layouts from the inputs, which under an FSDP-style
parameter mapping can keep activations in the parameters' layout). Inside a mesh ``vmap`` (whose
arrays are per-device) and for an axis its mesh axes do not divide, nothing is constrained.

Example:
    >>> import distmap, jax
    >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
    >>> with distmap.axis_mapping({"batch": "data"}), distmap.set_mesh(mesh):
    ...     y = distmap.auto_sharded(distmap.zeros({"batch": 4}))
    >>> tuple(y.array.sharding.spec)
    ('data',)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from distmap import errors
from distmap._src import mesh as mesh_lib
from distmap._src.map import frames
from distmap._src.named import NamedArray, is_named_array, wrap


def auto_sharded(x: Any, mesh: Any = None) -> Any:
    """``x`` with every NamedArray laid out by the current axis mapping (a no-op without a mapping or a mesh).

    Outside ``jit`` the arrays are placed (``device_put``); inside, constrained. Unlike :func:`distmap.shard`,
    an axis its mesh axes do not divide leaves that array unconstrained rather than raising, since the
    rule applies to every intermediate.
    """
    mapping = mesh_lib.current_axis_mapping()
    if mapping is None:
        return x
    mesh = mesh_lib.check_mesh(mesh, "auto_sharded")
    mesh = mesh if mesh is not None else mesh_lib.current_mesh()
    if mesh is None or any(f.mesh_axes for f in frames.current_frames()):
        return x

    def one(leaf: Any) -> Any:
        if type(leaf) is not NamedArray or not leaf.axes:
            return leaf
        spec = mesh_lib.loop_pspec(leaf, mapping, mesh)
        return leaf if spec is None else wrap(mesh_lib.place(leaf.array, spec, mesh), leaf.axes)

    if type(x) is NamedArray:
        return one(x)
    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


def set_mesh(mesh: Any) -> Any:
    """Haliax's name for ``jax.set_mesh``: make ``mesh`` current, for the program or (as a context
    manager) for a ``with`` block. distmap reads the mesh ``jax.set_mesh`` sets.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> with distmap.set_mesh(mesh):
        ...     dict(jax.sharding.get_abstract_mesh().shape)
        {'data': 1}
    """
    if not isinstance(mesh, jax.sharding.Mesh):
        raise errors.MeshError(
            f"set_mesh: expected a jax.sharding.Mesh (e.g. from distmap.make_mesh), got {type(mesh).__name__} {mesh!r}."
        )
    return jax.set_mesh(mesh)


def field(*, axis_names: Sequence[str] | None = None, static: bool = False, **kwargs: Any) -> Any:
    """``equinox.field`` that can name the axes of an unnamed array field, for :func:`distmap.pspec_for`,
    :func:`distmap.infer_resource_partitions` and ``named_jit``: ``w: jax.Array = distmap.field(axis_names=("embed", "mlp"))``.

    Example:
        >>> import distmap, equinox as eqx, jax.numpy as jnp
        >>> class Proj(eqx.Module):
        ...     w: jnp.ndarray = distmap.field(axis_names=("embed", "mlp"))
        >>> tuple(distmap.pspec_for(Proj(jnp.ones((4, 8))), {"mlp": "model"}, preserve_existing_shardings=False).w)
        (None, 'model')
    """
    import equinox as eqx  # equinox loads on first use (a Module class being defined), not with distmap

    if axis_names is not None:
        if static:
            raise errors.ArgumentTypeError("field: a static field holds no array, so it cannot have axis_names.")
        if isinstance(axis_names, str) or not all(isinstance(n, str) and n for n in axis_names):
            raise errors.AxisSelectorError(f"field(axis_names=...): expected a tuple of axis names, got {axis_names!r}.")
        if len(set(axis_names)) != len(axis_names):
            raise errors.DuplicateAxisError(f"field(axis_names=...): names repeat in {tuple(axis_names)}.")
        axis_names = tuple(axis_names)
    metadata = dict(kwargs.pop("metadata", {}))
    metadata[mesh_lib.AXIS_NAMES] = axis_names
    return eqx.field(static=static, metadata=metadata, **kwargs)
