"""The mapped function as data: its arrays become inputs, the rest is static. Mildly unpleasant code.

On a mesh, ``fn`` runs inside ``jax.shard_map``, and a value it reaches from outside may not
simply be closed over there: ``shard_map`` refuses any array typed on an Explicit mesh (a
Module's weights after ``distmap.shard``, an earlier map's output), and an array baked into
a compiled trace would go stale when the program replaces it. So the mesh lowering takes
``fn`` apart, as ``jax.jit`` takes its arguments apart, and passes every array it finds
into the jitted call and the ``shard_map`` as an input:

* a pytree (an equinox Module or its bound method, a ``jax.tree_util.Partial``): its leaves;
* a ``functools.partial``: its function (taken apart in turn), arguments and keywords;
* a bound method: its function and its ``__self__``;
* a plain Python function written outside the installed libraries: its defaults, the
  contents of its closure cells, and the values of the global names its code reads
  (nested lambdas and comprehensions included), each a pytree whose leaves are taken,
  and whose own functions are taken apart the same way;
* an instance of a plain class written outside the installed libraries (a trainer holding
  a model, say): its attributes, the same way; ``fn`` then sees a shallow copy of it.

:func:`take_apart` returns the arrays and a :class:`Skeleton`: the rest, which compares by
:func:`~.statics.static_key` (so a changed flag, float or function makes a new trace, never a
stale one) and which :meth:`Skeleton.rebuild` turns back into a function of new arrays.
What this cannot see (an object of a library class, a module's attribute), it leaves to JAX:
read when ``fn`` is traced, as ``jax.jit`` reads it.
"""

from __future__ import annotations

import functools
import copy
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Hashable
from typing import Any

import jax

from distmap._src import leaves as leaves_lib
from distmap._src.map.statics import Identity, static_key


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get("purelib"), paths.get("platlib"), paths.get("stdlib"), paths.get("platstdlib")}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the distmap package
    dirs.add(here)
    return tuple(sorted(os.path.join(d, "") for d in dirs if d))


_LIBRARY_DIRS = _library_dirs()


def _is_user_file(filename: str) -> bool:
    """Written by the user (a script, a notebook, the user's project), not by an installed library."""
    return not (filename.startswith(_LIBRARY_DIRS) or filename.startswith("<frozen"))


def _is_user_function(f: types.FunctionType) -> bool:
    return _is_user_file(f.__code__.co_filename)


_PLAIN_CLASSES: dict[type, bool] = {}


def _is_user_object(obj: Any) -> bool:
    """An instance of a plain class of the user's (its state in ``__dict__``, built by ``object.__new__``)."""
    cls = type(obj)
    known = _PLAIN_CLASSES.get(cls)
    if known is None:
        module = sys.modules.get(cls.__module__)
        filename = getattr(module, "__file__", None) or "<user>"  # __main__ of a notebook has no file
        known = (
            cls.__new__ is object.__new__
            and "__dict__" in dir(cls)
            and not isinstance(obj, type)
            and _is_user_file(filename)
        )
        if len(_PLAIN_CLASSES) < 4096:
            _PLAIN_CLASSES[cls] = known
    return known and hasattr(obj, "__dict__")


