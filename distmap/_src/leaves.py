"""Take a pytree apart into its arrays and put it back: the plumbing of every transformation here.

``vmap``, the mesh lowering and ``Stacked`` all pass only arrays through JAX's transformations
and carry the rest alongside: the axes of each NamedArray, and non-array leaves as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from distmap._src.axis import Axis
from distmap._src.named import NamedArray, is_named_array, wrap

Kind = Any  # tuple[Axis, ...] for a NamedArray, True for an unnamed array, a Static for anything else


class Static:
    """A non-array leaf, carried past a transformation as it is (compared by identity)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and self.value is other.value

    def __hash__(self) -> int:
        return id(self.value)


_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def is_array(x: Any) -> bool:
    """JAX arrays (tracers included) and numpy arrays; not Python scalars."""
    return isinstance(x, _ARRAY_TYPES)


def split(tree: Any) -> tuple[Any, list[Kind], list[Any]]:
    """``(treedef, kinds, arrays)``: NamedArrays count as leaves; ``arrays`` holds the array of each array leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_named_array)
    kinds: list[Kind] = []
    arrays: list[Any] = []
    for leaf in leaves:  # one pass: this runs on every map's outputs while it traces
        if type(leaf) is NamedArray:
            kinds.append(leaf.axes)
            arrays.append(leaf.array)
        elif isinstance(leaf, _ARRAY_TYPES):
            kinds.append(True)
            arrays.append(leaf)
        else:
            kinds.append(Static(leaf))
    return treedef, kinds, arrays


def rebuild(kinds: Sequence[Kind], arrays: Sequence[Any], front: tuple[Axis, ...] = ()) -> list[Any]:
    """The leaves back from their kinds and arrays; NamedArrays get the axes ``front`` before their own."""
    it = iter(arrays)
    out = []
    for k in kinds:
        if k is True:
            out.append(next(it))
        elif type(k) is tuple:
            out.append(wrap(next(it), front + k))
        else:
            out.append(k.value)
    return out


def join(treedef: Any, kinds: Sequence[Kind], arrays: Sequence[Any], front: tuple[Axis, ...] = ()) -> Any:
    """The inverse of :func:`split` (with ``front`` axes added to every NamedArray)."""
    return jax.tree_util.tree_unflatten(treedef, rebuild(kinds, arrays, front))
