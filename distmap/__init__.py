"""distmap: map functions over named axes, on one device or across a mesh.

Example:
    >>> import distmap
    >>> Batch = distmap.Axis("batch", 4)
    >>> distmap.vmap(lambda x: x * 2, Batch)(distmap.arange(Batch)).array
    Array([0, 2, 4, 6], dtype=int32)
"""

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, AxisSelector, AxisSpec, SizedAxes
from distmap._src.named import NamedArray, is_named_array, named
from distmap._src import array_methods as _array_methods  # noqa: F401  (NamedArray's reduction methods)
from distmap._src.reductions import all, any, argmax, argmin, logsumexp, max, mean, min, prod, std, sum, var

# -- constructors and shape operations (distmap/_src/ops.py)
from distmap._src.ops import (
    arange,
    broadcast_axis,
    broadcast_to,
    concatenate,
    flatten_axes,
    full,
    full_like,
    ones,
    ones_like,
    rearrange,
    rename,
    split,
    stack,
    take,
    unflatten_axis,
    unstack,
    where,
    zeros,
    zeros_like,
)

# -- contractions (distmap/_src/linalg.py)
from distmap._src.linalg import dot, einsum

# -- elementwise math and softmax (distmap/_src/math.py)
from distmap._src.math import (
    abs,
    ceil,
    clip,
    cos,
    equal,
    exp,
    expm1,
    floor,
    gelu,
    isfinite,
    isnan,
    log,
    log1p,
    log_softmax,
    logical_not,
    maximum,
    minimum,
    negative,
    reciprocal,
    relu,
    round,
    rsqrt,
    sigmoid,
    sign,
    silu,
    sin,
    softmax,
    softplus,
    sqrt,
    square,
    tanh,
)

# -- random sampling by axes (distmap/random.py)
from distmap import random

# -- named maps and collectives (distmap/_src/map/api.py, collectives.py)
from distmap._src.map.api import vmap
from distmap._src.collectives import (
    all_gather,
    all_to_all,
    axis_index,
    axis_size,
    pmax,
    pmean,
    pmin,
    ppermute,
    psum,
    psum_scatter,
)

# -- meshes and axis mappings (distmap/_src/mesh.py, partitioning.py, layout.py)
from distmap._src.mesh import (
    AxisMapping,
    ResourceAxis,
    as_axis_mapping,
    axis_mapping,
    current_axis_mapping,
    infer_resource_partitions,
    make_mesh,
    physical_axis_name,
    physical_axis_size,
    pspec_for,
    round_axis_for_partitioning,
    shard,
)
from distmap._src.partitioning import auto_sharded, field, set_mesh
from distmap._src.layout import layout, visualize_shardings

# -- loops over a named axis, checkpointing (distmap/_src/map/scan.py, map/checkpoint.py)
from distmap._src.map.scan import fold, scan
from distmap._src.map.checkpoint import Checkpoint, ScanCheckpointPolicy, tree_checkpoint_name

# -- comparisons by name (distmap/_src/compare.py)
from distmap._src.compare import allclose, array_equal, isclose

__version__ = "0.1.0"

__all__ = [
    "abs",
    "all",
    "all_gather",
    "all_to_all",
    "allclose",
    "any",
    "arange",
    "auto_sharded",
    "argmax",
    "argmin",
    "array_equal",
    "as_axis_mapping",
    "Axis",
    "axis_index",
    "axis_mapping",
    "axis_size",
    "AxisMapping",
    "AxisSelection",
    "AxisSelector",
    "AxisSpec",
    "BlockSeq",
    "SizedAxes",
    "broadcast_axis",
    "broadcast_to",
    "ceil",
    "Checkpoint",
    "clip",
    "concatenate",
    "cos",
    "current_axis_mapping",
    "distributed",
    "dot",
    "einsum",
    "equal",
    "errors",
    "exp",
    "expm1",
    "field",
    "flatten_axes",
    "floor",
    "fold",
    "full",
    "full_like",
    "gelu",
    "infer_resource_partitions",
    "is_named_array",
    "isclose",
    "isfinite",
    "isnan",
    "layout",
    "log",
    "log1p",
    "log_softmax",
    "logical_not",
    "logsumexp",
    "make_mesh",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "named",
    "named_jit",
    "NamedArray",
    "negative",
    "ones",
    "ones_like",
    "physical_axis_name",
    "physical_axis_size",
    "pmax",
    "pmean",
    "pmin",
    "ppermute",
    "prod",
    "pspec_for",
    "psum",
    "psum_scatter",
    "random",
    "rearrange",
    "reciprocal",
    "relu",
    "rename",
    "ResourceAxis",
    "round",
    "round_axis_for_partitioning",
    "rsqrt",
    "scan",
    "set_mesh",
    "ScanCheckpointPolicy",
    "shard",
    "sigmoid",
    "sign",
    "silu",
    "sin",
    "softmax",
    "softplus",
    "split",
    "sqrt",
    "square",
    "stack",
    "Stacked",
    "std",
    "sum",
    "take",
    "tanh",
    "tree_checkpoint_name",
    "unflatten_axis",
    "unstack",
    "var",
    "visualize_shardings",
    "vmap",
    "where",
    "zeros",
    "zeros_like",
    "__version__",
]

# Names whose modules import equinox (about 0.2 s) load on first use, so `import distmap` stays light.
_LAZY = {
    "Stacked": "distmap._src.stacked",
    "BlockSeq": "distmap._src.stacked",
    "named_jit": "distmap._src.named_jit",
    "distributed": None,
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = _LAZY[name]
        value = importlib.import_module(f"distmap.{name}") if module is None else getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'distmap' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazily loaded names are attributes too, before their first use.
    return sorted(set(globals()) | set(_LAZY))
