"""Supervise a group of ranks: start them, stream their output, fail fast, stop, restart.

Every launcher builds its ranks as :class:`Worker` s (an argument list, an environment) and
hands a function that makes them to :func:`supervise`. The supervisor

* starts each rank in its own session (so its own process group), stdout and stderr joined
  into a pipe, stdin closed, or held open for a remote rank (``hold_stdin``: closing it is
  what tells an ``ssh`` rank's remote watchdog to end the remote program);
* copies every line to ``RUN_DIR/rank_i.log`` and, as ``[rank i] line``, to ``out``,
  leaving JAX's start-up chatter out of the console (see ``console``);
* fails fast: as soon as one rank exits non-zero or is killed, every other rank's process
  group gets SIGKILL at once: the run has failed, and signals a rank could catch (JAX's
  preemption handler takes SIGTERM) would only let it compute on. Rank output is unbuffered
  (``PYTHONUNBUFFERED=1``), so the logs keep everything a rank printed. The launch's exit
  code is the failed rank's (``128 + n`` for signal ``n``); the message names the rank, the
  reason, what the other ranks were doing and the tail of its log;
* ``timeout``: the whole launch, restarts included, ends after that many seconds, every
  rank killed, exit code :data:`EXIT_TIMEOUT`;
* ``max_restarts``: after a failure the whole group is started again, by calling the
  launcher's ``make_workers(attempt)`` anew (a fresh coordinator port, say), after the
  launcher's ``before_attempt(attempt)`` (a TPU VM's state checked, its preparation rerun);
* logs are never overwritten: attempt ``k > 0`` writes ``rank_i.attempt{k}.log``, and a
  ``log_tag`` (a SLURM job id) goes into every name; ``RUN_DIR/attempts`` counts the
  attempts of the run folder, so a requeued SLURM job goes on at the next number;
* stops gracefully: after SIGINT/SIGTERM/SIGHUP to the launcher every rank gets SIGTERM (what
  a scheduler sends, and what JAX's preemption notice catches) and up to ``grace_period``
  seconds to save and end, then SIGKILL; a second signal skips the wait. A remote rank is
  told through its held stdin (``stop``), and its remote watchdog does the same there;
* tells a stop from a failure: a rank that ends by SIGTERM/SIGINT (exit 143/130, as a
  program that saved on a preemption notice does) *stopped*: the others get the same
  graceful stop, and the group is never restarted after a stop, nor after a signal to the
  launcher. Only failures are restarted, after a backoff (``restart_backoff`` seconds,
  doubling each time, at most 60);
* leaves nothing behind: every rank's process group is swept with SIGKILL at the end of each
  attempt, and a watchdog process (a shell reading a pipe only the launcher holds) stops
  every group of the attempt if the launcher itself dies, even by SIGKILL (SIGTERM, the
  grace period, then SIGKILL).

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
import math
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
from distmap._src.launch.console import console_filter

#: Exit code of a launch stopped by ``timeout`` (as coreutils' ``timeout``).
EXIT_TIMEOUT = 124
#: Exit code when a rank's program cannot be started at all (as a shell's "command not found").
EXIT_CANNOT_START = 127

_POLL_S = 0.05
#: Seconds a remote rank's client (ssh, srun, gcloud) gets to end after ``kill`` was sent down its stdin.
_REMOTE_KILL_S = 3.0
#: Seconds beyond the grace period a remote rank's client gets after ``stop`` (the remote watchdog's own wait).
_REMOTE_MARGIN_S = 5.0
#: The longest wait between two attempts.
MAX_BACKOFF_S = 60.0
#: Signals that stop the launcher on purpose (a scheduler's stop, a preemption notice, Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def new_run_id() -> str:
    """A run id that sorts by time: ``YYYYmmdd-HHMMSS-<launcher pid>-<4 random hex digits>``."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(2)}"


@dataclasses.dataclass(frozen=True)
class Worker:
    """One rank to start.

    Attributes:
        rank: its rank (used in prefixes, log names and messages).
        argv: the command as an argument list; never joined into a shell string.
        env: its full environment (``None``: the launcher's own).
        cwd: its working directory (``None``: the launcher's).
        label: the output prefix; default ``"rank {rank}"``.
        log_name: its log file's name without ``.log``; default ``"rank_{rank}"``.
        hold_stdin: a remote rank: give it a stdin pipe the launcher holds open, and stop it by writing
            ``stop`` (graceful) or ``kill`` down that pipe for its remote watchdog (``shell.watched``).
        program: the user's program inside ``argv`` (for the console filter); default ``argv``.
    """

    rank: int
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    label: str | None = None
    log_name: str | None = None
    hold_stdin: bool = False
    program: Sequence[str] | None = None

    @property
    def name(self) -> str:
        return self.label or f"rank {self.rank}"


