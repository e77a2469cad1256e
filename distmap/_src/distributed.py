"""Multi-process start-up: join the run, check that every process agrees, hybrid meshes.

``initialize()`` wraps ``jax.distributed.initialize``. Where each value comes from, first
found wins:

1. the arguments given to :func:`initialize` (or absl flags, through :func:`initialize_from_flags`);
2. the environment a distmap launcher sets (``DISTMAP_COORDINATOR``, ``DISTMAP_NUM_PROCESSES``,
   ``DISTMAP_PROCESS_ID``, ... see ``distmap._src.launch.contract``);
3. JAX's own cluster detection (SLURM, TPU VMs, Kubernetes, Open MPI), used when neither
   names a coordinator.

With none of these the program is a single process: nothing is started, only the CPU
device count is applied, so the same program runs bare and under a launcher.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from distmap import errors
from distmap._src import exits, progress
from distmap._src.hybrid_mesh import hybrid_device_array, make_hybrid_mesh  # re-exported: hybrid meshes
from distmap._src.launch import contract

_PER_RANK_FLAGS = frozenset({"process_id", "local_device_ids"})


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
SHUTDOWN_TIMEOUT_ENV = "DISTMAP_SHUTDOWN_TIMEOUT"
HEARTBEAT_TIMEOUT_ENV = "DISTMAP_HEARTBEAT_TIMEOUT"


@dataclasses.dataclass
class _State:
    config: DistributedConfig | None = None
    checks: int = 0


_STATE = _State()


# --------------------------------------------------------------------------------------
# Reading the configuration


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.DistributedError(f"environment variable {name}={raw!r} is not an integer.") from None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise errors.DistributedError(f"environment variable {name}={raw!r} is not a number of seconds.") from None


def _parse_ids(value: Any, source: str) -> tuple[int, ...] | None:
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


def _split_address(address: str, source: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise errors.DistributedError(f"{source}={address!r}: expected 'host:port', like '127.0.0.1:8476'.")
    return host, int(port)


def _backend_started() -> bool:
    """Whether JAX's backend (its devices) already exists; checked across JAX versions."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - very old or very new JAX
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    if check is not None:
        return bool(check())
    return bool(getattr(xla_bridge, "_backends", {}))  # pragma: no cover


def _detected_cluster() -> str | None:
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


def _jax_client() -> Any:
    """JAX's distributed client (the key-value store), or ``None`` outside a run.

    ``jax.distributed`` has no public accessor for it; ``jax.distributed.is_initialized()``
    (JAX 0.10 and 0.12) answers whether there is one.
    """
    import jax

    if not jax.distributed.is_initialized():
        return None
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


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


