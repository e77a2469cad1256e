"""Supervise a group of ranks: start them, stream their output, fail fast, stop, restart.

Every launcher builds its ranks as :class:`Worker` s (an argument list, an environment) and
hands a function that makes them to :func:`supervise`. The supervisor

* starts each rank in its own session (so its own process group), stdin closed, stdout and
  stderr joined into a pipe; on Linux a rank also dies if the launcher is killed outright;
* copies every line to ``out`` as ``[rank i] line`` and to ``RUN_DIR/rank_i.log``;
* fails fast: as soon as one rank exits non-zero or is killed, every other rank's process
  group gets SIGTERM, then SIGKILL after ``grace_period`` seconds (JAX catches SIGTERM for its
  preemption service, so a rank may ignore it); the launch's exit code is that rank's
  (``128 + n`` for signal ``n``), and the message names the rank, the reason, what the other
  ranks were doing and the tail of its log;
* ``timeout``: the whole launch, restarts included, ends after that many seconds, every
  rank stopped, exit code :data:`EXIT_TIMEOUT`;
* ``max_restarts``: after a failure the whole group is started again, by calling the
  launcher's ``make_workers(attempt)`` anew (a fresh coordinator port, say);
* SIGINT/SIGTERM to the launcher stop every rank (exit ``128 + signal``); a second one
  skips the grace period. Every rank's process group is swept with SIGKILL at the end of
  each attempt, so nothing started by the launch outlives it.

Example:
    >>> import sys, tempfile
    >>> opts = SupervisorOptions(log_dir=tempfile.mkdtemp(), announce=False)
    >>> hello = lambda attempt: [Worker(r, (sys.executable, "-c", f"print('hi from {r}')")) for r in range(2)]
    >>> result = supervise(hello, opts, out=sys.stdout)  # doctest: +SKIP
    [rank 0] hi from 0
    [rank 1] hi from 1
    >>> result.exit_code  # doctest: +SKIP
    0
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from distmap._src.launch import contract

#: Exit code of a launch stopped by ``timeout`` (as coreutils' ``timeout``).
EXIT_TIMEOUT = 124
#: Exit code when a rank's program cannot be started at all (as a shell's "command not found").
EXIT_CANNOT_START = 127

_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class Worker:
    """One rank to start.

    Attributes:
        rank: its rank (used in prefixes, log names and messages).
        argv: the command as an argument list; never joined into a shell string.
        env: its full environment (``None``: the launcher's own).
        cwd: its working directory (``None``: the launcher's).
        label: the output prefix; default ``"rank {rank}"``.
    """

    rank: int
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"rank {self.rank}"


@dataclasses.dataclass(frozen=True)
class SupervisorOptions:
    """How to supervise; the shared launcher flags map onto these (see ``cli.options_from_flags``).

    Attributes:
        timeout: seconds the whole launch may run (``None``: no limit).
        grace_period: seconds between SIGTERM and SIGKILL when stopping ranks.
        max_restarts: how many times the whole group is restarted after a failure.
        log_dir: parent of the run folders.
        run_id: name of this run's folder (default: a timestamp and the launcher's pid).
        tail_lines: lines of the failed rank's log quoted in the failure message.
        prefix_output: copy rank output to ``out`` with ``[rank i]`` prefixes (else only to logs).
        announce: print start/restart lines (failures are always reported).
    """

    timeout: float | None = None
    grace_period: float = 5.0
    max_restarts: int = 0
    log_dir: str = "runs"
    run_id: str | None = None
    tail_lines: int = 20
    prefix_output: bool = True
    announce: bool = True


@dataclasses.dataclass(frozen=True)
class RankExit:
    """How one rank ended: ``exit_code`` is shell style (``128 + n`` for signal ``n``)."""

    rank: int
    exit_code: int
    reason: str
    after_s: float
    stopped_by_launcher: bool = False


@dataclasses.dataclass
class AttemptResult:
    """One start of the group. ``status`` is ``"ok"``, ``"failed"``, ``"timeout"`` or ``"interrupted"``."""

    attempt: int
    status: str
    exit_code: int
    failed: RankExit | None
    exits: dict[int, RankExit]
    logs: dict[int, str]
    tail: list[str]
    message: str
    duration_s: float


@dataclasses.dataclass
class LaunchResult:
    """The outcome of :func:`supervise`: the exit code to return and what happened."""

    exit_code: int
    run_dir: str
    attempts: list[AttemptResult]
    message: str

    @property
    def failed_rank(self) -> int | None:
        """The rank that failed the last attempt, if one did."""
        last = self.attempts[-1] if self.attempts else None
        return last.failed.rank if last is not None and last.failed is not None else None


def new_run_id() -> str:
    """A run id that sorts by time: ``YYYYmmdd-HHMMSS-<launcher pid>-<4 random hex digits>``."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(2)}"


def exit_code_of(returncode: int) -> int:
    """``Popen.returncode`` as a shell reports it: ``-9`` becomes ``137``."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """Words for a ``Popen.returncode``: ``"exited with code 3"``, ``"was killed by SIGKILL (exit code 137)"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (exit code {128 - returncode})"
    if returncode == contract.EXIT_INIT_TIMEOUT:
        return f"exited with code {returncode} (start-up time-out: not every rank joined the run)"
    return f"exited with code {returncode}"


def _die_with_launcher() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the rank die if the launcher is killed outright (Linux only).

    Everything is looked up here, in the launcher, so the child runs no imports between fork
    and exec. Python code between fork and exec is only safe in a single-threaded process, so
    where the launcher has other threads (or has imported JAX, whose threads Python does not
    see, as when a test calls the supervisor in-process) the rank goes without; the process
    group sweep still ends it with the launch.
    """
    if not sys.platform.startswith("linux") or threading.active_count() > 1 or "jax" in sys.modules:
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, getppid, exit_now, kill = os.getpid(), os.getppid, os._exit, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(1, kill)  # PR_SET_PDEATHSIG
        if getppid() != parent:  # the launcher died before prctl took effect
            exit_now(1)

    return preexec


class _Rank:
    """A running rank: its process, log file, tail and output pump."""

    def __init__(self, worker: Worker, log_path: str, out: IO[str] | None, out_lock: threading.Lock, tail: int):
        self.worker = worker
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self.exit: RankExit | None = None
        self._out, self._lock = out, out_lock
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                list(worker.argv),
                env=None if worker.env is None else dict(worker.env),
                cwd=worker.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_launcher(),
            )
        except BaseException:
            self._log.close()
            raise
        self.pgid = self.proc.pid  # start_new_session: the rank leads its own process group
        self._pump = threading.Thread(target=self._copy, name=f"distmap-{worker.name}", daemon=True)

    def start_pump(self) -> None:
        self._pump.start()

    def _copy(self) -> None:
        prefix = f"[{self.worker.name}] "
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with contextlib.suppress(OSError, ValueError):  # a full disk must not stop the pump
                self._log.write(raw)
                self._log.flush()
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            if self._out is not None:
                with self._lock:
                    with contextlib.suppress(OSError, ValueError):
                        self._out.write(prefix + line + "\n")
                        self._out.flush()

    def finish_output(self, wait_s: float) -> None:
        self._pump.join(wait_s)
        with contextlib.suppress(OSError):
            self._log.close()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


def _tail_text(rank: _Rank, n: int) -> list[str]:
    return list(rank.tail)[-n:] if n > 0 else []


def _run_attempt(
    workers: Sequence[Worker],
    attempt: int,
    run_dir: str,
    options: SupervisorOptions,
    deadline: float | None,
    stops: _StopSignals,
    out: IO[str] | None,
) -> AttemptResult:
    start = time.monotonic()
    lock = threading.Lock()
    ranks: list[_Rank] = []
    suffix = "" if attempt == 0 else f".restart{attempt}"

    def result(status: str, code: int, failed: RankExit | None, message: str, tail: list[str]) -> AttemptResult:
        return AttemptResult(
            attempt=attempt,
            status=status,
            exit_code=code,
            failed=failed,
            exits={r.worker.rank: r.exit for r in ranks if r.exit is not None},
            logs={r.worker.rank: r.log_path for r in ranks},
            tail=tail,
            message=message,
            duration_s=time.monotonic() - start,
        )

    # Start every rank before any output thread exists (fork with no other threads running).
    for w in workers:
        log_path = os.path.join(run_dir, f"rank_{w.rank}{suffix}.log")
        try:
            ranks.append(_Rank(w, log_path, out if options.prefix_output else None, lock, max(options.tail_lines, 1)))
        except OSError as e:
            _stop(ranks, options.grace_period, start, stops)
            _finish(ranks)
            failed = RankExit(w.rank, EXIT_CANNOT_START, f"could not be started: {e}", 0.0)
            msg = f"{w.name} could not be started: {e.strerror or e} (command: {list(w.argv)!r})."
            return result("failed", EXIT_CANNOT_START, failed, msg, [])
    for r in ranks:
        r.start_pump()

    status, failed, code = "ok", None, 0
    try:
        while True:
            now = time.monotonic()
            for r in ranks:
                if r.exit is None and (rc := r.proc.poll()) is not None:
                    r.exit = RankExit(r.worker.rank, exit_code_of(rc), describe_exit(rc), now - start)
                    if rc != 0 and failed is None:
                        failed = r.exit
            if failed is not None:
                status, code = "failed", failed.exit_code
                break
            if all(r.exit is not None for r in ranks):
                break
            if stops.signum is not None:
                status, code = "interrupted", 128 + stops.signum
                break
            if deadline is not None and now >= deadline:
                status, code = "timeout", EXIT_TIMEOUT
                break
            time.sleep(_POLL_S)
    except BaseException:  # an error in the launcher itself (or KeyboardInterrupt): leave nothing behind
        _stop(ranks, 0.0, start, stops)
        _finish(ranks)
        raise

    running = [r.worker.name for r in ranks if r.exit is None]
    _stop(ranks, options.grace_period, start, stops)
    _finish(ranks)

    if status == "ok":
        return result("ok", 0, None, f"all {len(ranks)} rank(s) exited with code 0.", [])
    if status == "failed":
        assert failed is not None
        bad = next(r for r in ranks if r.worker.rank == failed.rank)
        tail = _tail_text(bad, options.tail_lines)
        others = []
        for r in ranks:
            if r is not bad and r.exit is not None:
                how = f"was stopped by the launcher (exit code {r.exit.exit_code})" if r.exit.stopped_by_launcher else r.exit.reason
                others.append(f"{r.worker.name} {how} after {r.exit.after_s:.1f} s")
        msg = (
            f"{bad.worker.name} {failed.reason} after {failed.after_s:.1f} s."
            + (" Other ranks: " + "; ".join(others) + "." if others else "")
            + f" Log: {bad.log_path}"
        )
        return result("failed", code, failed, msg, tail)
    if status == "timeout":
        first = ranks[0]
        tail = _tail_text(first, options.tail_lines)
        msg = (
            f"timed out after {options.timeout:g} s (--timeout); stopped every rank"
            + (f" (still running: {', '.join(running)})" if running else "")
            + f". Log of {first.worker.name}: {first.log_path}"
        )
        return result("timeout", code, None, msg, tail)
    name = signal.Signals(code - 128).name
    msg = f"interrupted by {name}; stopped every rank" + (f" ({', '.join(running)})" if running else "") + "."
    return result("interrupted", code, None, msg, [])


def _stop(ranks: Sequence[_Rank], grace: float, start: float, stops: _StopSignals) -> None:
    """SIGTERM every live rank's group, SIGKILL what is left after ``grace`` s, reap, sweep all groups."""
    live = [r for r in ranks if r.exit is None and r.proc.poll() is None]
    for r in live:
        r.signal_group(signal.SIGTERM)
    end = time.monotonic() + grace
    signals_at_start = stops.count
    while live and time.monotonic() < end:
        live = [r for r in live if r.proc.poll() is None]
        if stops.count > signals_at_start:
            break  # a signal to the launcher while stopping: no more waiting
        time.sleep(_POLL_S)
    for r in ranks:
        r.signal_group(signal.SIGKILL)  # leftovers, and any grandchildren of ranks already gone
    now = time.monotonic()
    for r in ranks:
        if r.exit is None:
            rc = r.proc.wait()
            r.exit = RankExit(r.worker.rank, exit_code_of(rc), describe_exit(rc), now - start, stopped_by_launcher=True)
        r.signal_group(signal.SIGKILL)


def _finish(ranks: Sequence[_Rank]) -> None:
    for r in ranks:
        r.finish_output(2.0)


class _StopSignals:
    """Records SIGINT/SIGTERM sent to the launcher (handlers only in the main thread)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _say(err: IO[str], text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        err.write(text if text.endswith("\n") else text + "\n")
        err.flush()


def _report(result: AttemptResult) -> str:
    lines = [f"distmap launch: {result.message}"]
    if result.tail:
        lines.append(f"Last {len(result.tail)} line(s) of its log:")
        lines.extend("    " + t for t in result.tail)
    return "\n".join(lines)


def supervise(
    make_workers: Callable[[int], Sequence[Worker]],
    options: SupervisorOptions | None = None,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    retry_for_free: Callable[[AttemptResult], bool] | None = None,
    on_attempt_end: Callable[[AttemptResult], None] | None = None,
) -> LaunchResult:
    """Run the group ``make_workers(attempt)`` under supervision until it ends; see the module doc.

    Args:
        make_workers: called once per attempt (0, 1, ...) to build the ranks; a launcher picks
            a fresh coordinator port here.
        options: timeouts, restarts, log folder.
        out: where prefixed rank output goes (default ``sys.stdout``).
        err: where the launcher's own messages go (default ``sys.stderr``).
        retry_for_free: given a failed attempt, whether to start again without counting a
            restart (``launch/local.py`` uses it when rank 0's port was taken); at most 3 times.
        on_attempt_end: called after every attempt once its ranks are stopped (remote clean-up).

    Returns:
        A :class:`LaunchResult`; ``exit_code`` is what the launcher should exit with.

    Example:
        >>> import io, sys, tempfile
        >>> bad = lambda attempt: [Worker(0, (sys.executable, "-c", "import sys; sys.exit(3)"))]
        >>> supervise(bad, SupervisorOptions(log_dir=tempfile.mkdtemp(), announce=False),
        ...           err=io.StringIO()).exit_code
        3
    """
    options = options or SupervisorOptions()
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    run_id = options.run_id or new_run_id()
    run_dir = os.path.abspath(os.path.join(options.log_dir, run_id))
    os.makedirs(run_dir, exist_ok=True)
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    stops = _StopSignals()
    attempts: list[AttemptResult] = []
    restarts = free = 0
    first_argv: list[list[str]] = []
    with stops.installed():
        attempt = 0
        while True:
            workers = list(make_workers(attempt))
            if not first_argv:
                first_argv = [list(w.argv) for w in workers]
            if options.announce:
                _say(err, f"distmap launch: starting {len(workers)} rank(s)"
                     + (f" (attempt {attempt + 1})" if attempt else "") + f"; logs in {run_dir}")
            res = _run_attempt(workers, attempt, run_dir, options, deadline, stops, out)
            attempts.append(res)
            if on_attempt_end is not None:
                on_attempt_end(res)
            if res.status != "failed" or stops.signum is not None:
                break
            if retry_for_free is not None and free < 3 and retry_for_free(res):
                free += 1
                _say(err, f"distmap launch: {res.message} Starting again (not counted as a restart).")
            elif restarts < options.max_restarts:
                restarts += 1
                _say(err, _report(res))
                _say(err, f"distmap launch: restarting the whole group (restart {restarts} of {options.max_restarts}).")
            else:
                break
            attempt += 1
    last = attempts[-1]
    if last.status == "ok":
        message = f"distmap launch: {last.message}"
        if options.announce:
            _say(err, message)
    else:
        message = _report(last)
        _say(err, message)
    _write_summary(run_dir, run_id, first_argv, attempts)
    return LaunchResult(exit_code=last.exit_code, run_dir=run_dir, attempts=attempts, message=message)


def _write_summary(run_dir: str, run_id: str, argv: list[list[str]], attempts: list[AttemptResult]) -> None:
    summary = {
        "run_id": run_id,
        "argv": argv,
        "exit_code": attempts[-1].exit_code,
        "attempts": [
            {
                "status": a.status,
                "exit_code": a.exit_code,
                "failed_rank": None if a.failed is None else a.failed.rank,
                "message": a.message,
                "duration_s": round(a.duration_s, 3),
                "ranks": {str(k): dataclasses.asdict(v) for k, v in sorted(a.exits.items())},
            }
            for a in attempts
        ],
    }
    with contextlib.suppress(OSError):
        with open(os.path.join(run_dir, "launch.json"), "w") as f:
            json.dump(summary, f, indent=1)


__all__ = [
    "EXIT_CANNOT_START",
    "EXIT_TIMEOUT",
    "AttemptResult",
    "LaunchResult",
    "RankExit",
    "SupervisorOptions",
    "Worker",
    "describe_exit",
    "exit_code_of",
    "new_run_id",
    "supervise",
]
