"""Shell text for the cluster launchers, always built from argument lists and ``shlex``.

Every command a launcher writes into a script, passes to ``ssh`` or ``gcloud ... --command``
is made here: values are quoted with :func:`shlex.quote` (POSIX ``sh``), and the fixed parts
are constant templates that carry no user data, so an argument such as ``$(rm -rf ~); x``
reaches the program as that same string.

Killing an ``ssh`` client does not kill the program it started, so :func:`watched` runs a
remote program in its own session next to a watchdog that stops that session's process
group when the launcher says so down the session's stdin, or when the stdin closes.

Example:
    >>> join(["python", "train.py", "--name=a b", "$(id)"])
    "python train.py '--name=a b' '$(id)'"
    >>> exports({"DISTMAP_RUN_ID": "r 1"})
    ["export DISTMAP_RUN_ID='r 1'"]
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence

from distmap import errors

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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


def safe_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (for file names).

    Example:
        >>> safe_name("run 1/a")
        'run_1_a'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


# Runs "$@" (the program, after ``env NAME=VALUE ...``) in a session of its own on the remote
# host, beside a watchdog that reads the ssh (srun, gcloud) session's stdin, a pipe the
# launcher holds open:
#
# * ``stop`` (the run is stopped: Ctrl-C, a scheduler's stop, another rank was stopped), or
#   end-of-file without a word (the launcher or the connection died): SIGTERM to the program's
#   process group, up to the grace period ($1 seconds) to save and end, then SIGKILL;
# * ``kill`` (another rank failed: the run is over): SIGKILL at once.
#
# A SIGTERM/SIGINT/SIGHUP to this shell (``scancel --signal=TERM`` signals every process of a
# job step) is passed on to the program, which decides how to end. When the program ends,
# what it left in its group is killed too (an sshd keeps the session, and so the launcher's
# rank, open while any process holds the session's output). ``$!`` is the group id: a
# background child of a non-interactive shell is no group leader, so ``setsid`` makes the new
# session without forking. Constant text: no user data.
WATCHED = """\
grace=$1; shift
exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ word=; while read -r word; do case $word in stop|kill) break;; esac; done <&3
  if [ "$word" = kill ]; then kill -s KILL -- "-$pg"; exit 0; fi
  kill -s TERM -- "-$pg"; end=$(( $(date +%s) + grace ))
  while [ "$(date +%s)" -lt "$end" ] && kill -s 0 -- "-$pg"; do sleep 0.2; done
  kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
fwd() { kill -s TERM -- "-$pg" 2>/dev/null; }
trap fwd TERM INT HUP
while :; do
  wait "$pg" 2>/dev/null; rc=$?
  kill -0 "$pg" 2>/dev/null || break
done
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
"""


def watched(program: Sequence[str], env: Mapping[str, str] | None = None, workdir: str | None = None,
            grace: float = 30.0) -> str:
    """Shell text for a remote host: ``cd``, then ``program`` with ``env``, stopped through its stdin.

    The command an ``ssh``, ``srun`` or ``gcloud ... ssh`` rank runs; its stdin must be a pipe
    the launcher holds open (``Worker(hold_stdin=True)``): ``stop`` down the pipe (or the pipe
    closing) gives the program SIGTERM and ``grace`` seconds before SIGKILL, ``kill`` ends it
    at once. No pid file is written.

    Example:
        >>> print(watched(["python", "t.py"], {"A": "1"}, "/code", grace=10))  # doctest: +ELLIPSIS
        cd -- /code && exec sh -c '...' distmap-rank 10 env A=1 python t.py
    """
    if not program:
        raise errors.DistributedError("no program to run.")
    cd = f"cd -- {quote(workdir)} && " if workdir else ""
    seconds = str(int(math.ceil(grace)))
    return cd + "exec " + join(["sh", "-c", WATCHED, "distmap-rank", seconds, *env_prefix(env or {}), *program])


__all__ = ["WATCHED", "check_env_name", "env_prefix", "exports", "join", "parse_env", "quote", "safe_name", "watched"]
