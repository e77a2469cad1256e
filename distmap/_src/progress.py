"""The progress watch: ranks that stop, lag or launch different computations, named.

The processes of one run must launch the same multi-process computations in the same
order. When one does not, JAX cannot tell: a rank that stops (a ``sleep``, a dead data
loader) leaves the others waiting in a collective forever, and a rank that skips a step
pairs its collectives with its peers' *next* ones, so wrong sums come back as good ones.

The watch makes this visible through the coordination service's key-value store, which
:func:`distmap.distributed.initialize` already joined:

* **count and fingerprint.** Every multi-process launch distmap sees calls :func:`note`
  (``kind``, ``key``): the rank's count goes up by one and its fingerprint (a running
  CRC-32 over ``kind`` and ``repr(key)``) takes it in. That costs about a microsecond;
  with the watch off, :func:`note` returns at once.
* **a background thread** publishes the count, the fingerprints of the last few launches
  and a heartbeat every ``interval`` seconds, and reads every rank's. It fails the run:

  - *divergence*: two ranks' fingerprints differ at the same count (they launched
    different computations), or a rank left the run with fewer launches than the others
    wait at. The message names the ranks and the launches that differ.
  - *stall*: no rank has launched anything for ``stall_timeout`` seconds and the counts
    differ: the ranks with the lowest count stopped while the others wait for them. The
    stalled rank prints where its main thread is (for example the ``time.sleep`` line).
  - *gone*: a rank's heartbeat stopped for ``stall_timeout`` seconds, at least 10 (it ended without
    leaving the run, ``os._exit`` or a signal, or is frozen).
  - *failed*: a rank published that it is exiting with an error (see ``exits``).

  The rank at fault ends itself at once (exit codes :data:`EXIT_STALLED`,
  :data:`EXIT_DIVERGED`); the others print what they saw and end after a grace period
  (:data:`EXIT_PEER_FAILED`) unless their launcher stops them first, so a launcher, which
  names the first rank to exit, names the one at fault.
* :func:`verify` is the synchronous check: every rank compares its count and fingerprint
  with the others' at the same call. Called before a result leaves the program (logging a
  metric, writing a checkpoint) it guarantees that no result of mismatched collectives
  passes as a good one, including a skipped step: the background comparison alone cannot
  see a skip whose launches are identical (same function, same shapes) to the next step's.

What the watch sees: calls of :func:`note` — the map engine's sharded ``distmap.vmap``
(each un-jitted call; under ``jax.jit`` only its trace), functions wrapped with
:func:`watched`, and a program's own ``note`` calls. What it cannot see: dispatches of a
plain ``jax.jit`` function. JAX dispatches those from C++ without calling back into
Python, and ``jax.monitoring`` (0.10 and 0.12) reports compilations and cache hits but no
event per execution. Wrap a jitted step in :func:`watched` to count it.

Example:
    >>> from distmap._src import progress
    >>> progress.note("vmap", ("batch", (8, 4)))  # no watch in a single process: a no-op
    >>> progress.active() is None
    True
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from distmap import errors
from distmap._src import exits
from distmap._src.consistency import ranks_text
from distmap._src.jax_internals import rank_records
from distmap._src.launch import contract
from distmap._src.launch.contract import EXIT_DIVERGED, EXIT_PEER_FAILED, EXIT_STALLED

#: Environment variable a launcher sets: seconds without progress before a stall is
#: reported (a float; ``0`` turns the watch off). Set by ``--stall_timeout``.


_PREFIX = "distmap/watch/"
_RING = 64  # fingerprints kept (and published) per rank
_TEXTS = 16  # of which with their launch's description
_TEXT_LIMIT = 200

_F = TypeVar("_F", bound=Callable[..., Any])


def stall_timeout_from_env() -> float | None:
    """``DISTMAP_STALL_TIMEOUT`` as seconds (``None`` when unset).

    Example:
        >>> import os
        >>> os.environ.pop("DISTMAP_STALL_TIMEOUT", None) and None
        >>> stall_timeout_from_env() is None
        True
    """
    raw = os.environ.get(contract.STALL_TIMEOUT, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.DistributedError(
            f"environment variable {contract.STALL_TIMEOUT}={raw!r} is not a number of seconds (0 turns the watch off)."
        ) from None
    if not value >= 0 or value == float("inf"):
        raise errors.DistributedError(f"environment variable {contract.STALL_TIMEOUT}={raw!r}: expected seconds >= 0 (0: off).")
    return value


class _Watch:
    """This rank's progress and the thread that compares it with the other ranks'."""

    def __init__(self, client: Any, rank: int, num_processes: int, stall_timeout: float, interval: float,
                 peer_grace: float) -> None:
        self.client = client
        self.rank = rank
        self.n = num_processes
        self.stall_timeout = stall_timeout
        self.interval = interval
        self.peer_grace = peer_grace
        # A live rank whose watch thread cannot run (a long call holding the GIL) looks silent
        # too, so a heartbeat is given at least 10 s.
        self.gone_after = max(stall_timeout, 10.0)
        self.count = 0
        self.fp = 0
        self.ring: list[tuple[int, int, str] | None] = [None] * _RING
        self.last_note = time.monotonic()
        self.error: errors.DistributedError | None = None
        self.state = "run"
        self.beat = 0
        self.verify_seq = 0
        self.seen_beats: dict[int, tuple[int, float]] = {}
        self.warned_idle = False
        self.paused = False  # benchmarks/bench_launch.py compares steps with and without the thread
        self.cpu_s = 0.0  # CPU time this thread used (Python and the RPCs it waits in), for the benchmark
        self.stop = threading.Event()
        self.lock = threading.Lock()  # note() runs in the main thread and, for checked maps, XLA's callback thread
        self.thread = threading.Thread(target=self._loop, name="distmap-progress-watch", daemon=True)

    # ------------------------------------------------------------------ the main thread's side

    def note(self, kind: str, key: Hashable) -> None:
        if self.error is not None:
            raise self.error
        text = f"{kind} {key!r}"
        with self.lock:
            c = self.count + 1
            fp = zlib.crc32(text.encode(), self.fp)
            self.ring[c % _RING] = (c, fp, text[:_TEXT_LIMIT])
            self.fp = fp
            self.count = c
            self.last_note = time.monotonic()

    def recent(self, texts: int = _TEXTS) -> list[list[Any]]:
        entries = sorted((e for e in self.ring if e is not None), key=lambda e: e[0])
        cut = len(entries) - texts
        return [[c, fp, text if i >= cut else ""] for i, (c, fp, text) in enumerate(entries)]

    def record(self) -> str:
        return json.dumps({
            "beat": self.beat, "count": self.count, "idle": round(time.monotonic() - self.last_note, 3),
            "state": self.state, "ring": self.recent(),
        })

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            if self.paused:
                self.seen_beats.clear()  # nobody's heartbeat is judged across a pause
                continue
            started = time.thread_time()
            try:
                self.beat += 1
                self.client.key_value_set(_PREFIX + str(self.rank), self.record(), allow_overwrite=True)
                records = rank_records(self.client, _PREFIX)
                failed = exits.failure_notices(self.client)
            except Exception:  # noqa: BLE001 - the service is gone (the run is ending) or busy: try again
                continue
            finally:
                self.cpu_s += time.thread_time() - started
            if failed:
                self._peer_failed(failed)
                return
            verdict = self._judge(records)
            if verdict is not None:
                self._fail(*verdict)
                return

    def _judge(self, records: Mapping[int, Mapping[str, Any]]) -> tuple[str, list[int], str] | None:
        """(what, ranks at fault, message) if the run went wrong, else ``None``."""
        now = time.monotonic()
        for rank, rec in records.items():  # heartbeats
            beat = int(rec["beat"])
            seen = self.seen_beats.get(rank)
            if seen is None or seen[0] != beat:
                self.seen_beats[rank] = (beat, now)
        gone = [r for r in range(self.n) if r != self.rank and r in self.seen_beats
                and records.get(r, {}).get("state") == "run" and now - self.seen_beats[r][1] > self.gone_after]
        if gone:
            return ("gone", gone, f"{ranks_text(gone)} stopped reporting for over {self.gone_after:g} s: the process "
                    "ended without leaving the run (os._exit, a signal, killed) or is frozen.")
        if len(records) < self.n:
            return None  # some ranks have not published yet
        diverged = _divergence(records)
        if diverged is not None:
            return ("diverged", *diverged)
        counts = {r: int(rec["count"]) for r, rec in records.items()}
        done = [r for r, rec in records.items() if rec["state"] == "done"]
        busy = [r for r, rec in records.items() if rec["state"] == "run" and float(rec["idle"]) < self.stall_timeout]
        if busy:
            self.warned_idle = False
            return None
        top = max(counts.values())
        if len(set(counts.values())) > 1:
            low = min(counts.values())
            behind = sorted(r for r, c in counts.items() if c == low)
            ahead = sorted(r for r, c in counts.items() if c == top)
            left = [r for r in behind if r in done]
            if left:
                return ("diverged", left, f"{ranks_text(left)} left the run after {low} multi-process launches while "
                        f"{ranks_text(ahead)} launched {top} and wait{'s' if len(ahead) == 1 else ''} for the rest "
                        f"(last launches: {_last_texts(records, behind + ahead)}).")
            return ("stalled", behind, f"{ranks_text(behind)} stopped making progress: no multi-process launch for over "
                    f"{self.stall_timeout:g} s at launch {low}, while {ranks_text(ahead)} launched {top} and "
                    f"wait{'s' if len(ahead) == 1 else ''} for {'it' if len(behind) == 1 else 'them'} "
                    f"(last launches: {_last_texts(records, behind + ahead)}).")
        if not done and not self.warned_idle:
            self.warned_idle = True
            sys.stderr.write(
                f"distmap: no rank launched a multi-process computation for {self.stall_timeout:g} s (all at launch "
                f"{top}). If the run hangs, it is in something the progress watch does not see (a plain jax.jit call; "
                "wrap it in distmap.distributed.watched).\n")
        return None

    def _fail(self, what: str, culprits: list[int], message: str) -> None:
        code = {"stalled": EXIT_STALLED, "diverged": EXIT_DIVERGED}.get(what, EXIT_PEER_FAILED)
        body = f"progress watch (rank {self.rank}): {message}"
        self.error = errors.DivergenceError(body, culprits) if what == "diverged" else errors.DistributedError(body)
        if self.rank in culprits:
            where = _main_thread_stack() if what == "stalled" else ""
            sys.stderr.write(f"distmap.errors.DistributedError: {body}\nRank {self.rank} ends (exit code {code}).\n{where}")
            exits.leave(self.client, self.rank, code, f"it {what}")
        sys.stderr.write(f"distmap.errors.DistributedError: {body}\n")
        self._follow()

    def _peer_failed(self, failed: Mapping[int, Mapping[str, Any]]) -> None:
        exits.acknowledge(self.client, self.rank)
        parts = [f"rank {r} failed ({v.get('why', '?')}, exit code {v.get('code', '?')})" for r, v in sorted(failed.items())]
        sys.stderr.write(f"distmap: {'; '.join(parts)}.\n")
        self._follow()

    def _follow(self) -> None:
        """End this rank soon after the rank at fault ended (so a launcher names that one first)."""
        sys.stderr.write(f"distmap: rank {self.rank} ends too (exit code {EXIT_PEER_FAILED}) once the rank at fault "
                         f"has, within {self.peer_grace:g} s, unless its launcher stops it first.\n")
        sys.stderr.flush()
        end = time.monotonic() + self.peer_grace
        while time.monotonic() < end and not self.stop.is_set():
            try:
                if any(v.get("final") for v in exits.failure_notices(self.client).values()):
                    time.sleep(0.3)
                    break
            except Exception:  # noqa: BLE001 - the service is gone
                break
            time.sleep(0.05)
        if self.stop.is_set():
            return
        exits.flush()
        os._exit(EXIT_PEER_FAILED)


def _last_texts(records: Mapping[int, Mapping[str, Any]], ranks: list[int]) -> str:
    parts = []
    for r in ranks:
        entries = [e for e in records[r]["ring"] if e[2]]
        parts.append(f"rank {r}: #{entries[-1][0]} {entries[-1][2]}" if entries else f"rank {r}: none")
    return "; ".join(parts)


def _divergence(records: Mapping[int, Mapping[str, Any]]) -> tuple[list[int], str] | None:
    """The first launch count at which the ranks' fingerprints differ, with the ranks at fault."""
    rings = {r: {int(c): (int(fp), text) for c, fp, text in rec["ring"]} for r, rec in records.items()}
    common = set.intersection(*(set(ring) for ring in rings.values())) if rings else set()
    for c in sorted(common):
        groups: dict[int, list[int]] = {}
        for r in sorted(rings):
            groups.setdefault(rings[r][c][0], []).append(r)
        if len(groups) == 1:
            continue
        # The largest group is taken as right; on a tie, the one with the lowest rank.
        ordered = sorted(groups.values(), key=lambda rs: (-len(rs), rs[0]))
        culprits = sorted(r for rs in ordered[1:] for r in rs)
        shown = []
        for rs in ordered:
            text = next((rings[r][c][1] for r in rs if rings[r][c][1]), "")
            shown.append(f"{ranks_text(rs)}: {text or '(description no longer kept)'}")
        return culprits, (f"{ranks_text(culprits)} diverged: the multi-process launches differ from launch {c} on "
                          f"({'; '.join(shown)}). Every rank must launch the same computations in the same order.")
    return None


