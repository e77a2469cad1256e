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
