"""Every named collective means the same on one device and on a mesh: values, dtypes, NaN and errors.

The one-device map is checked against plain ``jax.vmap`` with ``jax.lax`` collectives (or numpy,
where ``jax.lax`` under ``vmap`` has no rule, as for a partial ``ppermute``); the mesh map, on
Explicit and Auto meshes and with sizes the shards do not divide, is checked against the
one-device map. The compiled collectives of a mesh map are counted against the same
collective written by hand with ``jax.lax`` inside ``jax.shard_map``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import distmap
from distmap import errors

from _trees import assert_same

_MESHES: dict = {}


def mesh_of(kind: str, shape=(4, 2)):
    key = (kind, shape)
    if key not in _MESHES:
        t = AxisType.Explicit if kind == "explicit" else AxisType.Auto
        n = int(np.prod(shape))
        _MESHES[key] = jax.make_mesh(shape, ("data", "model")[: len(shape)], axis_types=(t,) * len(shape), devices=jax.devices()[:n])
    return _MESHES[key]


def on_mesh(fn, axis, kind, mapping=None):
    return distmap.vmap(fn, axis, mesh=mesh_of(kind), axis_mapping=mapping or {"b": "data"})


def rows(n, width=6, dtype=np.float32, seed=0):
    data = np.random.default_rng(seed).normal(size=(n, width))
    return distmap.named(jnp.asarray(data.astype(dtype)), ("b", "f"))


def lax_ref(fn, x):
    """``jax.vmap`` of ``fn`` over dim 0 with the axis named "b": the reference for the one-device map."""
    return jax.vmap(fn, axis_name="b")(x)


# ---------------------------------------------------------------------------------- ppermute


@pytest.mark.parametrize("n", [8, 5])
def test_ppermute_full_and_partial_on_one_device_match_jax_lax_and_numpy(n):
    x = rows(n)
    rot = [(i, (i + 2) % n) for i in range(n)]
    got = distmap.vmap(lambda r: distmap.ppermute(r, "b", rot), "b")(x)
    np.testing.assert_array_equal(got.array, lax_ref(lambda r: jax.lax.ppermute(r, "b", rot), x.array))
    partial = [(0, 3), (4, 1), (2, 2)]
    got = distmap.vmap(lambda r: distmap.ppermute(r, "b", partial), "b")(x)
    want = np.zeros((n, 6), np.float32)
    for s, d in partial:
        want[d] = np.asarray(x.array)[s]
    np.testing.assert_array_equal(got.array, want)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("n", [8, 7])
def test_ppermute_on_a_mesh_equals_one_device(kind, n):
    x = rows(n)
    perms = {
        "rotate": [(i, (i + 3) % n) for i in range(n)],
        "within": [(0, 1), (1, 0)],
        "scatter": [(n - 1, 0), (0, n - 1), (2, 4)],
    }
    for perm in perms.values():
        f = lambda r, perm=perm: distmap.ppermute(r, "b", perm)  # noqa: E731
        assert_same(on_mesh(f, "b", kind)(x), distmap.vmap(f, "b")(x))


def test_ppermute_over_two_mapped_axes_uses_the_flat_index():
    x = distmap.named(jnp.arange(24.0).reshape(4, 3, 2), ("a", "b", "f"))
    perm = [(i, (i + 5) % 12) for i in range(12)]
    f = lambda r: distmap.ppermute(r, ("a", "b"), perm)  # noqa: E731
    flat = np.asarray(x.array).reshape(12, 2)  # jax.lax.ppermute has no vmap rule over two axes: numpy
    want = np.zeros_like(flat)
    for s, d in perm:
        want[d] = flat[s]
    want = want.reshape(4, 3, 2)
    np.testing.assert_array_equal(distmap.vmap(f, ("a", "b"))(x).array, want)
    got = distmap.vmap(f, ("a", "b"), mesh=mesh_of("explicit"), axis_mapping={"a": "data", "b": "model"})(x)
    np.testing.assert_array_equal(got.array, want)


@pytest.mark.parametrize(
    "perm,match",
    [([(0, 9)], "out of range"), ([(0, 1), (0, 2)], "source 0 appears more than once"), ([(1, 0), (2, 0)], "destination 0"), ([(0.5, 1)], "int")],
)
def test_ppermute_refuses_a_bad_permutation(perm, match):
    with pytest.raises((errors.MappingError, errors.AxisIndexError), match=match):
        distmap.vmap(lambda r: distmap.ppermute(r, "b", perm), "b")(rows(4))


# ---------------------------------------------------------------------------------- psum_scatter


@pytest.mark.parametrize("tiled", [False, True])
def test_psum_scatter_on_one_device_matches_jax_lax(tiled):
    n = 4
    width = n * (3 if tiled else 1)
    x = distmap.named(jnp.arange(n * width * 2.0).reshape(n, 2, width), ("b", "g", "f"))
    got = distmap.vmap(lambda r: distmap.psum_scatter(r, "b", scatter_axis="f", tiled=tiled), "b")(x)
    want = lax_ref(lambda r: jax.lax.psum_scatter(r, "b", scatter_dimension=1, tiled=tiled), x.array)
    np.testing.assert_array_equal(got.array, want)
    assert got.axis_names == (("b", "g", "f") if tiled else ("b", "g"))
    raw = distmap.vmap(lambda r: distmap.psum_scatter(r, "b", scatter_dimension=1, tiled=tiled), "b")(x.array)
    np.testing.assert_array_equal(raw, want)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("n,tiled", [(8, False), (7, False), (6, True)])
def test_psum_scatter_on_a_mesh_equals_one_device(kind, n, tiled):
    width = n * (2 if tiled else 1)
    x = distmap.named(jnp.asarray(np.random.default_rng(1).integers(-5, 5, (n, 3, width))), ("b", "g", "f"))
    f = lambda r: distmap.psum_scatter(r, "b", scatter_axis="f", tiled=tiled)  # noqa: E731
    assert_same(on_mesh(f, "b", kind)(x), distmap.vmap(f, "b")(x))


def test_psum_scatter_refuses_a_size_the_axis_does_not_fit():
    with pytest.raises(errors.AxisSizeError, match=r"axis 'f' has size 6.*exactly 4.*tiled=True"):
        distmap.vmap(lambda r: distmap.psum_scatter(r, "b", scatter_axis="f"), "b")(rows(4))
    with pytest.raises(errors.AxisSizeError, match="a multiple of 4"):
        distmap.vmap(lambda r: distmap.psum_scatter(r, "b", scatter_axis="f", tiled=True), "b")(rows(4))
    with pytest.raises(errors.AxisSelectorError, match="must name an axis"):
        distmap.vmap(lambda r: distmap.psum_scatter(r, "b"), "b")(rows(4))


# ---------------------------------------------------------------------------------- all_to_all


@pytest.mark.parametrize("split,concat,tiled", [(0, 0, True), (0, 1, True), (1, 0, True), (0, 1, False), (1, 0, False)])
def test_all_to_all_unnamed_on_one_device_matches_jax_lax(split, concat, tiled):
    n = 4
    shape = [n * 2 if tiled else n, 3] if split == 0 else [3, n * 2 if tiled else n]
    x = jnp.arange(n * int(np.prod(shape)), dtype=jnp.float32).reshape([n] + shape)
    got = distmap.vmap(lambda r: distmap.all_to_all(r, "b", split, concat, tiled=tiled), "b")(x)
    want = lax_ref(lambda r: jax.lax.all_to_all(r, "b", split, concat, tiled=tiled), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("n", [8, 7])
def test_all_to_all_on_a_mesh_equals_one_device(kind, n):
    x = distmap.named(jnp.arange(n * n * 3.0).reshape(n, n, 3), ("b", "dest", "f"))
    f = lambda r: distmap.all_to_all(r, "b", "dest", "src")  # noqa: E731
    one = distmap.vmap(f, "b")(x)
    assert one.axis_names == ("b", "src", "f")
    np.testing.assert_array_equal(one.array, np.swapaxes(np.asarray(x.array), 0, 1))  # a transpose of b and dest
    assert_same(on_mesh(f, "b", kind)(x), one)
    y = distmap.named(jnp.arange(n * 2 * n * 3.0).reshape(n, 2 * n, 3), ("b", "d", "f"))
    g = lambda r: distmap.all_to_all(r, "b", "d", "f", tiled=True)  # noqa: E731
    one = distmap.vmap(g, "b")(y)
    assert one.shape == {"b": n, "d": 2, "f": 3 * n}
    assert_same(on_mesh(g, "b", kind)(y), one)


def test_all_to_all_refuses_a_taken_name_and_a_wrong_size():
    x = distmap.named(jnp.zeros((4, 4, 2)), ("b", "dest", "f"))
    with pytest.raises(errors.DuplicateAxisError, match="'f' is already taken"):
        distmap.vmap(lambda r: distmap.all_to_all(r, "b", "dest", "f"), "b")(x)
    with pytest.raises(errors.AxisSizeError, match="axis 'f' has size 2"):
        distmap.vmap(lambda r: distmap.all_to_all(r, "b", "f", "src"), "b")(x)


# ---------------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("n", [8, 7])
def test_nan_wins_pmax_and_pmin_everywhere(kind, n):
    data = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    data[n - 1, 0] = np.nan  # in the last shard, the padding's neighbour when uneven
    data[1, 1] = np.nan
    x = distmap.named(jnp.asarray(data), ("b", "f"))
    for op in (distmap.pmax, distmap.pmin):
        f = lambda r, op=op: op(r, "b")  # noqa: E731
        one = distmap.vmap(f, "b")(x)
        assert np.isnan(np.asarray(one.array)).all()
        assert_same(on_mesh(f, "b", kind)(x), one)
        ref = lax_ref(lambda r, op=op: (jax.lax.pmax if op is distmap.pmax else jax.lax.pmin)(r, "b"), x.array)
        np.testing.assert_array_equal(one.array, ref)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_extremes_order_signed_zeros_infinities_and_extremes_as_jax(kind):
    data = np.array([[-0.0], [0.0], [-np.inf], [np.inf], [3.5], [-2.0], [np.finfo(np.float32).max]], np.float32)
    x = distmap.named(jnp.asarray(data), ("b", "f"))
    for op, want in ((distmap.pmax, np.inf), (distmap.pmin, -np.inf)):
        got = on_mesh(lambda r, op=op: op(r, "b"), "b", kind)(x)
        np.testing.assert_array_equal(got.array, np.full((7, 1), want, np.float32))
    finite = distmap.named(jnp.asarray(data[[0, 1, 4, 5]]), ("b", "f"))
    np.testing.assert_array_equal(on_mesh(lambda r: distmap.pmax(r, "b"), "b", kind)(finite).array, [[3.5]] * 4)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("dtype", [np.bool_, np.int32, np.int8, np.float16, np.complex64])
def test_every_reduction_keeps_jax_lax_dtypes_on_a_mesh(kind, dtype):
    n = 7
    raw = np.random.default_rng(3).normal(size=(n, 2)) * 4
    data = (raw > 0) if dtype is np.bool_ else (raw + 1j * raw[::-1] if dtype is np.complex64 else raw).astype(dtype)
    x = distmap.named(jnp.asarray(data), ("b", "f"))
    rtol = 1e-2 if dtype is np.float16 else 1e-5  # sums in another order round differently in float16
    ops = {"psum": jax.lax.psum, "pmean": jax.lax.pmean, "pmax": jax.lax.pmax, "pmin": jax.lax.pmin}
    for name, lax_op in ops.items():
        if dtype is np.bool_ and name in ("pmax", "pmin"):
            lax_op = lambda v, a, lax_op=lax_op: lax_op(v.astype(jnp.int32), a).astype(bool)  # noqa: E731
        op = getattr(distmap, name)
        f = lambda r, op=op: op(r, "b")  # noqa: E731
        one = distmap.vmap(f, "b")(x)
        ref = lax_ref(lambda r, lax_op=lax_op: lax_op(r, "b"), x.array)
        assert one.dtype == ref.dtype, (name, one.dtype, ref.dtype)
        np.testing.assert_allclose(np.asarray(one.array, np.complex128), np.asarray(ref, np.complex128), rtol=rtol)
        assert_same(on_mesh(f, "b", kind)(x), one, rtol=rtol)


def test_bool_sums_count_in_a_one_device_map_under_an_explicit_mesh():
    x = distmap.named(jnp.asarray([True, False, True, True]), ("b",))
    with jax.set_mesh(mesh_of("explicit")):
        total, mean = jax.jit(distmap.vmap(lambda r: (distmap.psum(r, "b"), distmap.pmean(r, "b")), "b"))(x)
    assert total.dtype == jnp.int32 and total.array.tolist() == [3] * 4
    np.testing.assert_allclose(mean.array, [0.75] * 4)


# ---------------------------------------------------------------------------------- what it compiles to

_COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def collectives(compiled) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in _COLLECTIVE.finditer(compiled.as_text()):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def test_new_collectives_compile_to_the_collective_a_hand_written_shard_map_uses():
    mesh = mesh_of("explicit", (8,))
    n = 64
    x = jax.device_put(jnp.ones((n, 8 * 8)), jax.sharding.NamedSharding(mesh, P("data")))
    named = distmap.named(x, ("b", "f"))
    ours = {
        "ppermute": lambda r: distmap.ppermute(r, "b", [(i, (i + 8) % n) for i in range(n)]),
        "psum_scatter": lambda r: distmap.psum_scatter(r, "b", scatter_axis="f", tiled=True),
        "all_to_all": lambda r: distmap.all_to_all(r, "b", "f", "f", tiled=True),
        "pmax": lambda r: distmap.pmax(r, "b"),
    }
    by_hand = {
        "ppermute": lambda b: jax.lax.ppermute(b, "data", [(i, (i + 1) % 8) for i in range(8)]),
        "psum_scatter": lambda b: jax.lax.psum_scatter(b.sum(0, keepdims=True), "data", scatter_dimension=1, tiled=True),
        "all_to_all": lambda b: jax.lax.all_to_all(b, "data", 1, 1, tiled=True),
        "pmax": lambda b: jax.lax.pmax(b.max(0, keepdims=True), "data"),
    }
    with jax.set_mesh(mesh):
        for name, f in ours.items():
            mine = collectives(jax.jit(distmap.vmap(f, "b", axis_mapping={"b": "data"})).lower(named).compile())
            hand = jax.jit(jax.shard_map(by_hand[name], mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False))
            assert mine == collectives(hand.lower(x).compile()), name
