"""Run a program as a SLURM job: an sbatch script whose batch step is distmap's agent.

    python launch/slurm.py --nodes=2 --tasks_per_node=1 --gpus_per_node=8 --time=2:00:00 \\
        --partition=gpu -- python examples/ensemble.py --mesh=data=-1,model=8
    python launch/slurm.py --flagfile=configs/slurm_gpu_2node.flags -- \\
        python examples/ensemble.py --flagfile=configs/slurm_gpu_2node.flags
    python launch/slurm.py --flagfile=configs/slurm_gpu_2node.flags --dry_run -- python train.py

The script runs the agent (``launch/agent.py``) inside the allocation, which starts each task
as a job step of its own and supervises them as ``launch/local.py`` does: the ``DISTMAP_*``
contract (coordinator on the first node, at a port free there), each task's share of its
node's GPUs, fail fast with the first failing task's exit status, ``--max_restarts`` after
failures only (with ``--restart_backoff``), and per-task logs
``--log_dir/RUN_ID/rank_<r>.job<JOBID>[.attempt<k>].log`` next to the agent's
``batch.job<JOBID>.log``. Stops: ``#SBATCH --signal=B:TERM@<grace + 30>`` before the time
limit and ``scancel --batch --signal=TERM JOBID`` give every task SIGTERM and
``--grace_period`` seconds; ``scancel --signal=TERM JOBID`` signals the tasks themselves, and a
task ended by it stops the run the same way. Nothing is restarted after a stop.

``--dry_run`` prints the script (it submits as printed). Otherwise it is written to
``--log_dir/RUN_ID/job.sbatch`` (on a file system the nodes share), submitted with ``sbatch
--parsable``, and the job id is printed. ``--timeout`` becomes ``--time`` where that is not
given. The program comes after ``--`` and reaches the tasks unchanged, byte for byte.
"""

from __future__ import annotations

import os
import sys

from absl import flags

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# launcher uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src import flags as distmap_flags
from distmap._src.launch import cli, slurm

cli.define_common_flags(init_timeout=300.0)
_NODES = flags.DEFINE_integer("nodes", 1, "Nodes to allocate.", lower_bound=1)
_TASKS = flags.DEFINE_integer("tasks_per_node", 1, "Processes per node: 1 (driving all its GPUs) or one per GPU.",
                              lower_bound=1)
_GPUS = flags.DEFINE_integer("gpus_per_node", 0, "GPUs per node, split evenly among its tasks.", lower_bound=0)
_CPUS = flags.DEFINE_integer("cpus_per_task", None, "CPU cores per task (#SBATCH --cpus-per-task).", lower_bound=1)
_TIME = flags.DEFINE_string("time", None, "Time limit in SLURM's format, e.g. 2:00:00. Default: from --timeout, "
                            "else the partition's default.")
_PARTITION = flags.DEFINE_string("partition", None, "SLURM partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "SLURM account to charge.")
_JOB_NAME = flags.DEFINE_string("job_name", "distmap", "SLURM job name.")
_BIND = flags.DEFINE_string("coordinator_bind_host", None,
                            "Address the coordinator binds on the first node (default: all of its addresses).")
_SBATCH = flags.DEFINE_multi_string("sbatch_option", [], "More #SBATCH options, e.g. --sbatch_option=--exclusive.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tasks start (#SBATCH --chdir). Default: this directory.")
for _name in ("time", "partition", "account", "job_name", "sbatch_option", "workdir", "log_dir"):
    cli.check_flag(_name, lambda v, n=_name: slurm.check_directive(v, "--" + n))  # type: ignore[misc]  # mypy cannot type a lambda with a default
cli.check_flag("coordinator_bind_host", lambda v: slurm.check_directive(v, "--coordinator_bind_host"))
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cli.options_from_flags()
    per_task = _GPUS.value // _TASKS.value if _GPUS.value else fv.devices_per_process
    cli.check_mesh_fits(
        _NODES.value * _TASKS.value * per_task if per_task else None,
        f"--nodes={_NODES.value} x --tasks_per_node={_TASKS.value} x {per_task} device(s) per task", program,
    )
    job = slurm.SlurmJob(
        program=program,
        run_id=options.run_id,
        run_dir=options.run_dir,
        workdir=os.path.abspath(_WORKDIR.value or os.getcwd()),
        nodes=_NODES.value,
        tasks_per_node=_TASKS.value,
        gpus_per_node=_GPUS.value,
        cpus_per_task=_CPUS.value,
        time=_TIME.value or (slurm.slurm_time(options.timeout) if options.timeout else None),
        partition=_PARTITION.value,
        account=_ACCOUNT.value,
        job_name=_JOB_NAME.value,
        coordinator_port=fv.coordinator_port,
        coordinator_bind_host=_BIND.value,
        devices_per_process=fv.devices_per_process,
        init_timeout=fv.init_timeout,
        stall_timeout=fv.stall_timeout,
        env=cli.env_from_flags(),
        sbatch_options=_SBATCH.value,
    )
    script = slurm.script_bytes(job, options)  # checked before anything is written
    if fv.dry_run:
        sys.stdout.buffer.write(script)
        return
    job_id, path = slurm.submit(job, options)
    print(job_id)
    sys.stderr.write(
        f"distmap slurm: submitted job {job_id} ({job.num_tasks} task(s) on {job.nodes} node(s)); script {path}; "
        f"agent and rank logs in {job.run_dir} (batch.job{job_id}.log, rank_<r>.job{job_id}.log)\n"
    )


if __name__ == "__main__":
    cli.run(main)
