"""The mapped function as data: its arrays become inputs, the rest is static. Mildly unpleasant code.

On a mesh, ``fn`` runs inside ``jax.shard_map``, and a value it reaches from outside may not
simply be closed over there: ``shard_map`` refuses any array typed on an Explicit mesh (a
Module's weights after ``distmap.shard``, an earlier map's output), and an array baked into
a compiled trace would go stale when the program replaces it. So the mesh lowering finds
every array ``fn`` can reach, as ``jax.jit`` finds the arrays of its arguments, and passes
them into the jitted call and the ``shard_map`` as inputs. It looks in:

* ``fn`` itself where it is a pytree (an equinox Module or its bound method, a
  ``jax.tree_util.Partial``): its leaves;
* a plain Python function written outside the installed libraries: its defaults, its
  closure cells and the global names its code reads (nested lambdas and comprehensions
  included); a ``functools.partial``: its function, arguments and keywords; a bound
  method: its function and its object;
* an instance of a plain class written outside the installed libraries (a trainer holding
  a model, say): its attributes;

and, in each value found there, every pytree leaf, the functions and objects among them
taken apart in turn. Each such place (a global of a module, a cell, an attribute ...) is a
*slot*. :func:`take_apart` returns the arrays and a :class:`Skeleton`, which compares by
the slots and the :func:`~.statics.static_key` of every non-array value in them (so a
changed flag, float or function makes a new trace, never a stale one).

While ``fn`` is traced, :meth:`Skeleton.installed` puts the traced arrays into the very
slots they came from and puts the old values back afterwards. Nothing is copied: objects
keep their identity (``x is SENTINEL`` holds), and what ``fn`` does to them at trace time
(appending to a global list, counting) happens to the real ones, as under ``jax.jit``. A
value ``fn`` changes while it is traced is read again at the next call, so such a ``fn``
traces again, as it would run again on one device. Slots are filled for the length of one
trace, so two threads must not trace the same function at once. What this cannot see (an
object of a library class, a module's attribute), it leaves to JAX: read when ``fn`` is
traced, as ``jax.jit`` reads it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Hashable, Iterator
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
    """Written by the user (a script, a notebook, the user's project), not by an installed library, nor
    generated from a string (a dataclass's ``__init__``)."""
    return not (filename.startswith((*_LIBRARY_DIRS, "<frozen")) or filename == "<string>")


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
            cls.__new__ is object.__new__  # type: ignore[comparison-overlap]  # mypy sees two unrelated signatures
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


class _Slot:
    """A place a value of ``fn`` lives in: a global, a cell, a function's defaults, an attribute, a partial."""

    __slots__ = ("kind", "where", "name")

    def __init__(self, kind: str, where: Any, name: str | None = None):
        self.kind, self.where, self.name = kind, where, name

    def key(self) -> tuple:
        return (self.kind, Identity(self.where), self.name)

    def get(self) -> Any:
        w, kind = self.where, self.kind
        if kind == "global":
            return w[self.name]
        if kind == "cell":
            return w.cell_contents
        if kind == "defaults":
            return w.__defaults__
        if kind == "kwdefaults":
            return w.__kwdefaults__
        if kind == "attr":
            return vars(w)[self.name]
        return (w.func, w.args, w.keywords)  # partial

    def set(self, value: Any) -> None:
        w, kind = self.where, self.kind
        if kind == "global":
            w[self.name] = value
        elif kind == "cell":
            w.cell_contents = value
        elif kind == "defaults":
            w.__defaults__ = value
        elif kind == "kwdefaults":
            w.__kwdefaults__ = value
        elif kind == "attr":
            vars(w)[self.name] = value  # not setattr: a frozen dataclass or a __setattr__ of the class stays out of it
        else:
            func, args, keywords = value
            w.__setstate__((func, tuple(args), dict(keywords), vars(w) or None))


class _Walk:
    """One pass over everything ``fn`` reaches: the arrays, the slots holding them and the key."""

    def __init__(self) -> None:
        self.arrays: list[Any] = []
        self.keys: list[Hashable] = []
        self.filled: list[tuple[_Slot, Any, tuple[Any, ...]]] = []  # slots that hold arrays
        self.seen: set[int] = set()
        self.hold: list[Any] = []  # what ``seen`` names stays alive, so its ids are not reused

    def value(self, value: Any) -> tuple[Any, tuple[Any, ...]]:
        """``value``'s treedef and leaves (``_ARRAY`` where an array goes); its arrays and key recorded."""
        leaves, treedef = jax.tree_util.tree_flatten(value)
        statics = []
        for leaf in leaves:
            if leaves_lib.is_array(leaf):
                self.arrays.append(leaf)
                statics.append(_ARRAY)
            else:
                self.visit(leaf)
                statics.append(leaf)
        self.keys.append((treedef, tuple(None if x is _ARRAY else static_key(x) for x in statics)))
        return treedef, tuple(statics)

    def slot(self, slot: _Slot) -> None:
        self.keys.append(slot.key())
        treedef, statics = self.value(slot.get())
        if any(x is _ARRAY for x in statics):
            self.filled.append((slot, treedef, statics))

    def visit(self, obj: Any) -> None:
        t = type(obj)
        if t is types.MethodType:
            self.visit(obj.__func__)
            self.visit(obj.__self__)
            return
        if id(obj) in self.seen:
            return
        if t is types.FunctionType:
            if not _is_user_function(obj):
                return
            self._seen(obj)
            self.keys.append(Identity(obj.__code__))
            if obj.__defaults__:
                self.slot(_Slot("defaults", obj))
            if obj.__kwdefaults__:
                self.slot(_Slot("kwdefaults", obj))
            for cell in obj.__closure__ or ():
                try:
                    cell.cell_contents  # noqa: B018 - read only to learn whether the cell is empty
                except ValueError:  # an empty cell (a name the enclosing scope binds later): nothing to read
                    self.keys.append(("empty cell", Identity(cell)))
                    continue
                self.slot(_Slot("cell", cell))
            g = obj.__globals__
            for name in _global_names(obj.__code__):
                if name in g and type(g[name]) is not types.ModuleType:
                    self.slot(_Slot("global", g, name))
        elif t is functools.partial:
            self._seen(obj)
            self.slot(_Slot("partial", obj))
        elif _is_user_object(obj):
            self._seen(obj)
            for name in sorted(vars(obj)):
                self.slot(_Slot("attr", obj, name))
            for method in _methods(type(obj)):
                self.visit(method)

    def _seen(self, obj: Any) -> None:
        self.seen.add(id(obj))
        self.hold.append(obj)


_METHODS: dict[type, tuple[types.FunctionType, ...]] = {}


def _methods(cls: type) -> tuple[types.FunctionType, ...]:
    """The plain functions the user's own classes in ``cls``'s MRO define (what its instances run)."""
    found = _METHODS.get(cls)
    if found is None:
        found = tuple(
            f for c in cls.__mro__ for f in vars(c).values()
            if type(f) is types.FunctionType and _is_user_function(f)
        )
        if len(_METHODS) < 4096:
            _METHODS[cls] = found
    return found


def _fill(treedef: Any, statics: tuple[Any, ...], it: Any) -> Any:
    return jax.tree_util.tree_unflatten(treedef, [next(it) if x is _ARRAY else x for x in statics])


class Skeleton:
    """Everything of ``fn`` but its arrays, and where those go back; equal skeletons may share a trace."""

    __slots__ = ("top", "filled", "_key", "_hash")

    def __init__(self, top: tuple[Any, tuple[Any, ...]], filled: list[tuple[_Slot, Any, tuple[Any, ...]]],
                 keys: tuple[Hashable, ...]):
        self.top = top  # fn's own treedef and leaves
        self.filled = filled
        self._key = keys
        self._hash = hash(keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Skeleton) and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    @contextlib.contextmanager
    def installed(self, arrays: list[Any]) -> Iterator[Callable[..., Any]]:
        """``fn`` with ``arrays`` (traced, say) where its arrays were, for the length of the ``with`` block."""
        it = iter(arrays)
        fn = _fill(*self.top, it)
        news = [(slot, _fill(treedef, statics, it)) for slot, treedef, statics in self.filled]
        olds = []
        try:
            for slot, new in news:
                olds.append((slot, slot.get()))
                slot.set(new)
            yield fn
        finally:
            for slot, old in reversed(olds):
                slot.set(old)


_ARRAY = object()


def take_apart(fn: Callable[..., Any], *more: Any) -> tuple[Skeleton, list[Any]]:
    """The arrays ``fn`` (and the values ``more``, a call's static arguments) reach, and the :class:`Skeleton`.

    ``more`` is looked into (its objects' attributes and functions' slots become part of the key and
    give up their arrays) but not rebuilt: the values themselves stay where the call keeps them.
    """
    walk = _Walk()
    top = walk.value(fn)
    # fn as an object (an equinox Module, a plain callable) or a Module's bound method runs its class's code:
    # the globals those methods read count as fn's own.
    func = getattr(fn, "__func__", None)
    if type(func) is types.FunctionType:
        walk.visit(func)
    for method in _methods(type(getattr(fn, "__self__", fn))):
        walk.visit(method)
    for value in more:
        walk.visit(value)
        walk.keys.append(static_key(value))
    return Skeleton(top, walk.filled, tuple(walk.keys)), walk.arrays