_NAMES: dict[types.CodeType, tuple[str, ...]] = {}


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` (and the code objects nested in it) may read as globals."""
    found = _NAMES.get(code)
    if found is None:
        names: dict[str, None] = {}
        stack = [code]
        while stack:
            c = stack.pop()
            names.update(dict.fromkeys(c.co_names))
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        found = tuple(names)
        if len(_NAMES) < 4096:
            _NAMES[code] = found
    return found


class _FunctionView:
    """A plain function seen as a pytree node: defaults, closure contents and read globals are its children."""

    __slots__ = ("aux", "children")

    def __init__(self, aux: tuple, children: tuple):
        self.aux, self.children = aux, children


def _rebuild_function(aux: tuple, children: tuple) -> types.FunctionType:
    code, fn_globals, name, qualname, names = aux
    defaults, kwdefaults, contents, values = children
    g = fn_globals.obj
    if any(v is not g.get(n) for n, v in zip(names, values)):
        g = dict(g)  # some global is now a traced array: this copy of the function reads it instead
        g.update(zip(names, values))
    out = types.FunctionType(code.obj, g, name, defaults, tuple(types.CellType(c) for c in contents))
    out.__kwdefaults__ = kwdefaults
    out.__qualname__ = qualname
    return out


jax.tree_util.register_pytree_node(_FunctionView, lambda v: (v.children, v.aux), _rebuild_function)


class _PartialView:
    __slots__ = ("children",)

    def __init__(self, children: tuple):
        self.children = children


jax.tree_util.register_pytree_node(
    _PartialView, lambda v: (v.children, None), lambda _, c: functools.partial(c[0], *c[1], **c[2])
)


class _MethodView:
    __slots__ = ("children",)

    def __init__(self, children: tuple):
        self.children = children


jax.tree_util.register_pytree_node(_MethodView, lambda v: (v.children, None), lambda _, c: types.MethodType(*c))


class _ObjectView:
    """A plain object seen as a pytree node: its attributes are its children."""

    __slots__ = ("aux", "children")

    def __init__(self, aux: tuple, children: tuple):
        self.aux, self.children = aux, children


def _rebuild_object(aux: tuple, children: tuple) -> Any:
    original, names = aux
    out = copy.copy(original.obj)
    for name, value in zip(names, children):
        object.__setattr__(out, name, value)
    return out


jax.tree_util.register_pytree_node(_ObjectView, lambda v: (v.children, v.aux), _rebuild_object)


def _view(obj: Any, seen: set[int]) -> Any:
    """``obj`` with the functions it holds replaced by views, so that flattening reaches their arrays."""
    t = type(obj)
    if t is types.FunctionType:
        if id(obj) in seen or not _is_user_function(obj):
            return obj
        seen.add(id(obj))
        try:
            contents = tuple(c.cell_contents for c in obj.__closure__ or ())
        except ValueError:  # an empty cell (a name the enclosing scope binds later): keep fn whole
            return obj
        g = obj.__globals__
        names = tuple(n for n in _global_names(obj.__code__) if n in g and type(g[n]) is not types.ModuleType)
        children = (
            _view_tree(obj.__defaults__, seen),
            _view_tree(obj.__kwdefaults__, seen),
            tuple(_view_tree(c, seen) for c in contents),
            tuple(_view_tree(g[n], seen) for n in names),
        )
        return _FunctionView((Identity(obj.__code__), Identity(g), obj.__name__, obj.__qualname__, names), children)
    if t is functools.partial:
        return _PartialView((_view(obj.func, seen), _view_tree(obj.args, seen), _view_tree(obj.keywords, seen)))
    if t is types.MethodType:
        return _MethodView((_view(obj.__func__, seen), _view_tree(obj.__self__, seen)))
    if _is_user_object(obj) and id(obj) not in seen:
        seen.add(id(obj))
        names = tuple(sorted(vars(obj)))
        return _ObjectView((Identity(obj), names), tuple(_view_tree(getattr(obj, n), seen) for n in names))
    return obj


def _view_tree(tree: Any, seen: set[int]) -> Any:
    if tree is None or type(tree) in (int, float, bool, str):
        return tree
    return jax.tree_util.tree_map(lambda leaf: _view(leaf, seen), tree)


class Skeleton:
    """Everything of ``fn`` but its arrays; equal skeletons may share a trace (see the module docstring)."""

    __slots__ = ("treedef", "statics", "_key", "_hash")

    def __init__(self, treedef: Any, statics: tuple[Any, ...], keys: tuple[Hashable, ...]):
        self.treedef = treedef
        self.statics = statics  # per leaf: the value, or _ARRAY where an array goes
        self._key = (treedef, keys)
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Skeleton) and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def rebuild(self, arrays: list[Any]) -> Callable[..., Any]:
        """The function again, with ``arrays`` (traced, say) where its arrays were."""
        it = iter(arrays)
        return jax.tree_util.tree_unflatten(self.treedef, [next(it) if s is _ARRAY else s for s in self.statics])


_ARRAY = object()


def take_apart(fn: Callable[..., Any]) -> tuple[Skeleton, list[Any]]:
    """``fn``'s arrays (see the module docstring) and the :class:`Skeleton` that puts it back together."""
    leaves, treedef = jax.tree_util.tree_flatten(_view_tree(fn, set()))
    arrays = [x for x in leaves if leaves_lib.is_array(x)]
    statics = tuple(_ARRAY if leaves_lib.is_array(x) else x for x in leaves)
    keys = tuple(None if s is _ARRAY else static_key(s) for s in statics)
    return Skeleton(treedef, statics, keys), arrays
