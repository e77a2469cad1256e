"""``named_jit``: ``jax.jit`` whose input and output shardings come from axis names, as Haliax's does.

``named_jit(fn, axis_mapping)(*args)`` runs ``fn`` jitted with ``axis_mapping`` current (so
``shard``, ``auto_sharded``, ``vmap`` and ``pspec_for`` inside see it) and lays every NamedArray
output out as ``out_axis_mapping`` (default: ``axis_mapping``) asks. Arguments keep the layout they
have unless ``in_axis_mapping`` is given, which places the NamedArray arguments by their names.
With no mapping given and none current, it is a plain ``jax.jit`` (outputs keep the layout XLA
gives them). Non-array arguments are static (hashed), as in ``eqx.filter_jit``; the mappings and
the mesh are part of the cache key, so changing either retraces.

``donate_args`` / ``donate_kwargs`` are pytree prefixes of bools (or ``leaf -> bool`` callables)
over the positional and keyword arguments: the arrays they mark are donated to the computation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax

from distmap import errors
from distmap._src import mesh as mesh_lib

_DONATE = ("none", "all", "all-except-first")


def named_jit(
    fn: Callable[..., Any] | None = None,
    axis_mapping: Any = None,
    *,
    in_axis_mapping: Any = None,
    out_axis_mapping: Any = None,
    mesh: Any = None,
    donate_args: Any = None,
    donate_kwargs: Any = None,
    donate: str = "none",
    axis_resources: Any = None,
    in_axis_resources: Any = None,
    out_axis_resources: Any = None,
) -> Any:
    """Jit ``fn`` with shardings for its NamedArray inputs and outputs derived from their axis names.

    Args:
        fn: the function (or leave it out to use ``named_jit(axis_mapping=...)`` as a decorator).
        axis_mapping: the mapping current inside ``fn``; defaults to the one current at call time.
        in_axis_mapping: how NamedArray arguments are placed; by default they keep their layout.
        out_axis_mapping: how NamedArray results are laid out (default ``axis_mapping``; with neither,
            results keep the layout XLA gives them).
        mesh: the mesh (default: the one set with ``jax.set_mesh`` at call time).
        donate_args: a pytree prefix of the positional arguments: ``True``/``False`` or ``leaf -> bool``
            per leaf, whether its arrays are donated (``donate_args=(True,)`` donates the first argument).
        donate_kwargs: the same for keyword arguments, a dict by name.
        donate: ``eqx.filter_jit``'s shorthand: ``"none"``, ``"all"`` or ``"all-except-first"``.
        axis_resources, in_axis_resources, out_axis_resources: Haliax's names for the three mappings.

    The result has ``.lower(*args, **kwargs)``, giving JAX's ``Lowered`` (``.as_text()``,
    ``.compile()``, ``.cost_analysis()``).

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> step = distmap.named_jit(lambda x: x * 2, {"batch": "data"}, mesh=mesh)
        >>> y = step(distmap.ones({"batch": 4, "feature": 2}))
        >>> tuple(y.array.sharding.spec), y.array.tolist()[0]
        (('data', None), [2.0, 2.0])
    """
    axis_mapping = _one_of("axis_mapping", axis_mapping, "axis_resources", axis_resources)
    in_axis_mapping = _one_of("in_axis_mapping", in_axis_mapping, "in_axis_resources", in_axis_resources)
    out_axis_mapping = _one_of("out_axis_mapping", out_axis_mapping, "out_axis_resources", out_axis_resources)
    if fn is None:
        return functools.partial(
            named_jit, axis_mapping=axis_mapping, in_axis_mapping=in_axis_mapping,
            out_axis_mapping=out_axis_mapping, mesh=mesh, donate_args=donate_args, donate_kwargs=donate_kwargs,
            donate=donate,
        )
    if not callable(fn):
        raise TypeError(f"named_jit: fn must be callable, got {type(fn).__name__}.")
    if donate not in _DONATE:
        raise errors.ArgumentTypeError(f"named_jit(donate=...): expected one of {_DONATE}, got {donate!r}.")
    if donate != "none" and (donate_args is not None or donate_kwargs is not None):
        raise errors.ArgumentTypeError("named_jit: pass donate= or donate_args=/donate_kwargs=, not both.")
    if donate_kwargs is not None and not isinstance(donate_kwargs, Mapping):
        raise errors.ArgumentTypeError(
            f"named_jit(donate_kwargs=...): expected a dict from keyword to a donation prefix, got {donate_kwargs!r}."
        )
    return NamedJit(fn, axis_mapping, in_axis_mapping, out_axis_mapping, mesh, donate_args, donate_kwargs, donate)


class NamedJit:
    """A function jitted by :func:`named_jit`: call it, or ``.lower(...)`` it."""

    def __init__(self, fn, axis_mapping, in_axis_mapping, out_axis_mapping, mesh, donate_args, donate_kwargs, donate):
        self.fn = fn
        self.mesh = mesh_lib.check_mesh(mesh, "named_jit")
        given = {"axis_mapping": axis_mapping, "in_axis_mapping": in_axis_mapping, "out_axis_mapping": out_axis_mapping}
        self.fixed = {k: (None if v is None else mesh_lib.as_axis_mapping(v)) for k, v in given.items()}
        self.donate_args, self.donate_kwargs, self.donate = donate_args, donate_kwargs, donate
        # The kept arrays and the static configuration come first and are never donated; the second
        # argument holds only the arrays to donate ("all-except-first" donates exactly those).
        self.jitted = eqx.filter_jit(_body, donate="all-except-first")
        functools.update_wrapper(self, fn)  # __name__, __doc__, __wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._on_mesh():
            return self.jitted(*self._prepare(args, kwargs))

    def _on_mesh(self) -> Any:
        """``mesh=`` made current for the call (JAX traces constraints on an Explicit mesh against the current one)."""
        given = self.mesh
        if isinstance(given, jax.sharding.Mesh) and mesh_lib.current_mesh() is not given:
            return jax.set_mesh(given)
        return contextlib.nullcontext()

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """The computation lowered for these arguments: JAX's ``Lowered`` (``.as_text()``, ``.cost_analysis()``),
        whose ``.compile()`` gives a function taking the same arguments as this one."""
        with self._on_mesh():
            return Lowered(self.jitted.lower(*self._prepare(args, kwargs)), self._prepare)  # type: ignore[attr-defined]  # filter_jit's wrapper has .lower (typed as a bare Callable)

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        inner = self.fixed["axis_mapping"] or mesh_lib.current_axis_mapping()
        in_map = self.fixed["in_axis_mapping"]
        out_map = self.fixed["out_axis_mapping"] or inner
        the_mesh = self.mesh if self.mesh is not None else mesh_lib.current_mesh()
        if the_mesh is None and (in_map is not None or out_map is not None):
            raise errors.MeshError(
                "named_jit: an axis mapping is given or current but no mesh: pass mesh=..., or set one with "
                "jax.set_mesh(mesh) (distmap.set_mesh)."
            )
        if in_map is not None:
            args, kwargs = mesh_lib.shard((args, kwargs), in_map, the_mesh)
        donated, kept = _split_donated((args, kwargs), self._donation(args, kwargs))
        return ((inner, out_map, the_mesh, self.fn), kept), donated

    def _donation(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Per argument, a donation prefix (a bool, a callable or a pytree of them)."""
        if self.donate == "all":
            return (True,) * len(args), dict.fromkeys(kwargs, True)
        if self.donate == "all-except-first":
            return (False,) + (True,) * (len(args) - 1), dict.fromkeys(kwargs, True)
        d = self.donate_args
        if d is None or isinstance(d, bool) or callable(d):
            per_arg = (False if d is None else d,) * len(args)
        else:
            per_arg = tuple(d)
            if len(per_arg) > len(args):
                raise errors.ArgumentTypeError(
                    f"named_jit(donate_args=...): {len(per_arg)} entries for a call with {len(args)} positional "
                    "arguments."
                )
            per_arg += (False,) * (len(args) - len(per_arg))
        dk = self.donate_kwargs or {}
        unknown = sorted(set(dk) - set(kwargs))
        if unknown:
            raise errors.ArgumentTypeError(
                f"named_jit(donate_kwargs=...): {unknown} are not keyword arguments of this call ({sorted(kwargs)})."
            )
        return per_arg, {k: dk.get(k, False) for k in kwargs}


