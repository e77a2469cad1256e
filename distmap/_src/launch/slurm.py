"""The policy of ``launch/slurm.py``: an sbatch script whose batch step is the agent.

The script does not supervise anything in bash: it makes the run folder, sends its own
output there and ``exec`` s the agent (``launch/agent.py``) with the job's plan, so the
agent is the job's batch step, on the first node. Inside the allocation the agent

* reads the allocation (:func:`allocation`: ``SLURM_JOB_ID``, the node list through
  ``scontrol show hostnames``, ``SLURM_RESTART_COUNT``) and places the ranks: ``tasks_per_node``
  on each node, rank 0 on the batch host, which serves the coordinator;
* picks the coordinator's port there, free at that moment (or ``--coordinator_port`` plus the
  attempt), so two jobs sharing a node never meet, whatever their ids;
* starts every rank as a job step of its own, ``srun --nodes=1 --ntasks=1 --nodelist=NODE
  --overlap``, running the program beside a watchdog tied to the step's stdin
  (``shell.watched``), exactly as ``launch/ssh.py`` runs a rank over ssh: each rank gets the
  ``DISTMAP_*`` contract (and ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` of the whole
  job, for programs that use JAX's own SLURM detection), its share of its node's GPUs
  (``DISTMAP_LOCAL_DEVICE_IDS``: task ``l`` of ``g`` GPUs per task gets ``l*g .. l*g+g-1``);
* supervises them as every launcher does (``supervisor.supervise``): output per rank in
  ``RUN_DIR/rank_<r>.job<JOBID>[.attempt<k>].log``, fail fast with the first failing rank's
  exit status, ``--max_restarts`` after failures only, with a backoff.

**Stops.** ``#SBATCH --signal=B:TERM@<grace + 30>`` sends the agent SIGTERM before the time
limit; so does ``scancel --batch --signal=TERM JOBID``: every rank then gets SIGTERM and
``--grace_period`` seconds, then SIGKILL, and nothing is restarted. ``scancel
--signal=TERM JOBID`` signals the ranks' steps instead: a rank that ends by it (exit 143)
stops the run the same way. Plain ``scancel JOBID`` and a requeue are SLURM's own hard stop:
every step, the agent's ``srun`` clients included, gets SIGTERM, and ``srun`` ends its step at
once. A requeued job starts the agent again in the same run folder: the attempt number goes on
from the folder's count (``RUN_DIR/attempts``), and no log of an earlier start is overwritten
(the batch log is appended to, the rank logs carry the job id and attempt).

The program's arguments are written into the plan (JSON, one line, in a quoted
here-document): nothing in them is expanded, not even ``%t``. Arguments that are not UTF-8
(Python holds their bytes as surrogate escapes) travel as those escapes and arrive as the
same bytes; ``#SBATCH`` values are checked (:func:`check_directive`) before anything is written.

Example:
    >>> job = SlurmJob(program=["python", "train.py"], run_id="r1", run_dir="/shared/runs/r1",
    ...                workdir="/shared/code", nodes=2, gpus_per_node=8)
    >>> "#SBATCH --gpus-per-node=8" in render_sbatch(job, SupervisorOptions(run_id="r1"))
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from distmap import errors
from distmap._src.launch import agent as agent_lib
from distmap._src.launch import contract, shell
from distmap._src.launch.local import port_was_taken
from distmap._src.launch.ports import free_port
from distmap._src.launch.supervisor import LaunchResult, SupervisorOptions, Worker, supervise

#: Characters allowed in an ``#SBATCH`` directive's value (sbatch splits those lines itself).
_DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:/=+@%-]*\Z")
#: ``launch/agent.py`` of this checkout, which the script runs.
AGENT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                     "launch", "agent.py")
_PLAN_END = "DISTMAP_PLAN"


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """One SLURM job: what to run, where, on how much.

    Attributes:
        program: the command every task runs, as an argument list.
        run_id: the run's id (``DISTMAP_RUN_ID``, the run folder's name).
        run_dir: the run folder, absolute, on a file system every node sees.
        workdir: where the tasks start (``#SBATCH --chdir``), absolute.
        nodes: nodes to allocate.
        tasks_per_node: processes per node (one per GPU, or one per node driving all its GPUs).
        gpus_per_node: GPUs per node (``#SBATCH --gpus-per-node``), split evenly among its tasks.
        cpus_per_task: ``#SBATCH --cpus-per-task``.
        time: ``#SBATCH --time`` in SLURM's format (``"1:00:00"``); ``None``: the partition's default.
        partition: ``#SBATCH --partition``.
        account: ``#SBATCH --account``.
        job_name: ``#SBATCH --job-name``.
        coordinator_port: force the coordinator's port (attempt ``k`` uses ``port + k``);
            ``None``: a port free on the batch host when each attempt starts.
        coordinator_bind_host: the address rank 0's coordinator binds (JAX default: all).
        devices_per_process: simulated CPU devices per task (a CPU run); ``None``: GPUs.
        init_timeout: seconds every task waits for all to join (``DISTMAP_INIT_TIMEOUT``).
        stall_timeout: seconds of no progress before the progress watch fails the run (0: off).
        env: more variables for every task.
        sbatch_options: more ``#SBATCH`` options, e.g. ``("--exclusive", "--mem=0")``.
    """

    program: Sequence[str]
    run_id: str
    run_dir: str
    workdir: str
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    job_name: str = "distmap"
    coordinator_port: int | None = None
    coordinator_bind_host: str | None = None
    devices_per_process: int | None = None
    init_timeout: float | None = None
    stall_timeout: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sbatch_options: Sequence[str] = ()

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus_per_task(self) -> int:
        return self.gpus_per_node // self.tasks_per_node


def slurm_time(seconds: float) -> str:
    """``--timeout`` seconds as SLURM's ``H:MM:SS``, rounded up to a whole second.

    Example:
        >>> slurm_time(5400), slurm_time(59.5)
        ('1:30:00', '0:01:00')
    """
    s = int(math.ceil(seconds))
    s += 60 - s % 60 if s % 60 else 0  # SLURM counts minutes
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _check(job: SlurmJob) -> None:
    if not job.program:
        raise errors.DistributedError("slurm: no program to run.")
    for name in ("nodes", "tasks_per_node"):
        if getattr(job, name) < 1:
            raise errors.DistributedError(f"slurm: --{name} must be >= 1, got {getattr(job, name)}.")
    if job.gpus_per_node < 0 or job.gpus_per_node % job.tasks_per_node:
        raise errors.DistributedError(
            f"slurm: --gpus_per_node={job.gpus_per_node} does not split evenly among --tasks_per_node="
            f"{job.tasks_per_node} tasks; give each task the same number of GPUs."
        )
    if job.gpus_per_node and job.devices_per_process:
        raise errors.DistributedError(
            "slurm: --devices_per_process (a CPU run) and --gpus_per_node exclude each other."
        )
    for name in ("run_dir", "workdir"):
        if not os.path.isabs(getattr(job, name)):
            raise errors.DistributedError(f"slurm: {name} must be an absolute path, got {getattr(job, name)!r}.")


def check_directive(text: str, source: str = "#SBATCH") -> str:
    """``text`` if it can follow ``#SBATCH`` as one word, else ``ValueError`` naming ``source``."""
    if not _DIRECTIVE_SAFE.match(text):
        raise ValueError(
            f"{source}={text!r} cannot be written into '#SBATCH' lines: sbatch reads them itself, so they may use "
            "only letters, digits and _ . , : / = + @ % - (no spaces, quotes or newlines)."
        )
    return text


def _directive(option: str, value: str | None = None) -> str:
    text = option if value is None else f"{option}={value}"
    if not text.startswith("--"):
        raise errors.DistributedError(f"slurm: sbatch option {text!r} must start with '--'.")
    try:
        check_directive(option, "an sbatch option") if value is None else check_directive(value, option)
        return f"#SBATCH {check_directive(text)}"
    except ValueError as e:
        raise errors.DistributedError(f"slurm: {e}") from None


def render_sbatch(job: SlurmJob, options: SupervisorOptions, *, python: str = sys.executable,
                  agent: str = AGENT) -> str:
    """The sbatch script for ``job``: directives, then the agent with the plan (see the module docstring)."""
    _check(job)
    grace = int(math.ceil(options.grace_period))
    lines = [
        "#!/bin/bash",
        f"# distmap SLURM job, run {job.run_id}, written by launch/slurm.py. Submit again with: sbatch <this file>",
        _directive("--job-name", job.job_name),
        _directive("--nodes", str(job.nodes)),
        _directive("--ntasks-per-node", str(job.tasks_per_node)),
    ]
    if job.gpus_per_node:
        lines.append(_directive("--gpus-per-node", str(job.gpus_per_node)))
    if job.cpus_per_task:
        lines.append(_directive("--cpus-per-task", str(job.cpus_per_task)))
    if job.time:
        lines.append(_directive("--time", job.time))
    if job.partition:
        lines.append(_directive("--partition", job.partition))
    if job.account:
        lines.append(_directive("--account", job.account))
    lines += [
        _directive("--output", "/dev/null"),  # the script sends its output to the run folder, which it makes
        _directive("--signal", f"B:TERM@{grace + 30}"),  # the agent stops the ranks gracefully before the limit
        _directive("--chdir", job.workdir),
        *(_directive(o) for o in job.sbatch_options),
        "",
        "# The agent (launch/agent.py) supervises the tasks inside this allocation: one job step per task, fail",
        f"# fast, SIGTERM and {options.grace_period:g} s (--grace_period) for every task when the job is stopped, "
        f"--max_restarts={options.max_restarts} after failures only.",
        f"run_dir={shell.quote(job.run_dir)}",
        'mkdir -p "$run_dir" || exit 1',
        "# Appended to, never truncated: a requeued job keeps the lines of its earlier starts.",
        'exec >>"$run_dir/batch.job${SLURM_JOB_ID:-none}.log" 2>&1',
        'echo "distmap: job ${SLURM_JOB_ID:-?} start $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $(hostname): the agent '
        'runs the plan"',
        "# exec: the agent is the job's batch step, so SLURM's signals to it (--signal, scancel --batch) reach it.",
        f"exec {shell.quote(python)} {shell.quote(agent)} --plan=- <<'{_PLAN_END}'",
        agent_lib.plan_text("slurm", job, options),
        _PLAN_END,
        "",
    ]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """What the agent learns of the allocation it runs in.

    Attributes:
        job_id: ``SLURM_JOB_ID``.
        nodes: the allocation's node names, the batch host (this one) first.
        restart_count: ``SLURM_RESTART_COUNT`` (requeues so far).
    """

    job_id: str
    nodes: tuple[str, ...]
    restart_count: int = 0


def allocation(env: Mapping[str, str] | None = None, *, scontrol: str = "scontrol") -> Allocation:
    """The allocation this process runs in, read from SLURM's variables (the node list expanded by ``scontrol``)."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID", "")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    if not job_id or not nodelist:
        raise errors.DistributedError(
            "slurm agent: SLURM_JOB_ID and SLURM_JOB_NODELIST are not set: run it as the batch script of a SLURM job "
            "(launch/slurm.py writes and submits one).")
    try:
        proc = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise errors.DistributedError(f"slurm agent: could not expand the node list {nodelist!r}: {e}") from e
    nodes = [n for n in proc.stdout.split() if n]
    if proc.returncode != 0 or not nodes:
        raise errors.DistributedError(f"slurm agent: scontrol show hostnames {nodelist} failed: {proc.stderr.strip()}")
    here = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    if here in nodes:
        nodes.remove(here)
        nodes.insert(0, here)
    restarts = env.get("SLURM_RESTART_COUNT", "0").strip()
    return Allocation(job_id, tuple(nodes), int(restarts) if restarts.isdigit() else 0)


def srun_argv(node: str, command: str, *, name: str, cpus_per_task: int | None = None) -> list[str]:
    """One rank as a job step of its own on ``node``, its stdin held by the agent (see ``shell.watched``).

    Example:
        >>> srun_argv("n1", "true", name="distmap.rank3")[:6]
        ['srun', '--nodes=1', '--ntasks=1', '--nodelist=n1', '--overlap', '--input=all']
    """
    return ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--overlap", "--input=all", "--unbuffered",
            "--kill-on-bad-exit=0", f"--job-name={name}", *([f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []),
            "sh", "-c", command]


def slurm_workers(job: SlurmJob, alloc: Allocation, *, attempt: int, port: int, grace: float = 30.0) -> list[Worker]:
    """The ranks of one attempt: ``tasks_per_node`` per node, rank 0 on the batch host."""
    if len(alloc.nodes) < job.nodes:
        raise errors.DistributedError(f"slurm agent: the job has {len(alloc.nodes)} node(s), the plan {job.nodes}.")
    nodes = alloc.nodes[: job.nodes]
    coordinator = f"{nodes[0]}:{port}"
    g = job.gpus_per_task
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISTMAP_") and not k.startswith("JAX_COORDINATOR")}
    workers = []
    for rank in range(job.num_tasks):
        node, local = nodes[rank // job.tasks_per_node], rank % job.tasks_per_node
        spec = contract.RankSpec(
            coordinator=coordinator, num_processes=job.num_tasks, process_id=rank, run_id=job.run_id, attempt=attempt,
            cpu_devices=job.devices_per_process, local_device_ids=list(range(local * g, local * g + g)) if g else None,
            init_timeout=job.init_timeout, stall_timeout=job.stall_timeout, run_dir=job.run_dir,
            coordinator_bind=f"{job.coordinator_bind_host}:{port}" if job.coordinator_bind_host else None,
        )
        env = contract.rank_env(spec)
        # For programs that use JAX's own SLURM detection: the whole job's view, not the one-task step's.
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(job.num_tasks), SLURM_LOCALID=str(local),
                   SLURM_NODEID=str(rank // job.tasks_per_node), SLURM_STEP_NODELIST=nodes[0],
                   JAX_COORDINATOR_PORT=str(port))
        env.update(job.env)
        command = shell.watched(job.program, env, job.workdir, grace)
        workers.append(Worker(rank, srun_argv(node, command, name=f"{job.job_name}.rank{rank}",
                                              cpus_per_task=job.cpus_per_task),
                              env=base, label=f"rank {rank} {node}", hold_stdin=True, program=job.program))
    return workers


def run_in_allocation(job: SlurmJob, options: SupervisorOptions, *, env: Mapping[str, str] | None = None) -> LaunchResult:
    """The agent's side of a SLURM job: place the ranks in this allocation and supervise them."""
    alloc = allocation(env)
    options = dataclasses.replace(options, log_dir=os.path.dirname(job.run_dir), run_id=os.path.basename(job.run_dir),
                                  log_tag=f"job{alloc.job_id}")

    def make_workers(attempt: int) -> list[Worker]:
        port = job.coordinator_port + attempt if job.coordinator_port is not None else free_port("")
        return slurm_workers(job, alloc, attempt=attempt, port=port, grace=options.grace_period)

    return supervise(make_workers, options, retry_for_free=port_was_taken(job.coordinator_port))


def parse_job_id(output: str) -> str:
    """The job id in ``sbatch --parsable``'s output (``"123"`` or ``"123;cluster"``).

    Example:
        >>> parse_job_id("4242;gpu-cluster\\n")
        '4242'
    """
    first = output.strip().splitlines()[-1] if output.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise errors.DistributedError(f"sbatch --parsable printed {output!r}, not a job id.")
    return job_id


def script_bytes(job: SlurmJob, options: SupervisorOptions) -> bytes:
    """The script as the bytes to write (UTF-8; a non-UTF-8 argument travels as JSON escapes)."""
    return render_sbatch(job, options).encode("utf-8", "surrogateescape")


def write_script(job: SlurmJob, options: SupervisorOptions, name: str = "job.sbatch") -> str:
    """Write ``job``'s script into its run folder (made if missing); returns the path.

    The script is rendered (and so checked) before the folder or the file is made.
    """
    data = script_bytes(job, options)
    os.makedirs(job.run_dir, exist_ok=True)
    path = os.path.join(job.run_dir, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    return path


def submit(job: SlurmJob, options: SupervisorOptions, *, sbatch: str = "sbatch") -> tuple[str, str]:
    """Write the script into the run folder and submit it; returns ``(job_id, script_path)``.

    Raises:
        DistributedError: ``sbatch`` is missing or refused the job (its message is quoted).
    """
    path = write_script(job, options)
    argv = [sbatch, "--parsable", path]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise errors.DistributedError(
            f"could not run {shell.join(argv)}: {e.strerror or e}. Is this a SLURM login node?"
        ) from e
    if proc.returncode != 0:
        raise errors.DistributedError(
            f"{shell.join(argv)} failed with exit status {proc.returncode}: "
            + (proc.stderr.strip() or proc.stdout.strip())
        )
    job_id = parse_job_id(proc.stdout)
    with open(os.path.join(job.run_dir, "job_id"), "w") as f:
        f.write(job_id + "\n")
    return job_id, path


__all__ = [
    "AGENT", "Allocation", "SlurmJob", "allocation", "check_directive", "parse_job_id", "render_sbatch",
    "run_in_allocation", "script_bytes", "slurm_time", "slurm_workers", "srun_argv", "submit", "write_script",
]
