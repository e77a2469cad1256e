"""NamedArray: construction, attributes, axis lookup, restructuring, indexing, operators."""

import copy
import operator
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import Axis, NamedArray, errors


def arr(*shape, dtype=np.float32):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


@pytest.fixture
def x():
    return distmap.named(arr(2, 3, 4), ("a", "b", "c"))


# ----------------------------------------------------------------- construction
class TestConstruction:
    def test_named_from_names(self):
        y = distmap.named(jnp.zeros((2, 3)), ("batch", "feature"))
        assert y.axes == (Axis("batch", 2), Axis("feature", 3))
        assert isinstance(y.array, jax.Array)

    def test_named_single_name_and_mapping(self):
        assert distmap.named(jnp.zeros(3), "batch").shape == {"batch": 3}
        assert distmap.named(jnp.zeros((2, 3)), {"a": 2, "b": None}).shape == {"a": 2, "b": 3}

    def test_named_converts_numpy_and_lists(self):
        assert isinstance(distmap.named(np.zeros(2), "a").array, jax.Array)
        assert isinstance(distmap.named([1, 2], "a").array, jax.Array)
        assert distmap.named(3.0, ()).shape == {}

    def test_named_takes_numpy_arrays_of_jax_number_types_and_refuses_raw_bytes(self):
        import ml_dtypes  # installed with jax: numpy's home of bfloat16 and the float8 types

        for dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn):
            host = np.arange(3, dtype=np.float32).astype(dtype)
            x = distmap.named(host, "b")
            assert x.dtype == jnp.dtype(dtype) and x.array.astype(jnp.float32).tolist() == [0.0, 1.0, 2.0]
        with pytest.raises(errors.ArgumentTypeError, match="raw bytes"):
            distmap.named(np.zeros(3, dtype="V4"), "b")

    def test_named_wrong_rank(self):
        with pytest.raises(errors.ShapeMismatchError, match="2 dimension"):
            distmap.named(jnp.zeros((2, 3)), ("a",))

    def test_named_wrong_size(self):
        with pytest.raises(errors.ShapeMismatchError, match="size 5"):
            distmap.named(jnp.zeros((2, 3)), (Axis("a", 2), Axis("b", 5)))

    def test_named_duplicate(self):
        with pytest.raises(errors.DuplicateAxisError):
            distmap.named(jnp.zeros((2, 2)), ("a", "a"))

    def test_named_bad_selector(self):
        with pytest.raises(errors.AxisSelectorError):
            distmap.named(jnp.zeros(2), (3,))

    def test_named_of_named(self, x):
        with pytest.raises(errors.AxisSelectorError, match="already has axes"):
            distmap.named(x, ("a", "b", "c"))

    def test_constructor(self):
        y = NamedArray(jnp.zeros((2, 3)), (Axis("a", 2), Axis("b", 3)))
        assert y.axis_names == ("a", "b")
        assert isinstance(NamedArray(np.zeros(2), [Axis("a", 2)]).array, jax.Array)

    def test_constructor_errors(self):
        with pytest.raises(errors.AxisSelectorError, match="distmap.named"):
            NamedArray(jnp.zeros(2), ("a",))
        with pytest.raises(errors.ShapeMismatchError, match=r"\(2,\)"):
            NamedArray(jnp.zeros(2), (Axis("a", 3),))
        with pytest.raises(errors.DuplicateAxisError):
            NamedArray(jnp.zeros((2, 2)), (Axis("a", 2), Axis("a", 2)))