class Lowered:
    """:meth:`NamedJit.lower`'s result: JAX's ``Lowered`` (every attribute of it reads through), with a
    ``compile()`` whose result is called with the arguments the ``named_jit`` function takes."""

    def __init__(self, lowered: Any, prepare: Callable[..., Any]):
        self._lowered, self._prepare = lowered, prepare

    def compile(self, *args: Any, **kwargs: Any) -> Compiled:
        return Compiled(self._lowered.compile(*args, **kwargs), self._prepare)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lowered.lowered, name)


class Compiled:
    """A compiled ``named_jit`` function: call it as the function; JAX's ``Compiled`` attributes
    (``memory_analysis()``, ``as_text()``, ``cost_analysis()``) read through."""

    def __init__(self, compiled: Any, prepare: Callable[..., Any]):
        self._compiled, self._prepare = compiled, prepare

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(*self._prepare(args, kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._compiled.compiled, name)


def _split_donated(tree: Any, prefix: Any) -> tuple[Any, Any]:
    """``tree`` split into the arrays to donate and everything else, by a pytree prefix of bools or callables."""

    def mask(flag: Any, sub: Any) -> Any:
        if callable(flag) and not isinstance(flag, bool):
            return jax.tree_util.tree_map(lambda leaf: bool(flag(leaf)), sub)
        if not isinstance(flag, bool):
            raise errors.ArgumentTypeError(f"named_jit: a donation flag must be a bool or a leaf -> bool function, got {flag!r}.")
        return jax.tree_util.tree_map(lambda _: flag, sub)

    try:
        full = jax.tree_util.tree_map(mask, prefix, tree, is_leaf=lambda x: isinstance(x, bool) or callable(x))
    except ValueError as e:
        raise errors.ArgumentTypeError(f"named_jit(donate_args=/donate_kwargs=...): not a prefix of the arguments: {e}") from None
    donated, kept = eqx.partition(tree, jax.tree_util.tree_map(lambda f, leaf: f and eqx.is_array(leaf), full, tree))
    return donated, kept


def _body(config_and_kept: tuple, donated: Any) -> Any:
    (inner, out_map, mesh, fn), kept = config_and_kept
    args, kwargs = eqx.combine(donated, kept)
    if inner is None:
        out = fn(*args, **kwargs)
    else:
        with mesh_lib.axis_mapping(inner):
            out = fn(*args, **kwargs)
    return out if out_map is None else mesh_lib.shard(out, out_map, mesh)


def _one_of(ours: str, a: Any, theirs: str, b: Any) -> Any:
    if a is not None and b is not None:
        raise errors.MeshError(f"named_jit: pass {ours}= or {theirs}= (Haliax's name), not both.")
    return a if a is not None else b
