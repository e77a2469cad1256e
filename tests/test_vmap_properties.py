"""Property tests: ``distmap.vmap`` over random axis sets, axis positions, sizes, specs and chunk
sizes equals a hand-written nest of ``jax.vmap`` with explicit ``in_axes`` (integer data, so exactly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import distmap
from distmap import Axis, errors

_SETTINGS = settings(max_examples=30, deadline=None)
_MAPPED = ("a", "b", "c")
_OTHER = ("x", "y")


def _ints(shape, seed):
    n = int(np.prod(shape)) if shape else 1
    return jnp.asarray(((np.arange(n, dtype=np.int32) * 5 + seed * 3) % 11 - 5).reshape(shape))


@st.composite
def problems(draw):
    k = draw(st.integers(1, 3))
    mapped = draw(st.permutations(_MAPPED))[:k]  # the axes to map, in the order given
    sizes = {n: draw(st.integers(1, 4)) for n in _MAPPED + _OTHER}
    # NamedArray inputs: each a random subset of all axes, in a random order.
    n_named = draw(st.integers(0, 3))
    named = []
    for _ in range(n_named):
        names = draw(st.lists(st.sampled_from(_MAPPED + _OTHER), unique=True, max_size=4))
        named.append(tuple(draw(st.permutations(names))))
    # Unnamed inputs: a spec (int, possibly negative, or None) and the dims not mapped.
    n_unnamed = draw(st.integers(0, 2))
    unnamed = []
    for _ in range(n_unnamed):
        rest = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        if draw(st.booleans()):
            spec = None
        else:
            # the spec must be valid at every level: rank at the innermost level is len(rest) + 1
            spec = draw(st.integers(-(len(rest) + 1), len(rest)))
        unnamed.append((rest, spec))
    # A mapped axis no NamedArray carries and no unnamed input maps must be given with its size.
    present = {n for names in named for n in names}
    has_unnamed_mapped = any(spec is not None for _, spec in unnamed)
    selectors = []
    form = draw(st.sampled_from(["seq", "mapping"]))
    for n in mapped:
        need_size = n not in present and not has_unnamed_mapped
        give_size = need_size or draw(st.booleans())
        selectors.append((n, sizes[n] if give_size else None))
    axis = dict(selectors) if form == "mapping" else [Axis(n, s) if s is not None else n for n, s in selectors]
    if form == "seq" and len(axis) == 1 and draw(st.booleans()):
        axis = axis[0]
    chunk = draw(st.one_of(st.none(), st.integers(1, 5)))
    use_callable = draw(st.booleans())
    return mapped, sizes, named, unnamed, axis, chunk, use_callable


def _unnamed_shape(rest, spec, mapped, sizes):
    """Insert the mapped dims so that mapping ``spec`` at each level (outermost first) peels them in order."""
    shape = tuple(rest)
    for n in reversed(mapped):  # innermost is inserted first
        if spec is None:
            break
        d = spec % (len(shape) + 1)
        shape = shape[:d] + (sizes[n],) + shape[d:]
    return shape


@_SETTINGS
@given(problems())
def test_vmap_matches_nested_jax_vmap(problem):
    mapped, sizes, named, unnamed, axis, chunk, use_callable = problem
    named_in = [
        distmap.named(_ints(tuple(sizes[n] for n in names), i), names) for i, names in enumerate(named)
    ]
    unnamed_in = [_ints(_unnamed_shape(rest, spec, mapped, sizes), 10 + j) for j, (rest, spec) in enumerate(unnamed)]
    specs = [spec for _, spec in unnamed]
    n_named = len(named_in)

    def raw(*arrays):
        total = sum((a.sum() for a in arrays), jnp.int32(0))
        return [a * (i + 1) + total for i, a in enumerate(arrays[:n_named])], [u * 2 - total for u in arrays[n_named:]]

    def fn(*args):
        for v, names in zip(args[:n_named], named):
            assert v.axis_names == tuple(n for n in names if n not in mapped)
        ns, us = raw(*[v.array for v in args[:n_named]], *args[n_named:])
        return [distmap.NamedArray(o, v.axes) for o, v in zip(ns, args[:n_named])], us

    if use_callable:
        arg_specs = tuple([None] * n_named) + tuple((lambda leaf, s=s: s) for s in specs)
    else:
        arg_specs = tuple([0] * n_named) + tuple(specs)  # a spec on a NamedArray is ignored: it goes by name
    # Under jit: one compile per example instead of one eager dispatch per primitive (the mapping
    # logic runs the same at trace time); test_vmap.py covers the un-jitted path.
    out_named, out_unnamed = jax.jit(distmap.vmap(fn, axis, args=arg_specs, chunk_size=chunk))(*named_in, *unnamed_in)

    # The reference: one jax.vmap per mapped axis, outermost first, with explicit in_axes.
    ref = raw
    levels = []
    cur = [list(names) for names in named]
    for n in mapped:
        in_axes = [c.index(n) if n in c else None for c in cur]
        cur = [[m for m in c if m != n] for c in cur]
        levels.append((n, tuple(in_axes) + tuple(specs)))
    for n, in_axes in reversed(levels):
        ref = jax.vmap(ref, in_axes=in_axes, out_axes=0, axis_size=sizes[n])
    ref_named, ref_unnamed = jax.jit(ref)(*[v.array for v in named_in], *unnamed_in)

    for o, r, names in zip(out_named, ref_named, named):
        assert o.axis_names == tuple(mapped) + tuple(n for n in names if n not in mapped)
        assert o.array.shape == tuple(sizes[n] for n in o.axis_names)
        np.testing.assert_array_equal(o.array, r)
    for o, r, (rest, _) in zip(out_unnamed, ref_unnamed, unnamed):
        assert not isinstance(o, distmap.NamedArray)
        assert o.shape == tuple(sizes[n] for n in mapped) + tuple(rest)
        np.testing.assert_array_equal(o, r)


@st.composite
def mismatches(draw):
    names = draw(st.permutations(("batch", "x", "y")))
    size = draw(st.integers(1, 4))
    other = draw(st.integers(1, 4).filter(lambda s: s != size))
    where = draw(st.sampled_from(["named", "unnamed", "given"]))
    return names, size, other, where


@_SETTINGS
@given(mismatches())
def test_size_mismatch_always_names_axis_sizes_and_paths(m):
    names, size, other, where = m
    x = distmap.named(jnp.zeros(tuple(size if n == "batch" else 2 for n in names)), names)
    if where == "given":
        call = lambda: distmap.vmap(lambda x: x, Axis("batch", other))(x)  # noqa: E731
        paths = ["args[0]"]
    else:
        y = (
            distmap.named(jnp.zeros((2, other)), ("x", "batch"))
            if where == "named"
            else jnp.zeros((other, 2))
        )
        call = lambda: distmap.vmap(lambda x, y: x, "batch")(x, y={"w": y})  # noqa: E731
        paths = ["args[0]", "kwargs['y']['w']"]
    try:
        call()
    except errors.AxisSizeError as e:
        msg = str(e)
    else:
        raise AssertionError("no AxisSizeError")
    assert "'batch'" in msg and str(size) in msg and str(other) in msg
    for p in paths:
        assert p in msg
