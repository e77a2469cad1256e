"""Reductions over named axes, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import Axis, errors

NAMES = ("a", "b", "c")
DATA = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)

REDUCTIONS = {
    "sum": np.sum,
    "mean": np.mean,
    "max": np.max,
    "min": np.min,
    "prod": np.prod,
    "std": np.std,
    "var": np.var,
    "logsumexp": lambda a, axis: np.log(np.sum(np.exp(a.astype(np.float64)), axis=axis)),
}
BOOL_REDUCTIONS = {"any": np.any, "all": np.all}


def x():
    return distmap.named(DATA, NAMES)


def dims(sel):
    if sel is None:
        return None
    if isinstance(sel, (str, Axis)):
        sel = (sel,)
    return tuple(NAMES.index(s if isinstance(s, str) else s.name) for s in sel)


SELECTIONS = [None, "a", "c", Axis("b", 3), ("a", "c"), ["c", "a"], ("a", "b", "c"), {"b": 3, "c": None}, ()]


@pytest.mark.parametrize("name", list(REDUCTIONS))
@pytest.mark.parametrize("sel", SELECTIONS, ids=repr)
def test_reduction(name, sel):
    fn = getattr(distmap, name)
    r = fn(x(), sel)
    d = dims(sel if not isinstance(sel, dict) else tuple(sel))
    ref = REDUCTIONS[name](DATA, axis=d)
    kept = NAMES if d is None else tuple(n for i, n in enumerate(NAMES) if i not in d)
    if sel is None:
        kept = ()
    assert r.axis_names == kept
    np.testing.assert_allclose(r.array, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(BOOL_REDUCTIONS))
@pytest.mark.parametrize("sel", [None, "b", ("a", "c")], ids=repr)
def test_bool_reduction(name, sel):
    data = DATA > 0
    r = getattr(distmap, name)(distmap.named(data, NAMES), sel)
    np.testing.assert_array_equal(r.array, BOOL_REDUCTIONS[name](data, axis=dims(sel)))


@pytest.mark.parametrize("name", list(REDUCTIONS) + list(BOOL_REDUCTIONS))
def test_method_mirrors_function(name):
    y = x() if name not in BOOL_REDUCTIONS else x() > 0
    for sel in (None, "b", ("c", "a")):
        np.testing.assert_array_equal(getattr(y, name)(sel).array, getattr(distmap, name)(y, sel).array)
        assert getattr(y, name)(sel).axes == getattr(distmap, name)(y, sel).axes


def test_default_reduces_everything():
    assert distmap.sum(x()).axes == ()
    np.testing.assert_allclose(x().sum().array, DATA.sum(), rtol=1e-5)


def test_ddof():
    np.testing.assert_allclose(distmap.std(x(), "c", ddof=1).array, DATA.std(axis=2, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(x().var("c", ddof=1).array, DATA.var(axis=2, ddof=1), rtol=1e-5)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "prod", "std", "var"])
def test_where(name):
    mask = DATA[0, :, 0] > -0.5  # over 'b' only: broadcast by name
    w = distmap.named(mask, "b")
    full = np.broadcast_to(mask[None, :, None], DATA.shape)
    r = getattr(distmap, name)(x(), "b", where=w)
    ref = getattr(np, name)(DATA, axis=1, where=full, **({"initial": -np.inf} if name == "max" else {}),
                            **({"initial": np.inf} if name == "min" else {}))
    np.testing.assert_allclose(r.array, ref, rtol=1e-5, atol=1e-6)


def test_where_transposed_mask():
    mask = DATA > 0
    w = distmap.named(np.transpose(mask, (2, 0, 1)), ("c", "a", "b"))
    np.testing.assert_allclose(distmap.sum(x(), ("a", "c"), where=w).array, DATA.sum(axis=(0, 2), where=mask),
                               rtol=1e-5)


def test_where_fully_masked_max_min():
    mask = distmap.named(np.array([False, False, False]), "b")
    assert np.all(np.isneginf(distmap.max(x(), "b", where=mask).array))
    assert np.all(np.isposinf(x().min("b", where=mask).array))
    ints = distmap.named(np.arange(6, dtype=np.int32).reshape(2, 3), ("a", "b"))
    assert (distmap.max(ints, "b", where=mask).array == np.iinfo(np.int32).min).all()
    np.testing.assert_array_equal(distmap.max(x(), "b", where=mask, initial=0.0).array, np.zeros((2, 4)))


def test_where_errors():
    with pytest.raises(errors.AxisNotFoundError):
        distmap.sum(x(), "a", where=distmap.named(np.ones(5, bool), "z"))
    with pytest.raises(TypeError, match="NamedArray mask"):
        distmap.sum(x(), "a", where=np.ones(DATA.shape, bool))


WHERE_TAKERS = ["sum", "mean", "max", "min", "prod", "std", "var", "any", "all"]


@pytest.mark.parametrize("name", WHERE_TAKERS)
@pytest.mark.parametrize("method", [False, True])
def test_where_mask_mistakes_named_for_every_reduction(name, method):
    # The class, not the example: every function that takes where= checks the mask by name, as
    # the operators check their operands: a wrong size, an axis x lacks, an unnamed or non-bool mask.
    data = x() > 0 if name in BOOL_REDUCTIONS else x()
    fn = getattr(data, name) if method else (lambda *a, **k: getattr(distmap, name)(data, *a, **k))
    with pytest.raises(errors.AxisSizeError, match=r"where=.*'b' of size 5.*size 3"):
        fn("a", where=distmap.ones({"b": 5}, dtype=bool))
    with pytest.raises(errors.AxisNotFoundError, match=r"where=.*'z'"):
        fn("a", where=distmap.ones({"z": 3}, dtype=bool))
    with pytest.raises(errors.ArgumentTypeError, match=r"where=.*NamedArray"):
        fn("a", where=np.ones(DATA.shape, bool))
    with pytest.raises(errors.ArgumentTypeError, match=r"where=.*bools"):
        fn("a", where=distmap.ones({"b": 3}))
    ok = fn("a", where=distmap.named(np.array([True, False, True]), "b"))  # a mask over some axes broadcasts
    assert ok.axis_names == ("b", "c")


@pytest.mark.parametrize("name, ref", [("argmax", np.argmax), ("argmin", np.argmin)])
def test_arg_reductions(name, ref):
    fn = getattr(distmap, name)
    for sel, d in (("a", 0), ("b", 1), (Axis("c", 4), 2)):
        r = fn(x(), sel)
        assert r.axis_names == tuple(n for i, n in enumerate(NAMES) if i != d)
        np.testing.assert_array_equal(r.array, ref(DATA, axis=d))
        np.testing.assert_array_equal(getattr(x(), name)(sel).array, r.array)
    flat = fn(x())
    assert flat.axes == () and int(flat.array) == ref(DATA)
    with pytest.raises(errors.AxisSelectorError):
        fn(x(), ("a", "b"))


def test_errors():
    with pytest.raises(errors.AxisNotFoundError, match=r"\('a', 'b', 'c'\)"):
        distmap.sum(x(), "z")
    with pytest.raises(errors.AxisNotFoundError):
        distmap.mean(x(), ("a", "z"))
    with pytest.raises(errors.AxisSizeError):
        distmap.sum(x(), Axis("a", 7))
    with pytest.raises(errors.AxisSizeError):
        distmap.sum(x(), [Axis("a", 7)])
    with pytest.raises(errors.DuplicateAxisError):
        distmap.sum(x(), ("a", "a"))
    with pytest.raises(errors.AxisSelectorError):
        distmap.sum(x(), 0)
    with pytest.raises(TypeError, match=r"sum: 'a' names an axis, but the array is unnamed"):
        distmap.sum(DATA, "a")
    with pytest.raises(errors.AxisNotFoundError):
        distmap.argmax(x(), "z")


def test_under_jit_and_grad():
    f = jax.jit(lambda y: distmap.logsumexp(y, "c").sum().array)
    g = jax.grad(lambda arr: f(distmap.named(arr, NAMES)))(jnp.asarray(DATA))
    ref = np.exp(DATA) / np.exp(DATA).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(g, ref, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(NAMES), unique=True), st.sampled_from(["sum", "max", "mean"]))
def test_any_selection_matches_numpy(sel, name):
    r = getattr(distmap, name)(x(), sel)
    np.testing.assert_allclose(r.array, getattr(np, name)(DATA, axis=dims(sel)), rtol=1e-5, atol=1e-6)


def test_unnamed_arrays_reduce_as_jax_numpy_does():
    raw = jnp.asarray(DATA)
    for fn, ref in [(distmap.sum, jnp.sum), (distmap.max, jnp.max), (distmap.mean, jnp.mean), (distmap.std, jnp.std)]:
        np.testing.assert_allclose(fn(raw), ref(raw), rtol=1e-6)
        np.testing.assert_allclose(fn(raw, 1), ref(raw, axis=1), rtol=1e-6)
        np.testing.assert_allclose(fn(raw, (0, 2)), ref(raw, axis=(0, 2)), rtol=1e-6)
    assert bool(distmap.all(raw == raw)) and not bool(distmap.any(raw != raw))
    assert not isinstance(distmap.sum(raw), distmap.NamedArray)
    np.testing.assert_allclose(distmap.sum(raw, where=raw > 0), jnp.sum(raw, where=raw > 0), rtol=1e-6)
    with pytest.raises(errors.ArgumentTypeError, match=r"a NamedArray mask cannot line up with an unnamed array"):
        distmap.sum(raw, where=distmap.ones({"a": 2, "b": 3, "c": 4}, dtype=bool))
