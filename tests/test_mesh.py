"""Meshes and axis mappings: ``distmap.make_mesh``, ``distmap.axis_mapping``, ``pspec_for`` and ``shard``.

Expected PartitionSpecs are written out by hand; placements are checked through the
``jax.Array``'s own ``.sharding`` and values against the numpy input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import distmap
from distmap import errors

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def mesh42(devices):
    return distmap.make_mesh({"data": 4, "model": 2})


@pytest.fixture(scope="module")
def auto42(devices):
    return distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Auto)


def _pspec(*args, **kwargs):
    """``pspec_for`` asking for the spec the names give, also for arrays already placed (Haliax's default keeps those)."""
    return distmap.pspec_for(*args, preserve_existing_shardings=False, **kwargs)


def _x(*names_sizes, dtype=np.float32):
    names = tuple(n for n, _ in names_sizes)
    shape = tuple(s for _, s in names_sizes)
    return distmap.named(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape), names)


# ------------------------------------------------------------------------------ make_mesh


def test_make_mesh_dict_order_is_axis_order(devices):
    mesh = distmap.make_mesh({"model": 2, "data": 4})
    assert mesh.axis_names == ("model", "data")
    assert dict(mesh.shape) == {"model": 2, "data": 4}
    assert mesh.devices.shape == (2, 4)
    assert set(mesh.devices.flat) == set(devices)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ({"data": -1}, {"data": 8}),
        ({"data": -1, "model": 2}, {"data": 4, "model": 2}),
        ({"replica": 2, "data": -1, "model": 2}, {"replica": 2, "data": 2, "model": 2}),
        ({"data": 8, "model": -1}, {"data": 8, "model": 1}),
    ],
)
def test_make_mesh_minus_one_takes_the_rest(shape, expected):
    mesh = distmap.make_mesh(shape)
    assert dict(mesh.shape) == expected
    assert tuple(mesh.axis_names) == tuple(shape)


def test_make_mesh_on_given_devices(devices):
    mesh = distmap.make_mesh({"data": -1}, devices=devices[2:6])
    assert dict(mesh.shape) == {"data": 4}
    assert list(mesh.devices.flat) == list(devices[2:6])


def test_make_mesh_axis_types_default_explicit_and_overrides():
    assert distmap.make_mesh({"data": 4, "model": 2}).axis_types == (AxisType.Explicit,) * 2
    assert distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Auto).axis_types == (AxisType.Auto,) * 2
    mixed = distmap.make_mesh({"data": 4, "model": 2}, axis_types=(AxisType.Explicit, AxisType.Auto))
    assert mixed.axis_types == (AxisType.Explicit, AxisType.Auto)


@pytest.mark.parametrize(
    "shape, match",
    [
        ({"data": 3}, r"mesh \{'data': 3\} needs 3 devices, but 8 were given"),
        ({"data": 4, "model": 4}, r"needs 16 devices, but 8 were given"),
        ({"data": -1, "model": -1}, r"at most one axis may have size -1"),
        ({"data": -1, "model": 3}, r"8 devices cannot be split into \{'data': -1, 'model': 3\}"),
        ({"data": 0}, r"mesh axis 'data' has size 0"),
        ({"data": -2}, r"mesh axis 'data' has size -2"),
        ({"data": 2.0}, r"mesh axis 'data' has size 2.0"),
        ({"data": True}, r"mesh axis 'data' has size True"),
        ({"": 8}, r"axis names must be non-empty str"),
        ({}, r"expected a non-empty \{axis name: size\} dict"),
        ([("data", 8)], r"expected a non-empty \{axis name: size\} dict"),
    ],
)
def test_make_mesh_errors(shape, match):
    with pytest.raises(errors.MeshError, match=match):
        distmap.make_mesh(shape)


def test_mesh_error_is_a_value_error():
    with pytest.raises(ValueError):
        distmap.make_mesh({"data": 3})


# ------------------------------------------------------------------------------ axis mappings


