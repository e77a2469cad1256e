"""The agent: the one supervision every launcher runs, here or inside a scheduler's allocation.

:func:`~distmap._src.launch.supervisor.supervise` is the agent's loop (start the ranks, fail
fast, stop gracefully, decide restarts). Where the launcher itself cannot stay with the run
(``sbatch`` returns at once; a printed TPU script runs later), the launcher writes a **plan**
(JSON: which scheduler, its job, the supervisor options) and the agent runs it:

    python launch/agent.py --plan=PLAN.json     # or --plan=- to read it from stdin

* ``"slurm"``: the sbatch script ``exec`` s the agent inside the allocation (on the batch
  host, the first node); the agent starts every rank as a job step of its own
  (``slurm.run_in_allocation``);
* ``"tpu_vm"``: the ``--dry_run`` script of ``launch/tpu_vm.py`` runs the same plan the
  launcher would (``tpu_vm.run_tpu``): ship, prepare, run, supervise, restart.

How a scheduler names ranks is in its module (``local``, ``ssh``, ``slurm``, ``tpu_vm``);
how a command reaches a host is a transport there (``ssh``, ``srun``, ``gcloud ... ssh``),
each wrapped by :func:`~distmap._src.launch.shell.watched` so that ``stop``/``kill`` down
the held stdin reach the remote program.

Example:
    >>> from distmap._src.launch.supervisor import SupervisorOptions
    >>> text = plan_text("tpu_vm", {"zone": "us-west4-a"}, SupervisorOptions(run_id="r1", log_dir="/runs"))
    >>> kind, job, options = read_plan(text)
    >>> kind, job["zone"], options.run_id, options.grace_period
    ('tpu_vm', 'us-west4-a', 'r1', 30.0)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from typing import Any

from distmap import errors
from distmap._src.launch.supervisor import SupervisorOptions

#: The schedulers whose plans the agent runs.
KINDS = ("slurm", "tpu_vm")


def plan_text(kind: str, job: Any, options: SupervisorOptions) -> str:
    """The plan as one line of JSON (so a shell here-document cannot end inside it)."""
    if kind not in KINDS:
        raise errors.DistributedError(f"agent: unknown scheduler {kind!r}; expected one of {', '.join(KINDS)}.")
    fields = job if isinstance(job, Mapping) else dataclasses.asdict(job)
    return json.dumps({"kind": kind, "job": dict(fields), "options": dataclasses.asdict(options)}, sort_keys=True)


def read_plan(text: str) -> tuple[str, dict[str, Any], SupervisorOptions]:
    """``(kind, job fields, options)`` of a plan, or ``DistributedError`` saying what is wrong with it."""
    try:
        plan = json.loads(text)
        kind, job, opts = plan["kind"], dict(plan["job"]), dict(plan["options"])
        options = SupervisorOptions(**opts)
    except (ValueError, KeyError, TypeError) as e:
        raise errors.DistributedError(f"agent: the plan is not one a distmap launcher wrote ({e}).") from None
    if kind not in KINDS:
        raise errors.DistributedError(f"agent: unknown scheduler {kind!r} in the plan; expected one of {', '.join(KINDS)}.")
    return kind, job, options


def run_plan(text: str) -> int:
    """Run a plan to its end; returns the exit code (that of the rank that failed first, or 0)."""
    kind, job, options = read_plan(text)
    if kind == "slurm":
        from distmap._src.launch import slurm

        return slurm.run_in_allocation(slurm.SlurmJob(**job), options).exit_code
    from distmap._src.launch import tpu_vm

    return tpu_vm.run_tpu(tpu_vm.TpuJob(**job), options).exit_code


def main(argv: list[str]) -> int:
    """``launch/agent.py --plan=FILE`` (``-``: standard input)."""
    args = [a for a in argv[1:] if a.startswith("--plan=")]
    if len(args) != 1 or len(argv) != 2:
        sys.stderr.write("usage: agent.py --plan=FILE  (a plan written by a distmap launcher; - reads stdin)\n")
        return 2
    path = args[0][len("--plan="):]
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8", errors="surrogateescape").read()
    except OSError as e:
        sys.stderr.write(f"agent: cannot read the plan {path}: {e.strerror or e}\n")
        return 2
    try:
        return run_plan(text)
    except errors.DistributedError as e:
        sys.stderr.write(f"agent: error: {e}\n")
        return 1


__all__ = ["KINDS", "main", "plan_text", "read_plan", "run_plan"]