class TestAttributes:
    def test_attributes(self, x):
        assert x.axis_names == ("a", "b", "c")
        assert x.shape == {"a": 2, "b": 3, "c": 4}
        assert list(x.shape) == ["a", "b", "c"]
        assert x.dtype == jnp.float32
        assert x.ndim == 3 and x.size == 24

    def test_repr(self, x):
        assert repr(x).startswith("NamedArray({'a': 2, 'b': 3, 'c': 4}, Array(")

    def test_len_and_iter_refused(self, x):
        with pytest.raises(TypeError, match="axis_size"):
            len(x)
        with pytest.raises(TypeError, match="unstack"):
            iter(x)

    def test_bool(self):
        assert bool(distmap.named(jnp.array(True), ()))
        with pytest.raises((TypeError, ValueError)):
            bool(distmap.zeros({"a": 2}))

    def test_unhashable(self, x):
        with pytest.raises(TypeError):
            hash(x)

    def test_immutable(self, x):
        with pytest.raises(AttributeError, match="immutable"):
            x.array = jnp.zeros((2, 3, 4))
        with pytest.raises(AttributeError, match="immutable"):
            x.axes = ()
        with pytest.raises(AttributeError, match="immutable"):
            x.new_field = 1
        with pytest.raises(AttributeError, match="immutable"):
            del x.array

    def test_copy_and_pickle(self, x):
        for y in (copy.copy(x), copy.deepcopy(x), pickle.loads(pickle.dumps(x))):
            assert isinstance(y, NamedArray) and y.axes == x.axes
            np.testing.assert_array_equal(y.array, x.array)
            y.sum()  # fully usable


class TestAxisLookup:
    def test_has_axis(self, x):
        assert x.has_axis("a") and x.has_axis(Axis("b", 3))
        assert x.has_axis(("a", "c")) and x.has_axis({"a": 2, "c": None})
        assert not x.has_axis("z") and not x.has_axis(Axis("b", 4))
        assert not x.has_axis(("a", "z"))

    def test_resolve_axis(self, x):
        assert x.resolve_axis("b") == Axis("b", 3)
        assert x.resolve_axis(("c", "a")) == (Axis("c", 4), Axis("a", 2))
        with pytest.raises(errors.AxisNotFoundError, match=r"'z' is not among this array's axes \('a', 'b', 'c'\)"):
            x.resolve_axis("z")
        with pytest.raises(errors.AxisSizeError, match="size 3"):
            x.resolve_axis(Axis("b", 7))

    def test_axis_size(self, x):
        assert x.axis_size("c") == 4
        assert x.axis_size(("a", "c")) == 8
        with pytest.raises(errors.AxisNotFoundError):
            x.axis_size("z")

    def test_axis_indices(self, x):
        assert x.axis_indices("c") == 2
        assert x.axis_indices(("c", "a")) == (2, 0)
        with pytest.raises(errors.AxisSizeError):
            x.axis_indices([Axis("a", 5)])
        with pytest.raises(errors.AxisNotFoundError):
            x.axis_indices(["a", "q"])


# ---------------------------------------------------------------- restructuring
class TestRearrange:
    def test_full_order(self, x):
        y = x.rearrange(("c", "a", "b"))
        assert y.axis_names == ("c", "a", "b")
        np.testing.assert_array_equal(y.array, np.transpose(arr(2, 3, 4), (2, 0, 1)))

    def test_identity_returns_same(self, x):
        assert x.rearrange(("a", "b", "c")) is x

    def test_axis_objects(self, x):
        assert x.rearrange((Axis("b", 3), "a", "c")).axis_names == ("b", "a", "c")

    @pytest.mark.parametrize(
        "order, expected",
        [
            ((..., "a"), ("b", "c", "a")),
            (("c", ...), ("c", "a", "b")),
            (("c", ..., "a"), ("c", "b", "a")),
            ((...,), ("a", "b", "c")),
            (("b", "a", "c", ...), ("b", "a", "c")),
        ],
    )
    def test_ellipsis(self, x, order, expected):
        y = x.rearrange(order)
        assert y.axis_names == expected
        perm = [x.axis_names.index(n) for n in expected]
        np.testing.assert_array_equal(y.array, np.transpose(arr(2, 3, 4), perm))

    def test_errors(self, x):
        with pytest.raises(errors.AxisSelectorError, match="leaves out"):
            x.rearrange(("a", "b"))
        with pytest.raises(errors.AxisNotFoundError):
            x.rearrange(("a", "b", "z"))
        with pytest.raises(errors.DuplicateAxisError):
            x.rearrange(("a", "a", "b", "c"))
        with pytest.raises(errors.AxisSelectorError, match="at most one"):
            x.rearrange((..., "a", ...))
        with pytest.raises(errors.AxisSelectorError):
            x.rearrange(("a", 1, "c"))
        with pytest.raises(errors.AxisSelectorError):
            x.rearrange(3)
        with pytest.raises(errors.AxisSizeError):
            x.rearrange((Axis("a", 9), ...))

    @settings(max_examples=30, deadline=None)
    @given(st.permutations([0, 1, 2]))
    def test_matches_transpose(self, perm):
        y = distmap.named(arr(2, 3, 4), ("a", "b", "c"))
        z = y.rearrange(tuple("abc"[i] for i in perm))
        np.testing.assert_array_equal(z.array, np.transpose(arr(2, 3, 4), perm))