def test_axis_mapping_context_nests_and_restores():
    assert distmap.current_axis_mapping() is None
    with distmap.axis_mapping({"batch": "data"}) as outer:
        assert distmap.current_axis_mapping() == outer == distmap.AxisMapping((("batch", ("data",)),), ordered=False)
        with distmap.axis_mapping({"batch": "model"}):
            assert _pspec(_x(("batch", 8))) == P("model")
        assert distmap.current_axis_mapping() is outer
        assert _pspec(_x(("batch", 8))) == P("data")
    assert distmap.current_axis_mapping() is None


def test_axis_mapping_context_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with distmap.axis_mapping({"batch": "data"}):
            raise RuntimeError("boom")
    assert distmap.current_axis_mapping() is None


def test_explicit_keyword_overrides_the_context(mesh42):
    x = _x(("batch", 8), ("embed", 6))
    with distmap.axis_mapping({"batch": "data", "embed": "model"}):
        assert _pspec(x) == P("data", "model")
        assert _pspec(x, {"batch": "model"}) == P("model", None)
        y = distmap.shard(x, {"batch": "model"}, mesh42)
        assert y.array.sharding.spec == P("model", None)
        # an explicit empty mapping replicates, rather than falling back to the context
        assert _pspec(x, {}) == P(None, None)


def test_no_mapping_anywhere_raises(mesh42):
    x = _x(("batch", 8))
    with pytest.raises(errors.MeshError, match=r"pspec_for: no axis mapping given and none is current"):
        _pspec(x)
    with pytest.raises(errors.MeshError, match=r"shard: no axis mapping given"):
        distmap.shard(x, mesh=mesh42)


def test_dict_mapping_with_tuple_of_mesh_axes(mesh42):
    x = _x(("batch", 16), ("embed", 3))
    assert _pspec(x, {"batch": ("data", "model")}) == P(("data", "model"), None)
    assert _pspec(x, {"batch": ["model", "data"]}) == P(("model", "data"), None)
    assert _pspec(x, {"batch": ("data",)}) == P("data", None)
    assert _pspec(x, {"batch": None, "embed": "model"}) == P(None, "model")
    assert _pspec(x, {"batch": ()}) == P(None, None)
    y = distmap.shard(x, {"batch": ("data", "model")}, mesh42)
    assert y.array.sharding.spec == P(("data", "model"), None)
    np.testing.assert_array_equal(np.asarray(y.array), np.asarray(x.array))


def test_as_axis_mapping_normalises_and_checks():
    m = distmap.AxisMapping
    from distmap._src.mesh import as_axis_mapping

    assert as_axis_mapping({"b": "d", "e": ("m", "d"), "f": None}) == m(
        (("b", ("d",)), ("e", ("m", "d")), ("f", ())), ordered=False
    )
    assert as_axis_mapping([("b", "d"), ("b", "m")]) == m((("b", ("d",)), ("b", ("m",))), ordered=True)
    with pytest.raises(errors.MeshError, match=r"mapping for 'b': mesh axes \('d', 'd'\) repeat"):
        as_axis_mapping({"b": ("d", "d")})
    with pytest.raises(errors.MeshError, match=r"for 'b': expected a mesh axis name, a tuple of them or None, got 3"):
        as_axis_mapping({"b": 3})
    with pytest.raises(errors.MeshError, match=r"keys must be axis names"):
        as_axis_mapping({1: "d"})
    with pytest.raises(errors.MeshError, match=r"expected \(name, mesh axes\) pairs, got 'bd'"):
        as_axis_mapping(["bd"])
    with pytest.raises(errors.MeshError, match=r"expected a \{name: mesh axes\} dict or a list"):
        as_axis_mapping(3)


def test_ordered_rules_first_free_rule_wins():
    # Flax's meaning: rules are tried in order; a rule whose mesh axes another axis of the
    # same array already took is skipped, so the next rule for that name gets its chance.
    rules = [("batch", "data"), ("embed", "data"), ("embed", "model"), ("heads", "model")]
    x = _x(("embed", 4), ("batch", 8), ("heads", 2))
    # batch comes first in the rules, so it takes 'data' even though embed is the array's first dim
    assert _pspec(x, rules) == P("model", "data", None)
    # without batch, embed gets 'data' and heads gets 'model'
    assert _pspec(_x(("embed", 4), ("heads", 2)), rules) == P("data", "model")
    # a name's later rules are ignored once it has one (batch never moves to model)
    assert _pspec(_x(("batch", 8)), [("batch", "data"), ("batch", "model")]) == P("data")
    # a (name, None) rule settles the name as replicated: later rules for it are not tried
    assert _pspec(_x(("batch", 8)), [("batch", None), ("batch", "data")]) == P(None)


