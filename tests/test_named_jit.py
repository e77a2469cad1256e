"""The Haliax-style face: ``named_jit``, ``layout`` / ``visualize_shardings``, ``isclose`` / ``allclose`` /
``array_equal`` and ``NamedArray.take``."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import distmap
from distmap import errors


@pytest.fixture(scope="module")
def mesh42(devices):
    return distmap.make_mesh({"data": 4, "model": 2})


def _x(seed=0, **axes):
    shape = tuple(axes.values())
    return distmap.named(jax.random.normal(jax.random.key(seed), shape), tuple(axes))


# ------------------------------------------------------------------------ named_jit


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_named_jit_lays_out_outputs_by_name(kind, devices):
    mesh = distmap.make_mesh({"data": 4, "model": 2}, axis_types=kind)
    mapping = {"batch": "data", "hidden": "model"}
    x, w = _x(0, batch=8, feature=4), _x(1, feature=4, hidden=6)
    seen = []

    def f(x, w, scale):
        seen.append(distmap.current_axis_mapping())  # the mapping is current while fn traces
        return {"h": distmap.tanh(distmap.dot(x, w, axis="feature")) * scale, "n": scale}

    step = distmap.named_jit(f, mapping, mesh=mesh)
    out = step(x, w, 2.0)
    assert seen == [distmap.as_axis_mapping(mapping)]
    assert out["h"].array.sharding.is_equivalent_to(NamedSharding(mesh, P("data", "model")), 2)
    np.testing.assert_allclose(out["h"].array, np.tanh(x.array @ w.array) * 2.0, rtol=1e-5)
    assert out["n"] == 2.0
    step(x, w, 2.0)
    assert len(seen) == 1  # cached: same structure, same mapping
    step(x, w, 3.0)
    assert len(seen) == 2  # a Python scalar is static, as in equinox.filter_jit


def test_named_jit_in_and_out_mappings_and_the_context(mesh42):
    x = _x(2, batch=8, feature=4)
    f = distmap.named_jit(lambda x: x * 2.0, in_axis_mapping={"batch": "data"}, out_axis_mapping={"batch": "model"},
                          axis_mapping={}, mesh=mesh42)
    out = f(x)
    assert out.array.sharding.spec == P("model", None)
    # defaults from the context; a decorator form
    with distmap.axis_mapping({"feature": "model"}), jax.set_mesh(mesh42):
        @distmap.named_jit
        def g(x):
            return x + 1.0

        y = g(x)
    assert y.array.sharding.spec == P(None, "model")
    np.testing.assert_allclose(y.array, x.array + 1.0)
    np.testing.assert_allclose(out.array, x.array * 2.0)


def test_named_jit_takes_haliax_keyword_names(mesh42):
    x = _x(6, batch=8, feature=4)
    f = distmap.named_jit(lambda x: x * 2.0, axis_resources={}, in_axis_resources={"batch": "data"},
                          out_axis_resources={"feature": "model"}, mesh=mesh42)
    assert f(x).array.sharding.spec == P(None, "model")
    with pytest.raises(errors.MeshError, match=r"pass axis_mapping= or axis_resources="):
        distmap.named_jit(lambda x: x, {}, axis_resources={})


def test_named_jit_refusals(mesh42):
    with pytest.raises(errors.MeshError, match=r"named_jit: an axis mapping is given or current but no mesh"):
        distmap.named_jit(lambda x: x, {"batch": "data"})(_x(batch=8))
    with pytest.raises(errors.MeshError, match=r"named_jit\(mesh=...\): expected a jax.sharding.Mesh"):
        distmap.named_jit(lambda x: x, {"batch": "data"}, mesh={"data": 4})
    with pytest.raises(TypeError, match=r"named_jit: fn must be callable"):
        distmap.named_jit(3)


# --------------------------------------------------------------------------- layout


def test_layout_shows_which_axis_lies_over_which_mesh_axis_and_every_block(mesh42):
    x = distmap.shard(_x(3, batch=8, feature=6), {"batch": "data", "feature": "model"}, mesh42)
    text = distmap.layout(x)
    lines = text.splitlines()
    assert lines[0] == "NamedArray batch=8 feature=6 float32 on mesh {'data': 4, 'model': 2}"
    assert "batch" in lines[1] and "over 'data' (4 way): blocks of 2" in lines[1]
    assert "feature" in lines[2] and "over 'model' (2 way): blocks of 3" in lines[2]
    rows = [ln.split() for ln in lines[4:]]
    assert len(rows) == 8
    # each device's block agrees with JAX's own shard indices
    for dev_id, b, f in rows:
        shard = next(s for s in x.array.addressable_shards if s.device.id == int(dev_id))
        assert (f"{shard.index[0].start}:{shard.index[0].stop}", f"{shard.index[1].start}:{shard.index[1].stop}") == (b, f)
    assert {(b, f) for _, b, f in rows} == {(f"{i}:{i + 2}", f"{j}:{j + 3}") for i in (0, 2, 4, 6) for j in (0, 3)}
    # a replicated axis, a pytree, and the printing form
    tree = {"w": distmap.shard(_x(4, feature=6, hidden=2), {"hidden": "model"}, mesh42)}
    t = distmap.layout(tree)
    assert t.startswith("['w'] feature=6 hidden=2")
    assert re.search(r"\n  feature +6  whole on every device\n", t)
    assert "over 'model' (2 way): blocks of 1" in t


def test_layout_refusals_and_visualize(mesh42, capsys):
    with pytest.raises(TypeError, match=r"layout: expected an array or a pytree holding some"):
        distmap.layout({"a": 1})
    with pytest.raises(errors.MeshError, match=r"layout: the array is traced"):
        jax.jit(lambda x: distmap.layout(x) and x)(_x(batch=8))
    distmap.visualize_shardings(distmap.zeros({"batch": 2}))
    assert capsys.readouterr().out.startswith("NamedArray batch=2 float32 on 1 device(s)")


# ------------------------------------------------------------------ comparisons, take


def test_isclose_allclose_array_equal_by_name():
    a = _x(5, b=3, c=4)
    at = a.rearrange(("c", "b"))
    close = distmap.isclose(a, at + 1e-7)
    assert close.axis_names == ("b", "c") and bool(close.array.all())
    assert bool(distmap.allclose(at, a)) and bool(distmap.array_equal(a, at))
    assert not bool(distmap.allclose(a, a + 1e-3))
    assert bool(distmap.allclose(a, a + 1e-3, atol=1e-2))
    assert not bool(distmap.array_equal(a, a["c", 0]))  # different axes: False, not broadcast
    assert not bool(distmap.array_equal(a, a.rename({"c": "d"})))
    nan = distmap.named(jnp.array([jnp.nan, 1.0]), "b")
    assert distmap.isclose(nan, nan).array.tolist() == [False, True]
    assert distmap.isclose(nan, nan, equal_nan=True).array.tolist() == [True, True]
    assert bool(jax.jit(distmap.allclose)(a, at))
    with pytest.raises(errors.AxisSizeError, match=r"'c' has size 4"):
        distmap.allclose(a, _x(b=3, c=5))


def test_take_as_a_method():
    logits = distmap.named(jnp.arange(6.0).reshape(2, 3), ("batch", "vocab"))
    assert logits.take("vocab", -1).array.tolist() == [2.0, 5.0]
    labels = distmap.named(jnp.array([1, 0]), "batch")
    assert logits.take("vocab", labels).array.tolist() == distmap.take(logits, "vocab", labels).array.tolist()


# ------------------------------------------------------------- named_jit as Haliax's


def test_named_jit_without_a_mapping_is_a_plain_jit_keeping_layouts(mesh42):
    x = distmap.shard(_x(7, batch=8, feature=4), {"batch": "data"}, mesh42)
    y = distmap.named_jit(lambda x: x * 2.0)(x)  # no mapping given or current: jax.jit
    np.testing.assert_allclose(y.array, x.array * 2.0)
    assert y.array.sharding.is_equivalent_to(x.array.sharding, 2)
    # an out mapping alone lays out the result; the argument keeps its layout (no in mapping)
    z = distmap.named_jit(lambda x: x + 1.0, out_axis_resources={"feature": "model"}, mesh=mesh42)(x)
    assert z.array.sharding.spec == P(None, "model")
    # in_axis_mapping places the arguments: the function sees them split as asked
    seen = []
    f = distmap.named_jit(lambda x: (seen.append(jax.typeof(x.array).sharding.spec), x)[1],
                          in_axis_mapping={"feature": "model"}, axis_mapping={}, mesh=mesh42)
    f(_x(8, batch=8, feature=4))
    assert seen == [P(None, "model")]


def test_named_jit_donates_the_arguments_donate_args_marks(mesh42):
    def step(params, batch, *, opt):
        return jax.tree_util.tree_map(lambda p: p - 0.1, params), batch.sum(), opt * 2

    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh42):
        f = distmap.named_jit(step, donate_args=(True,), donate_kwargs={"opt": True})
        params, batch, opt = {"w": _x(9, feature=4), "b": jnp.ones(3)}, _x(10, batch=8), jnp.ones(2)
        new, total, opt2 = f(params, batch, opt=opt)
        assert params["w"].array.is_deleted() and params["b"].is_deleted() and opt.is_deleted()
        assert not batch.array.is_deleted()  # not marked: kept
        np.testing.assert_allclose(new["b"], np.full(3, 0.9), rtol=1e-6)
        # a prefix of callables picks leaves
        g = distmap.named_jit(lambda t: jax.tree_util.tree_map(lambda a: a * 1.0, t),
                              donate_args=(lambda leaf: leaf.ndim > 1,))
        small, big = jnp.ones(3), jnp.ones((2, 2))
        g((small, big))
        assert big.is_deleted() and not small.is_deleted()
        # eqx.filter_jit's shorthand
        h = distmap.named_jit(lambda a, b: a + b, donate="all-except-first")
        a, b = jnp.ones(3), jnp.ones(3)
        h(a, b)
        assert b.is_deleted() and not a.is_deleted()


def test_named_jit_lower_gives_jax_lowered_and_a_compiled_function(mesh42):
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh42):
        f = distmap.named_jit(lambda x, w: distmap.dot(x, w, axis="feature"), donate_args=(False, True))
        x, w = _x(11, batch=8, feature=4), _x(12, feature=4, hidden=2)
        lowered = f.lower(x, w)
        assert "dot_general" in lowered.as_text() and lowered.cost_analysis() is not None
        compiled = lowered.compile()
        assert compiled.memory_analysis().temp_size_in_bytes >= 0
        out = compiled(x, _x(12, feature=4, hidden=2))
        np.testing.assert_allclose(out.array, x.array @ w.array, rtol=1e-5)
        assert out.array.sharding.spec == P("data", None)


def test_visualize_shardings_of_a_plain_array_and_inside_jit(mesh42, capsys):
    distmap.visualize_shardings(jnp.ones((4, 2)))
    out = capsys.readouterr().out
    assert out.startswith("array dim0=4 dim1=2 float32") and "device  dim0   dim1" in out

    @jax.jit
    def f(x):
        distmap.visualize_shardings(x)  # printed once the program is compiled
        return x * 2

    f(distmap.shard(_x(13, batch=8, feature=2), {"batch": "data"}, mesh42))
    out = capsys.readouterr().out
    assert "batch=8 feature=2 float32 on mesh {'data': 4, 'model': 2}" in out
    assert "over 'data' (4 way): blocks of 2" in out


def test_dir_lists_the_lazily_loaded_names():
    names = dir(distmap)
    assert {"Stacked", "BlockSeq", "named_jit", "distributed", "ScanCheckpointPolicy", "set_mesh"} <= set(names)
    assert set(distmap.__all__) <= set(names)
