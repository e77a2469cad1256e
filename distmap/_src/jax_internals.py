"""Every read of JAX's internals by distmap's runtime, in one place.

JAX has no public accessor for some things a multi-process runtime needs: whether the
backend already started, which cluster its detection would pick, the distributed client
(the coordination service's key-value store) and the run's coordinator and ranks before the
backend starts. Each is read here, by the one function that needs it, so that a JAX release
that moves one breaks one function (checked on JAX 0.10 and 0.12).

Example:
    >>> from distmap._src import jax_internals
    >>> jax_internals.distributed_client() is None  # not in a multi-process run
    True
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any


def backend_started() -> bool:
    """Whether JAX's backend (its devices) already exists; checked across JAX versions."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - very old or very new JAX
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    if check is not None:
        return bool(check())
    return bool(getattr(xla_bridge, "_backends", {}))  # pragma: no cover


def detected_cluster() -> str | None:
    """The name of the cluster JAX would detect (SLURM, TPU, ...), or ``None``."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    try:
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            if not getattr(env, "opt_in_only_method", False) and env.is_env_present():
                return env.__name__
    except Exception:  # noqa: BLE001 - detection is best effort; JAX repeats it anyway
        return None
    return None


def distributed_client() -> Any:
    """JAX's distributed client (the key-value store), or ``None`` outside a run.

    ``jax.distributed`` has no public accessor for it; ``jax.distributed.is_initialized()``
    (JAX 0.10 and 0.12) answers whether there is one.
    """
    import jax

    if not jax.distributed.is_initialized():
        return None
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def distributed_state() -> tuple[str | None, int, int]:
    """``(coordinator address, process count, this process's rank)`` of the run JAX joined.

    Read from JAX's distributed state, not ``jax.process_count()``, which would start the backend.
    """
    from jax._src import distributed as jax_distributed

    gs = jax_distributed.global_state
    return gs.coordinator_address, int(gs.num_processes or 1), int(gs.process_id or 0)


def initialize_accepts(name: str) -> bool:
    """Whether this JAX's ``jax.distributed.initialize`` takes the keyword argument ``name``."""
    import jax

    return name in inspect.signature(jax.distributed.initialize).parameters


def rank_records(client: Any, prefix: str) -> dict[int, Any]:
    """The JSON records ranks wrote under ``prefix`` in the coordination service's key-value store, by rank.

    Every rank writes its record at ``prefix + str(rank)``; keys whose last part is not a rank
    are left out.

    Example:
        >>> class Store:  # what a distributed client's key_value_dir_get answers
        ...     def key_value_dir_get(self, prefix):
        ...         return [(prefix + "1", '{"step": 3}'), (prefix + "0", '{"step": 4}'), (prefix + "x", "{}")]
        >>> rank_records(Store(), "distmap/progress/")
        {1: {'step': 3}, 0: {'step': 4}}
    """
    out = {}
    for key, value in client.key_value_dir_get(prefix):
        tail = key.rsplit("/", 1)[-1]
        if tail.isdigit():
            out[int(tail)] = json.loads(value)
    return out


__all__ = [
    "backend_started", "detected_cluster", "distributed_client", "distributed_state", "initialize_accepts", "rank_records",
]
