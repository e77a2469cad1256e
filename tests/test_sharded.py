"""``distmap.vmap`` on a mesh (``mesh=`` / ``axis_mapping=``): the ``jax.shard_map`` lowering.

Every result is compared with the same call on one device (``distmap.vmap`` without a mesh),
exactly for integer work and to float tolerance otherwise, and where it is simple also with
numpy. Meshes are built once per module (compiles dominate the run time).
"""

from __future__ import annotations

import itertools
import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import distmap
from distmap import Axis, errors

# ------------------------------------------------------------------------------ meshes and helpers

_SHAPES = {
    "1": {"data": 1},
    "2": {"data": 2},
    "4": {"data": 4},
    "8": {"data": 8},
    "2x4": {"data": 2, "model": 4},
    "4x2": {"data": 4, "model": 2},
}


def _build(key: str, kind: str) -> jax.sharding.Mesh:
    shape = _SHAPES[key]
    n = math.prod(shape.values())
    types = (AxisType.Explicit if kind == "explicit" else AxisType.Auto,) * len(shape)
    # the user's own jax.make_mesh, as the issue asks (distmap.make_mesh is tested in test_mesh.py)
    return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=types, devices=jax.devices()[:n])


_MESHES: dict[tuple[str, str], jax.sharding.Mesh] = {}


def mesh_of(key: str, kind: str = "explicit") -> jax.sharding.Mesh:
    if (key, kind) not in _MESHES:
        _MESHES[key, kind] = _build(key, kind)
    return _MESHES[key, kind]


KINDS = ["explicit", "auto"]

_COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def collectives(fn, *args) -> list[str]:
    """The collective ops in the compiled HLO of ``jax.jit(fn)(*args)``."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return [m.group(1) for m in _COLLECTIVE.finditer(text)]


def ints(names_sizes, seed=0):
    """A NamedArray of small distinct-ish int32 values."""
    names = tuple(n for n, _ in names_sizes)
    shape = tuple(s for _, s in names_sizes)
    n = math.prod(shape)
    return distmap.named(((np.arange(n, dtype=np.int32) * 7 + seed * 3) % 23 - 11).reshape(shape), names)


def floats(names_sizes, seed=0):
    names = tuple(n for n, _ in names_sizes)
    shape = tuple(s for _, s in names_sizes)
    return distmap.named(np.random.default_rng(seed).normal(size=shape).astype(np.float32), names)


def _is_named(x):
    return isinstance(x, distmap.NamedArray)


def assert_same(out, ref):
    """Same pytree, same axes; integer (and bool) leaves exactly equal, float leaves to tolerance."""
    out_leaves, out_tree = jax.tree_util.tree_flatten(out, is_leaf=_is_named)
    ref_leaves, ref_tree = jax.tree_util.tree_flatten(ref, is_leaf=_is_named)
    assert out_tree == ref_tree
    for a, b in zip(out_leaves, ref_leaves):
        if _is_named(b):
            assert _is_named(a) and a.axes == b.axes, (a, b)
            a, b = a.array, b.array
        if not (hasattr(a, "dtype") and hasattr(b, "dtype")):  # a Python value (jit makes it an array)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        if np.issubdtype(b.dtype, np.inexact):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
        else:
            np.testing.assert_array_equal(a, b)


def spec_of(*entries):
    return P(*[e if not isinstance(e, tuple) or len(e) > 1 else e[0] for e in entries])


def assert_layout(arr, mesh, *entries):
    """``arr`` is a global jax.Array on ``mesh`` split as ``entries`` (one per leading dim)."""
    assert isinstance(arr, jax.Array)
    assert arr.sharding.device_set == set(mesh.devices.flat)
    expected = NamedSharding(mesh, spec_of(*entries))
    assert arr.sharding.is_equivalent_to(expected, arr.ndim), (arr.sharding, expected)


_REFERENCES: dict = {}


def one_device(fn, axis, **options):
    """The same map on one device (no mesh), jitted and kept, so shapes seen before do not compile again."""
    key = (fn, repr(axis), repr(sorted(options.items())))
    if key not in _REFERENCES:
        _REFERENCES[key] = eqx.filter_jit(distmap.vmap(fn, axis, **options))
    return _REFERENCES[key]


# ------------------------------------------------------------------------------ functions mapped
# Module-level so the jitted lowering is cached across calls with the same shapes.


def int_work(v):
    """Integer work with every collective over 'batch'; v: (feature,) int32."""
    i = distmap.axis_index("batch")
    return {
        "v": v * 3 + i,
        "psum": distmap.psum(v, "batch"),
        "pmean": distmap.pmean(v, "batch"),
        "pmax": distmap.pmax(v - i * 5, "batch"),
        "pmin": distmap.pmin(v + i * 5, "batch"),
        "gather": distmap.all_gather(v * 2, "batch").rename({"batch": "all"}),
        "index": i,
        "size": distmap.axis_size("batch"),
    }


def float_work(v, w):
    """A small float layer: v (feature,), w (feature, hidden) -> (hidden,), normalised over the batch."""
    h = distmap.tanh(distmap.dot(v, w, axis="feature"))
    return h - distmap.pmean(h, "batch") + distmap.pmax(h, "batch") * 0.5


def two_axis_work(v):
    """v: (feature,) int32 under a map over 'ens' and 'batch'."""
    i, j = distmap.axis_index("ens"), distmap.axis_index("batch")
    return {
        "v": v * 2 + i * 100 + j,
        "both": distmap.psum(v, ("ens", "batch")),
        "ens": distmap.psum(v * j, "ens"),
        "batch": distmap.psum(v * i, "batch"),
        "mean": distmap.pmean(v, ("batch", "ens")),
        "max": distmap.pmax(v + i * 10 - j, ("ens", "batch")),
        "min": distmap.pmin(v - i * 10 + j, ("batch", "ens")),
        "gather_b": distmap.all_gather(v + i, "batch").rename({"batch": "gb"}),
        "gather_e": distmap.all_gather(v * j, "ens").rename({"ens": "ge"}),
        "size": distmap.axis_size(("ens", "batch")),
    }


def padding_probe(v):
    """Values that count padding if it leaks: every one is checked against numpy too."""
    i = distmap.axis_index("batch")
    return {
        "v": v + i,
        "count": distmap.psum(jnp.ones((), jnp.int32), "batch"),
        "sum": distmap.psum(v, "batch"),
        "sum_i": distmap.psum(i, "batch"),
        "max_i": distmap.pmax(i, "batch"),
        "min_neg_i": distmap.pmin(-i, "batch"),
        "mean_i": distmap.pmean(i.astype(jnp.float32), "batch"),
        "max_v": distmap.pmax(v + i * 1000, "batch"),
        "gather_i": distmap.all_gather(i, "batch"),
        "gather_v": distmap.all_gather(v, "batch").rename({"batch": "all"}),
    }


def triple(v):
    return v * 3


def with_psum(v):
    return v + distmap.psum(v, "batch")


# ------------------------------------------------------------------------------ results equal one device


_CASES = [
    ("1", {"batch": "data"}),
    ("2", {"batch": "data"}),
    ("4", {"batch": "data"}),
    ("8", {"batch": "data"}),
    ("2x4", {"batch": ("data", "model")}),
    ("4x2", {"batch": "model"}),
    ("4x2", {"batch": ("model", "data")}),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key, mapping", _CASES, ids=[f"{k}-{'+'.join(map(str, m.values()))}" for k, m in _CASES])
def test_results_equal_one_device(key, mapping, kind):
    mesh = mesh_of(key, kind)
    x = ints([("batch", 16), ("feature", 3)])
    out = distmap.vmap(int_work, "batch", mesh=mesh, axis_mapping=mapping)(x)
    assert_same(out, one_device(int_work, "batch")(x))
    axes = mapping["batch"]
    for name in ("v", "psum", "pmax", "gather"):
        assert_layout(out[name].array, mesh, axes)

    v = floats([("batch", 16), ("feature", 4)], seed=1)
    w = floats([("feature", 4), ("hidden", 3)], seed=2)
    out = distmap.vmap(float_work, "batch", mesh=mesh, axis_mapping=mapping)(v, w)
    assert_same(out, one_device(float_work, "batch")(v, w))
    assert_layout(out.array, mesh, axes, None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "key, mapping",
    [
        ("4x2", {"ens": "model", "batch": "data"}),
        ("2x4", {"ens": "data", "batch": "model"}),
        ("4x2", {"ens": ("data", "model")}),
        ("4x2", {"batch": ("model", "data")}),
    ],
    ids=["ens-model,batch-data", "ens-data,batch-model", "ens-both", "batch-both"],
)
def test_two_mapped_axes(key, mapping, kind):
    mesh = mesh_of(key, kind)
    x = ints([("batch", 8), ("ens", 8), ("feature", 2)])
    out = distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mesh, axis_mapping=mapping)(x)
    assert_same(out, one_device(two_axis_work, ("ens", "batch"))(x))
    assert_layout(out["v"].array, mesh, mapping.get("ens"), mapping.get("batch"), None)
    assert_layout(out["both"].array, mesh, mapping.get("ens"), mapping.get("batch"), None)


def flat_index_and_gather(v):
    """axis_index and all_gather over two names at once (the flattened product, first name major)."""
    return {
        "ab": distmap.axis_index(("ens", "batch")),
        "ba": distmap.axis_index(("batch", "ens")),
        "gather": distmap.all_gather(v, ("batch", "ens")).rename({"ens": "ge", "batch": "gb"}),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", [(2, 8), (3, 5)], ids=["even", "uneven"])
def test_index_and_gather_over_several_names(sizes, kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", sizes[0]), ("batch", sizes[1]), ("feature", 2)])
    mapping = {"ens": "model", "batch": "data"}
    out = distmap.vmap(flat_index_and_gather, ("ens", "batch"), mesh=mesh, axis_mapping=mapping)(x)
    assert_same(out, one_device(flat_index_and_gather, ("ens", "batch"))(x))
    np.testing.assert_array_equal(out["ab"], np.arange(sizes[0] * sizes[1]).reshape(sizes))
    assert out["gather"].axes[2:] == (Axis("gb", sizes[1]), Axis("ge", sizes[0]), Axis("feature", 2))


@pytest.mark.parametrize("kind", KINDS)
def test_mapped_axis_without_mesh_axis_is_vmapped_whole(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", 3), ("batch", 8), ("feature", 2)])
    out = distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mesh, axis_mapping={"batch": "data"})(x)
    assert_same(out, one_device(two_axis_work, ("ens", "batch"))(x))
    assert_layout(out["v"].array, mesh, None, "data", None)
    # 'ens' is whole on every device: each shard holds all 3 of it and 2 of the 8 'batch' elements
    assert {s.data.shape for s in out["v"].array.addressable_shards} == {(3, 2, 2)}


@pytest.mark.parametrize("kind", KINDS)
def test_unused_mesh_axes_see_replicated_work(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("batch", 8), ("feature", 3)])
    out = distmap.vmap(int_work, "batch", mesh=mesh, axis_mapping={"batch": "data"})(x)["v"].array
    assert_layout(out, mesh, "data", None)
    # the two devices along 'model' that hold the same rows hold the same values
    shards = {}
    for s in out.addressable_shards:
        shards.setdefault(tuple((i.start, i.stop) for i in s.index), []).append(np.asarray(s.data))
    assert len(shards) == 4 and all(len(v) == 2 for v in shards.values())
    for copies in shards.values():
        np.testing.assert_array_equal(copies[0], copies[1])


@pytest.mark.parametrize("kind", KINDS)
def test_mesh_without_mapping_splits_axes_named_like_mesh_axes(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("data", 8), ("model", 2), ("feature", 3)])
    fn = lambda v: v + distmap.psum(v, "data") * distmap.axis_index("model")  # noqa: E731
    out = distmap.vmap(fn, ("data", "model"), mesh=mesh)(x)
    assert_same(out, one_device(fn, ("data", "model"))(x))
    assert_layout(out.array, mesh, "data", "model", None)


@pytest.mark.parametrize("n", [6])  # uneven: the input reshard and the output cut-back both see the mixed types
def test_mesh_mixing_explicit_and_auto_axes(n):
    mixed = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Auto))
    x = ints([("ens", 2), ("batch", n), ("feature", 2)])
    mapping = {"ens": "model", "batch": "data"}
    out = distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mixed, axis_mapping=mapping)(x)
    assert_same(out, one_device(two_axis_work, ("ens", "batch"))(x))


# ------------------------------------------------------------------------------ the context form


@pytest.mark.parametrize("kind", KINDS)
def test_context_form_inside_and_outside_jit(kind):
    mesh = mesh_of("4x2", kind)
    Ensemble, Batch = Axis("ensemble", 2), Axis("batch", 8)
    params = floats([("ensemble", 2), ("feature", 4), ("hidden", 3)], seed=3)
    x = floats([("batch", 8), ("feature", 4)], seed=4)

    def fn(p, v):
        h = distmap.tanh(distmap.dot(v, p, axis="feature"))
        return h + distmap.pmean(h, ("batch", "ensemble"))

    ref = one_device(fn, (Ensemble, Batch))(params, x)
    with distmap.axis_mapping({"batch": "data", "ensemble": "model"}):
        with jax.set_mesh(mesh):
            eager = distmap.vmap(fn, (Ensemble, Batch))(params, x)
            jitted = jax.jit(lambda p, v: distmap.vmap(fn, (Ensemble, Batch))(p, v))(params, x)
    assert_same(eager, ref)
    assert_same(jitted, ref)
    assert_layout(eager.array, mesh, "model", "data", None)
    assert_layout(jitted.array, mesh, "model", "data", None)


def test_explicit_mapping_keyword_overrides_context():
    mesh = mesh_of("4x2")
    x = ints([("batch", 8), ("feature", 3)])
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh):
        out = distmap.vmap(with_psum, "batch", axis_mapping={"batch": "model"})(x)
    assert_same(out, one_device(with_psum, "batch")(x))
    assert_layout(out.array, mesh, "model", None)


def test_explicit_mesh_keyword_overrides_set_mesh():
    small = mesh_of("2")
    x = ints([("batch", 8), ("feature", 3)])
    with jax.set_mesh(mesh_of("8")):
        out = distmap.vmap(with_psum, "batch", mesh=small, axis_mapping={"batch": "data"})(x)
    assert_same(out, one_device(with_psum, "batch")(x))
    assert_layout(out.array, small, "data", None)


# ------------------------------------------------------------------------------ uneven sizes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "n, key, axes",
    [(5, "4", "data"), (13, "4", "data"), (13, "4x2", ("data", "model")), (3, "8", "data")],
)
def test_uneven_sizes_ignore_padding(n, key, axes, kind):
    mesh = mesh_of(key, kind)
    x = ints([("batch", n), ("feature", 2)])
    out = distmap.vmap(padding_probe, "batch", mesh=mesh, axis_mapping={"batch": axes})(x)
    assert_same(out, one_device(padding_probe, "batch")(x))
    # and against numpy, so the comparison does not rest on the one-device code alone
    xa, idx = np.asarray(x.array), np.arange(n)
    full = lambda v: np.broadcast_to(v, (n,) + np.shape(v))  # noqa: E731
    np.testing.assert_array_equal(out["v"].array, xa + idx[:, None])
    np.testing.assert_array_equal(out["count"], full(n))
    np.testing.assert_array_equal(out["sum"].array, full(xa.sum(0)))
    np.testing.assert_array_equal(out["sum_i"], full(idx.sum()))
    np.testing.assert_array_equal(out["max_i"], full(n - 1))
    np.testing.assert_array_equal(out["min_neg_i"], full(-(n - 1)))
    np.testing.assert_allclose(out["mean_i"], full((n - 1) / 2), rtol=1e-6)
    np.testing.assert_array_equal(out["max_v"].array, full((xa + 1000 * idx[:, None]).max(0)))
    np.testing.assert_array_equal(out["gather_i"], full(idx))
    assert out["gather_v"].axes == (Axis("batch", n), Axis("all", n), Axis("feature", 2))
    np.testing.assert_array_equal(out["gather_v"].array, full(xa))
    assert out["v"].array.sharding.device_set == set(mesh.devices.flat)


@pytest.mark.parametrize("kind", KINDS)
def test_uneven_two_axes_on_two_mesh_axes(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", 3), ("batch", 7), ("feature", 2)])
    f = distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mesh, axis_mapping={"ens": "model", "batch": "data"})
    assert_same(f(x), one_device(two_axis_work, ("ens", "batch"))(x))


@pytest.mark.parametrize("kind", KINDS)
def test_uneven_axis_beside_an_even_one_keeps_the_even_split(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", 2), ("batch", 7), ("feature", 2)])
    out = distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mesh, axis_mapping={"ens": "model", "batch": "data"})(x)
    assert_same(out, one_device(two_axis_work, ("ens", "batch"))(x))
    if kind == "explicit":
        # the uneven axis cannot stay split (a jax.Array cannot hold that); the even one is not gathered
        assert_layout(out["v"].array, mesh, "model", None, None)


@pytest.mark.parametrize("kind", KINDS)
def test_uneven_float_work_under_jit(kind):
    mesh = mesh_of("4", kind)
    v = floats([("batch", 6), ("feature", 4)], seed=5)
    w = floats([("feature", 4), ("hidden", 3)], seed=6)
    mapped = distmap.vmap(float_work, "batch", mesh=mesh, axis_mapping={"batch": "data"})
    assert_same(jax.jit(mapped)(v, w), one_device(float_work, "batch")(v, w))


# ------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("kind", KINDS)
def test_host_numpy_inputs_named_and_unnamed(kind):
    mesh = mesh_of("4x2", kind)
    xs = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    ws = np.arange(3, dtype=np.int32)

    def fn(row, w):  # row: unnamed (3,) from the mapped dim 0; w: unnamed, not mapped
        return row * w + distmap.psum(row, "batch")

    mapped = distmap.vmap(fn, "batch", args=(0, None), mesh=mesh, axis_mapping={"batch": "data"})
    out = mapped(xs, ws)
    assert_same(out, one_device(fn, "batch", args=(0, None))(xs, ws))
    assert_layout(out, mesh, "data", None)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_already_sharded_are_used_without_collectives(kind):
    mesh = mesh_of("4x2", kind)
    mapping = {"batch": "data"}
    x = distmap.shard(ints([("batch", 8), ("feature", 3)]), mapping, mesh)
    w = distmap.shard(ints([("feature", 3)], seed=1), mapping, mesh)  # no 'batch': replicated
    assert x.array.sharding.spec == P("data", None) and w.array.sharding.spec == P(None)

    def pure(a, b):
        return distmap.vmap(lambda v, u: v * u + 1, "batch", mesh=mesh, axis_mapping=mapping)(a, b)

    assert collectives(pure, x, w) == []
    one_psum = lambda a: distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping=mapping)(a)  # noqa: E731
    assert collectives(one_psum, x) == ["all-reduce"]
    # the eager call takes them as they are too
    assert_same(pure(x, w), distmap.vmap(lambda v, u: v * u + 1, "batch")(x, w))
    assert_layout(pure(x, w).array, mesh, "data", None)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_sharded_otherwise_are_resharded_once(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("batch", 8), ("feature", 4)])
    other = distmap.shard(x, {"batch": "model", "feature": "data"}, mesh)
    fn = lambda a: distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping={"batch": "data"})(a)  # noqa: E731
    ref = one_device(with_psum, "batch")(x)
    assert_same(fn(other), ref)
    assert_same(jax.jit(fn)(other), ref)
    # moving the input costs what one reshard to the map's layout costs in plain JAX, plus the psum
    target = NamedSharding(mesh, P("data", None))
    move = jax.sharding.reshard if kind == "explicit" else jax.lax.with_sharding_constraint
    alone = collectives(lambda a: move(a, target), other.array)
    assert alone, "the test wants an input layout that needs moving"
    assert sorted(collectives(fn, other)) == sorted(alone + ["all-reduce"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["one device", "another mesh", "a sub-mesh"])
def test_eager_inputs_on_other_devices_are_placed(where, kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("batch", 8), ("feature", 3)])
    devs = jax.devices()
    if where == "one device":
        arr = jax.device_put(x.array, devs[3])
    elif where == "another mesh":
        arr = jax.device_put(x.array, NamedSharding(jax.make_mesh((8,), ("x",), devices=devs[::-1]), P("x")))
    else:
        arr = jax.device_put(x.array, NamedSharding(mesh_of("4", "explicit"), P("data")))
    out = distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping={"batch": "data"})(distmap.named(arr, x.axes))
    assert_same(out, one_device(with_psum, "batch")(x))
    assert_layout(out.array, mesh, "data", None)


@pytest.mark.parametrize("kind", KINDS)
def test_unmapped_inputs_are_replicated(kind):
    mesh = mesh_of("4x2", kind)
    mapping = {"batch": "data"}
    x = floats([("batch", 8), ("feature", 4)])
    w = distmap.shard(floats([("feature", 4), ("hidden", 3)], seed=1), mapping, mesh)
    bias = jnp.arange(3, dtype=jnp.float32)  # unnamed, given spec None: not mapped
    scale = jnp.float32(0.5)  # rank 0: not mapped by default

    def fn(v, w, bias, scale, *, power):
        h = distmap.dot(v, w, axis="feature") * scale + distmap.named(bias, ("hidden",))
        return h**power + distmap.psum(h, "batch")

    kw = dict(args=(0, None, None, None))
    mapped = distmap.vmap(fn, "batch", mesh=mesh, axis_mapping=mapping, **kw)
    ref = distmap.vmap(fn, "batch", **kw)(x, w, bias, scale, power=2)
    assert_same(mapped(x, w, bias, scale, power=2), ref)
    x = distmap.shard(x, mapping, mesh)
    with jax.set_mesh(mesh):
        call = lambda *a: mapped(*a, power=2)  # noqa: E731
        assert_same(jax.jit(call)(x, w, bias, scale), ref)
        # w, bias and scale are whole on every device: the only collective is the psum
        assert collectives(call, x, w, bias, scale) == ["all-reduce"]


# ------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_are_global_arrays_split_by_the_mapping(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", 2), ("batch", 8), ("feature", 3)])

    def fn(v):
        return {"named": v * 2, "scalar": v.sum(), "raw": v.array + 1, "static": "tag", "none": None}

    out = distmap.vmap(fn, ("batch", "ens"), mesh=mesh, axis_mapping={"batch": "data", "ens": "model"})(x)
    assert_same(out, one_device(fn, ("batch", "ens"))(x))
    assert out["named"].axis_names == ("batch", "ens", "feature")
    assert_layout(out["named"].array, mesh, "data", "model", None)
    assert_layout(out["scalar"].array, mesh, "data", "model")
    assert_layout(out["raw"], mesh, "data", "model", None)
    assert out["static"] == "tag" and out["none"] is None
    # nothing is gathered: each device holds its block only
    assert {s.data.shape for s in out["named"].array.addressable_shards} == {(2, 1, 3)}


# ------------------------------------------------------------------------------ jit, grad, chunk_size


def _loss(w, x, mesh, mapping):
    def per_example(v):
        h = distmap.tanh(distmap.dot(v, w, axis="feature"))
        centred = h - distmap.pmean(h, "batch")
        return (centred * centred).sum() + distmap.pmax(h.sum(), "batch") * 0.1

    return distmap.vmap(per_example, "batch", mesh=mesh, axis_mapping=mapping)(x).sum().array


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [8, 7])
def test_grad_and_value_and_grad_equal_one_device(n, kind):
    mesh = mesh_of("4x2", kind)
    mapping = {"batch": ("data", "model")} if n == 8 else {"batch": "data"}
    w = floats([("feature", 4), ("hidden", 3)], seed=7)
    x = floats([("batch", n), ("feature", 4)], seed=8)
    ref_val, ref_grads = jax.value_and_grad(_loss, argnums=(0, 1))(w, x, None, None)
    vg = jax.value_and_grad(_loss, argnums=(0, 1))
    # jit needs no mesh context; an eager grad on an Explicit mesh needs jax.set_mesh (JAX's rule)
    assert_same(jax.jit(lambda w, x: vg(w, x, mesh, mapping))(w, x), (ref_val, ref_grads))
    with jax.set_mesh(mesh):
        assert_same(vg(w, x, mesh, mapping), (ref_val, ref_grads))
        assert_same(jax.grad(_loss)(w, x, mesh, mapping), ref_grads[0])
    if kind == "auto":  # no mesh context needed
        assert_same(vg(w, x, mesh, mapping), (ref_val, ref_grads))
        assert_same(jax.grad(_loss)(w, x, mesh, mapping), ref_grads[0])  # x concrete, w closed over


def test_grad_through_collectives_of_integer_index_and_ties():
    mesh = mesh_of("4")
    x = distmap.named(np.tile(np.float32([1.0, 2.0]), (6, 1)), ("batch", "feature"))  # every row ties

    def loss(x, mesh):
        def f(v):
            m = distmap.pmax(v, "batch")
            g = distmap.all_gather(v, "batch").sum("batch")
            return (m * v + g * distmap.axis_index("batch")).sum()

        return distmap.vmap(f, "batch", mesh=mesh, axis_mapping={"batch": "data"} if mesh else None)(x).sum().array

    ref = jax.grad(loss)(x, None)
    with jax.set_mesh(mesh):
        assert_same(jax.grad(loss)(x, mesh), ref)


@pytest.mark.parametrize("n", [16, 13])
def test_chunk_size_composes(n):
    mesh = mesh_of("4x2")
    x = ints([("batch", n), ("feature", 3)])
    for chunk in (1, 3):
        out = distmap.vmap(triple, "batch", mesh=mesh, axis_mapping={"batch": "data"}, chunk_size=chunk)(x)
        assert_same(out, one_device(triple, "batch")(x))
    # Whether the map is chunked is decided on the whole axis, as on one device: a chunk as large
    # as one device's share still refuses collectives (one device would), a chunk of the whole allows them.
    local = -(-n // 4)
    for f in (distmap.vmap(with_psum, "batch", chunk_size=local),
              distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping={"batch": "data"}, chunk_size=local)):
        with pytest.raises(errors.MappingError, match=r"psum\('batch'\): the map over 'batch' runs in chunks"):
            f(x)
    out = distmap.vmap(padding_probe, "batch", mesh=mesh, axis_mapping={"batch": "data"}, chunk_size=n)(x)
    assert_same(out, one_device(padding_probe, "batch")(x))


# ------------------------------------------------------------------------------ nesting


def test_nested_sharded_maps_fail_clearly():
    mesh = mesh_of("4x2")
    x = ints([("ens", 4), ("batch", 8)])
    inner = distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping={"batch": "model"})
    outer = distmap.vmap(inner, "ens", mesh=mesh, axis_mapping={"ens": "data"})
    with pytest.raises(errors.MeshError) as info:
        outer(x)
    msg = str(info.value)
    assert "('batch',)" in msg and "['model']" in msg and "('data',)" in msg and "'ens'" in msg
    assert "distmap.vmap(fn, (outer, inner))" in msg
    with pytest.raises(errors.MeshError, match="nested inside a map already split"):
        jax.jit(outer)(x)


@pytest.mark.parametrize("kind", KINDS)
def test_one_device_map_nested_with_a_sharded_map(kind):
    mesh = mesh_of("4x2", kind)
    x = ints([("ens", 4), ("batch", 8), ("feature", 2)])

    def body(v):
        return v + distmap.psum(v, "batch") * 2 + distmap.psum(v, "ens") + distmap.axis_index("batch")

    ref = one_device(distmap.vmap(body, "batch"), "ens")(x)
    sharded_inside = distmap.vmap(distmap.vmap(body, "batch", mesh=mesh, axis_mapping={"batch": "data"}), "ens")
    plain_inside = distmap.vmap(distmap.vmap(body, "batch"), "ens", mesh=mesh, axis_mapping={"ens": "data"})
    for f in (sharded_inside, plain_inside):
        assert_same(f(x), ref)
        assert_same(jax.jit(f)(x), ref)


# ------------------------------------------------------------------------------ errors


def test_unknown_mesh_axis_names_axis_and_mesh():
    mesh = mesh_of("4x2")
    with pytest.raises(errors.MeshError) as info:
        distmap.vmap(triple, "batch", mesh=mesh, axis_mapping={"batch": "dta"})(ints([("batch", 8)]))
    msg = str(info.value)
    assert "'batch'" in msg and "'dta'" in msg and "('data', 'model')" in msg and "{'data': 4, 'model': 2}" in msg


def test_mapping_without_a_mesh_names_axis_and_mesh_axes():
    with pytest.raises(errors.MeshError) as info:
        distmap.vmap(triple, "batch", axis_mapping={"batch": ("data", "model")})(ints([("batch", 8)]))
    msg = str(info.value)
    assert "'batch'" in msg and "('data', 'model')" in msg and "mesh=" in msg and "jax.set_mesh" in msg
    # the context form without jax.set_mesh fails the same way
    with distmap.axis_mapping({"batch": "data"}), pytest.raises(errors.MeshError, match="no mesh was given"):
        distmap.vmap(triple, "batch")(ints([("batch", 8)]))


@pytest.mark.parametrize(
    "mapping", [{"ens": "data", "batch": "data"}, {"ens": ("model", "data"), "batch": "data"}]
)
def test_mesh_axis_claimed_twice_in_one_map(mapping):
    mesh = mesh_of("4x2")
    with pytest.raises(errors.MeshError) as info:
        x = ints([("ens", 4), ("batch", 8), ("feature", 2)])
        distmap.vmap(two_axis_work, ("ens", "batch"), mesh=mesh, axis_mapping=mapping)(x)
    msg = str(info.value)
    assert "'ens'" in msg and "'batch'" in msg and "mesh axis 'data'" in msg


def test_not_a_mesh():
    with pytest.raises(errors.MeshError, match=r"vmap\(mesh=...\): expected a jax.sharding.Mesh, got str"):
        distmap.vmap(triple, "batch", mesh="data", axis_mapping={"batch": "data"})(ints([("batch", 8)]))


def test_explicit_mapping_naming_no_mapped_axis_is_refused():
    # an axis mapping given to vmap applies to its mapped axes only: a key among none of them
    # (a typo such as "btach") would split nothing, so it is refused, naming the key and the map
    mesh = mesh_of("4x2")
    x = ints([("batch", 8), ("feature", 3)])
    with pytest.raises(errors.MeshError, match=r"\['other'\].*\('batch',\)"):
        distmap.vmap(with_psum, "batch", mesh=mesh, axis_mapping={"other": "data"})(x)
    # a context mapping is a rule set for the whole program: names a call lacks are ignored
    with distmap.axis_mapping({"other": "data"}), jax.set_mesh(mesh):
        assert_same(distmap.vmap(with_psum, "batch")(x), one_device(with_psum, "batch")(x))


# ------------------------------------------------------------------------------ property test

_PROP_MESHES = [
    ("1", "explicit"), ("2", "auto"), ("4", "explicit"), ("8", "auto"), ("2x4", "explicit"), ("4x2", "auto")
]


def _options(mesh):
    names = list(mesh.axis_names)
    return [None] + names + [tuple(p) for p in itertools.permutations(names, 2)]


def prop_collectives(v):
    i, j = distmap.axis_index("a"), distmap.axis_index("b")
    return {
        "v": v * 3 + i * 10 + j,
        "sum_a": distmap.psum(v, "a"),
        "sum_ab": distmap.psum(v * (j + 1), ("a", "b")),
        "max": distmap.pmax(v + i * 100 - j, ("b", "a")),
        "min_a": distmap.pmin(v - i * 7, "a"),
        "mean_b": distmap.pmean(v, "b"),
        "gather_a": distmap.all_gather(v + j, "a").rename({"a": "ga"}),
        "gather_b": distmap.all_gather(i * 2 + j, "b"),
        "size": distmap.axis_size(("a", "b")) + 0 * i,
    }


def prop_pure(v):
    return v * 2 - distmap.axis_index("b")


@st.composite
def sharded_problems(draw):
    key, kind = draw(st.sampled_from(_PROP_MESHES))
    mesh = mesh_of(key, kind)
    opts = _options(mesh)
    ma = draw(st.sampled_from(opts))
    used = set() if ma is None else ({ma} if isinstance(ma, str) else set(ma))
    mb = draw(st.sampled_from([o for o in opts if o is None or not (({o} if isinstance(o, str) else set(o)) & used)]))
    mapping = {n: m for n, m in (("a", ma), ("b", mb)) if m is not None}
    sizes = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    order = draw(st.sampled_from([("a", "b"), ("b", "a")]))
    layout = draw(st.sampled_from([("a", "b", "f"), ("b", "f", "a"), ("f", "a", "b")]))
    fn = draw(st.sampled_from([prop_collectives, prop_pure]))
    return mesh, mapping, sizes, order, layout, fn


@settings(max_examples=12, deadline=None)  # tests/test_map_differential.py covers more ground per example
@given(sharded_problems())
def test_property_sharded_equals_one_device(problem):
    mesh, mapping, (na, nb), order, layout, fn = problem
    size = {"a": na, "b": nb, "f": 2}
    x = ints([(n, size[n]) for n in layout], seed=na * 10 + nb)
    out = distmap.vmap(fn, order, mesh=mesh, axis_mapping=mapping)(x)
    assert_same(out, one_device(fn, order)(x))
    leaf = out["v"] if isinstance(out, dict) else out
    shards = {n: math.prod(mesh.shape[a] for a in ((m,) if isinstance(m, str) else m)) for n, m in mapping.items()}
    if mapping and all(size[n] % k == 0 for n, k in shards.items()):
        assert_layout(leaf.array, mesh, *(mapping.get(n) for n in order))
