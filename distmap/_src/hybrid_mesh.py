"""Hybrid (ICI x DCN) meshes: axes split within granules and across them.

A *granule* is a group of devices joined by fast links: a TPU slice (devices report a
``slice_index``), or, where devices do not tell slices apart (CPUs and GPUs, which report
one slice or none), a process. A hybrid mesh gives each axis an ``ici`` part within one
granule and a ``dcn`` part across granules, so collectives over the ``ici`` part stay on
the fast links. The layout is JAX's own
(``jax.experimental.mesh_utils.create_hybrid_device_mesh``, with ``process_is_granule=``
where processes are the granules; on TPUs each slice follows its physical torus); distmap
adds the choice of granule, errors that say what does not fit, named axes and the axis
types ``distmap.make_mesh`` uses (``Explicit``).

Example:
    >>> import jax
    >>> mesh = make_hybrid_mesh({"data": 2, "model": 4}, {"data": 1}, jax.devices()[:8])
    >>> dict(mesh.shape), mesh.axis_types == (jax.sharding.AxisType.Explicit,) * 2
    ({'data': 2, 'model': 4}, True)
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distmap import errors


def _check_sizes(ici: Mapping[str, int], dcn: Mapping[str, int]) -> None:
    for what, shape in (("ici", ici), ("dcn", dcn)):
        if not isinstance(shape, Mapping):
            raise errors.MeshError(f"make_hybrid_mesh: {what} must be a {{axis name: size}} dict, got {shape!r}.")
        for k, v in shape.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise errors.MeshError(f"make_hybrid_mesh: {what} axis {k!r} has size {v!r}; expected a positive int.")


def granule_kind(devices: Sequence[Any], granules_wanted: int) -> str:
    """``"slice"`` where the devices report several TPU slices (or one granule is wanted), else ``"process"``.

    Example:
        >>> class D:
        ...     def __init__(self, i, s): self.id, self.process_index, self.slice_index = i, i, s
        >>> granule_kind([D(0, 0), D(1, 1)], 2), granule_kind([D(0, 0), D(1, 0)], 2)
        ('slice', 'process')
    """
    slices = {getattr(d, "slice_index", None) for d in devices}
    return "slice" if None not in slices and (len(slices) > 1 or granules_wanted == 1) else "process"


def hybrid_device_array(
    ici: Mapping[str, int], dcn: Mapping[str, int], devices: Sequence[Any]
) -> tuple[tuple[str, ...], np.ndarray]:
    """The device layout of :func:`make_hybrid_mesh`: axis names and an array of devices.

    Split out so that layouts can be checked with stand-in devices (objects with ``id``,
    ``process_index``, ``slice_index``, ``platform``, ``device_kind``; TPUs also ``coords``
    and ``core_on_chip``), without multi-slice hardware.
    """
    _check_sizes(ici, dcn)
    names = list(ici) + [k for k in dcn if k not in ici]
    ici_shape = [int(ici.get(k, 1)) for k in names]
    dcn_shape = [int(dcn.get(k, 1)) for k in names]
    devices = sorted(devices, key=lambda d: d.id)  # within a CPU or GPU granule, id order (TPUs: the torus)
    kind = granule_kind(devices, math.prod(dcn_shape))
    sizes = collections.Counter(d.slice_index if kind == "slice" else d.process_index for d in devices)
    if len(sizes) != math.prod(dcn_shape):
        raise errors.MeshError(
            f"make_hybrid_mesh: dcn {dict(dcn)} needs {math.prod(dcn_shape)} {kind}(s), but the devices come from "
            f"{len(sizes)} {kind}(s)."
        )
    if set(sizes.values()) != {math.prod(ici_shape)}:
        raise errors.MeshError(
            f"make_hybrid_mesh: ici {dict(ici)} needs {math.prod(ici_shape)} devices in each {kind}, but they have "
            f"{sorted(set(sizes.values()))}."
        )
    from jax.experimental import mesh_utils

    try:
        array = mesh_utils.create_hybrid_device_mesh(
            ici_shape, dcn_shape, devices, process_is_granule=kind == "process", allow_split_physical_axes=True
        )
    except (ValueError, NotImplementedError, AssertionError) as e:
        raise errors.MeshError(
            f"make_hybrid_mesh: JAX cannot lay out ici {dict(ici)} within each {kind} of these devices: {e}"
        ) from e
    return tuple(names), array


def make_hybrid_mesh(ici: Mapping[str, int], dcn: Mapping[str, int], devices: Sequence[Any] | None = None) -> Any:
    """A mesh over granules (TPU slices, else processes): ``ici`` within one, ``dcn`` across them.

    Each mesh axis has size ``ici[name] * dcn[name]`` (a name missing from one side counts 1);
    axis order is ``ici``'s, then any ``dcn``-only names. Along an axis, the ``dcn`` index is
    the outer part and the ``ici`` index the inner, so neighbours share a granule as long as
    possible. Axes are ``AxisType.Explicit``, as ``distmap.make_mesh`` makes them.

    Example:
        >>> import jax
        >>> mesh = make_hybrid_mesh({"data": 1, "model": 8}, {"data": 1}, jax.devices()[:8])
        >>> dict(mesh.shape)
        {'data': 1, 'model': 8}
    """
    import jax

    devs = list(jax.devices() if devices is None else devices)
    names, array = hybrid_device_array(ici, dcn, devs)
    return jax.sharding.Mesh(array, names, axis_types=(jax.sharding.AxisType.Explicit,) * len(names))


__all__ = ["granule_kind", "hybrid_device_array", "make_hybrid_mesh"]
