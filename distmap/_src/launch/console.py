"""What of a rank's output reaches the console; its log file always gets every line.

A JAX program started by a launcher prints, besides its own output, a few dozen lines of
start-up chatter per rank: Gloo's ``[Gloo] Rank N is connected to M peer ranks`` (several
per collective group, sometimes two written into one line) and the INFO records of JAX,
XLA and gRPC (``I1202 00:56:32.074566 1404 distributed.py:172] Connecting to ...``). The
``brief`` console leaves out exactly those two kinds:

* Gloo's connection lines (and the mixtures two of them make when written at once);
* INFO records in absl/glog format, unless they come from the program's own main file
  (``train.py:12]`` for ``python train.py``), so a program that reports progress with
  ``logging.info`` is still heard.

Everything else is shown: the program's prints, every WARNING/ERROR/FATAL record
(``W``/``E``/``F`` lines), tracebacks, distmap's own messages. ``all`` shows every line,
``none`` nothing (logs only).

Example:
    >>> keep = console_filter("brief", ["python", "train.py"])
    >>> [keep(s) for s in ["step 1", "[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of "
    ...     "connected peer ranks is : 1", "I1202 00:56:32.07 14 distributed.py:172] Connecting",
    ...     "I1202 00:56:32.07 14 train.py:9] step 2", "W1202 00:56:32.07 14 x.cc:1] slow"]]
    [True, False, False, True, True]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

#: The ``--console`` choices.
MODES = ("brief", "all", "none")

# Gloo writes its line in pieces (one per ``<<``), and the connections of one process are made
# by several threads at once, so two lines can be interleaved piece by piece. A line is Gloo's
# chatter when it holds its pieces and nothing else but numbers.
_GLOO = re.compile(r"\[Gloo\] Rank|Expected number of connected peer ranks is :|is connected to|peer ranks\.")
# absl (Python) and glog (C++) records: level letter, MMDD, time, thread id, file:line]
_INFO = re.compile(r"I\d{4} \d\d:\d\d:[\d.]+ +\d+ ([^\s:\]]+):\d+\]")


def _main_file(program: Sequence[str]) -> str | None:
    """The main file of ``python [opts] FILE`` or ``python -m MODULE``, as absl names it."""
    args = list(program)
    if not args or not os.path.basename(args[0]).startswith("python"):
        return None
    for i, a in enumerate(args[1:], 1):
        if a == "-m" and i + 1 < len(args):
            return args[i + 1].rsplit(".", 1)[-1] + ".py"
        if a == "-c":
            return None
        if not a.startswith("-"):
            return os.path.basename(a)
    return None


def console_filter(mode: str, program: Sequence[str] = ()) -> Callable[[str], bool]:
    """A predicate: whether a line of ``program``'s output goes to the console in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"console mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "all":
        return lambda line: True
    if mode == "none":
        return lambda line: False
    main = _main_file(program)

    def keep(line: str) -> bool:
        if _GLOO.search(line) and not _GLOO.sub("", line).strip(" \t0123456789"):
            return False
        m = _INFO.match(line)
        return m is None or m.group(1) == main

    return keep


__all__ = ["MODES", "console_filter"]
