"""The collective check: every rank runs the same sharded maps in the same order, counted as they execute.

The progress watch (``progress``) counts what it sees on the host: an un-jitted sharded
``distmap.vmap`` is seen at every call, but under ``jax.jit`` only when it is traced, so two
ranks that run different numbers of jitted steps pair their collectives wrongly and no count
shows it. This check is part of the traced computation, so it runs at every execution:

* the map engine calls :func:`traced_map` once per trace of a sharded map whose mesh spans
  processes, inside the ``jit`` being traced (``distmap/_src/map/sharded.py``). It adds a small
  ``shard_map`` over the same mesh: on every device an ``io_callback`` counts the execution
  (a per-device counter on the host) and returns ``(count, fingerprint of the call's key,
  process)``; one all-gather of those three int32 per device brings every device's answer to
  every device, and only where they differ does a second callback report;
* every execution is also counted by the progress watch (:func:`progress.note`, in
  execution order), so :func:`distmap.distributed.verify` compares executions, not traces:
  a rank that skipped a jitted step is caught at the next ``verify``;
* a mismatch (another call, or another count, at the same collective) ends the run: the
  ranks in the minority print which call they ran against which, and exit with
  ``EXIT_DIVERGED`` (77), the others follow with ``EXIT_PEER_FAILED`` (78), so a launcher
  names the right rank. The ranks are stopped before the mismatched collective's result is
  used by anything that waits for it.

It costs one callback per device and one small all-gather per sharded call (measured on the
main job by ``benchmarks/bench_launch.py --only=check``), so it is off unless asked for:
``DISTMAP_CHECK_COLLECTIVES=1`` (launchers: ``--check_collectives``) or
``distmap.distributed.initialize(check_collectives=True)``.

Contract with the map engine (any engine can honour it):

``values = traced_map(key, mesh, values)``
    Call inside the trace of the jitted computation that runs a sharded map over ``mesh``
    (a ``jax.sharding.Mesh`` or the abstract mesh of the trace), once per map, only when the
    mesh spans processes, just before the map's ``shard_map`` is applied to its inputs
    ``values`` (any pytree of arrays). ``key`` is a tuple whose ``repr`` is the same on every
    rank that runs the same map (names, sizes, shapes, dtypes; no addresses): the engine's
    progress key. It returns ``values`` unchanged but sequenced after the check (an
    ``optimization_barrier``), so the map's collectives wait for it; pass those on to the
    ``shard_map``. When the check is off it returns ``values`` and adds nothing to the trace.

Example:
    >>> from distmap._src import collective_check
    >>> collective_check.active()  # off outside a multi-process run that asked for it
    False
"""

from __future__ import annotations

import math
import sys
import threading
import zlib
from collections.abc import Hashable
from typing import Any

from distmap._src import exits, progress
from distmap._src.consistency import ranks_text
from distmap._src.launch import contract
from distmap._src.launch.contract import EXIT_DIVERGED

#: ``1`` turns the check on in a multi-process run (launchers set it from ``--check_collectives``).
CHECK_ENV = contract.CHECK_COLLECTIVES


def enabled_from_env() -> bool:
    """Whether ``DISTMAP_CHECK_COLLECTIVES`` asks for the check (unset: no)."""
    return exits.env_switch(CHECK_ENV, False)


class _Check:
    def __init__(self, rank: int, client: Any) -> None:
        self.rank = rank
        self.client = client
        self.lock = threading.Lock()
        self.counts: dict[int, int] = {}  # per device (its flat index in the mesh): executions so far
        self.first_device: int | None = None  # the device whose executions the progress watch counts
        self.keys: dict[int, str] = {}  # fingerprint -> the call's description, for messages
        self.reported = False


_CHECK: _Check | None = None


def active() -> bool:
    """Whether the check runs in this process."""
    return _CHECK is not None


def start(rank: int, client: Any) -> None:
    """Turn the check on (``initialize`` does, in a multi-process run that asked for it)."""
    global _CHECK
    _CHECK = _Check(rank, client)
    progress.count_maps_at_execution(True)


def stop() -> None:
    """Turn it off (``shutdown``); programs already traced keep their check."""
    global _CHECK
    _CHECK = None
    progress.count_maps_at_execution(False)


def fingerprint(key: Hashable) -> int:
    """The int32 fingerprint of a map's key (CRC-32 of its ``repr``).

    Example:
        >>> fingerprint(("f", ("batch",), (8,))) == fingerprint(("f", ("batch",), (8,)))
        True
    """
    return zlib.crc32(repr(key).encode()) & 0x7FFFFFFF


class _Text(str):
    """A key's text that the progress watch shows as it is (its ``repr`` is itself)."""

    def __repr__(self) -> str:
        return str(self)