def test_ordered_rules_with_tuples_need_every_mesh_axis_free():
    rules = [("batch", ("data", "model")), ("embed", "model"), ("embed", "data"), ("batch", "data")]
    assert _pspec(_x(("batch", 8), ("embed", 4)), rules) == P(("data", "model"), None)
    assert _pspec(_x(("embed", 4)), rules) == P("model")
    # the tuple rule is not tried piecemeal: it needs both, only 'data' is free, the later rule wins
    rules2 = [("embed", "model"), ("batch", ("data", "model")), ("batch", "data")]
    assert _pspec(_x(("batch", 8), ("embed", 4)), rules2) == P("data", "model")


def test_same_mesh_axis_for_two_names_is_fine_across_arrays():
    # {'batch': 'data', 'embed': 'data'} is allowed while no single array carries both.
    tree = {"a": _x(("batch", 8)), "b": _x(("embed", 4), ("k", 2))}
    mapping = {"batch": "data", "embed": "data"}
    assert _pspec(tree, mapping) == {"a": P("data"), "b": P("data", None)}


@pytest.mark.parametrize(
    "mapping",
    [{"batch": "data", "embed": "data"}, {"batch": ("data", "model"), "embed": "model"}],
)
def test_conflict_in_one_array_raises(mapping, mesh42):
    x = _x(("batch", 8), ("embed", 4))
    pattern = r"named axes 'batch' and 'embed' of one array both claim mesh axis '(data|model)'"
    with pytest.raises(errors.MeshError, match=pattern):
        _pspec(x, mapping)
    with pytest.raises(errors.MeshError, match=pattern):
        distmap.shard(x, mapping, mesh42)


def test_unknown_mesh_axis_names_axis_and_mesh(mesh42):
    x = _x(("batch", 8))
    with pytest.raises(errors.MeshError) as info:
        distmap.shard(x, {"batch": "dta"}, mesh42)
    msg = str(info.value)
    assert "'batch'" in msg and "'dta'" in msg and "('data', 'model')" in msg and "{'data': 4, 'model': 2}" in msg
    with pytest.raises(errors.MeshError, match=r"sends 'batch' to mesh axis 'dta'"):
        _pspec(x, {"batch": ("data", "dta")}, mesh=mesh42)
    # without a mesh there is nothing to check the name against
    assert _pspec(x, {"batch": "dta"}) == P("dta")


# ------------------------------------------------------------------------------ pspec_for


def test_pspec_for_pytree():
    tree = {
        "x": _x(("batch", 8), ("embed", 6)),
        "w": [_x(("embed", 6), ("hidden", 4)), _x(("hidden", 4))],
        "raw": np.ones((8, 3)),
        "step": 3,
        "none": None,
    }
    mapping = {"batch": "data", "hidden": "model"}
    specs = _pspec(tree, mapping)
    assert specs == {  # Haliax's leaf rules: an unnamed array of rank >= 1 is P(None), a scalar P()
        "x": P("data", None),
        "w": [P(None, "model"), P("model")],
        "raw": P(None),
        "step": P(),
        "none": None,
    }
    assert _pspec(_x(("batch", 8)), mapping) == P("data")
    assert _pspec(distmap.named(jnp.float32(1.0), ()), mapping) == P()


def test_pspec_for_refuses_uneven_dims_given_a_mesh(mesh42):
    tree = [_x(("batch", 8), ("embed", 2)), _x(("batch", 12), ("embed", 2))]
    mapping = {"batch": "data", "embed": "model"}
    assert _pspec(tree, mapping, mesh42) == [P("data", "model"), P("data", "model")]
    with pytest.raises(errors.AxisSizeError, match=r"pspec_for: axis 'batch' has size 6, which mesh axes \('data',\) \(4 devices\)"):
        _pspec(_x(("batch", 6), ("embed", 4)), mapping, mesh42)
    # over a tuple, the product must divide: 12 % 8 != 0
    with pytest.raises(errors.AxisSizeError, match=r"'batch' has size 12.*\('data', 'model'\) \(8 devices\)"):
        _pspec(tree[1], {"batch": ("data", "model")}, mesh42)
    # without a mesh sizes cannot be checked, so the mapping is applied as written
    assert _pspec(_x(("batch", 6), ("embed", 4)), mapping) == P("data", "model")


