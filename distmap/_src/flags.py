"""absl flags for the mesh, the axis mapping and multi-process start-up.

A program calls :func:`define_mesh_flags` (and, if it wants them as flags rather than
environment variables, :func:`define_distributed_flags`) at module level, then reads the
parsed values with :func:`mesh_shape_from_flags`, :func:`axis_mapping_from_flags` and
:func:`cpu_devices_from_flags`. The values are checked while absl parses the command line,
so a typo ends the program before anything starts, with a message naming the bad item::

    --mesh=data=4,model=2                   ordered; one size may be -1 (the rest of the devices)
    --axis_mapping=batch=data,ensemble=model
    --axis_mapping=batch=replica+data       one named axis over several mesh axes
    --axis_mapping=batch=data,batch=replica an ordered rule list: per array, the first rule
                                            whose mesh axes are still free wins

Devices that span several TPU slices (multi-slice) need a hybrid mesh, which
``jax.make_mesh`` does not make: ``--dcn_mesh`` says how much of each ``--mesh`` axis goes
across slices, and :func:`mesh_from_flags` then builds it with ``make_hybrid_mesh``::

    --mesh=replica=2,data=-1,model=4 --dcn_mesh=replica=2   two slices: replica across them,
                                                            data and model within each

Flagfiles in ``configs/`` set these; later flags override earlier ones, so
``--flagfile=configs/cpu_8dev.flags --mesh=data=8`` changes only the mesh.

Example:
    >>> from absl import flags
    >>> fv = flags.FlagValues()
    >>> define_mesh_flags(fv)
    >>> _ = fv(["prog", "--mesh=replica=2,data=2,model=-1", "--axis_mapping=batch=replica+data,ensemble=model"])
    >>> mesh_shape_from_flags(fv), axis_mapping_from_flags(fv)
    ({'replica': 2, 'data': 2, 'model': -1}, {'batch': ('replica', 'data'), 'ensemble': 'model'})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from absl import flags

from distmap import errors  # a standalone module: launchers load this one without JAX

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

MeshShape = dict[str, int]
AxisRules = Any  # dict[str, str | tuple[str, ...]] or list[tuple[str, str | tuple[str, ...]]]


def _items(text: str, what: str, example: str) -> list[tuple[str, str]]:
    text = text.strip()
    if not text:
        return []
    out = []
    for item in text.split(","):
        item = item.strip()
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"item {item!r} of {what} is not NAME=VALUE (like {example!r}).")
        if not _NAME.match(key):
            raise ValueError(f"item {item!r} of {what}: {key!r} is not a valid axis name (letters, digits, _).")
        out.append((key, value))
    return out


def parse_mesh(text: str) -> MeshShape:
    """``"data=4,model=2"`` to ``{"data": 4, "model": 2}``, in order; one size may be ``-1``.

    Example:
        >>> parse_mesh("replica=2, data=-1")
        {'replica': 2, 'data': -1}
        >>> parse_mesh("data=four")
        Traceback (most recent call last):
        ...
        ValueError: item 'data=four' of the mesh: size 'four' is not an integer (a positive size, or -1 for the rest).
    """
    shape: MeshShape = {}
    for key, value in _items(text, "the mesh", "data=4,model=2"):
        item = f"{key}={value}"
        try:
            size = int(value)
        except ValueError:
            raise ValueError(
                f"item {item!r} of the mesh: size {value!r} is not an integer (a positive size, or -1 for the rest)."
            ) from None
        if size == 0 or size < -1:
            raise ValueError(f"item {item!r} of the mesh: size must be positive, or -1 for the rest.")
        if key in shape:
            raise ValueError(f"mesh axis {key!r} is given twice.")
        shape[key] = size
    if list(shape.values()).count(-1) > 1:
        raise ValueError(f"at most one mesh axis may have size -1, got {shape}.")
    if not shape:
        raise ValueError("the mesh is empty; give at least one NAME=SIZE, like 'data=-1'.")
    return shape


def parse_axis_mapping(text: str) -> AxisRules:
    """``"batch=data,ensemble=model"`` to an axis mapping distmap accepts.

    A value ``a+b`` maps one named axis over several mesh axes (a tuple); a named axis given
    twice makes an ordered rule list instead of a dict. An empty string is an empty mapping.

    Example:
        >>> parse_axis_mapping("batch=replica+data,ensemble=model")
        {'batch': ('replica', 'data'), 'ensemble': 'model'}
        >>> parse_axis_mapping("batch=data,batch=replica")
        [('batch', 'data'), ('batch', 'replica')]
    """
    rules: list[tuple[str, Any]] = []
    for key, value in _items(text, "the axis mapping", "batch=data,ensemble=model"):
        parts = [p.strip() for p in value.split("+")]
        for p in parts:
            if not _NAME.match(p):
                raise ValueError(
                    f"item {f'{key}={value}'!r} of the axis mapping: {p!r} is not a valid mesh axis name "
                    "(join several with '+', like batch=replica+data)."
                )
        if len(set(parts)) != len(parts):
            raise ValueError(f"item {f'{key}={value}'!r} of the axis mapping repeats a mesh axis.")
        rules.append((key, parts[0] if len(parts) == 1 else tuple(parts)))
    names = [k for k, _ in rules]
    if len(set(names)) != len(names):
        if len(set(rules)) != len(rules):
            raise ValueError("the axis mapping repeats a rule.")
        return rules
    return dict(rules)


def format_mesh(shape: Mapping[str, int]) -> str:
    """The ``--mesh`` text of a shape: ``{"data": 4, "model": 2}`` to ``"data=4,model=2"``."""
    return ",".join(f"{k}={v}" for k, v in shape.items())


def _mapping_text(rules: AxisRules) -> str:
    items = rules.items() if isinstance(rules, Mapping) else rules
    return ",".join(f"{k}={v if isinstance(v, str) else '+'.join(v)}" for k, v in items)


class MeshParser(flags.ArgumentParser):
    """absl parser for ``--mesh``."""

    syntactic_help = "comma list of MESH_AXIS=SIZE, in order; one SIZE may be -1"

    def parse(self, argument: Any) -> MeshShape:
        if isinstance(argument, Mapping):
            return parse_mesh(format_mesh(argument))
        return parse_mesh(str(argument))

    def flag_type(self) -> str:
        return "mesh"


class AxisMappingParser(flags.ArgumentParser):
    """absl parser for ``--axis_mapping``."""

    syntactic_help = "comma list of AXIS=MESH_AXIS or AXIS=MESH_AXIS+MESH_AXIS"

    def parse(self, argument: Any) -> AxisRules:
        if isinstance(argument, (Mapping, list)):
            return parse_axis_mapping(_mapping_text(argument))
        return parse_axis_mapping(str(argument))

    def flag_type(self) -> str:
        return "axis mapping"


class _Serializer(flags.ArgumentSerializer):
    def __init__(self, to_text: Any):
        self._to_text = to_text

    def serialize(self, value: Any) -> str:
        return self._to_text(value)


def _check_mapping_fits_mesh(values: Mapping[str, Any]) -> bool:
    mesh, rules = values.get("mesh"), values.get("axis_mapping")
    if not mesh or not rules:
        return True
    items = rules.items() if isinstance(rules, Mapping) else rules
    for name, axes in items:
        for a in (axes,) if isinstance(axes, str) else axes:
            if a not in mesh:
                raise flags.ValidationError(
                    f"--axis_mapping sends {name!r} to mesh axis {a!r}, but --mesh={format_mesh(mesh)} has no axis "
                    f"{a!r} (its axes: {', '.join(mesh)})."
                )
    return True


def define_mesh_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    mesh: str | None = None,
    axis_mapping: str | None = None,
    cpu_devices: bool = True,
) -> None:
    """Define ``--mesh``, ``--axis_mapping``, ``--dcn_mesh`` and (unless ``cpu_devices=False``) ``--cpu_devices``.

    Flags already defined are left alone, so two modules may both call this. The mesh and
    the mapping are validated against each other once all flags are parsed.

    Args:
        flag_values: where to define them (default ``absl.flags.FLAGS``).
        mesh: default of ``--mesh`` (``None``: unset; :func:`mesh_shape_from_flags` then
            gives its own default).
        axis_mapping: default of ``--axis_mapping``.
        cpu_devices: also define ``--cpu_devices`` (simulated CPU devices per process).

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> define_mesh_flags(fv, mesh="data=-1")
        >>> _ = fv(["prog", "--cpu_devices=8"])
        >>> mesh_shape_from_flags(fv), cpu_devices_from_flags(fv)
        ({'data': -1}, 8)
    """
    if "mesh" not in flag_values:
        flags.DEFINE(
            MeshParser(), "mesh", mesh,
            "Mesh shape: comma list of MESH_AXIS=SIZE in order, one SIZE may be -1 (the rest), e.g. data=4,model=2.",
            flag_values=flag_values, serializer=_Serializer(format_mesh),
        )
    if "axis_mapping" not in flag_values:
        flags.DEFINE(
            AxisMappingParser(), "axis_mapping", axis_mapping,
            "Which mesh axes each named axis is split over: AXIS=MESH_AXIS[+MESH_AXIS...], comma separated, "
            "e.g. batch=data,ensemble=model. A named axis given twice makes an ordered rule list.",
            flag_values=flag_values, serializer=_Serializer(_mapping_text),
        )
        flags.register_multi_flags_validator(
            ["mesh", "axis_mapping"], _check_mapping_fits_mesh, flag_values=flag_values
        )
    define_dcn_mesh_flag(flag_values)
    if cpu_devices and "cpu_devices" not in flag_values:
        flags.DEFINE_integer(
            "cpu_devices", None,
            "Simulated CPU devices in this process (sets JAX_PLATFORMS=cpu's device count). Default: "
            "$DISTMAP_CPU_DEVICES from a launcher, else JAX's default.",
            lower_bound=1, flag_values=flag_values,
        )


def _check_dcn_fits_mesh(values: Mapping[str, Any]) -> bool:
    mesh, dcn = values.get("mesh"), values.get("dcn_mesh")
    if not dcn:
        return True
    for name, size in dcn.items():
        if size == -1:
            raise flags.ValidationError(
                f"--dcn_mesh={format_mesh(dcn)}: give {name!r} the number of slices it spans, not -1."
            )
        if mesh is None:
            continue  # the program's own default mesh: mesh_from_flags checks it
        if name not in mesh:
            raise flags.ValidationError(
                f"--dcn_mesh={format_mesh(dcn)} splits mesh axis {name!r} across slices, but --mesh={format_mesh(mesh)} "
                f"has no axis {name!r}; "
                "each --dcn_mesh axis must be a --mesh axis."
            )
        if mesh[name] != -1 and mesh[name] % size:
            raise flags.ValidationError(
                f"--dcn_mesh={format_mesh(dcn)}: mesh axis {name!r} has size {mesh[name]} (--mesh={format_mesh(mesh)}), "
                f"which {size} slices do not divide."
            )
    return True


def define_dcn_mesh_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define ``--dcn_mesh`` (the part of each ``--mesh`` axis across slices); :func:`define_mesh_flags` does.

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> define_mesh_flags(fv)
        >>> _ = fv(["prog", "--mesh=replica=2,data=-1", "--dcn_mesh=replica=2"])
        >>> dcn_mesh_from_flags(fv)
        {'replica': 2}
    """
    if "dcn_mesh" in flag_values:
        return
    flags.DEFINE(
        MeshParser(), "dcn_mesh", None,
        "For devices that span TPU slices (multi-slice; elsewhere processes): how many slices each --mesh axis is "
        "split across, MESH_AXIS=SLICES, e.g. replica=2. Each --mesh axis is then its --dcn_mesh part across slices "
        "times the rest within each slice (a hybrid mesh). Unset: one slice.",
        flag_values=flag_values, serializer=_Serializer(format_mesh),
    )
    flags.register_multi_flags_validator(["mesh", "dcn_mesh"], _check_dcn_fits_mesh, flag_values=flag_values)