class TestRename:
    def test_rename(self, x):
        y = x.rename({"a": "x", Axis("c", 4): Axis("z", 4)})
        assert y.shape == {"x": 2, "b": 3, "z": 4}
        np.testing.assert_array_equal(y.array, x.array)

    def test_swap(self, x):
        assert x.rename({"a": "b", "b": "a"}).axis_names == ("b", "a", "c")

    def test_errors(self, x):
        with pytest.raises(errors.DuplicateAxisError):
            x.rename({"a": "b"})
        with pytest.raises(errors.AxisNotFoundError):
            x.rename({"z": "y"})
        with pytest.raises(errors.AxisSizeError):
            x.rename({"a": Axis("y", 5)})
        with pytest.raises(errors.AxisSelectorError):
            x.rename(["a", "y"])
        with pytest.raises(errors.AxisSelectorError):
            x.rename({"a": 3})


class TestConversions:
    def test_astype(self, x):
        y = x.astype(jnp.int32)
        assert y.dtype == jnp.int32 and y.axes == x.axes

    def test_scalar_and_item(self):
        y = distmap.named(jnp.array([[5.0]]), ("a", "b"))
        assert y.scalar().shape == () and y.item() == 5.0
        assert distmap.named(jnp.array(2), ()).item() == 2

    def test_scalar_needs_size_one(self, x):
        with pytest.raises(errors.ShapeMismatchError, match="size 24"):
            x.scalar()


