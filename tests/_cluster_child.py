"""The program the cluster-launcher tests start: ``python tests/_cluster_child.py MODE [ARGS...]``.

It first prints ``ARGV <json>`` of ``ARGS`` (so a test sees exactly what arrived), then:

    collective   a bare ``distmap.distributed.initialize()`` (the launcher's environment, or
                 JAX's SLURM detection), then a sharded ``distmap.vmap`` with a named
                 collective over every process's devices; prints ``RESULT <json>`` with this
                 process's rows and what they must be.
    env          prints ``ENV <json>`` of the DISTMAP_*, SLURM_*, TPU_*, MEGASCALE_* and
                 JAX_* variables and the working directory; exits 0.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str]) -> int:
    mode, extra = argv[1], argv[2:]
    print("ARGV " + json.dumps(extra), flush=True)
    if mode == "env":
        keys = ("DISTMAP_", "SLURM_", "TPU_", "MEGASCALE_", "JAX_")
        env = {k: v for k, v in os.environ.items() if k.startswith(keys)}
        print("ENV " + json.dumps({"env": env, "cwd": os.getcwd()}), flush=True)
        return 0

    from distmap import distributed

    config = distributed.initialize()

    import jax
    import numpy as np

    import distmap

    rank, nproc, n_dev = jax.process_index(), jax.process_count(), jax.device_count()
    mesh = distmap.make_mesh({"data": n_dev})
    rows = 2 * n_dev // nproc
    everything = np.arange(2 * n_dev, dtype=np.float32) ** 2
    mine = everything[rank * rows : (rank + 1) * rows]
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(mesh):
        x = distributed.host_local_to_global(distmap.named(mine, ("batch",)), mesh=mesh)
        y = jax.jit(distmap.vmap(lambda v: v - distmap.pmean(v, "batch"), "batch"))(x)
        back = distributed.global_to_host_local(y)
    print("RESULT " + json.dumps({
        "mode": config.mode,
        "rank": rank,
        "processes": nproc,
        "devices": n_dev,
        "local_devices": jax.local_device_count(),
        "centered": np.asarray(back.array).tolist(),
        "expected": (mine - everything.mean()).tolist(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
