"""host_local_to_global / global_to_host_local in one process (the multi-process runs are in test_launch_*)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap._src.global_data import global_to_host_local, host_local_to_global


@pytest.fixture(scope="module")
def mesh():
    return distmap.make_mesh({"data": 4, "model": 2})


def test_round_trip_keeps_every_row(mesh):
    x = distmap.named(np.arange(8 * 3, dtype=np.float32).reshape(8, 3), ("batch", "feature"))
    tree = {"x": x, "step": 3, "raw": np.ones(2)}
    g = host_local_to_global(tree, {"batch": "data", "feature": None}, mesh)
    assert g["x"].shape == {"batch": 8, "feature": 3}
    assert g["x"].array.sharding.spec == jax.sharding.PartitionSpec("data", None)
    assert g["step"] == 3 and g["raw"] is tree["raw"]
    np.testing.assert_array_equal(np.asarray(g["x"].array), np.asarray(x.array))
    back = global_to_host_local(g)
    np.testing.assert_array_equal(np.asarray(back["x"].array), np.asarray(x.array))
    assert back["x"].axes == x.axes


def test_two_mesh_axes_and_context_mapping(mesh):
    x = distmap.named(jnp.arange(8 * 6).reshape(8, 6), ("batch", "ensemble"))
    with distmap.axis_mapping({"batch": "data", "ensemble": "model"}), jax.set_mesh(mesh):
        g = host_local_to_global(x)
    assert g.array.sharding.spec == jax.sharding.PartitionSpec("data", "model")
    np.testing.assert_array_equal(np.asarray(g.array), np.asarray(x.array))


def test_indivisible_rows_are_refused(mesh):
    x = distmap.named(np.zeros((6, 2), np.float32), ("batch", "feature"))
    with pytest.raises(distmap.errors.AxisSizeError, match="'batch'.*do not divide"):
        host_local_to_global(x, {"batch": "data"}, mesh)


def test_needs_a_mesh_and_a_mapping():
    x = distmap.zeros({"batch": 4})
    with pytest.raises(distmap.errors.MeshError, match="mesh"):
        host_local_to_global(x, {"batch": "data"})
    with pytest.raises(distmap.errors.MeshError, match="axis mapping"):
        host_local_to_global(x, mesh=distmap.make_mesh({"data": 8}))


def test_a_mesh_axis_the_mesh_lacks_is_named(mesh):
    x = distmap.zeros({"batch": 8})
    with pytest.raises(distmap.errors.MeshError, match="mesh axis 'dat', but the mesh has axes \\('data', 'model'\\)"):
        host_local_to_global(x, {"batch": "dat"}, mesh)
    with pytest.raises(distmap.errors.MeshError, match="mesh axis 'dat'"):
        distmap.shard(x, {"batch": "dat"}, mesh)  # the same error as shard's