# --------------------------------------------------------------------------------------
# initialize


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
) -> DistributedConfig:
    """Join the multi-process run this program was started in; call it first, before any JAX work.

    Each value comes from the argument, else its ``DISTMAP_*`` environment variable, else
    JAX's cluster detection. Without any, the program runs as one process and nothing is
    started. A second call with the same (or fewer) values does nothing; different values
    raise. In a multi-process run every process then checks that all run the same program
    with the same configuration (see :func:`check_consistency`).

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
    timeout = initialization_timeout if initialization_timeout is not None else _env_float(contract.INIT_TIMEOUT)
    if stall_timeout is None:
        stall_timeout = progress.stall_timeout_from_env()
    elif isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float)) or not 0 <= stall_timeout < math.inf:
        raise errors.DistributedError(f"initialize: stall_timeout={stall_timeout!r}; expected seconds >= 0 (0: no watch).")
    fast = exits.fast_exit_from_env() if fast_exit is None else bool(fast_exit)
    requested = DistributedConfig(
        mode="?",
        coordinator_address=coordinator_address or os.environ.get(contract.COORDINATOR) or None,
        num_processes=num_processes if num_processes is not None else _env_int(contract.NUM_PROCESSES),
        process_id=process_id if process_id is not None else _env_int(contract.PROCESS_ID),
        local_device_ids=_parse_ids(
            local_device_ids if local_device_ids is not None else os.environ.get(contract.LOCAL_DEVICE_IDS) or None,
            "local_device_ids" if local_device_ids is not None else contract.LOCAL_DEVICE_IDS,
        ),
        cpu_devices=cpu_devices if cpu_devices is not None else _env_int(contract.CPU_DEVICES),
        initialization_timeout=timeout,
        stall_timeout=float(stall_timeout) if stall_timeout else None,
    )
    if _STATE.config is not None:
        return _same_as_before(requested)

    if requested.cpu_devices is not None and requested.cpu_devices < 1:
        raise errors.DistributedError(f"cpu_devices must be a positive int, got {requested.cpu_devices}.")
    if requested.num_processes is not None and requested.num_processes < 1:
        raise errors.DistributedError(f"num_processes must be a positive int, got {requested.num_processes}.")

    import jax

    if jax.distributed.is_initialized():  # the program called jax.distributed.initialize itself: adopt it
        return _adopt_jax_state(requested)

    cluster = None if requested.coordinator_address else _detected_cluster()
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
        missing = [n for n, v in (("num_processes", requested.num_processes), ("process_id", requested.process_id)) if v is None]
        if missing:
            raise errors.DistributedError(
                f"initialize: coordinator {requested.coordinator_address!r} given but not {' and '.join(missing)} "
                f"(arguments, or {contract.NUM_PROCESSES} / {contract.PROCESS_ID})."
            )
        _split_address(requested.coordinator_address, "coordinator_address")
        if not 0 <= requested.process_id < requested.num_processes:  # type: ignore[operator]
            raise errors.DistributedError(
                f"initialize: process_id={requested.process_id} is not in 0..{requested.num_processes - 1} "  # type: ignore[operator]
                f"(num_processes={requested.num_processes})."
            )
    if _backend_started():
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
        exits.install(_jax_client, int(config.process_id or 0), n)
    if fingerprint is not False and n > 1:
        check_consistency(fingerprint if isinstance(fingerprint, Mapping) else None, timeout=timeout)
    if config.stall_timeout and n > 1:
        progress.start(_jax_client(), int(config.process_id or 0), n, config.stall_timeout)
    return config


def _same_as_before(requested: DistributedConfig) -> DistributedConfig:
    before = _STATE.config
    assert before is not None
    if before.cpu_devices is None and requested.cpu_devices is not None:
        _apply_cpu_devices(requested.cpu_devices, single=before.mode == "single")  # raises if too late to change
        before = _STATE.config = dataclasses.replace(before, cpu_devices=requested.cpu_devices)
    differ = _differences(requested, before)
    if differ:
        raise errors.DistributedError(
            "distmap.distributed.initialize() was already called with another configuration; now "
            + ", ".join(f"{field}={new!r} (first call: {old!r})" for field, new, old in differ)
            + ". A process joins one run; call distmap.distributed.shutdown() first to leave it."
        )
    return before


def _differences(requested: DistributedConfig, before: DistributedConfig) -> list[tuple[str, Any, Any]]:
    out = []
    for field in ("coordinator_address", "num_processes", "process_id", "local_device_ids", "cpu_devices"):
        new, old = getattr(requested, field), getattr(before, field)
        if new is not None and new != old and not (field == "num_processes" and new == 1 and old is None):
            out.append((field, new, old))
    return out


def _adopt_jax_state(requested: DistributedConfig) -> DistributedConfig:
    """Join the run the program already joined with ``jax.distributed.initialize`` itself."""
    from jax._src import distributed as jax_distributed

    gs = jax_distributed.global_state
    config = DistributedConfig(
        mode="explicit",
        coordinator_address=gs.coordinator_address,
        num_processes=gs.num_processes,
        process_id=gs.process_id,
        local_device_ids=requested.local_device_ids,
        cpu_devices=requested.cpu_devices,
        initialization_timeout=requested.initialization_timeout,
        stall_timeout=requested.stall_timeout,
    )
    differ = _differences(requested, config)
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

    started = _backend_started()
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
        _split_address(bind, contract.COORDINATOR_BIND)
        return bind
    host, port = _split_address(coordinator, "coordinator_address")
    return f"{host}:{port}"


def _check_port_free(bind: str) -> None:
    """Raise a clear error if rank 0's coordinator cannot bind ``bind`` (JAX may segfault instead)."""
    host, port = _split_address(bind, "coordinator bind address")
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