def _main_thread_stack() -> str:
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return ""
    return "Its main thread is at:\n" + "".join(traceback.format_stack(frame))


# --------------------------------------------------------------------------------------
# The face the rest of distmap uses

_WATCH: _Watch | None = None


_AT_EXECUTION = [False]  # sharded maps counted as they execute (the collective check), not when called


def count_maps_at_execution(on: bool) -> None:
    """With the collective check on, a sharded map is counted by its callback as it executes (kind
    ``"vmap run"``), so the engine's ``note("vmap", ...)`` at the call (only a trace, under ``jit``) is
    not counted, and :func:`verify` first waits for the dispatched computations to run."""
    _AT_EXECUTION[0] = bool(on)


def note(kind: str, key: Hashable) -> None:
    """Count one multi-process launch of ``kind`` identified by ``key`` on this rank.

    Call it just before launching a computation that spans processes, on every rank alike
    (the map engine calls it for each sharded ``distmap.vmap``). ``key`` says what is
    launched (a function name, shapes, a step number), and must have a ``repr`` that is the
    same on every rank when they launch the same thing (no object addresses). Nearly free
    when the watch is off. Raises the watch's error once it found the run diverged.

    Example:
        >>> from distmap._src import progress
        >>> progress.note("step", 3)
    """
    watch = _WATCH
    if watch is not None and not (kind == "vmap" and _AT_EXECUTION[0]):
        watch.note(kind, key)


