"""dot and einsum over axis names, against numpy.einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import Axis, errors

RNG = np.random.default_rng(0)
SIZES = {"b": 2, "e": 3, "h": 4, "k": 5}


def data(names):
    return RNG.normal(size=tuple(SIZES[n] for n in names)).astype(np.float32)


def named(names, a=None):
    a = data(names) if a is None else a
    return distmap.named(a, tuple(names)), a


def close(x, ref):
    np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-4, atol=1e-4)


class TestDot:
    def test_matmul(self):
        (x, a), (w, b) = named("be"), named("eh")
        r = distmap.dot(x, w, axis="e")
        assert r.axis_names == ("b", "h")
        close(r.array, a @ b)

    def test_operand_order_irrelevant(self):
        (x, a), (w, b) = named("be"), named("he")
        r = distmap.dot(x, w, axis=Axis("e", 3))
        assert r.axis_names == ("b", "h")
        close(r.array, a @ b.T)
        close(distmap.dot(w, x, axis="e").array, (a @ b.T).T)

    def test_none_contracts_everything(self):
        (x, a), (y, b) = named("be"), named("eb")
        r = distmap.dot(x, y, axis=None)
        assert r.axes == ()
        close(r.array, np.sum(a * b.T))

    def test_empty_is_broadcast_product(self):
        (x, a), (y, b) = named("be"), named("eh")
        r = distmap.dot(x, y, axis=())
        assert r.axis_names == ("b", "e", "h")
        close(r.array, a[:, :, None] * b[None, :, :])

    def test_several_axes_and_arrays(self):
        (x, a), (y, b), (z, c) = named("bek"), named("keh"), named("h")
        r = distmap.dot(x, y, z, axis=("e", "k"))
        assert r.axis_names == ("b", "h")
        close(r.array, np.einsum("bek,keh,h->bh", a, b, c))
        r = distmap.dot(x, y, z, axis=["e", "h"])
        assert r.axis_names == ("b", "k")
        close(r.array, np.einsum("bek,keh,h->bk", a, b, c))

    def test_single_array_sums(self):
        x, a = named("be")
        close(distmap.dot(x, axis="e").array, a.sum(1))

    def test_axis_in_one_array_only_is_summed(self):
        (x, a), (y, b) = named("be"), named("h")
        close(distmap.dot(x, y, axis="b").array, np.einsum("be,h->eh", a, b))

    def test_errors(self):
        (x, _), (w, _) = named("be"), named("eh")
        with pytest.raises(errors.AxisNotFoundError, match=r"'z'.*\('b', 'e', 'h'\)"):
            distmap.dot(x, w, axis="z")
        with pytest.raises(errors.AxisSizeError, match=r"size 3 in arrays\[0\] but size 4 in arrays\[1\]"):
            distmap.dot(x, distmap.zeros({"e": 4}), axis="e")
        with pytest.raises(errors.AxisSizeError):
            distmap.dot(x, w, axis=Axis("e", 9))
        with pytest.raises(errors.AxisSelectorError):
            distmap.dot(x, w, axis=3)
        with pytest.raises(TypeError, match="keyword argument"):
            distmap.dot("e", x, w, axis="e")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            distmap.dot(x, np.zeros((3, 4)), axis="e")
        with pytest.raises(TypeError, match="axis"):
            distmap.dot(x, w)  # axis is required
        with pytest.raises(TypeError):
            distmap.dot(axis="e")

    def test_options_pass_through(self):
        (x, a), (w, b) = named("be"), named("eh")
        r = distmap.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), axis="e",
                        preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
        assert r.dtype == jnp.float32
        np.testing.assert_allclose(r.array, a @ b, rtol=5e-2, atol=5e-2)

    def test_jit_and_grad(self):
        (x, a), (w, b) = named("be"), named("eh")
        g = jax.grad(lambda w_: distmap.dot(x, w_, axis=None).array)(w)
        assert g.axes == w.axes
        close(g.array, np.broadcast_to(a.sum(0)[:, None], b.shape))
        close(jax.jit(lambda p, q: distmap.dot(p, q, axis="e"))(x, w).array, a @ b)

    def test_many_axes(self):
        # more axis names than the 52 ASCII letters einsum has
        names = [f"ax{i}" for i in range(60)]
        ones = distmap.ones(dict.fromkeys(names, 1))
        r = distmap.dot(ones, ones, axis=names[:30])
        assert r.axis_names == tuple(names[30:])
        assert float(r.array.sum()) == 1.0

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(st.permutations("behk").map(lambda p: "".join(p)), min_size=1, max_size=3),
        st.data(),
    )
    def test_matches_einsum(self, perms, draw):
        specs = [draw.draw(st.integers(0, 4).map(lambda n, p=p: p[:n])) for p in perms]
        arrays = [named(s) for s in specs]
        present = list(dict.fromkeys("".join(specs)))
        contracted = draw.draw(st.lists(st.sampled_from(present), unique=True)) if present else []
        r = distmap.dot(*(x for x, _ in arrays), axis=contracted)
        out = "".join(n for n in present if n not in contracted)
        assert r.axis_names == tuple(out)
        close(r.array, np.einsum(",".join(specs) + "->" + out, *(a for _, a in arrays)))


class TestEinsum:
    def test_basic(self):
        (x, a), (w, b) = named("be"), named("he")
        r = distmap.einsum("b e, e h -> b h", x, w)
        assert r.axis_names == ("b", "h")
        close(r.array, a @ b.T)

    def test_operand_spec_order_free(self):
        (x, a), (w, b) = named("be"), named("eh")
        close(distmap.einsum("e b, h e -> h b", x, w).array, (a @ b).T)

    def test_long_names_and_spacing(self):
        x = distmap.named(data("be"), ("batch", "embed"))
        w = distmap.named(data("eh"), ("embed", "hidden"))
        r = distmap.einsum("  batch   embed,embed hidden->batch hidden ", x, w)
        close(r.array, x.array @ w.array)

    def test_implicit_output(self):
        (x, a), (w, b) = named("be"), named("eh")
        r = distmap.einsum("b e, e h", x, w)
        assert r.axis_names == ("b", "h")
        close(r.array, a @ b)
        (y, c) = named("hb")
        r = distmap.einsum("h b, e h", y, w)  # first appearance: h b, then e
        assert r.axis_names == ("b", "e")
        close(r.array, np.einsum("hb,eh->be", c, b))

    def test_implicit_output_follows_spec_order(self):
        (x, a) = named("be")
        assert distmap.einsum("e b", x).axis_names == ("e", "b")
        close(distmap.einsum("e b", x).array, a.T)

    def test_ellipsis_in_operands_and_output(self):
        (x, a), (w, b) = named("bke"), named("eh")
        r = distmap.einsum("... e, e h -> ... h", x, w)
        assert r.axis_names == ("b", "k", "h")
        close(r.array, np.einsum("bke,eh->bkh", a, b))
        r = distmap.einsum("... e, e h -> h ...", x, w)
        assert r.axis_names == ("h", "b", "k")
        r = distmap.einsum("... e, e h", x, w)
        assert r.axis_names == ("b", "k", "h")

    def test_ellipsis_shared_axis_is_kept(self):
        (x, a), (y, b) = named("be"), named("bh")
        r = distmap.einsum("... e, ... h -> ... e h", x, y)
        assert r.axis_names == ("b", "e", "h")
        close(r.array, np.einsum("be,bh->beh", a, b))

    def test_explicit_output_without_ellipsis_sums_the_rest(self):
        (x, a), (w, b) = named("bke"), named("eh")
        r = distmap.einsum("... e, e h -> h", x, w)
        assert r.axis_names == ("h",)
        close(r.array, np.einsum("bke,eh->h", a, b))

    def test_ellipsis_matches_nothing(self):
        (x, a) = named("be")
        close(distmap.einsum("b e ... -> e", x).array, a.sum(0))

    def test_scalar_output_and_three_operands(self):
        (x, a), (y, b), (z, c) = named("be"), named("eh"), named("hb")
        r = distmap.einsum("b e, e h, h b ->", x, y, z)
        assert r.axes == ()
        close(r.array, np.einsum("be,eh,hb->", a, b, c))

    def test_errors(self):
        (x, _), (w, _) = named("be"), named("eh")
        with pytest.raises(errors.ShapeMismatchError, match="1 operand.*2 array"):
            distmap.einsum("b e -> b", x, w)
        with pytest.raises(errors.AxisNotFoundError, match=r"names axis 'q'.*\('b', 'e'\)"):
            distmap.einsum("b q, e h", x, w)
        with pytest.raises(errors.ShapeMismatchError, match=r"leaves out axes \('e',\)"):
            distmap.einsum("b, e h", x, w)
        with pytest.raises(errors.AxisNotFoundError, match="output names axis 'z'"):
            distmap.einsum("b e, e h -> z", x, w)
        with pytest.raises(errors.DuplicateAxisError):
            distmap.einsum("b b e, e h", x, w)
        with pytest.raises(errors.DuplicateAxisError):
            distmap.einsum("b e, e h -> b b", x, w)
        with pytest.raises(errors.AxisSelectorError, match="more than once"):
            distmap.einsum("... b ..., e h", x, w)
        with pytest.raises(errors.AxisSelectorError, match="more than one '->'"):
            distmap.einsum("b e -> b -> b", x)
        with pytest.raises(errors.AxisSelectorError, match="malformed"):
            distmap.einsum("b e..., e h", x, w)
        with pytest.raises(errors.AxisSelectorError, match="spec"):
            distmap.einsum(x, w)  # type: ignore[arg-type]
        with pytest.raises(errors.AxisSizeError):
            distmap.einsum("b e, e", x, distmap.zeros({"e": 7}))
        with pytest.raises(TypeError):
            distmap.einsum("b e", np.zeros((2, 3)))

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.lists(st.sampled_from("behk"), unique=True), min_size=1, max_size=3), st.data())
    def test_matches_numpy_explicit(self, specs, draw):
        arrays = [named(s) for s in specs]
        present = list(dict.fromkeys(n for s in specs for n in s))
        out = draw.draw(st.lists(st.sampled_from(present), unique=True)) if present else []
        spec = ", ".join(" ".join(s) for s in specs) + " -> " + " ".join(out)
        r = distmap.einsum(spec, *(x for x, _ in arrays))
        assert r.axis_names == tuple(out)
        ref = np.einsum(",".join("".join(s) for s in specs) + "->" + "".join(out), *(a for _, a in arrays))
        close(r.array, ref)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_dot_over_an_axis_split_on_an_explicit_mesh(jit):
    # JAX asks for out_sharding when a contracted dimension is split; the names say what it is.
    mesh = distmap.make_mesh({"data": 4, "model": 2})
    rng = np.random.default_rng(0)
    xa, wa = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    x = distmap.shard(distmap.named(xa, ("batch", "embed")), {"batch": "data", "embed": "model"}, mesh)
    w = distmap.shard(distmap.named(wa, ("embed", "hidden")), {"embed": "model"}, mesh)
    def f(a, b):
        return distmap.dot(a, b, axis="embed")
    with jax.set_mesh(mesh):
        y = (jax.jit(f) if jit else f)(x, w)
    assert y.axis_names == ("batch", "hidden")
    assert tuple(y.array.sharding.spec)[:1] == ("data",)  # the uncontracted axis keeps its split
    np.testing.assert_allclose(np.asarray(y.array), xa @ wa, rtol=1e-5, atol=1e-5)