@dataclasses.dataclass(frozen=True)
class SupervisorOptions:
    """How to supervise; the shared launcher flags map onto these (see ``cli.options_from_flags``).

    Attributes:
        timeout: seconds the whole launch may run (``None``: no limit).
        grace_period: seconds ranks get between SIGTERM and SIGKILL when the run is stopped.
        max_restarts: how many times the whole group is restarted after a failure (never after a stop).
        restart_backoff: seconds before the first restart, doubling for each further one (at most 60).
        log_tag: put into every log name (``rank_0.job123.log``): a SLURM job id, so a requeued job
            writes new logs beside the first ones.
        log_dir: parent of the run folders.
        run_id: name of this run's folder (default: a new one, see :func:`new_run_id`).
        tail_lines: lines of the failed rank's log quoted in the failure message.
        console: what rank output reaches ``out``: ``"brief"``, ``"all"`` or ``"none"`` (see ``console``).
        announce: print start/restart lines (failures are always reported).
    """

    timeout: float | None = None
    grace_period: float = 30.0
    max_restarts: int = 0
    restart_backoff: float = 1.0
    log_tag: str | None = None
    log_dir: str = "runs"
    run_id: str = dataclasses.field(default_factory=new_run_id)
    tail_lines: int = 20
    console: str = "brief"
    announce: bool = True

    @property
    def run_dir(self) -> str:
        """The absolute run folder, ``log_dir/run_id``."""
        return os.path.abspath(os.path.join(self.log_dir, self.run_id))


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
    """One start of the group.

    ``status`` is ``"ok"``, ``"failed"``, ``"stopped"`` (a rank ended by a stop signal: a
    preemption notice, ``scancel --signal=TERM``), ``"timeout"`` or ``"interrupted"`` (a
    signal to the launcher). Only ``"failed"`` is restarted.
    """

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
    why = {
        contract.EXIT_INIT_TIMEOUT: "start-up time-out: not every rank joined the run",
        contract.EXIT_STALLED: "stalled: it stopped making progress while the others waited for it",
        contract.EXIT_DIVERGED: "diverged: it launched other multi-process computations than the others",
        contract.EXIT_PEER_FAILED: "ended because another rank failed",
    }.get(returncode)
    return f"exited with code {returncode}" + (f" ({why})" if why else "")


# The launcher's dead-man switch, one per attempt: it reads the ranks' process group ids from
# its stdin, a pipe only the launcher holds, and when that pipe closes (the launcher ended,
# even by SIGKILL) it stops every group it was given: SIGTERM, the grace period ($1), SIGKILL.
# Nothing is written to disk.
_WATCHDOG = (
    'pgs=; while read -r pg; do pgs="$pgs -$pg"; done; [ -z "$pgs" ] && exit 0; '
    'alive() { for g in $pgs; do kill -s 0 -- "$g" 2>/dev/null && return 0; done; return 1; }; '
    'kill -s TERM -- $pgs 2>/dev/null; end=$(( $(date +%s) + $1 )); '
    'while [ "$(date +%s)" -lt "$end" ] && alive; do sleep 0.2; done; '
    'kill -s KILL -- $pgs 2>/dev/null'
)


