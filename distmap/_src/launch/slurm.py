"""The policy of ``launch/slurm.py``: an sbatch script that runs the program under ``srun``.

The script relies on JAX's own SLURM detection: every task calls
``distmap.distributed.initialize()``, finds no ``DISTMAP_COORDINATOR`` and lets
``jax.distributed.initialize()`` read ``SLURM_STEP_NODELIST`` (the coordinator is the first
node), ``SLURM_NTASKS`` and ``SLURM_PROCID``. What JAX's detection gets wrong or leaves
fixed, the script sets:

* **GPU ids per task.** JAX's SLURM detection gives each task the one GPU numbered
  ``SLURM_LOCALID`` (jax-ml/jax#16788), so a task that should drive 8 GPUs drives one. A
  small wrapper that ``srun`` starts for every task sets ``DISTMAP_LOCAL_DEVICE_IDS`` to the
  task's share of its node's GPUs: task ``l`` of ``g`` GPUs per task gets ``l*g .. l*g+g-1``.
* **The coordinator port.** ``JAX_COORDINATOR_PORT`` is derived from ``SLURM_JOB_ID``, the
  requeue count and the attempt, so a retry never meets the port of an earlier try; or
  ``--coordinator_port`` + attempt where a port is forced.
* **Fail fast.** ``srun --kill-on-bad-exit=1`` ends every task when one fails. srun itself
  exits with the *highest* status of any task, often the SIGTERM it sent the healthy ones
  (143), so each task's wrapper records when and with what status its program ended, and the
  script exits with the status of the task that failed first, naming it.
* **Logs.** One file per task through srun's ``%t``, in the run folder:
  ``RUN_DIR/task_<t>.log`` (``task_<t>.restart<k>.log`` for restart ``k``), and the batch
  script's own output in ``RUN_DIR/sbatch-<jobid>.log``.
* **Restarts.** ``--max_restarts`` runs ``srun`` again inside the same allocation, with a
  new port and ``DISTMAP_ATTEMPT`` counting up.

The program's arguments are written into the script with ``shlex.quote`` and passed on by
``srun`` as ``"$@"``: nothing in them is expanded, not even ``%t``. Arguments that are not
UTF-8 (Python holds their bytes as surrogate escapes) are written as those same bytes, so
they arrive unchanged too; ``#SBATCH`` values are checked (:func:`check_directive`) before
anything is written.

Example:
    >>> job = SlurmJob(program=["python", "train.py"], run_id="r1", run_dir="/shared/runs/r1",
    ...                workdir="/shared/code", nodes=2, gpus_per_node=8)
    >>> "#SBATCH --gpus-per-node=8" in render_sbatch(job)
    True
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
from collections.abc import Mapping, Sequence

from distmap import errors
from distmap._src.launch import contract, shell

#: Characters allowed in an ``#SBATCH`` directive's value (sbatch splits those lines itself).
_DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:/=+@%-]*\Z")

# Run by srun once per task (the program follows as "$@"). Constant text: no user data. It
# records "<end time in ns> <status>" of a program that fails, so that the script can name the
# task that failed first (srun's own status is the highest of all, a killed task's included).
TASK_WRAPPER = """\
g="${DISTMAP_GPUS_PER_TASK:-0}"
if [ "$g" -gt 0 ]; then
  first=$(( SLURM_LOCALID * g )); ids="$first"; i=1
  while [ "$i" -lt "$g" ]; do ids="$ids,$(( first + i ))"; i=$(( i + 1 )); done
  export DISTMAP_LOCAL_DEVICE_IDS="$ids"
fi
# The program gets SLURM's signals itself (a time limit, scancel, preemption) and may finish on them;
# this shell only waits for it (trapped signals are reset to their defaults in the program).
trap : TERM INT HUP USR1 USR2
"$@"
rc=$?
if [ "$rc" -ne 0 ] && [ -n "${DISTMAP_STATUS_DIR:-}" ]; then
  echo "$(date +%s%N) $rc" > "$DISTMAP_STATUS_DIR/task_${SLURM_PROCID:-0}"
