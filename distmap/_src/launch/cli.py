"""The absl flags every launcher in ``launch/`` shares, the program after ``--``, and ``run``.

A launcher calls :func:`define_common_flags` at module level next to its own flags (they
become key flags of the launcher, so its ``--help`` lists them), turns them into
:class:`~distmap._src.launch.supervisor.SupervisorOptions` with :func:`options_from_flags`,
takes the program from ``argv`` with :func:`program_from_argv`, and starts with
:func:`run` instead of ``app.run`` (a usage error is printed alone, not after the help).

Shared flags: ``--timeout``, ``--max_restarts``, ``--grace_period``, ``--init_timeout``,
``--stall_timeout``, ``--log_dir`` (absl.logging's flag where that is loaded; empty means
``runs/``), ``--run_id``, ``--tail_lines``, ``--console``, ``--dry_run``, ``--env``,
``--coordinator_port``, ``--devices_per_process`` where the launcher has it, and the program's
``--mesh``/``--axis_mapping`` (a shared config sets them; the launcher checks they fit). Every value
is checked while absl parses the command line (ports in range, run ids that cannot break a
path or a manifest), so a mistake ends the launcher before anything starts.

Example:
    >>> fv = flags.FlagValues()
    >>> define_common_flags(fv)
    >>> argv = fv(["local.py", "--timeout=30", "--env=A=1", "--", "python", "train.py", "--lr=0.1"])
    >>> program_from_argv(argv, ["local.py", "--timeout=30", "--env=A=1", "--", "python", "train.py", "--lr=0.1"])
    ['python', 'train.py', '--lr=0.1']
    >>> options_from_flags(fv).timeout, env_from_flags(fv)
    (30.0, {'A': '1'})
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from distmap import errors
from distmap._src import flags as distmap_flags
from distmap._src.launch import contract, shell
from distmap._src.launch.console import MODES
from distmap._src.launch.supervisor import SupervisorOptions

_DEFAULT_LOG_DIR = "runs"


def check_flag(name: str, check: Callable[[Any], object], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Register ``check(value)`` as absl validator of ``--name``; a ``ValueError`` it raises is the message.

    ``None`` (the flag unset) is not checked.
    """

    def validator(value: Any) -> bool:
        if value is None:
            return True
        try:
            for v in value if isinstance(value, list) else [value]:
                check(v)
        except (ValueError, errors.DistributedError) as e:
            raise flags.ValidationError(str(e)) from None
        return True

    flags.register_validator(name, validator, flag_values=flag_values)


