"""The policy of ``launch/local.py``: N ranks on this machine, coordinator on 127.0.0.1.

Each attempt gets a free loopback port, and each rank an environment from the contract
(:func:`~distmap._src.launch.contract.child_env`): CPU runs get ``JAX_PLATFORMS=cpu`` and
their device count, GPU runs their share of ``gpu_ids`` through ``CUDA_VISIBLE_DEVICES``.
The supervisor does the rest.

Example:
    >>> import sys, tempfile
    >>> from distmap._src.launch.supervisor import SupervisorOptions
    >>> prog = [sys.executable, "-c", "import os; print(os.environ['DISTMAP_PROCESS_ID'])"]
    >>> run_local(prog, num_processes=2, devices_per_process=1,
    ...           options=SupervisorOptions(log_dir=tempfile.mkdtemp(), announce=False)).exit_code  # doctest: +SKIP
    [rank 0] 0
    [rank 1] 1
    0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from distmap import errors
from distmap._src.launch import contract, shell
from distmap._src.launch.ports import LOOPBACK, free_port, port_in_use
from distmap._src.launch.supervisor import AttemptResult, LaunchResult, SupervisorOptions, Worker, supervise


def check_gpu_id(text: str) -> int:
    """One ``--gpu_ids`` item as a number, or ``ValueError`` naming it."""
    if not text.strip().isdigit():
        raise ValueError(f"--gpu_ids: {text!r} is not a GPU id (a number such as 0).")
    return int(text)


def split_gpu_ids(gpu_ids: Sequence[int], num_processes: int) -> list[list[int]]:
    """Give each rank an equal, contiguous share of ``gpu_ids``.

    Example:
        >>> split_gpu_ids([0, 1, 2, 3], 2)
        [[0, 1], [2, 3]]
    """
    ids = [int(i) for i in gpu_ids]
    if len(set(ids)) != len(ids):
        raise errors.DistributedError(f"--gpu_ids {ids} repeats an id.")
    if not ids or len(ids) % num_processes:
        raise errors.DistributedError(
            f"--gpu_ids has {len(ids)} id(s), which do not split evenly among {num_processes} processes."
        )
    per = len(ids) // num_processes
    return [ids[r * per : (r + 1) * per] for r in range(num_processes)]


def local_workers(
    program: Sequence[str],
    *,
    num_processes: int,
    port: int,
    run_id: str,
    attempt: int = 0,
    devices_per_process: int | None = 1,
    gpu_ids: Sequence[int] | None = None,
    init_timeout: float | None = None,
    stall_timeout: float | None = None,
    run_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> list[Worker]:
    """The ranks of one attempt: the same argument list, each with its own environment."""
    shares = split_gpu_ids(gpu_ids, num_processes) if gpu_ids else None
    workers = []
    for rank in range(num_processes):
        spec = contract.RankSpec(
            coordinator=f"{LOOPBACK}:{port}",
            num_processes=num_processes,
            process_id=rank,
            run_id=run_id,
            attempt=attempt,
            cpu_devices=None if shares else devices_per_process,
            visible_devices=shares[rank] if shares else None,
            local_device_ids=list(range(len(shares[rank]))) if shares else None,
            init_timeout=init_timeout,
            stall_timeout=stall_timeout,
            run_dir=run_dir,
        )
        workers.append(Worker(rank, tuple(program), {**contract.child_env(spec, base_env), **(env or {})}))
    return workers


def describe(workers: Sequence[Worker], base_env: Mapping[str, str] | None = None) -> str:
    """Each rank's command as a shell line with the variables it adds to ``base_env`` (``--dry_run``).

    Example:
        >>> ws = local_workers(["python", "t.py"], num_processes=2, port=1234, run_id="r", base_env={})
        >>> lines = describe(ws, {}).splitlines()
        >>> lines[0], lines[1].split()[:3], lines[1].split()[-2:]
        ('# rank 0', ['env', 'DISTMAP_COORDINATOR=127.0.0.1:1234', 'DISTMAP_NUM_PROCESSES=2'], ['python', 't.py'])
    """
    base = os.environ if base_env is None else base_env
    out = []
    for w in workers:
        added = {k: v for k, v in (w.env or {}).items() if base.get(k) != v}
        out += [f"# {w.name}", shell.join([*shell.env_prefix(added), *w.argv])]
    return "\n".join(out) + "\n"


def run_local(
    program: Sequence[str],
    *,
    num_processes: int,
    devices_per_process: int | None = 1,
    gpu_ids: Sequence[int] | None = None,
    coordinator_port: int | None = None,
    init_timeout: float | None = None,
    stall_timeout: float | None = None,
    options: SupervisorOptions | None = None,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> LaunchResult:
    """Run ``program`` as ``num_processes`` ranks on this machine, supervised.

    Args:
        program: the command, as an argument list (``["python", "train.py", "--lr=0.1"]``).
        num_processes: ranks to start.
        devices_per_process: simulated CPU devices per rank (CPU runs).
        gpu_ids: GPUs to use instead, split evenly among the ranks.
        coordinator_port: force this port (default: a free one per attempt; a forced port that
            is taken fails the launch before anything starts).
        init_timeout: seconds each rank waits for all to join.
        stall_timeout: seconds of no progress before the progress watch fails the run (0: off).
        options: supervisor options (timeout, restarts, logs).
        env: more variables for every rank (``--env``).
        base_env: the environment the ranks inherit (default ``os.environ``).
        out: where prefixed rank output goes; ``err``: the launcher's messages.

    Returns:
        The :class:`LaunchResult`; its ``exit_code`` is what the launcher exits with.
    """
    if not program:
        raise errors.DistributedError("run_local: no program to run.")
    if num_processes < 1:
        raise errors.DistributedError(f"run_local: num_processes must be >= 1, got {num_processes}.")
    if gpu_ids:
        split_gpu_ids(gpu_ids, num_processes)  # fail before anything starts
    if coordinator_port is not None and port_in_use(coordinator_port):
        raise errors.DistributedError(
            f"{contract.PORT_IN_USE_MARKER}: --coordinator_port={coordinator_port} is taken on {LOOPBACK}; "
            "choose another, or leave it unset to pick a free port for each start."
        )
    options = options or SupervisorOptions()

    def make_workers(attempt: int) -> list[Worker]:
        port = coordinator_port if coordinator_port is not None else free_port()
        return local_workers(
            program, num_processes=num_processes, port=port, run_id=options.run_id, attempt=attempt,
            devices_per_process=devices_per_process, gpu_ids=gpu_ids, init_timeout=init_timeout,
            stall_timeout=stall_timeout, run_dir=options.run_dir, env=env, base_env=base_env,
        )

    return supervise(make_workers, options, out=out, err=err, retry_for_free=port_was_taken(coordinator_port))


def port_was_taken(coordinator_port: int | None) -> Callable[[AttemptResult], bool]:
    """For ``supervise(retry_for_free=...)``: rank 0 found the port it was given taken (a free
    port picked by the launcher can be taken before rank 0 binds it), so start again on another."""

    def check(result: AttemptResult) -> bool:
        return coordinator_port is None and result.failed is not None and result.failed.rank == 0 and any(
            contract.PORT_IN_USE_MARKER in line for line in result.tail
        )

    return check


__all__ = [
    "LOOPBACK", "check_gpu_id", "describe", "free_port", "local_workers", "port_in_use", "port_was_taken", "run_local",
    "split_gpu_ids",
]
