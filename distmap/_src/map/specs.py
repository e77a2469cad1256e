"""How unnamed leaves are mapped: the ``default`` / ``args`` / ``kwargs`` specs of a map.

A spec is an ``int`` (map that dimension), ``None`` (do not map), a callable
``leaf -> int | None``, or a pytree prefix of these (the same forms as ``in_axes`` of
``jax.vmap`` and ``equinox.filter_vmap``).

Specs bind to the mapped function's *parameters*, as in Haliax: ``args=(s0, s1)`` gives
the spec of the first and second positional parameters, ``kwargs={"u": s}`` the spec of
the parameter ``u``, whether the call passes them by position or by keyword. Where the
signature cannot be read, or for ``*args`` / ``**kwargs``, they bind to the call's
positions and keywords instead.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from distmap import errors
from distmap._src.leaves import is_array
from distmap._src.named import is_named_array
from distmap._src.named import NamedArray

InAxisSpec = int | Callable[[Any], int | None] | None
"""The spec of one unnamed leaf: a dimension, ``None``, or a callable returning one of those."""


def default_spec(leaf: Any) -> int | None:
    """The default: arrays of rank >= 1 are mapped on dim 0; rank-0 arrays and non-arrays are not.

    A typed PRNG key (``jax.random.key``) is a rank-0 array, so it is shared; a batch of
    them (``jax.random.split(key, n)``) is mapped. A raw key (``jax.random.PRNGKey``) is a
    ``uint32`` array of shape ``(2,)`` and is mapped like any other rank-1 array.
    """
    if is_array(leaf) and leaf.ndim > 0:
        return 0
    return None


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
        n = len(jax.tree_util.tree_leaves(subtree, is_leaf=is_named_array))
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


class Binding:
    """The mapped function's parameters, read once, to bind specs by name.

    ``positional`` names the positional parameters in order; ``keyword_only`` the others
    that have names. ``None`` (see :func:`binding_of`) means the signature could not be read.
    """

    __slots__ = ("positional", "keyword_only", "_by_keyword", "key")

    def __init__(self, positional: tuple[str, ...], n_positional_only: int, keyword_only: frozenset[str]):
        self.positional = positional
        self.keyword_only = keyword_only
        self.key = (positional, n_positional_only, keyword_only)  # what spec binding reads
        # Positional-only parameters cannot be passed by keyword, so no kwargs spec names them.
        self._by_keyword = {name: i for i, name in enumerate(positional) if i >= n_positional_only}

    def keyword_position(self, name: str) -> int | None:
        """The position of the positional parameter ``name`` (when passed by keyword), or None."""
        return self._by_keyword.get(name)


_BY_CODE: dict[types.CodeType, Binding] = {}


def binding_of(fn: Callable[..., Any]) -> Binding | None:
    """The parameters of ``fn``, or None when its signature cannot be read (some builtins).

    A plain function is read from its code object (and remembered by it: a function built
    afresh in a loop costs nothing more); anything else through ``inspect.signature``.
    """
    if type(fn) is types.FunctionType and not hasattr(fn, "__wrapped__") and not hasattr(fn, "__signature__"):
        code = fn.__code__
        found = _BY_CODE.get(code)
        if found is None:
            n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
            names = code.co_varnames
            found = Binding(tuple(names[:n_pos]), code.co_posonlyargcount, frozenset(names[n_pos : n_pos + n_kw]))
            if len(_BY_CODE) < 4096:
                _BY_CODE[code] = found
        return found
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    params = list(sig.parameters.values())
    positional = tuple(p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD))
    n_only = sum(1 for p in params if p.kind is kinds.POSITIONAL_ONLY)
    return Binding(positional, n_only, frozenset(p.name for p in params if p.kind is kinds.KEYWORD_ONLY))


def call_specs(
    binding: Binding | None,
    n_args: int,
    kwarg_names: Sequence[str],
    default: Any,
    args_spec: Sequence[Any],
    kwargs_spec: Mapping[str, Any],
) -> tuple[list[Any], dict[str, Any]]:
    """The spec of each argument of one call: ``(per positional argument, per keyword)``.

    Raises ``MappingError`` for a spec that names no argument of the call, and for an
    argument that gets two specs (one through ``args``, one through ``kwargs``).
    """
    pos_specs: list[Any] = []
    kw_specs: dict[str, Any] = {}
    used_args: set[int] = set()
    used_kwargs: set[str] = set()

    def pick(position: int | None, name: str | None, what: str) -> Any:
        by_pos = position if position is not None and position < len(args_spec) else None
        by_name = name if name is not None and name in kwargs_spec else None
        if by_pos is not None and by_name is not None:
            raise errors.MappingError(
                f"vmap: {what} has a spec in args[{position}] and another in kwargs[{name!r}]; give one."
            )
        if by_pos is not None:
            used_args.add(by_pos)
            return args_spec[by_pos]
        if by_name is not None:
            used_kwargs.add(by_name)
            return kwargs_spec[by_name]
        return default

    for p in range(n_args):
        if binding is None:
            pos_specs.append(pick(p, None, f"positional argument {p}"))
        elif p < len(binding.positional):
            name = binding.positional[p]
            named = name if binding.keyword_position(name) is not None else None
            pos_specs.append(pick(p, named, f"parameter {name!r}"))
        else:  # *args: by the call's position
            pos_specs.append(pick(p, None, f"positional argument {p} (in *args)"))
    for k in kwarg_names:
        position = binding.keyword_position(k) if binding is not None else None
        kw_specs[k] = pick(position, k, f"parameter {k!r}")

    extra_args = [i for i in range(len(args_spec)) if i not in used_args]
    extra_kwargs = [k for k in kwargs_spec if k not in used_kwargs]
    if extra_args or extra_kwargs:
        passed = [f"{n_args} positional"] + ([f"keywords {sorted(kwarg_names)}"] if kwarg_names else [])
        names = f"; fn's parameters are {list(binding.positional) + sorted(binding.keyword_only)}" if binding else ""
        what = [f"args[{i}]" for i in extra_args] + [f"kwargs[{k!r}]" for k in extra_kwargs]
        raise errors.MappingError(
            f"vmap: the spec{'s' if len(what) > 1 else ''} {', '.join(what)} match{'' if len(what) > 1 else 'es'} "
            f"no argument of this call (it passed {' and '.join(passed)}{names}). "
            "Give specs only for arguments the call passes."
        )
    return pos_specs, kw_specs


def leaf_specs(
    args: Sequence[Any], kwargs: Mapping[str, Any], arg_specs: Sequence[Any], kwarg_specs: Mapping[str, Any]
) -> list[Any]:
    """Specs for every leaf of ``(args, kwargs)`` in ``jax.tree_util`` flatten order (NamedArrays as leaves)."""
    out: list[Any] = []
    for i, a in enumerate(args):
        out.extend(_per_leaf(arg_specs[i], a, f"args[{i}]"))
    for k in sorted(kwargs):
        out.extend(_per_leaf(kwarg_specs[k], kwargs[k], f"kwargs[{k!r}]"))
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
    flat, _ = jax.tree_util.tree_flatten_with_path((tuple(args), dict(kwargs)), is_leaf=is_named_array)
    return [path_str(p) for p, _ in flat]
