"""``distmap.vmap`` on one device: each semantic of the named map, checked against a hand-written
``jax.vmap`` with explicit ``in_axes`` / ``out_axes`` (or numpy), never against distmap itself."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors

B = Axis("batch", 4)
F = Axis("feature", 3)
H = Axis("hidden", 2)


def _arr(*shape, offset=0.0):
    """Distinct, deterministic float values of ``shape``."""
    n = int(np.prod(shape)) if shape else 1
    return jnp.asarray((np.arange(n, dtype=np.float32) * 0.37 + offset).reshape(shape) % 7.0 - 3.0)


def _named(names, *shape, offset=0.0):
    return distmap.named(_arr(*shape, offset=offset), names)


def _check(out, axis_names, expected):
    """``out`` is a NamedArray with ``axis_names`` whose data equals ``expected``."""
    assert isinstance(out, distmap.NamedArray), type(out)
    assert out.axis_names == tuple(axis_names)
    np.testing.assert_allclose(np.asarray(out.array), np.asarray(expected), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- the axis argument


def _row_fn(x):  # x: NamedArray (feature,) -> NamedArray (feature,)
    return x * x.sum("feature")


def _row_raw(x):  # the same on a raw (feature,) array
    return x * x.sum()


@pytest.mark.parametrize("axis", [B, "batch", {"batch": None}, {"batch": 4}, [B], ["batch"], ("batch",)])
def test_axis_forms(axis):
    x = _named(("feature", "batch"), 3, 4)
    out = distmap.vmap(_row_fn, axis)(x)
    _check(out, ("batch", "feature"), jax.vmap(_row_raw, in_axes=1, out_axes=0)(x.array))


def test_size_taken_from_inputs():
    # A bare name takes its size from the inputs, named or unnamed.
    out = distmap.vmap(lambda v: v * 2.0, "batch")(_arr(5, 3))
    np.testing.assert_allclose(out, jax.vmap(lambda v: v * 2.0, in_axes=0)(_arr(5, 3)))
    out = distmap.vmap(lambda v: v.sum("feature"), "batch")(_named(("feature", "batch"), 3, 6))
    assert out.axes == (Axis("batch", 6),)


@pytest.mark.parametrize("axes", [["a", Axis("b", 4)], {"a": None, "b": 4}, (Axis("a", 5), "b")])
def test_several_axes_mixed_selectors(axes):
    x = _named(("c", "a", "feature", "b"), 2, 5, 3, 4)
    out = distmap.vmap(lambda v: v * v.sum("feature"), axes)(x)
    raw = lambda v: v * v.sum(-1, keepdims=True)  # noqa: E731  per example: (c, feature)
    ref = jax.vmap(jax.vmap(raw, in_axes=2), in_axes=1)(x.array)  # b sits at dim 2 once a is taken
    _check(out, ("a", "b", "c", "feature"), ref)


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "a", "b"), ("b", "c", "a")])
def test_multiple_axes_outputs_in_order_given(order):
    sizes = {"a": 2, "b": 3, "c": 5}
    names = ("c", "feature", "a", "b")
    x = _named(names, 5, 3, 2, 3)
    dims = {n: i for i, n in enumerate(names)}

    def fn(v):
        assert v.axis_names == ("feature",)
        return v * 2.0 + 1.0, v.sum("feature"), v.array  # named, named scalar, unnamed

    named_out, scalar_out, raw_out = distmap.vmap(fn, list(order))(x)
    # Reference: move the mapped axes to the front in the order given, then nest jax.vmap on dim 0.
    moved = jnp.transpose(x.array, [dims[n] for n in order] + [dims["feature"]])
    ref = lambda v: (v * 2.0 + 1.0, v.sum(), v)  # noqa: E731
    for _ in order:
        ref = jax.vmap(ref, in_axes=0, out_axes=0)
    r_named, r_scalar, r_raw = ref(moved)
    _check(named_out, order + ("feature",), r_named)
    _check(scalar_out, order, r_scalar)
    assert not isinstance(raw_out, distmap.NamedArray)
    assert raw_out.shape == tuple(sizes[n] for n in order) + (3,)  # unnamed outputs: dims 0..k
    np.testing.assert_allclose(raw_out, r_raw)


def test_multiple_axes_innermost_first_unnamed_inputs():
    # Unnamed inputs see the axes in the order given: the first outermost, mapped on dim 0 at each level.
    x = _arr(2, 3, 4)
    out = distmap.vmap(lambda v: v.sum(), ["a", "b"])(x)
    np.testing.assert_allclose(out, jax.vmap(jax.vmap(lambda v: v.sum()))(x))
    assert out.shape == (2, 3)
    # Sizes given in the selection must match the dims they map.
    with pytest.raises(errors.AxisSizeError):
        distmap.vmap(lambda v: v.sum(), [Axis("a", 3), Axis("b", 2)])(x)


def test_multiple_axes_collectives_see_both_levels():
    seen = []

    def fn(v):
        seen.append((distmap.axis_size("a"), distmap.axis_size("b")))
        return v

    distmap.vmap(fn, ["a", "b"])(_arr(2, 3))
    assert seen == [(2, 3)]


@pytest.mark.parametrize("empty", [[], (), {}])
def test_empty_selection_is_fn(empty):
    x = _named(("batch", "feature"), 4, 3)
    calls = []

    def fn(v, scale=1.0):
        calls.append(v)
        return v * scale

    mapped = distmap.vmap(fn, empty)
    out = mapped(x, scale=2.0)
    assert calls[-1] is x  # fn saw the argument itself, not a slice
    _check(out, ("batch", "feature"), x.array * 2.0)


# ------------------------------------------------------------------------ NamedArray inputs


@pytest.mark.parametrize("perm", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (1, 2, 0)])
def test_named_mapped_wherever_axis_sits(perm):
    base_names = ("batch", "feature", "hidden")
    names = tuple(base_names[p] for p in perm)
    sizes = {"batch": 4, "feature": 3, "hidden": 2}
    x = _named(names, *[sizes[n] for n in names])
    w = _named(("hidden", "batch", "feature"), 2, 4, 3, offset=1.0)
    y = _named(("feature", "batch"), 3, 4, offset=2.0)

    def fn(x, w, *, y):
        return (x * w).sum("hidden") + y

    out = distmap.vmap(fn, "batch")(x, w, y=y)

    def raw(x, w, y):  # per example: x in order names-without-batch, w (hidden, feature), y (feature,)
        rest = [n for n in names if n != "batch"]
        xt = jnp.transpose(x, [rest.index("hidden"), rest.index("feature")])
        return (xt * w).sum(0) + y

    ref = jax.vmap(raw, in_axes=(names.index("batch"), 1, 1))(x.array, w.array, y.array)
    assert out.axis_names[0] == "batch"
    _check(out.rearrange(("batch", "feature")), ("batch", "feature"), ref)


class _Holder(eqx.Module):
    weight: distmap.NamedArray
    bias: jax.Array
    tag: str = eqx.field(static=True)


def test_named_nested_in_dicts_lists_modules():
    tree = {
        "x": _named(("feature", "batch"), 3, 4),
        "l": [_named(("batch",), 4, offset=1.0), _named(("hidden", "feature"), 2, 3, offset=2.0)],
    }
    m = _Holder(weight=_named(("hidden", "batch", "feature"), 2, 4, 3, offset=3.0), bias=_arr(4, 3, offset=4.0), tag="t")

    def fn(tree, m):
        assert m.tag == "t"
        assert tree["x"].axis_names == ("feature",)
        assert tree["l"][0].axis_names == ()
        assert tree["l"][1].axis_names == ("hidden", "feature")  # broadcast: no 'batch'
        assert m.weight.axis_names == ("hidden", "feature")
        assert m.bias.shape == (3,)
        s = (tree["l"][1] * m.weight).sum("hidden")
        return s * tree["l"][0] + tree["x"] + distmap.named(m.bias, "feature")

    out = distmap.vmap(fn, "batch")(tree, m=m)

    def raw(x, s0, l1, w, b):
        return (l1 * w).sum(0) * s0 + x + b

    ref = jax.vmap(raw, in_axes=(1, 0, None, 1, 0))(
        tree["x"].array, tree["l"][0].array, tree["l"][1].array, m.weight.array, m.bias
    )
    _check(out, ("batch", "feature"), ref)


def test_named_without_axis_broadcast():
    x = _named(("batch", "feature"), 4, 3)
    w = _named(("feature", "hidden"), 3, 2, offset=1.0)

    def fn(x, w):
        assert w.axis_names == ("feature", "hidden")
        return (x * w).sum("feature")

    out = distmap.vmap(fn, "batch")(x, w)
    ref = jax.vmap(lambda x, w: (x[:, None] * w).sum(0), in_axes=(0, None))(x.array, w.array)
    _check(out, ("batch", "hidden"), ref)


@pytest.mark.parametrize("axis", [Axis("ens", 3), {"ens": 3}, [Axis("ens", 3)]])
def test_axis_created_when_no_input_has_it(axis):
    w = _named(("feature",), 3)
    out_named, out_raw = distmap.vmap(lambda w, v: (w * 2.0, v + 1.0), axis)(w, jnp.float32(5.0))
    ref_named, ref_raw = jax.vmap(lambda w, v: (w * 2.0, v + 1.0), in_axes=(None, None), axis_size=3)(
        w.array, jnp.float32(5.0)
    )
    _check(out_named, ("ens", "feature"), ref_named)
    np.testing.assert_allclose(out_raw, ref_raw)
    assert out_raw.shape == (3,)


@pytest.mark.parametrize("axis", ["ens", {"ens": None}, ["ens"]])
def test_axis_without_size_and_no_input_raises(axis):
    with pytest.raises(errors.MappingError) as e:
        distmap.vmap(lambda w: w * 2.0, axis)(_named(("feature",), 3))
    msg = str(e.value)
    assert "'ens'" in msg and "size" in msg


def test_axis_created_with_only_rank0_and_python_inputs():
    out = distmap.vmap(lambda s, n: s * n, Axis("ens", 2))(jnp.float32(3.0), 2)
    np.testing.assert_allclose(out, [6.0, 6.0])


# --------------------------------------------------------------------- unnamed leaves: specs


def test_default_maps_rank1_dim0_and_not_rank0():
    x, s = _arr(4, 3), jnp.float32(2.5)
    out = distmap.vmap(lambda x, s, n: x * s + n, "batch")(x, s, np.float32(1.5))
    ref = jax.vmap(lambda x, s, n: x * s + n, in_axes=(0, None, None))(x, s, np.float32(1.5))
    np.testing.assert_allclose(out, ref)


def test_default_numpy_arrays_mapped():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = distmap.vmap(lambda v: v.sum(), "batch")(x)
    np.testing.assert_allclose(out, x.sum(1))


def test_typed_prng_key_not_mapped():
    key = jax.random.key(0)
    x = _arr(4)
    out = distmap.vmap(lambda k, v: jax.random.normal(k, ()) + v, "batch")(key, x)
    ref = jax.vmap(lambda k, v: jax.random.normal(k, ()) + v, in_axes=(None, 0))(key, x)
    np.testing.assert_allclose(out, ref)


def test_split_keys_mapped():
    keys = jax.random.split(jax.random.key(1), 4)
    out = distmap.vmap(lambda k: jax.random.normal(k, (2,)), "batch")(keys)
    np.testing.assert_allclose(out, jax.vmap(lambda k: jax.random.normal(k, (2,)), in_axes=0)(keys))
    assert out.shape == (4, 2)


class _WithStatics(eqx.Module):
    w: jax.Array
    scale: float
    name: str = eqx.field(static=True)
    act: object = eqx.field(static=True, default=jnp.tanh)


def test_non_array_leaves_pass_through():
    seen = {}

    def fn(x, n, s, flag, nothing, m, fl):
        seen.update(n=n, s=s, flag=flag, nothing=nothing, scale=m.scale, name=m.name, act=m.act, fl=fl)
        return m.act(x * m.w * m.scale) + n

    m = _WithStatics(w=_arr(4, 3, offset=1.0), scale=0.5, name="lin")
    out = distmap.vmap(fn, "batch")(_arr(4, 3), 3, "hi", True, None, m, 1.25)
    assert seen == dict(n=3, s="hi", flag=True, nothing=None, scale=0.5, name="lin", act=jnp.tanh, fl=1.25)
    assert type(seen["n"]) is int and type(seen["fl"]) is float and type(seen["flag"]) is bool
    ref = jax.vmap(lambda x, w: jnp.tanh(x * w * 0.5) + 3, in_axes=(0, 0))(_arr(4, 3), m.w)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_default_int(dim):
    x, y = _arr(2, 3, 4), _arr(2, 3, 4, offset=1.0)
    out = distmap.vmap(lambda a, b: a * b + 1.0, "n", default=dim)(x, y)
    np.testing.assert_allclose(out, jax.vmap(lambda a, b: a * b + 1.0, in_axes=(dim, dim), out_axes=0)(x, y))


def test_default_none_broadcasts_everything():
    x = _named(("batch",), 4)
    u = _arr(4, 3)
    out = distmap.vmap(lambda x, u: x * u.sum(), "batch", default=None)(x, u)
    ref = jax.vmap(lambda x, u: x * u.sum(), in_axes=(0, None))(x.array, u)
    _check(out, ("batch",), ref)


def test_default_callable():
    def spec(leaf):
        return 1 if leaf.ndim == 2 else None

    a, b, c = _arr(3, 4), _arr(5, 4, offset=1.0), _arr(7, offset=2.0)  # (n, 4) dim 1; c unmapped
    out = distmap.vmap(lambda a, b, c: a.sum() + b.sum() * c.sum(), "n", default=spec)(a, b, c)
    ref = jax.vmap(lambda a, b, c: a.sum() + b.sum() * c.sum(), in_axes=(1, 1, None))(a, b, c)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_default_pytree_prefix_applies_per_argument():
    p = {"w": _arr(4, 3), "b": _arr(3, offset=1.0)}
    q = {"w": _arr(3, 4, offset=2.0), "b": _arr(5, offset=3.0)}
    out = distmap.vmap(
        lambda p, q: (p["w"] * p["b"]).sum() + q["w"].sum() + q["b"].sum(), "n", default={"w": -1, "b": None}
    )(dict(p, w=p["w"].T), q)
    ref = jax.vmap(
        lambda p, q: (p["w"] * p["b"]).sum() + q["w"].sum() + q["b"].sum(),
        in_axes=({"w": 1, "b": None}, {"w": 1, "b": None}),
    )(dict(p, w=p["w"].T), q)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_args_prefix_with_literal_none():
    x, w, b = _arr(4, 3), _arr(3, 4, offset=1.0), _arr(4, offset=2.0)
    fn = lambda x, w, b: x @ w + b  # noqa: E731
    out = distmap.vmap(fn, "batch", args=(0, None))(x, w, b)  # b falls back to the default (dim 0)
    ref = jax.vmap(fn, in_axes=(0, None, 0))(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_args_nested_prefix_and_callable():
    params = {"w": _arr(3, 2), "b": _arr(4, 2, offset=1.0)}
    x = _arr(3, 4, offset=2.0)
    fn = lambda x, p: x @ p["w"] + p["b"]  # noqa: E731
    out = distmap.vmap(fn, "batch", args=(lambda leaf: 1, {"w": None, "b": 0}))(x, params)
    ref = jax.vmap(fn, in_axes=(1, {"w": None, "b": 0}))(x, params)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_args_none_for_a_whole_module():
    m = _Holder(weight=_named(("feature",), 3), bias=_arr(3, offset=1.0), tag="t")
    x = _arr(4, 3, offset=2.0)
    out = distmap.vmap(lambda m, x: x * m.bias, "batch", args=(None,))(m, x)
    np.testing.assert_allclose(out, jax.vmap(lambda b, x: x * b, in_axes=(None, 0))(m.bias, x))


def test_kwargs_spec_per_keyword_with_none():
    x, w, b = _arr(4, 3), _arr(3, 2, offset=1.0), _arr(2, 4, offset=2.0)

    def fn(x, *, w, b):
        return x @ w + b

    out = distmap.vmap(fn, "batch", kwargs={"w": None, "b": 1})(x, w=w, b=b)
    ref = jax.vmap(lambda x, w, b: x @ w + b, in_axes=(0, None, 1))(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_spec_on_rank0_array_and_negative_dims():
    x = _arr(3, 4, 5)
    out = distmap.vmap(lambda v: v.sum(0), "n", args=(-2,))(x)
    np.testing.assert_allclose(out, jax.vmap(lambda v: v.sum(0), in_axes=1)(x), rtol=1e-5)
    with pytest.raises(errors.MappingError, match="rank 0"):
        distmap.vmap(lambda s: s, Axis("n", 2), args=(0,))(jnp.float32(1.0))
    with pytest.raises(errors.MappingError, match=r"args\[0\]"):
        distmap.vmap(lambda v: v, "n", args=(3,))(x)
    with pytest.raises(errors.MappingError):
        distmap.vmap(lambda v: v, "n", args=(-4,))(x)


@pytest.mark.parametrize(
    "options",
    [
        dict(default="x"),
        dict(default=1.5),
        dict(default=True),
        dict(default=[0, "a"]),
        dict(args=0),
        dict(args="ab"),
        dict(args=(0, "x")),
        dict(args=(True,)),
        dict(kwargs={"w": "x"}),
        dict(kwargs="x"),
        dict(kwargs=5),
        dict(kwargs=[("w", 0)]),
    ],
)
def test_bad_specs_raise_mapping_error(options):
    with pytest.raises(errors.MappingError):
        distmap.vmap(lambda x, w=None: x, "batch", **options)


def test_bad_spec_at_call_time_raises_mapping_error():
    x = _arr(4, 3)
    with pytest.raises(errors.MappingError, match="prefix"):
        distmap.vmap(lambda p: p, "batch", args=({"a": 0, "b": 0},))([x, x])
    with pytest.raises(errors.MappingError, match="int or None"):
        distmap.vmap(lambda p: p, "batch", default=lambda leaf: "zero")(x)
    with pytest.raises(errors.MappingError, match="int or None"):
        distmap.vmap(lambda p: p, "batch", default=lambda leaf: True)(x)


# ------------------------------------------------------------------------------- outputs


def test_outputs_named_front_unnamed_dim0_broadcast_and_static():
    x = _named(("feature", "batch"), 3, 4)
    w = _named(("hidden",), 2, offset=1.0)

    def fn(x, w):
        return {
            "named": (x * w).rearrange(("hidden", "feature")),  # depends on x
            "raw": x.array[:, None] * jnp.ones(2),  # (feature, 2), unnamed
            "const": w * 3.0,  # independent of the mapped input: broadcast
            "const_raw": jnp.arange(3.0),
            "static": ("label", 7, None, jnp.tanh),
        }

    out = distmap.vmap(fn, "batch")(x, w)

    def raw(x, w):
        return (w[:, None] * x[None, :], x[:, None] * jnp.ones(2), w * 3.0, jnp.arange(3.0))

    r_named, r_raw, r_const, r_const_raw = jax.vmap(raw, in_axes=(1, None), out_axes=0)(x.array, w.array)
    _check(out["named"], ("batch", "hidden", "feature"), r_named)
    assert not isinstance(out["raw"], distmap.NamedArray)
    np.testing.assert_allclose(out["raw"], r_raw)
    _check(out["const"], ("batch", "hidden"), r_const)
    np.testing.assert_allclose(out["const_raw"], r_const_raw)
    assert out["const_raw"].shape == (4, 3)
    assert out["static"] == ("label", 7, None, jnp.tanh)


def test_non_array_output_only():
    assert distmap.vmap(lambda x: "done", "batch")(_arr(4)) == "done"
    assert distmap.vmap(lambda x: None, "batch")(_arr(4)) is None


def test_output_that_already_has_the_axis_raises():
    x = _named(("batch",), 4)
    with pytest.raises(errors.MappingError, match="already has axis 'batch'"):
        distmap.vmap(lambda v: distmap.zeros({"batch": 2}), "batch")(x)


# ---------------------------------------------------------------------- size mismatches


class _Params(eqx.Module):
    weight: object
    bias: object = None


def _size_error(fn, *a, **k):
    with pytest.raises(errors.AxisSizeError) as e:
        fn(*a, **k)
    assert isinstance(e.value, ValueError)  # subclasses the builtin that fits
    msg = str(e.value)
    assert "in_axes" not in msg  # never jax.vmap's own message
    return msg


@pytest.mark.parametrize(
    "weight",
    [
        lambda: _named(("feature", "batch"), 3, 5),  # named, axis elsewhere
        lambda: _arr(5, 3),  # unnamed, default spec
    ],
)
def test_size_mismatch_names_axis_sizes_and_paths(weight):
    x = _named(("batch",), 4)
    msg = _size_error(distmap.vmap(lambda x, params: x, "batch"), x, params=_Params(weight=weight()))
    assert "'batch'" in msg
    assert "4" in msg and "5" in msg
    assert "args[0]" in msg
    assert "kwargs['params'].weight" in msg


def test_size_mismatch_nested_positional_paths():
    msg = _size_error(distmap.vmap(lambda a, b: a, "batch"), _arr(4), {"w": [_arr(4), _arr(6)]})
    assert "args[1]['w'][1]" in msg and "6" in msg and "4" in msg


def test_size_mismatch_with_given_size():
    msg = _size_error(distmap.vmap(lambda a: a, Axis("batch", 3)), _named(("batch",), 4))
    assert "'batch'" in msg and "3" in msg and "4" in msg and "args[0]" in msg
    msg = _size_error(distmap.vmap(lambda a: a, {"batch": 3}, default=1), _arr(2, 5))
    assert "args[0]" in msg and "5" in msg


# --------------------------------------------------------------------------- composition


def _mlp_named(x, w):  # x: (feature,), w: (feature, hidden)
    s = (x * w).sum("feature")
    return distmap.NamedArray(jnp.tanh(s.array), s.axes)


def _mlp_raw(x, w):
    return jnp.tanh(x @ w)


def test_under_jit():
    x = _named(("feature", "batch"), 3, 4)
    w = _named(("feature", "hidden"), 3, 2, offset=1.0)
    out = jax.jit(distmap.vmap(_mlp_named, "batch"))(x, w)
    _check(out, ("batch", "hidden"), jax.vmap(_mlp_raw, in_axes=(1, None))(x.array, w.array))


def test_inside_jit_with_closure():
    x = _named(("feature", "batch"), 3, 4)
    w = _named(("feature", "hidden"), 3, 2, offset=1.0)

    @jax.jit
    def f(x, w):
        return distmap.vmap(lambda xi: _mlp_named(xi, w), "batch")(x)

    _check(f(x, w), ("batch", "hidden"), jax.vmap(_mlp_raw, in_axes=(1, None))(x.array, w.array))


def test_grad_and_value_and_grad_through_vmap():
    x = _named(("feature", "batch"), 3, 4)
    w = _named(("feature", "hidden"), 3, 2, offset=1.0)
    b = _arr(4, 2, offset=2.0)

    def loss(w, b):
        return (distmap.vmap(_mlp_named, "batch")(x, w).array * b).sum()

    def loss_ref(w, b):
        return (jax.vmap(_mlp_raw, in_axes=(1, None))(x.array, w) * b).sum()

    gw, gb = jax.grad(loss, argnums=(0, 1))(w, b)
    rw, rb = jax.grad(loss_ref, argnums=(0, 1))(w.array, b)
    _check(gw, ("feature", "hidden"), rw)
    np.testing.assert_allclose(gb, rb, rtol=1e-6)
    v, g = jax.value_and_grad(loss)(w, b)
    np.testing.assert_allclose(v, loss_ref(w.array, b), rtol=1e-6)
    _check(g, ("feature", "hidden"), rw)


def test_grad_inside_vmap():
    # Per-example gradients: grad inside the map, compared with jax.vmap(jax.grad).
    x = _arr(4, 3)
    w = _arr(3, offset=1.0)
    g = distmap.vmap(jax.grad(lambda w, x: jnp.sin(w * x).sum()), "batch", args=(None, 0))(w, x)
    np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda w, x: jnp.sin(w * x).sum()), in_axes=(None, 0))(w, x))


class _Lin(eqx.Module):
    w: distmap.NamedArray
    b: jax.Array
    act: object = eqx.field(static=True)

    def __call__(self, x):
        return self.act((x * self.w).sum("feature").array + self.b)


def test_equinox_filter_jit_and_module_inputs():
    m = _Lin(w=_named(("feature", "hidden"), 3, 2), b=_arr(2, offset=1.0), act=jnp.tanh)
    x = _named(("batch", "feature"), 4, 3, offset=2.0)
    f = eqx.filter_jit(distmap.vmap(lambda m, x: m(x), "batch", args=(None,)))
    out = f(m, x)
    ref = jax.vmap(lambda x: jnp.tanh(x @ m.w.array + m.b), in_axes=0)(x.array)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    out2 = f(m, x)  # cached call
    np.testing.assert_allclose(out2, ref, rtol=1e-6)


def test_module_outputs():
    x = _arr(4, 3)

    def make(v):
        return _Lin(w=distmap.named(jnp.outer(v, jnp.ones(2)), ("feature", "hidden")), b=v[:2], act=jnp.sin)

    out = distmap.vmap(make, "batch")(x)
    assert isinstance(out, _Lin) and out.act is jnp.sin
    _check(out.w, ("batch", "feature", "hidden"), jax.vmap(lambda v: jnp.outer(v, jnp.ones(2)))(x))
    np.testing.assert_allclose(out.b, x[:, :2])


def test_nested_vmap_over_different_axes():
    x = _named(("hidden", "feature", "batch"), 2, 3, 4)

    def outer(row):  # row: (hidden, feature)
        return distmap.vmap(lambda v: v * distmap.axis_index("hidden") + v.sum("feature"), "hidden")(row)

    out = distmap.vmap(outer, "batch")(x)

    def raw(v, i):
        return v * i + v.sum()

    ref = jax.vmap(lambda r: jax.vmap(raw)(r, jnp.arange(2.0)), in_axes=2)(x.array)
    _check(out, ("batch", "hidden", "feature"), ref)


class _Member(eqx.Module):
    w: distmap.NamedArray
    b: jax.Array
    scale: float
    size: int = eqx.field(static=True)

    def __init__(self, key, size, scale=2.0):
        self.w = distmap.named(jax.random.normal(key, (size,)), "feature")
        self.b = self.w.array[:2] * scale
        self.scale = scale
        self.size = size


def test_module_constructor_over_split_keys_builds_ensemble():
    keys = jax.random.split(jax.random.key(0), 5)
    ens = distmap.vmap(_Member, "ens")(keys, 3)  # the size comes from the keys
    ref = jax.vmap(lambda k: jax.random.normal(k, (3,)), in_axes=0)(keys)
    assert isinstance(ens, _Member) and ens.size == 3 and ens.scale == 2.0
    _check(ens.w, ("ens", "feature"), ref)
    assert not isinstance(ens.b, distmap.NamedArray) and ens.b.shape == (5, 2)
    np.testing.assert_allclose(ens.b, ref[:, :2] * 2.0)
    # The ensemble applies with another distmap.vmap over the new axis (the Module mapped by name and dim 0).
    x = _named(("feature",), 3, offset=1.0)
    y = distmap.vmap(lambda m, x: (m.w * x).sum("feature") + m.b.sum(), "ens")(ens, x)
    _check(y, ("ens",), (ref * x.array).sum(1) + ref[:, :2].sum(1) * 2.0)
