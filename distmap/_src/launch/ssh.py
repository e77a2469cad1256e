"""The policy of ``launch/ssh.py``: ranks on a list of hosts, each started through ``ssh``.

Every rank is one ``ssh HOST COMMAND`` child of the local supervisor, so the SSH launcher
has exactly the supervision of ``launch/local.py``: prefixed output, per-rank logs, fail
fast, exit codes, ``--timeout``, ``--max_restarts`` with a new port per start. What ssh
adds is a remote side the launcher does not own: killing an ``ssh`` client does not kill the
program it started. So each remote program runs under ``setsid`` (its own process group)
with the group's id in a pid file, and when a rank fails or the launch is stopped, the
launcher connects to every host again and ends those process groups.

The remote ``COMMAND`` is one string for the remote login shell (POSIX ``sh``), built with
``shlex`` from argument lists: ``cd`` to the working folder, the ``DISTMAP_*`` variables of
the contract (coordinator: the first host, at a port chosen per start), then the program.

Example:
    >>> ws = ssh_workers(["python", "t.py", "a b"], ["h1", "me@h2"], port=23456, run_id="r1")
    >>> [w.argv[-2] for w in ws], ws[1].env
    (['h1', 'me@h2'], None)
    >>> "DISTMAP_COORDINATOR=h1:23456" in ws[1].argv[-1] and "DISTMAP_PROCESS_ID=1" in ws[1].argv[-1]
    True
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO

from distmap import errors
from distmap._src.launch import contract, shell
from distmap._src.launch.local import split_gpu_ids
from distmap._src.launch.supervisor import (
    AttemptResult, LaunchResult, SupervisorOptions, Worker, new_run_id, supervise,
)

#: ssh options used unless others are given: never prompt, and notice a dead host in about a minute.
DEFAULT_SSH_OPTIONS = ("BatchMode=yes", "ServerAliveInterval=15")


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


def pid_file(run_id: str, rank: int) -> str:
    """The remote pid file of ``rank`` (a shell word)."""
    return '"${TMPDIR:-/tmp}"/' + shell.quote(f"distmap-{shell.safe_name(run_id)}-rank{rank}.pid")


def remote_command(program: Sequence[str], env: Mapping[str, str], pid: str, workdir: str | None) -> str:
    """The command string for the remote shell: ``cd``, then the program detached, its pid file removed after."""
    cd = f"cd -- {shell.quote(workdir)} && " if workdir else ""
    return f"{cd}{{ {shell.detached(program, pid, env)}; rc=$?; rm -f {pid}; exit $rc; }}"


def ssh_argv(
    host: str, command: str, *, ssh: str = "ssh", ssh_options: Sequence[str] = DEFAULT_SSH_OPTIONS,
    ssh_config: str | None = None,
) -> list[str]:
    """``ssh [-F CONFIG] -o OPT ... HOST COMMAND``.

    Example:
        >>> ssh_argv("node1", "true", ssh_options=["BatchMode=yes"], ssh_config="/etc/cluster/ssh_config")
        ['ssh', '-F', '/etc/cluster/ssh_config', '-o', 'BatchMode=yes', 'node1', 'true']
    """
    opts = [a for o in ssh_options for a in ("-o", o)]
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
    env: Mapping[str, str] | None = None,
    remote_dir: str | None = None,
    ssh: str = "ssh",
    ssh_options: Sequence[str] = DEFAULT_SSH_OPTIONS,
    ssh_config: str | None = None,
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
                init_timeout=init_timeout,
            )
            rank_env = contract.rank_env(spec)
            rank_env.update(env or {})
            command = remote_command(program, rank_env, pid_file(run_id, rank), remote_dir)
            workers.append(Worker(rank, ssh_argv(host, command, ssh=ssh, ssh_options=ssh_options, ssh_config=ssh_config),
                                  label=f"rank {rank} {host}"))
    return workers


def cleanup_argvs(hosts: Sequence[str], run_id: str, processes_per_host: int, grace_period: float, *,
                  ssh: str = "ssh", ssh_options: Sequence[str] = DEFAULT_SSH_OPTIONS,
                  ssh_config: str | None = None) -> list[list[str]]:
    """One ``ssh`` per host that ends the process groups of that host's ranks."""
    out = []
    for h, host in enumerate(hosts):
        ranks = range(h * processes_per_host, (h + 1) * processes_per_host)
        script = "; ".join(shell.kill_group_script(pid_file(run_id, r), grace_period) for r in ranks)
        out.append(ssh_argv(host, script, ssh=ssh, ssh_options=ssh_options, ssh_config=ssh_config))
    return out


