"""The policy of ``launch/ssh.py``: ranks on a list of hosts, each started through ``ssh``.

Every rank is one ``ssh HOST COMMAND`` child of the local supervisor, so the SSH launcher
has exactly the supervision of ``launch/local.py``: prefixed output, per-rank logs, fail
fast, exit codes, ``--timeout``, ``--max_restarts`` with a new port per start. What ssh
adds is a remote side the launcher does not own: killing an ``ssh`` client does not kill the
program it started. So each remote program runs in a session of its own next to a remote
watchdog tied to the ssh session (``shell.watched``): the launcher holds the ssh client's
stdin open and writes ``kill`` down it when a rank failed (the program is killed at once) or
``stop`` when the run is stopped (SIGTERM, ``--grace_period`` seconds, then SIGKILL); when
the launcher dies or the connection drops, the remote side sees end-of-file and stops the
program the same graceful way.
No pid file is written and no second connection is needed to clean up.

The remote ``COMMAND`` is one string for the remote login shell (POSIX ``sh``), built with
``shlex`` from argument lists: ``cd`` to the working folder, the ``DISTMAP_*`` variables of
the contract (coordinator: the first host, at a port chosen per start), then the program.

Example:
    >>> ws = ssh_workers(["python", "t.py", "a b"], ["h1", "me@h2"], port=23456, run_id="r1")
    >>> [w.argv[-2] for w in ws], ws[1].env, ws[1].hold_stdin
    (['h1', 'me@h2'], None, True)
    >>> "DISTMAP_COORDINATOR=h1:23456" in ws[1].argv[-1] and "DISTMAP_PROCESS_ID=1" in ws[1].argv[-1]
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO

from distmap import errors
from distmap._src.launch import contract, shell
from distmap._src.launch.local import port_was_taken, split_gpu_ids
from distmap._src.launch.ports import pick_port
from distmap._src.launch.supervisor import LaunchResult, SupervisorOptions, Worker, supervise

#: ssh options always given, after the user's own (ssh takes the first value of each option, so a
#: user's ``--ssh_option=ServerAliveInterval=60`` wins): never prompt, notice a dead host in about a minute.
DEFAULT_SSH_OPTIONS = ("BatchMode=yes", "ServerAliveInterval=15")


def _option_name(option: str) -> str:
    return option.replace(" ", "=").split("=", 1)[0].strip().lower()


def parse_hostfile(text: str) -> list[str]:
    """Hosts from a hostfile: one a line (the first word), ``#`` comments and blank lines ignored.

    Example:
        >>> parse_hostfile("# workers\\nnode1\\nme@node2  # the second\\n\\n")
        ['node1', 'me@node2']
    """
    hosts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(line.split()[0])
    return hosts


def read_hostfile(path: str) -> list[str]:
    """The hosts in the hostfile ``path``, or ``ValueError`` saying why it cannot be used."""
    try:
        with open(path) as f:
            hosts = parse_hostfile(f.read())
    except OSError as e:
        raise ValueError(f"--hostfile={path}: cannot read it ({e.strerror or e}); give a file with one ssh "
                         "destination a line, or the hosts with --hosts=h1,h2.") from None
    if not hosts:
        raise ValueError(f"--hostfile={path} names no host (one ssh destination a line, # comments).")
    return check_hosts(hosts)


def check_hosts(hosts: Sequence[str]) -> list[str]:
    """``hosts`` if each is a usable ssh destination (no spaces, not starting with ``-``)."""
    hosts = [h.strip() for h in hosts]
    if not hosts:
        raise errors.DistributedError("ssh: no hosts; give --hosts=h1,h2 or --hostfile=FILE.")
    for h in hosts:
        if not h or h.startswith("-") or any(c.isspace() for c in h):
            raise errors.DistributedError(f"ssh: {h!r} is not a host name (no spaces, not starting with '-').")
    return hosts


def host_address(destination: str) -> str:
    """The host part of an ssh destination: ``"me@node1"`` to ``"node1"``."""
    return destination.rsplit("@", 1)[-1]


def ssh_argv(
    host: str, command: str, *, ssh: str = "ssh", ssh_options: Sequence[str] = (),
    ssh_config: str | None = None,
) -> list[str]:
    """``ssh [-F CONFIG] -o OPT ... HOST COMMAND``: the user's options, then the defaults they do not set.

    Example:
        >>> ssh_argv("node1", "true", ssh_options=["Port=2222"], ssh_config="/etc/cluster/ssh_config")
        ['ssh', '-F', '/etc/cluster/ssh_config', '-o', 'Port=2222', '-o', 'BatchMode=yes', '-o', 'ServerAliveInterval=15', \
'node1', 'true']
    """
    given = {_option_name(o) for o in ssh_options}
    options = [*ssh_options, *(o for o in DEFAULT_SSH_OPTIONS if _option_name(o) not in given)]
    opts = [a for o in options for a in ("-o", o)]
    return [ssh, *(["-F", ssh_config] if ssh_config else []), *opts, host, command]


def ssh_workers(
    program: Sequence[str],
    hosts: Sequence[str],
    *,
    port: int,
    run_id: str,
    attempt: int = 0,
    processes_per_host: int = 1,
    coordinator_host: str | None = None,
    devices_per_process: int | None = None,
    gpu_ids: Sequence[int] | None = None,
    init_timeout: float | None = None,
    stall_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    remote_dir: str | None = None,
    ssh: str = "ssh",
    ssh_options: Sequence[str] = (),
    ssh_config: str | None = None,
    grace_period: float = 30.0,
) -> list[Worker]:
    """The ranks of one start: ``processes_per_host`` per host, rank 0 on the first host."""
    hosts = check_hosts(hosts)
    coordinator = f"{coordinator_host or host_address(hosts[0])}:{port}"
    shares = split_gpu_ids(gpu_ids, processes_per_host) if gpu_ids else None
    total = len(hosts) * processes_per_host
    workers = []
    for h, host in enumerate(hosts):
        for local in range(processes_per_host):
            rank = h * processes_per_host + local
            spec = contract.RankSpec(
                coordinator=coordinator, num_processes=total, process_id=rank, run_id=run_id, attempt=attempt,
                cpu_devices=None if shares else devices_per_process,
                visible_devices=shares[local] if shares else None,
                local_device_ids=list(range(len(shares[local]))) if shares else None,
                init_timeout=init_timeout, stall_timeout=stall_timeout,
            )
            command = shell.watched(program, {**contract.rank_env(spec), **(env or {})}, remote_dir, grace_period)
            workers.append(Worker(rank, ssh_argv(host, command, ssh=ssh, ssh_options=ssh_options, ssh_config=ssh_config),
                                  label=f"rank {rank} {host}", hold_stdin=True, program=program))
    return workers


def run_ssh(
    program: Sequence[str],
    hosts: Sequence[str],
    *,
    processes_per_host: int = 1,
    coordinator_host: str | None = None,
    coordinator_port: int | None = None,
    options: SupervisorOptions | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    **kwargs,
) -> LaunchResult:
    """Run ``program`` on ``hosts`` through ssh, supervised; see the module docstring.

    Args:
        program: the command, as an argument list.
        hosts: ssh destinations; rank 0 (the coordinator) runs on the first.
        processes_per_host: ranks per host.
        coordinator_host: the address the other hosts reach the first one at (default: its name).
        coordinator_port: force the port of the first start (start ``k`` uses ``port + k``);
            default: a new port per start.
        options: supervisor options (timeout, restarts, logs).
        out, err: prefixed rank output; the launcher's messages.
        **kwargs: the rest of :func:`ssh_workers` (devices, GPUs, time-outs, ``env``,
            ``remote_dir``, ``ssh``, ``ssh_options``, ``ssh_config``).

    Returns:
        The :class:`LaunchResult`; its ``exit_code`` is the failing rank's, or 0.
    """
    if not program:
        raise errors.DistributedError("ssh: no program to run.")
    hosts = check_hosts(hosts)
    if processes_per_host < 1:
        raise errors.DistributedError(f"ssh: processes_per_host must be >= 1, got {processes_per_host}.")
    if kwargs.get("gpu_ids"):
        split_gpu_ids(kwargs["gpu_ids"], processes_per_host)
    options = options or SupervisorOptions()

    def make_workers(attempt: int) -> list[Worker]:
        port = coordinator_port + attempt if coordinator_port is not None else pick_port()
        return ssh_workers(program, hosts, port=port, run_id=options.run_id, attempt=attempt,
                           processes_per_host=processes_per_host, coordinator_host=coordinator_host,
                           grace_period=options.grace_period, **kwargs)

    return supervise(make_workers, options, out=out, err=err, retry_for_free=port_was_taken(coordinator_port))


__all__ = [
    "DEFAULT_SSH_OPTIONS", "check_hosts", "host_address", "parse_hostfile", "read_hostfile", "run_ssh", "ssh_argv",
    "ssh_workers",
]