class _Watchdog:
    def __init__(self, grace: float) -> None:
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "distmap-watchdog", str(int(math.ceil(grace)))], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def watch(self, pgid: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{pgid}\n".encode())
            self.proc.stdin.flush()

    def dismiss(self) -> None:
        """End the watchdog without letting it fire (the launcher stopped the ranks itself)."""
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()


class _Rank:
    """A running rank: its process, log file, tail and output pump."""

    def __init__(self, worker: Worker, log_path: str, out: IO[str] | None, out_lock: threading.Lock, tail: int,
                 console: str):
        self.worker = worker
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self.exit: RankExit | None = None
        self._out, self._lock = out, out_lock
        self._shown = console_filter(console if out is not None else "none", worker.program or worker.argv)
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                list(worker.argv),
                env=None if worker.env is None else dict(worker.env),
                cwd=worker.cwd,
                stdin=subprocess.PIPE if worker.hold_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise
        self.pgid = self.proc.pid  # start_new_session: the rank leads its own process group
        self._pump = threading.Thread(target=self._copy, name=f"distmap-{worker.name}", daemon=True)
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
            if self._shown(line):
                assert self._out is not None
                with self._lock, contextlib.suppress(OSError, ValueError):
                    self._out.write(prefix + line + "\n")
                    self._out.flush()

    @property
    def remote(self) -> bool:
        return self.worker.hold_stdin

    def request(self, how: str) -> None:
        """Ask the rank to end: ``"stop"`` (SIGTERM, then its grace) or ``"kill"`` (at once).

        A local rank's process group gets the signal; a remote rank's watchdog gets the word
        down the held stdin, which is then closed (the watchdog acts on end-of-file too).
        """
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(f"{how}\n".encode())
                self.proc.stdin.flush()
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        elif self.proc.poll() is None:
            self.signal_group(signal.SIGTERM if how == "stop" else signal.SIGKILL)

    def finish_output(self, wait_s: float) -> None:
        self._pump.join(wait_s)
        with contextlib.suppress(OSError):
            self._log.close()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


def _tail_text(rank: _Rank, n: int) -> list[str]:
    return list(rank.tail)[-n:] if n > 0 else []


def log_suffix(attempt: int, tag: str | None = None) -> str:
    """The part of a log name after the rank: ``""``, ``".attempt2"``, ``".job123.attempt2"``.

    Example:
        >>> log_suffix(0), log_suffix(2), log_suffix(0, "job7")
        ('', '.attempt2', '.job7')
    """
    return (f".{tag}" if tag else "") + (f".attempt{attempt}" if attempt else "")


def run_group(
    workers: Sequence[Worker],
    run_dir: str,
    options: SupervisorOptions | None = None,
    *,
    attempt: int = 0,
    deadline: float | None = None,
    out: IO[str] | None = None,
    stops: _StopSignals | None = None,
) -> AttemptResult:
    """Start ``workers`` at once and supervise them until all end, one fails or stops, or ``deadline``.

    The one parallel runner of the launchers: every rank, every TPU worker and every
    preparation command runs through it (output pumped, logged, the group stopped).
    """
    options = options or SupervisorOptions()
    out = sys.stdout if out is None else out
    stops = stops or _StopSignals()
    start = time.monotonic()
    lock = threading.Lock()
    ranks: list[_Rank] = []
    suffix = log_suffix(attempt, options.log_tag)

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

    watchdog = _Watchdog(options.grace_period)
    status, failed, code = "ok", None, 0
    try:
        for w in workers:
            log_path = os.path.join(run_dir, f"{w.log_name or f'rank_{w.rank}'}{suffix}.log")
            try:
                ranks.append(_Rank(w, log_path, out, lock, max(options.tail_lines, 1), options.console))
            except OSError as e:
                _stop(ranks, "kill", 0.0, start, stops)
                failed = RankExit(w.rank, EXIT_CANNOT_START, f"could not be started: {e}", 0.0)
                msg = f"{w.name} could not be started: {e.strerror or e} (command: {list(w.argv)!r})."
                return result("failed", EXIT_CANNOT_START, failed, msg, [])
            watchdog.watch(ranks[-1].pgid)
        while True:
            now = time.monotonic()
            for r in ranks:
                if r.exit is None and (rc := r.proc.poll()) is not None:
                    r.exit = RankExit(r.worker.rank, exit_code_of(rc), describe_exit(rc), now - start)
                    if rc != 0 and failed is None:
                        failed = r.exit
            if failed is not None:
                status, code = ("stopped" if contract.is_stop(failed.exit_code) else "failed"), failed.exit_code
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
        running = [r.worker.name for r in ranks if r.exit is None]
        # A failed or timed-out run is over: kill at once (the ranks' output is unbuffered, so
        # nothing they printed is lost), since signals a rank could catch would only let it
        # compute on. A stop (a signal to the launcher, or a rank that was sent one) gives every
        # rank SIGTERM and the grace period to save and end.
        if status in ("interrupted", "stopped"):
            _stop(ranks, "stop", options.grace_period, start, stops)
        else:
            _stop(ranks, "kill", 0.0, start, stops)
    except BaseException:  # an error in the launcher itself (or KeyboardInterrupt): leave nothing behind
        _stop(ranks, "kill", 0.0, start, stops)
        raise
    finally:
        watchdog.dismiss()
        for r in ranks:
            r.finish_output(2.0)

    if status == "ok":
        return result("ok", 0, None, f"all {len(ranks)} rank(s) exited with code 0.", [])
    if status in ("failed", "stopped"):
        assert failed is not None
        bad = next(r for r in ranks if r.worker.rank == failed.rank)
        others = []
        for r in ranks:
            if r is not bad and r.exit is not None:
                how = (f"was stopped by the launcher (exit code {r.exit.exit_code})" if r.exit.stopped_by_launcher
                       else r.exit.reason)
                others.append(f"{r.worker.name} {how} after {r.exit.after_s:.1f} s")
        what = (f"{bad.worker.name} {failed.reason} after {failed.after_s:.1f} s"
                + (": it was stopped (a stop signal, such as a scheduler's or a preemption notice), so every rank "
                   "was given SIGTERM and the grace period, and the run is not restarted" if status == "stopped"
                   else ""))
        msg = what + "." + (" Other ranks: " + "; ".join(others) + "." if others else "") + f" Log: {bad.log_path}"
        return result(status, code, failed, msg, _tail_text(bad, options.tail_lines) if status == "failed" else [])
    if status == "timeout":
        first = ranks[0]
        msg = (
            f"timed out after {options.timeout:g} s (--timeout); stopped every rank"
            + (f" (still running: {', '.join(running)})" if running else "")
            + f". Log of {first.worker.name}: {first.log_path}"
        )
        return result("timeout", code, None, msg, _tail_text(first, options.tail_lines))
    name = signal.Signals(code - 128).name
    msg = (f"interrupted by {name}; gave every rank SIGTERM and up to {options.grace_period:g} s (--grace_period)"
           + (f" ({', '.join(running)})" if running else "") + ". Not restarted.")
    return result("interrupted", code, None, msg, [])


def _stop(ranks: Sequence[_Rank], how: str, grace: float, start: float, stops: _StopSignals) -> None:
    """End every rank: ``"stop"`` (SIGTERM, up to ``grace`` s to end) or ``"kill"`` (at once); then SIGKILL.

    A second signal to the launcher during the grace period turns a stop into a kill.
    """
    signals_at_start = stops.count
    for r in ranks:
        r.request(how if r.exit is None else "kill")
    live = [r for r in ranks if r.exit is None and r.proc.poll() is None]
    remote = any(r.remote for r in live)
    wait = (grace + (_REMOTE_MARGIN_S if remote else 0.0)) if how == "stop" else (_REMOTE_KILL_S if remote else 0.0)
    end = time.monotonic() + wait
    while live and time.monotonic() < end:
        if how == "stop" and stops.count != signals_at_start:  # a second signal: no more waiting
            how = "kill"
            for r in live:
                r.signal_group(signal.SIGKILL)
            end = time.monotonic() + (_REMOTE_KILL_S if remote else 0.0)
        live = [r for r in live if r.proc.poll() is None]
        time.sleep(_POLL_S)
    for r in ranks:
        r.signal_group(signal.SIGKILL)  # leftovers, and any grandchildren of ranks already gone
    now = time.monotonic()
    for r in ranks:
        if r.exit is None:
            rc = r.proc.wait()
            r.exit = RankExit(r.worker.rank, exit_code_of(rc), describe_exit(rc), now - start, stopped_by_launcher=True)
        r.signal_group(signal.SIGKILL)


class _StopSignals:
    """Records SIGINT/SIGTERM/SIGHUP sent to the launcher (handlers only in the main thread)."""

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
        old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a signal comes; returns whether one came."""
        end = time.monotonic() + seconds
        while self.signum is None and time.monotonic() < end:
            time.sleep(min(_POLL_S, max(end - time.monotonic(), 0.0)))
        return self.signum is not None


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


def backoff(restart: int, base: float) -> float:
    """Seconds to wait before restart number ``restart`` (1, 2, ...): ``base * 2**(restart - 1)``, at most 60.

    Example:
        >>> [backoff(k, 1.0) for k in (1, 2, 3, 8)]
        [1.0, 2.0, 4.0, 60.0]
    """
    return min(base * 2.0 ** (restart - 1), MAX_BACKOFF_S) if base > 0 else 0.0


#: The file in a run folder that numbers its attempts (one line each), across requeues of a job.
ATTEMPTS_FILE = "attempts"


def attempts_so_far(run_dir: str) -> int:
    """How many attempts earlier starts of this run folder made (0 for a new folder)."""
    try:
        with open(os.path.join(run_dir, ATTEMPTS_FILE)) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _record_attempt(run_dir: str, attempt: int, tag: str | None) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(run_dir, ATTEMPTS_FILE), "a") as f:
            f.write(json.dumps({"attempt": attempt, "tag": tag, "time": time.time()}) + "\n")


def supervise(
    make_workers: Callable[[int], Sequence[Worker]],
    options: SupervisorOptions | None = None,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    retry_for_free: Callable[[AttemptResult], bool] | None = None,
    on_attempt_end: Callable[[AttemptResult], None] | None = None,
    before_attempt: Callable[[int], AttemptResult | None] | None = None,
) -> LaunchResult:
    """Run the group ``make_workers(attempt)`` under supervision until it ends; see the module doc.

    Args:
        make_workers: called once per attempt to build the ranks; a launcher picks a fresh
            coordinator port here. Attempts are numbered from the run folder's count
            (:func:`attempts_so_far`, 0 for a new folder).
        options: timeouts, restarts, backoff, log folder.
        out: where prefixed rank output goes (default ``sys.stdout``).
        err: where the launcher's own messages go (default ``sys.stderr``).
        retry_for_free: given a failed attempt, whether to start again without counting a
            restart (``launch/local.py`` uses it when rank 0's port was taken); at most 3 times.
        on_attempt_end: called after every attempt once its ranks are stopped (remote clean-up).
        before_attempt: called before every attempt but the first with its number (TPU: check
            the VMs, prepare the workers again); a result it returns ends that attempt before it
            starts (a failed one may be restarted).

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
    run_id, run_dir = options.run_id, options.run_dir
    os.makedirs(run_dir, exist_ok=True)
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    stops = _StopSignals()
    attempts: list[AttemptResult] = []
    restarts = free = 0
    first_argv: list[list[str]] = []
    first = attempt = attempts_so_far(run_dir)
    with stops.installed():
        while True:
            res = before_attempt(attempt) if before_attempt is not None and attempt > first else None
            if res is None and stops.signum is None:
                workers = list(make_workers(attempt))
                if not first_argv:
                    first_argv = [list(w.argv) for w in workers]
                if options.announce:
                    _say(err, f"distmap launch: starting {len(workers)} rank(s)"
                         + (f" (attempt {attempt})" if attempt else "") + f"; logs in {run_dir}")
                _record_attempt(run_dir, attempt, options.log_tag)
                res = run_group(workers, run_dir, options, attempt=attempt, deadline=deadline, out=out, stops=stops)
            elif res is None:
                code = 128 + int(stops.signum or 0)
                res = AttemptResult(attempt, "interrupted", code, None, {}, {}, [],
                                    f"interrupted by {signal.Signals(code - 128).name} before attempt {attempt}.", 0.0)
            attempts.append(res)
            if on_attempt_end is not None:
                on_attempt_end(res)
            if res.status != "failed" or stops.signum is not None:
                break  # done, stopped, interrupted or timed out: never restarted
            if retry_for_free is not None and free < 3 and retry_for_free(res):
                free += 1
                _say(err, f"distmap launch: {res.message} Starting again (not counted as a restart).")
            elif restarts < options.max_restarts:
                restarts += 1
                wait = backoff(restarts, options.restart_backoff)
                if deadline is not None:
                    wait = min(wait, max(deadline - time.monotonic(), 0.0))
                _say(err, _report(res))
                _say(err, f"distmap launch: restarting the whole group in {wait:g} s (restart {restarts} of "
                     f"{options.max_restarts}).")
                if stops.sleep(wait):
                    break
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
    _write_summary(run_dir, run_id, first_argv, attempts, log_suffix(first, options.log_tag))
    return LaunchResult(exit_code=last.exit_code, run_dir=run_dir, attempts=attempts, message=message)


def _write_summary(run_dir: str, run_id: str, argv: list[list[str]], attempts: list[AttemptResult],
                   suffix: str = "") -> None:
    summary = {
        "run_id": run_id,
        "argv": argv,
        "exit_code": attempts[-1].exit_code,
        "attempts": [
            {
                "attempt": a.attempt,
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
        with open(os.path.join(run_dir, f"launch{suffix}.json"), "w") as f:
            json.dump(summary, f, indent=1)


__all__ = [
    "ATTEMPTS_FILE",
    "EXIT_CANNOT_START",
    "EXIT_TIMEOUT",
    "MAX_BACKOFF_S",
    "STOP_SIGNALS",
    "AttemptResult",
    "LaunchResult",
    "RankExit",
    "SupervisorOptions",
    "Worker",
    "attempts_so_far",
    "backoff",
    "describe_exit",
    "exit_code_of",
    "log_suffix",
    "new_run_id",
    "run_group",
    "supervise",
]