def define_distributed_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define the start-up flags ``distributed.initialize_from_flags`` reads.

    ``--coordinator_address``, ``--num_processes``, ``--process_id``, ``--local_device_ids``,
    ``--cpu_devices``, ``--init_timeout``; all default to unset, so the ``DISTMAP_*``
    environment of a launcher (or JAX's cluster detection) fills what a flag does not.

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> define_distributed_flags(fv)
        >>> _ = fv(["prog", "--local_device_ids=0,1"])
        >>> fv.local_device_ids
        ['0', '1']
    """
    if "coordinator_address" not in flag_values:
        flags.DEFINE_string("coordinator_address", None, "host:port of rank 0's coordinator.", flag_values=flag_values)
    if "num_processes" not in flag_values:
        flags.DEFINE_integer("num_processes", None, "Processes in the run.", lower_bound=1, flag_values=flag_values)
    if "process_id" not in flag_values:
        flags.DEFINE_integer("process_id", None, "This process's rank.", lower_bound=0, flag_values=flag_values)
    if "local_device_ids" not in flag_values:
        flags.DEFINE_list("local_device_ids", None, "Accelerator ids this process uses.", flag_values=flag_values)
    if "init_timeout" not in flag_values:
        flags.DEFINE_float("init_timeout", None, "Seconds to wait for every process to join.", flag_values=flag_values)
    if "cpu_devices" not in flag_values:
        flags.DEFINE_integer(
            "cpu_devices", None, "Simulated CPU devices in this process.", lower_bound=1, flag_values=flag_values
        )


def _value(flag_values: flags.FlagValues, name: str) -> Any:
    return flag_values[name].value if name in flag_values else None


def mesh_shape_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, default: Mapping[str, int] | None = None
) -> MeshShape:
    """The parsed ``--mesh`` as an ordered dict for ``distmap.make_mesh``.

    Unset (or not defined), it is ``default``, or ``{"data": -1}``: every device on one axis.
    """
    value = _value(flag_values, "mesh")
    if value is None:
        return dict(default) if default is not None else {"data": -1}
    return dict(value)


def axis_mapping_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, default: AxisRules = None, *, axis_names: Any = None
) -> AxisRules:
    """The parsed ``--axis_mapping`` (a dict, or a rule list); unset, ``default`` or ``{}``.

    ``axis_names``, the named axes the program's arrays use, checks the flag against them: a
    rule for a name none of them has (``--axis_mapping=btach=data``) would split nothing, so it
    raises :class:`~distmap.errors.MeshError` naming the flag, the rule and the program's axes.
    (Without ``axis_names`` there is nothing to check against: a mapping is a rule set, and a
    given map may rightly lack some of its names.)

    Example:
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> define_mesh_flags(fv)
        >>> _ = fv(["prog", "--axis_mapping=btach=data"])
        >>> try:
        ...     axis_mapping_from_flags(fv, axis_names=("batch", "feature"))
        ... except ValueError as e:
        ...     print(e)
        --axis_mapping=btach=data names the axis 'btach', which none of this program's arrays has
        (its axes: batch, feature); a rule for it would split nothing.
    """
    value = _value(flag_values, "axis_mapping")
    if value is None:
        return default if default is not None else {}
    rules = value if isinstance(value, list) else dict(value)
    if axis_names is not None:
        known = tuple(axis_names)
        for name, _ in rules if isinstance(rules, list) else rules.items():
            if name not in known:
                raise errors.MeshError(
                    f"--axis_mapping={_mapping_text(rules)} names the axis {name!r}, which none of this program's "
                    f"arrays has (its axes: {', '.join(known)}); a rule for it would split nothing."
                )
    return rules


def dcn_mesh_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> MeshShape | None:
    """The parsed ``--dcn_mesh`` (``{mesh axis: slices}``), or ``None`` when unset or not defined."""
    value = _value(flag_values, "dcn_mesh")
    return dict(value) if value else None


def mesh_from_flags(
    flag_values: flags.FlagValues = flags.FLAGS, devices: Any = None, default: Mapping[str, int] | None = None
) -> Any:
    """The program's mesh from ``--mesh`` and ``--dcn_mesh``, over ``devices`` (default: all).

    Without ``--dcn_mesh`` this is ``distmap.make_mesh(--mesh)``. With it, ``--mesh`` is the
    whole mesh (one size may be -1) and each axis ``a`` is split as ``dcn_mesh[a]`` slices
    times ``mesh[a] / dcn_mesh[a]`` devices within each, by ``make_hybrid_mesh`` (slices are
    the devices' ``slice_index``; where devices report a single slice, processes). Devices
    that span several slices without ``--dcn_mesh`` are refused with an error naming it.

    Example:
        >>> import jax
        >>> from absl import flags
        >>> fv = flags.FlagValues()
        >>> define_mesh_flags(fv)
        >>> _ = fv(["prog", "--mesh=data=-1,model=2", "--dcn_mesh=data=1"])
        >>> dict(mesh_from_flags(fv, jax.devices()[:8]).shape)
        {'data': 4, 'model': 2}
    """
    import jax

    from distmap import errors
    from distmap._src import hybrid_mesh, mesh

    shape = mesh_shape_from_flags(flag_values, default)
    dcn = dcn_mesh_from_flags(flag_values)
    devs = list(jax.devices() if devices is None else devices)
    if not dcn:
        slices = {getattr(d, "slice_index", None) for d in devs}
        if None not in slices and len(slices) > 1:
            raise errors.MeshError(
                f"the {len(devs)} devices span {len(slices)} TPU slices, and a mesh over several slices must say which "
                f"axes cross them: give --dcn_mesh, e.g. --dcn_mesh={next(iter(shape))}={len(slices)} with "
                f"--mesh={format_mesh(shape)}."
            )
        return mesh.make_mesh(shape, devs)
    total = mesh_size(shape, len(devs))
    if total != len(devs):
        raise errors.MeshError(f"--mesh={format_mesh(shape)} does not fit the {len(devs)} devices.")
    known = 1
    for v in shape.values():
        known *= v if v != -1 else 1
    sizes = {k: (v if v != -1 else len(devs) // known) for k, v in shape.items()}
    for k, n in dcn.items():
        if k not in sizes or sizes[k] % n:
            raise errors.MeshError(
                f"--dcn_mesh={format_mesh(dcn)} does not divide --mesh={format_mesh(shape)} ({format_mesh(sizes)} "
                f"over {len(devs)} devices)."
            )
    ici = {k: v // dcn.get(k, 1) for k, v in sizes.items()}
    return hybrid_mesh.make_hybrid_mesh(ici, dcn, devs)


def cpu_devices_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> int | None:
    """``--cpu_devices`` if the program defined and set it, else ``None`` (use the environment)."""
    return _value(flag_values, "cpu_devices")


def mesh_size(shape: Mapping[str, int], devices: int) -> int | None:
    """Devices ``shape`` needs given ``devices`` (resolving -1); ``None`` if it cannot fit.

    Example:
        >>> mesh_size({"data": -1, "model": 2}, 8), mesh_size({"data": 3}, 8)
        (8, None)
    """
    known = 1
    for v in shape.values():
        known *= v if v != -1 else 1
    if -1 in shape.values():
        return devices if devices % known == 0 else None
    return known if known == devices else None


__all__ = [
    "AxisMappingParser",
    "MeshParser",
    "axis_mapping_from_flags",
    "cpu_devices_from_flags",
    "define_distributed_flags",
    "define_mesh_flags",
    "format_mesh",
    "mesh_shape_from_flags",
    "mesh_size",
    "parse_axis_mapping",
    "parse_mesh",
]