def _jax_timeouts() -> dict[str, int]:
    """JAX's shutdown and heartbeat time-outs from the environment, where this JAX takes them."""
    import inspect

    import jax

    accepted = inspect.signature(jax.distributed.initialize).parameters
    out = {}
    for env, arg in ((SHUTDOWN_TIMEOUT_ENV, "shutdown_timeout_seconds"), (HEARTBEAT_TIMEOUT_ENV, "heartbeat_timeout_seconds")):
        value = _env_int(env)
        if value is None:
            continue
        if value < 1:
            raise errors.DistributedError(f"environment variable {env}={value}: expected whole seconds >= 1.")
        if arg in accepted:
            out[arg] = value
    return out


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
    def here(requested: DistributedConfig) -> "_JoinMarkers | None":
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
        return f"{_ranks(missing)} never reached distmap.distributed.initialize() (no marker in {self.folder}). "

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
    kwargs.update(_jax_timeouts())
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
    from jax._src import distributed as jax_distributed

    gs = jax_distributed.global_state
    return dataclasses.replace(
        requested,
        mode="explicit" if requested.coordinator_address is not None else "cluster",
        coordinator_address=gs.coordinator_address,
        num_processes=gs.num_processes,
        process_id=gs.process_id,
    )


#: Seconds a failing rank may spend leaving the run (see ``distmap._src.exits``).
EXIT_GRACE_S = exits.EXIT_GRACE_S


def initialize_from_flags(
    flag_values: Any = None, *, fingerprint: bool = True, extra: Mapping[str, Any] | None = None
) -> DistributedConfig:
    """:func:`initialize` with values from absl flags, for programs that define them.

    Reads ``--coordinator_address``, ``--num_processes``, ``--process_id``,
    ``--local_device_ids``, ``--cpu_devices`` and ``--init_timeout`` where the program defined
    them (``distmap.flags.define_distributed_flags()`` defines them all) and set them; the
    rest comes from the environment or JAX's cluster detection, as in :func:`initialize`.
    With ``fingerprint=True`` every flag value of the program (all flags except absl's own
    and the per-rank ones) is part of the start-up check, so ranks started with different
    flags fail at once, naming the flags.

    Args:
        flag_values: the parsed ``absl.flags.FlagValues`` (default ``absl.flags.FLAGS``).
        fingerprint: compare the flag values across processes.
        extra: more configuration to compare.

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> _ = flags.DEFINE_integer("steps", 10, "Training steps.", flag_values=fv)
        >>> fv(["prog", "--steps=5"])
        ['prog']
        >>> initialize_from_flags(fv).mode
        'single'
    """
    from absl import flags as absl_flags

    fv = absl_flags.FLAGS if flag_values is None else flag_values

    def value(name: str) -> Any:
        return fv[name].value if name in fv else None

    config: dict[str, Any] | bool = False
    if fingerprint:
        config = dict(flag_config(fv))
        config.update(extra or {})
    return initialize(
        value("coordinator_address"),
        value("num_processes"),
        value("process_id"),
        value("local_device_ids"),
        cpu_devices=value("cpu_devices"),
        initialization_timeout=value("init_timeout"),
        fingerprint=config,
    )


