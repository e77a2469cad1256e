"""How one mapped axis is laid out: the rule for sizes that the shards do not divide.

A mapped axis of size ``n`` split over ``k`` shards (the product of its mesh axes' sizes)
is mapped as ``k`` blocks of ``L = ceil(n / k)`` elements: element ``g`` of the axis is
element ``g % L`` of shard ``g // L``. When ``k`` does not divide ``n`` the last
``k * L - n`` positions are padding, always at the end. Padding repeats the axis's last
element, so it never makes a NaN or an inf the real data would not (gradients included);
collectives leave it out, and outputs are cut back to ``n``.

:class:`Split` owns that rule. The mesh lowering asks it how to pad, take and cut arrays;
the collectives ask it for an element's global index and whether it is real. On one device
``k = 1`` and nothing is padded, so both lowerings run the same code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """A mapped axis of ``size`` elements over ``shards`` shards on ``mesh_axes`` (none on one device).

    Example:
        >>> s = Split(10, 4, ("data",))
        >>> s.local_size, s.padded_size, s.padded
        (3, 12, True)
    """

    size: int
    shards: int = 1
    mesh_axes: tuple[str, ...] = ()

    @property
    def local_size(self) -> int:
        """Elements per shard, ``ceil(size / shards)``."""
        return -(-self.size // self.shards)

    @property
    def padded_size(self) -> int:
        """``shards * local_size``: the size the map runs over."""
        return self.local_size * self.shards

    @property
    def padded(self) -> bool:
        """Whether the map runs over padding past ``size``."""
        return self.padded_size != self.size

    # -- the lowering's side: arrays along the axis -------------------------------------

    def pad(self, arr, dim: int):
        """``arr`` with dimension ``dim`` (of ``size`` elements) extended to ``padded_size``, the last repeated.

        A host (numpy) array stays on the host; anything else is padded with ``jnp``.
        """
        if not self.padded:
            return arr
        idx = np.minimum(np.arange(self.padded_size), self.size - 1)
        if isinstance(arr, jax.Array):
            return jnp.take(arr, idx, axis=dim)
        return np.take(np.asarray(arr), idx, axis=dim)

    def take_local(self, block: jax.Array, dim: int) -> jax.Array:
        """Inside ``shard_map``: this shard's ``local_size`` elements of a dimension that arrived whole."""
        start = jax.lax.axis_index(self.mesh_axes) * self.local_size
        idx = jnp.minimum(start + jnp.arange(self.local_size), self.size - 1)
        return jnp.take(block, idx, axis=dim)

    def cut(self, arr: jax.Array, dim: int) -> jax.Array:
        """``arr`` with the padding of dimension ``dim`` dropped."""
        if not self.padded:
            return arr
        return jax.lax.slice_in_dim(arr, 0, self.size, axis=dim)

    # -- the collectives' side: one element of the map ------------------------------------

    def index(self, vmap_name: str) -> jax.Array:
        """Inside the map: this element's global index, ``shard * local_size + local index``."""
        local = jax.lax.axis_index(vmap_name)
        if not self.mesh_axes:
            return local
        return jax.lax.axis_index(self.mesh_axes) * self.local_size + local

    def shard_index(self) -> jax.Array:
        """Inside the map: this element's shard (0 on one device)."""
        if not self.mesh_axes:
            return jnp.zeros((), jnp.int32)
        return jax.lax.axis_index(self.mesh_axes)

    def locate(self, g: int) -> tuple[int, int]:
        """``(shard, local index)`` of global element ``g``."""
        return divmod(g, self.local_size)
