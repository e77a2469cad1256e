"""The stack of named maps being traced, read by the named collectives.

Each ``distmap.vmap`` level pushes a :class:`MapFrame` while it traces the user's
function, so ``distmap.psum(x, "batch")`` knows which JAX axis names stand behind
``"batch"`` (the vmap axis alone on one device; the vmap axis and the mesh axes on a
mesh), how the axis is split (:class:`~.split.Split`: uneven sizes are padded on a mesh),
and whether the map is chunked (then no collective over it can be right).
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from distmap._src.map.split import Split


@dataclasses.dataclass(frozen=True)
class MapFrame:
    """One named axis being mapped.

    Attributes:
        name: the user's axis name.
        split: how the axis is laid out (its true size, shards, mesh axes; :class:`~.split.Split`).
        vmap_name: the axis name given to ``jax.vmap`` for the device's part.
        chunked: whether the device's part runs in sequential chunks.
    """

    name: str
    split: Split
    vmap_name: str
    chunked: bool = False

    @property
    def size(self) -> int:
        """The true (global) size of the axis."""
        return self.split.size

    @property
    def mesh_axes(self) -> tuple[str, ...]:
        """The mesh axes the axis is split over, outermost first (empty on one device)."""
        return self.split.mesh_axes


T = TypeVar("T")

_PLAIN: dict[tuple[str, int], MapFrame] = {}


def plain(name: str, size: int) -> MapFrame:
    """The frame of a one-device map level: a vmap axis named as the mapped axis (made once per name and size)."""
    frame = _PLAIN.get((name, size))
    if frame is None:
        frame = MapFrame(name, Split(size), name)
        if len(_PLAIN) < 4096:
            _PLAIN[name, size] = frame
    return frame


_STACK: contextvars.ContextVar[tuple[MapFrame, ...]] = contextvars.ContextVar("distmap_map_frames", default=())


def current_frames() -> tuple[MapFrame, ...]:
    """The frames of the maps being traced now, outermost first."""
    return _STACK.get()


def find_frame(name: str) -> MapFrame | None:
    """The innermost frame mapping ``name``, or None."""
    for frame in reversed(_STACK.get()):
        if frame.name == name:
            return frame
    return None


def traced_in(frame: MapFrame, body: Callable[..., T], *args: Any) -> T:
    """``body(*args)`` with ``frame`` current (the body traces the user's function)."""
    token = _STACK.set(_STACK.get() + (frame,))
    try:
        return body(*args)
    finally:
        _STACK.reset(token)