def _tick(fp: int, text: str, device: Any) -> Any:
    import numpy as np

    check = _CHECK
    d = int(device)
    if check is None:  # turned off after the trace: count nothing, agree with everyone
        return np.array([0, fp, 0], np.int32)
    with check.lock:
        count = check.counts.get(d, 0) + 1
        check.counts[d] = count
        if check.first_device is None:
            check.first_device = d
        first = check.first_device == d
        check.keys.setdefault(fp, text)
    if first:
        progress.note("vmap run", _Text(text))  # in execution order, so verify() compares executions
    return np.array([count, fp, check.rank], np.int32)


def describe(rows: list[list[int]], keys: dict[int, str], rank: int) -> tuple[list[int], str]:
    """``(ranks at fault, message)`` from the gathered ``[count, key fingerprint, rank]`` of every device.

    The largest group of devices that agree is taken as right (on a tie, the one with the lowest rank).

    Example:
        >>> describe([[3, 7, 0], [3, 7, 0], [3, 9, 1], [3, 9, 1], [3, 7, 2]], {7: "f", 9: "g"}, 0)[0]
        [1]
    """
    groups: dict[tuple[int, int], set[int]] = {}
    for count, fp, r in rows:
        groups.setdefault((count, fp), set()).add(r)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(kv[1])))
    culprits = sorted({r for _, ranks in ordered[1:] for r in ranks})
    shown = "; ".join(
        f"{ranks_text(sorted(ranks))}: call #{count} {keys.get(fp, f'(a call this rank never ran, {fp:08x})')}"
        for (count, fp), ranks in ordered
    )
    return culprits, (f"collective check (rank {rank}): {ranks_text(culprits)} diverged at a sharded map ({shown}). "
                      "Every rank must run the same sharded maps in the same order; this collective paired different "
                      "calls.")


def _report(table: Any, differ: Any, device: Any) -> Any:
    import numpy as np

    check = _CHECK
    if check is None or not int(differ):
        return np.int32(0)
    rows = np.asarray(table).reshape(-1, 3)
    with check.lock:
        if check.reported or int(device) != check.first_device:
            return np.int32(0)  # one device of the process reports; the process ends below
        check.reported = True
    culprits, message = describe(rows.tolist(), check.keys, check.rank)
    sys.stderr.write(f"distmap.errors.DivergenceError: {message}\n")
    if check.rank in culprits:
        sys.stderr.write(f"Rank {check.rank} ends (exit code {EXIT_DIVERGED}).\n")
        exits.leave(check.client, check.rank, EXIT_DIVERGED, "it diverged (collective check)")
    exits.follow(check.client, check.rank, set(culprits))


def traced_map(key: Hashable, mesh: Any, values: Any) -> Any:
    """Add the check of one sharded map to the computation being traced; returns ``values`` sequenced after it.

    ``values`` (the map's inputs, any pytree) come back unchanged, but behind an optimization
    barrier with the check's result, so the map's own collectives run only after every rank
    agreed on this call (a mismatch ends the process inside the check). Off: ``values`` as given.
    """
    if _CHECK is None:
        return values
    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback
    from jax.sharding import PartitionSpec

    from distmap._src import mesh as mesh_lib

    axes = tuple(mesh.axis_names)
    fp = fingerprint(key)
    text = repr(key)

    def body(ids: Any) -> Any:
        device = ids[0]  # this device's flat index in the mesh (a device-varying operand: one callback per device)
        mine = io_callback(lambda d: _tick(fp, text, d), jax.ShapeDtypeStruct((3,), jnp.int32), device)
        table = jax.lax.all_gather(mine, axes, tiled=True)
        rows = table.reshape(-1, 3)
        differ = jnp.any(rows[:, :2] != rows[0, :2]).astype(jnp.int32)
        return io_callback(_report, jax.ShapeDtypeStruct((), jnp.int32), table, differ, device)  # 0, or never returns

    spec = PartitionSpec(axes)
    ids = jnp.arange(math.prod(mesh.shape.values()), dtype=jnp.int32)
    ids = mesh_lib.place(ids, spec, mesh)  # traced: a reshard on Explicit axes, a constraint on the others
    done = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(), check_vma=False)(ids)
    _, values = jax.lax.optimization_barrier((done, values))
    return values


def wait_for_executions() -> None:
    """Block until every dispatched computation with a check has run (``verify`` counts executions)."""
    if _CHECK is not None:
        import jax

        jax.effects_barrier()


__all__ = [
    "CHECK_ENV",
    "active",
    "describe",
    "enabled_from_env",
    "fingerprint",
    "start",
    "stop",
    "traced_map",
    "wait_for_executions",
]
