"""The errors distmap raises, in one place.

Each subclasses the builtin that fits (``ValueError`` or ``TypeError``), so an
existing ``except ValueError`` keeps working. Messages name the axis, the
argument and what was expected.

Example:
    >>> import distmap
    >>> x = distmap.zeros({"batch": 2})
    >>> try:
    ...     x.axis_size("feature")
    ... except distmap.errors.AxisNotFoundError as e:
    ...     print(e)
    axis 'feature' is not among this array's axes ('batch',).
"""

from __future__ import annotations


class DistmapError(Exception):
    """Base class of every error distmap raises on purpose."""


class AxisNotFoundError(DistmapError, ValueError):
    """A named axis was asked for that the array (or map) does not have."""


class DuplicateAxisError(DistmapError, ValueError):
    """Two axes of one array (or one selection) share a name."""


class AxisSizeError(DistmapError, ValueError):
    """An axis has two different sizes where they must agree."""


class ShapeMismatchError(DistmapError, ValueError):
    """An array's shape does not match the axes it was given."""


class AxisSelectorError(DistmapError, TypeError):
    """Something that is not an ``Axis``, a name or a selection of them was given as one."""


class AxisIndexError(DistmapError, IndexError):
    """An integer index is out of range for the named axis it indexes."""


class ArgumentTypeError(DistmapError, TypeError):
    """An argument of the wrong kind: a plain array where a NamedArray is needed, an object array,
    a non-key where a PRNG key is needed, a NamedArray where it has no meaning (``len``, ``bool``)."""


class MappingError(DistmapError, ValueError):
    """A map over named axes was set up wrongly (missing size, bad spec, collective outside its map)."""


class MeshError(DistmapError, ValueError):
    """An axis mapping or mesh does not fit: unknown mesh axis, no mesh, a mesh axis claimed twice."""


class DistributedError(DistmapError, RuntimeError):
    """Multi-process start-up failed: wrong order, missing configuration, or processes that disagree."""


class DivergenceError(DistributedError):
    """The ranks of a run launched different multi-process computations; ``ranks`` are those at fault."""

    def __init__(self, message: str, ranks: list[int] | tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = tuple(ranks)


__all__ = [
    "DistmapError",
    "AxisNotFoundError",
    "DuplicateAxisError",
    "AxisSizeError",
    "ShapeMismatchError",
    "AxisSelectorError",
    "AxisIndexError",
    "ArgumentTypeError",
    "MappingError",
    "MeshError",
    "DistributedError",
    "DivergenceError",
]