def watched(fn: _F, name: str | None = None) -> _F:
    """``fn`` that counts each call as one multi-process launch (see :func:`note`).

    Use it on a jitted step that spans processes, which the watch cannot see by itself.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> step = watched(jax.jit(lambda x: x + 1), "step")
        >>> int(step(jnp.int32(1)))
        2
    """
    label = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        watch = _WATCH
        if watch is not None:
            watch.note("call", label)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]  # fn's own type: a wrapper with its signature (functools.wraps)


def verify(label: str = "", *, timeout: float | None = None) -> int:
    """Check, on every rank at once, that all launched the same multi-process computations so far.

    A synchronous check (one key-value exchange): call it at the same points on every rank,
    before a result leaves the program (a logged metric, a checkpoint). If the counts or
    fingerprints differ, every rank raises :class:`~distmap.errors.DivergenceError` naming
    the ranks at fault, so no result of mismatched collectives is reported as a good one.
    Without a watch (a single process, or the watch turned off) it checks nothing.

    Args:
        label: a name for this check point in messages (for example ``"step 10"``).
        timeout: seconds to wait for the other ranks (default: the stall timeout, at least 10).

    Returns:
        The number of multi-process launches this rank made so far.

    Example:
        >>> from distmap._src import progress
        >>> progress.verify("step 1")
        0
    """
    watch = _WATCH
    if watch is None:
        return 0
    if _AT_EXECUTION[0]:
        import jax

        jax.effects_barrier()  # the executions dispatched so far have run, and their callbacks counted them
    if watch.error is not None:
        raise watch.error
    seq = watch.verify_seq
    watch.verify_seq += 1
    wait = max(watch.stall_timeout, 10.0) if timeout is None else float(timeout)
    where = f"verify #{seq}" + (f" ({label})" if label else "")
    prefix = f"distmap/verify/{seq}/"
    mine: dict[str, Any] = {"count": watch.count, "fp": watch.fp, "ring": watch.recent()}
    watch.client.key_value_set(prefix + str(watch.rank), json.dumps(mine))
    got: dict[int, Any] = {watch.rank: mine}
    end = time.monotonic() + wait
    while True:
        got.update(rank_records(watch.client, prefix))
        missing = [r for r in range(watch.n) if r not in got]
        if not missing:
            break
        # A rank that launched more than this one did before this check, and has not reached
        # it: it is blocked in a launch this rank never makes (or this rank skipped one).
        records = rank_records(watch.client, _PREFIX)
        ahead = {r: int(v["count"]) for r, v in records.items() if r in missing and int(v["count"]) > mine["count"]}
        if ahead:
            got.update(rank_records(watch.client, prefix))  # it may have reached the check in between
            ahead = {r: c for r, c in ahead.items() if r not in got}
        if ahead:
            by_count = {**{r: int(v["count"]) for r, v in got.items()}, **ahead}
            _raise_count_mismatch(where, by_count, {**got, **{r: records[r] for r in ahead}}, waiting=True)
        if time.monotonic() > end:
            raise errors.DivergenceError(
                f"{where}: {ranks_text(missing)} did not reach this check within {wait:g} s (they are stuck, or launched a "
                "different sequence of checks).", missing)
        time.sleep(0.02)
    counts = {r: int(v["count"]) for r, v in got.items()}
    if len(set(counts.values())) > 1:
        _raise_count_mismatch(where, counts, got, waiting=False)
    diverged = _divergence(got)
    if diverged is not None:
        raise errors.DivergenceError(f"{where}: {diverged[1]}", diverged[0])
    return watch.count


