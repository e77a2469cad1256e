"""absl glue: :func:`initialize` from a program's absl flags, and those flags for the start-up check.

Example:
    >>> from absl import flags
    >>> fv = flags.FlagValues()
    >>> _ = flags.DEFINE_integer("steps", 10, "Training steps.", flag_values=fv)
    >>> fv(["prog"])
    ['prog']
    >>> flag_config(fv)
    {'steps': 10}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distmap._src.joining import initialize
from distmap._src.run_config import DistributedConfig

_PER_RANK_FLAGS = frozenset({"process_id", "local_device_ids"})


def initialize_from_flags(
    flag_values: Any = None, *, fingerprint: bool = True, extra: Mapping[str, Any] | None = None
) -> DistributedConfig:
    """:func:`initialize` with values from absl flags, for programs that define them.

    Reads ``--coordinator_address``, ``--num_processes``, ``--process_id``,
    ``--local_device_ids``, ``--cpu_devices`` and ``--init_timeout`` where the program defined
    them (``distmap.flags.define_distributed_flags()`` defines them all) and set them; the
    rest comes from the environment or JAX's cluster detection, as in :func:`initialize`.
    With ``fingerprint=True`` every flag value of the program (all flags except absl's own
    and the per-rank ones) is part of the start-up check, so ranks started with different
    flags fail at once, naming the flags.

    Args:
        flag_values: the parsed ``absl.flags.FlagValues`` (default ``absl.flags.FLAGS``).
        fingerprint: compare the flag values across processes.
        extra: more configuration to compare.

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> _ = flags.DEFINE_integer("steps", 10, "Training steps.", flag_values=fv)
        >>> fv(["prog", "--steps=5"])
        ['prog']
        >>> initialize_from_flags(fv).mode
        'single'
    """
    from absl import flags as absl_flags

    fv = absl_flags.FLAGS if flag_values is None else flag_values

    def value(name: str) -> Any:
        return fv[name].value if name in fv else None

    config: dict[str, Any] | bool = False
    if fingerprint:
        config = dict(flag_config(fv))
        config.update(extra or {})
    return initialize(
        value("coordinator_address"),
        value("num_processes"),
        value("process_id"),
        value("local_device_ids"),
        cpu_devices=value("cpu_devices"),
        initialization_timeout=value("init_timeout"),
        fingerprint=config,
    )


def flag_config(flag_values: Any = None) -> dict[str, Any]:
    """The program's flag values for the start-up check: all but absl's own and per-rank flags."""
    from absl import flags as absl_flags

    fv = absl_flags.FLAGS if flag_values is None else flag_values
    out: dict[str, Any] = {}
    for module, module_flags in fv.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for f in module_flags:
            if f.name not in _PER_RANK_FLAGS:
                out[f.name] = f.value
    return dict(sorted(out.items()))


__all__ = ["flag_config", "initialize_from_flags"]
