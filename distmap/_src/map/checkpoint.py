"""Gradient checkpointing policies for ``scan``, ``fold`` and ``Stacked``: what a layer stack keeps for backward.

Without checkpointing, the backward pass of a scan over ``L`` layers keeps every layer's
intermediates: memory grows as ``L`` times one layer's activations. A policy trades that
memory for recomputation, built on ``jax.checkpoint`` and ``jax.checkpoint_policies``:

=================  ============================================================================
``None``/"none"    keep everything (no recomputation); ``False`` too
"carry" / True     checkpoint every layer keeping only the carry between layers; all of a
                   layer's internals are recomputed (Haliax's ``True``, ``simple=True``)
"layer"            checkpoint every layer, keeping its matrix products
                   (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``); the rest of
                   each layer is recomputed in the backward pass
``Checkpoint(every=k)``  keep the carry only every ``k`` layers (a scan of scans): the backward pass
                   runs ``k`` layers again at a time, each checkpointed, so memory is about
                   ``L/k + k`` carries and one layer's internals (``k`` near ``sqrt(L)`` is least)
=================  ============================================================================

``Checkpoint(save=("attn_out",))`` keeps values the layer tagged with
``jax.ad_checkpoint.checkpoint_name`` (or :func:`tree_checkpoint_name`); ``Checkpoint(policy=...)``
takes any JAX policy. :class:`ScanCheckpointPolicy` is Haliax's policy class, with its fields and
their meaning (save or offload the carries, the inputs, named internals; nested blocks).

Both lower, for one loop of a given length, to a :class:`LoopCheckpoint`: the block size, the
JAX policy of a step and whether the carry and the step's inputs are tagged by name. The loop
(:func:`nested_scan`) reads only that, so the two classes cannot mean different things.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
from jax.ad_checkpoint import checkpoint_name

from distmap import errors
from distmap._src.leaves import is_array

Policy = Callable[..., Any]


def carry_name(axis_name: str) -> str:
    """The name a loop over ``axis_name`` gives its carry (for :class:`ScanCheckpointPolicy`'s policies); the
    same string Haliax tags it with, so a policy that names it is read alike.

    Example:
        >>> carry_name("layer")
        'scan(layer)__carry'
    """
    return f"scan({axis_name})__carry"


def inputs_name(axis_name: str) -> str:
    """The name a loop over ``axis_name`` gives each step's sliced inputs (the layer's parameters among them)."""
    return f"scan({axis_name})__input"


def tree_checkpoint_name(tree: Any, name: str) -> Any:
    """Tag every array of ``tree`` (NamedArrays included) with ``name``, as ``jax.ad_checkpoint.checkpoint_name``
    tags one array; a policy that saves or offloads ``name`` then applies to all of them.

    Example:
        >>> import distmap, jax
        >>> f = lambda x: distmap.tree_checkpoint_name({"h": distmap.sin(x)}, "h")["h"].sum().array
        >>> "name=h" in str(jax.make_jaxpr(f)(distmap.ones({"feature": 3})))
        True
    """
    if not isinstance(name, str) or not name:
        raise errors.ArgumentTypeError(f"tree_checkpoint_name: name must be a non-empty str, got {name!r}.")
    return jax.tree_util.tree_map(lambda a: checkpoint_name(a, name) if is_array(a) else a, tree)


@dataclasses.dataclass(frozen=True)
class LoopCheckpoint:
    """A policy resolved for one loop: what :func:`nested_scan` does.

    ``every``: steps per block (1: no outer level); ``step``: whether each step runs under
    ``jax.checkpoint`` with ``policy``; ``tag``: whether the carry and the step's inputs are
    tagged with :func:`carry_name` / :func:`inputs_name` inside the step.
    """

    every: int
    step: bool
    policy: Policy | None
    prevent_cse: bool
    tag: bool

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        return jax.checkpoint(step, policy=self.policy, prevent_cse=self.prevent_cse) if self.step else step


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(s, str) for s in value):
        raise errors.MappingError(f"{what}: expected a list or tuple of names, got {value!r}.")
    return tuple(value)


def _blocks_of(k: int, length: int, what: str, given: str) -> int:
    if length % k:
        raise errors.MappingError(
            f"{what}: {given} must divide the {length} steps of the loop; divisors near sqrt({length}): "
            f"{_divisors_near_sqrt(length)}."
        )
    return k


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpointing policy for a scan over layers.

    Args:
        every: keep the carry every ``every`` layers; 1 checkpoints each layer, ``k > 1`` nests
            the scan (``every`` must divide the number of layers). Haliax's
            ``ScanCheckpointPolicy(nested=n)`` is ``n`` outer blocks: ``every = L // n``.
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
    policy: Policy | None = None
    prevent_cse: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise errors.MappingError(f"Checkpoint(every=...): expected a positive int, got {self.every!r}.")
        object.__setattr__(self, "save", _names(self.save, "Checkpoint(save=...)"))
        if self.policy is not None and not callable(self.policy):
            raise errors.MappingError(
                f"Checkpoint(policy=...): expected a jax.checkpoint_policies policy, got {self.policy!r}."
            )

    def jax_policy(self) -> Policy | None:
        """The policy given to ``jax.checkpoint`` for one layer."""
        if self.save and self.policy is not None:
            return jax.checkpoint_policies.save_from_both_policies(
                self.policy, jax.checkpoint_policies.save_only_these_names(*self.save)
            )
        if self.save:
            return jax.checkpoint_policies.save_only_these_names(*self.save)
        return self.policy

    def lower(self, axis_name: str, length: int, *, what: str = "scan") -> LoopCheckpoint:
        """This policy for a loop over ``axis_name`` of ``length`` steps."""
        every = self.every if self.every == 1 else _blocks_of(self.every, length, what, f"Checkpoint(every={self.every})")
        return LoopCheckpoint(every, True, self.jax_policy(), self.prevent_cse, tag=False)


SaveChoice = bool | Literal["offload"]


@dataclasses.dataclass(frozen=True)
class ScanCheckpointPolicy:
    """Haliax's checkpoint policy for a loop over blocks, with Haliax's fields and meaning.

    A step of the loop takes the carry and its inputs (the block's parameters, sliced per step,
    and any other sliced argument) and computes internals. Each field says what the forward
    pass keeps for the backward pass; what is not kept is recomputed.

    Args:
        save_carries: keep the carry entering every step (True), move it to host memory
            (``"offload"``), or recompute it (False).
        save_inputs: the same for each step's inputs.
        save_block_internals: keep every internal (True), those tagged with the listed names
            (:func:`tree_checkpoint_name`), or none (False).
        offload_block_internals: names of internals moved to host memory rather than kept or recomputed.
        prevent_cse: passed to ``jax.checkpoint``.
        disable: no checkpointing: everything is kept.
        simple: plain ``jax.checkpoint`` of each step: only its inputs and carry are kept.
        nested: ``n`` (an int) splits the loop into ``n`` outer blocks, each checkpointed as a whole,
            so the forward pass keeps only ``n`` carries and the backward pass recomputes one block
            at a time (``Checkpoint(every=L // n)`` in distmap's terms); True picks the divisor
            of ``L`` nearest ``sqrt(L)``.

    ``True`` means ``ScanCheckpointPolicy(simple=True)`` (distmap's ``"carry"``); Haliax's strings
    ``"offload"``, ``"recompute"``/``"full"``, ``"save_all"`` and ``"nested"`` are accepted wherever a
    policy is (see :meth:`from_bool_or_str`).

    Example:
        >>> import distmap
        >>> p = distmap.ScanCheckpointPolicy(save_carries="offload")
        >>> p.lower("layer", 4).policy is not None
        True
    """

    save_carries: SaveChoice = True
    save_inputs: SaveChoice = False
    save_block_internals: bool | Sequence[str] = False
    offload_block_internals: Sequence[str] = ()
    prevent_cse: bool = False
    disable: bool = False
    simple: bool = False
    nested: bool | int = False

    def __post_init__(self) -> None:
        for field in ("save_carries", "save_inputs"):
            v = getattr(self, field)
            if v not in (True, False, "offload") or not isinstance(v, (bool, str)):
                raise errors.MappingError(f"ScanCheckpointPolicy({field}=...): expected True, False or 'offload', got {v!r}.")
        internals = self.save_block_internals
        if not isinstance(internals, bool):
            object.__setattr__(self, "save_block_internals", _names(internals, "ScanCheckpointPolicy(save_block_internals=...)"))
        object.__setattr__(self, "offload_block_internals",
                           _names(self.offload_block_internals, "ScanCheckpointPolicy(offload_block_internals=...)"))
        if internals is True and self._offloaded("x"):
            raise errors.MappingError(
                "ScanCheckpointPolicy: save_block_internals=True keeps every internal, so nothing is left to offload; "
                "list the names to keep instead (save_block_internals=['attn', ...])."
            )
        n = self.nested
        if not isinstance(n, bool) and not (isinstance(n, int) and n >= 1):
            raise errors.MappingError(f"ScanCheckpointPolicy(nested=...): expected a bool or a positive int, got {n!r}.")

    @staticmethod
    def from_bool_or_str(spec: bool | str) -> ScanCheckpointPolicy:
        """Haliax's shorthands: True (carries only), False (no checkpointing), ``"offload"`` (carries and
        inputs to host memory), ``"recompute"``/``"full"`` (recompute everything), ``"save_all"``, ``"nested"``.

        Example:
            >>> ScanCheckpointPolicy.from_bool_or_str(True)
            ScanCheckpointPolicy(save_carries=True, save_inputs=False, save_block_internals=False,
                                 offload_block_internals=(), prevent_cse=False, disable=False, simple=True, nested=False)
        """
        if spec is True:
            return ScanCheckpointPolicy(simple=True)
        if spec is False:
            return ScanCheckpointPolicy(save_inputs=True, save_block_internals=True, disable=True)
        shorthands: dict[str, dict[str, Any]] = {
            "offload": dict(save_carries="offload", save_inputs="offload"),
            "recompute": dict(save_carries=False),
            "full": dict(save_carries=False),
            "save_all": dict(save_inputs=True, save_block_internals=True),
            "nested": dict(nested=True),
        }
        if isinstance(spec, str) and spec in shorthands:
            return ScanCheckpointPolicy(**shorthands[spec])
        raise errors.MappingError(
            f"ScanCheckpointPolicy.from_bool_or_str: expected True, False or one of {sorted(shorthands)}, got {spec!r}."
        )

    def _offloaded(self, axis_name: str) -> list[str]:
        out = [n for choice, n in ((self.save_carries, carry_name(axis_name)), (self.save_inputs, inputs_name(axis_name)))
               if choice == "offload"]
        return out + list(self.offload_block_internals)

    def jax_policy(self, axis_name: str) -> Policy | None:
        """The ``jax.checkpoint`` policy of one step of a loop over ``axis_name`` (None: keep only the step's inputs)."""
        loop_names = ((self.save_carries, carry_name(axis_name)), (self.save_inputs, inputs_name(axis_name)))
        saved = [n for choice, n in loop_names if choice is True]
        recomputed = [n for choice, n in loop_names if choice is False]
        internals = self.save_block_internals
        if not isinstance(internals, bool):
            saved += list(internals)
        offloaded = self._offloaded(axis_name)
        policies = jax.checkpoint_policies
        if offloaded:
            return policies.save_and_offload_only_these_names(
                names_which_can_be_saved=saved, names_which_can_be_offloaded=offloaded,
                offload_src="device", offload_dst="pinned_host",
            )
        if internals is True:  # everything but what is to be recomputed
            return policies.save_anything_except_these_names(*recomputed)
        return policies.save_only_these_names(*saved) if saved else None

    def lower(self, axis_name: str, length: int, *, what: str = "scan") -> LoopCheckpoint:
        """This policy for a loop over ``axis_name`` of ``length`` steps."""
        every = 1
        if self.nested is True:
            every = length // _divisors_near_sqrt(length)[0]
        elif self.nested is not False:
            every = length // _blocks_of(self.nested, length, what, f"ScanCheckpointPolicy(nested={self.nested})")
        if self.disable:
            return LoopCheckpoint(every, False, None, self.prevent_cse, tag=False)
        if self.simple:
            return LoopCheckpoint(every, True, None, self.prevent_cse, tag=False)
        policy = self.jax_policy(axis_name)
        return LoopCheckpoint(every, True, policy, self.prevent_cse, tag=policy is not None)


CheckpointSpec = bool | str | int | Checkpoint | ScanCheckpointPolicy | None

_NAMED = {
    "none": None,
    "layer": Checkpoint(policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "carry": Checkpoint(),
}
_HALIAX_STRINGS = ("offload", "recompute", "full", "save_all", "nested")


def as_checkpoint(spec: CheckpointSpec, *, what: str = "checkpoint=...") -> Checkpoint | ScanCheckpointPolicy | None:
    """Normalise ``None``/``False``, ``True`` (the carry only, as in Haliax), distmap's names ``"none"``/
    ``"layer"``/``"carry"``, Haliax's strings (``"offload"``, ``"recompute"``, ``"full"``, ``"save_all"``,
    ``"nested"``), an int ``k`` (keep the carry every ``k`` steps), a ``Checkpoint`` or a ``ScanCheckpointPolicy``.

    Example:
        >>> as_checkpoint(4)
        Checkpoint(every=4, save=(), policy=None, prevent_cse=True)
        >>> as_checkpoint(True)
        Checkpoint(every=1, save=(), policy=None, prevent_cse=True)
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return _NAMED["carry"]
    if isinstance(spec, (Checkpoint, ScanCheckpointPolicy)):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]
    if isinstance(spec, str) and spec in _HALIAX_STRINGS:
        return ScanCheckpointPolicy.from_bool_or_str(spec)
    if isinstance(spec, int) and spec >= 1:
        return Checkpoint(every=spec)
    raise errors.MappingError(
        f"{what}: expected None, True (keep only the carry), 'none', 'layer', 'carry', one of Haliax's "
        f"{list(_HALIAX_STRINGS)}, a positive int k (keep the carry every k layers), distmap.Checkpoint(...) "
        f"or distmap.ScanCheckpointPolicy(...), got {spec!r}."
    )


def tag_step(lowered: LoopCheckpoint | None, axis_name: str, carry: Any, inputs: Any) -> tuple[Any, Any]:
    """The carry and a step's inputs tagged by name, where the loop's policy refers to those names."""
    if lowered is None or not lowered.tag:
        return carry, inputs
    return tree_checkpoint_name(carry, carry_name(axis_name)), tree_checkpoint_name(inputs, inputs_name(axis_name))


def nested_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Sequence[Any],
    length: int,
    lowered: LoopCheckpoint,
    *,
    reverse: bool,
    unroll: int | bool,
) -> tuple[Any, Any]:
    """``jax.lax.scan(step, init, xs)`` checkpointed as ``lowered`` says: a scan of checkpointed blocks when ``every > 1``."""
    k = lowered.every
    inner = lowered.wrap(step)
    if k == 1:
        return jax.lax.scan(inner, init, xs, length=length, reverse=reverse, unroll=unroll)
    blocks = [x.reshape((length // k, k) + x.shape[1:]) for x in xs]

    def block(carry: Any, block_xs: Sequence[Any]) -> tuple[Any, Any]:
        return jax.lax.scan(inner, carry, block_xs, length=k, reverse=reverse, unroll=unroll)

    # The outer level keeps only each block's incoming carry; in the backward pass a block's k
    # layers run again, each checkpointed by the step's policy.
    outer = jax.checkpoint(block, prevent_cse=lowered.prevent_cse)
    carry, ys = jax.lax.scan(outer, init, blocks, length=length // k, reverse=reverse)
    return carry, jax.tree_util.tree_map(lambda y: y.reshape((length,) + y.shape[2:]), ys)


def _divisors_near_sqrt(n: int) -> list[int]:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(divs, key=lambda d: (abs(d - math.sqrt(n)), d))[:3]
