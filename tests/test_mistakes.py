"""A catalogue of common mistakes, each met by a distmap error that names what went wrong.

Every entry is a mistake a new user makes, the error class it must raise (one of
``distmap.errors``, each a subclass of the builtin that fits) and the words its message
must contain: the axis, the argument or the fix. None of them may end in a raw JAX,
numpy or Python internal error, and none may pass silently. Arrays are tiny and nothing
is compiled for a mesh, so the whole catalogue runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import distmap
from distmap import Axis, errors
from distmap.distributed import host_local_to_global

# ------------------------------------------------------------------ fixtures
# Module-level tiny arrays shared by the entries (every entry is a zero-argument lambda).
X = distmap.zeros({"batch": 4, "feature": 3})  # the usual input
W = distmap.zeros({"feature": 3, "hidden": 2})
X3 = distmap.zeros({"batch": 2, "seq": 3, "feature": 4})
MASK5 = distmap.ones({"batch": 5}, dtype=bool)  # one element too many along "batch"
KEY = jax.random.key(0)
MESH = distmap.make_mesh({"data": 4, "model": 2})


def f(v):
    return v


def _proj_class():
    import equinox as eqx

    class Proj(eqx.Module):
        w: jax.Array = distmap.field(axis_names=("embed", "mlp"))

    return Proj


def _Proj(w):  # noqa: N802 (a Module built on first use, so equinox loads only when the entry runs)
    return _proj_class()(w)


class Scale:
    """A stand-in module for Stacked.init: anything callable that builds a pytree."""

    def __init__(self, key):
        self.w = jax.random.normal(key, (2,))


def _stacked(*a, **k):
    return distmap.Stacked.init(*a, **k)


def _inside(collective):
    """Run ``collective`` inside a map over "batch" (for mistakes made inside a map)."""
    return lambda: distmap.vmap(collective, Axis("batch", 4))(X)


def _flag_mapping(*argv):
    from absl import flags

    import distmap.flags

    fv = flags.FlagValues()
    distmap.flags.define_mesh_flags(fv)
    fv(["prog", *argv])
    return distmap.flags.axis_mapping_from_flags(fv, axis_names=("batch", "feature"))


E = errors
# (id, thunk, error class, words the message must contain)
CATALOGUE: list[tuple[str, object, type, tuple[str, ...]]] = [
    # ---------------------------------------------------------------- axes
    ("axis-name-int", lambda: Axis(3, 4), E.AxisSelectorError, ("3",)),
    ("axis-name-empty", lambda: Axis("", 4), E.AxisSelectorError, ("non-empty",)),
    ("axis-size-negative", lambda: Axis("batch", -1), E.AxisSizeError, ("batch", "-1")),
    ("axis-size-float", lambda: Axis("batch", 2.5), E.AxisSelectorError, ("batch", "2.5")),
    ("axis-size-bool", lambda: Axis("batch", True), E.AxisSelectorError, ("batch", "bool")),
    ("axis-size-str", lambda: Axis("batch", "4"), E.AxisSelectorError, ("batch", "'4'")),
    ("axis-resize-negative", lambda: Axis("batch", 4).resize(-2), E.AxisSizeError, ("batch",)),
    ("constructor-name-without-size", lambda: distmap.zeros(("batch", "feature")), E.AxisSelectorError, ("batch", "size")),
    ("constructor-dict-size-none", lambda: distmap.ones({"batch": None}), E.AxisSelectorError, ("batch", "size")),
    ("constructor-duplicate-axis", lambda: distmap.zeros([Axis("b", 2), Axis("b", 2)]), E.DuplicateAxisError, ("'b'",)),
    ("constructor-key-not-str", lambda: distmap.zeros({1: 2}), E.AxisSelectorError, ("1", "str")),
    ("constructor-int-as-axes", lambda: distmap.zeros(42), E.AxisSelectorError, ("42",)),
    ("constructor-non-axis-in-seq", lambda: distmap.zeros([Axis("b", 2), 3]), E.AxisSelectorError, ("3",)),
    ("constructor-dict-size-float", lambda: distmap.full({"batch": 2.0}, 1), E.AxisSelectorError, ("batch",)),
    ("constructor-shape-tuple", lambda: distmap.zeros((2, 3)), E.AxisSelectorError, ("by name", "{'batch': 2")),
    ("constructor-bad-dtype", lambda: distmap.zeros({"batch": 2}, dtype="nope"), E.ArgumentTypeError, ("zeros", "nope")),
    ("full-bad-dtype", lambda: distmap.full({"batch": 2}, 1, dtype="nope"), E.ArgumentTypeError, ("full", "nope")),
    ("arange-bad-dtype", lambda: distmap.arange(Axis("batch", 2), dtype="nope"), E.ArgumentTypeError, ("arange",)),
    ("ones-like-bad-dtype", lambda: distmap.ones_like(X, dtype="nope"), E.ArgumentTypeError, ("ones_like",)),
    ("arange-two-axes", lambda: distmap.arange({"batch": 2, "feature": 3}), E.AxisSelectorError, ("arange", "one axis")),
    ("arange-name-only", lambda: distmap.arange("batch"), E.AxisSelectorError, ("batch", "size")),
    # ---------------------------------------------------------- NamedArray
    ("namedarray-str-axes", lambda: distmap.NamedArray(jnp.zeros((2, 3)), ("a", "b")), E.AxisSelectorError, ("distmap.named",)),
    ("namedarray-shape", lambda: distmap.NamedArray(jnp.zeros((2, 3)), (Axis("a", 2),)), E.ShapeMismatchError, ("(2, 3)", "'a'")),
    ("namedarray-duplicate", lambda: distmap.NamedArray(jnp.zeros((2, 2)), (Axis("a", 2), Axis("a", 2))), E.DuplicateAxisError, ("'a'",)),
    ("named-too-few-names", lambda: distmap.named(jnp.zeros((2, 3)), "batch"), E.ShapeMismatchError, ("batch", "(2, 3)")),
    ("named-wrong-size", lambda: distmap.named(jnp.zeros((2, 3)), {"a": 3, "b": 3}), E.ShapeMismatchError, ("'a'", "size 3")),
    ("named-duplicate", lambda: distmap.named(jnp.zeros((2, 3)), ("a", "a")), E.DuplicateAxisError, ("'a'",)),
    ("named-of-named", lambda: distmap.named(X, ("a", "b")), E.AxisSelectorError, ("batch", "rename")),
    ("named-object-array", lambda: distmap.named(np.array([object(), object()]), "a"), E.ArgumentTypeError, ("object", "named")),
    ("named-ragged-list", lambda: distmap.named([[1, 2], [3]], ("a", "b")), E.ArgumentTypeError, ("named", "array")),
    ("named-string", lambda: distmap.named("hello", "a"), E.ArgumentTypeError, ("named", "str")),
    ("named-int-axes", lambda: distmap.named(jnp.zeros(3), 3), E.AxisSelectorError, ("3",)),
    ("axis-size-missing", lambda: X.axis_size("nope"), E.AxisNotFoundError, ("nope", "batch")),
    ("resolve-wrong-size", lambda: X.resolve_axis(Axis("batch", 5)), E.AxisSizeError, ("batch", "4")),
    ("axis-indices-missing", lambda: X.axis_indices(("batch", "nope")), E.AxisNotFoundError, ("nope",)),
    ("rearrange-leaves-out", lambda: X.rearrange(("batch",)), E.AxisSelectorError, ("feature", "...")),
    ("rearrange-twice", lambda: X.rearrange(("batch", "batch", "feature")), E.DuplicateAxisError, ("batch",)),
    ("rearrange-two-ellipses", lambda: X.rearrange((..., "batch", ...)), E.AxisSelectorError, ("...",)),
    ("rearrange-unknown", lambda: X.rearrange(("batch", "nope")), E.AxisNotFoundError, ("nope",)),
    ("rearrange-int", lambda: X.rearrange(1), E.AxisSelectorError, ("rearrange",)),
    ("rename-unknown", lambda: X.rename({"nope": "a"}), E.AxisNotFoundError, ("nope",)),
    ("rename-clash", lambda: X.rename({"batch": "feature"}), E.DuplicateAxisError, ("feature",)),
    ("rename-resize", lambda: X.rename({"batch": Axis("b", 9)}), E.AxisSizeError, ("batch", "9")),
    ("rename-list", lambda: X.rename(["batch"]), E.AxisSelectorError, ("rename", "mapping")),
    ("astype-unknown-dtype", lambda: X.astype("notadtype"), E.ArgumentTypeError, ("astype", "notadtype")),
    ("scalar-of-many", lambda: X.scalar(), E.ShapeMismatchError, ("batch", "size 12")),
    ("item-of-many", lambda: X.item(), E.ShapeMismatchError, ("batch",)),
    ("index-out-of-range", lambda: X["batch", 9], E.AxisIndexError, ("9", "batch", "4")),
    ("index-negative-out-of-range", lambda: X["batch", -5], E.AxisIndexError, ("-5", "batch")),
    ("index-float", lambda: X["batch", 1.5], E.AxisSelectorError, ("batch", "1.5")),
    ("index-bool", lambda: X["batch", True], E.AxisSelectorError, ("batch", "bool")),
    ("index-name-only", lambda: X["batch"], E.AxisSelectorError, ("x['axis', i]",)),
    ("index-positional", lambda: X[0], E.AxisSelectorError, ("batch",)),
    ("index-twice", lambda: X["batch", 0, "batch", 1], E.DuplicateAxisError, ("batch",)),
    ("index-unknown", lambda: X["nope", 0], E.AxisNotFoundError, ("nope",)),
    ("index-bad-slice", lambda: X["batch", "a":"b"], E.AxisSelectorError, ("batch", "slice")),
    ("index-array", lambda: X["batch", jnp.array([0, 1])], E.AxisSelectorError, ("batch", "take")),
    ("index-float-0d", lambda: X["batch", jnp.array(1.0)], E.AxisSelectorError, ("batch",)),
    ("index-0d-array-out-of-range", lambda: X["batch", jnp.array(9)], E.AxisIndexError, ("9", "batch")),
    ("take-0d-array-out-of-range", lambda: distmap.take(X, "batch", jnp.array(-5)), E.AxisIndexError, ("-5", "batch")),
    ("matmul", lambda: X @ W, E.ArgumentTypeError, ("distmap.dot", "axis=")),
    ("rmatmul", lambda: jnp.zeros((2, 4)) @ X, E.ArgumentTypeError, ("distmap.dot",)),
    ("rename-to-int", lambda: X.rename({"batch": 3}), E.AxisSelectorError, ("rename", "batch", "3")),
    ("astype-dtype-none-ok-but-bad-str", lambda: X.astype("float33"), E.ArgumentTypeError, ("astype", "float33")),
    ("len", lambda: len(X), E.ArgumentTypeError, ("axis_size", "batch")),
    ("iter", lambda: list(X), E.ArgumentTypeError, ("unstack", "batch")),
    ("bool-of-many", lambda: bool(X), E.ArgumentTypeError, ("batch", "any")),
    ("if-on-array", lambda: 1 if X > 0 else 0, E.ArgumentTypeError, ("batch",)),
    ("raw-jax-vmap-reduce", lambda: jax.vmap(lambda v: v.sum("feature"))(X), E.ShapeMismatchError, ("jax.vmap", "distmap.vmap")),
    ("raw-jax-vmap-index", lambda: jax.vmap(lambda v: v["feature", 0])(X), E.ShapeMismatchError, ("distmap.vmap",)),
    ("raw-jax-vmap-broadcast", lambda: jax.vmap(lambda v: v + distmap.zeros({"feature": 3, "batch": 4}))(X), E.ShapeMismatchError, ("distmap.vmap",)),
    ("setattr", lambda: setattr(X, "axes", ()), AttributeError, ("immutable",)),
    ("numpy-sum", lambda: np.sum(X), E.ArgumentTypeError, ("np.sum", "distmap.sum", "np.asarray")),
    ("numpy-concatenate", lambda: np.concatenate([X, X]), E.ArgumentTypeError, ("np.concatenate", "batch")),
    ("numpy-ufunc-reduce", lambda: np.add.reduce(X), E.ArgumentTypeError, ("np.add.reduce",)),
    ("numpy-ufunc-out", lambda: np.exp(X, out=np.zeros((4, 3))), E.ArgumentTypeError, ("np.exp", "out")),
    # ------------------------------------------------------------ operators
    ("op-unnamed-array", lambda: X + jnp.zeros((4, 3)), E.ShapeMismatchError, ("(4, 3)", "distmap.named")),
    ("op-unnamed-array-left", lambda: jnp.zeros((4, 3)) + X, E.ShapeMismatchError, ("(4, 3)",)),
    ("op-numpy-array-left", lambda: np.zeros((4, 3)) + X, E.ShapeMismatchError, ("(4, 3)",)),
    ("op-size-mismatch", lambda: X + distmap.zeros({"batch": 5}), E.AxisSizeError, ("batch", "4", "5")),
    ("op-string", lambda: X + "a", E.ArgumentTypeError, ("'add'", "str")),
    ("op-list", lambda: X * [1, 2], E.ArgumentTypeError, ("'mul'", "list")),
    ("op-compare-mismatch", lambda: X < distmap.zeros({"feature": 2}), E.AxisSizeError, ("feature",)),
    # ------------------------------------------------------------ reductions
    ("sum-unknown-axis", lambda: X.sum("nope"), E.AxisNotFoundError, ("nope",)),
    ("sum-wrong-size", lambda: X.sum(Axis("batch", 5)), E.AxisSizeError, ("batch", "5")),
    ("sum-duplicate", lambda: X.sum(("batch", "batch")), E.DuplicateAxisError, ("batch",)),
    ("sum-int-axis", lambda: X.sum(0), E.AxisSelectorError, ("0",)),
    ("sum-unnamed-by-name", lambda: distmap.sum(jnp.zeros(3), "batch"), E.ArgumentTypeError, ("sum", "'batch'", "unnamed", "distmap.named")),
    ("sum-not-an-array", lambda: distmap.sum("abc"), E.ArgumentTypeError, ("sum", "str", "NamedArray")),
    ("mean-where-wrong-size", lambda: X.mean("batch", where=MASK5), E.AxisSizeError, ("where", "batch", "5", "4")),
    ("sum-where-wrong-size", lambda: distmap.sum(X, where=MASK5), E.AxisSizeError, ("where", "batch")),
    ("max-where-wrong-size", lambda: X.max("batch", where=MASK5), E.AxisSizeError, ("where", "batch")),
    ("std-where-wrong-size", lambda: X.std("batch", where=MASK5), E.AxisSizeError, ("where", "batch")),
    ("any-where-wrong-size", lambda: (X > 0).any(where=MASK5), E.AxisSizeError, ("where", "batch")),
    ("where-extra-axis", lambda: X.mean("batch", where=distmap.ones({"other": 2}, dtype=bool)), E.AxisNotFoundError, ("where", "other")),
    ("where-unnamed", lambda: X.sum(where=jnp.ones((4, 3), bool)), E.ArgumentTypeError, ("where", "NamedArray")),
    ("where-not-bool", lambda: X.sum(where=distmap.ones({"batch": 4})), E.ArgumentTypeError, ("where", "bool")),
    ("sum-keepdims", lambda: distmap.sum(X, "batch", keepdims=True), E.ArgumentTypeError, ("keepdims", "broadcast by name")),
    ("logsumexp-return-sign", lambda: distmap.logsumexp(X, "batch", return_sign=True), E.ArgumentTypeError, ("return_sign",)),
    ("mean-out", lambda: distmap.mean(X, "batch", out=None), E.ArgumentTypeError, ("out", "where=")),
    ("max-ddof", lambda: distmap.max(X, "batch", ddof=1), E.ArgumentTypeError, ("ddof", "initial=")),
    ("sum-shape-tuple-axis", lambda: X.sum((0, 1)), E.AxisSelectorError, ("sum(axis=...)", "by name")),
    ("argmax-two-axes", lambda: X.argmax(("batch", "feature")), E.AxisSelectorError, ("argmax",)),
    ("argmax-unknown", lambda: X.argmax("nope"), E.AxisNotFoundError, ("nope",)),
    ("argmin-unnamed", lambda: distmap.argmin(jnp.zeros(3), "a"), E.ArgumentTypeError, ("argmin",)),
    ("logsumexp-unknown", lambda: X.logsumexp("nope"), E.AxisNotFoundError, ("nope",)),
    ("softmax-int-axis", lambda: distmap.softmax(X, 0), E.AxisSelectorError, ("softmax(axis=...)", "by position")),
    ("softmax-unknown", lambda: distmap.softmax(X, "nope"), E.AxisNotFoundError, ("nope",)),
    ("softmax-unnamed", lambda: distmap.softmax(jnp.zeros(3), "a"), E.ArgumentTypeError, ("softmax",)),
    ("log-softmax-wrong-size", lambda: distmap.log_softmax(X, Axis("feature", 2)), E.AxisSizeError, ("feature",)),
    # ----------------------------------------------------------------- ops
    ("zeros-like-unnamed", lambda: distmap.zeros_like(jnp.zeros(3)), E.ArgumentTypeError, ("zeros_like", "distmap.named")),
    ("full-like-extra-axis", lambda: distmap.full_like(X, distmap.zeros({"other": 2})), E.AxisNotFoundError, ("fill_value", "other")),
    ("full-like-unnamed-fill", lambda: distmap.full_like(X, jnp.zeros(3)), E.ShapeMismatchError, ("fill_value",)),
    ("full-like-fill-size", lambda: distmap.full_like(X, distmap.zeros({"batch": 5})), E.AxisSizeError, ("fill_value", "batch")),
    ("full-fill-size", lambda: distmap.full({"batch": 4}, distmap.zeros({"batch": 2})), E.AxisSizeError, ("fill_value", "batch")),
    ("full-fill-unnamed", lambda: distmap.full({"batch": 4}, jnp.zeros(4)), E.ShapeMismatchError, ("fill_value",)),
    ("full-string-fill", lambda: distmap.full({"batch": 2}, "a"), E.ArgumentTypeError, ("full", "fill_value")),
    ("stack-empty", lambda: distmap.stack("layer", []), E.ShapeMismatchError, ("stack", "empty")),
    ("stack-different-axes", lambda: distmap.stack("layer", [X, distmap.zeros({"batch": 4})]), E.ShapeMismatchError, ("arrays[1]",)),
    ("stack-different-sizes", lambda: distmap.stack("layer", [X, distmap.zeros({"batch": 5, "feature": 3})]), E.AxisSizeError, ("batch", "arrays[1]")),
    ("stack-axis-size", lambda: distmap.stack(Axis("layer", 3), [X, X]), E.AxisSizeError, ("layer", "2")),
    ("stack-existing-axis", lambda: distmap.stack("batch", [X, X]), E.DuplicateAxisError, ("batch",)),
    ("stack-one-array", lambda: distmap.stack("layer", X), E.ArgumentTypeError, ("stack", "sequence")),
    ("stack-unnamed-member", lambda: distmap.stack("layer", [X, jnp.zeros((4, 3))]), E.ArgumentTypeError, ("arrays[1]",)),
    ("stack-swapped-arguments", lambda: distmap.stack([X, X], "layer"), E.AxisSelectorError, ("stack", "axis")),
    ("concatenate-unknown", lambda: distmap.concatenate("nope", [X, X]), E.AxisNotFoundError, ("nope", "arrays[0]")),
    ("concatenate-other-size", lambda: distmap.concatenate("batch", [X, distmap.zeros({"batch": 2, "feature": 4})]), E.AxisSizeError, ("feature",)),
    ("concatenate-axis-size", lambda: distmap.concatenate(Axis("batch", 9), [X, X]), E.AxisSizeError, ("batch", "8")),
    ("unstack-unknown", lambda: distmap.unstack(X, "nope"), E.AxisNotFoundError, ("nope",)),
    ("unstack-two-axes", lambda: distmap.unstack(X, ("batch",)), E.AxisSelectorError, ("unstack",)),
    ("split-sizes", lambda: distmap.split(X, "batch", [Axis("a", 1), Axis("b", 2)]), E.AxisSizeError, ("batch", "3")),
    ("split-dict", lambda: distmap.split(X, "batch", {"a": 2, "b": 2}), E.AxisSelectorError, ("new_axes",)),
    ("split-names", lambda: distmap.split(X, "batch", ["a", "b"]), E.AxisSelectorError, ("new_axes", "size")),
    ("split-clash", lambda: distmap.split(X, "batch", [Axis("feature", 2), Axis("b", 2)]), E.DuplicateAxisError, ("feature",)),
    ("take-out-of-range", lambda: distmap.take(X, "batch", 9), E.AxisIndexError, ("batch", "9")),
    ("take-unnamed-index", lambda: distmap.take(X, "batch", jnp.array([0, 1])), E.ShapeMismatchError, ("take", "distmap.named")),
    ("take-float", lambda: distmap.take(X, "batch", 1.5), E.AxisSelectorError, ("take", "1.5")),
    ("take-float-index", lambda: distmap.take(X, "batch", distmap.named(jnp.array([0.5]), "t")), E.AxisSelectorError, ("integers",)),
    ("take-shared-axis-size", lambda: distmap.take(X, "batch", distmap.named(jnp.array([0, 1]), "feature")), E.AxisSizeError, ("feature",)),
    ("take-unknown", lambda: distmap.take(X, "nope", 0), E.AxisNotFoundError, ("nope",)),
    ("broadcast-axis-size", lambda: distmap.broadcast_axis(X, {"batch": 5}), E.AxisSizeError, ("batch", "5")),
    ("broadcast-axis-unnamed", lambda: distmap.broadcast_axis(jnp.zeros(3), {"batch": 2}), E.ShapeMismatchError, ("broadcast_axis",)),
    ("broadcast-to-drops", lambda: distmap.broadcast_to(X, ("batch",)), E.AxisNotFoundError, ("feature",)),
    ("broadcast-to-no-size", lambda: distmap.broadcast_to(X, ("batch", "feature", "new")), E.AxisSelectorError, ("new", "size")),
    ("broadcast-to-size", lambda: distmap.broadcast_to(X, {"batch": 5, "feature": 3}), E.AxisSizeError, ("batch",)),
    ("flatten-nothing", lambda: distmap.flatten_axes(X, (), "t"), E.AxisSelectorError, ("flatten_axes",)),
    ("flatten-size", lambda: distmap.flatten_axes(X, ("batch", "feature"), Axis("t", 5)), E.AxisSizeError, ("12",)),
    ("flatten-clash", lambda: distmap.flatten_axes(X3, ("batch", "seq"), "feature"), E.DuplicateAxisError, ("feature",)),
    ("unflatten-size", lambda: distmap.unflatten_axis(X, "batch", {"a": 3, "b": 2}), E.AxisSizeError, ("batch", "6")),
    ("unflatten-clash", lambda: distmap.unflatten_axis(X, "batch", {"feature": 2, "b": 2}), E.DuplicateAxisError, ("feature",)),
    ("where-cond-size", lambda: distmap.where(MASK5, X, 0.0), E.AxisSizeError, ("batch", "condition")),
    ("where-unnamed-y", lambda: distmap.where(X > 0, X, jnp.zeros(4)), E.ShapeMismatchError, ("y",)),
    ("where-unnamed-cond", lambda: distmap.where(jnp.ones((4, 3), bool), X, 0.0), E.ShapeMismatchError, ("condition",)),
    ("rearrange-unnamed", lambda: distmap.rearrange(jnp.zeros(3), ("a",)), E.ArgumentTypeError, ("rearrange",)),
    ("rename-unnamed", lambda: distmap.rename(jnp.zeros(3), {"a": "b"}), E.ArgumentTypeError, ("rename",)),
    # ------------------------------------------------------------------ math
    ("clip-bound-size", lambda: distmap.clip(X, distmap.zeros({"batch": 5})), E.AxisSizeError, ("batch", "lo")),
    ("clip-none", lambda: distmap.clip(None, 0.0, 1.0), E.ArgumentTypeError, ("clip", "x")),
    ("maximum-size", lambda: distmap.maximum(X, distmap.zeros({"batch": 5})), E.AxisSizeError, ("batch",)),
    ("minimum-size", lambda: distmap.minimum(distmap.zeros({"feature": 2}), X), E.AxisSizeError, ("feature",)),
    ("maximum-unnamed", lambda: distmap.maximum(jnp.zeros(3), X), E.ShapeMismatchError, ("maximum",)),
    ("exp-unnamed", lambda: distmap.exp(jnp.zeros(3)), E.ShapeMismatchError, ("exp", "distmap.named")),
    ("exp-string", lambda: distmap.exp("a"), E.ArgumentTypeError, ("exp", "str")),
    ("tanh-list", lambda: distmap.tanh([1.0, 2.0]), E.ArgumentTypeError, ("tanh", "list")),
    # ----------------------------------------------------------- dot/einsum
    ("dot-unknown", lambda: distmap.dot(X, W, axis="nope"), E.AxisNotFoundError, ("nope", "batch")),
    ("dot-size", lambda: distmap.dot(X, distmap.zeros({"feature": 4}), axis="feature"), E.AxisSizeError, ("feature", "arrays[1]")),
    ("dot-axis-positional", lambda: distmap.dot(X, "feature", axis=None), E.ArgumentTypeError, ("arrays[1]", "axis=")),
    ("dot-nothing", lambda: distmap.dot(axis="feature"), E.ArgumentTypeError, ("dot",)),
    ("dot-axis-size", lambda: distmap.dot(X, W, axis=Axis("feature", 9)), E.AxisSizeError, ("feature", "9")),
    ("dot-unnamed", lambda: distmap.dot(X, jnp.zeros((3, 2)), axis="feature"), E.ArgumentTypeError, ("arrays[1]",)),
    ("einsum-operand-count", lambda: distmap.einsum("batch feature", X, W), E.ShapeMismatchError, ("1 operand", "2 array")),
    ("einsum-unknown", lambda: distmap.einsum("batch nope, feature hidden", X, W), E.AxisNotFoundError, ("nope", "operand 0")),
    ("einsum-leaves-out", lambda: distmap.einsum("batch, feature hidden", X, W), E.ShapeMismatchError, ("feature", "...")),
    ("einsum-output-unknown", lambda: distmap.einsum("batch feature, feature hidden -> nope", X, W), E.AxisNotFoundError, ("nope", "output")),
    ("einsum-spec-not-str", lambda: distmap.einsum(X, W), E.AxisSelectorError, ("spec",)),
    ("einsum-two-arrows", lambda: distmap.einsum("batch feature -> batch -> feature", X), E.AxisSelectorError, ("->",)),
    ("einsum-repeat", lambda: distmap.einsum("batch batch feature", X), E.DuplicateAxisError, ("batch",)),
    ("einsum-two-ellipses", lambda: distmap.einsum("... batch ...", X), E.AxisSelectorError, ("...",)),
    ("einsum-size", lambda: distmap.einsum("batch feature, feature hidden", X, distmap.zeros({"feature": 5, "hidden": 2})), E.AxisSizeError, ("feature",)),
    ("einsum-positional-letters", lambda: distmap.einsum("ij,jk->ik", X, W), E.AxisNotFoundError, ("ij",)),
    # --------------------------------------------------------------- random
    ("random-no-size", lambda: distmap.random.normal(KEY, {"batch": None}), E.AxisSelectorError, ("batch", "size")),
    ("random-many-keys", lambda: distmap.random.normal(jax.random.split(KEY, 2), {"batch": 2}), E.ShapeMismatchError, ("normal", "split")),
    ("random-int-seed", lambda: distmap.random.uniform(0, {"batch": 2}), E.ArgumentTypeError, ("uniform", "key")),
    ("random-float-key", lambda: distmap.random.normal(jnp.zeros(2), {"batch": 2}), E.ArgumentTypeError, ("normal", "float32")),
    ("random-named-key", lambda: distmap.random.normal(distmap.zeros({"k": 2}), {"batch": 2}), E.ArgumentTypeError, ("normal", "key")),
    ("random-shape-tuple", lambda: distmap.random.normal(KEY, (2, 3)), E.AxisSelectorError, ("normal(axes=...)", "by name")),
    ("random-bad-dtype", lambda: distmap.random.uniform(KEY, {"batch": 2}, dtype="nope"), E.ArgumentTypeError, ("uniform", "nope")),
    ("random-param-axis", lambda: distmap.random.uniform(KEY, {"batch": 2}, minval=distmap.zeros({"feature": 2})), E.AxisNotFoundError, ("minval", "feature")),
    ("random-param-size", lambda: distmap.random.uniform(KEY, {"batch": 2}, minval=distmap.zeros({"batch": 3})), E.AxisSizeError, ("minval", "batch")),
    ("random-unnamed-param", lambda: distmap.random.randint(KEY, {"batch": 2}, 0, jnp.zeros(3)), E.ShapeMismatchError, ("maxval",)),
    ("random-p-size", lambda: distmap.random.bernoulli(KEY, {"batch": 2}, p=distmap.zeros({"batch": 3})), E.AxisSizeError, ("in p", "batch")),
    ("random-normal-int-dtype", lambda: distmap.random.normal(KEY, {"batch": 2}, dtype=jnp.int32), E.ArgumentTypeError, ("normal", "dtype")),
    ("random-randint-float-dtype", lambda: distmap.random.randint(KEY, {"batch": 2}, 0, 5, dtype=jnp.float32), E.ArgumentTypeError, ("randint", "dtype")),
    ("categorical-unknown", lambda: distmap.random.categorical(KEY, X, "nope"), E.AxisNotFoundError, ("nope",)),
    ("categorical-unnamed", lambda: distmap.random.categorical(KEY, jnp.zeros(3), "a"), E.ArgumentTypeError, ("categorical", "logits")),
    # ----------------------------------------------------------------- vmap
    ("vmap-no-size", lambda: distmap.vmap(f, "batch")(distmap.zeros({"feature": 3})), E.MappingError, ("batch", "size")),
    ("vmap-sizes-disagree", lambda: distmap.vmap(lambda a, b: a, "batch")(X, distmap.zeros({"batch": 5})), E.AxisSizeError, ("batch", "args[0]", "args[1]")),
    ("vmap-given-size", lambda: distmap.vmap(f, Axis("batch", 5))(X), E.AxisSizeError, ("batch", "5", "args[0]")),
    ("vmap-unnamed-sizes", lambda: distmap.vmap(lambda a, b: a, "batch")(jnp.zeros(3), jnp.zeros(4)), E.AxisSizeError, ("batch", "args[1]")),
    ("vmap-int-axis", lambda: distmap.vmap(f, 3), E.AxisSelectorError, ("vmap(axis=...)",)),
    ("vmap-duplicate-axes", lambda: distmap.vmap(f, ("batch", "batch")), E.DuplicateAxisError, ("batch",)),
    ("vmap-chunk-zero", lambda: distmap.vmap(f, "batch", chunk_size=0), E.MappingError, ("chunk_size",)),
    ("vmap-chunk-float", lambda: distmap.vmap(f, "batch", chunk_size=1.5), E.MappingError, ("chunk_size",)),
    ("vmap-bad-spec", lambda: distmap.vmap(f, "batch", args=("x",)), E.MappingError, ("args",)),
    ("vmap-args-int", lambda: distmap.vmap(f, "batch", args=0), E.MappingError, ("args",)),
    ("vmap-kwargs-list", lambda: distmap.vmap(f, "batch", kwargs=[0]), E.MappingError, ("kwargs",)),
    ("vmap-spec-dim-range", lambda: distmap.vmap(f, Axis("batch", 3), args=(1,))(jnp.zeros(3)), E.MappingError, ("args[0]",)),
    ("vmap-output-has-axis", lambda: distmap.vmap(lambda: distmap.zeros({"batch": 2}), Axis("batch", 3))(), E.MappingError, ("batch", "rename")),
    ("vmap-collective-wrong-axis", _inside(lambda v: distmap.psum(v, "feature")), E.MappingError, ("feature", "batch")),
    ("vmap-chunked-collective", lambda: distmap.vmap(lambda v: distmap.psum(v, "batch"), "batch", chunk_size=2)(X), E.MappingError, ("chunk_size", "batch")),
    ("vmap-mapping-unknown-mesh-axis", lambda: distmap.vmap(f, "batch", mesh=MESH, axis_mapping={"batch": "nope"})(X), E.MeshError, ("nope", "data")),
    ("vmap-fn-not-callable", lambda: distmap.vmap(3, "batch"), E.ArgumentTypeError, ("fn", "callable")),
    ("vmap-args-spec-too-long", lambda: distmap.vmap(lambda a, b: a, "batch", args=(None, 0, 0))(X, jnp.zeros(4)), E.MappingError, ("args[2]", "2 positional")),
    ("vmap-kwargs-spec-unknown", lambda: distmap.vmap(lambda a, b=None: a, "batch", kwargs={"nope": 0})(X), E.MappingError, ("kwargs['nope']", "'a', 'b'")),
    ("vmap-kwargs-spec-not-passed", lambda: distmap.vmap(lambda a, b=None: a, "batch", kwargs={"b": 0})(X), E.MappingError, ("kwargs['b']",)),
    ("vmap-spec-twice", lambda: distmap.vmap(lambda a, b: a, "batch", args=(0, 0), kwargs={"b": 0})(X, jnp.zeros(4)), E.MappingError, ("args[1]", "kwargs['b']")),
    ("vmap-mapping-names-unmapped-axis", lambda: distmap.vmap(f, "batch", mesh=MESH, axis_mapping={"btach": "data"})(X), E.MeshError, ("btach", "'batch'")),
    ("vmap-split-input-jit-no-mesh", lambda: jax.jit(distmap.vmap(f, "batch"))(distmap.shard(X, {"batch": "data"}, MESH)), E.MeshError, ("'batch'", "data", "jax.set_mesh")),
    ("flag-axis-mapping-typo", lambda: _flag_mapping("--axis_mapping=btach=data"), E.MeshError, ("--axis_mapping", "btach", "batch")),
    # ------------------------------------------------------ collectives outside
    ("psum-outside", lambda: distmap.psum(X, "batch"), E.MappingError, ("psum", "batch", "none")),
    ("pmean-outside", lambda: distmap.pmean(X, "batch"), E.MappingError, ("pmean", "batch")),
    ("pmax-outside", lambda: distmap.pmax(X, "batch"), E.MappingError, ("pmax", "batch")),
    ("pmin-outside", lambda: distmap.pmin(X, "batch"), E.MappingError, ("pmin", "batch")),
    ("all-gather-outside", lambda: distmap.all_gather(X, "batch"), E.MappingError, ("all_gather", "batch")),
    ("axis-index-outside", lambda: distmap.axis_index("batch"), E.MappingError, ("axis_index", "batch")),
    ("axis-size-outside", lambda: distmap.axis_size("batch"), E.MappingError, ("axis_size", "batch")),
    ("psum-of-string", _inside(lambda v: distmap.psum("a", "batch")), E.ArgumentTypeError, ("psum", "str")),
    ("all-gather-of-object", _inside(lambda v: distmap.all_gather(object(), "batch")), E.ArgumentTypeError, ("all_gather", "object")),
    ("pmax-of-none-list", _inside(lambda v: distmap.pmax([v, "x"], "batch")), E.ArgumentTypeError, ("pmax",)),
    ("psum-int-axis", _inside(lambda v: distmap.psum(v, 3)), E.AxisSelectorError, ("psum", "3")),
    ("psum-no-axis", _inside(lambda v: distmap.psum(v, ())), E.AxisSelectorError, ("psum",)),
    ("psum-repeat", _inside(lambda v: distmap.psum(v, ("batch", "batch"))), E.DuplicateAxisError, ("psum", "batch")),
    ("all-gather-existing-axis", _inside(lambda v: distmap.all_gather(distmap.zeros({"batch": 2}), "batch")), E.MappingError, ("all_gather", "batch")),
    # ------------------------------------------------------------------ mesh
    ("mesh-too-many-devices", lambda: distmap.make_mesh({"data": 16}), E.MeshError, ("16", "8", "xla_force_host_platform_device_count", "cpu_devices")),
    ("mesh-empty", lambda: distmap.make_mesh({}), E.MeshError, ("make_mesh",)),
    ("mesh-zero", lambda: distmap.make_mesh({"data": 0}), E.MeshError, ("data", "0")),
    ("mesh-two-rests", lambda: distmap.make_mesh({"data": -1, "model": -1}), E.MeshError, ("-1",)),
    ("mesh-uneven-rest", lambda: distmap.make_mesh({"data": 3, "model": -1}), E.MeshError, ("8", "3")),
    ("mesh-size-str", lambda: distmap.make_mesh({"data": "4"}), E.MeshError, ("data", "'4'")),
    ("mesh-axis-types-str", lambda: distmap.make_mesh({"data": 8}, axis_types="explicit"), E.MeshError, ("axis_types", "AxisType")),
    ("mesh-axis-types-count", lambda: distmap.make_mesh({"data": 4, "model": 2}, axis_types=(jax.sharding.AxisType.Auto,)), E.MeshError, ("axis_types", "model")),
    ("mesh-list", lambda: distmap.make_mesh([("data", 8)]), E.MeshError, ("dict",)),
    ("mapping-int-target", lambda: distmap.axis_mapping({"batch": 3}).__enter__(), E.MeshError, ("batch", "3")),
    ("mapping-repeat-mesh-axis", lambda: distmap.axis_mapping({"batch": ("data", "data")}).__enter__(), E.MeshError, ("batch", "data")),
    ("mapping-str", lambda: distmap.axis_mapping("batch").__enter__(), E.MeshError, ("'batch'",)),
    ("mapping-bad-rule", lambda: distmap.axis_mapping([("batch",)]).__enter__(), E.MeshError, ("('batch',)",)),
    ("pspec-no-mapping", lambda: distmap.pspec_for(X), E.MeshError, ("pspec_for", "axis_mapping")),
    ("pspec-unknown-mesh-axis", lambda: distmap.pspec_for(X, {"batch": "nope"}, MESH), E.MeshError, ("batch", "nope")),
    ("pspec-claimed-twice", lambda: distmap.pspec_for(X, {"batch": "data", "feature": "data"}), E.MeshError, ("batch", "feature", "data")),
    ("shard-no-mesh", lambda: distmap.shard(X, {"batch": "data"}), E.MeshError, ("shard", "mesh")),
    ("shard-no-mapping", lambda: distmap.shard(X, mesh=MESH), E.MeshError, ("shard", "axis_mapping")),
    ("shard-arguments-swapped", lambda: distmap.shard(X, MESH, {"batch": "data"}), E.MeshError, ("shard(x, axis_mapping, mesh)",)),
    ("shard-unknown-mesh-axis", lambda: distmap.shard(X, {"batch": "nope"}, MESH), E.MeshError, ("nope",)),
    ("pspec-preserve-positional", lambda: distmap.pspec_for(X, {"batch": "data"}, False), E.MeshError, ("preserve_existing_shardings=False", "keyword")),
    ("field-axis-names-wrong-rank", lambda: distmap.pspec_for(_Proj(jnp.ones(3)), {}), E.ShapeMismatchError, ("axis_names=('embed', 'mlp')", "(3,)")),
    ("field-axis-names-str", lambda: distmap.field(axis_names="embed"), E.AxisSelectorError, ("axis_names", "'embed'")),
    ("field-axis-names-static", lambda: distmap.field(axis_names=("a",), static=True), E.ArgumentTypeError, ("static", "axis_names")),
    ("infer-partitions-no-mesh", lambda: distmap.infer_resource_partitions(X, {"batch": "data"}), E.MeshError, ("infer_resource_partitions", "mesh")),
    ("physical-size-no-mesh", lambda: distmap.physical_axis_size("batch", {"batch": "data"}), E.MeshError, ("physical_axis_size", "mesh")),
    ("physical-size-unknown-mesh-axis", lambda: distmap.physical_axis_size("batch", {"batch": "nope"}, MESH), E.MeshError, ("'batch'", "'nope'")),
    ("set-mesh-not-a-mesh", lambda: distmap.set_mesh({"data": 4}), E.MeshError, ("set_mesh", "Mesh")),
    # ------------------------------------------------------------ named_jit
    ("named-jit-mapping-no-mesh", lambda: distmap.named_jit(f, {"batch": "data"})(X), E.MeshError, ("named_jit", "mesh")),
    ("named-jit-donate-too-many", lambda: distmap.named_jit(f, donate_args=(True, True))(X), E.ArgumentTypeError, ("donate_args", "2", "1")),
    ("named-jit-donate-unknown-kwarg", lambda: distmap.named_jit(lambda v: v, donate_kwargs={"w": True})(X), E.ArgumentTypeError, ("donate_kwargs", "'w'")),
    ("named-jit-donate-bad-flag", lambda: distmap.named_jit(f, donate_args=("yes",))(X), E.ArgumentTypeError, ("donation flag", "'yes'")),
    ("named-jit-donate-twice", lambda: distmap.named_jit(f, donate="all", donate_args=(True,)), E.ArgumentTypeError, ("donate=", "donate_args")),
    # --------------------------------------------------------- checkpointing
    ("checkpoint-policy-bad-carries", lambda: distmap.ScanCheckpointPolicy(save_carries="host"), E.MappingError, ("save_carries", "'host'", "offload")),
    ("checkpoint-policy-offload-and-save-all", lambda: distmap.ScanCheckpointPolicy(save_block_internals=True, offload_block_internals=["a"]), E.MappingError, ("save_block_internals=True", "offload")),
    ("checkpoint-policy-internals-str", lambda: distmap.ScanCheckpointPolicy(save_block_internals="attn"), E.MappingError, ("save_block_internals", "'attn'")),
    ("checkpoint-policy-nested-zero", lambda: distmap.ScanCheckpointPolicy(nested=0), E.MappingError, ("nested", "0")),
    ("checkpoint-nested-does-not-divide", lambda: distmap.fold(lambda c, x: c + x, "batch", checkpoint=distmap.ScanCheckpointPolicy(nested=3))(0.0, X), E.MappingError, ("nested=3", "4 steps")),
    ("checkpoint-unknown-string", lambda: distmap.fold(f, "batch", checkpoint="offload_all"), E.MappingError, ("'offload_all'", "'offload'", "'carry'")),
    ("checkpoint-name-not-str", lambda: distmap.tree_checkpoint_name(X, 3), E.ArgumentTypeError, ("tree_checkpoint_name", "3")),
    ("stacked-prevent-cse-not-bool", lambda: _stacked(Axis("layer", 2), Scale, checkpoint="carry", prevent_cse="yes"), E.MappingError, ("prevent_cse", "'yes'")),
    ("stacked-fold-unroll-zero", lambda: _stacked(Axis("layer", 2), Scale)(jax.random.split(KEY, 2)).fold(X, unroll=0), E.MappingError, ("Stacked.fold(unroll=...)", "0")),
    ("scan-lengths-differ", lambda: distmap.fold(lambda c, a, b: c, "batch")(0.0, X, b=jnp.ones(5)), E.AxisSizeError, ("b has leading dimension 5", "'batch' of size 4")),
    # ----------------------------------------------------------- operators
    ("named-plus-unnamed-vector", lambda: X + jnp.ones(3), E.ShapeMismatchError, ("(3,)", "never broadcast by position", "distmap.named")),
    ("reduce-unnamed-by-name", lambda: distmap.max(jnp.ones((2, 2)), "batch"), E.ArgumentTypeError, ("max", "'batch'", "unnamed")),
    # -------------------------------------------------------------- Stacked
    ("stacked-keys-count", lambda: _stacked(Axis("layer", 3), Scale)(jax.random.split(KEY, 2)), E.AxisSizeError, ("layer", "3", "2")),
    ("stacked-no-size", lambda: _stacked("layer", Scale), E.AxisSelectorError, ("layer", "size")),
    # ------------------------------------------------------------ global data
    ("host-local-no-mesh", lambda: host_local_to_global(X, {"batch": "data"}), E.MeshError, ("host_local_to_global", "mesh")),
    ("host-local-no-mapping", lambda: host_local_to_global(X, mesh=MESH), E.MeshError, ("host_local_to_global", "axis_mapping")),
    ("host-local-uneven", lambda: host_local_to_global(distmap.zeros({"batch": 3}), {"batch": "data"}, MESH), E.AxisSizeError, ("batch", "3")),
    ("host-local-unknown-mesh-axis", lambda: host_local_to_global(X, {"batch": "nope"}, MESH), E.MeshError, ("batch", "nope")),
    ("host-local-swapped-order", lambda: host_local_to_global(X, MESH, {"batch": "data"}), E.MeshError, ("host_local_to_global", "axis_mapping, mesh")),
]


@pytest.mark.parametrize(
    "thunk, error, words", [pytest.param(t, e, w, id=i) for i, t, e, w in CATALOGUE]
)
def test_mistake_gets_a_clear_error(thunk, error, words):
    with pytest.raises(error) as info:
        thunk()
    if error is not AttributeError:  # immutability is Python's own protocol
        assert isinstance(info.value, errors.DistmapError), type(info.value)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_catalogue_is_large_and_ids_unique():
    ids = [i for i, *_ in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


# ------------------------------------------------------- classes that were silent or internal errors
# A collective over an input already split on the mesh, under jit, with no axis mapping: the
# input's sharding says where the axis lives, so the map is split there (jax 0.10 failed inside
# JAX); an input merely placed on an Explicit mesh (jax 0.12's psum batching bug) works too.
def _centre(v):
    return v - distmap.pmean(v, "batch") + distmap.pmax(v, "batch") - distmap.pmin(v, "batch")


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
@pytest.mark.parametrize("layout", [{"batch": "data"}, {}, {"feature": "model"}], ids=["split", "replicated", "other-axis"])
def test_collective_over_an_input_already_on_the_mesh(axis_type, layout):
    kind = jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto
    mesh = distmap.make_mesh({"data": 4, "model": 2}, axis_types=kind)
    x = distmap.random.normal(KEY, {"batch": 8, "feature": 2})
    ref = distmap.vmap(_centre, "batch")(x)
    xs = distmap.shard(x, layout, mesh)
    with jax.set_mesh(mesh):
        y = jax.jit(distmap.vmap(_centre, "batch"))(xs)
    np.testing.assert_allclose(np.asarray(y.array), np.asarray(ref.array), rtol=1e-6, atol=1e-6)
    assert y.axis_names == ("batch", "feature")
    if layout == {"batch": "data"}:  # used as it is: the output stays split where the input was
        assert tuple(y.array.sharding.spec)[0] == "data"
