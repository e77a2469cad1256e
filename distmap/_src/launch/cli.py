"""The absl flags every launcher in ``launch/`` shares, and the program after ``--``.

A launcher calls :func:`define_common_flags` at module level next to its own flags, turns
them into :class:`~distmap._src.launch.supervisor.SupervisorOptions` with
:func:`options_from_flags`, and takes the program to run from ``argv`` with
:func:`program_from_argv`. absl stops parsing at ``--``; everything after it reaches the
program unchanged, as an argument list.

Shared flags: ``--timeout``, ``--max_restarts``, ``--grace_period``, ``--init_timeout``,
``--log_dir`` (absl.logging's flag where that is loaded; empty means ``runs/``), ``--run_id``,
``--tail_lines``, ``--quiet``.

Example:
    >>> from absl import flags
    >>> fv = flags.FlagValues()
    >>> define_common_flags(fv)
    >>> argv = fv(["local.py", "--timeout=30", "--", "python", "train.py", "--lr=0.1"])
    >>> program_from_argv(argv), options_from_flags(fv).timeout
    (['python', 'train.py', '--lr=0.1'], 30.0)
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from distmap._src.launch.supervisor import SupervisorOptions

_DEFAULT_LOG_DIR = "runs"


def define_common_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    init_timeout: float | None = 60.0,
    grace_period: float = 5.0,
    log_dir: str = "runs",
) -> None:
    """Define the launcher flags every launcher shares (defaults adjustable per launcher).

    Args:
        flag_values: where to define them.
        init_timeout: default of ``--init_timeout`` (a cluster launcher whose hosts start
            minutes apart wants more).
        grace_period: default of ``--grace_period``.
        log_dir: default of ``--log_dir``.
    """
    flags.DEFINE_float(
        "timeout", None,
        "Seconds the whole launch may run, restarts included; then every rank is stopped and the "
        "launcher exits with code 124. Default: no limit.",
        lower_bound=0.0, flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_restarts", 0, "Times the whole group is restarted (fresh coordinator port) after a rank fails.",
        lower_bound=0, flag_values=flag_values,
    )
    flags.DEFINE_float(
        "grace_period", grace_period,
        "Seconds between SIGTERM and SIGKILL when stopping ranks (JAX may ignore SIGTERM).",
        lower_bound=0.0, flag_values=flag_values,
    )
    flags.DEFINE_float(
        "init_timeout", init_timeout,
        "Seconds every rank waits for all to join (DISTMAP_INIT_TIMEOUT); a rank that never starts "
        "ends the run with a clear time-out error after this.",
        lower_bound=0.0, flag_values=flag_values,
    )
    if "log_dir" not in flag_values:  # absl.logging defines --log_dir too; then the launchers share it
        flags.DEFINE_string("log_dir", log_dir, "Run folders (per-rank logs, launch.json) go under this folder.",
                            flag_values=flag_values)
    global _DEFAULT_LOG_DIR
    _DEFAULT_LOG_DIR = log_dir
    flags.DEFINE_string("run_id", None, "Name of this run's folder and DISTMAP_RUN_ID. Default: time and pid.",
                        flag_values=flag_values)
    flags.DEFINE_integer("tail_lines", 20, "Lines of a failed rank's log quoted in the failure message.",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_bool("quiet", False, "Only write rank output to the log files, not to stdout.",
                      flag_values=flag_values)


def options_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> SupervisorOptions:
    """The supervisor options the shared flags ask for.

    ``--log_dir`` is absl's own flag where ``absl.logging`` is loaded (as under ``app.run``);
    left empty it means ``runs/``.
    """
    fv = flag_values
    return SupervisorOptions(
        timeout=fv["timeout"].value,
        grace_period=fv["grace_period"].value,
        max_restarts=fv["max_restarts"].value,
        log_dir=fv["log_dir"].value or _DEFAULT_LOG_DIR,
        run_id=fv["run_id"].value,
        tail_lines=fv["tail_lines"].value,
        prefix_output=not fv["quiet"].value,
    )


def program_from_argv(argv: Sequence[str]) -> list[str]:
    """The program to launch: what absl left after the launcher's own name (``--`` removed).

    Raises:
        app.UsageError: no program was given.
    """
    program = list(argv[1:])
    if not program:
        raise app.UsageError(
            "no program to run: put it after '--', e.g. "
            "python launch/local.py --num_processes=2 -- python train.py --flag=value"
        )
    return program


__all__ = ["define_common_flags", "options_from_flags", "program_from_argv"]
