"""Multi-process runs: join the run, check that every process agrees, global data, hybrid meshes.

Call :func:`initialize` first thing in ``main``; under a distmap launcher, a SLURM job, a
TPU VM pod or a Kubernetes job it finds its place in the run by itself, and alone it runs
as one process.

Example:
    >>> from distmap import distributed
    >>> distributed.initialize().mode  # no launcher, no cluster: a single process
    'single'
    >>> distributed.process_index(), distributed.process_count()
    (0, 1)

Environment variables read by :func:`initialize` (set by ``launch/local.py`` and the other
launchers): ``DISTMAP_COORDINATOR``, ``DISTMAP_COORDINATOR_BIND``, ``DISTMAP_NUM_PROCESSES``,
``DISTMAP_PROCESS_ID``, ``DISTMAP_LOCAL_DEVICE_IDS``, ``DISTMAP_CPU_DEVICES``,
``DISTMAP_INIT_TIMEOUT``, ``DISTMAP_RUN_ID``, ``DISTMAP_ATTEMPT``, ``DISTMAP_STALL_TIMEOUT`` (the
progress watch), ``DISTMAP_FAST_EXIT`` (``0``: failing ranks wait in JAX's shutdown barrier),
``DISTMAP_SHUTDOWN_TIMEOUT`` and ``DISTMAP_HEARTBEAT_TIMEOUT`` (JAX's own time-outs).

A run being stopped (SIGTERM: a launcher's or scheduler's stop, a preemption notice) is seen
by :func:`stop_requested` at the same step on every rank: save, then end with
:data:`EXIT_STOPPED`, which no launcher restarts.

The progress watch (on when a launcher sets ``--stall_timeout``) counts the multi-process
launches it sees on each rank: sharded ``distmap.vmap`` calls, functions wrapped in
:func:`watched`, and :func:`note` calls. :func:`verify` compares them on every rank at once.
"""

from distmap._src.absl_glue import flag_config, initialize_from_flags
from distmap._src.consistency import check_consistency, compare_fingerprints, fingerprint_of
from distmap._src.global_data import global_to_host_local, host_local_to_global
from distmap._src.hybrid_mesh import make_hybrid_mesh
from distmap._src.joining import initialize, is_initialized, process_count, process_index, shutdown
from distmap._src.progress import note, verify, watched
from distmap._src.run_config import DistributedConfig
from distmap._src.stops import EXIT_STOPPED, stop_requested

__all__ = [
    "EXIT_STOPPED",
    "DistributedConfig",
    "check_consistency",
    "compare_fingerprints",
    "fingerprint_of",
    "flag_config",
    "global_to_host_local",
    "host_local_to_global",
    "initialize",
    "initialize_from_flags",
    "is_initialized",
    "make_hybrid_mesh",
    "note",
    "process_count",
    "process_index",
    "shutdown",
    "stop_requested",
    "verify",
    "watched",
]
