"""The stack of named maps being traced, read by the named collectives.

Each ``distmap.vmap`` level pushes a :class:`MapFrame` while it traces the user's
function, so ``distmap.psum(x, "batch")`` knows which JAX axis names stand behind
``"batch"`` (the vmap axis alone on one device; the vmap axis and the mesh axes on a
mesh), how many elements are real (uneven sizes are padded on a mesh), and whether
the map is chunked (then no collective over it can be right).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class MapFrame:
    """One named axis being mapped.

    Attributes:
        name: the user's axis name.
        size: the true (global) size of the axis.
        vmap_name: the axis name given to ``jax.vmap`` for the local part.
        local_size: elements per device in the local vmap (``size`` on one device).
        mesh_axes: the mesh axes the axis is split over, outermost first (empty on one device).
        num_shards: the product of those mesh axes' sizes.
        chunked: whether the local vmap runs in sequential chunks.
    """

    name: str
    size: int
    vmap_name: str
    local_size: int
    mesh_axes: tuple[str, ...] = ()
    num_shards: int = 1
    chunked: bool = False

    @property
    def padded(self) -> bool:
        """Whether the map runs over padding beyond the true size (uneven sharding)."""
        return self.local_size * self.num_shards != self.size

    @property
    def jax_axis_names(self) -> tuple[str, ...]:
        """Every JAX axis name a collective over this axis must combine: mesh axes, then the vmap axis."""
        return self.mesh_axes + (self.vmap_name,)


_PLAIN: dict[tuple[str, int], MapFrame] = {}


def plain(name: str, size: int) -> MapFrame:
    """The frame of a one-device map level: a vmap axis named as the mapped axis (made once per name and size)."""
    frame = _PLAIN.get((name, size))
    if frame is None:
        frame = MapFrame(name, size, name, size)
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


@contextlib.contextmanager
def pushed(frame: MapFrame) -> Iterator[None]:
    """Make ``frame`` current while the body runs (the body traces the user's function)."""
    token = _STACK.set(_STACK.get() + (frame,))
    try:
        yield
    finally:
        _STACK.reset(token)
