"""absl flags for programs: ``--mesh``, ``--axis_mapping``, ``--dcn_mesh``, ``--cpu_devices`` and start-up flags.

Example:
    >>> from absl import flags
    >>> import distmap.flags
    >>> fv = flags.FlagValues()
    >>> distmap.flags.define_mesh_flags(fv)
    >>> _ = fv(["prog", "--mesh=data=4,model=2", "--axis_mapping=batch=data"])
    >>> distmap.flags.mesh_shape_from_flags(fv)
    {'data': 4, 'model': 2}
"""

from distmap._src.flags import (
    AxisMappingParser,
    MeshParser,
    axis_mapping_from_flags,
    cpu_devices_from_flags,
    dcn_mesh_from_flags,
    define_dcn_mesh_flag,
    define_distributed_flags,
    define_mesh_flags,
    format_mesh,
    mesh_from_flags,
    mesh_shape_from_flags,
    parse_axis_mapping,
    parse_mesh,
)

__all__ = [
    "AxisMappingParser",
    "MeshParser",
    "axis_mapping_from_flags",
    "cpu_devices_from_flags",
    "dcn_mesh_from_flags",
    "define_dcn_mesh_flag",
    "define_distributed_flags",
    "define_mesh_flags",
    "format_mesh",
    "mesh_from_flags",
    "mesh_shape_from_flags",
    "parse_axis_mapping",
    "parse_mesh",
]
