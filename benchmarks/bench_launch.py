"""Start-up cost of multi-process runs: launch to first step, and the launcher's overhead.

Run ``python benchmarks/bench_launch.py`` from the repository root. For 2 and 4 local
processes (2 CPU devices each) it prints two tables, medians of ``--repeats`` runs taken in
interleaved order so machine noise hits both columns alike:

1. **launch to first step**: from the moment the command starts until every rank has
   printed a marker after ``distmap.distributed.initialize()`` (which includes the start-up
   check) and its first jitted step (a global sum across all processes);
2. **launcher cost**: the same with a program that prints the marker at once, so only
   process start-up and the launcher's own work remain.

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
import statistics
import subprocess
import sys
import tempfile
import time

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
    run_dir = os.path.join(log_dir, run_id)
    return max(_slurm_markers([os.path.join(run_dir, f"task_{t}.log") for t in range(2)], 2)) - t0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slurm", action="store_true", help="also time a 2-task job on a real one-node SLURM cluster")
    parser.add_argument("--slurm_repeats", type=int, default=5)
    parser.add_argument("--only_slurm", action="store_true", help="only the SLURM table")
    args = parser.parse_args()
    if args.slurm or args.only_slurm:
        with tempfile.TemporaryDirectory() as tmp:
            program = os.path.join(tmp, "first_step.py")
            with open(program, "w") as f:
                f.write(FIRST_STEP)
            slurm_row = measure_slurm(program, args.devices_per_process, args.slurm_repeats, tmp)
        _slurm_table(args.devices_per_process, args.slurm_repeats, slurm_row)
        if args.only_slurm:
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


if __name__ == "__main__":
    main()
