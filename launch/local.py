"""Run a program as N processes on this machine, the way a pod job runs it on many.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- python train.py --lr=0.1
    python launch/local.py --flagfile=configs/local_2proc.flags -- \\
        python examples/ensemble.py --flagfile=configs/local_2proc.flags

Each rank gets its rank, the coordinator (127.0.0.1, a free port per start) and its devices
in ``DISTMAP_*`` environment variables, so a bare ``distmap.distributed.initialize()`` joins
the run. Output lines are prefixed ``[rank i]`` (JAX's start-up chatter left out; ``--console=all``
shows it) and kept whole per rank in ``--log_dir/RUN_ID/``. When a rank fails, the others are
killed at once and the launcher exits with that rank's exit code (128 + n for signal n),
naming it and quoting its log; ``--timeout`` ends the launch with exit code 124;
``--max_restarts`` restarts the whole group; nothing outlives the launcher, even one killed
with SIGKILL. ``--dry_run`` prints each rank's command and environment. The program comes
after ``--`` and reaches the ranks unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import flags

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# launcher uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src import flags as distmap_flags
from distmap._src.launch import cli, local
from distmap._src.launch.ports import free_port

cli.define_common_flags(devices_per_process=1)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start on this machine.", lower_bound=1)
_GPU_IDS = flags.DEFINE_list("gpu_ids", None, "GPU ids to use, split evenly among the processes, e.g. 0,1,2,3 "
                             "(instead of --devices_per_process).")
cli.check_flag("gpu_ids", local.check_gpu_id)
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    gpu_ids = [int(i) for i in _GPU_IDS.value] if _GPU_IDS.value else None
    per = len(gpu_ids) // _NUM_PROCESSES.value if gpu_ids else fv.devices_per_process
    cli.check_mesh_fits(_NUM_PROCESSES.value * per, f"--num_processes={_NUM_PROCESSES.value} x {per}", program)
    options = cli.options_from_flags()
    kwargs = dict(num_processes=_NUM_PROCESSES.value, devices_per_process=fv.devices_per_process, gpu_ids=gpu_ids,
                  init_timeout=fv.init_timeout, stall_timeout=fv.stall_timeout, env=cli.env_from_flags())
    if fv.dry_run:
        port = fv.coordinator_port or free_port()
        workers = local.local_workers(program, port=port, run_id=options.run_id, run_dir=options.run_dir, **kwargs)
        sys.stdout.write(f"# distmap local run {options.run_id}: {len(workers)} rank(s), coordinator 127.0.0.1:{port} "
                         f"(a free port per start when not forced); logs in {options.run_dir}\n")
        sys.stdout.write(local.describe(workers))
        return
    result = local.run_local(program, coordinator_port=fv.coordinator_port, options=options, **kwargs)
    sys.exit(result.exit_code)


if __name__ == "__main__":
    cli.run(main)
