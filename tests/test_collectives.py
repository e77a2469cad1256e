"""Named collectives inside ``distmap.vmap`` on one device, compared with numpy (or ``jax.vmap`` with
``axis_name`` and ``jax.lax`` collectives)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors

A, B = Axis("a", 2), Axis("b", 3)


def _data(*shape, offset=0.0):
    n = int(np.prod(shape))
    return (np.arange(n, dtype=np.float32) * 1.7 + offset).reshape(shape) % 5.0 - 2.0


_REDUCERS = {
    "psum": (distmap.psum, np.sum),
    "pmean": (distmap.pmean, np.mean),
    "pmax": (distmap.pmax, np.max),
    "pmin": (distmap.pmin, np.min),
}


@pytest.mark.parametrize("op", sorted(_REDUCERS))
@pytest.mark.parametrize("axis", ["batch", Axis("batch", 4)])
def test_reduction_one_name_named_array(op, axis):
    coll, ref = _REDUCERS[op]
    x = _data(3, 4)  # (feature, batch)
    out = distmap.vmap(lambda v: coll(v, axis), "batch")(distmap.named(jnp.asarray(x), ("feature", "batch")))
    assert out.axis_names == ("batch", "feature")
    expected = np.broadcast_to(ref(x, axis=1), (4, 3))
    np.testing.assert_allclose(out.array, expected, rtol=1e-6)


@pytest.mark.parametrize("op", sorted(_REDUCERS))
def test_reduction_raw_arrays_and_pytrees(op):
    coll, ref = _REDUCERS[op]
    x, y = _data(4, 3), _data(4, offset=1.0)
    z = _data(2, 4, offset=2.0)  # (feature, batch) named

    def fn(x, y, z):
        return coll({"x": x, "pair": [y, z]}, "batch")

    out = distmap.vmap(fn, "batch")(x, y, distmap.named(jnp.asarray(z), ("feature", "batch")))
    np.testing.assert_allclose(out["x"], np.broadcast_to(ref(x, axis=0), (4, 3)), rtol=1e-6)
    np.testing.assert_allclose(out["pair"][0], np.broadcast_to(ref(y), (4,)), rtol=1e-6)
    assert out["pair"][1].axis_names == ("batch", "feature")
    np.testing.assert_allclose(out["pair"][1].array, np.broadcast_to(ref(z, axis=1), (4, 2)), rtol=1e-6)


def test_integer_work_is_exact():
    x = np.arange(12, dtype=np.int32).reshape(4, 3) * 7 - 30
    s, mx, mn = distmap.vmap(
        lambda v: (distmap.psum(v, "batch"), distmap.pmax(v, "batch"), distmap.pmin(v, "batch")), "batch"
    )(jnp.asarray(x))
    np.testing.assert_array_equal(s, np.broadcast_to(x.sum(0), (4, 3)))
    np.testing.assert_array_equal(mx, np.broadcast_to(x.max(0), (4, 3)))
    np.testing.assert_array_equal(mn, np.broadcast_to(x.min(0), (4, 3)))
    m = distmap.vmap(lambda v: distmap.pmean(v, "batch"), "batch")(jnp.asarray(x))
    np.testing.assert_allclose(m, np.broadcast_to(x.mean(0), (4, 3)), rtol=1e-6)


@pytest.mark.parametrize("op", sorted(_REDUCERS))
@pytest.mark.parametrize("names", [("a", "b"), ("b", "a"), ["a", B], ("a",), "b"])
def test_reduction_over_several_names(op, names):
    coll, ref = _REDUCERS[op]
    x = _data(2, 3, 5)  # (a, b, feature)
    out = distmap.vmap(lambda v: coll(v, names), [A, B])(distmap.named(jnp.asarray(x), ("a", "b", "feature")))
    flat = [names] if isinstance(names, str) else [n if isinstance(n, str) else n.name for n in names]
    dims = tuple(sorted({"a": 0, "b": 1}[n] for n in flat))
    expected = np.broadcast_to(ref(x, axis=dims, keepdims=True), x.shape)
    assert out.axis_names == ("a", "b", "feature")
    np.testing.assert_allclose(out.array, expected, rtol=1e-6)


def test_reduction_over_nested_distmap_vmaps():
    x = _data(3, 2, 4)  # (b, feature, a)

    def outer(row):  # row: (b, feature)
        return distmap.vmap(lambda v: distmap.psum(v, ("a", "b")) - distmap.pmean(v, "b"), "b")(row)

    out = distmap.vmap(outer, "a")(distmap.named(jnp.asarray(x), ("b", "feature", "a")))
    assert out.axis_names == ("a", "b", "feature")
    total = x.sum(axis=(0, 2))  # (feature,)
    mean_b = x.mean(axis=0)  # (feature, a)
    expected = total[None, None, :] - mean_b.T[:, None, :]
    np.testing.assert_allclose(out.array, np.broadcast_to(expected, (4, 3, 2)), rtol=1e-5, atol=1e-6)


def test_reference_jax_vmap_with_axis_names():
    # The same nested reduction written with jax.vmap(axis_name=...) and jax.lax.psum.
    x = _data(2, 3, 5)
    out = distmap.vmap(lambda v: distmap.psum(v * v, ("a", "b")), ["a", "b"])(jnp.asarray(x))
    ref = jax.vmap(jax.vmap(lambda v: jax.lax.psum(v * v, ("a", "b")), axis_name="b"), axis_name="a")(x)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


# ---------------------------------------------------------------------------- all_gather


def test_all_gather_raw_output():
    x = _data(4, 3)
    out = distmap.vmap(lambda r: distmap.all_gather(r, "batch"), "batch")(jnp.asarray(x))
    np.testing.assert_allclose(out, np.broadcast_to(x, (4, 4, 3)))  # every element sees the whole array


def test_all_gather_restores_axis_inside_fn():
    x = _data(4, 3)
    seen = {}

    def fn(v):
        g = distmap.all_gather(v, "batch")
        seen["axes"] = g.axes
        return (g * v).sum("batch")  # per element: sum_j x[j] * x[i]

    out = distmap.vmap(fn, "batch")(distmap.named(jnp.asarray(x), ("batch", "feature")))
    assert seen["axes"] == (Axis("batch", 4), Axis("feature", 3))
    np.testing.assert_allclose(out.array, x.sum(0)[None, :] * x, rtol=1e-5)
    assert out.axis_names == ("batch", "feature")


def test_all_gather_raw_and_pytree():
    x = _data(4, 3)
    seen = {}

    def fn(v):
        g = distmap.all_gather({"v": v, "s": v.sum()}, "batch")
        seen["shapes"] = (g["v"].shape, g["s"].shape)
        return g["v"][0] + g["s"][-1]

    out = distmap.vmap(fn, "batch")(jnp.asarray(x))
    assert seen["shapes"] == ((4, 3), (4,))
    np.testing.assert_allclose(out, np.broadcast_to(x[0] + x[-1].sum(), (4, 3)), rtol=1e-5)


@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
def test_all_gather_several_names(names):
    x = _data(2, 3, 5)  # (a, b, feature)
    seen = {}

    def fn(v):
        g = distmap.all_gather(v, names)
        seen["axes"] = g.axis_names
        return g.rename({"a": "ga", "b": "gb"})

    out = distmap.vmap(fn, [A, B])(distmap.named(jnp.asarray(x), ("a", "b", "feature")))
    assert seen["axes"] == names + ("feature",)
    gathered = x if names == ("a", "b") else x.transpose(1, 0, 2)
    assert out.axis_names == ("a", "b") + tuple("g" + n for n in names) + ("feature",)
    np.testing.assert_allclose(out.array, np.broadcast_to(gathered, (2, 3) + gathered.shape))


def test_all_gather_axis_already_present_raises():
    with pytest.raises(errors.MappingError, match="already has an axis named 'batch'"):
        distmap.vmap(lambda v: distmap.all_gather(distmap.zeros({"batch": 2}), "batch"), "batch")(jnp.zeros(4))


# ----------------------------------------------------------------- axis_index, axis_size


def test_axis_index_and_size_one_name():
    size = []

    def fn(v):
        size.append(distmap.axis_size("batch"))
        return distmap.axis_index("batch") * 10 + distmap.axis_index(Axis("batch", 4)) + v * 0

    out = distmap.vmap(fn, "batch")(jnp.zeros(4, jnp.int32))
    np.testing.assert_array_equal(out, np.arange(4) * 11)
    assert size == [4] and type(size[0]) is int


@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
def test_axis_index_and_size_several_names(names):
    sizes = {}

    def fn():
        sizes["n"] = distmap.axis_size(names)
        return distmap.axis_index(names)

    out = distmap.vmap(fn, [A, B])()
    assert sizes["n"] == 6
    ref = jax.vmap(jax.vmap(lambda: jax.lax.axis_index(names), axis_name="b", axis_size=3), axis_name="a", axis_size=2)()
    np.testing.assert_array_equal(out, ref)
    ia, ib = np.meshgrid(np.arange(2), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(out, ia * 3 + ib if names == ("a", "b") else ib * 2 + ia)


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda: distmap.psum(jnp.ones(3), "batch"),
        lambda: distmap.pmean(jnp.ones(3), "batch"),
        lambda: distmap.pmax(jnp.ones(3), "batch"),
        lambda: distmap.pmin(jnp.ones(3), "batch"),
        lambda: distmap.all_gather(jnp.ones(3), "batch"),
        lambda: distmap.axis_index("batch"),
        lambda: distmap.axis_size("batch"),
    ],
)
def test_outside_a_map_raises(call):
    with pytest.raises(errors.MappingError, match="'batch'") as e:
        call()
    assert "none" in str(e.value)
    with pytest.raises(errors.MappingError, match=r"'batch'.*\('other',\)"):
        distmap.vmap(lambda v: call(), "other")(jnp.zeros(2))
    with pytest.raises(errors.MappingError, match="'batch'"):
        jax.jit(call)()


def test_sequence_with_one_unmapped_name_raises():
    with pytest.raises(errors.MappingError, match="'c'"):
        distmap.vmap(lambda v: distmap.psum(v, ("a", "c")), "a")(jnp.zeros(2))


@pytest.mark.parametrize(
    "coll",
    [
        lambda v: distmap.psum(v, "batch"),
        lambda v: distmap.all_gather(v, "batch"),
        lambda v: distmap.axis_index("batch"),
        lambda v: distmap.axis_size("batch"),
    ],
)
def test_chunked_map_refuses_collectives(coll):
    with pytest.raises(errors.MappingError, match="chunk"):
        distmap.vmap(coll, "batch", chunk_size=2)(jnp.zeros(6))
    # A chunk at least the axis size is no chunking at all: the collective works.
    distmap.vmap(coll, "batch", chunk_size=6)(jnp.zeros(6))


def test_bad_names_raise():
    for bad in [(), ("a", "a"), 3]:
        with pytest.raises(errors.DistmapError):
            distmap.vmap(lambda v: distmap.psum(v, bad), "a")(jnp.zeros(2))


# ------------------------------------------------------------------------------ jit, grad


def test_collectives_under_jit():
    x = _data(4, 3)

    @jax.jit
    def f(x):
        return distmap.vmap(lambda v: v - distmap.pmean(v, "batch") + distmap.axis_index("batch"), "batch")(x)

    np.testing.assert_allclose(f(jnp.asarray(x)), x - x.mean(0) + np.arange(4)[:, None], rtol=1e-5, atol=1e-6)


def test_grad_through_psum_and_pmean():
    x = jnp.asarray(_data(4, 3))

    def loss(x):
        y = distmap.vmap(lambda v: (v - distmap.pmean(v, "batch")) ** 2 * distmap.psum(v, "batch"), "batch")(x)
        return y.sum()

    def loss_ref(x):
        return ((x - x.mean(0)) ** 2 * x.sum(0)).sum()

    np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(loss_ref)(x), rtol=1e-4, atol=1e-5)
    g = jax.grad(loss)(distmap.named(x, ("batch", "feature")).array)
    np.testing.assert_allclose(g, jax.grad(loss_ref)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,ref", [(distmap.pmax, jnp.max), (distmap.pmin, jnp.min)])
def test_grad_through_pmax_pmin(op, ref):
    x = jnp.asarray(_data(4, 3))

    def loss(x):
        return (distmap.vmap(lambda v: op(v, "batch") * v, "batch")(x)).sum()

    def loss_ref(x):
        return (ref(x, axis=0, keepdims=True) * x).sum()

    np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(loss_ref)(x), rtol=1e-5, atol=1e-6)


def test_grad_through_all_gather():
    x = jnp.asarray(_data(4, 3))

    def loss(x):
        y = distmap.vmap(lambda v: (distmap.all_gather(v, "batch") * v).sum(0), "batch")(x)
        return (y ** 2).sum()

    def loss_ref(x):
        return ((x.sum(0)[None] * x) ** 2).sum()

    np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(loss_ref)(x), rtol=1e-4, atol=1e-4)
