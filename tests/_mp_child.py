"""The program the multi-process tests launch: ``python tests/_mp_child.py MODE``.

Every mode starts with a bare ``distmap.distributed.initialize()`` that reads the launcher's
environment, so these runs test the env contract end to end.

Modes:
    collective   psum across both processes (shard_map, a jitted global sum, a sharded
                 distmap.vmap with a named collective, a hybrid mesh); prints ``RESULT <json>``.
    die          both ranks run collectives in a loop; rank 1 SIGKILLs itself at step 2.
    raise        the same, but rank 1 raises an exception at step 2 (JAX's shutdown barrier
                 would keep it alive for 300 s; distmap makes it exit at once).
    fingerprint  each rank passes a different ``learning_rate`` to the start-up check.
    skip         rank 1 exits 0 at once without initialising; rank 0 waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(mode: str) -> int:
    rank = int(os.environ.get("DISTMAP_PROCESS_ID", "0"))
    if mode == "skip" and rank == 1:
        print("rank 1 leaves without joining", flush=True)
        return 0

    from distmap import distributed

    fingerprint = {"learning_rate": 0.1 * (rank + 1), "steps": 10} if mode == "fingerprint" else None
    config = distributed.initialize(fingerprint=fingerprint)
    assert distributed.initialize() is config  # a second call with nothing new is a no-op
    from distmap._src.jax_internals import backend_started as _backend_started

    assert not _backend_started()  # joining (and the start-up check) leave the backend to the program

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import distmap

    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("x",), devices=jax.devices())
    per = jax.local_device_count()
    local = np.arange(per * 3, dtype=np.float32).reshape(per, 3) + 100 * jax.process_index()
    g = multihost_utils.host_local_array_to_global_array(local, mesh, P("x"))
    psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "x"), mesh=mesh, in_specs=P("x"), out_specs=P()))

    if mode in ("die", "raise"):
        step = 0
        while True:
            jax.block_until_ready(psum(g))
            step += 1
            print(f"step {step}", flush=True)
            if rank == 1 and step == 2:
                if mode == "raise":
                    raise RuntimeError("rank 1 fails at step 2")
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)

    out: dict = {}
    out["psum"] = np.asarray(psum(g).addressable_data(0)).tolist()
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(g)
    out["sum"] = float(total.addressable_data(0))

    # A sharded distmap.vmap with a named collective across both processes.
    dmesh = distmap.make_mesh({"data": n_dev})
    rows = 2 * n_dev // jax.process_count()
    xs = np.arange(2 * n_dev, dtype=np.float32)[rank * rows : (rank + 1) * rows]
    local_x = distmap.named(xs, ("batch",))  # on this process's first device (outside jax.set_mesh)
    with distmap.axis_mapping({"batch": "data"}), jax.set_mesh(dmesh):
        x = distributed.host_local_to_global(distmap.named(xs, ("batch",)), mesh=dmesh)
        y = jax.jit(distmap.vmap(lambda v: v - distmap.pmean(v, "batch"), "batch"))(x)
        back = distributed.global_to_host_local(y)
        # A process-local array handed to a map over a multi-process mesh is refused, never mixed up.
        try:
            distmap.vmap(lambda v: v * 2, "batch")(local_x)
            out["local_input"] = "accepted"
        except distmap.errors.MeshError as e:
            out["local_input"] = str(e)
    out["centered_local"] = np.asarray(back.array).tolist()

    hybrid = distributed.make_hybrid_mesh({"data": per}, {"data": jax.process_count()})
    out["hybrid"] = [[d.process_index for d in row] for row in np.asarray(hybrid.devices).reshape(1, -1)]
    out["processes"] = [jax.process_index(), jax.process_count(), per]
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