def _raise_count_mismatch(where: str, counts: Mapping[int, int], got: Mapping[int, Any], *, waiting: bool) -> None:
    by: dict[int, list[int]] = {}
    for r, c in sorted(counts.items()):
        by.setdefault(c, []).append(r)
    ordered = sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))  # the largest group is taken as right
    culprits = sorted(r for _, rs in ordered[1:] for r in rs)
    shown = "; ".join(f"{ranks_text(rs)}: {c}" for c, rs in ordered)
    late = " (the ranks with more launches wait in one the others never made)" if waiting else ""
    raise errors.DivergenceError(
        f"{where}: {ranks_text(culprits)} diverged: the ranks launched different numbers of multi-process computations "
        f"before this check ({shown}){late}; last launches: {_last_texts(got, sorted(got))}. Their collectives were "
        "paired with the wrong partners, so no result since the last good check can be trusted.", culprits)


def active() -> _Watch | None:
    """The running watch of this process, or ``None``."""
    return _WATCH


def start(client: Any, rank: int, num_processes: int, stall_timeout: float, *, peer_grace: float = 5.0) -> _Watch:
    """Start the watch (``initialize`` does, when ``stall_timeout`` > 0 in a multi-process run)."""
    global _WATCH
    if _WATCH is not None:
        stop()
    interval = min(max(stall_timeout / 8.0, 0.05), 1.0)
    watch = _Watch(client, rank, num_processes, float(stall_timeout), interval, peer_grace)
    _WATCH = watch
    if not _STARTED_ONCE:
        # Registered after jax.distributed.initialize's own handler, so it runs before JAX's shutdown:
        # the thread is stopped and joined while the interpreter and the coordination service still work
        # (a daemon thread inside an RPC at interpreter finalization aborts the process).
        atexit.register(finish)
        _STARTED_ONCE.append(True)
    watch.thread.start()
    return watch


