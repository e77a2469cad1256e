"""Elementwise math and softmax, against numpy / plain jax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import NamedArray, errors

RNG = np.random.default_rng(0)
POS = RNG.uniform(0.1, 3.0, size=(2, 3)).astype(np.float32)
ANY = RNG.normal(size=(2, 3)).astype(np.float32) * 2


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


UNARY = {
    "exp": (np.exp, ANY),
    "log": (np.log, POS),
    "log1p": (np.log1p, POS),
    "expm1": (np.expm1, ANY),
    "sqrt": (np.sqrt, POS),
    "rsqrt": (lambda a: 1 / np.sqrt(a), POS),
    "square": (np.square, ANY),
    "abs": (np.abs, ANY),
    "sign": (np.sign, ANY),
    "negative": (np.negative, ANY),
    "reciprocal": (np.reciprocal, POS),
    "floor": (np.floor, ANY),
    "ceil": (np.ceil, ANY),
    "round": (np.round, ANY),
    "sin": (np.sin, ANY),
    "cos": (np.cos, ANY),
    "tanh": (np.tanh, ANY),
    "sigmoid": (_sigmoid, ANY),
    "relu": (lambda a: np.maximum(a, 0), ANY),
    "silu": (lambda a: a * _sigmoid(a), ANY),
    "softplus": (lambda a: np.log1p(np.exp(a)), ANY),
    "isnan": (np.isnan, np.array([[0.0, np.nan, 1.0], [np.inf, 2.0, np.nan]], np.float32)),
    "isfinite": (np.isfinite, np.array([[0.0, np.nan, 1.0], [np.inf, 2.0, -np.inf]], np.float32)),
    "logical_not": (np.logical_not, ANY > 0),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name):
    ref, a = UNARY[name]
    x = distmap.named(np.transpose(a), ("f", "b"))
    r = getattr(distmap, name)(x)
    assert isinstance(r, NamedArray) and r.axes == x.axes
    np.testing.assert_allclose(np.asarray(r.array, dtype=np.float64), ref(np.transpose(a)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "square"])
def test_unary_scalar(name):
    r = getattr(distmap, name)(2.0)
    assert isinstance(r, NamedArray) and r.axes == ()
    np.testing.assert_allclose(r.array, UNARY[name][0](np.float32(2.0)), rtol=1e-6)
    assert getattr(distmap, name)(jnp.asarray(2.0)).axes == ()


def test_unary_refuses_unnamed_arrays():
    with pytest.raises(errors.ShapeMismatchError, match="distmap.named"):
        distmap.exp(np.zeros(3))
    with pytest.raises(TypeError):
        distmap.exp("one")


def test_unary_docstrings_and_names():
    assert distmap.exp.__name__ == "exp"
    assert "Example" in distmap.exp.__doc__
    assert distmap.tanh.__module__ == "distmap._src.math"


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu(approximate):
    x = distmap.named(ANY, ("a", "b"))
    np.testing.assert_allclose(
        distmap.gelu(x, approximate=approximate).array, jax.nn.gelu(ANY, approximate=approximate), rtol=1e-6
    )
    # JAX's default is the tanh approximation; ours follows it
    np.testing.assert_allclose(distmap.gelu(x).array, jax.nn.gelu(ANY), rtol=1e-6)


def test_round_decimals():
    x = distmap.named(np.array([1.234, 5.678], np.float32), "a")
    np.testing.assert_allclose(distmap.round(x, 1).array, [1.2, 5.7], rtol=1e-6)


@pytest.mark.parametrize("name, ref", [("maximum", np.maximum), ("minimum", np.minimum)])
def test_max_min(name, ref):
    fn = getattr(distmap, name)
    a, b = ANY, RNG.normal(size=(3, 4)).astype(np.float32)
    r = fn(distmap.named(a, ("x", "y")), distmap.named(b, ("y", "z")))
    assert r.axis_names == ("x", "y", "z")
    np.testing.assert_array_equal(r.array, ref(a[:, :, None], b[None, :, :]))
    np.testing.assert_array_equal(fn(distmap.named(a, ("x", "y")), 0.5).array, ref(a, 0.5))
    r = fn(0.5, distmap.named(a, ("x", "y")))
    assert r.axis_names == ("x", "y")
    np.testing.assert_array_equal(r.array, ref(0.5, a))
    assert fn(1.0, 2.0).axes == ()
    assert float(fn(1.0, 2.0).array) == ref(1.0, 2.0)
    with pytest.raises(errors.AxisSizeError):
        fn(distmap.zeros({"x": 2}), distmap.zeros({"x": 3}))
    with pytest.raises(errors.ShapeMismatchError):
        fn(distmap.zeros({"x": 2}), np.zeros(2))


class TestClip:
    def test_scalars(self):
        x = distmap.named(ANY, ("a", "b"))
        np.testing.assert_array_equal(distmap.clip(x, -0.5, 0.5).array, np.clip(ANY, -0.5, 0.5))
        np.testing.assert_array_equal(distmap.clip(x, None, 0.5).array, np.minimum(ANY, 0.5))
        np.testing.assert_array_equal(distmap.clip(x, -0.5).array, np.maximum(ANY, -0.5))

    def test_named_bounds(self):
        x = distmap.named(ANY, ("a", "b"))
        lo = distmap.named(np.array([-1.0, 0.0, 1.0], np.float32), "b")
        hi = distmap.named(np.array([2.0, 3.0, 4.0, 5.0], np.float32), "c")
        r = distmap.clip(x, lo, hi)
        assert r.axis_names == ("a", "b", "c")
        ref = np.clip(ANY[:, :, None], lo.array[None, :, None], hi.array[None, None, :])
        np.testing.assert_array_equal(r.array, ref)

    def test_errors(self):
        x = distmap.named(ANY, ("a", "b"))
        with pytest.raises(errors.AxisSizeError, match="lo"):
            distmap.clip(x, distmap.zeros({"b": 5}), 1.0)
        with pytest.raises(errors.ShapeMismatchError):
            distmap.clip(x, np.zeros(3), 1.0)


def _np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class TestSoftmax:
    a = RNG.normal(size=(2, 3, 4)).astype(np.float32)

    def x(self):
        return distmap.named(self.a, ("b", "s", "v"))

    @pytest.mark.parametrize("sel, axis", [("v", 2), ("b", 0), (("s", "v"), (1, 2)), (None, (0, 1, 2))])
    def test_softmax(self, sel, axis):
        r = distmap.softmax(self.x(), sel)
        assert r.axes == self.x().axes
        np.testing.assert_allclose(r.array, _np_softmax(self.a, axis), rtol=1e-5, atol=1e-6)
        lr = distmap.log_softmax(self.x(), sel)
        np.testing.assert_allclose(lr.array, np.log(_np_softmax(self.a, axis)), rtol=1e-5, atol=1e-5)

    def test_errors(self):
        with pytest.raises(errors.AxisNotFoundError):
            distmap.softmax(self.x(), "z")
        with pytest.raises(TypeError):
            distmap.softmax(self.a, "v")
        with pytest.raises(errors.AxisSelectorError):
            distmap.log_softmax(self.x(), 2)

    def test_grad(self):
        g = jax.grad(lambda x: distmap.log_softmax(x, "v")["v", 0].sum().array)(self.x())
        ref = jax.grad(lambda a: jax.nn.log_softmax(a, axis=2)[:, :, 0].sum())(jnp.asarray(self.a))
        np.testing.assert_allclose(g.array, ref, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20, 20, width=32), min_size=1, max_size=6),
       st.sampled_from(["exp", "tanh", "sigmoid", "relu", "abs", "square"]))
def test_unary_matches_jax(values, name):
    a = np.array(values, np.float32)
    jfn = {"exp": jnp.exp, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
           "abs": jnp.abs, "square": jnp.square}[name]
    np.testing.assert_array_equal(getattr(distmap, name)(distmap.named(a, "i")).array, jfn(a))