def define_port_flag(name: str, default: int | None, help: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """An integer flag for a TCP port, range-checked (1-65535) while absl parses."""
    flags.DEFINE_integer(name, default, help, lower_bound=1, upper_bound=65535, flag_values=flag_values)


def define_common_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    init_timeout: float | None = 60.0,
    grace_period: float = 30.0,
    log_dir: str = "runs",
    devices_per_process: int | bool | None = None,
) -> None:
    """Define the launcher flags every launcher shares (defaults adjustable per launcher).

    Args:
        flag_values: where to define them.
        init_timeout: default of ``--init_timeout`` (a cluster launcher whose hosts start
            minutes apart wants more).
        grace_period: default of ``--grace_period``.
        log_dir: default of ``--log_dir``.
        devices_per_process: default of ``--devices_per_process``; ``False``: no such flag.
    """
    fv = flag_values
    flags.DEFINE_float(
        "timeout", None,
        "Seconds the whole launch may run, restarts included; then every rank is stopped and the "
        "launcher exits with code 124. Default: no limit.",
        lower_bound=0.0, flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_restarts", 0, "Times the whole group is restarted (fresh coordinator port) after a rank fails. Never "
        "after a stop: a signal to the launcher, or a rank ended by SIGTERM/SIGINT (a scheduler's stop, a "
        "preemption notice).",
        lower_bound=0, flag_values=fv,
    )
    flags.DEFINE_float(
        "restart_backoff", 1.0,
        "Seconds before the first restart, doubling for each further one (at most 60).",
        lower_bound=0.0, flag_values=fv,
    )
    flags.DEFINE_float(
        "grace_period", grace_period,
        "Seconds every rank gets between SIGTERM and SIGKILL when the run is stopped (Ctrl-C or SIGTERM to the "
        "launcher, a scheduler's stop, a rank that was stopped), to save and end. A failed run is stopped at once.",
        lower_bound=0.0, flag_values=fv,
    )
    flags.DEFINE_float(
        "init_timeout", init_timeout,
        "Seconds every rank waits for all to join (DISTMAP_INIT_TIMEOUT); a rank that never starts "
        "ends the run with a clear time-out error after this.",
        lower_bound=0.0, flag_values=fv,
    )
    flags.DEFINE_float(
        "stall_timeout", 120.0,
        "Seconds a rank may make no progress while the others wait for it before the run fails naming it "
        f"({contract.STALL_TIMEOUT}); 0 turns the progress watch (stall and divergence checks) off.",
        lower_bound=0.0, flag_values=fv,
    )
    if "log_dir" not in fv:  # absl.logging defines --log_dir too; then the launchers share it
        flags.DEFINE_string("log_dir", log_dir, "Run folders (per-rank logs, launch.json) go under this folder.",
                            flag_values=fv)
    global _DEFAULT_LOG_DIR
    _DEFAULT_LOG_DIR = log_dir
    flags.DEFINE_string("run_id", None, "Name of this run's folder and DISTMAP_RUN_ID (letters, digits, _ . -). "
                        "Default: time and pid.", flag_values=fv)
    check_flag("run_id", contract.check_run_id, fv)
    flags.DEFINE_integer("tail_lines", 20, "Lines of a failed rank's log quoted in the failure message.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_enum(
        "console", "brief", MODES,
        "What rank output reaches the console: brief (the program's output, warnings, errors, distmap's lines; "
        "without JAX's INFO lines and Gloo's connection lines), all (every line), none. The logs keep every line.",
        flag_values=fv,
    )
    flags.DEFINE_bool("dry_run", False, "Print what would be run or submitted, and do nothing.", flag_values=fv)
    flags.DEFINE_bool(
        "check_collectives", False,
        f"Check at every execution, inside jax.jit too, that all ranks run the same sharded distmap.vmap calls in the "
        f"same order ({contract.CHECK_COLLECTIVES}=1): one host callback and a 3-int all-gather per sharded call.",
        flag_values=fv,
    )
    flags.DEFINE_multi_string("env", [], "NAME=VALUE set in every process of the run (repeat the flag for more).",
                              flag_values=fv)
    check_flag("env", lambda item: shell.parse_env([item]), fv)
    define_port_flag(
        "coordinator_port", None,
        "Force the coordinator's port. Default: a new port for every run and every restart, so a retry never "
        "meets the previous run's coordinator.", fv,
    )
    if devices_per_process is not False and "devices_per_process" not in fv:
        flags.DEFINE_integer(
            "devices_per_process", devices_per_process,
            "Simulated CPU devices per process (a CPU run, JAX_PLATFORMS=cpu). Unset: each process uses the "
            "accelerators it has.",
            lower_bound=1, flag_values=fv,
        )
    # The program's mesh flags, as the shared configs set them: the launcher checks they fit.
    distmap_flags.define_mesh_flags(fv, cpu_devices=False)


def options_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> SupervisorOptions:
    """The supervisor options the shared flags ask for (a new run id where none was given)."""
    fv = flag_values

    def value(name: str) -> Any:  # absl types every Flag.value as Optional; these flags have defaults
        return fv[name].value

    run_id = {"run_id": value("run_id")} if value("run_id") else {}
    return SupervisorOptions(
        timeout=value("timeout"),
        grace_period=value("grace_period"),
        max_restarts=value("max_restarts"),
        restart_backoff=value("restart_backoff"),
        log_dir=value("log_dir") or _DEFAULT_LOG_DIR,
        tail_lines=value("tail_lines"),
        console=value("console"),
        **run_id,
    )


def env_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, str]:
    """What every rank gets beyond the contract: ``--check_collectives``, then the ``--env`` values (later win)."""
    env = {contract.CHECK_COLLECTIVES: "1"} if flag_values["check_collectives"].value else {}
    env.update(shell.parse_env(flag_values["env"].value))
    return env


