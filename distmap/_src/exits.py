"""How a rank that fails leaves a multi-process run: at once, with its own exit code.

At exit, JAX's ``atexit`` handler waits in a shutdown barrier for every other process of the
run (``shutdown_timeout_seconds``, 300 s by default). That is right when all ranks finish,
and wrong when one fails alone: it would sit in the barrier, alive, while the others wait
for it in their next collective, so no launcher or scheduler sees it fail until JAX aborts
(SIGABRT, exit code 134, often on another rank first).

Once :func:`install` ran (``distmap.distributed.initialize`` does it in multi-process runs):

* a rank whose main thread ends with an **uncaught exception** (``sys.excepthook``) or a
  **non-zero exit status** is *failing*. The status is seen through ``sys.exit``, which
  :func:`install` (so ``initialize()``, not importing distmap) replaces. Python looks
  ``sys.exit`` up before it evaluates the call's argument, so in ``sys.exit(main())``, and in
  absl's ``app.run(main)`` (which ends with ``sys.exit(main(argv))``), a status *returned* by
  a ``main`` that calls ``initialize()`` goes to Python's own ``sys.exit``: end such a
  ``main`` with ``sys.exit(code)``, or write ``code = main(); sys.exit(code)``. A failing rank
  publishes a notice in the coordination service's key-value store (so the
  other ranks' progress watch learns which rank failed and why), then Python exits as usual
  up to the ``atexit`` handlers. The handlers registered *after* ``initialize`` (a checkpoint
  writer made in ``main``) run; then this module's handler ends the process with the failing
  status, skipping the ones registered before it: JAX's shutdown barrier, and handlers
  libraries registered at import. A timer bounds the whole exit to :data:`EXIT_GRACE_S`
  seconds (a handler that waits for the other ranks would hang otherwise).
* rank 0 hosts the coordination service, whose end aborts the others, so it first waits
  (at most the same bound) until every other rank saw its notice or failed too: each then
  prints its own error before the service goes.
* a **normal exit** (status 0), and a **stopped** one (status 143, 130 or 129: the rank saved
  and ended on a stop, as every rank does at the same step; see ``distmap.distributed.stop_requested``),
  change nothing: every ``atexit`` handler runs and JAX's shutdown barrier waits for the slower
  ranks, as it should; the status is kept.

Not seen: ``raise SystemExit(3)`` (Python gives no hook for it; use ``sys.exit``), a
``SystemExit`` caught and then ignored after ``sys.exit`` recorded it, ``os._exit`` and
signals (nothing runs in the process; a launcher names such a rank from its exit status,
and the other ranks' progress watch notices that its heartbeat stopped).

Opting out: ``initialize(fast_exit=False)`` or ``DISTMAP_FAST_EXIT=0`` keeps Python's and
JAX's own behaviour (every handler runs, and a failing rank waits in the barrier).

Example:
    >>> from distmap._src import exits
    >>> exits.exit_code(None), exits.exit_code(3), exits.exit_code("bad flags")
    (0, 3, 1)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from distmap import errors
from distmap._src import jax_internals

# The exit statuses belong to the launcher-rank contract (launchers describe them).
from distmap._src.launch import contract
from distmap._src.launch.contract import EXIT_DIVERGED, EXIT_PEER_FAILED, is_stop

#: Seconds a failing rank may spend exiting (its late ``atexit`` handlers, rank 0's wait).
EXIT_GRACE_S = 3.0


_FAIL_PREFIX = "distmap/fail/"
_ACK_PREFIX = "distmap/ack/"


def exit_code(status: Any) -> int:
    """The process exit status Python makes of ``sys.exit(status)``."""
    if status is None:
        return 0
    if isinstance(status, bool):
        return int(status)
    if isinstance(status, int):
        return status & 0xFF
    return 1


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable of the runtime (``1``/``0``, ``true``/``false``, ...; unset: ``default``).

    Example:
        >>> env_switch("DISTMAP_SOMETHING_UNSET", True)
        True
    """
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise errors.DistributedError(f"environment variable {name}={raw!r}: expected 1 or 0 (on or off).")


