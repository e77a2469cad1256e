"""What the cluster launchers (SLURM, TPU VM, Kubernetes, SSH) share besides ``cli``.

Each cluster launcher defines, next to ``cli.define_common_flags`` and the program's mesh
flags (``distmap.flags.define_mesh_flags(cpu_devices=False)``), the flags below with
:func:`define_cluster_flags`:

* ``--dry_run``: print the script, commands or manifests instead of running them;
* ``--env=NAME=VALUE`` (repeatable): set in every process of the run;
* ``--coordinator_port``: force the coordinator's port (default: a new one per run);
* ``--devices_per_process``: simulated CPU devices per process, for CPU runs (as in
  ``launch/local.py``); unset, each process uses the accelerators it has.

:func:`check_mesh_fits` applies ``--mesh`` to the devices a launch will have, as
``launch/local.py`` does, so a config that cannot fit fails before anything is submitted.

Example:
    >>> from absl import flags
    >>> fv = flags.FlagValues()
    >>> define_cluster_flags(fv)
    >>> _ = fv(["slurm.py", "--env=A=1", "--env=B=2", "--dry_run"])
    >>> env_from_flags(fv), fv.dry_run
    ({'A': '1', 'B': '2'}, True)
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from distmap import errors
from distmap._src import flags as distmap_flags
from distmap._src.launch import shell
from distmap._src.launch.supervisor import SupervisorOptions, new_run_id


def define_cluster_flags(flag_values: flags.FlagValues = flags.FLAGS, *, devices_per_process: bool = True) -> None:
    """Define ``--dry_run``, ``--env``, ``--coordinator_port`` and ``--devices_per_process``."""
    flags.DEFINE_bool("dry_run", False, "Print what would be run or submitted, and do nothing.",
                      flag_values=flag_values)
    flags.DEFINE_multi_string(
        "env", [], "NAME=VALUE set in every process of the run (repeat the flag for more).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "coordinator_port", None,
        "Force the coordinator's port. Default: a new port for every run and every restart, so a retry never "
        "meets the previous run's coordinator.",
        lower_bound=1, upper_bound=65535, flag_values=flag_values,
    )
    if devices_per_process and "devices_per_process" not in flag_values:
        flags.DEFINE_integer(
            "devices_per_process", None,
            "Simulated CPU devices per process (a CPU run, JAX_PLATFORMS=cpu). Default: each process uses the "
            "accelerators it has.",
            lower_bound=1, flag_values=flag_values,
        )


def env_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, str]:
    """The ``--env`` values as a dict (later ones win)."""
    try:
        return shell.parse_env(flag_values["env"].value)
    except errors.DistributedError as e:
        raise app.UsageError(str(e)) from None


def check_mesh_fits(devices: int | None, what: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Raise ``app.UsageError`` if ``--mesh`` cannot be laid out on ``devices`` (``None``: unknown)."""
    mesh = flag_values["mesh"].value if "mesh" in flag_values else None
    if mesh and devices is not None and distmap_flags.mesh_size(mesh, devices) is None:
        raise app.UsageError(
            f"--mesh={distmap_flags.format_mesh(mesh)} does not fit the {devices} devices this launch starts ({what})."
        )


def with_run_id(options: SupervisorOptions) -> SupervisorOptions:
    """``options`` with a run id (a new one where none was given)."""
    if options.run_id:
        return options
    return dataclasses.replace(options, run_id=new_run_id())


def run_dir_of(options: SupervisorOptions) -> str:
    """The absolute run folder of ``options`` (which must carry a run id)."""
    assert options.run_id, "call with_run_id first"
    return os.path.abspath(os.path.join(options.log_dir, options.run_id))


__all__ = ["check_mesh_fits", "define_cluster_flags", "env_from_flags", "run_dir_of", "with_run_id"]
