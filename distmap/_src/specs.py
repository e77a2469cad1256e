"""How unnamed leaves are mapped: the ``default`` / ``args`` / ``kwargs`` specs of ``vmap``.

A spec is an ``int`` (map that dimension), ``None`` (do not map), a callable
``leaf -> int | None``, or a pytree prefix of these. ``args`` overrides ``default``
per positional argument, ``kwargs`` per keyword.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np

from distmap import errors
from distmap._src.named import NamedArray

UnnamedAxisSpec = Union[int, None, Callable[[Any], Union[int, None]]]


def is_array(x: Any) -> bool:
    """JAX arrays (tracers included) and numpy arrays; not Python scalars."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def default_spec(leaf: Any) -> int | None:
    """The default: arrays of rank >= 1 are mapped on dim 0; rank-0 arrays (PRNG keys too) and non-arrays are not."""
    if is_array(leaf) and leaf.ndim > 0:
        return 0
    return None


def _is_named(x: Any) -> bool:
    return isinstance(x, NamedArray)


# Plain functions are never pytree nodes, so they need no registry look-up (the common callable spec).
_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def is_spec_leaf(s: Any) -> bool:
    t = type(s)
    if s is None or t is int or t in _FUNCTION_TYPES:  # fast paths for the common specs
        return True
    if isinstance(s, (int, np.integer)):
        return not isinstance(s, bool)
    return callable(s) and jax.tree_util.all_leaves([s])


class _Specs:
    """A holder jax does not flatten: the per-leaf specs of one subtree."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]):
        self.items = items


def check_spec(spec: Any, where: str) -> None:
    """Reject a spec whose leaves are not ints, None or callables, before any call."""
    if is_spec_leaf(spec):
        return
    for leaf in jax.tree_util.tree_leaves(spec, is_leaf=is_spec_leaf):
        if not is_spec_leaf(leaf):
            raise errors.MappingError(
                f"vmap({where}=...): spec leaves must be an int, None or a callable leaf -> int | None, "
                f"got {type(leaf).__name__} {leaf!r}."
            )


def _per_leaf(spec: Any, subtree: Any, where: str) -> list[Any]:
    """The spec of every leaf of ``subtree`` (NamedArrays are leaves), in flatten order."""
    if is_spec_leaf(spec):
        if type(subtree) is NamedArray or is_array(subtree):  # one leaf: no need to flatten
            return [spec]
        n = len(jax.tree_util.tree_leaves(subtree, is_leaf=_is_named))
        return [spec] * n
    try:
        holders = jax.tree_util.tree_map(
            lambda s, sub: _Specs(_per_leaf(s, sub, where)), spec, subtree, is_leaf=is_spec_leaf
        )
    except (ValueError, TypeError) as e:
        raise errors.MappingError(
            f"vmap: the spec for {where} is not a pytree prefix of that argument: {e}"
        ) from None
    out: list[Any] = []
    for h in jax.tree_util.tree_leaves(holders, is_leaf=lambda x: isinstance(x, _Specs)):
        out.extend(h.items)
    return out


def leaf_specs(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    default: Any,
    args_spec: Sequence[Any],
    kwargs_spec: Mapping[str, Any],
) -> list[Any]:
    """Specs for every leaf of ``(args, kwargs)`` in ``jax.tree_util`` flatten order (NamedArrays as leaves)."""
    out: list[Any] = []
    for i, a in enumerate(args):
        out.extend(_per_leaf(args_spec[i] if i < len(args_spec) else default, a, f"args[{i}]"))
    for k in sorted(kwargs):
        out.extend(_per_leaf(kwargs_spec.get(k, default), kwargs[k], f"kwargs[{k!r}]"))
    return out


def resolve(spec: Any, leaf: Any, shape: Sequence[int], where: Callable[[], str]) -> int | None:
    """The dimension of ``shape`` that ``spec`` maps (normalised to >= 0), or None; ``where()`` names the leaf in errors."""
    if callable(spec):
        spec = spec(leaf)
        if spec is not None and (isinstance(spec, bool) or not isinstance(spec, (int, np.integer))):
            raise errors.MappingError(f"{where()}: a spec callable returned {spec!r}; it must return an int or None.")
    if spec is None:
        return None
    ndim = len(shape)
    if not -ndim <= spec < ndim:
        raise errors.MappingError(
            f"{where()} has rank {ndim} here (shape {tuple(shape)}), so it cannot be mapped on dim {spec}; "
            "give it spec None to broadcast it."
        )
    return int(spec) % ndim


def path_str(path: Sequence[Any]) -> str:
    """``args[0]`` / ``kwargs['params'].weight`` for a key path into ``(args, kwargs)``."""
    if not path:
        return "<root>"
    head, rest = path[0], path[1:]
    idx = getattr(head, "idx", None)
    if idx == 0 and rest:
        first = f"args[{rest[0].idx}]" if hasattr(rest[0], "idx") else "args"
        return first + jax.tree_util.keystr(tuple(rest[1:]))
    if idx == 1 and rest:
        first = f"kwargs[{rest[0].key!r}]" if hasattr(rest[0], "key") else "kwargs"
        return first + jax.tree_util.keystr(tuple(rest[1:]))
    return jax.tree_util.keystr(tuple(path))


def leaf_paths(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """Readable paths of every leaf of ``(args, kwargs)``, computed only when an error needs them."""
    flat, _ = jax.tree_util.tree_flatten_with_path((tuple(args), dict(kwargs)), is_leaf=_is_named)
    return [path_str(p) for p, _ in flat]
