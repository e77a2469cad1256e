"""Launch machinery shared by every launcher in ``launch/``.

* :mod:`~distmap._src.launch.contract`: the environment a rank is started with (the names
  ``distmap.distributed.initialize`` reads) and the function that builds it.
* :mod:`~distmap._src.launch.supervisor`: starts a group of ranks, streams their output with
  a ``[rank i]`` prefix into per-rank logs, fails fast, stops whole process groups, restarts.
* :mod:`~distmap._src.launch.cli`: the absl flags every launcher shares and the parsing of the
  program that follows ``--``.
* :mod:`~distmap._src.launch.local`: the policy of ``launch/local.py`` (this machine, loopback).

None of these import JAX: a launcher stays light and never starts a backend itself.
"""
