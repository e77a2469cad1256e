"""The environment contract between a launcher and the ranks it starts.

A launcher (local, SSH, SLURM, Kubernetes, ...) starts every rank with the variables
below; ``distmap.distributed.initialize()`` called with no arguments in the program reads
them and joins the run. Explicit arguments to ``initialize`` win over these; where none
of them is set, JAX's own cluster detection (SLURM, TPU VMs, Kubernetes, MPI) is used.

=============================  ===========================================================
``DISTMAP_COORDINATOR``        ``host:port`` of the coordinator (rank 0 serves it there).
``DISTMAP_COORDINATOR_BIND``   optional ``host:port`` rank 0 binds; default: the host part
                               of ``DISTMAP_COORDINATOR`` (so loopback stays loopback).
``DISTMAP_NUM_PROCESSES``      number of processes in the run.
``DISTMAP_PROCESS_ID``         this process's rank, ``0 .. num_processes - 1``.
``DISTMAP_LOCAL_DEVICE_IDS``   comma list of the accelerator ids this process uses.
``DISTMAP_CPU_DEVICES``        simulated CPU devices in this process (CPU runs).
``DISTMAP_INIT_TIMEOUT``       seconds to wait for every process to join (and to agree).
``DISTMAP_STALL_TIMEOUT``      seconds a rank may make no progress while others wait
                               before the progress watch fails the run; ``0``: no watch.
``DISTMAP_RUN_ID``             id of the launch; the same on every rank (part of the
                               start-up fingerprint, so a stale rank cannot join).
``DISTMAP_ATTEMPT``            0 for the first start, k for the k-th restart of the group.
``DISTMAP_RUN_DIR``            the launch's run folder (logs), for programs that write files.
``DISTMAP_CHECK_COLLECTIVES``  ``1``: check at every execution that all ranks run the same
                               sharded maps in the same order (``--check_collectives``).
=============================  ===========================================================

A program (not a launcher) may also set these, read by ``initialize``:

=============================  ===========================================================
``DISTMAP_FAST_EXIT``          ``0``: a failing rank waits in JAX's shutdown barrier
                               instead of exiting at once with its own status.
``DISTMAP_SHUTDOWN_TIMEOUT``   seconds for JAX's ``shutdown_timeout_seconds``.
``DISTMAP_HEARTBEAT_TIMEOUT``  seconds for JAX's ``heartbeat_timeout_seconds``.
=============================  ===========================================================

Example:
    >>> spec = RankSpec(coordinator="127.0.0.1:1234", num_processes=2, process_id=1, run_id="r1",
    ...                 cpu_devices=4)
    >>> env = child_env(spec, base={"HOME": "/home/me", "DISTMAP_PROCESS_ID": "7"})
    >>> env["DISTMAP_PROCESS_ID"], env["DISTMAP_CPU_DEVICES"], env["JAX_PLATFORMS"], env["HOME"]
    ('1', '4', 'cpu', '/home/me')
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

COORDINATOR = "DISTMAP_COORDINATOR"
COORDINATOR_BIND = "DISTMAP_COORDINATOR_BIND"
NUM_PROCESSES = "DISTMAP_NUM_PROCESSES"
PROCESS_ID = "DISTMAP_PROCESS_ID"
LOCAL_DEVICE_IDS = "DISTMAP_LOCAL_DEVICE_IDS"
CPU_DEVICES = "DISTMAP_CPU_DEVICES"
INIT_TIMEOUT = "DISTMAP_INIT_TIMEOUT"
STALL_TIMEOUT = "DISTMAP_STALL_TIMEOUT"
RUN_ID = "DISTMAP_RUN_ID"
ATTEMPT = "DISTMAP_ATTEMPT"
RUN_DIR = "DISTMAP_RUN_DIR"
CHECK_COLLECTIVES = "DISTMAP_CHECK_COLLECTIVES"
FAST_EXIT = "DISTMAP_FAST_EXIT"
SHUTDOWN_TIMEOUT = "DISTMAP_SHUTDOWN_TIMEOUT"
HEARTBEAT_TIMEOUT = "DISTMAP_HEARTBEAT_TIMEOUT"

#: Every variable of the contract, in the order the table above lists them.
ENV_VARS = (
    COORDINATOR,
    COORDINATOR_BIND,
    NUM_PROCESSES,
    PROCESS_ID,
    LOCAL_DEVICE_IDS,
    CPU_DEVICES,
    INIT_TIMEOUT,
    STALL_TIMEOUT,
    RUN_ID,
    ATTEMPT,
    RUN_DIR,
    CHECK_COLLECTIVES,
)
#: The variables a program may set for itself (the second table above).
PROGRAM_ENV_VARS = (FAST_EXIT, SHUTDOWN_TIMEOUT, HEARTBEAT_TIMEOUT)

#: Exit status of a rank whose processes did not all join within the start-up time-out
#: (``EX_TEMPFAIL``). JAX would otherwise abort the process with SIGABRT and no explanation.
EXIT_INIT_TIMEOUT = 75
#: Exit status of a rank that stopped launching while the others waited for it (the progress watch).
EXIT_STALLED = 76
#: Exit status of a rank whose launches differ from the others' (``DivergenceError``).
EXIT_DIVERGED = 77
#: Exit status of a rank that ends because another rank failed, stalled or diverged.
EXIT_PEER_FAILED = 78

#: Exit status of a rank that saved and ended because its run was stopped (``128 + SIGTERM``, what
#: the default action of SIGTERM gives too). Launchers never restart a run a rank left this way.
EXIT_STOPPED = 143
#: Exit statuses that mean "stopped on purpose": SIGTERM, SIGINT, SIGHUP (a scheduler's stop, a
#: preemption notice, Ctrl-C), whether by the signal's default action or by the program itself.
STOP_EXIT_CODES = frozenset({128 + 15, 128 + 2, 128 + 1})


def is_stop(exit_code: int) -> bool:
    """Whether a shell-style exit code says the rank was stopped (not that it failed).

    Example:
        >>> is_stop(143), is_stop(130), is_stop(137), is_stop(1)
        (True, True, False, False)
    """
    return exit_code in STOP_EXIT_CODES


#: Text in the error rank 0 raises when the coordinator's port is taken; a launcher that
#: picked the port itself sees it in rank 0's log and retries with a fresh port.
PORT_IN_USE_MARKER = "coordinator address already in use"

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run everywhere it goes, else ``ValueError``.

    A run id names the run folder, ``DISTMAP_RUN_ID``, a Kubernetes annotation and part of
    a Job name, so it is kept to letters, digits and ``_ . -`` (128 at most, starting with a
    letter or digit): no separator, quote or newline can reach a path, script or manifest.

    Example:
        >>> check_run_id("exp-1.b")
        'exp-1.b'
    """
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(
            f"run id {run_id!r} is not allowed: use letters, digits and _ . - (at most 128, starting with a letter "
            "or digit)."
        )
    return run_id


