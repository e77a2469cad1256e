"""The map engine: one plan, two lowerings.

A named map ``distmap.vmap(fn, axes)`` is decided once per call and carried out by
whichever lowering fits:

* :mod:`.specs` says how unnamed leaves are mapped (``default`` / ``args`` / ``kwargs``,
  bound to ``fn``'s parameters);
* :mod:`.plan` resolves a call into a :class:`~.plan.Plan`: for every leaf and every
  mapped level, the dimension it is mapped on (or none), and the size of every axis.
  Errors about specs and sizes are raised here, so both lowerings raise the same ones;
* :mod:`.statics` says when two static values may share one trace (the key of every cache
  here);
* :mod:`.local` lowers a plan to nested ``jax.vmap`` (one device);
* :mod:`.sharded` lowers the same plan to ``jax.shard_map`` over a mesh, splitting the
  plan's dimensions over the mesh axes the axis mapping names and running :mod:`.local`
  on each shard, all inside one ``jax.jit`` keyed by the plan; :mod:`.split` is its rule
  for sizes the shards do not divide, :mod:`.fn_parts` takes ``fn`` apart into its arrays
  (inputs) and the static rest;
* :mod:`.frames` records, while a map traces, what JAX axis names stand behind each
  mapped name, for the named collectives; :mod:`.two_level` holds the collectives'
  primitives over a map's vmap part and mesh part;
* :mod:`.scan` (``scan``, ``fold``) and :mod:`.checkpoint` (their checkpointing policies)
  loop over a named axis with the same plan;
* :mod:`.api` is the public ``vmap``.

Imports run one way: ``api -> sharded -> local -> plan -> specs``; nothing here imports
the collectives, which read :mod:`.frames`.
"""
