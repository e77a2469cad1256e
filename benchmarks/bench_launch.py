"""Start-up cost of multi-process runs: launch to first step, and the launcher's overhead.

Run ``python benchmarks/bench_launch.py`` from the repository root. For 2 and 4 local
processes (2 CPU devices each) it prints two tables, medians of ``--repeats`` runs taken in
interleaved order so machine noise hits both columns alike:

1. **launch to first step**: from the moment the command starts until every rank has
   printed a marker after ``distmap.distributed.initialize()`` (which includes the start-up
   check) and its first jitted step (a global sum across all processes);
2. **launcher cost**: the same with a program that prints the marker at once, so only
   process start-up and the launcher's own work remain.

A third and fourth table (``--only=faults``) measure what happens when a rank fails (see
"Faults" below).

Each compares ``python launch/local.py --num_processes=N -- python PROGRAM`` with starting
the same N processes **by hand**: a minimal parent (what a shell loop does) that starts them
with the same environment (``contract.child_env``), each in its own session as the launcher
does. (With Linux's autogroup scheduling a session is a scheduling group, so on a busy
machine ranks left in the caller's session share one CPU share and start measurably slower,
which would flatter the launcher.) The difference is the launcher's overhead: its own
interpreter start-up, absl and distmap's launch code (JAX is not imported), and supervision.

With ``--slurm`` (needs ``slurm-wlm``, as root) a third table: a 2-task job on a real
one-node SLURM cluster started for the benchmark on 127.0.0.1 (``tests/_slurm_cluster.py``),
from the moment the command starts until both tasks printed the marker after their first
step: ``launch/slurm.py`` (sbatch, the batch script, srun) against the hand-written
``srun --ntasks=2 python PROGRAM`` a SLURM user would type. Both go through JAX's SLURM
detection; the difference is the batch queue plus the launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

MARKER = "FIRST_STEP"

# One write per marker: ranks started by hand share one pipe.
FIRST_STEP = f"""
import sys, time
sys.path.insert(0, {_ROOT!r})
from distmap import distributed
distributed.initialize()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ("x",), devices=jax.devices())
sharding = NamedSharding(mesh, P("x"))
x = jax.make_array_from_callback((jax.device_count() * 4,), sharding, lambda idx: np.ones(4, np.float32))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
jax.block_until_ready(total)
sys.stdout.write(f"{MARKER} {{time.time()}}\\n")
sys.stdout.flush()
"""

TRIVIAL = f"""
import sys, time
sys.stdout.write(f"{MARKER} {{time.time()}}\\n")
"""

_BY_HAND = (
    "import json, subprocess, sys\n"
    "envs = json.loads(sys.argv[1])\n"
    "procs = [subprocess.Popen([sys.executable, sys.argv[2]], env=e, stdin=subprocess.DEVNULL, start_new_session=True)"
    " for e in envs]\n"
    "sys.exit(max(p.wait() for p in procs))\n"
)


def _wait_for_markers(proc: subprocess.Popen, n: int, t0: float) -> float:
    """Seconds from ``t0`` until the last of ``n`` markers (each stamped by its rank)."""
    assert proc.stdout is not None
    stamps = [float(line.split(MARKER, 1)[1].split()[0]) for line in proc.stdout if MARKER in line]
    proc.wait()
    if proc.returncode != 0 or len(stamps) != n:
        raise RuntimeError(f"benchmark run failed: exit code {proc.returncode}, {len(stamps)} of {n} markers")
    return max(stamps) - t0


def time_launcher(program: str, n: int, devices: int, log_dir: str) -> float:
    """Seconds from starting ``launch/local.py`` until all ``n`` ranks printed their marker."""
    cmd = [
        sys.executable, os.path.join(_ROOT, "launch", "local.py"), f"--num_processes={n}",
        f"--devices_per_process={devices}", f"--log_dir={log_dir}", "--", sys.executable, program,
    ]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return _wait_for_markers(proc, n, t0)


def time_by_hand(program: str, n: int, devices: int) -> float:
    """Seconds from starting ``n`` ranks by hand (same environment) until all printed their marker."""
    from distmap._src.launch import contract
    from distmap._src.launch.local import free_port

    port = free_port()
    envs = [
        contract.child_env(contract.RankSpec(f"127.0.0.1:{port}", n, rank, "bench", cpu_devices=devices, init_timeout=60))
        for rank in range(n)
    ]
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", _BY_HAND, json.dumps(envs), program], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return _wait_for_markers(proc, n, t0)


def measure(program: str, processes: list[int], devices: int, repeats: int, log_dir: str) -> list[tuple[int, float, float]]:
    """``(processes, launcher median s, by-hand median s)`` for each process count."""
    rows = []
    for n in processes:
        time_by_hand(program, n, devices)  # warm the file cache
        launched, by_hand = [], []
        for _ in range(repeats):
            launched.append(time_launcher(program, n, devices, log_dir))
            by_hand.append(time_by_hand(program, n, devices))
        rows.append((n, statistics.median(launched), statistics.median(by_hand)))
    return rows


def _slurm_markers(paths: list[str], n: int) -> list[float]:
    stamps = []
    for path in paths:
        with open(path) as f:
            stamps += [float(line.split(MARKER, 1)[1].split()[0]) for line in f if MARKER in line]
    if len(stamps) != n:
        raise RuntimeError(f"benchmark job failed: {len(stamps)} of {n} markers in {paths}")
    return stamps


def time_slurm_launcher(cluster, program: str, devices: int, log_dir: str, run_id: str) -> float:
    """Seconds from starting ``launch/slurm.py`` (2 tasks) until both tasks printed their marker."""
    from _daemon import free_port

    cmd = [
        sys.executable, os.path.join(_ROOT, "launch", "slurm.py"), "--nodes=1", "--tasks_per_node=2",
        f"--devices_per_process={devices}", f"--coordinator_port={free_port()}", "--coordinator_bind_host=127.0.0.1",
        "--init_timeout=60", f"--log_dir={log_dir}", f"--run_id={run_id}", f"--workdir={_ROOT}", "--",
        sys.executable, program,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"launch/slurm.py failed: {proc.stderr}")
    job = cluster.wait(proc.stdout.strip())
    if job.get("ExitCode") != "0:0":
        raise RuntimeError(f"benchmark job failed: {job}")
    run_dir, job_id = os.path.join(log_dir, run_id), proc.stdout.strip()
    return max(_slurm_markers([os.path.join(run_dir, f"rank_{t}.job{job_id}.log") for t in range(2)], 2)) - t0


def time_slurm_srun(cluster, program: str, devices: int) -> float:
    """Seconds from a hand-written ``srun --ntasks=2 python PROGRAM`` until both tasks printed their marker."""
    from _daemon import free_port

    port = free_port()
    env = dict(cluster.env, DISTMAP_CPU_DEVICES=str(devices), JAX_COORDINATOR_PORT=str(port),
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    t0 = time.time()
    proc = subprocess.Popen(["srun", "--nodes=1", "--ntasks=2", "--kill-on-bad-exit=1", sys.executable, program],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    return _wait_for_markers(proc, 2, t0)


def measure_slurm(program: str, devices: int, repeats: int, tmp: str) -> tuple[float, float]:
    """``(launch/slurm.py median s, hand-written srun median s)`` on a one-node cluster started here."""
    sys.path.insert(0, os.path.join(_ROOT, "tests"))
    import _slurm_cluster

    reason = _slurm_cluster.why_not()
    if reason:
        raise SystemExit(f"--slurm {reason}")
    cluster = _slurm_cluster.start(os.path.join(tmp, "slurm"))
    try:
        time_slurm_srun(cluster, program, devices)  # warm the file cache
        launched, by_hand = [], []
        for k in range(repeats):
            launched.append(time_slurm_launcher(cluster, program, devices, os.path.join(tmp, "slurm_runs"), f"b{k}"))
            by_hand.append(time_slurm_srun(cluster, program, devices))
    finally:
        left = cluster.stop()
    if left:
        print(f"(SLURM left processes {left}; killed)")
    return statistics.median(launched), statistics.median(by_hand)


def _slurm_table(devices: int, repeats: int, row: tuple[float, float]) -> None:
    a, b = row
    print(f"SLURM, 2 tasks on a one-node cluster: command to first step ({devices} CPU devices per task, "
          f"median of {repeats})")
    print(f"{'launch/slurm.py (sbatch)':>24} | {'srun by hand':>12} | {'difference':>10}")
    print(f"{'-' * 24}-+-{'-' * 12}-+-{'-' * 10}")
    print(f"{a:>22.2f} s | {b:>10.2f} s | {a - b:>+8.2f} s")
    print()


def _table(title: str, rows: list[tuple[int, float, float]]) -> None:
    print(title)
    print(f"{'processes':>9} | {'launch/local.py':>15} | {'by hand':>8} | {'overhead':>8}")
    print(f"{'-' * 9}-+-{'-' * 15}-+-{'-' * 8}-+-{'-' * 8}")
    for n, a, b in rows:
        print(f"{n:>9} | {a:>13.2f} s | {b:>6.2f} s | {a - b:>+6.2f} s")
    print()


# --------------------------------------------------------------------------------------
# Faults: fault to all stopped, and what the progress watch costs
#
# ``tests/_fault_child.py MODE`` runs a step loop (a jitted cross-process psum per step); rank
# 1 stamps ``FAULT <time>`` and then raises, calls ``sys.exit(3)``, SIGKILLs itself or sleeps
# (a stall). "Fault to all stopped" is from that stamp until the launcher has exited, i.e.
# every rank has ended and been reaped. Without the watch the launcher stops the other ranks
# (SIGTERM, which JAX's preemption handler swallows, then SIGKILL after --grace_period); with
# it they also end by themselves once the failing rank is gone. A stall is only noticed
# after the stall timeout, which is included.

_FAULT_CHILD = os.path.join(_ROOT, "tests", "_fault_child.py")
_QUICK_JAX = {"DISTMAP_SHUTDOWN_TIMEOUT": "5", "DISTMAP_HEARTBEAT_TIMEOUT": "5"}


def _launch_env_program(settings: dict[str, str], args: list[str]) -> list[str]:
    # The launchers drop inherited DISTMAP_* variables; ``env`` sets them in each rank.
    return ["env", *(f"{k}={v}" for k, v in settings.items()), sys.executable, *args]


def fault_to_stopped(mode: str, n: int, stall_timeout: float, log_dir: str, grace: float = 5.0) -> tuple[float, int, str]:
    """(seconds from rank 1's fault until the launcher exited, its exit code, the rank it named)."""
    settings = {**_QUICK_JAX, "DISTMAP_STALL_TIMEOUT": f"{stall_timeout:g}"}
    cmd = [sys.executable, os.path.join(_ROOT, "launch", "local.py"), f"--num_processes={n}", "--devices_per_process=1",
           f"--grace_period={grace:g}", "--timeout=120", f"--log_dir={log_dir}", "--",
           *_launch_env_program(settings, [_FAULT_CHILD, mode, "1000"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    end = time.time()
    stamps = [float(line.split("FAULT ", 1)[1]) for line in out.splitlines() if "FAULT " in line]
    if not stamps:
        raise RuntimeError(f"fault benchmark {mode}: no fault stamp (exit {proc.returncode}): {err[-2000:]}")
    found = re.search(r"distmap launch: rank (\d+)", err)
    named = found.group(1) if found else "?"
    return end - stamps[0], proc.returncode, named


def _ab(out: str, n: int, what: str) -> list[float]:
    values = [float(line.split("AB ", 1)[1]) for line in out.splitlines() if "AB " in line]
    if len(values) != n:
        raise RuntimeError(f"{what}: {len(values)} of {n} ranks reported:\n{out[-2000:]}")
    return values


def psum_step_cost(n: int, stall_timeout: float, steps: int, log_dir: str) -> tuple[float, float]:
    """(seconds per step, step time ratio watch on / off) of the fault child's ``bench`` loop.

    In one run, blocks of 25 steps alternate between the watch on (its thread publishing,
    one ``note`` per step) and paused, so machine noise hits both alike.
    """
    settings = {**_QUICK_JAX, "DISTMAP_STALL_TIMEOUT": f"{stall_timeout:g}"}
    cmd = [sys.executable, os.path.join(_ROOT, "launch", "local.py"), f"--num_processes={n}", "--devices_per_process=1",
           f"--log_dir={log_dir}", "--", *_launch_env_program(settings, [_FAULT_CHILD, "bench", str(steps)])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    step = max(float(line.split("STEP_S ", 1)[1]) for line in out.splitlines() if "STEP_S " in line)
    return step, max(_ab(out, n, "psum step benchmark"))


# The main job's training step (examples/ensemble.py with configs/local_2proc.flags), run in
# blocks that alternate the watch on and paused, as above. The step is wrapped in
# distributed.watched: one note per step, what the map engine's hook adds per sharded call.
# What both step benchmarks start with: the main job's flags, model and data on 2 processes x 4 devices.
MAIN_JOB_SETUP = f"""
import os, statistics, sys, time
sys.path[:0] = [{_ROOT!r}, os.path.join({_ROOT!r}, "examples")]
from absl import flags
import ensemble, distmap, distmap.flags
flags.FLAGS(["ensemble", "--flagfile=" + os.path.join({_ROOT!r}, "configs", "local_2proc.flags")])
from distmap import distributed
from distmap._src import collective_check, jax_internals, progress
distributed.initialize_from_flags()
import equinox as eqx, jax
mesh = distmap.make_mesh(distmap.flags.mesh_shape_from_flags())
mapping = distmap.flags.axis_mapping_from_flags()
rank, nproc = jax.process_index(), jax.process_count()
x_all, y_all = ensemble.make_data(512, 16, 0)
rows = slice(rank * 512 // nproc, (rank + 1) * 512 // nproc)
local = {{"x": distmap.named(x_all[rows], ("batch", "feature")), "y": distmap.named(y_all[rows], ("batch",))}}
"""

ENSEMBLE_AB = MAIN_JOB_SETUP + """
with distmap.axis_mapping(mapping), jax.set_mesh(mesh):
    data = distributed.host_local_to_global(local, mesh=mesh)
    model = distmap.shard(ensemble.build(4, 16, 64, 0), mesh=mesh)

    @eqx.filter_jit
    def step(m, xb, yb):
        loss, grads = eqx.filter_value_and_grad(lambda mm: ensemble.loss_fn(mm, xb, yb))(m)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, m, grads), loss

    step = distributed.watched(step, "ensemble step")
    watch, blocks = progress.active(), {True: [], False: []}
    model, loss = step(model, data["x"], data["y"]); float(loss)  # compile
    for b in range(int(sys.argv[1])):
        on = b % 4 in (0, 3)  # on, off, off, on, ...: a trend over the run hits both alike
        progress._WATCH, watch.paused = (watch if on else None), not on
        t0 = time.perf_counter()
        for _ in range(25):
            model, loss = step(model, data["x"], data["y"])
            float(loss)
        blocks[on].append(time.perf_counter() - t0)
    progress._WATCH, watch.paused = watch, False
ratios = [a / b for a, b in zip(blocks[True][1:], blocks[False][1:])]
print(f"STEP_S {statistics.median(blocks[False]) / 25:.6g}", flush=True)
print(f"AB {statistics.median(ratios):.6g}", flush=True)
print(f"WATCH_CPU {watch.cpu_s / sum(blocks[True]):.6g}", flush=True)  # its thread's CPU share while on
"""


def ensemble_step_cost(stall_timeout: float, blocks: int, log_dir: str, program: str) -> tuple[float, float, float]:
    """(seconds per step, step time ratio watch on / off, CPU share of the watch thread) of the main job's step."""
    flagfile = os.path.join(_ROOT, "configs", "local_2proc.flags")
    settings = {"DISTMAP_STALL_TIMEOUT": f"{stall_timeout:g}"}
    cmd = [sys.executable, os.path.join(_ROOT, "launch", "local.py"), f"--flagfile={flagfile}", f"--log_dir={log_dir}",
           "--", *_launch_env_program(settings, [program, str(blocks)])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    steps = [float(line.split("STEP_S ", 1)[1]) for line in out.splitlines() if "STEP_S " in line]
    if not steps:
        raise RuntimeError(f"ensemble benchmark failed (exit {proc.returncode}):\n{(out + proc.stderr)[-3000:]}")
    cpu = max(float(line.split("WATCH_CPU ", 1)[1]) for line in out.splitlines() if "WATCH_CPU " in line)
    return max(steps), max(_ab(out, 2, "ensemble benchmark")), cpu


def note_cost(calls: int = 200_000) -> tuple[float, float]:
    """Seconds per ``progress.note`` call: with a watch (its thread not started), and without one."""
    from distmap._src import progress

    watch = progress._Watch(client=None, rank=0, num_processes=2, stall_timeout=10.0, interval=1.0, peer_grace=1.0)
    key = ("batch", (512, 16))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            watch.note("vmap", key)
        best = min(best, (time.perf_counter() - t0) / calls)
    off = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            progress.note("vmap", key)
        off = min(off, (time.perf_counter() - t0) / calls)
    return best, off


def faults(processes: list[int], repeats: int, log_dir: str, *, table: bool = True, cost: bool = True) -> None:
    if table:
        fault_table(processes, repeats, log_dir)
    if cost:
        watch_cost(processes, repeats, log_dir)


def fault_table(processes: list[int], repeats: int, log_dir: str) -> None:
    rows = []
    for n in processes:
        for mode, label in (("raise", "raises"), ("exit3", "sys.exit(3)"), ("kill", "SIGKILLed"), ("stall", "stalls")):
            settings = [("watch off", 0.0), ("watch on, 10 s", 10.0)] if mode != "stall" else [("watch on, 2 s", 2.0)]
            for name, stall in settings:
                got = [fault_to_stopped(mode, n, stall, log_dir) for _ in range(repeats)]
                codes = sorted({f"{c} (rank {r})" for _, c, r in got})
                rows.append((n, label, name, statistics.median(t for t, _, _ in got), ", ".join(codes)))
    print(f"fault to all stopped: rank 1 fails after 2 steps; launch/local.py --grace_period=5 (median of {repeats})")
    print(f"{'processes':>9} | {'rank 1':<11} | {'watch':<14} | {'all stopped':>11} | launcher exit (names)")
    print(f"{'-' * 9}-+-{'-' * 11}-+-{'-' * 14}-+-{'-' * 11}-+-{'-' * 22}")
    for n, label, name, t, codes in rows:
        print(f"{n:>9} | {label:<11} | {name:<14} | {t:>9.2f} s | {codes}")
    print()


def watch_cost(processes: list[int], repeats: int, log_dir: str) -> None:
    on, off = note_cost()
    print(f"progress.note: {on * 1e6:.2f} us a call with a watch, {off * 1e9:.0f} ns without")
    lines = []
    for n in processes:
        got = [psum_step_cost(n, 2.0, 1000, log_dir) for _ in range(repeats)]
        lines.append(f"  {n} processes, a 256-wide psum step ({statistics.median(g[0] for g in got) * 1e3:.2f} ms): "
                     f"on / off = {statistics.median(g[1] for g in got):.4f}")
    program = os.path.join(log_dir, "ensemble_ab.py")
    os.makedirs(log_dir, exist_ok=True)
    with open(program, "w") as f:
        f.write(ENSEMBLE_AB)
    for stall in (2.0, 10.0):
        got = [ensemble_step_cost(stall, 40, log_dir, program) for _ in range(repeats)]
        lines.append(f"  main job (examples/ensemble.py's step, 2 processes x 4 devices, "
                     f"{statistics.median(g[0] for g in got) * 1e3:.1f} ms), stall timeout {stall:g} s: "
                     f"on / off = {statistics.median(g[1] for g in got):.4f}; the watch thread's CPU time "
                     f"{statistics.median(g[2] for g in got) * 100:.3f}% of the time it ran")
    print(f"progress watch cost per step (it publishes every min(T/8, 1) s: 0.25 s for T = 2 s, 1 s for T >= 8 s), "
          f"blocks alternating on / paused within one run, median of {repeats} runs:")
    print("\n".join(lines))
    print()


# --------------------------------------------------------------------------------------
# Stops, restarts and the collective check
#
# Stop to all exited: the main job (2 processes x 4 CPU devices, configs/local_2proc.flags) runs
# until its step 10 is printed; then the stop is sent (SIGTERM to launch/local.py or launch/ssh.py;
# ``scancel --batch --signal=TERM``, what ``#SBATCH --signal=B:TERM@...`` does before a time limit,
# to a SLURM job) and the clock runs until the launcher has exited (SLURM: the job left squeue),
# every rank ended and reaped. Three programs: the main job with --checkpoint_dir (it saves its
# sharded parameters with orbax at the agreed step, then exits 143), the same without a checkpoint
# folder (it ends at the agreed step), and a JAX loop that ignores the stop (JAX's preemption
# notifier swallows the SIGTERM; it is killed after --grace_period=5).

_IGNORES = f"""
import sys, time
sys.path.insert(0, {_ROOT!r})
from distmap import distributed
distributed.initialize()
import jax, jax.numpy as jnp
x = jnp.ones(4)
for i in range(100000):
    x = jax.jit(lambda v: v * 1.0)(x).block_until_ready()
    if i == 10:
        print("step   10", flush=True)
    time.sleep(0.02)
"""


def _main_job(extra: list[str]) -> list[str]:
    flagfile = os.path.join(_ROOT, "configs", "local_2proc.flags")
    return [sys.executable, os.path.join(_ROOT, "examples", "ensemble.py"), f"--flagfile={flagfile}", "--steps=100000",
            "--log_every=10", "--nocheck", *extra]


def _stop_programs(tmp: str) -> dict[str, Any]:
    """Each program as a function of the run's number (every run saves into a checkpoint folder of its own)."""
    ignores = os.path.join(tmp, "ignores.py")
    with open(ignores, "w") as f:
        f.write(_IGNORES)
    return {"saves (orbax)": lambda k: _main_job([f"--checkpoint_dir={os.path.join(tmp, f'ckpt{k}')}",
                                                   "--checkpoint_every=100000"]),
            "ends, no save": lambda k: _main_job([]),
            "ignores the stop": lambda k: [sys.executable, ignores]}


def _run_until_step_10(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "step   10" in line:
            return proc
    raise RuntimeError(f"benchmark program ended before its step 10: exit {proc.wait()}")


def stop_local_or_ssh(launcher: list[str], program: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(seconds from SIGTERM to the launcher until it exited, its exit code)."""
    proc = _run_until_step_10([*launcher, "--grace_period=5", "--", *program], env)
    try:
        t0 = time.monotonic()
        proc.send_signal(15)
        proc.communicate(timeout=120)
        return time.monotonic() - t0, proc.returncode
    finally:
        if proc.poll() is None:  # never leave a launcher (and its ranks) behind
            proc.send_signal(15)
            proc.wait(60)


def stop_slurm(cluster, program: list[str], log_dir: str, run_id: str) -> tuple[float, int]:
    """(seconds from ``scancel --batch --signal=TERM`` until the job left the queue, its exit code)."""
    cmd = [sys.executable, os.path.join(_ROOT, "launch", "slurm.py"), "--nodes=1", "--tasks_per_node=2",
           "--devices_per_process=4", "--coordinator_bind_host=127.0.0.1", "--grace_period=5", f"--log_dir={log_dir}",
           f"--run_id={run_id}", f"--workdir={_ROOT}", "--", *program]
    sub = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, timeout=60)
    job_id = sub.stdout.strip()
    log = os.path.join(log_dir, run_id, f"rank_0.job{job_id}.log")
    end = time.monotonic() + 120
    while not (os.path.exists(log) and "step   10" in open(log).read()):
        if time.monotonic() > end:
            raise RuntimeError(f"SLURM benchmark job {job_id} never reached step 10: {cluster.job(job_id)}")
        time.sleep(0.05)
    t0 = time.monotonic()
    cluster.run("scancel", "--batch", "--signal=TERM", job_id)
    while cluster.run("squeue", "-h", "-j", job_id, "-o", "%i").stdout.strip():
        time.sleep(0.05)
    took = time.monotonic() - t0
    return took, int(cluster.job(job_id).get("ExitCode", "0:0").split(":")[0])


def stop_table(repeats: int, tmp: str, where: list[str]) -> None:
    programs = _stop_programs(tmp)
    rows = []
    local = [sys.executable, os.path.join(_ROOT, "launch", "local.py"),
             f"--flagfile={os.path.join(_ROOT, 'configs', 'local_2proc.flags')}", f"--log_dir={tmp}/runs"]
    if "local" in where:
        for name, program in programs.items():
            got = [stop_local_or_ssh(local, program(k)) for k in range(repeats)]
            rows.append(("local", name, statistics.median(t for t, _ in got), sorted({c for _, c in got})))
    if "ssh" in where:
        sys.path.insert(0, os.path.join(_ROOT, "tests"))
        import _ssh_server

        server = _ssh_server.start(os.path.join(tmp, "sshd"))
        try:
            ssh = [sys.executable, os.path.join(_ROOT, "launch", "ssh.py"), "--hosts=127.0.0.1,127.0.0.1",
                   f"--ssh_config={server.ssh_config}", "--coordinator_host=127.0.0.1", f"--remote_dir={_ROOT}",
                   "--devices_per_process=4", f"--log_dir={tmp}/runs"]
            for name, program in programs.items():
                got = [stop_local_or_ssh(ssh, program(k + 100)) for k in range(repeats)]
                rows.append(("ssh", name, statistics.median(t for t, _ in got), sorted({c for _, c in got})))
        finally:
            server.stop()
    if "slurm" in where:
        sys.path.insert(0, os.path.join(_ROOT, "tests"))
        import _slurm_cluster

        cluster = _slurm_cluster.start(os.path.join(tmp, "slurm"))
        try:
            for k, (name, program) in enumerate(programs.items()):
                got = [stop_slurm(cluster, program(k * 10 + r + 200), f"{tmp}/runs", f"s{k}-{r}") for r in range(repeats)]
                rows.append(("SLURM", name, statistics.median(t for t, _ in got), sorted({c for _, c in got})))
        finally:
            cluster.stop()
    print(f"stop to all ranks exited: the main job (2 processes x 4 devices) stopped after its step 10, "
          f"--grace_period=5 (median of {repeats})")
    print(f"{'launcher':<8} | {'program':<16} | {'stop to all exited':>18} | exit code")
    print(f"{'-' * 8}-+-{'-' * 16}-+-{'-' * 18}-+-{'-' * 10}")
    for where_, name, t, codes in rows:
        print(f"{where_:<8} | {name:<16} | {t:>16.2f} s | {', '.join(map(str, codes))}")
    print()


# Restart to first step: rank 1 fails (sys.exit(3)) right after its first step; launch/local.py
# --max_restarts=1 starts both ranks again; the clock runs from rank 1's failure stamp to the last
# first-step marker of the second attempt (initialize, the start-up check, a first jitted sum).
_RESTARTER = FIRST_STEP + """
import os
if os.environ["DISTMAP_ATTEMPT"] == "0" and jax.process_index() == 1:
    sys.stdout.write(f"FAULT {time.time()}\\n"); sys.stdout.flush()
    sys.exit(3)
"""


def restart_to_first_step(program: str, devices: int, backoff: float, log_dir: str) -> float:
    cmd = [sys.executable, os.path.join(_ROOT, "launch", "local.py"), "--num_processes=2",
           f"--devices_per_process={devices}", "--max_restarts=1", f"--restart_backoff={backoff:g}",
           f"--log_dir={log_dir}", "--", sys.executable, program]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    fault = [float(line.split("FAULT ", 1)[1]) for line in out.stdout.splitlines() if "FAULT " in line]
    stamps = [float(line.split(MARKER, 1)[1].split()[0]) for line in out.stdout.splitlines() if MARKER in line]
    if out.returncode != 0 or len(fault) != 1 or len(stamps) != 4:
        raise RuntimeError(f"restart benchmark failed: exit {out.returncode}\n{out.stderr[-2000:]}")
    return max(stamps) - fault[0]


def restart_table(devices: int, repeats: int, tmp: str) -> None:
    program = os.path.join(tmp, "restarter.py")
    with open(program, "w") as f:
        f.write(_RESTARTER)
    print(f"restart to first step: rank 1 fails after its first step, launch/local.py --max_restarts=1, 2 processes x "
          f"{devices} devices (median of {repeats})")
    for backoff in (0.0, 1.0):
        got = [restart_to_first_step(program, devices, backoff, f"{tmp}/runs") for _ in range(repeats)]
        print(f"  --restart_backoff={backoff:g}{' (default)' if backoff == 1.0 else ''}: failure to the restarted "
              f"ranks' first step {statistics.median(got):.2f} s")
    print()


# The collective check's cost on the main job's training step: the step is traced twice in one
# run, once with the check on (a callback per device and an all-gather of 3 int32 per sharded map)
# and once without, and blocks of 25 steps of each alternate (on, off, off, on, ...).
CHECK_AB = MAIN_JOB_SETUP + """

def make_step():
    @eqx.filter_jit
    def step(m, xb, yb):
        loss, grads = eqx.filter_value_and_grad(lambda mm: ensemble.loss_fn(mm, xb, yb))(m)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, m, grads), loss
    return step

with distmap.axis_mapping(mapping), jax.set_mesh(mesh):
    data = distributed.host_local_to_global(local, mesh=mesh)
    model = distmap.shard(ensemble.build(4, 16, 64, 0), mesh=mesh)
    steps = {}
    for on in (True, False):
        collective_check.start(rank, jax_internals.distributed_client()) if on else collective_check.stop()
        steps[on] = make_step()
        m, loss = steps[on](model, data["x"], data["y"]); float(loss)  # trace and compile
    collective_check.start(rank, jax_internals.distributed_client())
    blocks = {True: [], False: []}
    for b in range(int(sys.argv[1])):
        on = b % 4 in (0, 3)
        t0 = time.perf_counter()
        for _ in range(25):
            model, loss = steps[on](model, data["x"], data["y"])
            float(loss)
        blocks[on].append(time.perf_counter() - t0)
ratios = [a / b for a, b in zip(blocks[True][1:], blocks[False][1:])]
print(f"STEP_S {statistics.median(blocks[False]) / 25:.6g}", flush=True)
print(f"AB {statistics.median(ratios):.6g}", flush=True)
"""


def check_cost(blocks: int, repeats: int, tmp: str) -> None:
    program = os.path.join(tmp, "check_ab.py")
    with open(program, "w") as f:
        f.write(CHECK_AB)
    flagfile = os.path.join(_ROOT, "configs", "local_2proc.flags")
    got = []
    for _ in range(repeats):
        cmd = [sys.executable, os.path.join(_ROOT, "launch", "local.py"), f"--flagfile={flagfile}",
               f"--log_dir={tmp}/runs", "--", sys.executable, program, str(blocks)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        steps = [float(line.split("STEP_S ", 1)[1]) for line in proc.stdout.splitlines() if "STEP_S " in line]
        if not steps:
            raise RuntimeError(f"check benchmark failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        got.append((max(steps), max(_ab(proc.stdout, 2, "check benchmark"))))
    step, ratio = statistics.median(g[0] for g in got), statistics.median(g[1] for g in got)
    print(f"collective check on the main job's step (2 processes x 4 devices, {step * 1e3:.1f} ms a step without it), "
          f"blocks of 25 steps alternating on / off in one run, median of {repeats} runs: on / off = {ratio:.4f} "
          f"({(ratio - 1) * 100:+.2f}% a step)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slurm", action="store_true", help="also time a 2-task job on a real one-node SLURM cluster")
    parser.add_argument("--slurm_repeats", type=int, default=5)
    parser.add_argument("--only", choices=["startup", "faults", "watch", "slurm", "stop", "restart", "check"],
                        default=None, help="run one section only: start-up, the fault table, the watch's cost, SLURM, "
                        "stop to all exited, restart to first step, or the collective check's cost")
    parser.add_argument("--stop_where", nargs="+", default=["local", "ssh", "slurm"],
                        help="launchers of the stop table (ssh and slurm start a test sshd / SLURM cluster)")
    parser.add_argument("--only_slurm", action="store_true", help="the same as --only=slurm")
    args = parser.parse_args()
    if args.only_slurm:
        args.only = "slurm"
    if args.only in ("stop", "restart", "check"):
        with tempfile.TemporaryDirectory() as tmp:
            if args.only == "stop":
                stop_table(min(args.repeats, 3), tmp, args.stop_where)
            elif args.only == "restart":
                restart_table(args.devices_per_process, args.repeats, tmp)
            else:
                check_cost(40, min(args.repeats, 3), tmp)
        return
    if args.only in ("faults", "watch"):
        with tempfile.TemporaryDirectory() as tmp:
            faults(args.processes, min(args.repeats, 3), os.path.join(tmp, "runs"), table=args.only == "faults",
                   cost=args.only == "watch")
        return
    if args.slurm or args.only == "slurm":
        with tempfile.TemporaryDirectory() as tmp:
            program = os.path.join(tmp, "first_step.py")
            with open(program, "w") as f:
                f.write(FIRST_STEP)
            slurm_row = measure_slurm(program, args.devices_per_process, args.slurm_repeats, tmp)
        _slurm_table(args.devices_per_process, args.slurm_repeats, slurm_row)
        if args.only == "slurm":
            return
    with tempfile.TemporaryDirectory() as tmp:
        programs = {}
        for name, text in (("first_step.py", FIRST_STEP), ("trivial.py", TRIVIAL)):
            programs[name] = os.path.join(tmp, name)
            with open(programs[name], "w") as f:
                f.write(text)
        runs = os.path.join(tmp, "runs")
        first = measure(programs["first_step.py"], args.processes, args.devices_per_process, args.repeats, runs)
        trivial = measure(programs["trivial.py"], args.processes, args.devices_per_process, args.repeats, runs)
    d, r = args.devices_per_process, args.repeats
    _table(f"launch to first step: initialize + first jitted global sum ({d} CPU devices per process, median of {r})", first)
    _table(f"launcher cost: a program that prints at once (median of {r})", trivial)
    if args.only is None:
        with tempfile.TemporaryDirectory() as tmp:
            faults(args.processes, min(args.repeats, 3), os.path.join(tmp, "runs"))
        with tempfile.TemporaryDirectory() as tmp:
            restart_table(args.devices_per_process, args.repeats, tmp)
            check_cost(40, min(args.repeats, 3), tmp)
            stop_table(min(args.repeats, 3), tmp, args.stop_where)


if __name__ == "__main__":
    main()
