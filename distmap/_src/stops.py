"""How a program notices that its run is being stopped, so that it saves before it ends.

A stop reaches a rank as SIGTERM: from a launcher (Ctrl-C or SIGTERM to it, another rank
stopped), a scheduler (``scancel --signal=TERM``, SLURM's ``--signal`` before a time limit,
Kubernetes deleting a pod, a TPU VM's maintenance notice) or a preemption notice. The rank
then has ``--grace_period`` seconds (30 by default) before SIGKILL.

In a multi-process run JAX's preemption service catches that SIGTERM (so the program is not
killed by it), tells every rank, and agrees on a step at which all of them save:
:func:`stop_requested` asks it (``jax.experimental.multihost_utils.reached_preemption_sync_point``).
Call it at every step, on every rank, with the same step numbers; it returns ``True`` on
every rank at the same step. Then save and end with :data:`EXIT_STOPPED` (``128 + SIGTERM``),
which launchers read as "stopped", never as a failure to restart. In a single process it
answers from a SIGTERM handler it installs at its first call.

Example:
    >>> from distmap._src import stops
    >>> stops.stop_requested(0)  # no stop asked for
    False
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from distmap._src import jax_internals
from distmap._src.launch.contract import EXIT_STOPPED

_SIGNALS: list[int] = []
_INSTALLED: list[bool] = []


def _note(signum: int, frame: Any) -> None:
    _SIGNALS.append(signum)


def _install_local() -> None:
    if _INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _note)
    _INSTALLED.append(True)


def stop_requested(step: int) -> bool:
    """Whether the run is being stopped and every rank should save now, at ``step``.

    Args:
        step: this training step's number, the same on every rank, counting up by one.

    Returns:
        ``True`` on every rank at the same step once any rank got a stop (SIGTERM).
    """
    if jax_internals.distributed_client() is not None:
        from jax.experimental import multihost_utils

        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    _install_local()
    return bool(_SIGNALS)


__all__ = ["EXIT_STOPPED", "stop_requested"]
