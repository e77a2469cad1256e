"""``Stacked``: N copies of an equinox Module stacked along a named axis.

Build one by vmapping the constructor (``Stacked.init``); apply every copy to the
same input in parallel (``.vmap``, an ensemble) or one after another (``.fold`` /
``.scan``, layers). Each is equal to a Python loop over ``.unstacked()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax

from distmap import errors
from distmap._src.axis import Axis, SizedAxes, to_axes
from distmap._src.named import NamedArray
from distmap._src import leaves as leaves_lib
from distmap._src.map import specs
from distmap._src.map.api import vmap

M = TypeVar("M", bound=eqx.Module)


class Stacked(eqx.Module, Generic[M]):
    """``axis.size`` copies of a Module, stacked along the named ``axis``.

    Array fields of ``stacked`` carry the axis: NamedArrays by name, unnamed arrays at dim 0.

    Example:
        >>> import distmap, equinox as eqx, jax
        >>> class Scale(eqx.Module):
        ...     w: distmap.NamedArray
        ...     def __init__(self, key):
        ...         self.w = distmap.random.normal(key, {"feature": 3})
        ...     def __call__(self, x):
        ...         return x * self.w
        >>> Layers = distmap.Axis("layer", 4)
        >>> net = distmap.Stacked.init(Layers, Scale)(key=jax.random.split(jax.random.key(0), 4))
        >>> x = distmap.ones({"feature": 3})
        >>> net.vmap(x).axis_names, net.fold(x).axis_names
        (('layer', 'feature'), ('feature',))
    """

    stacked: M
    axis: Axis = eqx.field(static=True)

    @classmethod
    def init(cls, axis: SizedAxes, module: Callable[..., M], **vmap_options: Any) -> Callable[..., "Stacked[M]"]:
        """A constructor that builds ``axis.size`` copies of ``module`` by vmapping ``module(*args, **kwargs)``.

        Arguments follow :func:`distmap.vmap`'s default spec: arrays (such as keys split
        with ``jax.random.split(key, n)``) are mapped on dim 0, NamedArrays by name,
        everything else is shared.
        """
        (ax,) = to_axes(axis, what="Stacked.init(axis=...)")

        def build(*args: Any, **kwargs: Any) -> Stacked[M]:
            return cls(vmap(module, ax, **vmap_options)(*args, **kwargs), ax)

        return build

    def _spec(self) -> Any:
        # The stacked module's unnamed arrays are mapped on dim 0 (NamedArrays go by name). Rank-0
        # arrays cannot carry the axis: they are shared values (a float field traced by jax.jit).
        return jax.tree_util.tree_map(specs.default_spec, self.stacked, is_leaf=leaves_lib.is_named)

    def vmap(self, *args: Any, **kwargs: Any) -> Any:
        """Apply every copy to the same inputs, in parallel; outputs carry the stacked axis at the front.

        Inputs are broadcast to every copy (unnamed arrays included); a NamedArray input that
        carries the stacked axis is mapped along it, one slice per copy.
        """
        return vmap(_apply, self.axis, default=None, args=(self._spec(),))(self.stacked, args, kwargs)

    def _layers(self) -> tuple[list[Any], list[Any], Any]:
        """Per-leaf arrays with the stacked axis at dim 0, how to rebuild one layer, and the treedef."""
        leaves, treedef = jax.tree_util.tree_flatten(self.stacked, is_leaf=leaves_lib.is_named)
        xs, kinds = [], []
        for leaf in leaves:
            if isinstance(leaf, NamedArray):
                i = leaf.axis_indices(self.axis.name)
                xs.append(jax.numpy.moveaxis(leaf.array, i, 0))
                kinds.append(leaf.axes[:i] + leaf.axes[i + 1 :])
            elif leaves_lib.is_array(leaf) and leaf.ndim > 0:  # rank 0: shared, kept as it is (see _spec)
                if leaf.shape[0] != self.axis.size:
                    raise errors.AxisSizeError(
                        f"Stacked over {self.axis.name!r}: an unnamed array field has shape {leaf.shape}; "
                        f"its dim 0 should be the stacked axis (size {self.axis.size})."
                    )
                xs.append(leaf)
                kinds.append(True)
            else:
                kinds.append(leaves_lib.Static(leaf))
        return xs, kinds, treedef

    @staticmethod
    def _one(xs: list[Any], kinds: list[Any], treedef: Any) -> Any:
        return leaves_lib.join(treedef, kinds, xs)

    def fold(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``x = layer(x, *args, **kwargs)`` for each copy in order; returns the final ``x``.

        Runs as one ``jax.lax.scan``, so it traces the layer once.
        """
        xs, kinds, treedef = self._layers()

        def step(carry: Any, layer_arrays: list[Any]) -> tuple[Any, None]:
            return self._one(layer_arrays, kinds, treedef)(carry, *args, **kwargs), None

        out, _ = jax.lax.scan(step, x, xs)
        return out

    def scan(self, x: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Like :meth:`fold`, for layers that return ``(carry, y)``; returns ``(carry, ys)``.

        ``ys`` carry the stacked axis at the front: NamedArrays by name, unnamed arrays at dim 0.
        """
        xs, kinds, treedef = self._layers()
        y_info: list[Any] = []

        def step(carry: Any, layer_arrays: list[Any]) -> tuple[Any, Any]:
            carry, y = self._one(layer_arrays, kinds, treedef)(carry, *args, **kwargs)
            y_tree, y_kinds, y_arrays = leaves_lib.split(y)
            y_info[:] = [y_tree, y_kinds]
            return carry, y_arrays

        carry, ys = jax.lax.scan(step, x, xs)
        y_tree, y_kinds = y_info
        return carry, leaves_lib.join(y_tree, y_kinds, ys, front=(self.axis,))

    def unstacked(self) -> list[M]:
        """The copies as a list of separate Modules."""
        xs, kinds, treedef = self._layers()
        return [self._one([x[i] for x in xs], kinds, treedef) for i in range(self.axis.size)]


def _apply(module: Any, args: tuple, kwargs: dict) -> Any:
    # Module-level, so that a mesh call of Stacked.vmap keys its compilation on the same function.
    return module(*args, **kwargs)