# --------------------------------------------------------------------- indexing
class TestIndexing:
    def test_int_drops_axis(self, x):
        y = x["b", 1]
        assert y.axis_names == ("a", "c")
        np.testing.assert_array_equal(y.array, arr(2, 3, 4)[:, 1, :])

    def test_negative(self, x):
        np.testing.assert_array_equal(x["c", -1].array, arr(2, 3, 4)[:, :, -1])
        np.testing.assert_array_equal(x["a", -2].array, arr(2, 3, 4)[0])

    def test_numpy_int(self, x):
        np.testing.assert_array_equal(x["b", np.int64(2)].array, arr(2, 3, 4)[:, 2])

    @pytest.mark.parametrize("s", [slice(1, 3), slice(None, None, 2), slice(-2, None), slice(None, None, -1),
                                   slice(5, 9), slice(3, 1)])
    def test_slice(self, x, s):
        y = x["c", s]
        ref = arr(2, 3, 4)[:, :, s]
        assert y.shape == {"a": 2, "b": 3, "c": ref.shape[2]}
        np.testing.assert_array_equal(y.array, ref)

    def test_several_and_mapping(self, x):
        ref = arr(2, 3, 4)[1, :, 1:3]
        np.testing.assert_array_equal(x["a", 1, "c", 1:3].array, ref)
        np.testing.assert_array_equal(x[{"c": slice(1, 3), "a": 1}].array, ref)
        assert x["a", 1, "c", 1:3].axis_names == ("b", "c")
        assert x[Axis("a", 2), 0].axis_names == ("b", "c")

    def test_all_ints_gives_scalar(self, x):
        y = x["a", 1, "b", 2, "c", 3]
        assert y.axes == () and y.item() == arr(2, 3, 4)[1, 2, 3]

    def test_dynamic_index_under_jit(self, x):
        f = jax.jit(lambda y, i: y["b", i])
        for i in range(3):
            r = f(x, jnp.asarray(i))
            assert r.axis_names == ("a", "c")
            np.testing.assert_array_equal(r.array, arr(2, 3, 4)[:, i])
        np.testing.assert_array_equal(f(x, jnp.asarray(-1)).array, arr(2, 3, 4)[:, -1])

    def test_traced_out_of_range_is_clamped_as_documented(self, x):
        # A traced index has no value to check: JAX's rule applies (negatives count from the end,
        # the rest clamp), as __getitem__'s docstring says; an eager int raises instead.
        f = jax.jit(lambda y, i: y["b", i])
        np.testing.assert_array_equal(f(x, jnp.asarray(7)).array, arr(2, 3, 4)[:, 2])
        np.testing.assert_array_equal(f(x, jnp.asarray(-9)).array, arr(2, 3, 4)[:, 0])
        with pytest.raises(errors.AxisIndexError, match="axis 'b' of size 3"):
            x["b", 7]

    def test_out_of_range(self, x):
        with pytest.raises(IndexError, match="axis 'b' of size 3"):
            x["b", 3]
        with pytest.raises(IndexError):
            x["b", -4]

    def test_unknown_axis(self, x):
        with pytest.raises(errors.AxisNotFoundError, match=r"\('a', 'b', 'c'\)"):
            x["z", 0]

    @pytest.mark.parametrize("key", [0, (0,), ("a",), ("a", 0, "b"), slice(None), ()])
    def test_positional_refused(self, x, key):
        with pytest.raises(errors.AxisSelectorError, match="by name"):
            x[key]

    def test_positional_pair_refused(self, x):
        with pytest.raises(errors.AxisSelectorError, match="axis name"):
            x[0, 1]

    @pytest.mark.parametrize("bad", [1.5, True, "x", [0, 1], None])
    def test_bad_index(self, x, bad):
        with pytest.raises(errors.AxisSelectorError):
            x["a", bad]

    def test_array_index_refused(self, x):
        with pytest.raises(errors.AxisSelectorError, match="take"):
            x["a", jnp.array([0, 1])]
        with pytest.raises(errors.AxisSelectorError):
            x["a", jnp.array(0.0)]

    def test_same_axis_twice(self, x):
        with pytest.raises(errors.DuplicateAxisError):
            x["a", 0, "a", 1]

    def test_bad_slices(self, x):
        with pytest.raises(errors.AxisSelectorError, match="step"):
            x["a", ::0]
        with pytest.raises(errors.AxisSelectorError):
            x["a", 0.5:2]

    @settings(max_examples=40, deadline=None)
    @given(st.integers(-6, 6), st.integers(-6, 6), st.sampled_from([None, 1, 2, -1, -2]))
    def test_slices_match_numpy(self, start, stop, step):
        y = distmap.named(arr(5, 2), ("a", "b"))
        s = slice(start, stop, step)
        np.testing.assert_array_equal(y["a", s].array, arr(5, 2)[s])
        assert y["a", s].axis_size("a") == arr(5, 2)[s].shape[0]


# -------------------------------------------------------------------- operators
BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, operator.floordiv, operator.mod]
COMPARE = [operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne]


