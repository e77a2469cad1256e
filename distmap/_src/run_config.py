"""Where a run's configuration comes from: arguments, then the launcher's ``DISTMAP_*`` environment.

:func:`requested_config` settles each value of :class:`DistributedConfig` from the argument
given to ``initialize``, else its variable of the launcher contract
(``distmap._src.launch.contract``); JAX's cluster detection (``jax_internals.detected_cluster``)
fills in what neither names. :func:`jax_timeouts` reads JAX's own time-outs.

Example:
    >>> split_address("127.0.0.1:8476", "coordinator_address")
    ('127.0.0.1', 8476)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from distmap import errors
from distmap._src import jax_internals, progress
from distmap._src.launch import contract


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """The start-up configuration :func:`initialize` settled on.

    ``mode`` is ``"single"`` (one process, nothing started), ``"explicit"`` (arguments or
    ``DISTMAP_*`` variables) or ``"cluster"`` (JAX's cluster detection).
    ``stall_timeout`` is the progress watch's (``None``: no watch).
    """

    mode: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    cpu_devices: int | None = None
    initialization_timeout: float | None = None
    stall_timeout: float | None = None


#: Environment variables for JAX's own time-outs (whole seconds), passed to
#: ``jax.distributed.initialize``: the shutdown barrier at exit (JAX's default 300 s) and the
#: heartbeat after which the coordination service declares a silent rank dead (100 s).


def env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.DistributedError(f"environment variable {name}={raw!r} is not an integer.") from None


def env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise errors.DistributedError(f"environment variable {name}={raw!r} is not a number of seconds.") from None


def parse_ids(value: Any, source: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return tuple(int(v) for v in items)
        except ValueError:
            raise errors.DistributedError(f"{source}={value!r}: expected a comma list of device ids like '0,1'.") from None
    if isinstance(value, int):
        return (int(value),)
    return tuple(int(v) for v in value)


def split_address(address: str, source: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise errors.DistributedError(f"{source}={address!r}: expected 'host:port', like '127.0.0.1:8476'.")
    return host, int(port)


def differences(requested: DistributedConfig, before: DistributedConfig) -> list[tuple[str, Any, Any]]:
    out = []
    for field in ("coordinator_address", "num_processes", "process_id", "local_device_ids", "cpu_devices"):
        new, old = getattr(requested, field), getattr(before, field)
        if new is not None and new != old and not (field == "num_processes" and new == 1 and old is None):
            out.append((field, new, old))
    return out


def jax_timeouts() -> dict[str, int]:
    """JAX's shutdown and heartbeat time-outs from the environment, where this JAX takes them."""
    out = {}
    for env, arg in (
        (contract.SHUTDOWN_TIMEOUT, "shutdown_timeout_seconds"),
        (contract.HEARTBEAT_TIMEOUT, "heartbeat_timeout_seconds"),
    ):
        value = env_int(env)
        if value is None:
            continue
        if value < 1:
            raise errors.DistributedError(f"environment variable {env}={value}: expected whole seconds >= 1.")
        if jax_internals.initialize_accepts(arg):
            out[arg] = value
    return out


def requested_config(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_device_ids: int | Sequence[int] | None,
    cpu_devices: int | None,
    initialization_timeout: float | None,
    stall_timeout: float | None,
) -> DistributedConfig:
    """The configuration asked for: each argument, else its ``DISTMAP_*`` variable (``mode`` still ``"?"``).

    Example:
        >>> requested_config(None, None, None, None, 4, None, None).cpu_devices
        4
    """
    timeout = initialization_timeout if initialization_timeout is not None else env_float(contract.INIT_TIMEOUT)
    if stall_timeout is None:
        stall_timeout = progress.stall_timeout_from_env()
    elif isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float)) or not 0 <= stall_timeout < math.inf:
        raise errors.DistributedError(f"initialize: stall_timeout={stall_timeout!r}; expected seconds >= 0 (0: no watch).")
    return DistributedConfig(
        mode="?",
        coordinator_address=coordinator_address or os.environ.get(contract.COORDINATOR) or None,
        num_processes=num_processes if num_processes is not None else env_int(contract.NUM_PROCESSES),
        process_id=process_id if process_id is not None else env_int(contract.PROCESS_ID),
        local_device_ids=parse_ids(
            local_device_ids if local_device_ids is not None else os.environ.get(contract.LOCAL_DEVICE_IDS) or None,
            "local_device_ids" if local_device_ids is not None else contract.LOCAL_DEVICE_IDS,
        ),
        cpu_devices=cpu_devices if cpu_devices is not None else env_int(contract.CPU_DEVICES),
        initialization_timeout=timeout,
        stall_timeout=float(stall_timeout) if stall_timeout else None,
    )


__all__ = [
    "DistributedConfig",
    "differences",
    "env_float",
    "env_int",
    "jax_timeouts",
    "parse_ids",
    "requested_config",
    "split_address",
]
