"""Run a program on every worker of one or more TPU VM slices, through ``gcloud compute tpus tpu-vm``.

    python launch/tpu_vm.py --tpu_names=my-v5e-32 --zone=us-west4-a -- \\
        python3 examples/ensemble.py --mesh=data=-1,model=4
    python launch/tpu_vm.py --flagfile=configs/tpu_v5e_32.flags -- \\
        python3 examples/ensemble.py --flagfile=configs/tpu_v5e_32.flags
    python launch/tpu_vm.py --flagfile=configs/tpu_v5e_32x2_multislice.flags --dry_run -- python3 train.py

The working tree (or ``--git_revision`` of ``--git_repo``) is shipped to **every** worker;
whatever holds the TPU and ``/tmp/libtpu_lockfile`` are cleaned up; ``--setup`` commands run on
every worker in the code folder (``--setup='pip install -e . "jax[tpu]"'``); then the program starts
on all workers of all slices at once, one ``gcloud ... ssh --worker=W`` per worker, each
supervised as ``launch/local.py`` supervises a rank: output prefixed ``[NAME worker W]``, logs
in ``--log_dir/RUN_ID/NAME.worker_W.log``, fail fast (a failing worker stops every other),
``--timeout``, ``--max_restarts``; each remote program ends with its ssh session. The exit
status is that of the worker that failed first. Several slices (``--tpu_names=a,b`` or
``--num_slices=N``) are joined through the ``MEGASCALE_*`` variables, with slice 0's worker 0
as coordinator. ``--gcloud_arg`` adds arguments to every ``gcloud ... ssh``/``scp``
(``--gcloud_arg=--internal-ip``, ``--gcloud_arg=--tunnel-through-iap``).

``--dry_run`` prints the run as a bash script that runs as printed. The program comes after
``--`` and reaches the workers unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import flags

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# launcher uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src import flags as distmap_flags
from distmap._src.launch import cli, tpu_vm

cli.define_common_flags(init_timeout=300.0, devices_per_process=False)
_NAMES = flags.DEFINE_list("tpu_names", None, "The TPU VM of each slice (or one prefix with --num_slices).",
                           required=True)
cli.check_flag("tpu_names", tpu_vm.check_tpu_name)
_NUM_SLICES = flags.DEFINE_integer("num_slices", None, "Slices NAME-0 .. NAME-(N-1) of --tpu_names=NAME (a queued "
                                   "resource's nodes).", lower_bound=1)
_ZONE = flags.DEFINE_string("zone", None, "The TPU VMs' zone.", required=True)
cli.check_flag("zone", tpu_vm.check_zone)
_PROJECT = flags.DEFINE_string("project", None, "The TPU VMs' project (default: gcloud's).")
cli.check_flag("project", tpu_vm.check_project)
_WORKERS = flags.DEFINE_integer("workers_per_slice", None, "Hosts per slice (default: asked of gcloud ... describe).",
                                lower_bound=1)
_SETUP = flags.DEFINE_multi_string("setup", [], "A shell command run on every worker in the code folder before the "
                                   "program, e.g. 'pip install -e . jax[tpu]' (repeat for more; they run in order).")
_GCLOUD_ARG = flags.DEFINE_multi_string("gcloud_arg", [], "More arguments for every gcloud ... ssh and scp, e.g. "
                                        "--gcloud_arg=--internal-ip or --gcloud_arg=--tunnel-through-iap.")
_GIT_REVISION = flags.DEFINE_string("git_revision", None, "Check out this revision on every worker instead of "
                                    "shipping the working tree.")
_GIT_REPO = flags.DEFINE_string("git_repo", None, "Repository to clone for --git_revision (default: origin).")
_CODE_SOURCE = flags.DEFINE_string("code_source", None, "The working tree to ship (default: this directory).")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", None, "Where the code goes on each worker, relative to its home "
                                  "(default: distmap_code/RUN_ID); the program starts there.")
cli.check_flag("remote_dir", tpu_vm.check_remote_dir)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Several slices: the internal address of the first "
                                   "slice's worker 0 (default: asked of gcloud ... describe).")
cli.define_port_flag("megascale_port", 8080, "The port slices talk on (MEGASCALE_PORT).")
_KILL_HOLDERS = flags.DEFINE_bool("kill_tpu_holders", True, "Before starting, end every process that holds a TPU "
                                  "device (a crashed earlier run).")
_LOCKFILE = flags.DEFINE_string("tpu_lockfile", tpu_vm.TPU_LOCKFILE, "libtpu's lock file, removed before starting.")
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cli.options_from_flags()
    code_source = os.path.abspath(_CODE_SOURCE.value or os.getcwd())
    names = tpu_vm.slice_names(_NAMES.value, _NUM_SLICES.value)
    cli.check_mesh_fits(None, "TPU chips per host are not known here", program)  # the meshes' syntax, at least
    job = tpu_vm.TpuJob(
        program=program,
        tpu_names=names,
        zone=_ZONE.value,
        project=_PROJECT.value,
        run_id=options.run_id,
        run_dir=options.run_dir,
        code_source=code_source,
        git_revision=_GIT_REVISION.value,
        git_repo=_GIT_REPO.value or (tpu_vm.default_git_repo(code_source) if _GIT_REVISION.value else None),
        remote_dir=_REMOTE_DIR.value,
        setup=_SETUP.value,
        workers_per_slice=_WORKERS.value,
        coordinator_port=fv.coordinator_port,
        coordinator_address=_COORDINATOR.value,
        megascale_port=fv.megascale_port,
        init_timeout=fv.init_timeout,
        stall_timeout=fv.stall_timeout,
        env=cli.env_from_flags(),
        kill_tpu_holders=_KILL_HOLDERS.value,
        tpu_lockfile=_LOCKFILE.value,
        gcloud_args=_GCLOUD_ARG.value,
    )
    text = tpu_vm.format_plan(job, options)
    if fv.dry_run:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        return
    sys.exit(tpu_vm.run_tpu(job, options).exit_code)


if __name__ == "__main__":
    cli.run(main)
