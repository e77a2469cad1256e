"""distmap: map functions over named axes, on one device or across a mesh.

Example:
    >>> import distmap
    >>> Batch = distmap.Axis("batch", 4)
    >>> distmap.vmap(lambda x: x * 2, Batch)(distmap.arange(Batch)).array
    Array([0, 2, 4, 6], dtype=int32)

``import distmap`` imports no JAX: each public name is loaded from the module that defines
it on first use (``distmap.vmap``, ``from distmap import NamedArray``), so a launcher that
needs only ``distmap._src.launch`` and ``distmap._src.flags`` starts without JAX.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# Every public name and the module that defines it, loaded by ``__getattr__`` on first use.
# A name listed under "distmap" is a submodule. The ``TYPE_CHECKING`` block below imports the
# same names for type checkers and IDEs; tests/test_lazy_import.py checks that the two and
# ``__all__`` agree.
_MODULES: dict[str, tuple[str, ...]] = {
    "distmap": ("distributed", "errors", "random"),
    # -- arrays with named axes (distmap/_src/axis.py, named.py)
    "distmap._src.axis": ("Axis", "AxisSelection", "AxisSelector", "AxisSpec", "SizedAxes"),
    "distmap._src.named": ("NamedArray", "is_named_array", "named"),
    # -- reductions (distmap/_src/reductions.py), also NamedArray methods
    "distmap._src.reductions": (
        "all", "any", "argmax", "argmin", "logsumexp", "max", "mean", "min", "prod", "std", "sum", "var",
    ),
    # -- constructors and shape operations (distmap/_src/ops.py)
    "distmap._src.ops": (
        "arange", "broadcast_axis", "broadcast_to", "concatenate", "flatten_axes", "full", "full_like", "ones",
        "ones_like", "rearrange", "rename", "split", "stack", "take", "unflatten_axis", "unstack", "where", "zeros",
        "zeros_like",
    ),
    # -- contractions (distmap/_src/linalg.py)
    "distmap._src.linalg": ("dot", "einsum"),
    # -- elementwise math and softmax (distmap/_src/math.py)
    "distmap._src.math": (
        "abs", "ceil", "clip", "cos", "equal", "exp", "expm1", "floor", "gelu", "isfinite", "isnan", "log", "log1p",
        "log_softmax", "logical_not", "maximum", "minimum", "negative", "reciprocal", "relu", "round", "rsqrt",
        "sigmoid", "sign", "silu", "sin", "softmax", "softplus", "sqrt", "square", "tanh",
    ),
    # -- named maps and collectives (distmap/_src/map/api.py, collectives.py)
    "distmap._src.map.api": ("vmap",),
    "distmap._src.collectives": (
        "all_gather", "all_to_all", "axis_index", "axis_size", "pmax", "pmean", "pmin", "ppermute", "psum",
        "psum_scatter",
    ),
    # -- meshes and axis mappings (distmap/_src/mesh.py, partitioning.py, layout.py)
    "distmap._src.mesh": (
        "AxisMapping", "ResourceAxis", "as_axis_mapping", "axis_mapping", "current_axis_mapping",
        "infer_resource_partitions", "make_mesh", "physical_axis_name", "physical_axis_size", "pspec_for",
        "round_axis_for_partitioning", "shard",
    ),
    "distmap._src.partitioning": ("auto_sharded", "field", "set_mesh"),
    "distmap._src.layout": ("layout", "visualize_shardings"),
    # -- loops over a named axis, checkpointing (distmap/_src/map/scan.py, map/checkpoint.py)
    "distmap._src.map.scan": ("fold", "scan"),
    "distmap._src.map.checkpoint": ("Checkpoint", "ScanCheckpointPolicy", "tree_checkpoint_name"),
    # -- comparisons by name (distmap/_src/compare.py)
    "distmap._src.compare": ("allclose", "array_equal", "isclose"),
    # -- stacked modules, jit by name (distmap/_src/stacked.py, named_jit.py)
    "distmap._src.stacked": ("BlockSeq", "Stacked"),
    "distmap._src.named_jit": ("named_jit",),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

if _typing.TYPE_CHECKING:
    from distmap import distributed, errors, random
    from distmap._src.axis import Axis, AxisSelection, AxisSelector, AxisSpec, SizedAxes
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
    from distmap._src.compare import allclose, array_equal, isclose
    from distmap._src.layout import layout, visualize_shardings
    from distmap._src.linalg import dot, einsum
    from distmap._src.map.api import vmap
    from distmap._src.map.checkpoint import Checkpoint, ScanCheckpointPolicy, tree_checkpoint_name
    from distmap._src.map.scan import fold, scan
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
    from distmap._src.named import NamedArray, is_named_array, named
    from distmap._src.named_jit import named_jit
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
    from distmap._src.partitioning import auto_sharded, field, set_mesh
    from distmap._src.reductions import all, any, argmax, argmin, logsumexp, max, mean, min, prod, std, sum, var
    from distmap._src.stacked import BlockSeq, Stacked

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


# Hidden from type checkers, which see the names through the imports above: with a module
# ``__getattr__`` in sight they would take any misspelt ``distmap.name`` for a lazy one.
if not _typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Load a public name from its module on first use and keep it here (PEP 562)."""
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if module == __name__:
            value = _importlib.import_module(f"{__name__}.{name}")
        else:
            value = getattr(_importlib.import_module(module), name)
        globals()[name] = value  # later lookups find it without this function
        return value


def __dir__() -> list[str]:
    # The public names are attributes too, before their first use.
    return sorted(set(globals()) | set(_EXPORTS))