def test_pspec_for_and_shard_take_mapping_then_mesh(mesh42):
    x = _x(("batch", 8), ("embed", 4))
    mapping = {"batch": "data", "embed": "model"}
    assert _pspec(x, mapping, mesh42) == P("data", "model")
    assert distmap.shard(x, mapping, mesh42).array.sharding.spec == P("data", "model")
    # the old order (mesh before mapping) is refused, naming the order
    for fn in (distmap.shard, distmap.pspec_for):
        with pytest.raises(errors.MeshError, match=rf"the axis_mapping argument is a Mesh; the order is {fn.__name__}\(x, axis_mapping, mesh\)"):
            fn(x, mesh42, mapping)


@pytest.mark.parametrize("bad", [{"batch": "data"}, "data", 4, [("batch", "data")]])
def test_a_mesh_argument_that_is_not_a_mesh_is_refused(bad):
    x = _x(("batch", 8))
    for fn in (distmap.shard, distmap.pspec_for):
        with pytest.raises(errors.MeshError, match=rf"{fn.__name__}\(mesh=...\): expected a jax.sharding.Mesh") as info:
            fn(x, {"batch": "data"}, bad)
        looks_like_mapping = isinstance(bad, (dict, list))
        assert ("looks like an axis mapping" in str(info.value)) == looks_like_mapping


def test_resource_axis_constants(mesh42):
    assert (distmap.ResourceAxis.DATA, distmap.ResourceAxis.MODEL, distmap.ResourceAxis.REPLICA) == ("data", "model", "replica")
    x = _x(("batch", 8), ("embed", 4))
    mapping = {"batch": distmap.ResourceAxis.DATA, "embed": distmap.ResourceAxis.MODEL}
    assert distmap.shard(x, mapping, mesh42).array.sharding.spec == P("data", "model")
    import enum

    class Phys(str, enum.Enum):  # noqa: UP042 - an enum of names, as some Haliax code defines them
        DATA = "data"

    spec = _pspec(x, {"batch": Phys.DATA}, mesh42)
    assert spec == P("data", None) and type(spec[0]) is str


# ------------------------------------------------------------------------------ shard


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_shard_places_a_pytree_outside_jit(kind, mesh42, auto42):
    mesh = mesh42 if kind == "explicit" else auto42
    x = _x(("batch", 8), ("embed", 6))
    w = _x(("embed", 6), ("hidden", 4), dtype=np.int32)
    tree = {"x": x, "w": w, "step": 7, "raw": np.ones(3)}
    out = distmap.shard(tree, {"batch": "data", "hidden": "model"}, mesh)
    assert out["x"].array.sharding == NamedSharding(mesh, P("data", None))
    assert out["w"].array.sharding == NamedSharding(mesh, P(None, "model"))
    assert out["x"].axes == x.axes and out["w"].axes == w.axes
    np.testing.assert_array_equal(np.asarray(out["x"].array), np.asarray(x.array))
    np.testing.assert_array_equal(np.asarray(out["w"].array), np.asarray(w.array))
    assert out["step"] == 7 and out["raw"] is tree["raw"]  # non-NamedArray leaves are left alone
    # each device holds 1/4 of x's rows
    assert {s.data.shape for s in out["x"].array.addressable_shards} == {(2, 6)}


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_shard_inside_jit_constrains(kind, mesh42, auto42):
    mesh = mesh42 if kind == "explicit" else auto42
    x = distmap.shard(_x(("batch", 8), ("embed", 6)), {}, mesh)  # on the mesh, replicated
    assert x.array.sharding.spec == P(None, None)

    @jax.jit
    def f(v):
        return distmap.shard(v * 2.0, {"batch": "data", "embed": "model"}, mesh)

    out = f(x)
    assert out.array.sharding.is_equivalent_to(NamedSharding(mesh, P("data", "model")), 2)
    np.testing.assert_array_equal(np.asarray(out.array), 2 * np.asarray(x.array))
    assert {s.data.shape for s in out.array.addressable_shards} == {(2, 3)}


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_shard_takes_the_mesh_from_set_mesh_in_and_out_of_jit(kind, mesh42, auto42):
    mesh = mesh42 if kind == "explicit" else auto42
    x = _x(("batch", 8), ("embed", 6))
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh):
        eager = distmap.shard(x)
        jitted = jax.jit(lambda v: distmap.shard(v + 1.0))(x)
    assert eager.array.sharding == NamedSharding(mesh, P("data", None))
    assert jitted.array.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None)), 2)
    np.testing.assert_array_equal(np.asarray(jitted.array), np.asarray(x.array) + 1)


