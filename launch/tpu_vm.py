"""Run a program on every worker of one or more TPU VM slices, through ``gcloud compute tpus tpu-vm``.

    python launch/tpu_vm.py --tpu_names=my-v5e-32 --zone=us-west4-a -- \\
        python3 examples/ensemble.py --mesh=data=-1,model=4
    python launch/tpu_vm.py --flagfile=configs/tpu_v5e_32.flags -- \\
        python3 examples/ensemble.py --flagfile=configs/tpu_v5e_32.flags
    python launch/tpu_vm.py --flagfile=configs/tpu_v5e_32x2_multislice.flags --dry_run -- python3 train.py

The working tree (or ``--git_revision`` of ``--git_repo``) is shipped to **every** worker
(``--worker=all``); what an earlier run left (its processes, the processes holding the TPU,
``/tmp/libtpu_lockfile``) is cleaned up; then the program starts on all workers of all
slices at once, one ``gcloud ... ssh --worker=all`` per slice, supervised as
``launch/local.py`` supervises its ranks: output prefixed ``[slice NAME] [worker W]``,
per-worker logs in ``--log_dir/RUN_ID/NAME.worker_W.log``, fail fast (a failing worker
stops every slice), ``--timeout``, ``--max_restarts``, and remote clean-up when a worker
fails or the launcher is stopped. The exit status is that of the worker that failed first.
Several slices (``--tpu_names=a,b`` or ``--num_slices=N``) are joined through the
``MEGASCALE_*`` variables, with slice 0's worker 0 as coordinator.

``--dry_run`` prints the commands instead. Everything after ``--`` reaches the program
unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import _light  # launch/ is on sys.path: this file runs as a script

_light.use_light_distmap()  # the launcher needs distmap's launch code (from this checkout), not JAX

from distmap import errors  # noqa: E402
from distmap._src import flags as distmap_flags  # noqa: E402
from distmap._src.launch import cli, cluster, tpu_vm  # noqa: E402

cli.define_common_flags(init_timeout=300.0)
cluster.define_cluster_flags(devices_per_process=False)
distmap_flags.define_mesh_flags(cpu_devices=False)
_NAMES = flags.DEFINE_list("tpu_names", None, "The TPU VM of each slice (or one prefix with --num_slices).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", None, "Slices NAME-0 .. NAME-(N-1) of --tpu_names=NAME (a queued "
                                   "resource's nodes).", lower_bound=1)
_ZONE = flags.DEFINE_string("zone", None, "The TPU VMs' zone.")
_PROJECT = flags.DEFINE_string("project", None, "The TPU VMs' project (default: gcloud's).")
_GIT_REVISION = flags.DEFINE_string("git_revision", None, "Check out this revision on every worker instead of "
                                    "shipping the working tree.")
_GIT_REPO = flags.DEFINE_string("git_repo", None, "Repository to clone for --git_revision (default: origin).")
_CODE_SOURCE = flags.DEFINE_string("code_source", None, "The working tree to ship (default: this directory).")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", None, "Where the code goes on each worker, relative to its home "
                                  "(default: distmap_code/RUN_ID); the program starts there.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Several slices: the internal address of the first "
                                   "slice's worker 0 (default: asked of gcloud ... describe).")
_MEGASCALE_PORT = flags.DEFINE_integer("megascale_port", 8080, "The port slices talk on (MEGASCALE_PORT).")
_KILL_HOLDERS = flags.DEFINE_bool("kill_tpu_holders", True, "Before starting, end every process that holds a TPU "
                                  "device (a crashed earlier run).")
_LOCKFILE = flags.DEFINE_string("tpu_lockfile", tpu_vm.TPU_LOCKFILE, "libtpu's lock file, removed before starting.")


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cluster.with_run_id(cli.options_from_flags())
    code_source = os.path.abspath(_CODE_SOURCE.value or os.getcwd())
    try:
        if not _ZONE.value:
            raise errors.DistributedError("tpu_vm: give the TPU VMs' zone with --zone.")
        names = tpu_vm.slice_names(_NAMES.value or [], _NUM_SLICES.value)
        job = tpu_vm.TpuJob(
            program=program,
            tpu_names=names,
            zone=_ZONE.value,
            project=_PROJECT.value,
            run_id=options.run_id,
            run_dir=cluster.run_dir_of(options),
            code_source=code_source,
            git_revision=_GIT_REVISION.value,
            git_repo=_GIT_REPO.value or (tpu_vm.default_git_repo(code_source) if _GIT_REVISION.value else None),
            remote_dir=_REMOTE_DIR.value,
            coordinator_port=fv.coordinator_port,
            coordinator_address=_COORDINATOR.value,
            megascale_port=_MEGASCALE_PORT.value,
            init_timeout=fv.init_timeout,
            env=cluster.env_from_flags(),
            kill_tpu_holders=_KILL_HOLDERS.value,
            tpu_lockfile=_LOCKFILE.value,
            grace_period=options.grace_period,
        )
        text = tpu_vm.format_plan(job, tpu_vm.plan(job))
    except errors.DistributedError as e:
        raise app.UsageError(str(e)) from None
    if fv.dry_run:
        sys.stdout.write(text)
        return
    sys.exit(tpu_vm.run_tpu(job, options).exit_code)


if __name__ == "__main__":
    app.run(main)
