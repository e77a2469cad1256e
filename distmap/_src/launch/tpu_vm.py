"""The policy of ``launch/tpu_vm.py``: the ``gcloud compute tpus tpu-vm`` commands of a TPU pod run.

A TPU slice with several hosts ("workers") runs one process per worker, and all of them
must start: a program started on one worker waits for the others until it times out
(jax-ml/jax#22436). So every command goes to ``--worker=all``, for every slice:

1. **Ship the code.** Either the working tree, packed locally (``git ls-files``: tracked and
   untracked files, not ignored ones) and copied with ``tpu-vm scp``, or a clone of
   ``--git_repo`` at ``--git_revision``. Each run unpacks into its own folder
   (``distmap_code/RUN_ID`` in the worker's home).
2. **Clean up after an earlier run.** End the process group a previous distmap run left
   (its id is in a pid file), the processes that hold the TPU devices, and remove
   ``/tmp/libtpu_lockfile``, which otherwise makes the new run fail with "TPU in use".
3. **Start the program**, one ``gcloud ... ssh --worker=all`` per slice, all at once, each a
   rank of the local supervisor (``supervisor.supervise``): prefixed output, per-worker logs
   in the run folder (``NAME.worker_W.log``), fail fast across slices and within a slice
   (``relay.py``), ``--timeout``, ``--max_restarts``. On every worker the program runs under
   ``setsid`` with its group id in a pid file, and reports its exit code; the launch exits
   with the code of the worker that failed first (0 when every worker exits 0).
4. **Clean up** when a worker fails or the launch is stopped: on every worker of every
   slice, end the program's process group (an ``ssh`` client that is killed does not end the
   remote program) and remove the TPU lock file.

JAX's TPU detection finds the coordinator (worker 0) and each worker's rank by itself;
the launcher sets ``JAX_COORDINATOR_PORT`` (a new port per run and attempt, instead of
JAX's fixed 8482) and, for several slices, the ``MEGASCALE_*`` variables that join them.

Example:
    >>> job = TpuJob(program=["python3", "train.py"], tpu_names=["my-v5e"], zone="us-west4-a",
    ...              run_id="r1", run_dir="/runs/r1", code_source="/code", coordinator_port=23456)
    >>> p = plan(job)
    >>> [step.name for step in p.steps], p.run.name, len(p.run.argv)
    (['ship', 'prepare'], 'run', 1)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Mapping, Sequence
from typing import IO

from distmap import errors
from distmap._src.launch import contract, relay, shell
from distmap._src.launch.supervisor import AttemptResult, LaunchResult, SupervisorOptions, Worker, supervise

#: The pid file of the program on a worker (one TPU job at a time per worker).
PID_FILE = '"${TMPDIR:-/tmp}/distmap-tpu-job.pgid"'
#: The file libtpu holds while a process uses the TPU; a crashed run may leave it behind.
TPU_LOCKFILE = "/tmp/libtpu_lockfile"
RELAY = os.path.abspath(relay.__file__)

# Which worker this is: TPU_WORKER_ID where the VM sets it, else the metadata server's
# agent-worker-number, else the host name.
_WORKER_ID = (
    'w="${TPU_WORKER_ID:-$(curl -sf -H "Metadata-Flavor: Google" '
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null "
    '|| hostname)}"'
)
_PREFIX_LINES = 'while IFS= read -r line || [ -n "$line" ]; do printf "[worker %s] %s\\n" "$w" "$line"; done'
# Processes that hold a TPU device (/dev/accel* on v2-v5p, /dev/vfio/N on v5e and v6e).
_KILL_TPU_HOLDERS = (
    "holders=$( { lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; "
    "sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; } | sort -u); "
    'for p in $holders; do case "$p" in ""|*[!0-9]*|0|1) ;; *) '
    'kill -s KILL "$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null;; esac; done'
)


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
        coordinator_port: the port of attempt 0 (attempt ``k`` uses ``port + k``); ``None``: a
            new random port per attempt.
        coordinator_address: several slices: the address of slice 0's worker 0 (``None``: asked
            of ``gcloud ... describe`` when the run starts).
        megascale_port: the port the slices talk on (``MEGASCALE_PORT``).
        init_timeout: seconds every worker waits for all to join.
        env: more variables for every worker.
        kill_tpu_holders: end any process that holds a TPU device before starting.
        tpu_lockfile: the lock file removed before starting and at clean-up.
        grace_period: seconds between SIGTERM and SIGKILL in remote clean-up.
        gcloud: the gcloud command.
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
    coordinator_port: int | None = None
    coordinator_address: str | None = None
    megascale_port: int = 8080
    init_timeout: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kill_tpu_holders: bool = True
    tpu_lockfile: str = TPU_LOCKFILE
    grace_period: float = 5.0
    gcloud: str = "gcloud"

    @property
    def code_dir(self) -> str:
        return self.remote_dir or f"distmap_code/{shell.safe_name(self.run_id)}"

    @property
    def archive(self) -> str:
        return os.path.join(self.run_dir, "code.tar.gz")

    @property
    def remote_archive(self) -> str:
        return f"distmap-code-{shell.safe_name(self.run_id)}.tar.gz"


@dataclasses.dataclass(frozen=True)
class Step:
    """A command of the plan, run once per slice (``argv`` per slice, in ``tpu_names`` order)."""

    name: str
    title: str
    argv: list[list[str]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does: ``steps`` before the program, the ``run`` commands, the ``cleanup`` ones."""

    steps: list[Step]
    run: Step
    cleanup: Step
    coordinator_lookup: list[str] | None