def flag_config(flag_values: Any = None) -> dict[str, Any]:
    """The program's flag values for the start-up check: all but absl's own and per-rank flags."""
    from absl import flags as absl_flags

    fv = absl_flags.FLAGS if flag_values is None else flag_values
    out: dict[str, Any] = {}
    for module, module_flags in fv.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for f in module_flags:
            if f.name not in _PER_RANK_FLAGS:
                out[f.name] = f.value
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------
# The start-up check


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _program_identity() -> tuple[str, str]:
    """(what the program is, digest of its code): the ``__main__`` file, or ``-c`` code."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            return os.path.basename(path), _digest(f.read())
    argv = list(getattr(sys, "orig_argv", []))
    if "-c" in argv[:-1]:
        code = argv[argv.index("-c") + 1]
        return "python -c", _digest(code.encode())
    return "interactive", _digest(b"")


def _distmap_identity() -> str:
    import distmap

    root = os.path.dirname(os.path.abspath(distmap.__file__))
    h = hashlib.sha256(getattr(distmap, "__version__", "?").encode())
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return f"{getattr(distmap, '__version__', '?')} ({h.hexdigest()[:12]})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fingerprint_of(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What this process reports to the start-up check (all strings, JSON-ready).

    Example:
        >>> fp = fingerprint_of({"steps": 10})
        >>> sorted(fp), fp["config"]["steps"][1]
        (['config', 'distmap', 'jax', 'program', 'run'], '10')
    """
    import jax
    import jaxlib

    what, code = _program_identity()
    run = os.environ.get(contract.RUN_ID, "")
    if run:
        run += f" attempt {os.environ.get(contract.ATTEMPT, '0')}"
    return {
        "program": [what, code],
        "distmap": _distmap_identity(),
        "jax": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
        "run": run,
        "config": {
            str(k): [_digest(repr(v).encode()), _short(v)] for k, v in sorted((config or {}).items(), key=lambda kv: str(kv[0]))
        },
    }


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _groups(values: Mapping[int, Any], show: Any) -> str:
    by: dict[str, list[int]] = {}
    for rank, v in sorted(values.items()):
        by.setdefault(json.dumps(v, sort_keys=True), []).append(rank)
    parts = [f"{_ranks(rs)}: {show(json.loads(k))}" for k, rs in by.items()]
    if len(parts) > 6:
        parts = parts[:6] + [f"... {len(parts) - 6} more groups"]
    return "; ".join(parts)


