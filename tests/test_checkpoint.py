"""Checkpoint policies (``distmap/_src/map/checkpoint.py``): Haliax's ``ScanCheckpointPolicy`` and distmap's
``Checkpoint`` lowered to ``jax.checkpoint`` policies, checked against hand-written ``jax.lax.scan`` loops (what the
forward pass keeps for the backward pass), gradients against a Python loop, and compiled memory."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

import distmap
from distmap import Axis, ScanCheckpointPolicy, errors
from distmap._src.map.checkpoint import carry_name, inputs_name

L, E = Axis("layer", 4), Axis("E", 6)
P = jax.checkpoint_policies


def _layer(h, w):
    y = distmap.tree_checkpoint_name(distmap.sin(h + w), "sin")
    y = distmap.tree_checkpoint_name(distmap.cos(y + h), "cos")
    return y + h


def _ref_step(tag):
    """The same layer on raw arrays, with the carry and the inputs tagged as a distmap loop over 'layer' tags them."""

    def step(h, w):
        if tag:
            h, w = checkpoint_name(h, carry_name("layer")), checkpoint_name(w, inputs_name("layer"))
        y = checkpoint_name(jnp.sin(h + w), "sin")
        y = checkpoint_name(jnp.cos(y + h), "cos")
        return y + h, None

    return step


def _forward_outputs(loss, *args):
    """Shapes of the forward scan's outputs in the gradient's jaxpr: the final carry and what it keeps for backward."""
    eqn = next(e for e in jax.make_jaxpr(jax.grad(loss))(*args).jaxpr.eqns if e.primitive.name == "scan")
    return sorted(tuple(v.aval.shape) for v in eqn.outvars)


W = distmap.random.uniform(jax.random.key(0), (L, E))
H = distmap.random.uniform(jax.random.key(1), (E,))

# Haliax's policy, and the jax.checkpoint policy a hand-written loop would use for the same intent.
CASES = [
    (ScanCheckpointPolicy(disable=True), None, False),
    (True, "plain", False),
    (ScanCheckpointPolicy(simple=True), "plain", False),
    (ScanCheckpointPolicy(), P.save_only_these_names(carry_name("layer")), True),
    (ScanCheckpointPolicy(save_carries=False, save_block_internals=["cos"]), P.save_only_these_names("cos"), True),
    (ScanCheckpointPolicy(save_block_internals=["sin"]), P.save_only_these_names(carry_name("layer"), "sin"), True),
    (ScanCheckpointPolicy(save_carries=True, save_inputs=True, save_block_internals=True),
     P.save_anything_except_these_names(), True),
    (ScanCheckpointPolicy(save_carries=False, save_block_internals=True),
     P.save_anything_except_these_names(carry_name("layer"), inputs_name("layer")), True),
    ("recompute", "plain", False),
]


@pytest.mark.parametrize("policy,reference,tag", CASES, ids=lambda v: repr(v)[:60] if not callable(v) else "policy")
def test_scan_checkpoint_policy_keeps_what_a_hand_written_checkpointed_scan_keeps(policy, reference, tag):
    def loss(w, h):
        return distmap.fold(_layer, L, checkpoint=policy)(h, w).sum().array

    def loss_ref(w, h):
        step = _ref_step(tag)
        if reference is not None:
            step = jax.checkpoint(step, policy=None if reference == "plain" else reference)
        return jax.lax.scan(step, h, w)[0].sum()

    assert _forward_outputs(loss, W, H) == _forward_outputs(loss_ref, W.array, H.array)
    g, g_ref = jax.grad(loss)(W, H), jax.grad(loss_ref)(W.array, H.array)
    np.testing.assert_allclose(g.array, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field", ["save_carries", "save_inputs", "offload_block_internals"])
def test_offload_policies_are_save_and_offload_only_these_names(field, monkeypatch):
    value = ["sin"] if field == "offload_block_internals" else "offload"
    policy = ScanCheckpointPolicy(**{field: value})
    built = []
    real = jax.checkpoint_policies.save_and_offload_only_these_names

    def spy(**kw):
        built.append(kw)
        return real(**kw)

    monkeypatch.setattr(jax.checkpoint_policies, "save_and_offload_only_these_names", spy)
    policy.lower("layer", L.size)
    offloaded = {"save_carries": carry_name("layer"), "save_inputs": inputs_name("layer"), "offload_block_internals": "sin"}[field]
    assert offloaded in built[0]["names_which_can_be_offloaded"]
    assert (built[0]["offload_src"], built[0]["offload_dst"]) == ("device", "pinned_host")
    monkeypatch.undo()

    def loss(w, h):
        return distmap.fold(_layer, L, checkpoint=policy)(h, w).sum().array

    # the backward pass reads the offloaded values back: device_put to host, then to the device
    text = str(jax.make_jaxpr(jax.grad(loss))(W, H))
    assert "MemorySpace.Host" in text and "MemorySpace.Device" in text
    g = jax.jit(jax.grad(loss))(W, H)
    g_plain = jax.grad(lambda w, h: distmap.fold(_layer, L)(h, w).sum().array)(W, H)
    np.testing.assert_allclose(g.array, g_plain.array, rtol=1e-5, atol=1e-6)


def test_nested_is_outer_blocks_and_checkpoint_every_is_block_length():
    layers = Axis("layer", 6)
    w = distmap.random.uniform(jax.random.key(2), (layers, E))

    def outer_scan_length(policy):
        loss = lambda w, h: distmap.fold(_layer, layers, checkpoint=policy)(h, w).sum().array  # noqa: E731
        eqn = next(e for e in jax.make_jaxpr(loss)(w, H).jaxpr.eqns if e.primitive.name == "scan")
        return eqn.params["length"]

    assert outer_scan_length(ScanCheckpointPolicy(simple=True, nested=2)) == 2  # 2 blocks of 3
    assert outer_scan_length(distmap.Checkpoint(every=3)) == 2  # blocks of 3: the same loop
    assert outer_scan_length(ScanCheckpointPolicy(nested=3)) == 3
    assert outer_scan_length(ScanCheckpointPolicy(nested=True)) in (2, 3)  # the divisor of 6 nearest sqrt(6)
    assert outer_scan_length("nested") == outer_scan_length(ScanCheckpointPolicy(nested=True))
    with pytest.raises(errors.MappingError, match=r"ScanCheckpointPolicy\(nested=4\) must divide the 6 steps"):
        distmap.fold(_layer, layers, checkpoint=ScanCheckpointPolicy(nested=4))(H, w)


def test_from_bool_or_str_and_the_names_a_policy_is_given_by():
    f = ScanCheckpointPolicy.from_bool_or_str
    assert f(True) == ScanCheckpointPolicy(simple=True)
    assert f(False).disable and f("nested").nested is True
    assert f("offload") == ScanCheckpointPolicy(save_carries="offload", save_inputs="offload")
    assert f("recompute") == f("full") == ScanCheckpointPolicy(save_carries=False)
    assert f("save_all") == ScanCheckpointPolicy(save_inputs=True, save_block_internals=True)
    with pytest.raises(errors.MappingError, match=r"from_bool_or_str: expected True, False or one of"):
        f("sometimes")
    # True means what it means in Haliax: only the carry is kept
    stack = distmap.Stacked.init(L, _Mlp, gradient_checkpointing=True)(jax.random.split(jax.random.key(0), L.size))
    assert stack.checkpoint == distmap.Checkpoint() and stack.gradient_checkpointing is stack.checkpoint


class _Mlp(eqx.Module):
    w1: distmap.NamedArray
    w2: distmap.NamedArray

    def __init__(self, key, width=32, hidden=64):
        k1, k2 = jax.random.split(key)
        self.w1 = distmap.random.normal(k1, {"feature": width, "hidden": hidden}) * 0.1
        self.w2 = distmap.random.normal(k2, {"hidden": hidden, "out": width}) * 0.1

    def __call__(self, h):
        u = distmap.tanh(distmap.dot(h, self.w1, axis="feature"))
        return distmap.dot(distmap.sin(u) * u, self.w2, axis="hidden").rename({"out": "feature"}) + h


def test_gradient_checkpointing_true_costs_the_memory_of_the_carry_only_policy():
    layers = Axis("layer", 6)
    keys = jax.random.split(jax.random.key(3), layers.size)
    x = distmap.random.normal(jax.random.key(4), {"batch": 128, "feature": 32})
    loss = lambda s, x: s.fold(x).sum().array  # noqa: E731

    def temp(**kw):
        stack = distmap.Stacked.init(layers, _Mlp, **kw)(keys)
        return eqx.filter_jit(eqx.filter_grad(loss)).lower(stack, x).compile().compiled.memory_analysis().temp_size_in_bytes

    s = distmap.Stacked.init(layers, _Mlp)(keys)
    w1, w2 = s.stacked.w1.array, s.stacked.w2.array

    def hand(w1, w2, x):  # the carry-only policy written by hand: jax.lax.scan(jax.checkpoint(step)) on raw arrays
        def step(h, ws):
            u = jnp.tanh(h @ ws[0])
            return (jnp.sin(u) * u) @ ws[1] + h, None

        return jax.lax.scan(jax.checkpoint(step), x, (w1, w2))[0].sum()

    hand_temp = jax.jit(jax.grad(hand, argnums=(0, 1))).lower(w1, w2, x.array).compile().memory_analysis().temp_size_in_bytes
    true, layer = temp(gradient_checkpointing=True), temp(checkpoint="layer")
    assert true == hand_temp, (true, hand_temp)  # was "layer"'s before Haliax's meaning was taken
    assert true < layer, (true, layer)


def test_tree_checkpoint_name_tags_every_array_of_a_tree():
    tree = {"a": distmap.ones(E), "b": (jnp.ones(2), 3.0, "static")}
    def tag(a, b):
        t = distmap.tree_checkpoint_name({"a": a, "b": (b, 3.0, "static")}, "kept")
        assert t["b"][1:] == (3.0, "static")  # non-arrays pass untouched
        return t["a"], t["b"][0]

    out = jax.make_jaxpr(tag)(tree["a"], tree["b"][0])
    assert str(out).count("name=kept") == 2  # the NamedArray's array and the unnamed one; the rest untouched
    again = distmap.tree_checkpoint_name(tree, "kept")
    assert again["b"][1:] == (3.0, "static") and distmap.array_equal(again["a"], tree["a"])
