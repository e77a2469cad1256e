"""Launch machinery shared by every launcher in ``launch/``.

What distmap writes itself is what no tool it builds on does: supervision (fail fast,
process groups, exit codes, watchdogs so nothing outlives the launcher) and the quoting of
argument lists into scripts. Everything else is the standard library's, absl's or the
scheduler's own.

* :mod:`~distmap._src.launch.contract`: the environment a rank is started with (the names
  ``distmap.distributed.initialize`` reads) and the function that builds it.
* :mod:`~distmap._src.launch.supervisor`: the agent's loop, the one supervision of every
  launcher: starts a group of ranks, streams their output with a ``[rank i]`` prefix into
  per-rank logs, fails fast, stops gracefully (SIGTERM, the grace period, SIGKILL), restarts
  after failures only, with a backoff; :mod:`~distmap._src.launch.console` chooses what of
  the output reaches the console.
* :mod:`~distmap._src.launch.agent`: the plan a launcher writes where it cannot stay with
  the run (the SLURM batch step, the TPU dry-run script), run by ``launch/agent.py``.
* :mod:`~distmap._src.launch.cli`: the absl flags every launcher shares, the program that
  follows ``--``, the mesh check and the usage-error printing.
* :mod:`~distmap._src.launch.shell`: ``shlex`` quoting, and the remote watchdog of ssh, srun
  and gcloud ranks (``stop``/``kill`` down the session's stdin).
* :mod:`~distmap._src.launch.ports`: coordinator ports.
* one policy module per launcher: ``local``, ``ssh``, ``slurm``, ``tpu_vm``, ``k8s``.

None of these import JAX: a launcher stays light and never starts a backend itself.
"""
