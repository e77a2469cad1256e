"""Hybrid meshes (``distmap._src.hybrid_mesh``) and ``--dcn_mesh``: multi-slice layouts without the hardware.

The stand-in TPU devices carry what a TPU v5e reports and what JAX's ``mesh_utils`` reads:
``id``, ``process_index``, ``slice_index``, ``coords`` (the chip's place in the slice's
torus), ``core_on_chip``, ``platform`` and ``device_kind``. (Layouts with processes as the
granules, and a real 2-process hybrid mesh, are in ``tests/test_distributed.py``.)
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
from absl import flags

import distmap
import distmap.flags
from distmap._src import hybrid_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class TpuChip:
    id: int
    process_index: int
    slice_index: int
    coords: tuple[int, int, int]
    core_on_chip: int = 0
    platform: str = "tpu"
    device_kind: str = "TPU v5 lite"


def v5e_32_slices(n: int) -> list[TpuChip]:
    """``n`` v5litepod-32 slices: 4x8 chips each, 8 hosts of 4 chips (a 2x2 block) per slice.

    Ids are not in torus order (host by host, as TPU runtimes number them), so a layout in id
    order would put non-neighbours next to each other.
    """
    chips = []
    for s in range(n):
        for host in range(8):
            for k in range(4):
                x, y = 2 * (host % 2) + k % 2, 2 * (host // 2) + k // 2
                chips.append(TpuChip(len(chips), s * 8 + host, s, (x, y, 0)))
    return chips


def _flags(*argv: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    distmap.flags.define_mesh_flags(fv)
    fv(["prog", *argv])
    return fv


def test_the_multislice_config_gives_the_example_a_hybrid_mesh():
    """configs/tpu_v5e_32x2_multislice.flags, as examples/ensemble.py reads it, over 2 x 32 chips."""
    fv = _flags("--flagfile=" + os.path.join(ROOT, "configs", "tpu_v5e_32x2_multislice.flags"))
    mesh = distmap.flags.mesh_from_flags(fv, v5e_32_slices(2))
    assert dict(mesh.shape) == {"replica": 2, "data": 8, "model": 4}
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,) * 3  # as distmap.make_mesh makes them
    devs = mesh.devices
    slices = np.vectorize(lambda d: d.slice_index)(devs)
    np.testing.assert_array_equal(slices, np.broadcast_to(np.arange(2)[:, None, None], devs.shape))  # replica = slice
    assert sorted(d.id for d in devs.flat) == list(range(64))
    # Within a slice JAX follows the torus: neighbours along "model" are neighbouring chips.
    xy = np.vectorize(lambda d: d.coords[0])(devs), np.vectorize(lambda d: d.coords[1])(devs)
    steps = np.abs(np.diff(xy[0], axis=2)) + np.abs(np.diff(xy[1], axis=2))
    assert (steps == 1).all(), steps


def test_devices_spanning_slices_without_dcn_mesh_are_refused_naming_the_flag():
    fv = _flags("--mesh=replica=2,data=-1,model=4")
    with pytest.raises(distmap.errors.MeshError, match="span 2 TPU slices.*--dcn_mesh=replica=2"):
        distmap.flags.mesh_from_flags(fv, v5e_32_slices(2))


@pytest.mark.parametrize("argv, message", [
    (["--mesh=replica=2,data=-1", "--dcn_mesh=replica=-1"], "not -1"),
    (["--mesh=data=-1", "--dcn_mesh=replica=2"], "has no axis 'replica'"),
    (["--mesh=data=6,model=2", "--dcn_mesh=data=4"], "size 6 .* which 4 slices do not divide"),
])
def test_bad_dcn_mesh_flags_end_the_parse_naming_the_item(argv, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        _flags(*argv)


def test_slice_count_and_per_slice_size_must_fit():
    chips = v5e_32_slices(2)
    with pytest.raises(distmap.errors.MeshError, match="needs 4 slice\\(s\\), but the devices come from 2"):
        hybrid_mesh.make_hybrid_mesh({"data": 16}, {"data": 4}, chips)
    with pytest.raises(distmap.errors.MeshError, match="needs 16 devices in each slice, but they have \\[32\\]"):
        hybrid_mesh.make_hybrid_mesh({"data": 16}, {"data": 2}, chips)
    fv = _flags("--mesh=data=-1,model=3", "--dcn_mesh=data=2")
    with pytest.raises(distmap.errors.MeshError, match="does not fit the 64 devices"):
        distmap.flags.mesh_from_flags(fv, chips)


def test_dcn_mesh_on_this_machine_matches_make_mesh(devices):
    """One process, one granule: the hybrid mesh of the flags is the plain mesh, and a map runs on it."""
    hybrid = distmap.flags.mesh_from_flags(_flags("--mesh=data=-1,model=2", "--dcn_mesh=data=1"), devices)
    plain = distmap.flags.mesh_from_flags(_flags("--mesh=data=-1,model=2"), devices)
    assert dict(hybrid.shape) == dict(plain.shape) == {"data": 4, "model": 2}
    assert hybrid.axis_types == plain.axis_types
    x = distmap.arange({"batch": 8}).astype(np.float32)
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(hybrid):
        y = jax.jit(distmap.vmap(lambda v: v - distmap.pmean(v, "batch"), "batch"))(distmap.shard(x, mesh=hybrid))
    np.testing.assert_allclose(np.asarray(y.array), np.arange(8) - 3.5)
