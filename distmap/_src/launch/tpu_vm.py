"""The policy of ``launch/tpu_vm.py``: the ``gcloud compute tpus tpu-vm`` commands of a TPU pod run.

A TPU slice with several hosts ("workers") runs one process per worker, and all of them
must start: a program started on one worker waits for the others until it times out
(jax-ml/jax#22436). The run goes in four steps:

1. **Pack and ship the code** (unless ``--git_revision``): the working tree is packed
   locally (``git ls-files``: tracked and untracked files, not ignored ones) and copied to
   every worker with ``tpu-vm scp --worker=all``; or every worker clones ``--git_repo`` at
   ``--git_revision``. Each run unpacks into its own folder (``distmap_code/RUN_ID``).
2. **Prepare every worker** (``ssh --worker=all``): end the processes that hold the TPU
   devices (a crashed earlier run), remove ``/tmp/libtpu_lockfile`` (otherwise "TPU in
   use"), put the code in place, then run the ``--setup`` commands there
   (``pip install -e . "jax[tpu]"``, say).
3. **Start the program**: one ``gcloud ... ssh NAME --worker=W`` per worker of every slice,
   all at once, each a rank of the local supervisor exactly as ``launch/local.py``
   supervises its ranks: output prefixed ``[NAME worker W]``, one log per worker
   (``NAME.worker_W.log``), fail fast across every worker of every slice, ``--timeout``,
   ``--max_restarts``; the exit status is that of the worker that failed first. How many
   workers a slice has is asked of ``gcloud ... describe`` (or given as
   ``--workers_per_slice``).
4. **Nothing is left on the workers**: each program runs beside a remote watchdog tied to
   its ssh session (``shell.watched``): a failed run kills it at once; a stopped launcher
   (Ctrl-C, SIGTERM), a killed one or a lost connection gives it SIGTERM and
   ``--grace_period`` seconds, then SIGKILL. No pid file is written.
5. **Restarts** (``--max_restarts``, only after a failure, never after a stop) wait a backoff,
   check that every TPU VM is ``READY`` (a VM being repaired or preempted makes the attempt
   fail, so the next waits longer), and ship and prepare the code again, then start.

JAX's TPU detection finds the coordinator (worker 0) and each worker's rank by itself;
the launcher sets ``JAX_COORDINATOR_PORT`` (a new port per run and attempt, instead of
JAX's fixed 8482) and, for several slices, the ``MEGASCALE_*`` variables that join them.
:func:`format_plan` writes the plan the agent runs (``launch/agent.py``) as a bash script that runs as
printed.

Example:
    >>> job = TpuJob(program=["python3", "train.py"], tpu_names=["my-v5e"], zone="us-west4-a",
    ...              run_id="r1", run_dir="/runs/r1", code_source="/code", coordinator_port=23456,
    ...              workers_per_slice=4)
    >>> p = plan(job)
    >>> [step.name for step in p.steps], len(p.run)
    (['ship', 'prepare'], 4)
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO

from distmap import errors
from distmap._src.launch import agent as agent_lib
from distmap._src.launch import contract, shell
from distmap._src.launch.ports import pick_port
from distmap._src.launch.supervisor import (
    AttemptResult, LaunchResult, SupervisorOptions, Worker, run_group, supervise,
)

#: ``launch/agent.py`` of this checkout: the script ``format_plan`` writes runs it.
AGENT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                     "launch", "agent.py")
#: The file libtpu holds while a process uses the TPU; a crashed run may leave it behind.
TPU_LOCKFILE = "/tmp/libtpu_lockfile"
#: Where a plan without a known coordinator address puts it (the run fills it in).
COORDINATOR_PLACEHOLDER = "@DISTMAP_COORDINATOR@"
#: Exit code of an attempt that could not start because a TPU VM was not ``READY`` (``EX_UNAVAILABLE``).
EXIT_NOT_READY = 69

# Processes that hold a TPU device (/dev/accel* on v2-v5p, /dev/vfio/N on v5e and v6e).
_KILL_TPU_HOLDERS = (
    "holders=$( { lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; "
    "sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; } | sort -u); "
    'for p in $holders; do case "$p" in ""|*[!0-9]*|0|1) ;; *) '
    'kill -s KILL "$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null;; esac; done'
)
# Packs the working tree: git's files where it is a checkout, else every file but .git,
# __pycache__ and runs. {src} and {archive} are quoted paths.
_PACK = (
    "(cd {src} && {{ git ls-files -z --cached --others --exclude-standard 2>/dev/null || "
    "find . \\( -name .git -o -name __pycache__ -o -name runs \\) -prune -o -type f -print0; }} "
    "| tar --null --ignore-failed-read -czf {archive} -T -)"
)
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]\Z")
_PROJECT = re.compile(r"[a-z][-a-z0-9:.]{3,62}\Z")


def check_zone(zone: str) -> str:
    """``zone`` if it is a Google Cloud zone name (``us-west4-a``), else ``ValueError``."""
    if not _ZONE.match(zone):
        raise ValueError(f"--zone={zone!r} is not a Google Cloud zone (like us-west4-a).")
    return zone


def check_project(project: str) -> str:
    """``project`` if it is a Google Cloud project id, else ``ValueError``."""
    if not _PROJECT.match(project):
        raise ValueError(f"--project={project!r} is not a Google Cloud project id (lowercase letters, digits, -).")
    return project


def check_remote_dir(path: str) -> str:
    """``path`` if it is a relative folder inside the workers' home without ``..``, else ``ValueError``."""
    parts = path.split("/")
    if not path or path.startswith(("/", "~")) or ".." in parts or any(ord(c) < 32 for c in path):
        raise ValueError(
            f"--remote_dir={path!r} must be a relative path inside the workers' home folder, without '..' "
            "(each run's folder is replaced when the run starts)."
        )
    return path


