"""Constructors and shape operations, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import Axis, errors

RNG = np.random.default_rng(0)


def data(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def named(a, names):
    return distmap.named(a, names)


# ---------------------------------------------------------------- constructors
class TestConstructors:
    def test_zeros_ones_full(self):
        z = distmap.zeros({"a": 2, "b": 3})
        assert z.shape == {"a": 2, "b": 3}
        np.testing.assert_array_equal(z.array, np.zeros((2, 3)))
        np.testing.assert_array_equal(distmap.ones([Axis("a", 2)], dtype=jnp.int32).array, np.ones(2, np.int32))
        np.testing.assert_array_equal(distmap.full(Axis("a", 3), 7.5).array, np.full(3, 7.5))
        assert distmap.zeros({}).shape == {}

    def test_constructor_errors(self):
        with pytest.raises(errors.AxisSelectorError, match="needs a size"):
            distmap.zeros("a")
        with pytest.raises(errors.DuplicateAxisError):
            distmap.ones([Axis("a", 2), Axis("a", 2)])
        with pytest.raises(errors.AxisSizeError):
            distmap.full({"a": -1}, 0)

    def test_arange(self):
        np.testing.assert_array_equal(distmap.arange(Axis("a", 4), start=2, step=3).array, np.arange(2, 14, 3))
        assert distmap.arange(Axis("a", 3), dtype=jnp.float32).dtype == jnp.float32

    def test_like(self):
        x = named(data(2, 3), ("a", "b"))
        for fn, ref in ((distmap.zeros_like, np.zeros), (distmap.ones_like, np.ones)):
            y = fn(x)
            assert y.axes == x.axes and y.dtype == x.dtype
            np.testing.assert_array_equal(y.array, ref((2, 3)))
            assert fn(x, dtype=jnp.int32).dtype == jnp.int32
        f = distmap.full_like(x, 2.5)
        assert f.axes == x.axes
        np.testing.assert_array_equal(f.array, np.full((2, 3), 2.5))

    def test_full_like_named_fill(self):
        x = distmap.zeros({"a": 2, "b": 3})
        f = distmap.full_like(x, named(np.array([1.0, 2.0, 3.0], np.float32), "b"))
        np.testing.assert_array_equal(f.array, np.broadcast_to([1.0, 2.0, 3.0], (2, 3)))
        with pytest.raises(errors.AxisNotFoundError):
            distmap.full_like(x, distmap.zeros({"z": 2}))
        with pytest.raises(errors.ShapeMismatchError):
            distmap.full_like(x, np.zeros(3))

    def test_like_needs_named(self):
        with pytest.raises(TypeError, match="NamedArray"):
            distmap.zeros_like(np.zeros(2))


# ----------------------------------------------------------- stack / concatenate
class TestStack:
    def test_stack(self):
        a, b = data(2, 3), data(2, 3)
        y = distmap.stack("s", [named(a, ("x", "y")), named(b, ("x", "y"))])
        assert y.axis_names == ("s", "x", "y")
        np.testing.assert_array_equal(y.array, np.stack([a, b]))

    def test_stack_matches_by_name(self):
        a, b = data(2, 3), data(3, 2)
        y = distmap.stack(Axis("s", 2), [named(a, ("x", "y")), named(b, ("y", "x"))])
        np.testing.assert_array_equal(y.array, np.stack([a, b.T]))

    def test_stack_errors(self):
        x = distmap.zeros({"a": 2})
        with pytest.raises(errors.AxisSizeError, match="3 arrays"):
            distmap.stack(Axis("s", 2), [x, x, x])
        with pytest.raises(errors.DuplicateAxisError):
            distmap.stack("a", [x, x])
        with pytest.raises(errors.ShapeMismatchError):
            distmap.stack("s", [x, distmap.zeros({"b": 2})])
        with pytest.raises(errors.AxisSizeError, match=r"size 2 in arrays\[0\] but size 3 in arrays\[1\]"):
            distmap.stack("s", [x, distmap.zeros({"a": 3})])
        with pytest.raises(errors.ShapeMismatchError, match="at least one"):
            distmap.stack("s", [])
        with pytest.raises(TypeError):
            distmap.stack("s", x)
        with pytest.raises(TypeError, match=r"arrays\[1\]"):
            distmap.stack("s", [x, np.zeros(2)])
        with pytest.raises(errors.AxisSelectorError):
            distmap.stack(3, [x])

    def test_unstack_roundtrip(self):
        a = data(2, 3, 4)
        x = named(a, ("a", "b", "c"))
        parts = distmap.unstack(x, "b")
        assert len(parts) == 3 and all(p.axis_names == ("a", "c") for p in parts)
        for i, p in enumerate(parts):
            np.testing.assert_array_equal(p.array, a[:, i])
        back = distmap.stack("b", parts).rearrange(("a", "b", "c"))
        np.testing.assert_array_equal(back.array, a)
        with pytest.raises(errors.AxisNotFoundError):
            distmap.unstack(x, "z")
        with pytest.raises(errors.AxisSelectorError):
            distmap.unstack(x, ("a", "b"))


class TestConcatenate:
    def test_concatenate(self):
        a, b = data(2, 3), data(2, 5)
        y = distmap.concatenate("y", [named(a, ("x", "y")), named(b, ("x", "y"))])
        assert y.shape == {"x": 2, "y": 8}
        np.testing.assert_array_equal(y.array, np.concatenate([a, b], axis=1))

    def test_other_axes_matched_by_name(self):
        a, b, c = data(2, 3), data(4, 2), data(2, 1)
        y = distmap.concatenate(
            Axis("y", 8), [named(a, ("x", "y")), named(b, ("y", "x")), named(c, ("x", "y"))]
        )
        np.testing.assert_array_equal(y.array, np.concatenate([a, b.T, c], axis=1))

    def test_errors(self):
        a = distmap.zeros({"x": 2, "y": 3})
        with pytest.raises(errors.AxisNotFoundError, match=r"arrays\[1\] has no axis 'y'"):
            distmap.concatenate("y", [a, distmap.zeros({"x": 2})])
        with pytest.raises(errors.AxisSizeError, match="'x'"):
            distmap.concatenate("y", [a, distmap.zeros({"x": 3, "y": 3})])
        with pytest.raises(errors.ShapeMismatchError):
            distmap.concatenate("y", [a, distmap.zeros({"z": 2, "y": 3})])
        with pytest.raises(errors.AxisSizeError, match="add up to 6"):
            distmap.concatenate(Axis("y", 5), [a, a])
        with pytest.raises(errors.ShapeMismatchError):
            distmap.concatenate("y", [])

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(0, 4), min_size=1, max_size=4), st.booleans())
    def test_matches_numpy(self, sizes, transpose_odd):
        parts = [data(2, n) for n in sizes]
        arrays = [
            named(p.T.copy(), ("y", "x")) if transpose_odd and i % 2 else named(p, ("x", "y"))
            for i, p in enumerate(parts)
        ]
        y = distmap.concatenate("y", arrays)
        np.testing.assert_array_equal(y.array, np.concatenate(parts, axis=1))


class TestSplit:
    def test_split(self):
        a = data(2, 7)
        x = named(a, ("b", "s"))
        p, q, r = distmap.split(x, "s", [Axis("s", 2), Axis("t", 4), Axis("s", 1)])
        assert p.shape == {"b": 2, "s": 2} and q.shape == {"b": 2, "t": 4} and r.shape == {"b": 2, "s": 1}
        for piece, ref in zip((p, q, r), np.split(a, [2, 6], axis=1)):
            np.testing.assert_array_equal(piece.array, ref)

    def test_errors(self):
        x = distmap.zeros({"b": 2, "s": 7})
        with pytest.raises(errors.AxisSizeError, match="add up to 6.*size 7"):
            distmap.split(x, "s", [Axis("s", 3), Axis("s", 3)])
        with pytest.raises(errors.AxisSelectorError):
            distmap.split(x, "s", ["s", "t"])
        with pytest.raises(errors.AxisSelectorError):
            distmap.split(x, "s", {"s": 7})
        with pytest.raises(errors.DuplicateAxisError):
            distmap.split(x, "s", [Axis("b", 7)])
        with pytest.raises(errors.AxisNotFoundError):
            distmap.split(x, "q", [Axis("q", 7)])

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(0, 3), min_size=1, max_size=4))
    def test_matches_numpy(self, sizes):
        a = data(sum(sizes), 2)
        pieces = distmap.split(named(a, ("s", "b")), "s", [Axis(f"p{i}", n) for i, n in enumerate(sizes)])
        for piece, ref in zip(pieces, np.split(a, np.cumsum(sizes)[:-1], axis=0)):
            np.testing.assert_array_equal(piece.array, ref)


# ----------------------------------------------------------------------- take
class TestTake:
    a = data(2, 5, 3)

    def x(self):
        return named(self.a, ("b", "v", "f"))

    def test_int(self):
        y = distmap.take(self.x(), "v", 3)
        assert y.axis_names == ("b", "f")
        np.testing.assert_array_equal(y.array, self.a[:, 3])
        np.testing.assert_array_equal(distmap.take(self.x(), "v", -1).array, self.a[:, -1])
        np.testing.assert_array_equal(distmap.take(self.x(), "v", np.int32(2)).array, self.a[:, 2])

    def test_zero_d_traced(self):
        f = jax.jit(lambda x, i: distmap.take(x, "v", i))
        np.testing.assert_array_equal(f(self.x(), jnp.asarray(4)).array, self.a[:, 4])

    def test_named_index_replaces_axis_in_place(self):
        idx = np.array([[0, 4], [2, -1], [1, 1]])
        y = distmap.take(self.x(), "v", named(idx, ("i", "j")))
        assert y.shape == {"b": 2, "i": 3, "j": 2, "f": 3}
        np.testing.assert_array_equal(y.array, np.take(self.a, idx, axis=1))

    def test_shared_axes_are_elementwise(self):
        labels = np.array([4, 1])  # one per batch element
        y = distmap.take(self.x(), "v", named(labels, "b"))
        assert y.shape == {"b": 2, "f": 3}
        np.testing.assert_array_equal(y.array, self.a[np.arange(2), labels])

    def test_shared_and_new_axes(self):
        idx = RNG.integers(0, 5, size=(3, 4, 2))  # (f, k, b): shares f and b with x
        y = distmap.take(self.x(), "v", named(idx, ("f", "k", "b")))
        assert y.axis_names == ("b", "k", "f")
        ref = np.empty((2, 4, 3), np.float32)
        for b in range(2):
            for k in range(4):
                for f in range(3):
                    ref[b, k, f] = self.a[b, idx[f, k, b], f]
        np.testing.assert_array_equal(y.array, ref)

    def test_out_of_range_index_array_is_clamped(self):
        y = distmap.take(self.x(), "v", named(np.array([7, -9]), "i"))
        np.testing.assert_array_equal(y.array, self.a[:, [4, 0]])
        y = distmap.take(self.x(), "v", named(np.array([7, -9]), "b"))
        np.testing.assert_array_equal(y.array, self.a[[0, 1], [4, 0]])

    def test_index_axis_may_reuse_name(self):
        y = distmap.take(self.x(), "v", named(np.array([0, 1]), Axis("v", 2)))
        assert y.shape == {"b": 2, "v": 2, "f": 3}

    def test_errors(self):
        with pytest.raises(IndexError, match="'v' of size 5"):
            distmap.take(self.x(), "v", 5)
        with pytest.raises(errors.AxisNotFoundError):
            distmap.take(self.x(), "z", 0)
        with pytest.raises(errors.AxisSelectorError, match="integers"):
            distmap.take(self.x(), "v", named(np.array([0.5]), "i"))
        with pytest.raises(errors.ShapeMismatchError, match="distmap.named"):
            distmap.take(self.x(), "v", np.array([0, 1]))
        with pytest.raises(errors.AxisSelectorError):
            distmap.take(self.x(), "v", 1.5)
        with pytest.raises(errors.AxisSelectorError):
            distmap.take(self.x(), "v", True)
        with pytest.raises(errors.AxisSizeError, match="'b'"):
            distmap.take(self.x(), "v", named(np.array([0, 1, 2]), "b"))


# --------------------------------------------------------------- broadcasting
class TestBroadcast:
    def test_broadcast_axis_adds_at_front(self):
        a = data(3)
        y = distmap.broadcast_axis(named(a, "f"), {"b": 2, "c": 4})
        assert y.axis_names == ("b", "c", "f")
        np.testing.assert_array_equal(y.array, np.broadcast_to(a, (2, 4, 3)))

    def test_broadcast_axis_present_is_noop(self):
        x = distmap.zeros({"f": 3})
        assert distmap.broadcast_axis(x, Axis("f", 3)) is x
        y = distmap.broadcast_axis(x, [Axis("f", 3), Axis("b", 2)])
        assert y.axis_names == ("b", "f")
        with pytest.raises(errors.AxisSizeError, match="size 3 in x but size 4"):
            distmap.broadcast_axis(x, Axis("f", 4))
        with pytest.raises(errors.AxisSelectorError, match="needs a size"):
            distmap.broadcast_axis(x, "b")

    def test_broadcast_axis_scalar(self):
        y = distmap.broadcast_axis(2.0, {"b": 2})
        np.testing.assert_array_equal(y.array, [2.0, 2.0])

    def test_broadcast_to_exact_order(self):
        a = data(3, 2)
        y = distmap.broadcast_to(named(a, ("f", "b")), ("b", Axis("n", 4), "f"))
        assert y.shape == {"b": 2, "n": 4, "f": 3}
        np.testing.assert_array_equal(y.array, np.broadcast_to(a.T[:, None, :], (2, 4, 3)))

    def test_broadcast_to_errors(self):
        x = distmap.zeros({"f": 3, "b": 2})
        with pytest.raises(errors.AxisNotFoundError, match=r"\('b',\)"):
            distmap.broadcast_to(x, ("f",))
        with pytest.raises(errors.AxisSizeError):
            distmap.broadcast_to(x, (Axis("f", 4), "b"))
        with pytest.raises(errors.AxisSelectorError, match="needs a size"):
            distmap.broadcast_to(x, ("f", "b", "n"))
        with pytest.raises(errors.ShapeMismatchError):
            distmap.broadcast_to(np.zeros(3), {"f": 3})

    def test_broadcast_to_scalar(self):
        np.testing.assert_array_equal(distmap.broadcast_to(1, {"a": 2}).array, [1, 1])


# --------------------------------------------------------------- (un)flatten
class TestFlatten:
    a = data(2, 3, 4, 5)

    def x(self):
        return named(self.a, ("a", "b", "c", "d"))

    @pytest.mark.parametrize(
        "axes, expected_names, perm",
        [
            (("b", "c"), ("a", "m", "d"), (0, 1, 2, 3)),
            (("c", "b"), ("a", "m", "d"), (0, 2, 1, 3)),
            (("d", "a"), ("b", "c", "m"), (1, 2, 3, 0)),
            (("a", "d"), ("m", "b", "c"), (0, 3, 1, 2)),
            (("c",), ("a", "b", "m", "d"), (0, 1, 2, 3)),
            (("a", "b", "c", "d"), ("m",), (0, 1, 2, 3)),
            (("b", "d", "a"), ("m", "c"), (1, 3, 0, 2)),
        ],
    )
    def test_flatten(self, axes, expected_names, perm):
        y = distmap.flatten_axes(self.x(), axes, "m")
        assert y.axis_names == expected_names
        moved = np.transpose(self.a, perm)
        assert y.axis_size("m") == int(np.prod([self.x().axis_size(n) for n in axes]))
        np.testing.assert_array_equal(y.array, moved.reshape(y.array.shape))

    def test_flatten_errors(self):
        with pytest.raises(errors.AxisSizeError, match="6"):
            distmap.flatten_axes(self.x(), ("a", "b"), Axis("m", 5))
        with pytest.raises(errors.DuplicateAxisError):
            distmap.flatten_axes(self.x(), ("a", "b"), "c")
        with pytest.raises(errors.AxisNotFoundError):
            distmap.flatten_axes(self.x(), ("a", "z"), "m")
        with pytest.raises(errors.AxisSelectorError):
            distmap.flatten_axes(self.x(), (), "m")
        assert distmap.flatten_axes(self.x(), ("a", "b"), Axis("a", 6)).shape == {"a": 6, "c": 4, "d": 5}

    def test_unflatten(self):
        y = distmap.unflatten_axis(self.x(), "c", {"p": 2, "q": 2})
        assert y.shape == {"a": 2, "b": 3, "p": 2, "q": 2, "d": 5}
        np.testing.assert_array_equal(y.array, self.a.reshape(2, 3, 2, 2, 5))
        assert distmap.unflatten_axis(self.x(), "c", [Axis("c", 4)]).axes == self.x().axes

    def test_roundtrip(self):
        x = self.x()
        flat = distmap.flatten_axes(x, ("b", "c"), "bc")
        back = distmap.unflatten_axis(flat, "bc", (Axis("b", 3), Axis("c", 4)))
        assert back.axes == x.axes
        np.testing.assert_array_equal(back.array, self.a)

    def test_unflatten_errors(self):
        with pytest.raises(errors.AxisSizeError, match="6 elements.*size 4"):
            distmap.unflatten_axis(self.x(), "c", {"p": 2, "q": 3})
        with pytest.raises(errors.DuplicateAxisError):
            distmap.unflatten_axis(self.x(), "c", {"a": 2, "q": 2})
        with pytest.raises(errors.AxisSelectorError):
            distmap.unflatten_axis(self.x(), "c", ("p", "q"))
        with pytest.raises(errors.AxisNotFoundError):
            distmap.unflatten_axis(self.x(), "z", {"p": 4})


# ------------------------------------------------------------- rearrange etc.
def test_rearrange_and_rename_functions():
    x = named(data(2, 3), ("a", "b"))
    np.testing.assert_array_equal(distmap.rearrange(x, ("b", "a")).array, x.array.T)
    assert distmap.rename(x, {"a": "z"}).axis_names == ("z", "b")
    with pytest.raises(TypeError):
        distmap.rearrange(np.zeros(2), ("a",))


class TestWhere:
    def test_where_broadcasts(self):
        c, a, b = data(3) > 0, data(2, 3), data(3, 4)
        r = distmap.where(named(c, "y"), named(a, ("x", "y")), named(b, ("y", "z")))
        assert r.axis_names == ("y", "x", "z")
        ref = np.where(c[None, :, None], a[:, :, None], b[None, :, :])  # x, y, z
        np.testing.assert_array_equal(r.array, np.transpose(ref, (1, 0, 2)))

    def test_scalars(self):
        a = data(4)
        x = named(a, "x")
        np.testing.assert_array_equal(distmap.where(x > 0, x, 0.0).array, np.where(a > 0, a, 0))
        np.testing.assert_array_equal(distmap.where(x > 0, 1, -1).array, np.where(a > 0, 1, -1))
        np.testing.assert_array_equal(distmap.where(True, x, 0.0).array, a)

    def test_errors(self):
        x = distmap.zeros({"x": 3})
        with pytest.raises(errors.AxisSizeError, match="condition.*x"):
            distmap.where(distmap.zeros({"x": 2}, bool), x, 0)
        with pytest.raises(errors.ShapeMismatchError, match="y"):
            distmap.where(x > 0, x, np.zeros(3))
        with pytest.raises(TypeError):
            distmap.where(x > 0, x, None)
