"""When two static values may share one trace: the key every cache of the engine compares.

A compiled trace bakes static values in (a flag, a string, a closure's float, an int
that sets a shape), so a cache may serve a trace only to values the trace would have
computed the same for. :func:`static_key` gives the key for that: numbers compare by
type and exact bits (``-0.0`` is not ``0.0``, ``1`` is not ``True``, a NaN matches the
same NaN), tuples, sets and frozensets element by element, other hashable values by their own
``__eq__`` (as ``jax.jit`` compares ``static_argnums``), and unhashable ones by identity
(a plain object's attributes are keyed where it is found, by :mod:`.fn_parts`).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import Any


class Identity:
    """Compares as the object it holds (kept alive, so its id is never reused while the key lives)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and self.obj is other.obj

    def __hash__(self) -> int:
        return id(self.obj)


class _ByValue:
    """Compares as its value's own ``__eq__`` does, and as unequal where that raises or gives no bool."""

    __slots__ = ("value", "_hash")

    def __init__(self, value: Any, h: int):
        self.value = value
        self._hash = h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ByValue) or type(self.value) is not type(other.value):
            return False
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except Exception:  # noqa: BLE001 - any __eq__ of the user's, or an array's ambiguous truth value
            return False

    def __hash__(self) -> int:
        return self._hash


_PLAIN = (int, bool, str, bytes, type(None), type(Ellipsis), type)


def static_key(value: Any) -> Hashable:
    """A hashable key, equal for two values exactly when a trace made with one is right for the other.

    Example:
        >>> static_key(0.0) == static_key(-0.0), static_key(1) == static_key(True)
        (False, False)
        >>> static_key(float("nan")) == static_key(float("nan"))
        True
    """
    t = type(value)
    if t is float:
        return (float, struct.pack("<d", value))
    if t in _PLAIN:
        return (t, value)
    if t is complex:
        return (complex, struct.pack("<dd", value.real, value.imag))
    if t is tuple or t is frozenset or t is set:
        keys = tuple(static_key(v) for v in value)
        return (t, keys if t is tuple else frozenset(keys))  # a set by what it holds now: a new member, a new key
    if t is bytearray:
        return (t, bytes(value))
    try:
        h = hash(value)
    except TypeError:
        return Identity(value)
    return _ByValue(value, h)