@dataclasses.dataclass(frozen=True)
class TpuJob:
    """One TPU VM run over one or more slices.

    Attributes:
        program: the command every worker runs, as an argument list.
        tpu_names: the TPU VMs, one per slice.
        zone: their zone; ``project``: their project (``None``: gcloud's default).
        run_id: the run's id; ``run_dir``: the local run folder (logs, the code archive).
        code_source: the local folder whose working tree is shipped (unless ``git_revision``).
        git_revision: check this revision out of ``git_repo`` on every worker instead.
        git_repo: the repository to clone (``None``: this checkout's ``origin``).
        remote_dir: where the code goes on each worker, relative to the home folder
            (``None``: ``distmap_code/RUN_ID``); the program starts there.
        setup: shell commands run on every worker in the code folder before the program.
        workers_per_slice: hosts per slice (``None``: asked of ``gcloud ... describe``).
        coordinator_port: the port of attempt 0 (attempt ``k`` uses ``port + k``); ``None``: a
            new random port per attempt.
        coordinator_address: several slices: the address of slice 0's worker 0 (``None``: asked
            of ``gcloud ... describe`` when the run starts).
        megascale_port: the port the slices talk on (``MEGASCALE_PORT``).
        init_timeout: seconds every worker waits for all to join.
        stall_timeout: seconds of no progress before the progress watch fails the run (0: off).
        env: more variables for every worker.
        kill_tpu_holders: end any process that holds a TPU device before starting.
        tpu_lockfile: the lock file removed before starting.
        gcloud: the gcloud command; ``gcloud_args``: more arguments for every ``ssh`` and ``scp``.
    """

    program: Sequence[str]
    tpu_names: Sequence[str]
    zone: str
    run_id: str
    run_dir: str
    code_source: str
    project: str | None = None
    git_revision: str | None = None
    git_repo: str | None = None
    remote_dir: str | None = None
    setup: Sequence[str] = ()
    workers_per_slice: int | None = None
    coordinator_port: int | None = None
    coordinator_address: str | None = None
    megascale_port: int = 8080
    init_timeout: float | None = None
    stall_timeout: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kill_tpu_holders: bool = True
    tpu_lockfile: str = TPU_LOCKFILE
    gcloud: str = "gcloud"
    gcloud_args: Sequence[str] = ()

    @property
    def code_dir(self) -> str:
        return check_remote_dir(self.remote_dir or f"distmap_code/{shell.safe_name(self.run_id)}")

    @property
    def archive(self) -> str:
        return os.path.join(self.run_dir, "code.tar.gz")

    @property
    def remote_archive(self) -> str:
        return f"distmap-code-{shell.safe_name(self.run_id)}.tar.gz"


