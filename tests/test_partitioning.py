"""Haliax's partitioning helpers (``distmap/_src/partitioning.py``): ``auto_sharded`` and the constraint ``dot``,
``einsum`` and ``random.*`` put on their results under a context mapping, checked against the same program written
with ``jax.lax.with_sharding_constraint`` by hand (the compiled collectives must be the same); ``set_mesh``."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import distmap

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _collectives(hlo: str) -> dict[str, int]:
    return {k: len(re.findall(rf"= [^=]*\b{k}(?:-start)?\(", hlo)) for k in COLLECTIVES}


@pytest.fixture(scope="module")
def mesh42(devices):
    return distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Auto)


def test_auto_sharded_is_a_no_op_without_a_mapping_or_a_mesh(mesh42):
    x = distmap.zeros({"batch": 8})
    assert distmap.auto_sharded(x) is x
    with distmap.axis_mapping({"batch": "data"}):
        assert distmap.auto_sharded(x) is x  # no mesh
    with jax.set_mesh(mesh42):
        assert distmap.auto_sharded(x) is x  # no mapping
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh42):
        odd, raw = distmap.zeros({"batch": 6}), jnp.ones(8)
        y = distmap.auto_sharded({"x": x, "odd": odd, "raw": raw})
    assert y["x"].array.sharding.spec == P("data")
    assert y["odd"] is odd and y["raw"] is raw  # an uneven axis is left unconstrained; unnamed arrays alone


def test_dot_results_are_laid_out_by_the_context_mapping_as_a_hand_constrained_program(mesh42):
    # FSDP-style: parameters split along embed over data; the computation splits batch over data, mlp over model.
    params = {"embed": "data", "mlp": "model"}
    compute = {"batch": "data", "mlp": "model"}
    x = distmap.random.normal(jax.random.key(0), {"batch": 16, "embed": 32})
    w1 = distmap.random.normal(jax.random.key(1), {"embed": 32, "mlp": 64})
    w2 = distmap.random.normal(jax.random.key(2), {"mlp": 64, "embed": 32})
    x, w1, w2 = (distmap.shard(v, params, mesh42) for v in (x, w1, w2))

    def named(x, w1, w2):
        h = distmap.relu(distmap.dot(x, w1, axis="embed"))
        return distmap.dot(h, w2, axis="mlp")

    def by_hand(x, w1, w2):
        c = lambda a, *spec: jax.lax.with_sharding_constraint(a, NamedSharding(mesh42, P(*spec)))  # noqa: E731
        h = jax.nn.relu(c(x @ w1, "data", "model"))
        return c(h @ w2, "data", None)

    with distmap.axis_mapping(compute), jax.set_mesh(mesh42):
        hlo = jax.jit(named).lower(x, w1, w2).compile().as_text()
        out = jax.jit(named)(x, w1, w2)
    ref_hlo = jax.jit(by_hand).lower(x.array, w1.array, w2.array).compile().as_text()
    assert _collectives(hlo) == _collectives(ref_hlo)
    np.testing.assert_allclose(out.array, by_hand(x.array, w1.array, w2.array), rtol=1e-4, atol=1e-4)
    assert out.array.sharding.is_equivalent_to(NamedSharding(mesh42, P("data", None)), 2)  # as the mapping asks
    # the constraint is in the program: the result of each dot carries it
    with distmap.axis_mapping(compute), jax.set_mesh(mesh42):
        assert jax.jit(named).lower(x, w1, w2).as_text().count("sharding_constraint") == 2


def test_random_and_einsum_results_are_constrained_and_maps_are_left_alone(mesh42):
    with distmap.axis_mapping({"batch": "data", "feature": "model"}), jax.set_mesh(mesh42):
        r = distmap.random.normal(jax.random.key(3), {"batch": 8, "feature": 4})
        assert r.array.sharding.spec == P("data", "model")
        e = jax.jit(lambda a: distmap.einsum("batch feature, feature -> batch", a, distmap.ones({"feature": 4})))(r)
        assert e.array.sharding.spec == P("data")
        # inside a mesh vmap the arrays are per-device: no constraint is added there
        f = distmap.vmap(lambda row: distmap.dot(row, distmap.ones({"feature": 4}), axis="feature"), "batch")
        text = jax.jit(f).lower(r).as_text()
    assert "shard_map" in text or "sdy.manual_computation" in text
    np.testing.assert_allclose(jax.jit(f)(r).array, r.array.sum(1), rtol=1e-5)
