"""Relay one multi-worker command (a TPU slice's ``gcloud ... ssh --worker=all``) for the supervisor.

``python relay.py --log_prefix=RUN_DIR/NAME [--suffix=.restart1] -- gcloud ... ssh ...``

The command's workers print every line as ``[worker W] text`` and, when their program
ends, ``[worker W] ##distmap-worker-exit## CODE`` (the TPU launcher's remote script does
both). The relay

* copies every line to its stdout (the supervisor prefixes it with the slice's name),
* writes each worker's lines, without the prefix, to ``LOG_PREFIX.worker_W[SUFFIX].log``,
* fails fast: at the first worker whose code is not 0 it ends the command (its whole
  process group, which it shares) and exits with that worker's code, so the launcher stops
  the other slices and cleans up the remote workers at once, instead of the rest of the
  slice hanging in a collective until JAX's heartbeat time-out,
* otherwise exits with the command's own status (``ssh``'s 255 for a lost connection).

It imports only the standard library and is run by path, so it starts in milliseconds
and never loads JAX.

Example:
    >>> parse_line("[worker 3] ##distmap-worker-exit## 2")
    ('3', '##distmap-worker-exit## 2', 2)
    >>> parse_line("[worker 0] step 10 loss 0.5")
    ('0', 'step 10 loss 0.5', None)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

#: What a worker's last line says (followed by its exit code).
EXIT_MARKER = "##distmap-worker-exit##"

_LINE = re.compile(r"\[worker ([^\]\s]+)\] ?(.*)\Z", re.DOTALL)


def parse_line(line: str) -> tuple[str | None, str, int | None]:
    """``(worker, text, exit code or None)`` of one relayed line; worker ``None`` if unprefixed."""
    m = _LINE.match(line)
    if not m:
        return None, line, None
    worker, text = m.group(1), m.group(2)
    code = None
    if text.startswith(EXIT_MARKER):
        rest = text[len(EXIT_MARKER):].strip()
        if rest.isdigit():
            code = int(rest)
    return worker, text, code


def _safe(worker: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", worker)


class _Logs:
    def __init__(self, prefix: str, suffix: str):
        self.prefix, self.suffix = prefix, suffix
        self.files: dict[str, IO[str]] = {}

    def write(self, worker: str, text: str) -> None:
        f = self.files.get(worker)
        if f is None:
            f = self.files[worker] = open(f"{self.prefix}.worker_{_safe(worker)}{self.suffix}.log", "a")
        f.write(text + "\n")
        f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _end_command(proc: subprocess.Popen, grace: float) -> None:
    """End the command and everything it started: SIGTERM our shared group, then SIGKILL it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal is for the command, not for us
    try:
        os.killpg(os.getpgid(0), signal.SIGTERM)
    except OSError:
        proc.terminate()
    end = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def relay(
    command: list[str], log_prefix: str, suffix: str = "", *, out: IO[str] | None = None, grace: float = 2.0
) -> int:
    """Run ``command``, relay and split its output, and return the exit code (see the module doc)."""
    out = sys.stdout if out is None else out
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        out.write(f"distmap relay: could not start {command[0]!r}: {e.strerror or e}\n")
        return 127
    logs = _Logs(log_prefix, suffix)
    failed: tuple[str, int] | None = None
    finished: dict[str, int] = {}
    assert proc.stdout is not None
    try:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            out.write(line + "\n")
            out.flush()
            worker, text, code = parse_line(line)
            if worker is None:
                continue
            logs.write(worker, text)
            if code is not None:
                finished[worker] = code
                if code != 0 and failed is None:
                    failed = (worker, code)
                    out.write(f"distmap relay: worker {worker} exited with code {code}; ending the slice's command.\n")
                    out.flush()
                    _end_command(proc, grace)
                    break
        rc = proc.wait()
    finally:
        logs.close()
    if failed is not None:
        return failed[1]
    if rc < 0:
        return 128 - rc
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log_prefix", required=True)
    parser.add_argument("--suffix", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to relay (put it after --)")
    return relay(command, args.log_prefix, args.suffix)


if __name__ == "__main__":
    sys.exit(main())