def slice_names(tpu_names: Sequence[str], num_slices: int | None) -> list[str]:
    """The slices' TPU names: ``--tpu_names`` as given, or ``NAME-0 .. NAME-(N-1)`` for ``--num_slices``.

    Example:
        >>> slice_names(["pod"], 2), slice_names(["a", "b"], None)
        (['pod-0', 'pod-1'], ['a', 'b'])
    """
    names = [n.strip() for n in tpu_names if n.strip()]
    if not names:
        raise errors.DistributedError("tpu_vm: give the TPU VM(s) with --tpu_names=NAME[,NAME...].")
    if num_slices is not None and num_slices != len(names):
        if len(names) != 1:
            raise errors.DistributedError(
                f"tpu_vm: --num_slices={num_slices} but --tpu_names has {len(names)} names; give one name per slice, "
                "or one prefix (slices NAME-0 .. NAME-(N-1), as a queued resource names its nodes)."
            )
        names = [f"{names[0]}-{i}" for i in range(num_slices)]
    for n in names:
        if not n or not all(c.isalnum() or c == "-" for c in n) or n.startswith("-"):
            raise errors.DistributedError(f"tpu_vm: {n!r} is not a TPU VM name (letters, digits and -).")
    return names


def _gcloud(job: TpuJob, verb: str, name: str, *rest: str) -> list[str]:
    argv = [job.gcloud, "compute", "tpus", "tpu-vm", verb, name, f"--zone={job.zone}"]
    if job.project:
        argv.append(f"--project={job.project}")
    return argv + list(rest)


def _ssh(job: TpuJob, name: str, script: str) -> list[str]:
    # The workers' login shell (bash on TPU VM images) runs the script.
    return _gcloud(job, "ssh", name, "--worker=all", "--command=" + script)