class TestNumpyInterop:
    def test_asarray_keeps_axis_order(self, x):
        out = np.asarray(x)
        assert isinstance(out, np.ndarray) and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, arr(2, 3, 4))
        np.testing.assert_array_equal(np.asarray(x.rearrange(("c", ...))), np.moveaxis(arr(2, 3, 4), 2, 0))
        assert np.asarray(x, dtype=np.int64).dtype == np.int64
        assert jnp.asarray(x).shape == (2, 3, 4)

    def test_asarray_refuses_no_copy_and_tracers(self, x):
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            with pytest.raises(ValueError, match="copy"):
                np.asarray(x, copy=False)
        with pytest.raises(jax.errors.TracerArrayConversionError):
            jax.jit(lambda y: np.asarray(y))(x)

    def test_ufuncs_act_by_name(self, x):
        y = np.exp(x)
        assert isinstance(y, NamedArray) and y.axes == x.axes
        np.testing.assert_allclose(y.array, np.exp(arr(2, 3, 4)), rtol=1e-6)
        z = np.float32(2.0) * x
        assert isinstance(z, NamedArray) and z.axes == x.axes
        m = np.maximum(x["a", 0], x)  # broadcast by name, the left operand's axes first
        assert m.axis_names == ("b", "c", "a")
        with pytest.raises(errors.ShapeMismatchError, match="shape"):
            np.zeros((2, 3, 4)) + x

    def test_other_numpy_functions_refused(self, x):
        for fn in (np.sum, np.mean, np.shape, lambda v: np.concatenate([v, v]), np.add.reduce):
            with pytest.raises(errors.ArgumentTypeError, match="axis names"):
                fn(x)


