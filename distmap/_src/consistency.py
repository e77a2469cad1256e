"""The start-up check: every process runs the same program, distmap, JAX and configuration.

Each process publishes a fingerprint in the coordination service's key-value store and
compares it with everyone's (:func:`check_consistency`), so mismatched ranks fail at once,
named, instead of hanging later in a collective.

Example:
    >>> sorted(fingerprint_of({"steps": 10}))
    ['config', 'distmap', 'jax', 'program', 'run']
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from distmap import errors
from distmap._src import jax_internals, run_config
from distmap._src.launch import contract

_CHECKS = [0]  # start-up checks made so far in this run (each has its own keys)


def reset() -> None:
    """Forget the checks made (``shutdown``: a later run counts from 0 again)."""
    _CHECKS[0] = 0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _program_identity() -> tuple[str, str]:
    """(what the program is, digest of its code): the ``__main__`` file, or ``-c`` code."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            return os.path.basename(path), _digest(f.read())
    argv = list(getattr(sys, "orig_argv", []))
    if "-c" in argv[:-1]:
        code = argv[argv.index("-c") + 1]
        return "python -c", _digest(code.encode())
    return "interactive", _digest(b"")


def _distmap_identity() -> str:
    import distmap

    root = os.path.dirname(os.path.abspath(distmap.__file__))
    h = hashlib.sha256(getattr(distmap, "__version__", "?").encode())
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return f"{getattr(distmap, '__version__', '?')} ({h.hexdigest()[:12]})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fingerprint_of(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What this process reports to the start-up check (all strings, JSON-ready).

    Example:
        >>> fp = fingerprint_of({"steps": 10})
        >>> sorted(fp), fp["config"]["steps"][1]
        (['config', 'distmap', 'jax', 'program', 'run'], '10')
    """
    import jax
    import jaxlib

    what, code = _program_identity()
    run = os.environ.get(contract.RUN_ID, "")
    if run:
        run += f" attempt {os.environ.get(contract.ATTEMPT, '0')}"
    return {
        "program": [what, code],
        "distmap": _distmap_identity(),
        "jax": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
        "run": run,
        "config": {
            str(k): [_digest(repr(v).encode()), _short(v)] for k, v in sorted((config or {}).items(), key=lambda kv: str(kv[0]))
        },
    }


def ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _groups(values: Mapping[int, Any], show: Any) -> str:
    by: dict[str, list[int]] = {}
    for rank, v in sorted(values.items()):
        by.setdefault(json.dumps(v, sort_keys=True), []).append(rank)
    parts = [f"{ranks_text(rs)}: {show(json.loads(k))}" for k, rs in by.items()]
    if len(parts) > 6:
        parts = parts[:6] + [f"... {len(parts) - 6} more groups"]
    return "; ".join(parts)


def compare_fingerprints(reports: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The differences between processes' fingerprints, one line each (empty: all agree).

    Example:
        >>> a = {"program": ["train.py", "aa"], "distmap": "0.1.0", "jax": "jax 0.10.2", "run": "",
        ...      "config": {"lr": ["h1", "0.1"]}}
        >>> b = dict(a, config={"lr": ["h2", "0.2"]})
        >>> compare_fingerprints({0: a, 1: b})
        ["config key 'lr' differs: rank 0: 0.1; rank 1: 0.2"]
    """
    lines: list[str] = []
    ranks = sorted(reports)

    def differs(get: Any) -> bool:
        return len({json.dumps(get(reports[r]), sort_keys=True) for r in ranks}) > 1

    if differs(lambda f: f["program"]):
        lines.append("program differs (the __main__ file's bytes): " + _groups(
            {r: reports[r]["program"] for r in ranks}, lambda p: f"{p[0]} sha256 {p[1]}"))
    if differs(lambda f: f["distmap"]):
        lines.append("distmap differs: " + _groups({r: reports[r]["distmap"] for r in ranks}, str))
    if differs(lambda f: f["jax"]):
        lines.append("jax version differs: " + _groups({r: reports[r]["jax"] for r in ranks}, str))
    if differs(lambda f: f["run"]):
        lines.append("launch differs (DISTMAP_RUN_ID/ATTEMPT; a rank from another launch?): "
                     + _groups({r: reports[r]["run"] or "(none)" for r in ranks}, str))
    keys = sorted({k for r in ranks for k in reports[r]["config"]})
    for key in keys:
        values = {r: reports[r]["config"].get(key) for r in ranks}
        if len({json.dumps(v) for v in values.values()}) > 1:
            lines.append(f"config key {key!r} differs: " + _groups(values, lambda v: "(not set)" if v is None else v[1]))
    return lines


def check_consistency(config: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> str:
    """A start-up barrier: fail on every process at once if they run different code or configuration.

    Every process publishes a fingerprint (the ``__main__`` program's bytes, distmap's version
    and sources, the JAX version, the launch id and ``config`` key by key) in JAX's distributed
    key-value store, reads everyone's and compares. If any differ, every process raises the
    same :class:`~distmap.errors.DistributedError` naming the ranks and what differs (program,
    config key names with their values, jax version), instead of hanging later in a
    collective. Call it in the same order on every process. With one process it only
    computes the fingerprint.

    Args:
        config: values that must agree, e.g. ``distributed.flag_config()`` (absl flag values).
        timeout: seconds to wait for the other processes' reports (default
            ``DISTMAP_INIT_TIMEOUT`` or 300).

    Returns:
        This process's fingerprint digest.

    Example:
        >>> from distmap import distributed
        >>> len(distributed.check_consistency({"learning_rate": 0.1}))
        16
    """
    mine = fingerprint_of(config)
    digest = _digest(json.dumps(mine, sort_keys=True).encode())
    client = jax_internals.distributed_client()
    if client is None:
        return digest
    _, n, me = jax_internals.distributed_state()
    if n == 1:
        return digest
    seq = _CHECKS[0]
    _CHECKS[0] += 1
    if timeout is None:
        timeout = run_config.env_float(contract.INIT_TIMEOUT) or 300.0
    prefix = f"distmap/consistency/{seq}/"
    client.key_value_set(prefix + str(me), json.dumps(mine, sort_keys=True))
    reports: dict[int, Any] = {me: mine}
    end = time.monotonic() + timeout
    missing = []
    for rank in range(n):
        if rank == me:
            continue
        left_ms = max(int((end - time.monotonic()) * 1000), 1)
        try:
            reports[rank] = json.loads(client.blocking_key_value_get(prefix + str(rank), left_ms))
        except Exception as e:  # JAX raises its runtime error on DEADLINE_EXCEEDED
            if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
                raise errors.DistributedError(f"start-up check: could not read rank {rank}'s fingerprint: {e}") from e
            missing.append(rank)
    if missing:
        raise errors.DistributedError(
            f"start-up check (call {seq}): rank {me} waited {timeout:g} s for the fingerprint of {ranks_text(missing)}, "
            "which never came. Those processes did not reach distmap's start-up check: they run another "
            "program, an older distmap, or are stuck or slow before it."
        )
    diff = compare_fingerprints(reports)
    if diff:
        raise errors.DistributedError(
            f"the {n} processes of this run disagree at start-up (seen by rank {me}):\n  "
            + "\n  ".join(diff)
            + "\nEvery process must run the same program, distmap and JAX with the same configuration."
        )
    return digest


__all__ = ["check_consistency", "compare_fingerprints", "fingerprint_of", "ranks_text", "reset"]