@dataclasses.dataclass(frozen=True)
class RankSpec:
    """What one rank needs to join a run; :func:`rank_env` turns it into variables.

    Attributes:
        coordinator: ``host:port`` of the coordinator.
        num_processes: processes in the run.
        process_id: this rank, or ``None`` where the scheduler sets it (a Kubernetes index,
            SLURM's ``SLURM_PROCID``) and JAX's cluster detection reads it.
        run_id: id of the launch, the same on every rank.
        attempt: 0, or the number of the restart.
        cpu_devices: simulated CPU devices per process; setting it makes the run CPU-only
            (``JAX_PLATFORMS=cpu``).
        local_device_ids: accelerator ids as this process numbers them.
        visible_devices: physical GPU ids to expose (``CUDA_VISIBLE_DEVICES``).
        init_timeout: seconds to wait for every process to join.
        stall_timeout: seconds of no progress before the progress watch fails the run
            (``0``: no watch; ``None``: the runtime's default).
        coordinator_bind: address rank 0 binds, where not the coordinator's host.
        run_dir: the run folder.
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    run_id: str
    attempt: int = 0
    cpu_devices: int | None = None
    local_device_ids: Sequence[int] | None = None
    visible_devices: Sequence[int] | None = None
    init_timeout: float | None = None
    stall_timeout: float | None = None
    coordinator_bind: str | None = None
    run_dir: str | None = None


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


def rank_env(spec: RankSpec) -> dict[str, str]:
    """Only the variables a rank is given (no inherited ones): for manifests and scripts.

    Example:
        >>> rank_env(RankSpec("node0:8476", 4, None, "job7"))
        {'DISTMAP_COORDINATOR': 'node0:8476', 'DISTMAP_NUM_PROCESSES': '4', 'DISTMAP_RUN_ID': 'job7', \
'DISTMAP_ATTEMPT': '0', 'PYTHONUNBUFFERED': '1'}
    """
    env: dict[str, str] = {}
    if spec.coordinator is not None:
        env[COORDINATOR] = spec.coordinator
    if spec.coordinator_bind is not None:
        env[COORDINATOR_BIND] = spec.coordinator_bind
    if spec.num_processes is not None:
        env[NUM_PROCESSES] = str(int(spec.num_processes))
    if spec.process_id is not None:
        env[PROCESS_ID] = str(int(spec.process_id))
    if spec.local_device_ids is not None:
        env[LOCAL_DEVICE_IDS] = _ids(spec.local_device_ids)
    if spec.cpu_devices is not None:
        env[CPU_DEVICES] = str(int(spec.cpu_devices))
        env["JAX_NUM_CPU_DEVICES"] = env[CPU_DEVICES]  # plain JAX programs get the devices too
        env["JAX_PLATFORMS"] = "cpu"
    if spec.visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = _ids(spec.visible_devices)
    if spec.init_timeout is not None:
        env[INIT_TIMEOUT] = f"{float(spec.init_timeout):g}"
    if spec.stall_timeout is not None:
        env[STALL_TIMEOUT] = f"{float(spec.stall_timeout):g}"
    env[RUN_ID] = spec.run_id
    env[ATTEMPT] = str(int(spec.attempt))
    if spec.run_dir is not None:
        env[RUN_DIR] = spec.run_dir
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the launcher as they are printed
    return env


def child_env(spec: RankSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment of a rank: ``base`` (default ``os.environ``) plus :func:`rank_env`.

    Any ``DISTMAP_*`` variable in ``base`` (say, from an enclosing launch) is dropped first,
    so a rank never sees a mix of two runs.
    """
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith("DISTMAP_")}
    env.update(rank_env(spec))
    return env


__all__ = [
    "ATTEMPT",
    "CHECK_COLLECTIVES",
    "COORDINATOR",
    "COORDINATOR_BIND",
    "CPU_DEVICES",
    "ENV_VARS",
    "FAST_EXIT",
    "HEARTBEAT_TIMEOUT",
    "PROGRAM_ENV_VARS",
    "SHUTDOWN_TIMEOUT",
    "EXIT_DIVERGED",
    "EXIT_INIT_TIMEOUT",
    "EXIT_PEER_FAILED",
    "EXIT_STALLED",
    "EXIT_STOPPED",
    "INIT_TIMEOUT",
    "LOCAL_DEVICE_IDS",
    "NUM_PROCESSES",
    "PORT_IN_USE_MARKER",
    "PROCESS_ID",
    "RUN_DIR",
    "RUN_ID",
    "STALL_TIMEOUT",
    "STOP_EXIT_CODES",
    "RankSpec",
    "check_run_id",
    "child_env",
    "is_stop",
    "rank_env",
]