def compare_fingerprints(reports: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The differences between processes' fingerprints, one line each (empty: all agree).

    Example:
        >>> a = {"program": ["train.py", "aa"], "distmap": "0.1.0", "jax": "jax 0.10.2", "run": "",
        ...      "config": {"lr": ["h1", "0.1"]}}
        >>> b = dict(a, config={"lr": ["h2", "0.2"]})
        >>> compare_fingerprints({0: a, 1: b})
        ["config key 'lr' differs: rank 0: 0.1; rank 1: 0.2"]
    """
    lines: list[str] = []
    ranks = sorted(reports)

    def differs(get: Any) -> bool:
        return len({json.dumps(get(reports[r]), sort_keys=True) for r in ranks}) > 1

    if differs(lambda f: f["program"]):
        lines.append("program differs (the __main__ file's bytes): " + _groups(
            {r: reports[r]["program"] for r in ranks}, lambda p: f"{p[0]} sha256 {p[1]}"))
    if differs(lambda f: f["distmap"]):
        lines.append("distmap differs: " + _groups({r: reports[r]["distmap"] for r in ranks}, str))
    if differs(lambda f: f["jax"]):
        lines.append("jax version differs: " + _groups({r: reports[r]["jax"] for r in ranks}, str))
    if differs(lambda f: f["run"]):
        lines.append("launch differs (DISTMAP_RUN_ID/ATTEMPT; a rank from another launch?): "
                     + _groups({r: reports[r]["run"] or "(none)" for r in ranks}, str))
    keys = sorted({k for r in ranks for k in reports[r]["config"]})
    for key in keys:
        values = {r: reports[r]["config"].get(key) for r in ranks}
        if len({json.dumps(v) for v in values.values()}) > 1:
            lines.append(f"config key {key!r} differs: " + _groups(values, lambda v: "(not set)" if v is None else v[1]))
    return lines


def check_consistency(config: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> str:
    """A start-up barrier: fail on every process at once if they run different code or configuration.

    Every process publishes a fingerprint (the ``__main__`` program's bytes, distmap's version
    and sources, the JAX version, the launch id and ``config`` key by key) in JAX's distributed
    key-value store, reads everyone's and compares. If any differ, every process raises the
    same :class:`~distmap.errors.DistributedError` naming the ranks and what differs (program,
    config key names with their values, jax version), instead of hanging later in a
    collective. Call it in the same order on every process. With one process it only
    computes the fingerprint.

    Args:
        config: values that must agree, e.g. ``distributed.flag_config()`` (absl flag values).
        timeout: seconds to wait for the other processes' reports (default
            ``DISTMAP_INIT_TIMEOUT`` or 300).

    Returns:
        This process's fingerprint digest.

    Example:
        >>> from distmap import distributed
        >>> len(distributed.check_consistency({"learning_rate": 0.1}))
        16
    """
    mine = fingerprint_of(config)
    digest = _digest(json.dumps(mine, sort_keys=True).encode())
    client = _jax_client()
    if client is None:
        return digest
    from jax._src import distributed as jax_distributed

    # From the distributed state rather than jax.process_count(): that would start the backend.
    n, me = int(jax_distributed.global_state.num_processes), int(jax_distributed.global_state.process_id)
    if n == 1:
        return digest
    seq = _STATE.checks
    _STATE.checks += 1
    if timeout is None:
        timeout = _env_float(contract.INIT_TIMEOUT) or 300.0
    prefix = f"distmap/consistency/{seq}/"
    client.key_value_set(prefix + str(me), json.dumps(mine, sort_keys=True))
    reports: dict[int, Any] = {me: mine}
    end = time.monotonic() + timeout
    missing = []
    for rank in range(n):
        if rank == me:
            continue
        left_ms = max(int((end - time.monotonic()) * 1000), 1)
        try:
            reports[rank] = json.loads(client.blocking_key_value_get(prefix + str(rank), left_ms))
        except Exception as e:  # noqa: BLE001 - JAX raises its runtime error on DEADLINE_EXCEEDED
            if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
                raise errors.DistributedError(f"start-up check: could not read rank {rank}'s fingerprint: {e}") from e
            missing.append(rank)
    if missing:
        raise errors.DistributedError(
            f"start-up check (call {seq}): rank {me} waited {timeout:g} s for the fingerprint of {_ranks(missing)}, "
            "which never came. Those processes did not reach distmap's start-up check: they run another "
            "program, an older distmap, or are stuck or slow before it."
        )
    diff = compare_fingerprints(reports)
    if diff:
        raise errors.DistributedError(
            f"the {n} processes of this run disagree at start-up (seen by rank {me}):\n  "
            + "\n  ".join(diff)
            + "\nEvery process must run the same program, distmap and JAX with the same configuration."
        )
    return digest


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
    exits.uninstall()
    if _jax_client() is not None:
        import jax

        jax.distributed.shutdown()
    _STATE.config = None
    _STATE.checks = 0


__all__ = [
    "DistributedConfig",
    "check_consistency",
    "compare_fingerprints",
    "fingerprint_of",
    "flag_config",
    "hybrid_device_array",
    "initialize",
    "initialize_from_flags",
    "is_initialized",
    "make_hybrid_mesh",
    "process_count",
    "process_index",
    "shutdown",
]
