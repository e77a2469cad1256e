"""``distmap.scan`` / ``distmap.fold``: loops over a named axis, checked against ``jax.lax.scan`` and Python loops,
with gradients through every checkpointing policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import distmap
from distmap import Axis, errors

L, F, B = Axis("layer", 4), Axis("feature", 3), Axis("batch", 2)


def _rand(axes, seed=0):
    shape = tuple(a.size for a in axes)
    return distmap.named(jax.random.normal(jax.random.key(seed), shape), axes)


def _close(a, b, **kw):
    kw = {"rtol": 1e-5, "atol": 1e-6, **kw}
    if isinstance(a, distmap.NamedArray) or isinstance(b, distmap.NamedArray):
        assert a.axis_names == b.axis_names, (a.axis_names, b.axis_names)
        a, b = a.array, b.array
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


# ------------------------------------------------------------------ against jax.lax.scan


def test_scan_slices_named_args_wherever_the_axis_sits_and_matches_lax_scan():
    w = _rand((F, L), seed=1)  # the looped axis is not first
    x0 = _rand((B, F), seed=2)

    def step(h, w):
        h = distmap.tanh(h * w)
        return h, h.sum("feature")

    carry, ys = distmap.scan(step, L)(x0, w)
    assert carry.axis_names == ("batch", "feature") and ys.axis_names == ("layer", "batch")

    def ref_step(h, w_row):
        h = jnp.tanh(h * w_row)
        return h, h.sum(1)

    rc, rys = jax.lax.scan(ref_step, x0.array, w.array.T)
    _close(carry.array, rc)
    _close(ys.array, rys)


def test_unnamed_args_follow_specs_and_scalars_are_not_scanned():
    xs = jnp.arange(12.0).reshape(3, 4)  # scanned on dim 1 by spec
    mask = jnp.array([1.0, 0.0, 1.0, 1.0])  # rank 1: scanned on dim 0 by default
    table = jnp.ones((5,))  # passed whole (spec None)

    def step(c, x, m, table, scale, *, bias):
        c = c + (x * m).sum() * scale + bias + table.sum()
        return c, x * m

    scanned = distmap.scan(step, "layer", args=(1, 0, None))
    carry, ys = scanned(jnp.float32(0.0), xs, mask, table, 2.0, bias=jnp.float32(0.5))
    ref_c, ref_y = 0.0, []
    for i in range(4):
        ref_c = ref_c + (xs[:, i] * mask[i]).sum() * 2.0 + 0.5 + 5.0
        ref_y.append(xs[:, i] * mask[i])
    _close(carry, ref_c)
    _close(ys, jnp.stack(ref_y))
    assert ys.shape == (4, 3)  # unnamed ys stack at dim 0


def test_fold_equals_a_python_loop_and_kwargs_are_sliced():
    w = _rand((L, F), seed=3)
    per = jax.random.split(jax.random.key(9), L.size)  # per-step keys (typed, rank 1)

    def layer(h, w, *, key):
        return h * w + distmap.random.normal(key, (F,)) * 0.1

    out = distmap.fold(layer, L)(distmap.ones(F), w, key=per)
    h = distmap.ones(F)
    for i in range(L.size):
        h = layer(h, w["layer", i], key=per[i])
    _close(out, h)


def test_reverse_and_unroll_give_the_same_numbers():
    w = _rand((L, F), seed=4)
    step = lambda h, w: (distmap.sin(h + w), h.sum())  # noqa: E731
    c, ys = distmap.scan(step, L, reverse=True)(distmap.zeros(F), w)
    h, rys = distmap.zeros(F), [None] * L.size
    for i in reversed(range(L.size)):
        h, rys[i] = step(h, w["layer", i])
    _close(c, h)
    _close(ys.array, jnp.stack([y.array for y in rys]))
    for unroll in (2, True):
        c2, ys2 = distmap.scan(step, L, unroll=unroll)(distmap.zeros(F), w)
        c1, ys1 = distmap.scan(step, L)(distmap.zeros(F), w)
        _close(c2, c1)
        _close(ys2, ys1)
    eqn = [e for e in jax.make_jaxpr(lambda w: distmap.scan(step, L, unroll=2)(distmap.zeros(F), w))(w).eqns
           if e.primitive.name == "scan"][0]
    assert eqn.params["unroll"] == 2


def test_an_axis_no_argument_carries_needs_a_size():
    out = distmap.fold(lambda c: c * 2.0, Axis("step", 5))(jnp.float32(1.0))
    assert float(out) == 32.0
    with pytest.raises(errors.MappingError, match=r"fold over 'step': no argument has axis 'step'.*Axis\('step', n\)"):
        distmap.fold(lambda c: c * 2.0, "step")(jnp.float32(1.0))


def test_ys_of_python_structures_and_named_and_unnamed_mixtures():
    w = _rand((L, F), seed=5)

    def step(h, w):
        h = h + w
        return h, {"named": h, "raw": h.array[0], "pair": (h.sum(), jnp.ones(2))}

    _, ys = distmap.scan(step, L)(distmap.zeros(F), w)
    assert ys["named"].axis_names == ("layer", "feature")
    assert ys["raw"].shape == (4,) and ys["pair"][1].shape == (4, 2)
    assert ys["pair"][0].axis_names == ("layer",)
    _close(ys["named"].array, jnp.cumsum(w.array, axis=0))


def test_under_jit_and_vmap_inside_scan_keeps_names():
    w = _rand((L, F), seed=6)
    x = _rand((B, F), seed=7)

    def layer(h, w):  # h has a batch axis: vmap over it inside the loop
        return distmap.vmap(lambda row: distmap.tanh(row * w) + distmap.pmean(row, "batch"), "batch")(h)

    out = jax.jit(lambda x, w: distmap.fold(layer, L)(x, w))(x, w)
    h = x.array
    for i in range(L.size):
        h = jnp.tanh(h * w.array[i]) + h.mean(0, keepdims=True)
    assert out.axis_names == ("batch", "feature")
    _close(out.array, h)


# ------------------------------------------------------------------------- errors


def test_sizes_that_disagree_name_both_arguments():
    with pytest.raises(errors.AxisSizeError, match=r"^scan over 'layer': the loop's length differs between its sliced arguments: a has 'layer' of size 4, but b\['m'\] has 'layer' of size 3\."):
        distmap.scan(lambda c, a, b: (c, None), L)(0.0, _rand((L, F)), {"m": _rand((Axis("layer", 3),))})
    with pytest.raises(errors.AxisSizeError, match=r"^fold over 'layer': .* a has 'layer' of size 4, but mask has leading dimension 5\."):
        distmap.fold(lambda c, a, mask: c, "layer")(0.0, _rand((L, F)), mask=jnp.ones(5))
    with pytest.raises(errors.AxisSizeError, match=r"^fold over 'layer': axis 'layer' was given size 5 but has size 4 in a\b"):
        distmap.fold(lambda c, a: c, Axis("layer", 5))(0.0, _rand((L, F)))


def test_errors_name_parameters_and_module_fields():
    import equinox as eqx

    class Foo(eqx.Module):
        my_array: jax.Array

    with pytest.raises(errors.AxisSizeError, match=r"x has leading dimension 4, but foo.my_array has leading dimension 3"):
        distmap.scan(lambda c, x, foo: (c, x), "layer")(0.0, jnp.ones(4), Foo(jnp.zeros((3, 2))))
    with pytest.raises(errors.AxisSizeError, match=r"xs\[0\] has leading dimension 4, but xs\[1\] has leading dimension 3"):  # *args: positions
        distmap.scan(lambda c, *xs: (c, xs[0]), "layer")(0.0, jnp.ones(4), jnp.ones(3))


def test_haliax_spellings_is_scanned_and_remat():
    xs, table = jnp.arange(8.0).reshape(4, 2), jnp.ones(3)
    c, ys = distmap.scan(lambda c, x, t: (c + x.sum() + t.sum(), x), "layer",
                         is_scanned=lambda leaf: leaf.shape != (3,))(0.0, xs, table)
    assert float(c) == float(xs.sum() + 4 * 3) and ys.shape == (4, 2)
    assert float(distmap.fold(lambda c, x: c + x.sum(), "layer", is_scanned=True, remat=True)(0.0, xs)) == float(xs.sum())
    with pytest.raises(errors.MappingError, match=r"pass checkpoint= or remat="):
        distmap.fold(lambda c: c, "layer", checkpoint="carry", remat=True)
    with pytest.raises(errors.MappingError, match=r"pass default= or is_scanned="):
        distmap.fold(lambda c: c, "layer", default=None, is_scanned=True)


def test_specs_bind_to_the_parameters_after_the_carry():
    xs = jnp.arange(12.0).reshape(3, 4)
    # kwargs={"x": 1} names the parameter x, whether the call passes it by position or by keyword
    by_pos = distmap.scan(lambda c, x: (c, x), "layer", kwargs={"x": 1})(0.0, xs)[1]
    by_kw = distmap.scan(lambda c, x: (c, x), "layer", kwargs={"x": 1})(0.0, x=xs)[1]
    np.testing.assert_array_equal(by_pos, xs.T)
    np.testing.assert_array_equal(by_kw, xs.T)
    with pytest.raises(errors.MappingError, match=r"^fold over 'layer': s is a float .*cannot be mapped on dim 0"):
        distmap.fold(lambda c, x, s: c, "layer", args=(0, 0))(0.0, xs, 2.0)


def test_a_carry_that_changes_its_axes_names_the_fold_the_function_and_both_axes():
    def widen(h, w):
        return (h * w).rename({"feature": "hidden"})

    with pytest.raises(errors.MappingError) as info:
        distmap.fold(widen, L)(distmap.ones(F), _rand((L, F)))
    msg = str(info.value)
    assert "fold over 'layer'" in msg and "widen" in msg
    assert "(('feature', 3),) -> (('hidden', 3),)" in msg and "before -> after" in msg

    with pytest.raises(errors.MappingError, match=r"changed the structure of the carry"):
        distmap.fold(lambda h, w: (h, h), L)(distmap.ones(F), _rand((L, F)))
    with pytest.raises(errors.MappingError, match=r"changed carry\[1\]: an unnamed array of shape \(3,\) -> an unnamed array of shape \(1,\)"):
        distmap.fold(lambda c, w: (c[0], c[1][:1]), L)((distmap.ones(F), jnp.ones(3)), _rand((L, F)))


def test_scan_needs_a_pair_and_a_y_without_the_looped_axis():
    with pytest.raises(errors.MappingError, match=r"scan over 'layer': .* must return a pair \(carry, y\).*distmap.fold"):
        distmap.scan(lambda h, w: h * w, L)(distmap.ones(F), _rand((L, F)))
    with pytest.raises(errors.MappingError, match=r"returned a y with axis 'layer' already"):
        distmap.scan(lambda h, w: (h, distmap.zeros(L)), L)(distmap.ones(F), _rand((L, F)))


def test_bad_arguments_are_refused_up_front():
    with pytest.raises(TypeError, match=r"scan: fn must be callable"):
        distmap.scan(3, L)
    with pytest.raises(errors.AxisSelectorError, match=r"expected one axis to loop over, got 2"):
        distmap.fold(lambda c: c, (L, F))
    with pytest.raises(errors.MappingError, match=r"unroll=...\): expected a positive int, True \(unroll fully\) or False"):
        distmap.fold(lambda c: c, L, unroll=0)
    with pytest.raises(errors.MappingError, match=r"checkpoint=...\): expected None, True \(keep only the carry\), 'none', 'layer', 'carry'"):
        distmap.fold(lambda c: c, L, checkpoint="sometimes")
    with pytest.raises(errors.MappingError, match=r"Checkpoint\(every=...\): expected a positive int"):
        distmap.Checkpoint(every=0)
    with pytest.raises(errors.MappingError, match=r"Checkpoint\(every=3\) must divide the 4 steps.*near sqrt\(4\): \[2"):
        distmap.fold(lambda h, w: h * w, L, checkpoint=3)(distmap.ones(F), _rand((L, F)))
    with pytest.raises(errors.MappingError, match=r"fold over .layer.: a has rank 1 here.*cannot be mapped on dim 2"):
        distmap.fold(lambda c, a: c, L, args=(2,))(0.0, jnp.ones(4))


# ------------------------------------------------------------- gradients, checkpointing

POLICIES = [None, "layer", "carry", 2, distmap.Checkpoint(every=2, save=("pre",)),
            distmap.Checkpoint(policy=jax.checkpoint_policies.everything_saveable)]


def _deep_layer(h, w, b):
    pre = checkpoint_name(distmap.dot(h, w, axis="feature"), "pre")  # (batch, hidden)
    return distmap.tanh(pre.rename({"hidden": "feature"}) + b) + h


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p)[:30])
def test_grads_through_fold_equal_a_python_loop_for_every_policy(policy):
    w = _rand((L, F, Axis("hidden", 3)), seed=11) * 0.5
    b = jax.random.normal(jax.random.key(12), (4, 3))  # unnamed, sliced per layer
    x = _rand((B, F), seed=13)

    def loss(w, b, x):
        return distmap.fold(_deep_layer, L, checkpoint=policy)(x, w, distmap.named(b, ("layer", "feature"))).array.sum()

    def loss_loop(w, b, x):
        h = x
        for i in range(L.size):
            h = _deep_layer(h, w["layer", i], distmap.named(b[i], "feature"))
        return h.array.sum()

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(w, b, x)
    r = jax.grad(loss_loop, argnums=(0, 1, 2))(w, b, x)
    # the policy reaches JAX: the loop body is under jax.checkpoint (remat) exactly when one is given
    assert ("remat" in str(jax.make_jaxpr(loss)(w, b, x))) == (policy is not None)
    np.testing.assert_allclose(float(loss(w, b, x)), float(loss_loop(w, b, x)), rtol=1e-5)
    for a, e in zip(g, r):
        _close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", [None, "carry", 2])
def test_grads_through_scan_with_ys(policy):
    w = _rand((L, F), seed=14)

    def step(h, w):
        h = distmap.sin(h * w) + h
        return h, (h * h).sum()

    def loss(w):
        c, ys = distmap.scan(step, L, checkpoint=policy)(distmap.ones(F), w)
        return c.array.sum() + ys.array.sum()

    def loss_ref(w):  # the same with a hand-written jax.lax.scan
        def s(h, wr):
            h = jnp.sin(h * wr) + h
            return h, (h * h).sum()

        c, ys = jax.lax.scan(s, jnp.ones(3), w.array)
        return c.sum() + ys.sum()

    _close(jax.grad(loss)(w).array, jax.grad(loss_ref)(w).array, rtol=1e-4)


def test_checkpointing_lowers_temporary_memory_of_the_backward_pass():
    n = 16
    layers, width = Axis("layer", n), Axis("feature", 32)  # activations outweigh parameters, as in training
    w = _rand((layers, width, Axis("hidden", 32)), seed=15) * 0.1
    x = _rand((Axis("batch", 256), width), seed=16)

    def layer(h, w):
        h2 = distmap.tanh(distmap.dot(h, w, axis="feature")).rename({"hidden": "feature"})
        return distmap.sin(h2 * 2.0) * h2 + h

    def temp(policy):
        loss = lambda w, x: distmap.fold(layer, layers, checkpoint=policy)(x, w).array.sum()  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(w, x).compile().memory_analysis().temp_size_in_bytes

    none, carry, every4 = temp(None), temp("carry"), temp(4)
    assert carry < none and every4 < carry, (none, carry, every4)


# ------------------------------------------------------------------------- on a mesh

import re  # noqa: E402

from jax.sharding import AxisType  # noqa: E402

Emb, Hid, Bat = Axis("embed", 6), Axis("hidden", 6), Axis("batch", 8)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _collectives(hlo: str) -> dict[str, int]:
    return {k: len(re.findall(rf"= [^=]*\b{k}(?:-start)?\(", hlo)) for k in COLLECTIVES}


def _contracting_layer(h, w):
    return distmap.tanh(distmap.dot(h, w, axis="embed")).rename({"hidden": "embed"})


def test_fold_over_layers_split_by_the_mapping_stays_split_and_matches_one_device(devices):
    w = _rand((L, Emb, Hid), seed=40) * 0.3
    x = _rand((Bat, Emb), seed=41)
    ref = distmap.fold(_contracting_layer, L)(x, w)  # one device
    mesh = distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Auto)
    mapping = {"batch": "data", "embed": "model"}
    ws, xs = distmap.shard(w, mapping, mesh), distmap.shard(x, mapping, mesh)
    assert {s.data.shape for s in ws.array.addressable_shards} == {(4, 3, 6)}  # each device: its half of embed
    with jax.set_mesh(mesh), distmap.axis_mapping(mapping):
        f = jax.jit(lambda x, w: distmap.fold(_contracting_layer, L)(x, w))
        out = f(xs, ws)
        hlo = f.lower(xs, ws).compile().as_text()
    _close(out, ref, rtol=1e-5, atol=1e-6)
    assert out.array.sharding.spec == jax.sharding.PartitionSpec("data", "model")
    # The contraction over the split embed axis asks for one all-reduce per step; the stack is never gathered.
    assert _collectives(hlo) == {**dict.fromkeys(COLLECTIVES, 0), "all-reduce": 1}, _collectives(hlo)


def test_elementwise_layers_on_an_explicit_mesh_need_no_collectives(devices):
    w = _rand((L, Emb), seed=42)
    x = _rand((Bat, Emb), seed=43)
    layer = lambda h, w: distmap.tanh(h * w) + h  # noqa: E731
    ref = distmap.scan(lambda h, w: (layer(h, w), h.sum("embed")), L)(x, w)
    mesh = distmap.make_mesh({"data": 4, "model": 2})
    mapping = {"batch": "data", "embed": "model"}
    with jax.set_mesh(mesh), distmap.axis_mapping(mapping):
        ws, xs = distmap.shard(w, mapping), distmap.shard(x, mapping)
        f = jax.jit(lambda x, w: distmap.scan(lambda h, w: (layer(h, w), h * 2.0), L)(x, w))
        carry, ys = f(xs, ws)
        hlo = f.lower(xs, ws).compile().as_text()
    _close(carry, ref[0])
    assert ys.axis_names == ("layer", "batch", "embed")
    assert ys.array.sharding.spec == jax.sharding.PartitionSpec(None, "data", "model")
    assert _collectives(hlo) == dict.fromkeys(COLLECTIVES, 0)


def test_the_looped_axis_must_stay_whole_on_a_mesh(devices):
    mesh = distmap.make_mesh({"data": 4, "model": 2})
    with pytest.raises(errors.MeshError, match=r"fold over 'layer': the axis mapping splits 'layer' over mesh axes \('model',\)"):
        distmap.fold(lambda h, w: h * w, L, mesh=mesh, axis_mapping={"layer": "model"})(distmap.ones(Emb), _rand((L, Emb)))
    with pytest.raises(errors.MeshError, match=r"scan\(mesh=...\): expected a jax.sharding.Mesh"):
        distmap.scan(lambda h, w: (h, h), L, mesh={"data": 4})


def test_vmap_inside_scan_inside_a_mesh_map_keeps_every_name(devices):
    heads = Axis("head", 2)
    w = _rand((L, Emb), seed=44)
    x = _rand((Bat, heads, Emb), seed=45)

    def per_example(row):  # row: (head, embed); a loop over layers, each vmapping over heads
        def layer(h, w):
            def one_head(hh):
                return distmap.tanh(hh * w) + distmap.pmean(hh, "batch") - distmap.pmean(hh, "head")

            return distmap.vmap(one_head, "head")(h)

        return distmap.fold(layer, L)(row, w)

    ref = distmap.vmap(per_example, "batch")(x)  # one device
    h = x.array
    for i in range(L.size):
        h = jnp.tanh(h * w.array[i]) + h.mean(0, keepdims=True) - h.mean(1, keepdims=True)
    _close(ref.array, h, rtol=1e-5)
    mesh = distmap.make_mesh({"data": 4, "model": 2})
    out = jax.jit(distmap.vmap(per_example, "batch", mesh=mesh, axis_mapping={"batch": "data"}))(x)
    assert out.axis_names == ("batch", "head", "embed")
    _close(out, ref, rtol=1e-5)