fi
exit "$rc"
"""


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
            ``None``: derived from the job id, requeue count and attempt.
        coordinator_bind_host: the address rank 0's coordinator binds (JAX default: all).
        devices_per_process: simulated CPU devices per task (a CPU run); ``None``: GPUs.
        init_timeout: seconds every task waits for all to join (``DISTMAP_INIT_TIMEOUT``).
        stall_timeout: seconds of no progress before the progress watch fails the run (0: off).
        max_restarts: times ``srun`` is run again inside the job after a failure.
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
    max_restarts: int = 0
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


def _pattern_path(path: str) -> str:
    """A path for srun/sbatch ``--output``, where ``%`` starts a pattern: keep ``%`` literal."""
    return path.replace("%", "%%")


def render_sbatch(job: SlurmJob) -> str:
    """The sbatch script for ``job`` (see the module docstring for what it does)."""
    _check(job)
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
    lines.append(_directive("--output", _pattern_path(job.run_dir) + "/sbatch-%j.log"))
    lines.append(_directive("--chdir", job.workdir))
    lines += [_directive(o) for o in job.sbatch_options]

    spec = contract.RankSpec(
        coordinator=None, num_processes=None, process_id=None, run_id=job.run_id,
        cpu_devices=job.devices_per_process, init_timeout=job.init_timeout, stall_timeout=job.stall_timeout,
        run_dir=job.run_dir,
    )
    env = contract.rank_env(spec)
    env.pop(contract.ATTEMPT)  # set per attempt below
    env.update(job.env)
    ours = set(env) | {contract.ATTEMPT}
    stale = [v for v in contract.ENV_VARS if v not in ours]
    stale += ["JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_BIND_ADDRESS"]
    lines += [
        "",
        "# The program finds its place through JAX's SLURM detection (first node = coordinator,",
        "# SLURM_NTASKS, SLURM_PROCID); nothing from an enclosing launch may override it.",
        "unset " + " ".join(v for v in stale if v not in job.env),
        *shell.exports(env),
        f"export DISTMAP_GPUS_PER_TASK={job.gpus_per_task}  # the task wrapper turns it into DISTMAP_LOCAL_DEVICE_IDS",
        f"run_dir={shell.quote(job.run_dir)}",
        f"log_pattern={shell.quote(_pattern_path(job.run_dir))}/task_%t",
        "# srun runs this once per task, the program following as \"$@\":",
        f"task_wrapper={shell.quote(TASK_WRAPPER)}",
        "",
    ]
    if job.coordinator_port is None:
        lines += [
            "# A coordinator port per job, requeue and attempt, never a fixed one: a retry must not meet",
            "# the port of an earlier try that is still closing.",
            "distmap_port() {",
            "  echo $(( 20000 + (SLURM_JOB_ID * 16 + (${SLURM_RESTART_COUNT:-0} * 4 + $1) % 16) % 10000 ))",
            "}",
        ]
    else:
        lines += ["# The forced --coordinator_port, plus the attempt.",
                  "distmap_port() {", f"  echo $(( {int(job.coordinator_port)} + $1 ))", "}"]
    srun = shell.join([
        "srun", "--kill-on-bad-exit=1", f"--nodes={job.nodes}", f"--ntasks={job.num_tasks}",
        f"--ntasks-per-node={job.tasks_per_node}",
    ])
    task = 'bash -c "$task_wrapper" ' + shell.join(["distmap-task", *job.program])
    bind = (
        [f'export JAX_COORDINATOR_BIND_ADDRESS={shell.quote(job.coordinator_bind_host)}:"$port"']
        if job.coordinator_bind_host else []
    )
    body = [
        'export DISTMAP_ATTEMPT="$attempt"',
        'port=$(distmap_port "$attempt")',
        'export JAX_COORDINATOR_PORT="$port"',
        *bind,
        'suffix=""; [ "$attempt" -gt 0 ] && suffix=".restart$attempt"',
        'export DISTMAP_STATUS_DIR="$run_dir/status$suffix"; rm -rf "$DISTMAP_STATUS_DIR"; mkdir -p "$DISTMAP_STATUS_DIR"',
        f'echo "distmap: starting {job.num_tasks} task(s) on {job.nodes} node(s), attempt $((attempt + 1)), '
        'coordinator port $port; task logs: $run_dir/task_<t>$suffix.log"',
        f'{srun} --output="$log_pattern$suffix.log" \\',
        f"  {task}",
        "status=$?",
        'if [ "$status" -eq 0 ]; then echo "distmap: all tasks exited with code 0."; exit 0; fi',
        "# The task that failed first, and its status (srun's is the highest of all tasks').",
        'first=$(cd "$DISTMAP_STATUS_DIR" && for f in task_*; do [ -f "$f" ] && echo "$(cat "$f") ${f#task_}"; done '
        '| sort -n | head -n 1)',
        'srun_status=$status; task=unknown',
        'if [ -n "$first" ]; then task=${first##* }; first=${first#* }; status=${first%% *}; fi',
    ]
    failed = (
        'echo "distmap: task $task failed first, with exit status $status (srun exited with $srun_status; '
        'logs: $run_dir/task_*$suffix.log)." >&2'
    )
    lines += ["", "attempt=0"]
    if job.max_restarts <= 0:
        lines += [*body, failed, 'exit "$status"']
    else:
        lines += [
            "while :; do",
            *("  " + b for b in body),
            f'  if [ "$attempt" -ge {int(job.max_restarts)} ]; then',
            "    " + failed,
            '    exit "$status"',
            "  fi",
            f'  echo "distmap: a task failed (status $status); restarting every task ($((attempt + 1)) of '
            f'{int(job.max_restarts)})." >&2',
            "  attempt=$((attempt + 1))",
            "done",
        ]
    lines.append("")
    return "\n".join(lines)


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


def script_bytes(job: SlurmJob) -> bytes:
    """The script as the bytes to write: UTF-8, with any non-UTF-8 argument's own bytes kept."""
    return render_sbatch(job).encode("utf-8", "surrogateescape")


def write_script(job: SlurmJob, name: str = "job.sbatch") -> str:
    """Write ``job``'s script into its run folder (made if missing); returns the path.

    The script is rendered (and so checked) before the folder or the file is made.
    """
    data = script_bytes(job)
    os.makedirs(job.run_dir, exist_ok=True)
    path = os.path.join(job.run_dir, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    return path


def submit(job: SlurmJob, *, sbatch: str = "sbatch") -> tuple[str, str]:
    """Write the script into the run folder and submit it; returns ``(job_id, script_path)``.

    Raises:
        DistributedError: ``sbatch`` is missing or refused the job (its message is quoted).
    """
    path = write_script(job)
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
    "TASK_WRAPPER", "SlurmJob", "check_directive", "parse_job_id", "render_sbatch", "script_bytes", "slurm_time",
    "submit", "write_script",
]
