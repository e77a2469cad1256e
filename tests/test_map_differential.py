"""Differential property test: a map on a mesh equals the same map on one device.

Random meshes (1-2 mesh axes, up to 8 devices, Explicit or Auto), one or two mapped axes
of random sizes (divisible by their shard counts or not), a random mapping of them onto
the mesh axes, named and unnamed arguments passed by position and by keyword, every spec
kind (default, int, None, callable, ``eqx.if_array``; through ``default=``, ``args=`` and
``kwargs=``), a Python scalar, ``chunk_size``, and collectives over either axis. Both
runs must give the same axes, shapes and values, or raise the same error class.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType

import distmap
from distmap import errors

from _trees import assert_same

_MESH_SHAPES = [{"data": 1}, {"data": 2}, {"data": 8}, {"data": 2, "model": 4}, {"data": 4, "model": 2}]
_MESHES: dict = {}


def mesh_of(i: int, kind: str):
    if (i, kind) not in _MESHES:
        shape = _MESH_SHAPES[i]
        n = int(np.prod(list(shape.values())))
        t = AxisType.Explicit if kind == "explicit" else AxisType.Auto
        _MESHES[i, kind] = jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=(t,) * len(shape), devices=jax.devices()[:n])
    return _MESHES[i, kind]


_SPECS = {
    "int0": 0,
    "int1": 1,
    "intneg": -1,
    "none": None,
    "callable": lambda leaf: leaf.ndim - 2,  # the second-to-last dimension, at every level
    "if_array": eqx.if_array(0),
}


def _insert_position(spec_name: str, rank_after: int) -> int | None:
    """Where a spec maps a dimension of an array of rank ``rank_after``."""
    return {"int0": 0, "int1": 1, "intneg": rank_after - 1, "callable": rank_after - 2, "if_array": 0}.get(spec_name)


def _unnamed(spec_name: str, sizes: list[int], rest: tuple[int, ...], seed: int) -> np.ndarray:
    """An array that ``spec_name`` maps with ``sizes`` (outermost first) and leaves ``rest`` inside."""
    shape = list(rest)
    if spec_name != "none":
        for n in reversed(sizes):  # build from the inside out
            shape.insert(_insert_position(spec_name, len(shape) + 1), n)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


_COLLECTIVES = ["none", "psum", "pmean", "pmax", "pmin", "axis_index", "all_gather", "ppermute", "psum_scatter", "all_to_all"]


def body(op: str, over):
    def fn(x, u, *, w, s):
        v = x * s + jnp.sum(u * w)  # x: ("f",) inside; u and w: (2,)
        extra = v
        if op == "psum":
            extra = distmap.psum(v, over)
        elif op == "pmean":
            extra = distmap.pmean(v, over)
        elif op == "pmax":
            extra = distmap.pmax(v, over)
        elif op == "axis_index":
            extra = v + distmap.axis_index(over)
        elif op == "all_gather":
            extra = distmap.all_gather(v, over).sum(over)
        elif op == "ppermute":  # a rotation by 2 over the flat index
            n = distmap.axis_size(over)
            extra = distmap.ppermute(v, over, [(i, (i + 2) % n) for i in range(n)])
        elif op == "psum_scatter" and isinstance(over, str):  # one axis: scatter a fresh axis of its size
            n = distmap.axis_size(over)
            extra = v + distmap.psum_scatter(distmap.broadcast_axis(v, distmap.Axis("piece", n)), over, scatter_axis="piece")
        elif op == "all_to_all" and isinstance(over, str):
            n = distmap.axis_size(over)
            spread = distmap.broadcast_axis(v, distmap.Axis("dest", n)) * distmap.arange(distmap.Axis("dest", n))
            extra = v + distmap.all_to_all(spread, over, "dest", "src").sum("src")
        return {"v": v, "extra": extra, "u": u * 2}

    return fn


@st.composite
def problems(draw):
    mesh = mesh_of(draw(st.integers(0, len(_MESH_SHAPES) - 1)), draw(st.sampled_from(["explicit", "auto"])))
    names = draw(st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")]))
    sizes = {"a": draw(st.integers(1, 9)), "b": draw(st.integers(1, 9))}
    free = list(mesh.axis_names)
    mapping = {}
    for n in names:
        choice = draw(st.sampled_from([None] + free + ([tuple(free)] if len(free) == 2 else [])))
        if choice is None:
            continue
        used = {choice} if isinstance(choice, str) else set(choice)
        free = [a for a in free if a not in used]
        mapping[n] = choice
    # x: a NamedArray with "f" and some of the mapped axes (a missing one is broadcast), in a random order.
    carried = [n for n in names if draw(st.booleans()) or n == names[0]]
    layout = draw(st.permutations(carried + ["f"]))
    spec_name = draw(st.sampled_from(sorted(_SPECS)))
    spec_via = draw(st.sampled_from(["default", "args", "kwargs"]))
    op = draw(st.sampled_from(_COLLECTIVES))
    over = draw(st.sampled_from(list(names) + ([tuple(names)] if len(names) == 2 else [])))
    chunk = draw(st.sampled_from([None, None, 1, 2, 5]))
    mismatch = draw(st.integers(0, 9)) == 0  # now and then a size that disagrees: both must refuse
    u_keyword = draw(st.booleans())
    return mesh, names, sizes, mapping, tuple(layout), spec_name, spec_via, op, over, chunk, mismatch, u_keyword


def _outcome(thunk):
    try:
        return "ok", thunk()
    except errors.DistmapError as e:
        return "error", type(e)


@settings(max_examples=40, deadline=None, derandomize=False)
@given(problems())
def test_mesh_equals_one_device(problem):
    mesh, names, sizes, mapping, layout, spec_name, spec_via, op, over, chunk, mismatch, u_keyword = problem
    size = dict(sizes, f=3)
    x = distmap.named(
        np.random.default_rng(1).normal(size=[size[n] for n in layout]).astype(np.float32), layout
    )
    u_sizes = [size[n] + (1 if mismatch and i == 0 else 0) for i, n in enumerate(names)]
    u = _unnamed(spec_name, u_sizes, (2,), seed=2)
    w = np.arange(2, dtype=np.float32)
    spec = _SPECS[spec_name]
    options: dict = {"kwargs": {"w": None, "s": None}, "chunk_size": chunk}
    if spec_via == "default":
        options["default"] = spec
    elif spec_via == "args":
        options["args"] = (None, spec)
    else:
        options["kwargs"]["u"] = spec
    fn = body(op, over)
    call = (lambda f: f(x, u=u, w=w, s=0.5)) if u_keyword else (lambda f: f(x, u, w=w, s=0.5))
    one = _outcome(lambda: call(distmap.vmap(fn, names, **options)))
    many = _outcome(lambda: call(distmap.vmap(fn, names, mesh=mesh, axis_mapping=mapping, **options)))
    assert one[0] == many[0], (one, many)
    if one[0] == "error":
        assert one[1] is many[1]
        return
    assert_same(one[1], many[1], rtol=2e-5, atol=2e-5)
