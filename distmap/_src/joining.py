"""Joining a multi-process run: ``initialize``, ``shutdown`` and what they start.

``initialize()`` settles the configuration (``run_config``), joins the run through
``jax.distributed.initialize`` (``_start``), then, in a multi-process run, takes over failing
exits (``exits``), runs the start-up check (``consistency``) and starts the progress watch
(``progress``). With no launcher, explicit values or cluster the program is a single
process: nothing is started, only the CPU device count is applied, so the same program runs
bare and under a launcher.

Example:
    >>> from distmap._src import joining
    >>> joining.initialize().mode
    'single'
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from distmap import errors
from distmap._src import collective_check, consistency, exits, jax_internals, progress, run_config
from distmap._src.launch import contract
from distmap._src.run_config import DistributedConfig


@dataclasses.dataclass
class _State:
    config: DistributedConfig | None = None


_STATE = _State()


def _check_package() -> None:
    """Fail clearly when ``import distmap`` found some other folder named ``distmap`` first.

    A folder ``distmap/`` without ``__init__.py`` earlier on ``sys.path`` (the program's own
    directory, say) becomes a namespace package that shadows this one: its submodules still
    import from here, but ``distmap/__init__.py`` never ran.
    """
    import distmap

    if getattr(distmap, "__file__", None):
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    others = list(dict.fromkeys(os.path.abspath(p) for p in getattr(distmap, "__path__", [])))
    others = [p for p in others if p != here]
    raise errors.DistributedError(
        f"'import distmap' found {', '.join(map(repr, others)) or 'a folder'}: a folder named distmap without "
        f"__init__.py, which Python imported as a namespace package instead of the distmap package at {here!r} "
        "(its __init__.py never ran, so distmap's API is missing). Rename or move that folder, or run the program "
        "from another directory."
    )


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    cpu_devices: int | None = None,
    initialization_timeout: float | None = None,
    fingerprint: Mapping[str, Any] | bool | None = None,
    stall_timeout: float | None = None,
    fast_exit: bool | None = None,
    check_collectives: bool | None = None,
) -> DistributedConfig:
    """Join the multi-process run this program was started in; call it first, before any JAX work.

    Each value comes from the argument, else its ``DISTMAP_*`` environment variable, else
    JAX's cluster detection. Without any, the program runs as one process and nothing is
    started. A second call with the same (or fewer) values does nothing; different values
    raise. In a multi-process run every process then checks that all run the same program
    with the same configuration (see :func:`~distmap._src.consistency.check_consistency`).

    Args:
        coordinator_address: ``host:port`` of rank 0's coordinator (``DISTMAP_COORDINATOR``).
            Rank 0 binds the host part only, so ``127.0.0.1`` stays on loopback.
        num_processes: processes in the run (``DISTMAP_NUM_PROCESSES``).
        process_id: this process's rank (``DISTMAP_PROCESS_ID``).
        local_device_ids: accelerator ids this process uses (``DISTMAP_LOCAL_DEVICE_IDS``).
        cpu_devices: simulated CPU devices in this process (``DISTMAP_CPU_DEVICES``).
        initialization_timeout: seconds to wait for every process to join
            (``DISTMAP_INIT_TIMEOUT``; JAX's default 300 s). When it runs out the process ends
            with exit code 75 and a message saying what was missing, instead of JAX's abort.
        fingerprint: the start-up check. ``None`` or ``True``: compare the program, distmap
            and JAX across processes; a mapping (for example flag values) is compared too,
            key by key; ``False`` skips the check.
        stall_timeout: seconds without progress after which the progress watch reports a
            stalled rank (``DISTMAP_STALL_TIMEOUT``, which launchers set from
            ``--stall_timeout``; unset or ``0``: no watch). See :mod:`distmap._src.progress`:
            it also reports ranks that launch different computations, or vanish.
        fast_exit: a rank that fails (uncaught exception, ``sys.exit`` non-zero) exits at once
            with its own code instead of waiting in JAX's shutdown barrier (300 s); the
            ``atexit`` handlers registered after this call still run, those registered
            before it (JAX's barrier among them) are skipped. ``False`` (or
            ``DISTMAP_FAST_EXIT=0``) keeps Python's and JAX's behaviour. Normal exits are
            never affected. See :mod:`distmap._src.exits`.
        check_collectives: check at every execution that all ranks run the same sharded maps in
            the same order (``DISTMAP_CHECK_COLLECTIVES``, launchers' ``--check_collectives``;
            default off). See :mod:`distmap._src.collective_check`.

    Returns:
        The :class:`DistributedConfig` in force.

    Raises:
        DistributedError: JAX's backend was started before this call, a value is malformed,
            the coordinator's port is taken, a second call disagrees with the first, or the
            processes disagree at start-up.

    Example:
        >>> from distmap import distributed
        >>> distributed.initialize().mode  # no launcher, no cluster: one process
        'single'
    """
    _check_package()
    requested = run_config.requested_config(coordinator_address, num_processes, process_id, local_device_ids,
                                            cpu_devices, initialization_timeout, stall_timeout)
    timeout = requested.initialization_timeout
    fast = exits.fast_exit_from_env() if fast_exit is None else bool(fast_exit)
    check = collective_check.enabled_from_env() if check_collectives is None else bool(check_collectives)
    if _STATE.config is not None:
        return _same_as_before(requested)

    if requested.cpu_devices is not None and requested.cpu_devices < 1:
        raise errors.DistributedError(f"cpu_devices must be a positive int, got {requested.cpu_devices}.")
    if requested.num_processes is not None and requested.num_processes < 1:
        raise errors.DistributedError(f"num_processes must be a positive int, got {requested.num_processes}.")

    import jax

    if jax.distributed.is_initialized():  # the program called jax.distributed.initialize itself: adopt it
        return _adopt_jax_state(requested)

    cluster = None if requested.coordinator_address else jax_internals.detected_cluster()
    multi = requested.coordinator_address is not None or cluster is not None
    if not multi:
        if requested.num_processes not in (None, 1) or requested.process_id not in (None, 0):
            raise errors.DistributedError(
                f"initialize: num_processes={requested.num_processes}, process_id={requested.process_id} but no "
                f"coordinator address: give coordinator_address=, set {contract.COORDINATOR}=host:port, or start "
                "the program with a launcher (python launch/local.py --num_processes=N -- ...)."
            )
        config = dataclasses.replace(requested, mode="single", num_processes=1, process_id=0)
        _apply_cpu_devices(config.cpu_devices, single=True)
        _STATE.config = config
        return config

    if requested.coordinator_address is not None:
        num, pid = requested.num_processes, requested.process_id
        if num is None or pid is None:
            missing = [n for n, v in (("num_processes", num), ("process_id", pid)) if v is None]
            raise errors.DistributedError(
                f"initialize: coordinator {requested.coordinator_address!r} given but not {' and '.join(missing)} "
                f"(arguments, or {contract.NUM_PROCESSES} / {contract.PROCESS_ID})."
            )
        run_config.split_address(requested.coordinator_address, "coordinator_address")
        if not 0 <= pid < num:
            raise errors.DistributedError(f"initialize: process_id={pid} is not in 0..{num - 1} (num_processes={num}).")
    if jax_internals.backend_started():
        raise errors.DistributedError(
            "distmap.distributed.initialize() must run before anything starts JAX's backend (jax.devices(), "
            "creating an array, a jitted call, ...): the run's devices are only known once every process has "
            "joined. Call it at the top of main(), right after parsing flags."
        )
    _apply_cpu_devices(requested.cpu_devices, single=False)
    config = _start(requested, cluster)
    _STATE.config = config
    n = config.num_processes or 1
    if fast and n > 1:
        exits.install(jax_internals.distributed_client, int(config.process_id or 0), n)
    if fingerprint is not False and n > 1:
        consistency.check_consistency(fingerprint if isinstance(fingerprint, Mapping) else None, timeout=timeout)
    if config.stall_timeout and n > 1:
        progress.start(jax_internals.distributed_client(), int(config.process_id or 0), n, config.stall_timeout)
    if check and n > 1:
        collective_check.start(int(config.process_id or 0), jax_internals.distributed_client())
    return config


def _same_as_before(requested: DistributedConfig) -> DistributedConfig:
    before = _STATE.config
    assert before is not None
    if before.cpu_devices is None and requested.cpu_devices is not None:
        _apply_cpu_devices(requested.cpu_devices, single=before.mode == "single")  # raises if too late to change
        before = _STATE.config = dataclasses.replace(before, cpu_devices=requested.cpu_devices)
    differ = run_config.differences(requested, before)
    if differ:
        raise errors.DistributedError(
            "distmap.distributed.initialize() was already called with another configuration; now "
            + ", ".join(f"{field}={new!r} (first call: {old!r})" for field, new, old in differ)
            + ". A process joins one run; call distmap.distributed.shutdown() first to leave it."
        )
    return before


def _adopt_jax_state(requested: DistributedConfig) -> DistributedConfig:
    """Join the run the program already joined with ``jax.distributed.initialize`` itself."""
    coordinator, n, me = jax_internals.distributed_state()
    config = DistributedConfig(
        mode="explicit",
        coordinator_address=coordinator,
        num_processes=n,
        process_id=me,
        local_device_ids=requested.local_device_ids,
        cpu_devices=requested.cpu_devices,
        initialization_timeout=requested.initialization_timeout,
        stall_timeout=requested.stall_timeout,
    )
    differ = run_config.differences(requested, config)
    if differ:
        raise errors.DistributedError(
            "jax.distributed.initialize() was already called in this process (by the program, before "
            "distmap.distributed.initialize()), with another configuration than distmap was given: "
            + ", ".join(f"{field}={new!r} (jax.distributed has {old!r})" for field, new, old in differ)
            + ". Call only distmap.distributed.initialize(), which starts JAX's run itself, or give it no values "
            "so that it adopts the run JAX joined."
        )
    _STATE.config = config
    return config


def _apply_cpu_devices(n: int | None, *, single: bool) -> None:
    import jax

    started = jax_internals.backend_started()
    if n is not None:
        if started:
            have = len(jax.local_devices(backend="cpu")) if _has_cpu() else None
            if have != n:
                raise errors.DistributedError(
                    f"initialize(cpu_devices={n}) comes too late: JAX's backend is already running with {have} CPU "
                    "device(s). Call distmap.distributed.initialize() before any JAX work."
                )
        else:
            jax.config.update("jax_num_cpu_devices", int(n))
    if not single and not started:
        current = getattr(jax.config, "jax_cpu_collectives_implementation", None)
        if current in (None, "none", ""):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives


def _has_cpu() -> bool:
    import jax

    try:
        jax.local_devices(backend="cpu")
        return True
    except RuntimeError:
        return False


def _bind_address(coordinator: str) -> str:
    bind = os.environ.get(contract.COORDINATOR_BIND)
    if bind:
        run_config.split_address(bind, contract.COORDINATOR_BIND)
        return bind
    host, port = run_config.split_address(coordinator, "coordinator_address")
    return f"{host}:{port}"


def _check_port_free(bind: str) -> None:
    """Raise a clear error if rank 0's coordinator cannot bind ``bind`` (JAX may segfault instead)."""
    host, port = run_config.split_address(bind, "coordinator bind address")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # JAX reports names it cannot resolve
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is fine
            try:
                s.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise errors.DistributedError(_port_message(bind)) from None
                continue  # not a local address, say: let JAX try


def _port_message(bind: str) -> str:
    return (
        f"{contract.PORT_IN_USE_MARKER}: rank 0 cannot start the coordinator on {bind}, another program listens "
        "there. Use another port (distmap's launchers pick a free one for each start unless one is forced)."
    )


@dataclasses.dataclass(frozen=True)
class _JoinMarkers:
    """Files in the launch's run folder saying which ranks reached ``initialize``.

    Until every rank joined, JAX's coordination service cannot be asked who is there, so a
    rank that times out would not know whom it waited for. Where the launcher gave a run
    folder (``DISTMAP_RUN_DIR``, shared by the ranks of ``launch/local.py`` and usually of
    SLURM), each rank leaves a marker there before joining and removes it once all joined;
    the time-out message then names the ranks whose marker is missing.
    """

    folder: str
    rank: int
    num_processes: int

    @staticmethod
    def here(requested: DistributedConfig) -> _JoinMarkers | None:
        run_dir = os.environ.get(contract.RUN_DIR, "")
        if not run_dir or not os.path.isdir(run_dir) or requested.process_id is None or not requested.num_processes:
            return None
        attempt = os.environ.get(contract.ATTEMPT, "0").strip() or "0"
        folder = os.path.join(run_dir, f".joining-{attempt}")
        markers = _JoinMarkers(folder, int(requested.process_id), int(requested.num_processes))
        try:
            os.makedirs(folder, exist_ok=True)
            with open(markers._path(markers.rank), "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError:
            return None
        return markers

    def _path(self, rank: int) -> str:
        return os.path.join(self.folder, f"rank-{rank}")

    def missing(self) -> list[int]:
        return [r for r in range(self.num_processes) if not os.path.exists(self._path(r))]

    def missing_text(self) -> str:
        missing = self.missing()
        if not missing:
            return "Every rank reached initialize() (their markers are in the run folder), so they wait for each other. "
        return f"{consistency.ranks_text(missing)} never reached distmap.distributed.initialize() (no marker in {self.folder}). "

    def joined(self) -> None:
        """Remove this rank's marker (joined, or given up), and the folder once empty."""
        try:
            os.remove(self._path(self.rank))
            os.rmdir(self.folder)  # the last rank out removes the folder
        except OSError:
            pass


def _start(requested: DistributedConfig, cluster: str | None) -> DistributedConfig:
    import jax

    timeout = requested.initialization_timeout
    kwargs: dict[str, Any] = {}
    if requested.coordinator_address is not None:
        bind = _bind_address(requested.coordinator_address)
        if requested.process_id == 0:
            _check_port_free(bind)
        kwargs.update(
            coordinator_address=requested.coordinator_address,
            num_processes=requested.num_processes,
            process_id=requested.process_id,
            coordinator_bind_address=bind,
            cluster_detection_method="deactivate",  # never let a surrounding SLURM job override the launcher
        )
        if requested.local_device_ids is not None:
            kwargs["local_device_ids"] = list(requested.local_device_ids)
        where = requested.coordinator_address
        who = f"rank {requested.process_id} of {requested.num_processes}"
    else:
        if requested.local_device_ids is not None:
            kwargs["local_device_ids"] = list(requested.local_device_ids)
        if requested.num_processes is not None:
            kwargs["num_processes"] = requested.num_processes
        if requested.process_id is not None:
            kwargs["process_id"] = requested.process_id
        where = f"the coordinator found by JAX's {cluster} detection"
        who = "this process"
    wait_s = float(timeout) if timeout is not None else 300.0
    # JAX aborts the process (SIGABRT, no Python error) when its own time-out runs out, so give
    # it a margin and end the process ourselves first, with a message that says what happened.
    kwargs["initialization_timeout"] = int(math.ceil(wait_s)) + 10
    kwargs.update(run_config.jax_timeouts())
    marker = _JoinMarkers.here(requested)
    done = threading.Event()

    def watchdog() -> None:
        if done.wait(wait_s):
            return
        sys.stderr.write(
            f"distmap.errors.DistributedError: {who} waited {wait_s:g} s at {where} for every process to "
            f"join the run, and some never did. {marker.missing_text() if marker else ''}A rank did not start, "
            f"crashed or exited before calling distmap.distributed.initialize(), or was started with another "
            f"coordinator or process count. Ending this process (exit code {contract.EXIT_INIT_TIMEOUT}); raise "
            f"{contract.INIT_TIMEOUT} if the processes only start slowly.\n"
        )
        sys.stderr.flush()
        if marker:
            marker.joined()
        os._exit(contract.EXIT_INIT_TIMEOUT)

    threading.Thread(target=watchdog, name="distmap-init-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # JAX raises RuntimeError subclasses; say what they mean
        text = str(e)
        if "Failed to start RPC server" in text or "Address already in use" in text:
            raise errors.DistributedError(_port_message(kwargs.get("coordinator_bind_address", "?"))) from e
        raise errors.DistributedError(f"{who} could not join the run at {where}: {text}") from e
    finally:
        done.set()
    if marker:
        marker.joined()
    coordinator, n, me = jax_internals.distributed_state()
    return dataclasses.replace(
        requested,
        mode="explicit" if requested.coordinator_address is not None else "cluster",
        coordinator_address=coordinator,
        num_processes=n,
        process_id=me,
    )


#: Seconds a failing rank may spend leaving the run (see ``distmap._src.exits``).
EXIT_GRACE_S = exits.EXIT_GRACE_S


# --------------------------------------------------------------------------------------
# Small conveniences


def process_index() -> int:
    """This process's rank (``jax.process_index()``); 0 in a single-process run."""
    import jax

    return jax.process_index()


def process_count() -> int:
    """The number of processes in the run (``jax.process_count()``)."""
    import jax

    return jax.process_count()


def is_initialized() -> bool:
    """Whether :func:`initialize` has run in this process (and :func:`shutdown` has not)."""
    return _STATE.config is not None


def shutdown() -> None:
    """Leave the run (``jax.distributed.shutdown()``); a later :func:`initialize` may join another.

    Example:
        >>> from distmap import distributed
        >>> distributed.shutdown()  # harmless without a run
    """
    progress.stop()
    collective_check.stop()
    exits.uninstall()
    if jax_internals.distributed_client() is not None:
        import jax

        jax.distributed.shutdown()
    _STATE.config = None
    consistency.reset()


__all__ = [
    "EXIT_GRACE_S",
    "initialize",
    "is_initialized",
    "process_count",
    "process_index",
    "shutdown",
]
