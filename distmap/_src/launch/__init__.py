"""Launch machinery shared by every launcher in ``launch/``.

What distmap writes itself is what no tool it builds on does: supervision (fail fast,
process groups, exit codes, watchdogs so nothing outlives the launcher) and the quoting of
argument lists into scripts. Everything else is the standard library's, absl's or the
scheduler's own.

* :mod:`~distmap._src.launch.contract`: the environment a rank is started with (the names
  ``distmap.distributed.initialize`` reads) and the function that builds it.
* :mod:`~distmap._src.launch.supervisor`: starts a group of ranks, streams their output with
  a ``[rank i]`` prefix into per-rank logs, fails fast, kills whole process groups, restarts;
  :mod:`~distmap._src.launch.console` chooses what of it reaches the console.
* :mod:`~distmap._src.launch.cli`: the absl flags every launcher shares, the program that
  follows ``--``, the mesh check and the usage-error printing.
* :mod:`~distmap._src.launch.shell`: ``shlex`` quoting, and the remote watchdog of ssh ranks.
* :mod:`~distmap._src.launch.ports`: coordinator ports.
* one policy module per launcher: ``local``, ``ssh``, ``slurm``, ``tpu_vm``, ``k8s``.

None of these import JAX: a launcher stays light and never starts a backend itself.
"""