_STARTED_ONCE: list[bool] = []


def finish() -> None:
    """At exit: tell the other ranks this one left the run normally, wait in JAX's shutdown barrier, stop the watch.

    JAX's own ``atexit`` handler (registered before this one, so run after it) would wait in the
    shutdown barrier with the watch thread still running into the interpreter's finalization,
    where a daemon thread inside an RPC aborts the process. So the barrier is waited for here,
    the watch still judging (a rank that left after fewer launches than the others is named
    while this one waits), and the thread is stopped and joined before anything is torn down.
    A failing rank (see ``exits``) says nothing and does not wait: its failure notice did.
    """
    watch = _WATCH
    if watch is None:
        return
    if exits.failing() is None:
        watch.state = "done"
        try:
            watch.client.key_value_set(_PREFIX + str(watch.rank), watch.record(), allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the service may be gone already
            pass
        try:
            import jax

            jax.distributed.shutdown()  # the shutdown barrier; JAX's own handler then finds nothing to do
        except Exception:  # noqa: BLE001 - JAX reports its own barrier failures
            pass
    stop()


def stop() -> None:
    """Stop the watch thread (``shutdown`` does)."""
    global _WATCH
    watch, _WATCH = _WATCH, None
    if watch is not None:
        watch.stop.set()
        if watch.thread.is_alive() and watch.thread is not threading.current_thread():
            watch.thread.join(timeout=2 * watch.interval + 1)


__all__ = [
    "EXIT_DIVERGED",
    "EXIT_PEER_FAILED",
    "EXIT_STALLED",
    "active",
    "count_maps_at_execution",
    "finish",
    "note",
    "start",
    "stop",
    "stall_timeout_from_env",
    "verify",
    "watched",
]