@dataclasses.dataclass(frozen=True)
class Step:
    """A command of the plan run once per slice (``argv`` per slice, in ``tpu_names`` order)."""

    name: str
    title: str
    argv: list[list[str]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does: ``steps`` before the program, then ``run``: one ``Worker`` per TPU worker."""

    steps: list[Step]
    run: list[Worker]


def slice_names(names: Sequence[str], num_slices: int | None = None) -> list[str]:
    """The TPU VM of each slice: ``names`` as given, or ``NAME-0 .. NAME-(N-1)`` for one name.

    Example:
        >>> slice_names(["pod"], 2), slice_names(["a", "b"])
        (['pod-0', 'pod-1'], ['a', 'b'])
    """
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise errors.DistributedError("tpu_vm: give the TPU VM name(s) with --tpu_names.")
    if num_slices is not None and num_slices != len(names):
        if len(names) != 1:
            raise errors.DistributedError(
                f"tpu_vm: --num_slices={num_slices} but --tpu_names has {len(names)} names; give one name per slice, "
                "or one prefix (slices NAME-0 .. NAME-(N-1), as a queued resource names its nodes)."
            )
        names = [f"{names[0]}-{i}" for i in range(num_slices)]
    for n in names:
        check_tpu_name(n)
    return names


def check_tpu_name(name: str) -> str:
    """``name`` if it is a TPU VM name (letters, digits and ``-``), else ``DistributedError``."""
    if not name or not all(c.isascii() and (c.isalnum() or c == "-") for c in name) or name.startswith("-"):
        raise errors.DistributedError(f"tpu_vm: {name!r} is not a TPU VM name (letters, digits and -).")
    return name


def _gcloud(job: TpuJob, verb: str, name: str, *rest: str) -> list[str]:
    argv = [job.gcloud, "compute", "tpus", "tpu-vm", verb, name, f"--zone={job.zone}"]
    if job.project:
        argv.append(f"--project={job.project}")
    return argv + list(rest)


def _ssh(job: TpuJob, name: str, worker: int | str, script: str) -> list[str]:
    # The workers' login shell (bash on TPU VM images) runs the script.
    return _gcloud(job, "ssh", name, f"--worker={worker}", *job.gcloud_args, "--command=" + script)


def describe_argv(job: TpuJob, name: str) -> list[str]:
    """The command that prints the internal addresses of slice ``name``'s workers, ``;``-separated."""
    return _gcloud(job, "describe", name, "--format=value(networkEndpoints[].ipAddress)")


def pack_command(job: TpuJob) -> str:
    """The shell line that packs ``job.code_source`` into ``job.archive``."""
    return f"mkdir -p {shell.quote(job.run_dir)} && " + _PACK.format(
        src=shell.quote(job.code_source), archive=shell.quote(job.archive)
    )


def prepare_script(job: TpuJob) -> str:
    """On one worker: free the TPU, put the code in place, run the setup commands there."""
    code = shell.quote(job.code_dir)
    lines = ["set -eu", "# Whatever holds the TPU (a crashed earlier run), and libtpu's lock file."]
    if job.kill_tpu_holders:
        lines.append(_KILL_TPU_HOLDERS)
    lock = shell.quote(job.tpu_lockfile)
    lines.append(f"rm -f {lock} 2>/dev/null || sudo -n rm -f {lock}")
    if job.git_revision:
        if not job.git_repo:
            raise errors.DistributedError("tpu_vm: --git_revision needs --git_repo (or a checkout with an 'origin').")
        lines.append(
            f"rm -rf {code} && git clone --quiet {shell.quote(job.git_repo)} {code} "
            f"&& git -C {code} checkout --quiet --detach {shell.quote(job.git_revision)}"
        )
    else:
        archive = shell.quote(job.remote_archive)
        lines.append(f"rm -rf {code} && mkdir -p {code} && tar -xzf {archive} -C {code} && rm -f {archive}")
    if job.setup:
        lines += [f"cd {code}", "# --setup:", *job.setup]
    return "\n".join(lines) + "\n"


def slice_env(
    job: TpuJob, names: Sequence[str], index: int, attempt: int, port: int, coordinator: str
) -> dict[str, str]:
    """The variables of every worker of slice ``index`` (beyond what JAX's TPU detection reads)."""
    spec = contract.RankSpec(
        coordinator=None, num_processes=None, process_id=None, run_id=job.run_id, attempt=attempt,
        init_timeout=job.init_timeout, stall_timeout=job.stall_timeout,
    )
    env = contract.rank_env(spec)
    env["JAX_COORDINATOR_PORT"] = str(port)
    if len(names) > 1:
        env.update(
            MEGASCALE_COORDINATOR_ADDRESS=f"{coordinator}:{job.megascale_port}",
            MEGASCALE_NUM_SLICES=str(len(names)),
            MEGASCALE_SLICE_ID=str(index),
            MEGASCALE_PORT=str(job.megascale_port),
        )
    env.update(job.env)
    return env


def run_script(job: TpuJob, env: Mapping[str, str], grace: float = 30.0) -> str:
    """On one worker: the program in the code folder, stopped through its ssh session (see ``shell.watched``)."""
    return shell.watched(job.program, env, job.code_dir, grace)


def plan(job: TpuJob, workers: Sequence[int] | None = None, *, attempt: int = 0, port: int | None = None,
         coordinator: str | None = None, grace: float = 30.0) -> Plan:
    """The commands of one attempt; ``workers``: hosts per slice (default ``job.workers_per_slice`` each)."""
    names = list(job.tpu_names)
    if not job.program:
        raise errors.DistributedError("tpu_vm: no program to run.")
    if workers is None:
        if job.workers_per_slice is None:
            raise errors.DistributedError("tpu_vm: the number of workers per slice is not known yet.")
        workers = [job.workers_per_slice] * len(names)
    steps = []
    if not job.git_revision:
        steps.append(Step(
            "ship", f"Copy the packed working tree ({job.archive}) to every worker",
            [_gcloud(job, "scp", job.archive, f"{n}:{job.remote_archive}", "--worker=all", *job.gcloud_args)
             for n in names],
        ))
    steps.append(Step(
        "prepare", f"On every worker: free the TPU, put the code in ~/{job.code_dir}"
        + (", run --setup there" if job.setup else ""),
        [_ssh(job, n, "all", prepare_script(job)) for n in names],
    ))
    if port is None:
        port = job.coordinator_port + attempt if job.coordinator_port is not None else pick_port()
    coordinator = coordinator or job.coordinator_address or COORDINATOR_PLACEHOLDER
    run: list[Worker] = []
    for i, (n, count) in enumerate(zip(names, workers)):
        script = run_script(job, slice_env(job, names, i, attempt, port, coordinator), grace)
        run += [Worker(len(run) + w, _ssh(job, n, w, script), label=f"{n} worker {w}", log_name=f"{n}.worker_{w}",
                       hold_stdin=True, program=job.program) for w in range(count)]
    return Plan(steps, run)


_PLAN_END = "DISTMAP_PLAN"


def format_plan(job: TpuJob, options: SupervisorOptions, *, python: str = sys.executable,
                agent: str = AGENT) -> str:
    """The run as a bash script that runs as printed (``--dry_run``): the plan the agent runs.

    The script hands the plan (JSON, one line) to ``launch/agent.py``, which does what the
    launcher does: pack, ship, prepare, start one ``gcloud ... ssh --worker=W`` per worker,
    supervise them (fail fast; Ctrl-C gives every worker's program SIGTERM and the grace
    period), restart after failures. The commands it runs are listed in the comments.
    """
    names = list(job.tpu_names)
    counts = [job.workers_per_slice or 1] * len(names)
    p = plan(job, counts, port=job.coordinator_port, grace=options.grace_period)
    out = [
        "#!/bin/bash",
        f"# distmap TPU VM run {job.run_id}: {len(names)} slice(s) ({', '.join(names)}), zone {job.zone}; "
        f"logs in {job.run_dir}",
        "# The agent (launch/agent.py) runs the plan below, as launch/tpu_vm.py would:",
    ]
    step_no = 1
    if not job.git_revision:
        out.append(f"#  {step_no}. pack the working tree of {job.code_source}: {pack_command(job)}")
        step_no += 1
    for step in p.steps:
        out.append(f"#  {step_no}. {step.title}: {shell.join(step.argv[0][:-1] if step.name == 'prepare' else step.argv[0])}"
                   + (" --command=<prepare script>" if step.name == "prepare" else ""))
        step_no += 1
    workers = (f"{job.workers_per_slice} workers per slice" if job.workers_per_slice
               else "every worker gcloud ... describe lists")
    out += [
        f"#  {step_no}. start the program on {workers}, one gcloud ... ssh --worker=W each, all at once, and "
        "supervise them:",
        "#     a failing worker stops every other at once (the launch exits with its code); Ctrl-C or SIGTERM to this",
        f"#     script gives every worker's program SIGTERM and {options.grace_period:g} s (--grace_period) to save and "
        "end, then SIGKILL;",
        f"#     --max_restarts={options.max_restarts}: after a failure only, each after a backoff, the TPU VMs checked "
        "and prepared again.",
        f"#     Worker 0's command: {shell.join(p.run[0].argv[:-1])} --command=<its program, watched>",
        "set -euo pipefail",
        f"exec {shell.quote(python)} {shell.quote(agent)} --plan=- <<'{_PLAN_END}'",
        agent_lib.plan_text("tpu_vm", job, options),
        _PLAN_END,
    ]
    return "\n".join(out) + "\n"


def _describe(job: TpuJob, name: str) -> list[str]:
    argv = describe_argv(job, name)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise errors.DistributedError(f"tpu_vm: could not run {shell.join(argv)}: {e.strerror or e}.") from e
    endpoints = [e.strip() for e in re.split(r"[;\s]+", proc.stdout) if e.strip()]
    if proc.returncode != 0 or not endpoints:
        raise errors.DistributedError(
            f"tpu_vm: could not find the workers of {name} ({shell.join(argv)} exited with {proc.returncode}: "
            f"{proc.stderr.strip()}); check --tpu_names and --zone, or give --workers_per_slice "
            "(and --coordinator_address for several slices)."
        )
    return endpoints


def vm_state_argv(job: TpuJob, name: str) -> list[str]:
    """The command that prints the state of TPU VM ``name`` (``READY`` when it can run a program)."""
    return _gcloud(job, "describe", name, "--format=value(state)")


def _vm_states(job: TpuJob) -> dict[str, str]:
    states = {}
    for name in job.tpu_names:
        argv = vm_state_argv(job, name)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
            states[name] = proc.stdout.strip() or f"unknown ({proc.stderr.strip() or 'no answer'})"
        except (OSError, subprocess.TimeoutExpired) as e:
            states[name] = f"unknown ({e})"
    return states


def _prepare(job: TpuJob, workers: Sequence[int], coordinator: str | None, options: SupervisorOptions, out: IO[str],
             err: IO[str], attempt: int = 0) -> AttemptResult | None:
    """Ship and prepare every worker (the plan's steps); a failed step's result, else ``None``."""
    names = list(job.tpu_names)
    for step in plan(job, workers, port=0, coordinator=coordinator).steps:
        err.write(f"distmap tpu_vm: {step.title}\n")
        res = run_group([Worker(i, argv, label=f"{step.name} {n}", log_name=f"{step.name}.{n}")
                         for i, (n, argv) in enumerate(zip(names, step.argv))], job.run_dir, options, out=out,
                        attempt=attempt)
        if res.status != "ok":
            return res
    return None


def run_tpu(job: TpuJob, options: SupervisorOptions, *, out: IO[str] | None = None,
            err: IO[str] | None = None) -> LaunchResult:
    """Ship the code, prepare the workers, start and supervise ``job``; see the module docstring.

    Returns:
        The :class:`LaunchResult`; its ``exit_code`` is that of the worker that failed first,
        or of a preparation command that failed (then the program was not started), or 0.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    names = list(job.tpu_names)
    # The supervisor's run folder is the job's.
    options = dataclasses.replace(options, log_dir=os.path.dirname(job.run_dir), run_id=os.path.basename(job.run_dir))
    coordinator = job.coordinator_address
    workers = [job.workers_per_slice] * len(names) if job.workers_per_slice else None
    if workers is None or (len(names) > 1 and coordinator is None):
        endpoints = [_describe(job, n) for n in names]
        workers = workers or [len(e) for e in endpoints]
        coordinator = coordinator or endpoints[0][0]
    os.makedirs(job.run_dir, exist_ok=True)

    def pack() -> None:
        if not job.git_revision:
            done = subprocess.run(["bash", "-c", pack_command(job)], capture_output=True, text=True)
            if done.returncode != 0:
                raise errors.DistributedError(f"tpu_vm: packing {job.code_source} failed: {done.stderr.strip()}")
            err.write(f"distmap tpu_vm: packed {job.code_source} into {job.archive}\n")

    pack()
    failed = _prepare(job, workers, coordinator, options, out, err)
    if failed is not None:
        msg = f"distmap tpu_vm: {failed.message} The program was not started."
        err.write(msg + "\n")
        return LaunchResult(exit_code=failed.exit_code, run_dir=job.run_dir, attempts=[failed], message=msg)

    def before_attempt(attempt: int) -> AttemptResult | None:
        """Before a restart: every TPU VM READY, then the code shipped and the workers prepared again."""
        states = _vm_states(job)
        down = {n: s for n, s in states.items() if s != "READY"}
        if down:
            text = ", ".join(f"{n} is {s}" for n, s in down.items())
            err.write(f"distmap tpu_vm: before attempt {attempt}: {text}, not READY.\n")
            return AttemptResult(attempt, "failed", EXIT_NOT_READY, None, {}, {}, [],
                                 f"the TPU VM(s) were not READY ({text}); nothing was started.", 0.0)
        pack()  # the workers' copy of the code may be gone with a repaired VM: ship and prepare again
        return _prepare(job, workers, coordinator, options, out, err, attempt)

    return supervise(
        lambda attempt: plan(job, workers, attempt=attempt, coordinator=coordinator, grace=options.grace_period).run,
        options, out=out, err=err, before_attempt=before_attempt,
    )


def default_git_repo(source: str) -> str | None:
    """The ``origin`` URL of the checkout at ``source``, if any."""
    try:
        proc = subprocess.run(["git", "-C", source, "remote", "get-url", "origin"], capture_output=True, text=True)
    except OSError:
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


__all__ = [
    "AGENT",
    "COORDINATOR_PLACEHOLDER",
    "EXIT_NOT_READY",
    "TPU_LOCKFILE",
    "Plan",
    "Step",
    "TpuJob",
    "check_project",
    "check_remote_dir",
    "check_tpu_name",
    "check_zone",
    "default_git_repo",
    "describe_argv",
    "format_plan",
    "pack_command",
    "plan",
    "prepare_script",
    "run_script",
    "run_tpu",
    "slice_env",
    "slice_names",
    "vm_state_argv",
]
