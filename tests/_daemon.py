"""What the real-daemon fixtures share: free ports, skip reasons, processes found by an env marker.

The SLURM and SSH fixtures (``tests/_slurm_cluster.py``, ``tests/_ssh_server.py``) start
real daemons on 127.0.0.1 for one test session. Every process they start carries
``DISTMAP_TEST_DAEMON=<its folder>`` in its environment, and so does everything those
daemons start (slurmstepd, the tasks, sshd's sessions), with ``PID:FOLDER`` as the value
(the pid of the test process): at the end the fixture stops the daemons by pid and then
checks, by that marker, that nothing of theirs is left. A test process killed before its
end takes its daemons along (they get SIGTERM when it dies), and what they leave (a
slurmstepd of a running job) is ended by the next session's :func:`sweep_orphans`, which
touches only processes whose test process is gone, never another live session's.

Example:
    >>> port = free_port()
    >>> 1024 <= port < 65536
    True
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence

#: The variable that marks every process a daemon fixture starts (and their children).
MARK = "DISTMAP_TEST_DAEMON"

#: How to get the daemons on Debian/Ubuntu (what ``.ci/run`` does).
INSTALL_HINT = "apt-get install slurm-wlm openssh-server"

#: Set to 1 (as ``.ci/run`` does) to fail, not skip, when the daemons cannot be started.
REQUIRE = "DISTMAP_REQUIRE_DAEMONS"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(programs: Iterable[str]) -> list[str]:
    """The programs of ``programs`` not found on ``PATH`` (or in /usr/sbin, where Debian puts daemons)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [p for p in programs if shutil.which(p, path=path) is None]


def which(program: str) -> str:
    """The absolute path of ``program`` (sshd must be started by its full path)."""
    found = shutil.which(program, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(program)
    return found


def marker_for(root: str) -> str:
    """The marker value of the daemons this test process starts in ``root``."""
    return f"{os.getpid()}:{root}"


def sweep_orphans() -> list[int]:
    """SIGKILL processes marked by a test process that no longer runs; returns their pids."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                values = [v[len(MARK) + 1:] for v in f.read().split(b"\0") if v.startswith(MARK.encode() + b"=")]
        except OSError:
            continue
        owner = values[0].split(b":", 1)[0] if values else b""
        if owner.isdigit() and not os.path.exists(f"/proc/{int(owner)}"):
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


def marked_pids(marker: str, name: str = MARK) -> list[int]:
    """Pids of live processes whose environment holds ``name=marker`` (this process excluded)."""
    want = f"{name}={marker}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if want in env and not zombie:
            out.append(int(entry))
    return out


def wait_unmarked(marker: str, timeout: float, name: str = MARK) -> list[int]:
    """Wait up to ``timeout`` s until no process carries ``name=marker``; returns those left."""
    end = time.monotonic() + timeout
    left = marked_pids(marker, name)
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = marked_pids(marker, name)
    return left


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(argv: Sequence[str], log: str, marker: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a daemon in the foreground (its own session), output to ``log``, marked with ``marker``.

    The daemon gets SIGTERM if the test process dies without stopping it (a killed pytest).
    """
    env = dict(os.environ if env is None else env)
    env[MARK] = marker
    with open(log, "ab") as f:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)


def stop(procs: Sequence[subprocess.Popen], marker: str, grace: float = 10.0) -> list[int]:
    """SIGTERM each daemon by pid, SIGKILL after ``grace`` s; then SIGKILL anything left with the marker.

    Returns the pids that had to be killed by marker (a daemon that left processes behind).
    """
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    left = wait_unmarked(marker, 5.0)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def tail(path: str, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (for failure messages)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})"
