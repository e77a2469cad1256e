"""Gradient checkpointing policies for ``scan``, ``fold`` and ``Stacked``: what a layer stack keeps for backward.

Without checkpointing, the backward pass of a scan over ``L`` layers keeps every layer's
intermediates: memory grows as ``L`` times one layer's activations. A policy trades that
memory for recomputation, built on ``jax.checkpoint`` and ``jax.checkpoint_policies``:

=================  ============================================================================
``None``/"none"    keep everything (no recomputation)
"layer" / True     checkpoint every layer, keeping its matrix products
                   (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``); the rest of
                   each layer is recomputed in the backward pass
"carry"            checkpoint every layer keeping only the carry between layers; all of a
                   layer's internals are recomputed
``Checkpoint(every=k)``  keep the carry only every ``k`` layers (a scan of scans): the backward pass
                   runs ``k`` layers again at a time, each checkpointed, so memory is about
                   ``L/k + k`` carries and one layer's internals (``k`` near ``sqrt(L)`` is least)
=================  ============================================================================

``Checkpoint(save=("attn_out",))`` keeps values the layer tagged with
``jax.ad_checkpoint.checkpoint_name``; ``Checkpoint(policy=...)`` takes any JAX policy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax

from distmap import errors


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpointing policy for a scan over layers.

    Args:
        every: keep the carry every ``every`` layers; 1 checkpoints each layer, ``k > 1`` nests
            the scan (``every`` must divide the number of layers).
        save: names (given to values with ``jax.ad_checkpoint.checkpoint_name``) kept rather than
            recomputed.
        policy: a ``jax.checkpoint_policies`` policy deciding what each layer keeps; ``None`` keeps
            nothing but the layer's inputs (and the names in ``save``).
        prevent_cse: passed to ``jax.checkpoint``.

    Example:
        >>> import distmap
        >>> distmap.Checkpoint(every=4)
        Checkpoint(every=4, save=(), policy=None, prevent_cse=True)
    """

    every: int = 1
    save: tuple[str, ...] = ()
    policy: Callable[..., Any] | None = None
    prevent_cse: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise errors.MappingError(f"Checkpoint(every=...): expected a positive int, got {self.every!r}.")
        if isinstance(self.save, str) or not all(isinstance(s, str) for s in self.save):
            raise errors.MappingError(f"Checkpoint(save=...): expected a tuple of names, got {self.save!r}.")
        object.__setattr__(self, "save", tuple(self.save))
        if self.policy is not None and not callable(self.policy):
            raise errors.MappingError(
                f"Checkpoint(policy=...): expected a jax.checkpoint_policies policy, got {self.policy!r}."
            )

    def jax_policy(self) -> Callable[..., Any] | None:
        """The policy given to ``jax.checkpoint`` for one layer."""
        if self.save and self.policy is not None:
            return jax.checkpoint_policies.save_from_both_policies(
                self.policy, jax.checkpoint_policies.save_only_these_names(*self.save)
            )
        if self.save:
            return jax.checkpoint_policies.save_only_these_names(*self.save)
        return self.policy

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """``step`` under ``jax.checkpoint`` with this policy."""
        return jax.checkpoint(step, policy=self.jax_policy(), prevent_cse=self.prevent_cse)


CheckpointSpec = Union[None, bool, str, int, Checkpoint]

_NAMED = {
    "none": None,
    "layer": Checkpoint(policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "carry": Checkpoint(),
}


def as_checkpoint(spec: CheckpointSpec, *, what: str = "checkpoint=...") -> Checkpoint | None:
    """Normalise ``None``/``False``, ``True``, ``"none"``/``"layer"``/``"carry"``, an int ``k`` or a ``Checkpoint``.

    Example:
        >>> as_checkpoint(4)
        Checkpoint(every=4, save=(), policy=None, prevent_cse=True)
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return _NAMED["layer"]
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]
    if isinstance(spec, int) and spec >= 1:
        return Checkpoint(every=spec)
    raise errors.MappingError(
        f"{what}: expected None, True, 'none', 'layer', 'carry', a positive int k (keep the carry every "
        f"k layers) or distmap.Checkpoint(...), got {spec!r}."
    )


def nested_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Sequence[Any],
    length: int,
    policy: Checkpoint,
    *,
    reverse: bool,
    unroll: int,
    what: str,
) -> tuple[Any, Any]:
    """``jax.lax.scan(step, init, xs)`` checkpointed by ``policy``: a scan of checkpointed blocks when ``every > 1``."""
    k = policy.every
    if k == 1:
        return jax.lax.scan(policy.wrap(step), init, xs, length=length, reverse=reverse, unroll=unroll)
    if length % k:
        raise errors.MappingError(
            f"{what}: Checkpoint(every={k}) must divide the {length} steps of the scan; "
            f"divisors near sqrt({length}): {_divisors_near_sqrt(length)}."
        )
    blocks = [x.reshape((length // k, k) + x.shape[1:]) for x in xs]

    inner = policy.wrap(step)

    def block(carry: Any, block_xs: Sequence[Any]) -> tuple[Any, Any]:
        return jax.lax.scan(inner, carry, block_xs, length=k, reverse=reverse, unroll=unroll)

    # The outer level keeps only each block's incoming carry; in the backward pass a block's k
    # layers run again, each checkpointed by ``policy``.
    outer = jax.checkpoint(block, prevent_cse=policy.prevent_cse)
    carry, ys = jax.lax.scan(outer, init, blocks, length=length // k, reverse=reverse)
    return carry, jax.tree_util.tree_map(lambda y: y.reshape((length,) + y.shape[2:]), ys)


def _divisors_near_sqrt(n: int) -> list[int]:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(divs, key=lambda d: abs(d - math.sqrt(n)))[:3]
