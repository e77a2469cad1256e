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

import os
import sys

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# agent uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src.launch import agent

if __name__ == "__main__":
    sys.exit(agent.main(sys.argv))
