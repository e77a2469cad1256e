"""The mesh lowering of ``distmap.vmap`` through ``jax.shard_map`` (in progress)."""

from __future__ import annotations

from typing import Any


def resolve(parsed_axes, mesh, axis_mapping) -> Any:
    if mesh is None and axis_mapping is None:
        return None
    raise NotImplementedError("mesh lowering")


def call(fn, plan, lowering, args, kwargs):
    raise NotImplementedError