def fast_exit_from_env() -> bool:
    """Whether ``DISTMAP_FAST_EXIT`` leaves the fast exit on (unset: on)."""
    return env_switch(contract.FAST_EXIT, True)


class _Exits:
    def __init__(self) -> None:
        self.installed = False
        self.client: Callable[[], Any] = lambda: None
        self.rank = 0
        self.num_processes = 1
        self.failing: tuple[int, str] | None = None
        self.previous_hook: Any = None
        self.started = 0.0
        self.after: tuple[int, ...] = ()


_STATE = _Exits()


def publish_failure(client: Any, rank: int, code: int, why: str, *, final: bool = False) -> None:
    """Tell the other ranks (their progress watch) that ``rank`` is exiting with ``code``.

    ``final``: the process ends right after this (the others follow it a moment later).
    """
    try:
        value = json.dumps({"code": code, "why": why, "final": final})
        client.key_value_set(_FAIL_PREFIX + str(rank), value, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the service may be gone; the launcher still sees the exit status
        pass


def failure_notices(client: Any) -> dict[int, dict[str, Any]]:
    """The failure notices other ranks published, by rank."""
    return {r: v for r, v in jax_internals.rank_records(client, _FAIL_PREFIX).items() if r != _STATE.rank}


def _finals(client: Any) -> set[int]:
    return {r for r, v in failure_notices(client).items() if v.get("final")}


def acknowledge(client: Any, rank: int) -> None:
    """Say that ``rank`` saw a failure notice (rank 0 waits for this before it leaves)."""
    try:
        client.key_value_set(_ACK_PREFIX + str(rank), "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - best effort: the service may be gone already
        pass


def leave(client: Any, rank: int, code: int, why: str) -> NoReturn:
    """End this rank now with ``code``, its failure notice published as final (the rank at fault)."""
    publish_failure(client, rank, code, why, final=True)
    flush()
    os._exit(code)


def follow(client: Any, rank: int, culprits: set[int], grace: float = 5.0) -> NoReturn:
    """End this rank with ``EXIT_PEER_FAILED`` once ``culprits`` ended (at most ``grace`` s), so a launcher,
    which names the first rank to exit, names the rank at fault."""
    acknowledge(client, rank)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            if culprits <= _finals(client):
                time.sleep(0.3)
                break
        except Exception:  # noqa: BLE001 - the service is gone: the ranks at fault ended
            break
        time.sleep(0.05)
    flush()
    os._exit(EXIT_PEER_FAILED)


def failing() -> tuple[int, str] | None:
    """(exit code, why) once this rank is failing, else ``None``."""
    return _STATE.failing


def _fail(code: int, why: str) -> None:
    if _STATE.failing is not None or _STATE.client() is None:
        return
    _STATE.failing = (code, why)
    _STATE.started = time.monotonic()
    rank = _STATE.rank
    sys.stderr.write(f"distmap: rank {rank} exits (code {code}) after {why}, so its launcher or scheduler can stop "
                     "the other ranks.\n")
    sys.stderr.flush()
    publish_failure(_STATE.client(), rank, code, why)

    def bound() -> None:
        time.sleep(EXIT_GRACE_S)
        _end(code)

    threading.Thread(target=bound, name="distmap-exit-bound", daemon=True).start()


def _hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    _STATE.previous_hook(kind, value, tb)
    if issubclass(kind, KeyboardInterrupt):
        return  # stopped by SIGINT: not a failure (Python exits with 130 as usual)
    code = 1
    if isinstance(value, errors.DivergenceError):
        code = EXIT_DIVERGED
    culprits = tuple(getattr(value, "ranks", ()) or ())
    if isinstance(value, errors.DivergenceError) and culprits and _STATE.rank not in culprits:
        _STATE.after = culprits  # let the ranks at fault exit first, so a launcher names them
    _fail(code, f"an uncaught {kind.__name__}")


def _exit(status: Any = None) -> NoReturn:
    code = exit_code(status)
    if code and not is_stop(code) and _STATE.installed and threading.current_thread() is threading.main_thread():
        _fail(code, f"sys.exit({status!r})")
    _REAL_EXIT(status)


_exit.__doc__ = sys.exit.__doc__
_REAL_EXIT = sys.exit


def _end(code: int) -> None:
    client = _STATE.client()
    if client is not None and _STATE.failing is not None:
        publish_failure(client, _STATE.rank, code, _STATE.failing[1], final=True)
    flush()
    os._exit(code)


def flush() -> None:
    """Flush logging and the standard streams (before ``os._exit``)."""
    try:
        logging.shutdown()
    except Exception:  # noqa: BLE001 - best effort at exit: a handler may fail to close
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream
            pass


def _at_exit() -> None:
    """Registered at ``install``: so it runs after the handlers registered later, before earlier ones."""
    if _STATE.failing is None:
        return  # a normal (or stopped) exit: every handler runs, JAX's shutdown barrier included
    code = _STATE.failing[0]
    client = _STATE.client()
    wait_for = {str(r) for r in _STATE.after}
    try:  # ranks that failed before this one: this failure may be a consequence (a closed connection)
        earlier = [str(r) for r in failure_notices(client)] if client is not None else []
    except Exception:  # noqa: BLE001 - the service may be gone: wait for no earlier rank
        earlier = []
    if earlier:
        _STATE.after = tuple(int(r) for r in earlier)
        wait_for |= set(earlier)
    if _STATE.rank == 0:
        wait_for |= {str(r) for r in range(1, _STATE.num_processes)}
    if wait_for and client is not None:
        end = _STATE.started + EXIT_GRACE_S
        while time.monotonic() < end:
            try:
                seen = {k.rsplit("/", 1)[-1] for prefix in (_FAIL_PREFIX, _ACK_PREFIX)
                        for k, _ in client.key_value_dir_get(prefix)}
            except Exception:  # noqa: BLE001 - the service is gone: nobody left to wait for
                break
            if wait_for <= seen and (not _STATE.after or _finals(client) >= set(_STATE.after)):
                if _STATE.after:
                    time.sleep(0.3)  # the ranks at fault published their last word and are exiting
                break
            time.sleep(0.05)
    _end(code)


def install(client: Callable[[], Any], rank: int, num_processes: int) -> None:
    """Take over ``sys.excepthook`` and replace ``sys.exit``, and register the exit handler (idempotent).

    ``client`` returns JAX's distributed client, or ``None`` once the run was left.
    """
    _STATE.client, _STATE.rank, _STATE.num_processes = client, rank, num_processes
    _STATE.failing, _STATE.after = None, ()
    if _STATE.installed:
        return
    _STATE.previous_hook = sys.excepthook
    sys.excepthook = _hook
    sys.exit = _exit  # records a non-zero status of every sys.exit looked up from now on
    atexit.register(_at_exit)
    _STATE.installed = True


def uninstall() -> None:
    """Give ``sys.excepthook`` and ``sys.exit`` back (``distmap.distributed.shutdown`` does)."""
    if not _STATE.installed:
        return
    if sys.excepthook is _hook:
        sys.excepthook = _STATE.previous_hook
    if sys.exit is _exit:
        sys.exit = _REAL_EXIT
    atexit.unregister(_at_exit)
    _STATE.installed = False
    _STATE.failing = None


__all__ = [
    "EXIT_GRACE_S", "acknowledge", "env_switch", "exit_code",
    "failing", "failure_notices", "fast_exit_from_env", "flush", "follow", "install", "leave", "publish_failure",
    "uninstall",
]
