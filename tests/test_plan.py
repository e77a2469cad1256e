"""The call plan: what specs, sizes and axes mean, decided once and read by both lowerings.

Each case runs on one device and on a mesh and must give the same answer (or the same
error), and where it matters is checked against a hand-written ``jax.vmap`` nest.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distmap
from distmap import Axis, errors

from _trees import assert_same as _same

A, B = Axis("a", 3), Axis("b", 4)


@pytest.fixture(scope="module")
def mesh():
    return distmap.make_mesh({"data": 4, "model": 2})


def both(fn, axes, mesh, mapping, **options):
    """The one-device map and the mesh map of ``fn``."""
    return distmap.vmap(fn, axes, **options), distmap.vmap(fn, axes, mesh=mesh, axis_mapping=mapping, **options)


# ------------------------------------------------------------------ specs on the second level


def test_unnamed_default_spec_maps_both_levels_beside_a_named_input(mesh):
    x = distmap.random.normal(jax.random.key(0), (A, B))
    u = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    ref = jax.vmap(jax.vmap(lambda xv, uv: xv * uv.sum()))(x.array, u)
    for f in both(lambda xn, uu: xn * uu.sum(), (A, B), mesh, {"b": "data"}):
        out = f(x, u)
        assert out.axis_names == ("a", "b")
        np.testing.assert_allclose(out.array, ref, rtol=1e-6)


@pytest.mark.parametrize(
    "spec",
    [0, eqx.if_array(0), (lambda leaf: 0 if leaf.ndim else None)],
    ids=["int", "if_array", "callable"],
)
@pytest.mark.parametrize("as_", ["default", "args", "kwargs"])
def test_every_spec_kind_means_the_same_on_a_mesh(mesh, spec, as_):
    u = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    options = {"default": spec} if as_ == "default" else {"args": (spec,)} if as_ == "args" else {"kwargs": {"u": spec}}
    ref = jax.vmap(jax.vmap(lambda v: v * 2))(u)
    one, on_mesh = both(lambda u: u * 2, (A, B), mesh, {"b": "data", "a": "model"}, **options)
    _same(one(u), on_mesh(u))
    np.testing.assert_allclose(np.asarray(on_mesh(u)), ref)


def test_a_spec_of_the_inner_level_sees_the_leaf_as_that_level_does(mesh):
    seen = []

    def spec(leaf):
        seen.append(leaf.shape)
        return leaf.ndim - 1  # the last dimension, at every level

    u = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)  # a on dim 2, then b on dim 1
    one, on_mesh = both(lambda u: u + 1, (A, B), mesh, {"a": "model"}, default=spec)
    _same(one(u), on_mesh(u))
    assert seen[:2] == [(5, 4, 3), (5, 4)]
    np.testing.assert_allclose(np.asarray(one(u)), np.transpose(u, (2, 1, 0)) + 1)


def test_sizes_a_spec_disagrees_on_raise_the_same_error(mesh):
    x = distmap.zeros((A, B))
    u = np.zeros((3, 5))  # b would be 5
    for f in both(lambda xn, uu: xn, (A, B), mesh, {"b": "data"}):
        with pytest.raises(errors.AxisSizeError, match=r"'b' has size 4 in args\[0\] but size 5 in args\[1\]"):
            f(x, u)


# ------------------------------------------------------------------ specs bind to parameters


def test_kwargs_spec_binds_to_a_parameter_passed_by_position(mesh):
    x = distmap.zeros({"b": 4})
    u = np.arange(12.0).reshape(3, 4)  # "b" on dim 1
    for f in both(lambda x, u: x + u.sum(), "b", mesh, {"b": "data"}, kwargs={"u": 1}):
        np.testing.assert_allclose(f(x, u).array, u.sum(axis=0))


def test_args_spec_binds_to_a_parameter_passed_by_keyword(mesh):
    u = np.arange(12.0).reshape(3, 4)
    for f in both(lambda x, u: u * 2, "b", mesh, {"b": "data"}, args=(None, 1)):
        out = f(distmap.zeros({"c": 2}), u=u)
        np.testing.assert_allclose(np.asarray(out), (u * 2).T)


def test_var_args_and_var_kwargs_bind_by_the_call():
    def f(*xs, **kw):
        return xs[0] + xs[1] + kw["w"]

    u, v, w = np.ones((4,)), np.arange(8.0).reshape(2, 4), np.arange(4.0)
    out = distmap.vmap(f, "b", args=(0, 1), kwargs={"w": 0})(u, v, w=w)
    ref = jax.vmap(lambda a, b, c: a + b + c, in_axes=(0, 1, 0))(u, v, w)
    np.testing.assert_allclose(np.asarray(out), ref)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"args": (None, 0, 0)}, r"args\[2\] matches no argument of this call \(it passed 2 positional"),
        ({"kwargs": {"nope": 0}}, r"kwargs\['nope'\] matches no argument"),
        ({"args": (0,), "kwargs": {"x": 0}}, r"parameter 'x' has a spec in args\[0\] and another in kwargs\['x'\]"),
    ],
)
def test_specs_that_match_no_argument_are_refused(mesh, options, message):
    x, u = distmap.zeros({"b": 4}), np.zeros(4)
    for f in both(lambda x, u: x + u, "b", mesh, {"b": "data"}, **options):
        with pytest.raises(errors.MappingError, match=message):
            f(x, u)


@pytest.mark.parametrize("spec", [0, (lambda leaf: 0)])
def test_an_int_spec_on_a_python_scalar_is_refused(mesh, spec):
    for f in both(lambda x, s: x * s, "b", mesh, {"b": "data"}, args=(None, spec)):
        with pytest.raises(errors.MappingError, match=r"args\[1\] is a float .* cannot be mapped on dim 0"):
            f(distmap.zeros({"b": 4}), 0.5)


# ------------------------------------------------------------------ PRNG keys


def test_typed_keys_rank_zero_are_shared_and_a_batch_of_them_is_mapped(mesh):
    key = jax.random.key(0)
    draw = lambda k, x: x + jax.random.normal(k, ())  # noqa: E731
    x = distmap.zeros({"b": 4})
    for f in both(draw, "b", mesh, {"b": "data"}):
        out = np.asarray(f(key, x).array)
        assert np.allclose(out, out[0])  # one key shared: the same draw everywhere
        keys = jax.random.split(key, 4)
        out = np.asarray(f(keys, x).array)
        np.testing.assert_allclose(out, jax.vmap(lambda k: jax.random.normal(k, ()))(keys), rtol=1e-6)


def test_raw_keys_are_uint32_arrays_and_mapped_like_any_array():
    raw = jax.random.PRNGKey(0)  # shape (2,)
    out = distmap.vmap(lambda k: k + 0, "b")(raw)
    assert np.asarray(out).shape == (2,)  # mapped on dim 0, as the README says
    shared = distmap.vmap(lambda k, x: x + jax.random.normal(k, ()), "b", args=(None,))(raw, distmap.zeros({"b": 3}))
    assert np.allclose(shared.array, shared.array[0])


# ------------------------------------------------------------------ compile like jax.jit


class _Compiles:
    """Counts XLA compilations through jax.monitoring (public, on every supported JAX)."""

    count = 0
    active = False

    @classmethod
    def listener(cls, event: str, duration: float, **_: object) -> None:
        if cls.active and event == "/jax/core/compile/backend_compile_duration":
            cls.count += 1


jax.monitoring.register_event_duration_secs_listener(_Compiles.listener)


def compiles(thunk) -> int:
    _Compiles.count, _Compiles.active = 0, True
    try:
        thunk()
    finally:
        _Compiles.active = False
    return _Compiles.count


def test_python_scalars_are_traced_one_compile_for_all_values(mesh):
    Batch = Axis("batch", 8)
    x = distmap.arange(Batch).astype(jnp.float32)
    f = distmap.vmap(lambda v, lr: v * lr, Batch, mesh=mesh, axis_mapping={"batch": "data"})
    assert compiles(lambda: f(x, 0.5)) >= 1  # the first call compiles (and the counter sees it)

    def run():
        for lr in (0.1, 0.2, 0.3, 0.4):
            out = f(x, lr)
            np.testing.assert_allclose(out.array, np.arange(8) * lr, rtol=1e-6)

    assert compiles(run) == 0
    assert compiles(lambda: f(x, 3)) <= 1  # an int is another type: at most one more, then cached
    assert compiles(lambda: f(x, 4)) == 0


def test_a_module_as_fn_compiles_once_and_its_arrays_are_traced(mesh):
    class Scale(eqx.Module):
        w: jax.Array
        name: str = "scale"

        def __call__(self, v):
            return v * self.w

    Batch = Axis("batch", 8)
    x = distmap.arange(Batch).astype(jnp.float32)
    f = distmap.vmap(Scale(jnp.asarray(2.0)), Batch, mesh=mesh, axis_mapping={"batch": "data"})
    np.testing.assert_allclose(f(x).array, np.arange(8) * 2.0)
    assert compiles(lambda: f(x)) == 0
    # A fresh map of another Module traces and compiles again, as a fresh jax.jit(module) does.
    g = distmap.vmap(Scale(jnp.asarray(3.0)), Batch, mesh=mesh, axis_mapping={"batch": "data"})
    assert compiles(lambda: np.testing.assert_allclose(g(x).array, np.arange(8) * 3.0)) == 1
    # A Module passed as an argument is traced like any argument: new weights, no compilation.
    h = distmap.vmap(lambda m, v: m(v), Batch, args=(None,), mesh=mesh, axis_mapping={"batch": "data"})
    h(Scale(jnp.asarray(1.0)), x)
    for w in (4.0, 5.0):
        assert compiles(lambda: np.testing.assert_allclose(h(Scale(jnp.asarray(w)), x).array, np.arange(8) * w)) == 0


def test_non_array_outputs_come_back_as_they_are(mesh):
    for f in both(lambda v: (v * 2, "tag", None), "b", mesh, {"b": "data"}):
        y, tag, nothing = f(distmap.ones({"b": 4}))
        assert (tag, nothing) == ("tag", None)
        np.testing.assert_allclose(y.array, 2.0)


# ------------------------------------------------------------------ uneven inputs at their share


@pytest.mark.parametrize("kind", ["host", "one device", "named"])
def test_uneven_inputs_distmap_places_arrive_at_their_padded_share(monkeypatch, kind):
    mesh = distmap.make_mesh({"data": 8})
    n = 4093
    rows = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    placed = []
    put = jax.device_put

    def spy(x, *a, **k):
        out = put(x, *a, **k)
        placed.append(out)
        return out

    monkeypatch.setattr(jax, "device_put", spy)
    if kind == "host":
        arg = rows
    elif kind == "one device":
        arg = put(rows, jax.devices()[3])
    else:
        arg = distmap.named(rows, ("batch", "f"))
    f = distmap.vmap(lambda r: r * 2 - distmap.pmean(r, "batch"), "batch", mesh=mesh, axis_mapping={"batch": "data"})
    out = f(arg)
    monkeypatch.setattr(jax, "device_put", put)
    ref = rows * 2 - rows.mean(axis=0)
    np.testing.assert_allclose(np.asarray(out.array if kind == "named" else out), ref, rtol=1e-4, atol=1e-5)
    (x,) = [p for p in placed if getattr(p, "ndim", 0) == 2]
    assert x.shape == (4096, 16)  # padded to ceil(n / 8) * 8 where it was placed
    assert {s.data.shape for s in x.addressable_shards} == {(512, 16)}  # each device holds only its share



def test_python_scalar_constants_come_back_as_they_are_and_traced_scalars_as_arrays(mesh):
    one, on_mesh = both(lambda v, s: (v * s, 3, s * 2), "b", mesh, {"b": "data"})
    x = distmap.ones({"b": 4})
    _, three, doubled = one(x, 0.5)
    assert (three, doubled) == (3, 1.0)  # Python values, as equinox.filter_vmap returns them
    _, three, doubled = on_mesh(x, 0.5)
    assert three == 3  # a constant of fn: static on the mesh too
    # The one documented difference: on a mesh a Python scalar argument is traced (as jax.jit traces
    # it), so an output computed from it alone is an array, broadcast along the map.
    np.testing.assert_allclose(np.asarray(doubled), [1.0] * 4)


def test_a_closure_over_arrays_is_traced_not_frozen(mesh):
    # One mapped function whose closure cell is rebound: the new array every call, no new compilation.
    Batch = Axis("batch", 8)
    x = distmap.arange(Batch).astype(jnp.float32)
    scale = jnp.float32(2.0)
    f = distmap.vmap(lambda v: v * scale, Batch, mesh=mesh, axis_mapping={"batch": "data"})
    np.testing.assert_allclose(f(x).array, np.arange(8) * 2.0)
    for s in (3.0, 4.0):
        scale = jnp.float32(s)
        assert compiles(lambda: np.testing.assert_allclose(f(x).array, np.arange(8) * s)) == 0
    # A Python scalar in the closure is static, as under jax.jit: a new value is a new trace, never a stale one.
    scale = 0.5
    np.testing.assert_allclose(f(x).array, np.arange(8) * 0.5)
    scale = -0.0
    assert np.signbit(np.asarray(f(distmap.ones(Batch)).array)).all()  # -0.0 after 0.5 (and after 0.0 below)
    scale = 0.0
    assert not np.signbit(np.asarray(f(distmap.ones(Batch)).array)).any()


def test_a_fresh_mapped_function_compiles_as_a_fresh_jit_does(mesh):
    # distmap.vmap(...) built anew on every call traces anew, exactly as jax.jit(lambda ...) built anew does:
    # no cache outlives the function it belongs to, so none can serve another function's trace.
    x = distmap.arange(Axis("batch", 8))
    run = lambda: distmap.vmap(lambda v: v + 1, "batch", mesh=mesh, axis_mapping={"batch": "data"})(x)  # noqa: E731
    run()
    assert compiles(lambda: [run() for _ in range(3)]) == 3
    f = distmap.vmap(lambda v: v + 1, "batch", mesh=mesh, axis_mapping={"batch": "data"})
    f(x)
    assert compiles(lambda: [f(x) for _ in range(3)]) == 0  # one function: one compilation


def test_a_python_int_too_large_to_trace_is_static(mesh):
    x = distmap.arange(Axis("batch", 8))
    for f in both(lambda v, n: v + n % 7, "batch", mesh, {"batch": "data"}):
        np.testing.assert_array_equal(np.asarray(f(x, 2**40).array), np.arange(8) + 2**40 % 7)


def test_a_mesh_given_that_nothing_would_use_is_refused(mesh):
    f = distmap.vmap(lambda v: v * 2, "batch", mesh=mesh)  # no mapping, no mesh axis named "batch"
    with pytest.raises(errors.MeshError, match=r"mesh=\{'data': 4, 'model': 2\} was given, but nothing splits"):
        f(distmap.ones({"batch": 4}))
    # an explicit (even empty) mapping says what to split: then mapping nothing is what was asked
    np.testing.assert_allclose(distmap.vmap(lambda v: v * 2, "batch", mesh=mesh, axis_mapping={})(
        distmap.ones({"batch": 4})).array, 2.0)
