"""distmap: map functions over named axes, on one device or across a mesh.

Example:
    >>> import distmap
    >>> Batch = distmap.Axis("batch", 4)
    >>> distmap.vmap(lambda x: x * 2, Batch)(distmap.arange(Batch)).array
    Array([0, 2, 4, 6], dtype=int32)
"""

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, AxisSelector, AxisSpec
from distmap._src.named import NamedArray, named
from distmap._src.reductions import all, any, argmax, argmin, logsumexp, max, mean, min, prod, std, sum, var

# -- constructors and shape operations (distmap/_src/ops.py)
from distmap._src.ops import arange, full, ones, zeros

__version__ = "0.1.0"
