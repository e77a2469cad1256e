"""``launch/slurm.py`` against a real SLURM cluster: slurmctld + slurmd on 127.0.0.1 (``slurm_cluster``).

The jobs go through the real ``sbatch``/``srun``; the tasks find their place through JAX's
own SLURM detection, as on a cluster. Each test marks its jobs' tasks with a variable of its
own and checks, by that marker, that none is left when the job has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import numpy as np
import pytest
from _daemon import free_port, marked_pids, wait_unmarked
from _stand_ins import CHILD, HOSTILE, PY, ROOT, argvs, results

LAUNCHER = os.path.join(ROOT, "launch", "slurm.py")
TEST_MARK = "DISTMAP_TEST_JOB"

pytestmark = [pytest.mark.daemons]


@pytest.fixture
def env(slurm_cluster):
    """The cluster's client environment, with a marker of this test for every task it starts."""
    marker = uuid.uuid4().hex
    yield dict(slurm_cluster.env, **{TEST_MARK: marker})
    left = wait_unmarked(marker, 10.0, TEST_MARK)
    assert not left, f"tasks {left} outlived their SLURM job"


def _launch(env, tmp_path, run_id, *args, program=()):
    """``launch/slurm.py`` for 2 tasks x 2 CPU devices on the one node; returns the finished process."""
    proc = subprocess.run(
        [PY, LAUNCHER, "--nodes=1", "--tasks_per_node=2", "--devices_per_process=2", "--mesh=data=4",
         f"--coordinator_port={free_port()}", "--coordinator_bind_host=127.0.0.1", "--init_timeout=60",
         f"--log_dir={tmp_path}", f"--run_id={run_id}", f"--workdir={ROOT}", *args, "--", *program],
        capture_output=True, text=True, timeout=60, env=env,
    )
    return proc


def _logs(run_dir, job_id) -> str:
    names = sorted(n for n in os.listdir(run_dir) if n.endswith(".log"))
    return "".join(f"--- {n}\n{(run_dir / n).read_text()}" for n in names) + f"(job {job_id})"


def _check_collective(run_dir, job_id, args):
    """Both tasks' rows of x - mean(x) over the 4 devices of the 2 tasks, against numpy."""
    logs = [(run_dir / f"task_{t}.log").read_text() for t in range(2)]
    got = sorted((results(log.splitlines())[0] for log in logs), key=lambda r: r["rank"])
    assert [r["rank"] for r in got] == [0, 1], _logs(run_dir, job_id)
    everything = np.arange(8, dtype=np.float32) ** 2
    want = everything - everything.mean()
    for r in got:
        assert r["mode"] == "cluster" and r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
        np.testing.assert_allclose(r["centered"], want[4 * r["rank"]: 4 * r["rank"] + 4], rtol=1e-6)
    assert all(argvs(log.splitlines()) == [list(args)] for log in logs)


@pytest.mark.multiprocess
def test_two_task_job_runs_a_sharded_vmap_across_tasks(tmp_path, env, slurm_cluster):
    proc = _launch(env, tmp_path, "real", program=[PY, CHILD, "collective", "--flag=1", "x"])
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    run_dir = tmp_path / "real"
    assert (f"submitted job {job_id} (2 task(s) on 1 node(s)); script {run_dir}/job.sbatch; "
            f"task logs {run_dir}/task_<t>.log") in proc.stderr
    job = slurm_cluster.wait(job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), _logs(run_dir, job_id)
    _check_collective(run_dir, job_id, ["--flag=1", "x"])
    assert "all tasks exited with code 0" in (run_dir / f"sbatch-{job_id}.log").read_text()


def test_failing_task_fails_the_job_and_kill_on_bad_exit_stops_the_other(tmp_path, env, slurm_cluster):
    code = (
        "import os, sys, time\n"
        "if os.environ['SLURM_PROCID'] == '1':\n"
        "    time.sleep(1); raise RuntimeError('task one fails')\n"
        "print('PID', os.getpid(), flush=True); time.sleep(120)\n"
    )
    proc = _launch(env, tmp_path, "bad", program=[PY, "-c", code])
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    job = slurm_cluster.wait(job_id, timeout=60)  # task 0 would sleep 120 s if srun did not stop it
    run_dir = tmp_path / "bad"
    assert job["JobState"] == "FAILED", _logs(run_dir, job_id)
    assert "RuntimeError: task one fails" in (run_dir / "task_1.log").read_text()
    # srun exits with the highest task status (here task 0's 128+SIGTERM from --kill-on-bad-exit); the
    # script reports and exits with the status of the task that failed first: task 1's 1.
    batch_log = (run_dir / f"sbatch-{job_id}.log").read_text()
    assert job["ExitCode"].split(":")[0] == "1", (job, batch_log)
    assert "task 1: Exited with exit code 1" in batch_log, batch_log
    # srun stopped the healthy task (it sleeps 120 s): its program got the SIGTERM (143), its wrapper waited
    assert "task 0: Exited with exit code 143" in batch_log, batch_log
    assert "distmap: task 1 failed first, with exit status 1 (srun exited with " in batch_log, batch_log
    assert "PID" in (run_dir / "task_0.log").read_text()  # it was running when task 1 failed
    assert not marked_pids(env[TEST_MARK], TEST_MARK)


@pytest.mark.multiprocess
def test_dry_run_script_submitted_by_hand_runs_the_same(tmp_path, env, slurm_cluster):
    proc = _launch(env, tmp_path, "byhand", "--dry_run", program=[PY, CHILD, "collective", *HOSTILE])
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "byhand.sbatch"
    script.write_text(proc.stdout)
    os.makedirs(tmp_path / "byhand")  # the script's --output folder (the launcher makes it when it submits)
    sub = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    job = slurm_cluster.wait(job_id)  # (sbatch --wait polls every 30 s or so once the job runs a while)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), _logs(tmp_path / "byhand", job_id)
    _check_collective(tmp_path / "byhand", job_id, HOSTILE)
    assert not os.path.exists("/tmp/distmap_pwned")


def test_hostile_program_arguments_arrive_unchanged(tmp_path, env, slurm_cluster):
    code = ("import json, os, sys; print('ARGV', json.dumps(sys.argv[1:]), flush=True); "
            "print('TASK', os.environ['SLURM_PROCID'], os.environ['SLURM_NTASKS'], os.environ['SLURM_JOB_ID'])")
    proc = _launch(env, tmp_path, "hostile", program=[PY, "-c", code, *HOSTILE])
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    job = slurm_cluster.wait(job_id)
    run_dir = tmp_path / "hostile"
    assert job["ExitCode"] == "0:0", _logs(run_dir, job_id)
    for t in range(2):
        lines = (run_dir / f"task_{t}.log").read_text().splitlines()
        assert argvs(lines) == [HOSTILE], json.dumps(lines)
        assert f"TASK {t} 2 {job_id}" in lines
    assert not os.path.exists("/tmp/distmap_pwned")