def program_from_argv(argv: Sequence[str], raw_argv: Sequence[str] | None = None) -> list[str]:
    """The program to launch: what follows ``--`` on the command line.

    ``raw_argv`` (default ``sys.argv``) is the command line before absl parsed it: absl
    takes flags from anywhere before ``--``, so without one a program's ``--mesh`` would be
    read as the launcher's. The ``--`` is therefore required.

    Raises:
        app.UsageError: no program, or no ``--`` before it.
    """
    raw = list(sys.argv if raw_argv is None else raw_argv)
    program = list(argv[1:])
    example = f"python {raw[0] if raw else 'launch/local.py'} [flags] -- python train.py --flag=value"
    if not program:
        raise app.UsageError(f"no program to run: put it after '--', e.g. {example}")
    after = raw[raw.index("--") + 1 :] if "--" in raw[1:] else None
    if after != program:
        stray = program if after is None else program[: len(program) - len(after)]
        raise app.UsageError(
            f"put '--' before the program: {shell.join(stray)!r} came before it, so the launcher would have read "
            f"the program's flags as its own. Write: {example}"
        )
    return program


def _read_mesh(program: Sequence[str]) -> str | None:
    """The last ``--mesh`` in ``program``'s arguments, its ``--flagfile`` s read (where readable)."""
    args = list(program[1:])
    if "--" in args:
        args = args[: args.index("--")]
    try:
        args = flags.FlagValues().read_flags_from_files(["prog", *args], force_gnu=True)[1:]
    except (flags.Error, OSError):
        pass  # a flagfile only the hosts can read: check what is given directly
    mesh = None
    for i, a in enumerate(args):
        if a.startswith("--mesh="):
            mesh = a[len("--mesh="):]
        elif a == "--mesh" and i + 1 < len(args):
            mesh = args[i + 1]
    return mesh


def check_mesh_fits(devices: int | None, what: str, program: Sequence[str] = (),
                    flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Refuse (``app.UsageError``) a ``--mesh`` that cannot be laid out on ``devices`` (``None``: unknown).

    Both meshes are checked: the launcher's ``--mesh`` (a shared config sets it) and the
    program's own, read from its arguments after ``--`` and the flagfiles they name.
    """
    meshes = []
    if "mesh" in flag_values and flag_values["mesh"].value:
        meshes.append(("--mesh", flag_values["mesh"].value))
    text = _read_mesh(program)
    if text is not None:
        try:
            meshes.append(("the program's --mesh", distmap_flags.parse_mesh(text)))
        except ValueError as e:
            raise app.UsageError(f"the program's --mesh={text}: {e}") from None
    for source, mesh in meshes:
        if devices is not None and distmap_flags.mesh_size(mesh, devices) is None:
            raise app.UsageError(
                f"{source}={distmap_flags.format_mesh(mesh)} does not fit the {devices} devices this launch starts "
                f"({what})."
            )


def _parse(argv: list[str]) -> list[str]:
    """absl's parsing, but a program given without ``--`` is named as such, not as an unknown flag."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"{argv[0] if argv else 'launcher'}: error: {e}\n")
        if "--" not in argv[1:]:
            words = [a for a in argv[1:] if not a.startswith("-")]
            if words:
                sys.stderr.write(
                    f"The program goes after '--': {shell.join(words[:1])} ... came without one, so its own flags "
                    f"were read as the launcher's. Write: python {argv[0]} [launcher flags] -- "
                    f"{shell.join(words[:1])} [its arguments]\n")
        sys.stderr.write("Pass --help for the flags.\n")
        sys.exit(1)


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run(main)``, with a usage error printed alone (and exit code 1), not after the help."""

    def checked(argv: list[str]) -> None:
        try:
            main(argv)
        except app.UsageError as e:
            sys.stderr.write(f"{argv[0]}: error: {e}\nPass --help for the flags.\n")
            sys.exit(1)
        except errors.DistributedError as e:  # a bad value found late (a hostfile's contents, say)
            sys.stderr.write(f"{argv[0]}: error: {e}\n")
            sys.exit(1)

    app.run(checked, flags_parser=_parse)


__all__ = [
    "check_flag",
    "check_mesh_fits",
    "define_common_flags",
    "define_port_flag",
    "env_from_flags",
    "options_from_flags",
    "program_from_argv",
    "run",
]