def test_shard_on_a_mesh_mixing_explicit_and_auto_axes_inside_jit(devices):
    mixed = distmap.make_mesh({"data": 4, "model": 2}, axis_types=(AxisType.Explicit, AxisType.Auto))
    x = _x(("batch", 8), ("embed", 6))
    with jax.set_mesh(mixed):
        out = jax.jit(lambda v: distmap.shard(v, axis_mapping={"batch": "data", "embed": "model"}))(x)
    assert out.array.sharding.is_equivalent_to(NamedSharding(mixed, P("data", "model")), 2)
    np.testing.assert_array_equal(np.asarray(out.array), np.asarray(x.array))


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_shard_refuses_uneven_dims_as_host_local_to_global_does(kind, mesh42, auto42):
    mesh = mesh42 if kind == "explicit" else auto42
    x = _x(("batch", 5), ("embed", 6))
    mapping = {"batch": "data", "embed": "model"}
    pattern = r"axis 'batch' has size 5.*\('data',\) \(4 devices\) do not divide.*Map 'batch' to None"
    with pytest.raises(errors.AxisSizeError, match="shard: " + pattern):
        distmap.shard(x, mapping, mesh)
    with jax.set_mesh(mesh), pytest.raises(errors.AxisSizeError, match=pattern):
        jax.jit(lambda v: distmap.shard(v, mapping, mesh))(x)
    # host_local_to_global refuses the same input (one process: the local part is the whole)
    with pytest.raises(errors.AxisSizeError, match=r"'batch'.*do not divide"):
        distmap.distributed.host_local_to_global(x, mapping, mesh)
    # keeping the axis whole, as the message says, works
    out = distmap.shard(x, {"batch": None, "embed": "model"}, mesh)
    assert out.array.sharding.spec == P(None, "model")
    np.testing.assert_array_equal(np.asarray(out.array), np.asarray(x.array))


def test_shard_moves_an_array_already_sharded_otherwise(mesh42):
    x = distmap.shard(_x(("batch", 8), ("embed", 6)), {"batch": "model"}, mesh42)
    y = distmap.shard(x, {"batch": "data", "embed": "model"}, mesh42)
    assert y.array.sharding.spec == P("data", "model")
    np.testing.assert_array_equal(np.asarray(y.array), np.asarray(x.array))


def test_shard_without_a_mesh_raises():
    with pytest.raises(errors.MeshError, match=r"shard: no mesh given and none set with jax.set_mesh"):
        distmap.shard(_x(("batch", 8)), axis_mapping={"batch": "data"})


# ------------------------------------------------------- Haliax's partitioning helpers


def test_legacy_with_mesh_block_is_read(devices):
    from jax.sharding import Mesh

    mesh = Mesh(np.array(devices).reshape(4, 2), ("data", "model"))  # as Haliax's tests make and enter it
    x = _x(("batch", 8), ("embed", 4))
    with pytest.warns(DeprecationWarning), mesh:  # JAX 0.10-0.12 honour it, with a warning
        assert distmap._src.mesh.current_mesh() is mesh
        y = distmap.shard(x, {"batch": "data", "embed": "model"})
        z = jax.jit(lambda x: distmap.shard(x * 2, {"batch": "model"}))(x)
    assert y.array.sharding == NamedSharding(mesh, P("data", "model"))
    assert z.array.sharding.is_equivalent_to(NamedSharding(mesh, P("model", None)), 2)
    assert distmap._src.mesh.current_mesh() is None
    # jax.set_mesh wins over an enclosing legacy block
    inner = distmap.make_mesh({"data": 8})
    with pytest.warns(DeprecationWarning), mesh, distmap.set_mesh(inner):
        assert distmap._src.mesh.current_mesh() == inner