def _check_remote_dir(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or path.startswith("~"):
        raise errors.DistributedError(
            f"tpu_vm: --remote_dir={path!r} must be a relative path inside the workers' home folder, without '..' "
            "(each run's folder is replaced when the run starts)."
        )
    return path


def prepare_script(job: TpuJob) -> str:
    """On one worker: end an earlier run, free the TPU, put the code in place."""
    code = shell.quote(_check_remote_dir(job.code_dir))
    lines = [
        "set -u",
        "# End the process group an earlier distmap run left behind, and whatever holds the TPU.",
        shell.kill_group_script(PID_FILE, job.grace_period),
    ]
    if job.kill_tpu_holders:
        lines.append(_KILL_TPU_HOLDERS)
    lock = shell.quote(job.tpu_lockfile)
    lines.append(f"rm -f {lock} 2>/dev/null || sudo -n rm -f {lock}")
    if job.git_revision:
        if not job.git_repo:
            raise errors.DistributedError("tpu_vm: --git_revision needs --git_repo (or a checkout with an 'origin').")
        lines += [
            f"rm -rf {code} && git clone --quiet {shell.quote(job.git_repo)} {code} "
            f"&& git -C {code} checkout --quiet --detach {shell.quote(job.git_revision)}",
        ]
    else:
        archive = shell.quote(job.remote_archive)
        lines += [f"rm -rf {code} && mkdir -p {code} && tar -xzf {archive} -C {code} && rm -f {archive}"]
    return "\n".join(lines) + "\n"


def slice_env(
    job: TpuJob, names: Sequence[str], index: int, attempt: int, port: int, coordinator: str
) -> dict[str, str]:
    """The variables of every worker of slice ``index`` (beyond what JAX's TPU detection reads)."""
    spec = contract.RankSpec(
        coordinator=None, num_processes=None, process_id=None, run_id=job.run_id, attempt=attempt,
        init_timeout=job.init_timeout,
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


def run_script(job: TpuJob, env: Mapping[str, str]) -> str:
    """On one worker: start the program detached, prefix its lines, report its exit code."""
    code = shell.quote(_check_remote_dir(job.code_dir))
    return "\n".join([
        "set -o pipefail",
        _WORKER_ID,
        f"pid_file={PID_FILE}",
        "{",
        f"  cd {code} || {{ echo 'distmap: the code folder is missing on this worker'; "
        f'echo "{relay.EXIT_MARKER} 1"; exit 1; }}',
        "  " + shell.detached(job.program, '"$pid_file"', env),
        '  rc=$?; rm -f "$pid_file"',
        f'  echo "{relay.EXIT_MARKER} $rc"',
        '  exit "$rc"',
        "} 2>&1 | " + _PREFIX_LINES,
    ]) + "\n"


def cleanup_script(job: TpuJob) -> str:
    """On one worker: end the program's process group and remove the TPU lock file."""
    lock = shell.quote(job.tpu_lockfile)
    return shell.kill_group_script(PID_FILE, job.grace_period) + f"\nrm -f {lock} 2>/dev/null || sudo -n rm -f {lock}\n"


def coordinator_lookup(job: TpuJob, name: str) -> list[str]:
    """The command that prints the internal address of slice ``name``'s worker 0."""
    return _gcloud(job, "describe", name, "--format=value(networkEndpoints[0].ipAddress)")


def plan(job: TpuJob, names: Sequence[str] | None = None, *, attempt: int = 0, port: int | None = None,
         coordinator: str | None = None) -> Plan:
    """The commands of one attempt. ``port``/``coordinator`` default to the job's (or placeholders)."""
    names = list(names or job.tpu_names)
    if not job.program:
        raise errors.DistributedError("tpu_vm: no program to run.")
    steps = []
    if not job.git_revision:
        steps.append(Step(
            "ship",
            f"Copy the packed working tree to every worker: {job.code_source} (git ls-files) packed into {job.archive}",
            [_gcloud(job, "scp", job.archive, f"{n}:{job.remote_archive}", "--worker=all") for n in names],
        ))
    steps.append(Step(
        "prepare",
        "On every worker: end an earlier run's processes, remove the TPU lock file, put the code in "
        f"~/{job.code_dir}",
        [_ssh(job, n, prepare_script(job)) for n in names],
    ))
    if port is None:
        port = job.coordinator_port + attempt if job.coordinator_port is not None else shell.pick_port()
    lookup = None
    if len(names) > 1:
        coordinator = coordinator or job.coordinator_address
        if coordinator is None:
            lookup = coordinator_lookup(job, names[0])
            coordinator = f"<address of {names[0]} worker 0>"
    run = Step(
        "run",
        "Start the program on every worker of every slice at once (one command per slice)",
        [_ssh(job, n, run_script(job, slice_env(job, names, i, attempt, port, coordinator or "")))
         for i, n in enumerate(names)],
    )
    cleanup = Step(
        "cleanup",
        "If a worker fails or the launch is stopped, on every worker: end the program and free the TPU",
        [_ssh(job, n, cleanup_script(job)) for n in names],
    )
    return Plan(steps, run, cleanup, lookup)


_HEREDOC_END = "DISTMAP_SCRIPT"


def format_plan(job: TpuJob, p: Plan) -> str:
    """The plan as a bash script, one command a line (``--dry_run``).

    Each remote script is set out once in a quoted here-document (no quoting to untangle)
    and passed as ``--command="$script"``; the text runs as it is.
    """
    names = list(job.tpu_names)
    out = [
        "#!/bin/bash",
        f"# distmap TPU VM run {job.run_id}: {len(names)} slice(s) ({', '.join(names)}), zone {job.zone}; "
        f"logs in {job.run_dir}",
    ]
    if p.coordinator_lookup:
        out += ["# The slices' coordinator (MEGASCALE_COORDINATOR_ADDRESS) is worker 0 of the first slice:",
                shell.join(p.coordinator_lookup)]
    defined: dict[str, str] = {}

    def command(argv: list[str], var: str) -> str:
        last = argv[-1]
        if not last.startswith("--command="):
            return shell.join(argv)
        script = last[len("--command="):]
        if _HEREDOC_END in script.splitlines():
            return shell.join(argv)  # cannot be a here-document: quote it instead
        if defined.get(var) != script:
            out.extend([f"{var}=$(cat <<'{_HEREDOC_END}'", *script.rstrip("\n").split("\n"), _HEREDOC_END, ")"])
            defined[var] = script
        return shell.join(argv[:-1]) + f' --command="${var}"'

    for i, step in enumerate([*p.steps, p.run, p.cleanup], 1):
        if step is p.cleanup:
            out.append(f"# {step.title}:")
        else:
            out.append(f"# {i}. {step.title}")
        for n, argv in zip(names, step.argv):
            var = step.name + ("_" + n.replace("-", "_") if step is p.run and len(names) > 1 else "") + "_script"
            out.append(command(argv, var) + (" &" if step is p.run and len(names) > 1 else ""))
        if step is p.run and len(names) > 1:
            out.append("wait")
    return "\n".join(out) + "\n"


def pack_working_tree(source: str, dest: str) -> int:
    """Pack ``source``'s working tree into the tar.gz ``dest``; returns the number of files.

    In a git checkout: tracked and untracked files that are not ignored (``git ls-files``),
    so ``runs/``, virtual environments and caches stay home. Elsewhere: every file but
    ``.git``, ``__pycache__`` and ``runs``.
    """
    files: list[str]
    try:
        listing = subprocess.run(
            ["git", "-C", source, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout
        files = [f for f in listing.decode().split("\0") if f and os.path.isfile(os.path.join(source, f))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for folder, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__", "runs"))
            files += [os.path.relpath(os.path.join(folder, n), source) for n in sorted(names)]
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for f in sorted(set(files)):
            tar.add(os.path.join(source, f), arcname=f, recursive=False)
    return len(files)


def _run_each(argvs: list[list[str]], names: Sequence[str], out: IO[str], what: str) -> int:
    """Run one command per slice at once, output prefixed ``[WHAT NAME]``; the first non-zero status, or 0.

    Anything still running when this is interrupted (Ctrl-C) is ended with it.
    """
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

    def pump(proc: subprocess.Popen, label: str) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            with lock:
                out.write(f"[{label}] " + raw.decode("utf-8", errors="replace").rstrip("\r\n") + "\n")
                out.flush()

    threads = []
    try:
        for argv, name in zip(argvs, names):
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                out.write(f"[{what} {name}] could not start {argv[0]!r}: {e.strerror or e}\n")
                return 127
            procs.append(proc)
            threads.append(threading.Thread(target=pump, args=(proc, f"{what} {name}"), daemon=True))
            threads[-1].start()
        codes = [p.wait() for p in procs]
        for t in threads:
            t.join(5)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return next((code for code in codes if code != 0), 0)


def run_tpu(
    job: TpuJob,
    options: SupervisorOptions,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    relay_python: str = sys.executable,
) -> LaunchResult:
    """Ship the code, clean up, start and supervise ``job``; see the module docstring.

    Returns:
        The :class:`LaunchResult`; its ``exit_code`` is that of the worker that failed first,
        or of a preparation command that failed (then nothing was started), or 0.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    names = list(job.tpu_names)
    os.makedirs(job.run_dir, exist_ok=True)
    # The supervisor's run folder is the job's (its logs next to the per-worker ones).
    options = dataclasses.replace(options, log_dir=os.path.dirname(job.run_dir), run_id=os.path.basename(job.run_dir))
    coordinator = job.coordinator_address
    if len(names) > 1 and coordinator is None:
        argv = coordinator_lookup(job, names[0])
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        coordinator = proc.stdout.strip().splitlines()[0].strip() if proc.stdout.strip() else ""
        if proc.returncode != 0 or not coordinator:
            msg = (f"distmap tpu_vm: could not find the address of {names[0]} worker 0 ({shell.join(argv)} exited "
                   f"with {proc.returncode}: {proc.stderr.strip()}); give it with --coordinator_address.")
            err.write(msg + "\n")
            return LaunchResult(exit_code=proc.returncode or 1, run_dir=job.run_dir, attempts=[], message=msg)
    first = plan(job, names, coordinator=coordinator, port=0)
    if not job.git_revision:
        count = pack_working_tree(job.code_source, job.archive)
        err.write(f"distmap tpu_vm: packed {count} file(s) of {job.code_source} into {job.archive}\n")
    for step in first.steps:
        err.write(f"distmap tpu_vm: {step.title}\n")
        code = _run_each(step.argv, names, out, step.name)
        if code != 0:
            msg = f"distmap tpu_vm: a preparation command failed with exit status {code}; nothing was started."
            err.write(msg + "\n")
            return LaunchResult(exit_code=code, run_dir=job.run_dir, attempts=[], message=msg)

    def make_workers(attempt: int) -> list[Worker]:
        p = plan(job, names, attempt=attempt, coordinator=coordinator)
        suffix = "" if attempt == 0 else f".restart{attempt}"
        return [
            Worker(i, [relay_python, RELAY, f"--log_prefix={os.path.join(job.run_dir, n)}", f"--suffix={suffix}",
                       "--", *p.run.argv[i]], label=f"slice {n}")
            for i, n in enumerate(names)
        ]

    def clean_up(result: AttemptResult) -> None:
        if result.status == "ok":
            return
        err.write("distmap tpu_vm: ending the program on every worker and freeing the TPUs.\n")
        err.flush()
        _run_each(first.cleanup.argv, names, out, "cleanup")

    return supervise(make_workers, options, out=out, err=err, on_attempt_end=clean_up)


def default_git_repo(source: str) -> str | None:
    """The ``origin`` URL of the checkout at ``source``, if any."""
    try:
        proc = subprocess.run(["git", "-C", source, "remote", "get-url", "origin"], capture_output=True, text=True)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


__all__ = [
    "PID_FILE",
    "TPU_LOCKFILE",
    "Plan",
    "Step",
    "TpuJob",
    "cleanup_script",
    "coordinator_lookup",
    "default_git_repo",
    "format_plan",
    "pack_working_tree",
    "plan",
    "prepare_script",
    "run_script",
    "run_tpu",
    "slice_env",
    "slice_names",
]