def _cleanup(argvs: list[list[str]], timeout: float, err: IO[str]) -> None:
    def one(argv: list[str]) -> None:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                                  start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            err.write(f"distmap ssh: clean-up on {argv[-2]} did not finish: {e}\n")
            return
        if proc.returncode != 0:
            err.write(f"distmap ssh: clean-up on {argv[-2]} exited with {proc.returncode}: {proc.stderr.strip()}\n")

    threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in argvs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)


def run_ssh(
    program: Sequence[str],
    hosts: Sequence[str],
    *,
    processes_per_host: int = 1,
    coordinator_host: str | None = None,
    coordinator_port: int | None = None,
    devices_per_process: int | None = None,
    gpu_ids: Sequence[int] | None = None,
    init_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    remote_dir: str | None = None,
    ssh: str = "ssh",
    ssh_options: Sequence[str] = DEFAULT_SSH_OPTIONS,
    ssh_config: str | None = None,
    options: SupervisorOptions | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> LaunchResult:
    """Run ``program`` on ``hosts`` through ssh, supervised, cleaning up remotely on failure.

    Args:
        program: the command, as an argument list.
        hosts: ssh destinations; rank 0 (the coordinator) runs on the first.
        processes_per_host: ranks per host.
        coordinator_host: the address the other hosts reach the first one at (default: its name).
        coordinator_port: force the port of the first start (start ``k`` uses ``port + k``);
            default: a new port per start.
        devices_per_process: simulated CPU devices per rank (CPU runs).
        gpu_ids: each host's GPUs, split evenly among its ranks.
        init_timeout: seconds each rank waits for all to join.
        env: more variables for every rank.
        remote_dir: the folder the program starts in on every host (default: the remote home).
        ssh, ssh_options: the ssh command and its ``-o`` options.
        ssh_config: an ssh client config file (``ssh -F FILE``) for every connection.
        options: supervisor options (timeout, restarts, logs).
        out, err: prefixed rank output; the launcher's messages.

    Returns:
        The :class:`LaunchResult`; its ``exit_code`` is the failing rank's, or 0.
    """
    if not program:
        raise errors.DistributedError("ssh: no program to run.")
    hosts = check_hosts(hosts)
    if processes_per_host < 1:
        raise errors.DistributedError(f"ssh: processes_per_host must be >= 1, got {processes_per_host}.")
    if gpu_ids:
        split_gpu_ids(gpu_ids, processes_per_host)
    options = options or SupervisorOptions()
    if options.run_id is None:
        options = dataclasses.replace(options, run_id=new_run_id())
    run_id = options.run_id
    assert run_id is not None
    err = sys.stderr if err is None else err

    def make_workers(attempt: int) -> list[Worker]:
        port = coordinator_port + attempt if coordinator_port is not None else shell.pick_port()
        return ssh_workers(
            program, hosts, port=port, run_id=run_id, attempt=attempt, processes_per_host=processes_per_host,
            coordinator_host=coordinator_host, devices_per_process=devices_per_process, gpu_ids=gpu_ids,
            init_timeout=init_timeout, env=env, remote_dir=remote_dir, ssh=ssh, ssh_options=ssh_options,
            ssh_config=ssh_config,
        )

    def port_was_taken(result: AttemptResult) -> bool:
        return coordinator_port is None and result.failed is not None and result.failed.rank == 0 and any(
            contract.PORT_IN_USE_MARKER in line for line in result.tail
        )

    def clean_up(result: AttemptResult) -> None:
        if result.status == "ok":
            return
        err.write(f"distmap ssh: ending the remote programs on {len(hosts)} host(s).\n")
        err.flush()
        argvs = cleanup_argvs(hosts, run_id, processes_per_host, options.grace_period, ssh=ssh, ssh_options=ssh_options,
                              ssh_config=ssh_config)
        _cleanup(argvs, options.grace_period + 30.0, err)

    return supervise(make_workers, options, out=out, err=err, retry_for_free=port_was_taken, on_attempt_end=clean_up)


__all__ = [
    "DEFAULT_SSH_OPTIONS",
    "check_hosts",
    "cleanup_argvs",
    "host_address",
    "parse_hostfile",
    "pid_file",
    "remote_command",
    "run_ssh",
    "ssh_argv",
    "ssh_workers",
]
