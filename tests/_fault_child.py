"""The program the fault tests and ``benchmarks/bench_launch.py`` launch: ``python tests/_fault_child.py MODE [STEPS]``.

Both ranks run ``STEPS`` steps (default 8). Each step's data depends on the step number, a
jitted cross-process ``psum`` (wrapped in ``distributed.watched`` so the progress watch
counts it) sums it, and the rank prints ``step K sum S ok`` or ``... WRONG`` by comparing
with the sum it expects, so a collective paired with the wrong partner shows. Rank 1 does
the fault at step 3:

    ok        nothing goes wrong; rank 1 registers an atexit handler (it must run)
    raise     rank 1 raises
    exit3     rank 1 calls sys.exit(3) (an atexit handler registered in main must still run)
    absl      an absl main that calls sys.exit(3) on rank 1
    kill      rank 1 SIGKILLs itself
    stall     rank 1 sleeps (600 s) before its step-3 collective
    skip      rank 1 skips its step-3 collective (``verify`` before each print)
    skipadd   rank 1 skips step 3's collective and runs one extra at step 6 (``verify`` before each print)
    skipquiet rank 1 skips its step-3 collective; no ``verify``, only the background watch
    vmapskip  the collective is a sharded ``distmap.vmap`` with a ``distmap.psum`` over the batch
              (counted by the map engine itself, not ``watched``); rank 1 skips it at step 3
              (``verify`` before each print)
    jitskipadd  the same map under ``jax.jit`` (traced once, so only the collective check, which
              counts executions, sees it); rank 1 skips step 3's and runs an extra one at step 6
              (``verify`` before each print)
    bench     no fault; STEPS steps in blocks of 25, the watch (its thread and note) on and paused
              in turn (on, off, off, on, ...); prints ``STEP_S <median s per step, watch off>`` and ``AB <median
              ratio of the on / off block times>``
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap import distributed


def run(mode: str, steps: int) -> int:
    distributed.initialize()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import PartitionSpec as P

    rank, n = jax.process_index(), jax.process_count()
    if mode in ("ok", "exit3", "absl"):
        atexit.register(lambda: print(f"rank {rank}: atexit handler ran", flush=True))
    mesh = jax.make_mesh((jax.device_count(),), ("x",), devices=jax.devices())
    per = jax.local_device_count()
    width = 256 if mode == "bench" else 4
    if mode in ("vmapskip", "jitskipadd"):
        import distmap

        summed = distmap.vmap(lambda row: distmap.psum(row, "batch"), "batch", mesh=mesh, axis_mapping={"batch": "x"})
        if mode == "jitskipadd":
            summed = jax.jit(summed)

        def psum(a):  # the same per-device value as the shard_map below: the sum over every row
            return summed(distmap.named(a, ("batch", "f"))).array
    else:
        psum = distributed.watched(jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "x"), mesh=mesh, in_specs=P("x"),
                                                         out_specs=P())), "psum")

    def data(step: int):
        local = np.full((per, width), float(100 * step + rank), np.float32)
        return multihost_utils.host_local_array_to_global_array(local, mesh, P("x"))

    def expected(step: int) -> float:
        return float(sum(100 * step + r for r in range(n)) * per)

    times = []
    from distmap._src import progress

    watch, blocks = progress.active(), {True: [], False: []}
    for step in range(1, steps + 1):
        if mode == "bench" and watch is not None and step % 25 == 1:
            on = (step // 25) % 4 in (0, 3)  # on, off, off, on, ...: a trend hits both alike
            progress._WATCH, watch.paused = (watch if on else None), not on
            block_start = time.perf_counter()
        t0 = time.perf_counter()
        if rank == 1 and step == 3:
            if mode in ("raise", "exit3", "absl", "kill", "stall"):
                print(f"FAULT {time.time()!r}", flush=True)  # for benchmarks/bench_launch.py
            if mode == "raise":
                raise RuntimeError("rank 1 fails at step 3")
            if mode in ("exit3", "absl"):
                return 3
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "stall":
                time.sleep(600)
        skipped = rank == 1 and step == 3 and (mode.startswith("skip") or mode in ("vmapskip", "jitskipadd"))
        out = None if skipped else psum(data(step))
        if rank == 1 and step == 6 and mode in ("skipadd", "jitskipadd"):
            psum(data(step))  # one more, so the counts agree again at the end
        if mode in ("skip", "skipadd", "vmapskip", "jitskipadd"):
            distributed.verify(f"step {step}")
        if out is not None:
            got = float(np.asarray(out.addressable_data(0))[0, 0]) * per
            times.append(time.perf_counter() - t0)
            if mode != "bench":
                print(f"step {step} sum {got:g} {'ok' if got == expected(step) else 'WRONG'}", flush=True)
        if mode != "bench":
            time.sleep(0.05)
        elif watch is not None and step % 25 == 0 and step > 25:
            blocks[on].append(time.perf_counter() - block_start)
    if mode == "bench":
        print(f"STEP_S {float(np.median(times[len(times) // 4:])):.6g}", flush=True)
        pairs = min(len(blocks[True]), len(blocks[False]))
        if pairs:
            ratios = [a / b for a, b in zip(blocks[True][:pairs], blocks[False][:pairs])]
            print(f"AB {float(np.median(ratios)):.6g}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode = argv[1]
    steps = int(argv[2]) if len(argv) > 2 else 8
    if mode == "absl":
        from absl import app

        def absl_main(_: list[str]) -> None:
            code = run(mode, steps)
            sys.exit(code)  # looked up after initialize() replaced it (app.run's own sys.exit was looked up before)

        app.run(absl_main, argv=[argv[0]])
    return run(mode, steps)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.exit(code)  # after main: initialize() replaced sys.exit by then
