"""Run a launch plan: the agent that supervises the ranks inside a scheduler's allocation.

    python launch/agent.py --plan=PLAN.json
    python launch/agent.py --plan=- < PLAN.json

A distmap launcher writes the plan where it cannot stay with the run itself: the sbatch
script of ``launch/slurm.py`` runs the agent inside the allocation, and the ``--dry_run``
script of ``launch/tpu_vm.py`` runs it on this machine. The agent starts every rank, fails
fast, gives every rank SIGTERM and ``--grace_period`` seconds when stopped (a signal to it,
a scheduler's stop), and restarts only after failures, with a backoff.
"""

from __future__ import annotations

import sys

import _light  # launch/ is on sys.path: this file runs as a script

_light.use_light_distmap()  # the agent needs distmap's launch code (from this checkout), not JAX

from distmap._src.launch import agent  # noqa: E402

if __name__ == "__main__":
    sys.exit(agent.main(sys.argv))
