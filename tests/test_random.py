"""distmap.random: same draws as jax.random for the same key and shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors

AXES = {"batch": 3, "feature": 4}
SHAPE = (3, 4)
KEYS = {"typed": jax.random.key(7), "raw": jax.random.PRNGKey(7)}


@pytest.fixture(params=list(KEYS))
def key(request):
    return KEYS[request.param]


def same(x, ref):
    assert x.shape == AXES
    np.testing.assert_array_equal(x.array, ref)


def test_normal(key):
    same(distmap.random.normal(key, AXES), jax.random.normal(key, SHAPE))
    r = distmap.random.normal(key, AXES, dtype=jnp.bfloat16)
    assert r.dtype == jnp.bfloat16
    np.testing.assert_array_equal(r.array, jax.random.normal(key, SHAPE, jnp.bfloat16))


def test_axes_forms(key):
    ref = jax.random.normal(key, SHAPE)
    same(distmap.random.normal(key, [Axis("batch", 3), Axis("feature", 4)]), ref)
    one = distmap.random.normal(key, Axis("batch", 3))
    np.testing.assert_array_equal(one.array, jax.random.normal(key, (3,)))


def test_uniform(key):
    same(distmap.random.uniform(key, AXES), jax.random.uniform(key, SHAPE))
    same(
        distmap.random.uniform(key, AXES, minval=-2.0, maxval=3.0),
        jax.random.uniform(key, SHAPE, minval=-2.0, maxval=3.0),
    )


def test_uniform_named_bounds(key):
    lo = np.array([0.0, 10.0, 20.0], np.float32)
    hi = np.array([1.0, 2.0, 3.0, 4.0], np.float32) + 30
    r = distmap.random.uniform(
        key, AXES, minval=distmap.named(lo, "batch"), maxval=distmap.named(hi, "feature")
    )
    ref = jax.random.uniform(key, SHAPE, minval=lo[:, None], maxval=hi[None, :])
    same(r, ref)


def test_randint(key):
    same(distmap.random.randint(key, AXES, 0, 10), jax.random.randint(key, SHAPE, 0, 10))
    hi = np.array([5, 50, 500, 5000], np.int32)
    r = distmap.random.randint(key, AXES, 0, distmap.named(hi, "feature"), dtype=jnp.int32)
    same(r, jax.random.randint(key, SHAPE, 0, hi[None, :]))
    assert r.dtype == jnp.int32


def test_bernoulli(key):
    same(distmap.random.bernoulli(key, AXES), jax.random.bernoulli(key, 0.5, SHAPE))
    same(distmap.random.bernoulli(key, AXES, p=0.2), jax.random.bernoulli(key, 0.2, SHAPE))
    p = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
    r = distmap.random.bernoulli(key, AXES, p=distmap.named(p, "feature"))
    same(r, jax.random.bernoulli(key, p[None, :], SHAPE))
    assert not r.array[:, 0].any() and r.array[:, 3].all()


def test_categorical(key):
    logits = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    x = distmap.named(logits.T.copy(), ("vocab", "batch"))
    r = distmap.random.categorical(key, x, "vocab")
    assert r.axis_names == ("batch",)
    np.testing.assert_array_equal(r.array, jax.random.categorical(key, logits.T, axis=0))


def test_under_jit(key):
    f = jax.jit(lambda k: distmap.random.normal(k, AXES))
    same(f(key), jax.random.normal(key, SHAPE))


def test_errors():
    k = jax.random.key(0)
    with pytest.raises(errors.AxisSelectorError, match="needs a size"):
        distmap.random.normal(k, ("batch",))
    with pytest.raises(errors.DuplicateAxisError):
        distmap.random.normal(k, [Axis("a", 2), Axis("a", 2)])
    with pytest.raises(errors.ShapeMismatchError, match="one key"):
        distmap.random.normal(jax.random.split(k, 3), AXES)
    with pytest.raises(errors.ShapeMismatchError, match="one key"):
        distmap.random.normal(jax.random.split(jax.random.PRNGKey(0), 3), AXES)
    with pytest.raises(errors.ArgumentTypeError, match="dtype float32"):  # not a key: the wrong kind, not shape
        distmap.random.normal(jnp.zeros(2), AXES)
    with pytest.raises(errors.ArgumentTypeError, match="PRNG key"):
        distmap.random.normal(0, AXES)
    with pytest.raises(errors.AxisNotFoundError, match="minval"):
        distmap.random.uniform(k, AXES, minval=distmap.zeros({"other": 2}))
    with pytest.raises(errors.AxisSizeError):
        distmap.random.uniform(k, AXES, maxval=distmap.ones({"batch": 5}))
    with pytest.raises(errors.ShapeMismatchError):
        distmap.random.bernoulli(k, AXES, p=np.full(SHAPE, 0.5))
    with pytest.raises(TypeError):
        distmap.random.categorical(k, np.zeros((2, 3)), "vocab")
    with pytest.raises(errors.AxisNotFoundError):
        distmap.random.categorical(k, distmap.zeros(AXES), "vocab")


def test_public_module_reexports_only():
    import distmap.random as public
    from distmap._src import random as private

    for name in public.__all__:
        assert getattr(public, name) is getattr(private, name)
