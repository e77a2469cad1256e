"""Shell text for the cluster launchers, always built from argument lists and ``shlex``.

Every command a launcher writes into a script, passes to ``ssh`` or ``gcloud ... --command``
is made here: values are quoted with :func:`shlex.quote` (POSIX ``sh``), and the fixed parts
are constant templates that carry no user data, so an argument such as ``$(rm -rf ~); x``
reaches the program as that same string.

Two helpers run a program on a remote machine in a way that lets the launcher clean up
after it, since killing an ``ssh`` client does not kill the remote program:

* :func:`detached` starts it under ``setsid`` (its own session and process group) and
  writes the group id to a pid file;
* :func:`kill_group_script` reads that file and ends the whole group (SIGTERM, a grace
  period, SIGKILL).

Example:
    >>> join(["python", "train.py", "--name=a b", "$(id)"])
    "python train.py '--name=a b' '$(id)'"
    >>> exports({"DISTMAP_RUN_ID": "r 1"})
    ["export DISTMAP_RUN_ID='r 1'"]
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence

from distmap import errors

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Ports a launcher picks from when none is forced: above most services' fixed ports and
#: below Linux's ephemeral range (32768-60999), so an outgoing connection cannot hold one.
PORT_RANGE = (20000, 30000)


def join(argv: Sequence[str]) -> str:
    """One shell word per argument: ``shlex.join`` with a check that it is a list of strings."""
    for a in argv:
        if not isinstance(a, str):
            raise TypeError(f"command arguments must be strings, got {a!r} in {list(argv)!r}")
    return shlex.join(list(argv))


def quote(value: str) -> str:
    """:func:`shlex.quote` (named here so every module quotes the same way)."""
    return shlex.quote(value)


def check_env_name(name: str, source: str = "--env") -> str:
    """``name`` if it is a valid environment variable name, else a clear error."""
    if not _ENV_NAME.match(name):
        raise errors.DistributedError(
            f"{source}: {name!r} is not a valid environment variable name (letters, digits and _, not starting "
            "with a digit)."
        )
    return name


def parse_env(items: Iterable[str] | None, source: str = "--env") -> dict[str, str]:
    """``["K=V", ...]`` to a dict, in order; the value may contain anything, ``=`` included.

    Example:
        >>> parse_env(["A=1", "B=x=y z"])
        {'A': '1', 'B': 'x=y z'}
    """
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise errors.DistributedError(f"{source}={item!r} is not NAME=VALUE.")
        out[check_env_name(name, source)] = value
    return out


def exports(env: Mapping[str, str]) -> list[str]:
    """``export NAME=VALUE`` lines, each value quoted."""
    return [f"export {check_env_name(k, 'environment')}={quote(v)}" for k, v in env.items()]


def env_prefix(env: Mapping[str, str]) -> list[str]:
    """``["env", "A=1", ...]``: an argument list that runs a command with ``env`` added."""
    return ["env", *(f"{check_env_name(k, 'environment')}={v}" for k, v in env.items())]


def pick_port(rng: secrets.SystemRandom | None = None) -> int:
    """A coordinator port for one run, drawn from :data:`PORT_RANGE` (never a fixed one)."""
    lo, hi = PORT_RANGE
    return lo + (rng or secrets.SystemRandom()).randrange(hi - lo)


def safe_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (for file names).

    Example:
        >>> safe_name("run 1/a")
        'run_1_a'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


# A program started by ``sh -c 'echo $$ > "$0" && exec "$@"' PIDFILE PROGRAM...``: ``sh`` writes
# its own pid (the new session's and process group's id, after setsid) and becomes the program.
_WRITE_PID_AND_EXEC = 'echo "$$" > "$0" && exec "$@"'


def detached(program: Sequence[str], pid_file: str, env: Mapping[str, str] | None = None) -> str:
    """Shell text that runs ``program`` in its own session, its process group id in a pid file.

    ``pid_file`` is a shell word (quote a plain path with :func:`quote`; an expression such as
    ``"$pid_file"`` is used as it is). ``setsid --wait`` keeps the exit status; the program's
    process group can be ended later with :func:`kill_group_script`, even after the ``ssh``
    that started it is gone.

    Example:
        >>> print(detached(["python", "t.py"], quote("/tmp/x.pid"), {"A": "1"}))
        env A=1 setsid --wait sh -c 'echo "$$" > "$0" && exec "$@"' /tmp/x.pid python t.py
    """
    if not program:
        raise errors.DistributedError("no program to run.")
    head = join([*(env_prefix(env) if env else []), "setsid", "--wait", "sh", "-c", _WRITE_PID_AND_EXEC])
    return f"{head} {pid_file} {join(program)}"


def kill_group_script(pid_file: str, grace_period: float) -> str:
    """``sh`` text that ends the process group named in a pid file and removes the file.

    ``pid_file`` is a shell word, as in :func:`detached`. SIGTERM, up to ``grace_period``
    seconds for the group to go, then SIGKILL. Only a plain number above 1 is ever
    signalled (an empty or damaged file does nothing), so the script can never signal every
    process of the user. It always exits 0.
    """
    ticks = max(int(round(grace_period * 10)), 0)
    return (
        f"pg=$(cat {pid_file} 2>/dev/null); "
        'case "$pg" in ""|*[!0-9]*|0|1) ;; *) '
        'kill -s TERM -- "-$pg" 2>/dev/null; i=0; '
        f'while [ "$i" -lt {ticks} ] && kill -s 0 -- "-$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done; '
        'kill -s KILL -- "-$pg" 2>/dev/null;; esac; '
        f"rm -f {pid_file}; true"
    )


__all__ = [
    "PORT_RANGE",
    "check_env_name",
    "detached",
    "env_prefix",
    "exports",
    "join",
    "kill_group_script",
    "parse_env",
    "pick_port",
    "quote",
    "safe_name",
]
