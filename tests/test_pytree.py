"""NamedArray as a pytree: through jit, grad, vmap, tree_util and equinox."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import distmap
from distmap import Axis, NamedArray

A = np.arange(6, dtype=np.float32).reshape(2, 3)


def x():
    return distmap.named(A, ("batch", "feature"))


def test_flatten_unflatten():
    leaves, treedef = jax.tree_util.tree_flatten(x())
    assert len(leaves) == 1
    np.testing.assert_array_equal(leaves[0], A)
    y = jax.tree_util.tree_unflatten(treedef, [jnp.ones((2, 3))])
    assert isinstance(y, NamedArray) and y.axes == x().axes
    np.testing.assert_array_equal(y.array, np.ones((2, 3)))
    # flattening the rebuilt array gives the new leaf, not a stale one
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(y)[0], np.ones((2, 3)))


def test_treedef_carries_axes():
    t1 = jax.tree_util.tree_structure(x())
    t2 = jax.tree_util.tree_structure(distmap.named(A, ("batch", "other")))
    assert t1 == jax.tree_util.tree_structure(distmap.named(A + 1, ("batch", "feature")))
    assert t1 != t2


def test_tree_map():
    tree = {"w": x(), "b": distmap.zeros({"feature": 3}), "n": 3.0}
    out = jax.tree_util.tree_map(lambda a: a * 2, tree)
    assert isinstance(out["w"], NamedArray) and out["w"].axes == x().axes
    np.testing.assert_array_equal(out["w"].array, A * 2)
    assert out["n"] == 6.0
    # the leaf the next flatten sees is the mapped one
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(out["w"])[0], A * 2)


def test_tree_flatten_with_path():
    tree = {"layer": [x()]}
    (path, leaf), = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "array"
    assert jax.tree_util.keystr(path) == "['layer'][0].array"
    np.testing.assert_array_equal(leaf, A)
    mapped = jax.tree_util.tree_map_with_path(lambda p, a: a + len(p), tree)
    np.testing.assert_array_equal(mapped["layer"][0].array, A + 3)


def test_jit():
    @jax.jit
    def f(a, b):
        return (a * b).sum("feature")

    r = f(x(), distmap.named(A, ("batch", "feature")))
    assert isinstance(r, NamedArray) and r.axis_names == ("batch",)
    np.testing.assert_array_equal(r.array, (A * A).sum(1))


def test_jit_retraces_on_new_axes():
    traces = []

    @jax.jit
    def f(a):
        traces.append(a.axes)
        return a + 1

    f(x())
    f(distmap.named(A + 1, ("batch", "feature")))
    assert len(traces) == 1
    f(distmap.named(A, ("b", "f")))
    assert len(traces) == 2


def test_grad_and_value_and_grad():
    w = distmap.named(np.ones(3, np.float32), "feature")

    def loss(w, inputs):
        return distmap.dot(inputs, w, axis="feature").sum().array

    g = jax.grad(loss)(w, x())
    assert isinstance(g, NamedArray) and g.axes == w.axes
    np.testing.assert_array_equal(g.array, A.sum(0))
    v, g2 = jax.value_and_grad(loss)(w, x())
    assert float(v) == A.sum()
    np.testing.assert_array_equal(g2.array, g.array)
    gs = jax.grad(lambda t: loss(t["w"], t["x"]))({"w": w, "x": x()})
    assert gs["x"].axes == x().axes
    np.testing.assert_array_equal(gs["x"].array, np.ones((2, 3)))


def test_raw_vmap_maps_the_leaf():
    # raw jax.vmap sees the leaf: inside, .array is the per-example slice (the stored axes are not updated);
    # distmap.vmap is the by-name way. Here the function only reads .array.
    tree = {"x": x(), "scale": jnp.asarray([1.0, 10.0])}

    def f(t):
        return t["x"].array.sum() * t["scale"]

    out = jax.vmap(f, in_axes=({"x": 0, "scale": 0},))(tree)
    np.testing.assert_array_equal(out, A.sum(1) * np.array([1.0, 10.0]))


def test_raw_vmap_prefix_spec_and_output():
    # in_axes given as a NamedArray-shaped prefix (leaf spec 1 maps the feature dim)
    spec = jax.tree_util.tree_map(lambda _: 1, x())
    out = jax.vmap(lambda t: t.array * 2, in_axes=(spec,))(x())
    np.testing.assert_array_equal(out, (A * 2).T)
    # a NamedArray returned from vmap gets the mapped dim on its leaf
    y = jax.vmap(lambda a: distmap.named(a, "feature"), in_axes=0)(jnp.asarray(A))
    assert isinstance(y, NamedArray)
    np.testing.assert_array_equal(y.array, A)


def test_equinox_filter_jit_and_module():
    class Linear(eqx.Module):
        weight: NamedArray
        bias: NamedArray
        name: str = eqx.field(static=True, default="lin")

        def __call__(self, inputs):
            return distmap.dot(inputs, self.weight, axis="feature") + self.bias

    lin = Linear(
        weight=distmap.named(np.ones((3, 4), np.float32), ("feature", "hidden")),
        bias=distmap.zeros({"hidden": 4}),
    )
    r = eqx.filter_jit(lambda m, i: m(i))(lin, x())
    assert r.axis_names == ("batch", "hidden")
    np.testing.assert_array_equal(r.array, np.broadcast_to(A.sum(1, keepdims=True), (2, 4)))

    grads = eqx.filter_grad(lambda m, i: m(i).sum().array)(lin, x())
    assert isinstance(grads.weight, NamedArray) and grads.weight.axes == lin.weight.axes
    np.testing.assert_array_equal(grads.weight.array, np.broadcast_to(A.sum(0)[:, None], (3, 4)))

    params, static = eqx.partition(lin, eqx.is_array)
    assert isinstance(params.weight, NamedArray)
    back = eqx.combine(params, static)
    assert back.weight.axes == lin.weight.axes
    leaves = jax.tree_util.tree_leaves(lin)
    assert len(leaves) == 2


def test_leaves_of_any_type_roundtrip():
    # transforms put non-array leaves (None, object(), ints) in NamedArray-shaped trees
    treedef = jax.tree_util.tree_structure(x())
    for leaf in (None, object(), 0, jax.ShapeDtypeStruct((2, 3), jnp.float32)):
        y = jax.tree_util.tree_unflatten(treedef, [leaf])
        assert y.array is leaf and y.axes == x().axes
        assert jax.tree_util.tree_leaves(y, is_leaf=lambda v: v is None) == [leaf]


def test_eval_shape():
    out = jax.eval_shape(lambda a: a.sum("feature"), x())
    assert isinstance(out, NamedArray) and out.axes == (Axis("batch", 2),)
    assert out.array.shape == (2,)


def test_scan_carry_and_outputs():
    xs = np.arange(6, dtype=np.float32).reshape(3, 2)

    def step(carry, row):
        row = distmap.named(row, "f")
        return carry + row, row * 2

    carry, ys = jax.lax.scan(step, distmap.zeros({"f": 2}), xs)
    assert isinstance(carry, NamedArray) and carry.axis_names == ("f",)
    np.testing.assert_array_equal(carry.array, xs.sum(0))
    # stacked outputs get the scanned dim on the leaf; the recorded axes are the per-step ones
    np.testing.assert_array_equal(ys.array, xs * 2)