def test_pspec_for_keeps_placed_arrays_by_default_as_haliax(mesh42):
    placed = distmap.shard(_x(("batch", 8), ("embed", 4)), {"batch": "data"}, mesh42)
    shape_only = jax.eval_shape(lambda: distmap.zeros(placed.axes))  # as a model is first built abstractly
    tree = {"placed": placed, "host": shape_only, "raw": jnp.ones((8, 4)), "np": np.ones(3), "scalar": jnp.float32(1)}
    specs = distmap.pspec_for(tree, {"batch": "model"})
    assert specs == {"placed": None, "host": P("model", None), "raw": P(None), "np": P(None), "scalar": P()}
    assert _pspec(tree, {"batch": "model"})["placed"] == P("model", None)
    with pytest.raises(errors.MeshError, match=r"pass Haliax's preserve_existing_shardings=False by keyword"):
        distmap.pspec_for(tree, {"batch": "model"}, False)


def test_field_axis_names_name_unnamed_array_fields(mesh42):
    import equinox as eqx

    class Proj(eqx.Module):
        w: jax.Array = distmap.field(axis_names=("embed", "mlp"))
        b: jax.Array
        n: int = distmap.field(static=True, default=2)

    class Outer(eqx.Module):
        inner: Proj
        scale: distmap.NamedArray

    mod = Outer(Proj(jnp.ones((4, 8)), jnp.ones(8)), _x(("mlp", 8)))
    specs = _pspec(mod, {"mlp": "model", "embed": "data"})
    assert (specs.inner.w, specs.inner.b, specs.scale) == (P("data", "model"), P(None), P("model"))
    shardings = distmap.infer_resource_partitions(mod, {"mlp": "model"}, mesh42, preserve_existing_shardings=False)
    assert shardings.inner.w == NamedSharding(mesh42, P(None, "model"))
    # the shardings serve jax.jit directly
    out = jax.jit(lambda m: m, out_shardings=shardings)(mod)
    assert out.inner.w.sharding.spec == P(None, "model") and out.scale.array.sharding.spec == P("model")
    # kept where placed: the array's own sharding
    kept = distmap.infer_resource_partitions(out, {"mlp": "data"}, mesh42)
    assert kept.inner.w == out.inner.w.sharding
    with pytest.raises(errors.ShapeMismatchError, match=r"axis_names=\('embed', 'mlp'\) holds an array of shape \(4,\)"):
        _pspec(Proj(jnp.ones(4), jnp.ones(8)), {})


def test_physical_axis_name_size_and_rounding(mesh42):
    Axis = distmap.Axis
    mapping = {"batch": ("data", "model"), "vocab": "model"}
    assert distmap.physical_axis_name("batch", mapping) == ("data", "model")
    assert distmap.physical_axis_name(Axis("vocab", 5), mapping) == "model"
    assert distmap.physical_axis_name("embed", mapping) is None
    assert distmap.physical_axis_size("batch", mapping, mesh42) == 8
    assert distmap.physical_axis_size("embed", mapping, mesh42) is None
    assert distmap.round_axis_for_partitioning(Axis("vocab", 5), mapping, mesh42) == Axis("vocab", 6)
    assert distmap.round_axis_for_partitioning(Axis("batch", 17), mapping, mesh42) == Axis("batch", 24)
    assert distmap.round_axis_for_partitioning(Axis("embed", 5), mapping, mesh42) == Axis("embed", 5)
    with distmap.axis_mapping(mapping), distmap.set_mesh(mesh42):  # the current ones by default
        assert distmap.physical_axis_size("vocab") == 2
        assert distmap.round_axis_for_partitioning(Axis("vocab", 7)).size == 8
        # the rounded axis is one shard() accepts
        distmap.shard(distmap.zeros(distmap.round_axis_for_partitioning(Axis("vocab", 7))))
