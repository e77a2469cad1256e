"""``distmap.Stacked``: N copies of a Module along a named axis, built by vmapping the constructor,
applied in parallel (``.vmap``) or in sequence (``.fold`` / ``.scan``); each equal to a Python loop."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors

L = Axis("layer", 4)
FEAT = 3


class Layer(eqx.Module):
    w: distmap.NamedArray  # (feature,)
    b: jax.Array  # unnamed (feature,)
    scale: float
    name: str = eqx.field(static=True)

    def __init__(self, key, scale=0.5, name="layer"):
        kw, kb = jax.random.split(key)
        self.w = distmap.named(jax.random.normal(kw, (FEAT,)), "feature")
        self.b = jax.random.normal(kb, (FEAT,))
        self.scale = scale
        self.name = name

    def __call__(self, x, shift=0.0):
        y = x * self.w + distmap.named(self.b, "feature") + shift
        return distmap.NamedArray(jnp.tanh(y.array) * self.scale + x.array * 0.5, y.axes)


class RawLayer(eqx.Module):
    w: jax.Array  # (feature,)

    def __init__(self, key):
        self.w = jax.random.normal(key, (FEAT,))

    def __call__(self, x):
        return jnp.sin(x * self.w) + x


class ScanLayer(eqx.Module):
    w: distmap.NamedArray

    def __init__(self, key):
        self.w = distmap.named(jax.random.normal(key, (FEAT,)), "feature")

    def __call__(self, x):
        h = distmap.NamedArray(jnp.tanh((x * self.w).array), x.axes)
        return h, {"summary": h.sum("feature"), "raw": h.array * 2.0, "first": h.array[0]}


def _keys(n=L.size, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _x(offset=0.0):
    return distmap.named(jnp.asarray(np.linspace(-1.0, 1.0, FEAT, dtype=np.float32) + offset), "feature")


def _close(a, b, **kw):
    kw = {"rtol": 1e-5, "atol": 1e-6, **kw}
    if isinstance(a, distmap.NamedArray) or isinstance(b, distmap.NamedArray):
        assert a.axis_names == b.axis_names
        a, b = a.array, b.array
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


def _stack_named(outs, axis=L):
    return distmap.NamedArray(jnp.stack([o.array for o in outs]), (axis,) + outs[0].axes)


# ------------------------------------------------------------------------------- init


@pytest.mark.parametrize("axis", [L, {"layer": 4}])
def test_init_by_vmapping_the_constructor(axis):
    keys = _keys()
    net = distmap.Stacked.init(axis, Layer)(keys, 0.25, name="blk")
    assert isinstance(net, distmap.Stacked) and isinstance(net, eqx.Module)
    assert net.axis == L
    assert net.stacked.w.axis_names == ("layer", "feature")
    assert net.stacked.b.shape == (4, FEAT)
    assert net.stacked.scale == 0.25 and net.stacked.name == "blk"
    # Each copy is the Module built from its own key (a Python loop), and unstacked() gives them back.
    copies = net.unstacked()
    assert len(copies) == 4
    for k, c in zip(keys, copies):
        ref = Layer(k, 0.25, name="blk")
        assert c.w.axis_names == ("feature",)
        _close(c.w, ref.w)
        _close(c.b, ref.b)
        assert c.scale == 0.25 and c.name == "blk"
    # Array fields equal jax.vmap of the constructor.
    ref = jax.vmap(lambda k: Layer(k).b)(keys)
    _close(net.stacked.b, ref)


def test_init_with_keyword_keys():
    net = distmap.Stacked.init(L, RawLayer)(key=_keys(seed=3))
    assert net.stacked.w.shape == (4, FEAT)
    _close(net.stacked.w, jax.vmap(lambda k: RawLayer(k).w)(_keys(seed=3)))


def test_init_key_count_mismatch_raises():
    with pytest.raises(errors.AxisSizeError, match="'layer'"):
        distmap.Stacked.init(L, RawLayer)(_keys(n=5))


def test_unnamed_field_without_the_stacked_axis_raises():
    bad = distmap.Stacked(RawLayer(_keys(n=1)[0]), L)  # w has shape (3,), not (4, 3)
    with pytest.raises(errors.AxisSizeError, match="'layer'"):
        bad.fold(jnp.ones(FEAT))


# ------------------------------------------------------------------------------- vmap


def test_vmap_applies_every_copy_to_the_same_input():
    net = distmap.Stacked.init(L, Layer)(_keys())
    x = _x()
    out = net.vmap(x, shift=0.1)
    assert out.axis_names == ("layer", "feature")
    _close(out, _stack_named([m(x, shift=0.1) for m in net.unstacked()]))


def test_vmap_broadcasts_unnamed_inputs():
    net = distmap.Stacked.init(L, RawLayer)(_keys(seed=1))
    x = jnp.linspace(-1.0, 1.0, FEAT)
    out = net.vmap(x)
    assert out.shape == (4, FEAT)
    _close(out, jnp.stack([m(x) for m in net.unstacked()]))
    # Even an unnamed input whose dim 0 has the stacked size is broadcast, not mapped.
    x4 = jnp.linspace(-1.0, 1.0, 4 * FEAT).reshape(4, FEAT)
    out = net.vmap(x4)
    _close(out, jnp.stack([m(x4) for m in net.unstacked()]))
    assert out.shape == (4, 4, FEAT)


def test_vmap_maps_named_input_that_carries_the_stacked_axis():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=2))
    xs = distmap.named(jnp.arange(FEAT * 4, dtype=jnp.float32).reshape(FEAT, 4) / 10.0, ("feature", "layer"))
    out = net.vmap(xs)
    per = [m(distmap.named(xs.array[:, i], "feature")) for i, m in enumerate(net.unstacked())]
    _close(out, _stack_named(per))


def test_vmap_ensemble_of_equinox_linear():
    net = distmap.Stacked.init(Axis("ens", 3), eqx.nn.Linear)(FEAT, 2, key=_keys(n=3, seed=4))
    x = jnp.ones(FEAT)
    out = net.vmap(x)
    assert out.shape == (3, 2)
    _close(out, jnp.stack([m(x) for m in net.unstacked()]))
    _close(out, jax.vmap(lambda w, b: w @ x + b)(net.stacked.weight, net.stacked.bias))


# ------------------------------------------------------------------------- fold, scan


def _loop(net, x, **kw):
    for m in net.unstacked():
        x = m(x, **kw)
    return x


def test_fold_equals_python_loop():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=5))
    x = _x(0.3)
    out = net.fold(x, shift=0.2)
    assert out.axis_names == ("feature",)
    _close(out, _loop(net, x, shift=0.2))
    # and with a positional extra argument
    _close(net.fold(x, 0.2), _loop(net, x, shift=0.2))


def test_fold_unnamed():
    net = distmap.Stacked.init(L, RawLayer)(_keys(seed=6))
    x = jnp.linspace(0.0, 1.0, FEAT)
    _close(net.fold(x), _loop(net, x))


def test_scan_equals_python_loop():
    net = distmap.Stacked.init(L, ScanLayer)(_keys(seed=7))
    x = _x(-0.2)
    carry, ys = net.scan(x)
    c, per = x, []
    for m in net.unstacked():
        c, y = m(c)
        per.append(y)
    _close(carry, c)
    assert ys["summary"].axis_names == ("layer",)
    _close(ys["summary"], _stack_named([y["summary"] for y in per]))
    assert ys["raw"].shape == (4, FEAT)
    _close(ys["raw"], jnp.stack([y["raw"] for y in per]))
    _close(ys["first"], jnp.stack([y["first"] for y in per]))


# ------------------------------------------------------------------------- jit, grad


def test_under_jit():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=8))
    x = _x(0.1)
    ref_vmap = _stack_named([m(x) for m in net.unstacked()])
    ref_fold = _loop(net, x)
    _close(eqx.filter_jit(lambda n, x: n.vmap(x))(net, x), ref_vmap)
    _close(eqx.filter_jit(lambda n, x: n.fold(x))(net, x), ref_fold)
    # Under jax.jit the float field becomes a rank-0 array: shared by every copy, not stacked.
    _close(jax.jit(lambda n, x: n.fold(x))(net, x), ref_fold)
    _close(jax.jit(lambda n, x: n.vmap(x))(net, x), ref_vmap)
    carry, _ = jax.jit(lambda n, x: n.scan(x))(distmap.Stacked.init(L, ScanLayer)(_keys(seed=8)), x)
    assert carry.axis_names == ("feature",)


@pytest.mark.parametrize("method", ["vmap", "fold"])
def test_grad_equals_python_loop_grad(method):
    net = distmap.Stacked.init(L, Layer)(_keys(seed=9))
    x = _x(0.4)

    def loss(net, x):
        out = getattr(net, method)(x)
        return (out.array ** 2).sum()

    def loss_loop(net, x):
        outs = [m(x) for m in net.unstacked()] if method == "vmap" else [_loop(net, x)]
        return sum((o.array ** 2).sum() for o in outs)

    g_net, g_x = eqx.filter_jit(jax.grad(loss, argnums=(0, 1)))(net, x)
    r_net, r_x = eqx.filter_jit(jax.grad(loss_loop, argnums=(0, 1)))(net, x)
    _close(g_net.stacked.w, r_net.stacked.w, rtol=1e-4)
    _close(g_net.stacked.b, r_net.stacked.b, rtol=1e-4)
    _close(g_x, r_x, rtol=1e-4)
    np.testing.assert_allclose(loss(net, x), loss_loop(net, x), rtol=1e-5)


def test_grad_through_scan():
    net = distmap.Stacked.init(L, ScanLayer)(_keys(seed=10))
    x = _x()

    def loss(net):
        carry, ys = net.scan(x)
        return carry.array.sum() + ys["raw"].sum()

    def loss_loop(net):
        c, total = x, 0.0
        for m in net.unstacked():
            c, y = m(c)
            total = total + y["raw"].sum()
        return c.array.sum() + total

    _close(jax.grad(loss)(net).stacked.w, jax.grad(loss_loop)(net).stacked.w, rtol=1e-4)


# ------------------------------------------------------------- per-layer arguments


class NoisyLayer(eqx.Module):
    w: distmap.NamedArray

    def __init__(self, key):
        self.w = distmap.named(jax.random.normal(key, (FEAT,)), "feature")

    def __call__(self, x, mask=None, *, key):
        y = x * self.w + distmap.random.normal(key, x.axes) * 0.1
        return y if mask is None else y * mask

    def twice(self, x, mask=None, *, key):
        return self(self(x, mask, key=key), mask, key=key)


def test_fold_slices_a_stacked_key_and_a_per_layer_mask():
    net = distmap.Stacked.init(L, NoisyLayer)(_keys(seed=20))
    keys = _keys(seed=21)  # one key per layer
    named_mask = distmap.named(jnp.array([[1.0, 0.0, 1.0]] * 4) * jnp.arange(1, 5)[:, None], ("layer", "feature"))
    unnamed_mask = named_mask.array  # (layer, feature), sliced on dim 0
    x = _x()
    for mask in (named_mask, unnamed_mask):
        out = net.fold(x, distmap.named(mask, ("layer", "feature")) if mask is unnamed_mask else mask, key=keys)
        h = x
        for i, m in enumerate(net.unstacked()):
            h = m(h, named_mask["layer", i], key=keys[i])
        _close(out, h)
    # a mask without the layer axis goes whole to every layer
    shared = distmap.named(jnp.array([1.0, 0.5, 0.0]), "feature")
    h = x
    for i, m in enumerate(net.unstacked()):
        h = m(h, shared, key=keys[i])
    _close(net.fold(x, shared, key=keys), h)


def test_fold_via_scan_via_vmap_via_run_a_chosen_method():
    net = distmap.Stacked.init(L, NoisyLayer)(_keys(seed=22))
    keys = _keys(seed=23)
    x = _x(0.2)
    h = x
    for i, m in enumerate(net.unstacked()):
        h = m.twice(h, key=keys[i])
    _close(net.fold_via(NoisyLayer.twice)(x, key=keys), h)

    def with_output(layer, x, *, key):
        y = layer(x, key=key)
        return y, y.sum("feature")

    carry, ys = net.scan_via(with_output)(x, key=keys)
    h, per = x, []
    for i, m in enumerate(net.unstacked()):
        h, y = with_output(m, h, key=keys[i])
        per.append(y)
    _close(carry, h)
    _close(ys, _stack_named(per))
    one_key = jax.random.key(5)  # vmap_via: inputs are broadcast to every copy
    out = net.vmap_via(lambda m, x, key: m(x, key=key))(x, one_key)
    _close(out, _stack_named([m(x, key=one_key) for m in net.unstacked()]))


def test_get_layer_and_unstacked_give_plain_modules():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=24), 0.25)
    layers = net.unstacked()
    for i in (0, 2, -1):
        layer = net.get_layer(i)
        assert isinstance(layer, Layer) and layer.w.axis_names == ("feature",) and layer.b.shape == (FEAT,)
        _close(layer.w, layers[i].w)
        _close(layer.b, layers[i].b)
    with pytest.raises(IndexError, match=r"get_layer\(4\): the stack has 4 layers along 'layer'"):
        net.get_layer(4)
    with pytest.raises(TypeError, match=r"expected an int layer index"):
        net.get_layer("0")


@pytest.mark.parametrize("unroll", [2, True])
def test_unroll_keeps_the_numbers_and_reaches_lax_scan(unroll):
    keys = _keys(seed=25)
    net = distmap.Stacked.init(L, Layer)(keys)
    unrolled = distmap.Stacked.init(L, Layer, unroll=unroll)(keys)
    x = _x()
    _close(unrolled.fold(x), net.fold(x))
    eqns = [e for e in jax.make_jaxpr(lambda n, x: n.fold(x))(unrolled, x).eqns if e.primitive.name == "scan"]
    assert eqns[0].params["unroll"] == (L.size if unroll is True else unroll)  # jax records True as the length


@pytest.mark.parametrize("policy", [None, True, "layer", "carry", 2])
def test_gradient_checkpointing_keeps_the_gradients(policy):
    keys = _keys(seed=26)
    plain = distmap.Stacked.init(L, Layer)(keys)
    ck = distmap.Stacked.init(L, Layer, checkpoint=policy)(keys)
    assert ck.checkpoint == distmap._src.map.checkpoint.as_checkpoint(policy)
    x = _x(0.1)
    loss = lambda n: (n.fold(x).array ** 2).sum()  # noqa: E731
    g1, g2 = eqx.filter_grad(loss)(plain), eqx.filter_jit(eqx.filter_grad(loss))(ck)
    assert ("remat" in str(jax.make_jaxpr(loss)(ck))) == (policy is not None)
    _close(g2.stacked.w, g1.stacked.w, rtol=1e-4)
    _close(g2.stacked.b, g1.stacked.b, rtol=1e-4)
    # Haliax's keyword works too
    assert distmap.Stacked.init(L, Layer, gradient_checkpointing=policy)(keys).checkpoint == ck.checkpoint


# --------------------------------------------------------------------- init forms


class HaxStyle(eqx.Module):
    named: distmap.NamedArray
    array: jax.Array
    static: int = eqx.field(static=True)

    @staticmethod
    def init(named, array, static):
        return HaxStyle(named=named, array=array, static=static)

    def __call__(self, x):
        return x + self.named + self.array + self.static


class ClassInit(eqx.Module):
    w: jax.Array

    @classmethod
    def init(cls, key, width):
        return cls(jax.random.normal(key, (width,)))


def test_init_uses_a_static_or_class_method_init_as_haliax_does():
    block, e = Axis("block", 4), Axis("E", 5)
    named = distmap.named(jax.random.uniform(jax.random.key(0), (4, 5)), (block, e))
    m = distmap.Stacked.init(block, HaxStyle)(named=named, array=jnp.ones(4), static=1)
    assert m.stacked.named.axes == (block, e) and m.stacked.array.shape == (4,) and m.stacked.static == 1
    for i, layer in enumerate(m.unstacked()):
        assert layer.array.shape == () and layer.static == 1
        _close(layer.named, named["block", i])
    c = distmap.Stacked.init(L, ClassInit)(_keys(seed=27), 3)
    _close(c.stacked.w, jax.vmap(lambda k: ClassInit.init(k, 3).w)(_keys(seed=27)))
    # today's form, and a plain function building the module, keep working
    f = distmap.Stacked.init(L, lambda key: RawLayer(key))(_keys(seed=28))
    _close(f.stacked.w, distmap.Stacked.init(L, RawLayer)(_keys(seed=28)).stacked.w)


def test_a_single_key_is_refused_with_the_fix():
    with pytest.raises(errors.MappingError) as info:
        distmap.Stacked.init(Axis("layer", 3), RawLayer)(jax.random.key(0))
    assert "Stacked.init: args[0] is a single PRNG key" in str(info.value)
    assert "jax.random.split(key, 3)" in str(info.value) and "identical" in str(info.value)
    with pytest.raises(errors.MappingError, match=r"kwargs\['key'\] looks like a single raw PRNG key \(uint32\[2\]\)"):
        distmap.Stacked.init(Axis("layer", 3), RawLayer)(key=jax.random.PRNGKey(0))  # raw uint32[2] key
    with pytest.raises(errors.MappingError, match=r"BlockSeq.init: args\[0\] is a single PRNG key"):
        distmap.BlockSeq.init(Axis("layer", 3), RawLayer)(jax.random.key(0))
    # identical copies on purpose: say so with a spec
    same = distmap.Stacked.init(Axis("layer", 3), RawLayer, args=(None,))(jax.random.key(0))
    _close(same.stacked.w[0], same.stacked.w[2])


def test_a_module_that_is_not_callable_names_stacked_init():
    with pytest.raises(TypeError, match=r"Stacked.init: module must be an equinox Module class .*got int 3"):
        distmap.Stacked.init(L, 3)
    with pytest.raises(errors.AxisSelectorError, match=r"Stacked.init\(axis=...\): expected one axis to stack along, got 2"):
        distmap.Stacked.init({"layer": 2, "block": 3}, RawLayer)


def test_a_layer_that_changes_the_carry_axes_names_fold_the_layer_and_the_axes():
    class Widen(eqx.Module):
        w: distmap.NamedArray

        def __init__(self, key):
            self.w = distmap.named(jax.random.normal(key, (FEAT,)), "feature")

        def __call__(self, x):
            return (x * self.w).rename({"feature": "hidden"})

    net = distmap.Stacked.init(L, Widen)(_keys(seed=29))
    with pytest.raises(errors.MappingError) as info:
        net.fold(_x())
    msg = str(info.value)
    assert msg.startswith("Stacked.fold over 'layer': layer Widen.__call__ changed carry")
    assert "(('feature', 3),) -> (('hidden', 3),)" in msg


# ------------------------------------------------------------------ BlockSeq twin


def test_block_seq_gives_the_same_results_layer_by_layer():
    keys = _keys(seed=30)
    net = distmap.Stacked.init(L, NoisyLayer)(keys)
    seq = distmap.BlockSeq.init(L, NoisyLayer)(keys)
    assert len(seq.blocks) == 4
    for a, b in zip(seq.unstacked(), net.unstacked()):
        _close(a.w, b.w)
    x, layer_keys = _x(), _keys(seed=31)
    _close(seq.fold(x, key=layer_keys), net.fold(x, key=layer_keys), rtol=1e-5)
    carries = seq.carries(x, key=layer_keys)
    h = x
    for i, m in enumerate(net.unstacked()):
        h = m(h, key=layer_keys[i])
        _close(carries[i], h)
    # scan / vmap twins, and back to a Stacked
    scan_net = distmap.Stacked.init(L, ScanLayer)(keys)
    scan_seq = scan_net.as_block_seq()
    (c1, y1), (c2, y2) = scan_net.scan(x), scan_seq.scan(x)
    _close(c1, c2)
    _close(y1["summary"], y2["summary"])
    _close(y1["raw"], y2["raw"])
    _close(scan_net.vmap(x)[1]["raw"], scan_seq.vmap(x)[1]["raw"])
    restacked = seq.stack()
    _close(restacked.stacked.w, net.stacked.w)
    _close(restacked.fold(x, key=layer_keys), net.fold(x, key=layer_keys))


# ------------------------------------------------------------------ state dicts


def test_state_dict_names_per_layer_and_round_trips():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=32), 0.5)
    state = net.to_state_dict()
    assert sorted(state) == sorted(f"layers.{i}.{f}" for i in range(4) for f in ("w", "b"))
    _close(state["layers.2.w"], net.stacked.w.array[2])
    changed = {k: v + 1.0 for k, v in state.items()}
    back = net.from_state_dict(changed)
    _close(back.stacked.w.array, net.stacked.w.array + 1.0)
    assert back.stacked.w.axes == net.stacked.w.axes and back.stacked.scale == 0.5
    x = _x()
    _close(net.from_state_dict(state).fold(x), net.fold(x))
    # another prefix, and nested modules (equinox Linear inside a list)
    lin = distmap.Stacked.init(Axis("layer", 2), lambda key: [eqx.nn.Linear(3, 2, key=key)])(_keys(n=2, seed=33))
    sd = lin.to_state_dict(prefix="model.h")
    assert sorted(sd) == ["model.h.0.0.bias", "model.h.0.0.weight", "model.h.1.0.bias", "model.h.1.0.weight"]
    _close(lin.from_state_dict(sd, prefix="model.h").stacked[0].weight, lin.stacked[0].weight)


def test_state_dict_mismatches_are_refused():
    net = distmap.Stacked.init(L, Layer)(_keys(seed=34))
    state = net.to_state_dict()
    missing = {k: v for k, v in state.items() if k != "layers.3.b"}
    with pytest.raises(KeyError, match=r"'layers.3.b' is missing"):
        net.from_state_dict(missing)
    with pytest.raises(KeyError, match=r"'layers.4.w' is not a field of this 4-layer stack"):
        net.from_state_dict({**state, "layers.4.w": state["layers.0.w"]})
    with pytest.raises(KeyError, match=r"'layers.0.bias' is not a field"):
        net.from_state_dict({**state, "layers.0.bias": state["layers.0.b"]})
    with pytest.raises(errors.ShapeMismatchError, match=r"layers.\*.w stacks to shape \(4, 2\).*shape \(4, 3\)"):
        net.from_state_dict({**state, **{f"layers.{i}.w": jnp.ones(2) for i in range(4)}})


# ----------------------------------------------------------- per-call unroll, Haliax's names


def _scan_unroll(fn, *args):
    eqns = [e for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "scan"]
    return eqns[0].params["unroll"]


def test_unroll_per_call_overrides_the_stacks_and_is_not_passed_to_the_layer():
    net = distmap.Stacked.init(L, Layer, unroll=2)(_keys(seed=40))
    x = _x()
    assert _scan_unroll(lambda n, x: n.fold(x), net, x) == 2
    for unroll, recorded in [(True, L.size), (False, 1), (4, 4)]:
        assert _scan_unroll(lambda n, x: n.fold(x, unroll=unroll), net, x) == recorded
        assert _scan_unroll(lambda n, x: n.fold_via(Layer.__call__, unroll=unroll)(x), net, x) == recorded
        _close(net.fold(x, unroll=unroll), net.fold(x))
    snet = distmap.Stacked.init(L, ScanLayer)(_keys(seed=41))
    assert _scan_unroll(lambda n, x: n.scan(x, unroll=True), snet, x) == L.size
    assert _scan_unroll(lambda n, x: n.scan_via(ScanLayer.__call__, unroll=False)(x), snet, x) == 1
    with pytest.raises(errors.MappingError, match=r"Stacked.fold\(unroll=...\): expected a positive int"):
        net.fold(x, unroll=0)
    # BlockSeq takes the same keyword (a Python loop is unrolled already) and checks it alike
    seq = net.as_block_seq()
    _close(seq.fold(x, unroll=True), net.fold(x), atol=1e-5)
    with pytest.raises(errors.MappingError, match=r"BlockSeq.fold\(unroll=...\)"):
        seq.fold(x, unroll=-1)


def test_block_and_gradient_checkpointing_are_haliax_names():
    net = distmap.Stacked.init(L, Layer, gradient_checkpointing=distmap.ScanCheckpointPolicy(nested=2),
                               prevent_cse=True)(_keys(seed=42))
    assert net.Block == net.Layers == net.axis == L
    assert net.gradient_checkpointing == distmap.ScanCheckpointPolicy(nested=2, prevent_cse=True)
    seq = net.as_block_seq()
    assert seq.Block == L and seq.checkpoint == net.checkpoint and seq.stack().checkpoint == net.checkpoint


@pytest.mark.parametrize("policy", [True, "layer", 2, distmap.ScanCheckpointPolicy(save_block_internals=["t"])])
def test_block_seq_checkpoints_each_layer_as_stacked_does(policy):
    keys = _keys(seed=43)
    stacked = distmap.Stacked.init(L, Layer, checkpoint=policy)(keys)
    seq = distmap.BlockSeq.init(L, Layer, gradient_checkpointing=policy)(keys)
    x = _x(0.2)
    loss = lambda n: (n.fold(x).array ** 2).sum()  # noqa: E731
    g_seq, g_stacked = eqx.filter_grad(loss)(seq), eqx.filter_grad(loss)(stacked)
    assert "remat" in str(jax.make_jaxpr(loss)(seq))
    for i in range(L.size):
        _close(g_seq.blocks[i].w, g_stacked.stacked.w["layer", i], rtol=1e-4)
    assert len(seq.carries(x)) == L.size  # the debugging view runs without checkpointing
