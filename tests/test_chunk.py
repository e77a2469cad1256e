"""``distmap.vmap(..., chunk_size=c)``: a sequential loop of chunks whose results equal the unchunked
map (exactly, for integer work), checked against hand-written ``jax.vmap``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors


def _ints(*shape, offset=0):
    n = int(np.prod(shape))
    return jnp.asarray((np.arange(n, dtype=np.int32) * 7 + offset).reshape(shape) % 23 - 11)


def _work(v, w):  # integer work with a cross-element dependency inside one example
    return v * w.sum() + jnp.cumsum(v) ** 2 - v.max()


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 16])
def test_unnamed_equals_jax_vmap_exactly(chunk):
    x, w = _ints(10, 6), _ints(6, offset=3)
    out = distmap.vmap(_work, "batch", args=(0, None), chunk_size=chunk)(x, w)
    ref = jax.vmap(_work, in_axes=(0, None))(x, w)
    assert out.dtype == ref.dtype
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("chunk", [3, 50])
def test_named_axis_anywhere_and_broadcast_inputs(chunk):
    x = distmap.named(_ints(6, 7), ("feature", "batch"))  # mapped axis at dim 1
    y = distmap.named(_ints(3, 7, offset=1), ("extra", "batch"))
    w = distmap.named(_ints(6, offset=2), ("feature",))  # no 'batch': broadcast
    u = _ints(7, 2, offset=4).T  # unnamed, mapped on dim 1 by spec
    s = jnp.int32(3)  # rank 0: not mapped

    def fn(x, y, w, u, s, label):
        assert label == "tag"
        return {"xy": (x * w).sum("feature") * y + s, "u": u * s, "label": label}

    out = distmap.vmap(fn, "batch", args=(0, 0, 0, 1), chunk_size=chunk)(x, y, w, u, s, "tag")

    def raw(x, y, w, u, s):
        return (x * w).sum() * y + s, u * s

    r_xy, r_u = jax.vmap(raw, in_axes=(1, 1, None, 1, None))(x.array, y.array, w.array, u, s)
    assert out["xy"].axis_names == ("batch", "extra")
    np.testing.assert_array_equal(out["xy"].array, r_xy)
    np.testing.assert_array_equal(out["u"], r_u)
    assert out["label"] == "tag"


@pytest.mark.parametrize("chunk", [1, 2])
def test_multiple_axes(chunk):
    x = distmap.named(_ints(5, 4, 3), ("a", "feature", "b"))
    out = distmap.vmap(lambda v: v * v.sum("feature"), ["a", "b"], chunk_size=chunk)(x)
    ref = jax.vmap(jax.vmap(lambda v: v * v.sum(), in_axes=1), in_axes=0)(x.array)
    assert out.axis_names == ("a", "b", "feature")
    np.testing.assert_array_equal(out.array, ref)


@pytest.mark.parametrize("chunk", [2, 4])
def test_created_axis_and_independent_outputs(chunk):
    w = distmap.named(_ints(3), ("feature",))
    out_named, out_raw = distmap.vmap(lambda w: (w * 2, jnp.arange(2)), Axis("ens", 5), chunk_size=chunk)(w)
    ref_named, ref_raw = jax.vmap(lambda w: (w * 2, jnp.arange(2)), in_axes=None, axis_size=5)(w.array)
    assert out_named.axis_names == ("ens", "feature")
    np.testing.assert_array_equal(out_named.array, ref_named)
    np.testing.assert_array_equal(out_raw, ref_raw)


def test_float_results_match():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(11, 8)).astype(np.float32))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32))
    fn = lambda v, w: jnp.tanh(v @ w)  # noqa: E731
    out = distmap.vmap(fn, "batch", args=(0, None), chunk_size=4)(x, w)
    np.testing.assert_allclose(out, jax.vmap(fn, in_axes=(0, None))(x, w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [3, 4])
def test_under_jit(chunk):
    x, w = _ints(10, 6), _ints(6, offset=3)
    f = jax.jit(distmap.vmap(_work, "batch", args=(0, None), chunk_size=chunk))
    np.testing.assert_array_equal(f(x, w), jax.vmap(_work, in_axes=(0, None))(x, w))


@pytest.mark.parametrize("chunk", [3])
def test_under_grad(chunk):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(10, 6)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(6, 3)).astype(np.float32))
    fn = lambda w, v: jnp.sin(v @ w).sum()  # noqa: E731

    def loss(w, x):
        return (distmap.vmap(fn, "batch", args=(None, 0), chunk_size=chunk)(w, x) ** 2).sum()

    def loss_ref(w, x):
        return (jax.vmap(fn, in_axes=(None, 0))(w, x) ** 2).sum()

    # under jit: one compile instead of an eager dispatch per primitive of the transposed loop
    gw, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, x)
    rw, rx = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(w, x)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)


def test_chunked_map_is_a_loop():
    x = _ints(12, 3)
    jaxpr = str(jax.make_jaxpr(distmap.vmap(lambda v: v * 2, "batch", chunk_size=4))(x))
    assert "scan" in jaxpr or "while" in jaxpr
    jaxpr = str(jax.make_jaxpr(distmap.vmap(lambda v: v * 2, "batch", chunk_size=12))(x))
    assert "scan" not in jaxpr and "while" not in jaxpr


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "2", np.float32(2.0)])
def test_bad_chunk_size(bad):
    with pytest.raises(errors.MappingError, match="chunk_size"):
        distmap.vmap(lambda v: v, "batch", chunk_size=bad)


def test_numpy_int_chunk_size_accepted():
    x = _ints(5, 2)
    out = distmap.vmap(lambda v: v + 1, "batch", chunk_size=np.int64(2))(x)
    np.testing.assert_array_equal(out, x + 1)
