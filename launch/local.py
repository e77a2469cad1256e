"""Run a program as N processes on this machine, the way a pod job runs it on many.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- python train.py --lr=0.1
    python launch/local.py --flagfile=configs/local_2proc.flags -- \\
        python examples/ensemble.py --flagfile=configs/local_2proc.flags

Each rank gets its rank, the coordinator (127.0.0.1, a free port per start) and its devices
in ``DISTMAP_*`` environment variables, so a bare ``distmap.distributed.initialize()`` joins
the run. Output lines are prefixed ``[rank i]`` and kept per rank in ``--log_dir/RUN_ID/``.
When a rank fails, the others are stopped within seconds and the launcher exits with that
rank's exit code (128 + n for signal n), naming it and quoting its log; ``--timeout`` ends
the launch with exit code 124; ``--max_restarts`` restarts the whole group.
Everything after ``--`` reaches the program unchanged.
"""

from __future__ import annotations

import sys

from absl import app, flags

import _light  # launch/ is on sys.path: this file runs as a script

_light.use_light_distmap()  # the launcher needs distmap's launch code (from this checkout), not JAX

from distmap import errors  # noqa: E402
from distmap._src import flags as distmap_flags  # noqa: E402
from distmap._src.launch import cli, local  # noqa: E402

cli.define_common_flags()
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start on this machine.", lower_bound=1)
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 1, "Simulated CPU devices per process (ignored with --gpu_ids).", lower_bound=1
)
_GPU_IDS = flags.DEFINE_list("gpu_ids", None, "GPU ids to use, split evenly among the processes, e.g. 0,1,2,3.")
_PORT = flags.DEFINE_integer("coordinator_port", None, "Force the coordinator's port (default: a free one per start).")
# Shared configs set --mesh for the program; the launcher checks it fits the devices it starts.
distmap_flags.define_mesh_flags(cpu_devices=False)
flags.adopt_module_key_flags(cli)  # --helpshort lists the shared flags too
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    gpu_ids = [int(i) for i in _GPU_IDS.value] if _GPU_IDS.value else None
    total = len(gpu_ids) if gpu_ids else _NUM_PROCESSES.value * _DEVICES.value
    mesh = flags.FLAGS.mesh
    if mesh and distmap_flags.mesh_size(mesh, total) is None:
        raise app.UsageError(
            f"--mesh={distmap_flags.format_mesh(mesh)} does not fit the {total} devices this launch starts "
            f"(--num_processes={_NUM_PROCESSES.value} x {len(gpu_ids) // _NUM_PROCESSES.value if gpu_ids else _DEVICES.value})."
        )
    try:
        result = local.run_local(
            program,
            num_processes=_NUM_PROCESSES.value,
            devices_per_process=_DEVICES.value,
            gpu_ids=gpu_ids,
            coordinator_port=_PORT.value,
            init_timeout=flags.FLAGS.init_timeout,
            options=cli.options_from_flags(),
        )
    except errors.DistributedError as e:
        raise app.UsageError(str(e)) from None
    sys.exit(result.exit_code)


if __name__ == "__main__":
    app.run(main)