class TestOperators:
    @pytest.mark.parametrize("op", BINARY + COMPARE)
    def test_same_axes(self, op):
        a, b = arr(2, 3) + 1, arr(2, 3)[::-1] + 2
        r = op(distmap.named(a, ("x", "y")), distmap.named(b, ("x", "y")))
        assert r.axis_names == ("x", "y")
        np.testing.assert_allclose(r.array, op(a, b), rtol=1e-6)

    @pytest.mark.parametrize("op", BINARY + COMPARE)
    def test_broadcast_by_name(self, op):
        a, b = arr(2, 3) + 1, arr(4, 2) + 1
        r = op(distmap.named(a, ("x", "y")), distmap.named(b, ("z", "x")))
        assert r.axis_names == ("x", "y", "z")  # left's axes, then right's others
        ref = op(a[:, :, None], np.transpose(b)[:, None, :])
        np.testing.assert_allclose(r.array, ref, rtol=1e-6)

    def test_result_order_follows_left(self):
        a = distmap.zeros({"x": 2, "y": 3})
        b = distmap.zeros({"y": 3, "x": 2})
        assert (a + b).axis_names == ("x", "y")
        assert (b + a).axis_names == ("y", "x")
        c = distmap.zeros({"z": 4})
        assert (c * a).axis_names == ("z", "x", "y")

    def test_transposed_values(self):
        a = arr(2, 3)
        x, y = distmap.named(a, ("r", "c")), distmap.named(a.T.copy(), ("c", "r"))
        np.testing.assert_array_equal((x - y).array, np.zeros((2, 3)))

    @pytest.mark.parametrize("op", BINARY)
    def test_scalars_both_sides(self, op):
        a = arr(2, 3) + 1
        x = distmap.named(a, ("x", "y"))
        for s in (2, 2.5, np.float32(2), jnp.asarray(3.0), np.asarray(2.0)):
            np.testing.assert_allclose(op(x, s).array, op(a, np.asarray(s)), rtol=1e-6)
            r = op(s, x)
            assert isinstance(r, NamedArray) and r.axis_names == ("x", "y")
            np.testing.assert_allclose(r.array, op(np.asarray(s), a), rtol=1e-6)

    def test_shape_unit_named_array(self):
        s = distmap.named(jnp.asarray(3.0), ())
        x = distmap.named(arr(2), "a")
        assert (x * s).axis_names == ("a",) and (s * x).axis_names == ("a",)
        np.testing.assert_array_equal((s + x).array, arr(2) + 3)

    def test_unnamed_non_scalar_refused(self):
        x = distmap.zeros({"a": 3})
        for other in (jnp.zeros(3), np.zeros(3), np.zeros((1,))):
            with pytest.raises(errors.ShapeMismatchError, match="distmap.named"):
                x + other
            with pytest.raises(errors.ShapeMismatchError):
                other * x

    def test_size_mismatch(self):
        with pytest.raises(errors.AxisSizeError, match="size 2 .* 3"):
            distmap.zeros({"a": 2}) + distmap.zeros({"a": 3})

    def test_unsupported_type(self):
        with pytest.raises(TypeError):
            distmap.zeros({"a": 2}) + "s"

    def test_bitwise_and_unary(self):
        a = np.array([[1, 2, 3]], dtype=np.int32)
        x = distmap.named(a, ("p", "q"))
        np.testing.assert_array_equal((x & 2).array, a & 2)
        np.testing.assert_array_equal((x | 4).array, a | 4)
        np.testing.assert_array_equal((x ^ 1).array, a ^ 1)
        np.testing.assert_array_equal((x << 1).array, a << 1)
        np.testing.assert_array_equal((x >> 1).array, a >> 1)
        np.testing.assert_array_equal((-x).array, -a)
        np.testing.assert_array_equal((~x).array, ~a)
        np.testing.assert_array_equal(abs(-x).array, a)
        assert +x is x

    def test_comparisons_give_bool(self):
        x = distmap.named(arr(3), "a")
        r = x > 0
        assert r.dtype == jnp.bool_ and r.axis_names == ("a",)
        np.testing.assert_array_equal((x == 1).array, arr(3) == 1)
        np.testing.assert_array_equal((1 < x).array, 1 < arr(3))

    def test_under_jit(self):
        f = jax.jit(lambda a, b: a * b + 1.0)
        r = f(distmap.named(arr(2), "x"), distmap.named(arr(3), "y"))
        assert r.axis_names == ("x", "y")
        np.testing.assert_array_equal(r.array, np.outer(arr(2), arr(3)) + 1)

    @settings(max_examples=30, deadline=None)
    @given(st.permutations(["a", "b", "c"]), st.sampled_from([["a"], ["b", "c"], ["c", "a"], ["a", "b", "c"], []]))
    def test_broadcast_matches_numpy(self, left_order, right_names):
        sizes = {"a": 2, "b": 3, "c": 4}
        rng = np.random.default_rng(0)
        full = rng.normal(size=(2, 3, 4)).astype(np.float32)
        left = distmap.named(np.transpose(full, ["abc".index(n) for n in left_order]), tuple(left_order))
        rv = rng.normal(size=tuple(sizes[n] for n in right_names)).astype(np.float32)
        right = distmap.named(rv, tuple(right_names))
        out = left * right
        assert out.axis_names == tuple(left_order)
        # reference: the right operand transposed to abc order, size-1 where it lacks an axis
        present = [n for n in "abc" if n in right_names]
        ref_right = np.transpose(rv, [right_names.index(n) for n in present]) if right_names else rv
        ref_right = ref_right.reshape(tuple(sizes[n] if n in right_names else 1 for n in "abc"))
        ref = full * ref_right
        np.testing.assert_allclose(out.rearrange(("a", "b", "c")).array, ref, rtol=1e-6)


def test_an_axis_less_named_array_is_a_scalar_next_to_an_unnamed_array():
    acc = jnp.arange(4.0)
    s = distmap.named(jnp.arange(3.0), "feature").sum()  # no axes left
    for out, ref in [(acc + s, acc + 3.0), (s * acc, 3.0 * acc), (acc - s, acc - 3.0), (distmap.maximum(s, acc), jnp.maximum(3.0, acc))]:
        assert not isinstance(out, distmap.NamedArray)
        np.testing.assert_allclose(out, ref)
    # a NamedArray with axes still refuses positional broadcasting of an unnamed array
    with pytest.raises(errors.ShapeMismatchError, match=r"named axes never broadcast by position"):
        distmap.zeros({"batch": 4}) + acc
    with pytest.raises(errors.ShapeMismatchError, match=r"named axes never broadcast by position"):
        acc * distmap.zeros({"batch": 4})
    assert distmap.equal(distmap.named(jnp.array([1, 2]), "b"), distmap.named(jnp.array([2, 1]), "b").rearrange(("b",))).array.tolist() == [False, False]
    assert distmap.equal(distmap.named(jnp.array([[1, 2]]), ("a", "b")), distmap.named(jnp.array([1, 5]), "b")).array.tolist() == [[True, False]]
