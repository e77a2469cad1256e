"""The few reads of JAX's internals the library needs, in one place, for JAX 0.10 to 0.12.

Each has no public equivalent in that range; if a JAX release moves one, this is the only
module to change.
"""

from __future__ import annotations

from typing import Any

from jax._src import core as _core
from jax._src import mesh as _mesh
from jax._src.interpreters import partial_eval as _pe


def under_trace() -> bool:
    """Whether a JAX transformation is tracing now (``jax.jit``, ``jax.grad``, ``jax.vmap``, ...).

    ``jax.sharding.get_mesh`` asks the same question before it refuses to answer.
    """
    return not _core.trace_state_clean()


def staging() -> bool:
    """Whether a staging trace (``jax.jit``, a loop body, ``make_jaxpr``) is among the traces now active,
    rather than only eager transformations (``jax.grad``, ``jax.vmap`` of concrete values)."""
    trace = _core.unsafe_get_current_trace()
    while trace is not None:
        if isinstance(trace, _pe.DynamicJaxprTrace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


def concrete_mesh() -> Any:
    """The concrete mesh ``jax.set_mesh`` set, also while a transformation traces (``get_mesh`` refuses
    to say then); an empty mesh when none is set."""
    return _mesh.get_concrete_mesh()


def legacy_mesh() -> Any:
    """The mesh of the legacy ``with mesh:`` block (no public reader), or None (also on a JAX without it)."""
    try:
        return _mesh.thread_resources.env.physical_mesh
    except AttributeError:
        return None
