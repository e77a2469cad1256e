"""Axes, selectors and selections: naming the dimensions of an array.

An :class:`Axis` is a name and a size. A *selector* names one axis (an ``Axis``
or a plain ``str``); a *selection* names several (a sequence of selectors or a
``{name: size | None}`` mapping). Functions that take axes accept any of these
and resolve names to sizes against the arrays they are given.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from distmap import errors


class _AxisFields(NamedTuple):
    name: str
    size: int


class Axis(_AxisFields):
    """A named dimension of a given size: frozen, hashable, validated.

    ``Axis`` is a tuple underneath, so it hashes and compares at C speed (it sits in
    the pytree metadata of every :class:`~distmap.NamedArray`) and unpacks as
    ``name, size = axis``.

    Example:
        >>> Batch = Axis("batch", 4)
        >>> Batch.name, Batch.size
        ('batch', 4)
        >>> Batch.resize(8)
        Axis(name='batch', size=8)
    """

    __slots__ = ()

    def __new__(cls, name: str, size: int) -> Axis:
        if not isinstance(name, str) or not name:
            raise errors.AxisSelectorError(f"an axis name must be a non-empty str, got {name!r}.")
        if isinstance(size, bool):
            raise errors.AxisSelectorError(f"axis {name!r}: size must be an int, got the bool {size!r}.")
        try:
            size = operator.index(size)
        except TypeError:
            raise errors.AxisSelectorError(
                f"axis {name!r}: size must be an int, got {type(size).__name__} {size!r}."
            ) from None
        if size < 0:
            raise errors.AxisSizeError(f"axis {name!r}: size must be >= 0, got {size}.")
        return tuple.__new__(cls, (name, size))

    @classmethod
    def _make(cls, iterable) -> Axis:  # type: ignore[override]  # typeshed types _make generic in cls
        # NamedTuple's _make (and so _replace) would skip the checks in __new__.
        return cls(*iterable)

    def resize(self, size: int) -> Axis:
        """The same name with another size."""
        return Axis(self.name, size)

    def alias(self, name: str) -> Axis:
        """Another name with the same size."""
        return Axis(name, self.size)

    def __repr__(self) -> str:
        return f"Axis(name={self.name!r}, size={self.size})"


AxisSelector = Axis | str
"""One axis, by ``Axis`` or by name."""

AxisSelection = AxisSelector | Sequence[AxisSelector] | Mapping[str, int | None]
"""Several axes: a selector, a sequence of selectors, or a ``{name: size | None}`` mapping."""

SizedAxes = Axis | Sequence[Axis] | Mapping[str, int]
"""Axes with sizes, as constructors such as :func:`distmap.zeros` need them."""

AxisSpec = SizedAxes
"""Haliax's name for :data:`SizedAxes`, kept so that hax code reads the same. (Not an ``in_axes``
spec: those are the ``default`` / ``args`` / ``kwargs`` specs of :func:`distmap.vmap`.)"""


def axis_name(sel: AxisSelector) -> str:
    """The name of one selector.

    Example:
        >>> axis_name(Axis("batch", 3)), axis_name("batch")
        ('batch', 'batch')
    """
    if isinstance(sel, str):
        if not sel:
            raise errors.AxisSelectorError("an axis name must be a non-empty str, got ''.")
        return sel
    if isinstance(sel, Axis):
        return sel.name
    raise errors.AxisSelectorError(
        f"expected an Axis or an axis name (str), got {type(sel).__name__} {sel!r}."
    )


def parse_selection(sel: AxisSelection, *, what: str = "axis") -> tuple[tuple[str, int | None], ...]:
    """Normalise a selection to ``((name, size or None), ...)``, in order, names unique.

    ``what`` names the argument in error messages.

    Example:
        >>> parse_selection(["batch", Axis("feature", 3)])
        (('batch', None), ('feature', 3))
        >>> parse_selection({"batch": 4})
        (('batch', 4),)
    """
    if isinstance(sel, Axis):
        return ((sel.name, sel.size),)
    if isinstance(sel, str):
        return ((axis_name(sel), None),)
    if isinstance(sel, Mapping):
        out = []
        for name, size in sel.items():
            if not isinstance(name, str):
                raise errors.AxisSelectorError(
                    f"{what}: mapping keys must be axis names (str), got {type(name).__name__} {name!r}."
                )
            out.append((name, None if size is None else Axis(name, size).size))
    elif isinstance(sel, Sequence) and not isinstance(sel, (bytes, bytearray)):
        out = []
        for item in sel:
            if isinstance(item, Axis):
                out.append((item.name, item.size))
            elif isinstance(item, str):
                out.append((axis_name(item), None))
            else:
                hint = ""
                if isinstance(item, int):
                    hint = (
                        "; distmap takes axes by name, not positions or shapes: give names with sizes, "
                        "e.g. {'batch': 2, 'feature': 3} or (Axis('batch', 2), Axis('feature', 3))"
                    )
                raise errors.AxisSelectorError(
                    f"{what}: expected an Axis or an axis name (str) in the sequence, "
                    f"got {type(item).__name__} {item!r}{hint}."
                )
    else:
        hint = " (axes go by name, not by position)" if isinstance(sel, int) else ""
        raise errors.AxisSelectorError(
            f"{what}: expected an Axis, an axis name, a sequence of them or a {{name: size}} mapping, "
            f"got {type(sel).__name__} {sel!r}{hint}."
        )
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise errors.DuplicateAxisError(f"{what}: axis name(s) {dup} given more than once in {sel!r}.")
    return tuple(out)


def selection_names(sel: AxisSelection, *, what: str = "axis") -> tuple[str, ...]:
    """The names of a selection, in order."""
    return tuple(n for n, _ in parse_selection(sel, what=what))


def is_single_selector(sel: object) -> bool:
    """Whether ``sel`` names exactly one axis (an ``Axis`` or a ``str``)."""
    return isinstance(sel, (Axis, str))


def to_axes(spec: SizedAxes | AxisSelection, *, what: str = "axes") -> tuple[Axis, ...]:
    """Turn a spec whose every axis has a size into a tuple of ``Axis``.

    Example:
        >>> to_axes({"batch": 2, "feature": 3})
        (Axis(name='batch', size=2), Axis(name='feature', size=3))
    """
    out = []
    for name, size in parse_selection(spec, what=what):
        if size is None:
            raise errors.AxisSelectorError(
                f"{what}: axis {name!r} needs a size here; pass Axis({name!r}, n) or {{{name!r}: n}}."
            )
        out.append(Axis(name, size))
    return tuple(out)
