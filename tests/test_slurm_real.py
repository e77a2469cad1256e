"""``launch/slurm.py`` against a real SLURM cluster: slurmctld + slurmd on 127.0.0.1 (``slurm_cluster``).

The jobs go through the real ``sbatch``/``srun``/``scancel``/``scontrol``: the batch step is
distmap's agent, which starts every rank as a job step of its own. Each test marks its jobs'
tasks with a variable of its own and checks, by that marker, that none is left when the job
has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
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


def _launch(env, tmp_path, run_id, *args, program=(), port=True):
    """``launch/slurm.py`` for 2 tasks x 2 CPU devices on the one node; returns the finished process."""
    proc = subprocess.run(
        [PY, LAUNCHER, "--nodes=1", "--tasks_per_node=2", "--devices_per_process=2", "--mesh=data=4",
         *([f"--coordinator_port={free_port()}"] if port else []), "--coordinator_bind_host=127.0.0.1",
         "--init_timeout=60", f"--log_dir={tmp_path}", f"--run_id={run_id}", f"--workdir={ROOT}", *args, "--", *program],
        capture_output=True, text=True, timeout=60, env=env,
    )
    return proc


def _logs(run_dir, job_id) -> str:
    names = sorted(n for n in os.listdir(run_dir) if n.endswith(".log"))
    return "".join(f"--- {n}\n{(run_dir / n).read_text()}" for n in names) + f"(job {job_id})"


def _rank_log(run_dir, job_id, rank, attempt=0) -> str:
    return (run_dir / f"rank_{rank}.job{job_id}{f'.attempt{attempt}' if attempt else ''}.log").read_text()


def _until(predicate, timeout, what):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def _check_collective(run_dir, job_id, args):
    """Both tasks' rows of x - mean(x) over the 4 devices of the 2 tasks, against numpy."""
    logs = [_rank_log(run_dir, job_id, t) for t in range(2)]
    got = sorted((results(log.splitlines())[0] for log in logs), key=lambda r: r["rank"])
    assert [r["rank"] for r in got] == [0, 1], _logs(run_dir, job_id)
    everything = np.arange(8, dtype=np.float32) ** 2
    want = everything - everything.mean()
    for r in got:
        assert r["mode"] == "explicit" and r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
        np.testing.assert_allclose(r["centered"], want[4 * r["rank"]: 4 * r["rank"] + 4], rtol=1e-6)
    assert all(argvs(log.splitlines()) == [list(args)] for log in logs)


@pytest.mark.multiprocess
def test_two_task_job_runs_a_sharded_vmap_across_tasks(tmp_path, env, slurm_cluster):
    proc = _launch(env, tmp_path, "real", program=[PY, CHILD, "collective", "--flag=1", "x"])
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    run_dir = tmp_path / "real"
    assert f"submitted job {job_id} (2 task(s) on 1 node(s)); script {run_dir}/job.sbatch" in proc.stderr
    job = slurm_cluster.wait(job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), _logs(run_dir, job_id)
    _check_collective(run_dir, job_id, ["--flag=1", "x"])
    assert "all 2 rank(s) exited with code 0" in (run_dir / f"batch.job{job_id}.log").read_text()


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
    job = slurm_cluster.wait(job_id, timeout=60)  # task 0 would sleep 120 s if the agent did not stop it
    run_dir = tmp_path / "bad"
    assert job["JobState"] == "FAILED", _logs(run_dir, job_id)
    assert "RuntimeError: task one fails" in _rank_log(run_dir, job_id, 1)
    batch_log = (run_dir / f"batch.job{job_id}.log").read_text()
    assert job["ExitCode"].split(":")[0] == "1", (job, batch_log)  # the failing task's own status
    assert "rank 1 localhost exited with code 1 after" in batch_log, batch_log
    assert "Other ranks: rank 0 localhost was stopped by the launcher" in batch_log, batch_log
    assert "PID" in _rank_log(run_dir, job_id, 0)  # it was running when task 1 failed
    assert not marked_pids(env[TEST_MARK], TEST_MARK)


@pytest.mark.multiprocess
def test_dry_run_script_submitted_by_hand_runs_the_same(tmp_path, env, slurm_cluster):
    proc = _launch(env, tmp_path, "byhand", "--dry_run", program=[PY, CHILD, "collective", *HOSTILE])
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "byhand.sbatch"
    script.write_text(proc.stdout)
    assert not (tmp_path / "byhand").exists()  # printing made nothing: the script makes its run folder
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
        lines = _rank_log(run_dir, job_id, t).splitlines()
        assert argvs(lines) == [HOSTILE], json.dumps(lines)
        assert f"TASK {t} 2 {job_id}" in lines  # JAX's SLURM detection would see the whole job
    assert not os.path.exists("/tmp/distmap_pwned")


# A program that saves when stopped: SIGTERM, then 1 s of "saving" (within its grace), then exit 143.
SAVES = (
    "import os, signal, sys, time\n"
    "def stop(*a):\n"
    "    time.sleep(1); print('saved', os.environ['DISTMAP_PROCESS_ID'], flush=True); sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('up', os.environ['DISTMAP_ATTEMPT'], flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.parametrize("how", [["--batch"], []], ids=["agent", "tasks"])
def test_a_stop_gives_every_rank_sigterm_and_its_grace_and_no_restart(tmp_path, env, slurm_cluster, how):
    """``scancel --batch --signal=TERM`` (what --signal=B:TERM@... does before the time limit) reaches the agent;
    ``scancel --signal=TERM`` reaches the ranks' steps. Either way both ranks save, and nothing restarts."""
    proc = _launch(env, tmp_path, "stop", "--grace_period=5", "--max_restarts=2", program=[PY, "-c", SAVES])
    assert proc.returncode == 0, proc.stderr
    job_id, run_dir = proc.stdout.strip(), tmp_path / "stop"
    logs = [run_dir / f"rank_{r}.job{job_id}.log" for r in range(2)]
    _until(lambda: all(p.exists() and "up" in p.read_text() for p in logs), 30, "both ranks up")
    assert slurm_cluster.run("scancel", *how, "--signal=TERM", job_id).returncode == 0
    job = slurm_cluster.wait(job_id, timeout=60)
    assert job["ExitCode"].split(":")[0] == "143", _logs(run_dir, job_id)
    for r in range(2):
        assert f"saved {r}" in _rank_log(run_dir, job_id, r), _logs(run_dir, job_id)
    batch_log = (run_dir / f"batch.job{job_id}.log").read_text()
    assert "restarting" not in batch_log and not (run_dir / f"rank_0.job{job_id}.attempt1.log").exists()
    assert ("interrupted by SIGTERM" if how else "it was stopped") in batch_log, batch_log


def test_two_jobs_on_one_node_get_different_coordinator_ports(tmp_path, env, slurm_cluster):
    """Both run at once; rank 0 of each holds its coordinator port (as JAX would) until the test lets go.

    The port was derived from the job id and repeated every 625 ids; now the agent picks one free
    on the batch host when each attempt starts, so no id can collide (sbatch 22.05 cannot force
    ids, so the two jobs are consecutive here; the id is no input of the port any more).
    """
    hold = ("import os, socket, time\n"
            "port = int(os.environ['DISTMAP_COORDINATOR'].rsplit(':', 1)[1])\n"
            "if os.environ['DISTMAP_PROCESS_ID'] == '0':\n"
            "    s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen()\n"
            "print('PORT', port, os.environ['SLURM_JOB_ID'], flush=True)\n"
            f"while not os.path.exists({str(tmp_path / 'go')!r}): time.sleep(0.1)\n")
    ids = []
    for k in range(2):
        proc = _launch(env, tmp_path, f"p{k}", program=[PY, "-c", hold], port=False)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    logs = [tmp_path / f"p{k}" / f"rank_0.job{j}.log" for k, j in enumerate(ids)]
    _until(lambda: all(p.exists() and "PORT" in p.read_text() for p in logs), 30, "both jobs' rank 0")
    ports = [p.read_text().split("PORT ")[1].split()[0] for p in logs]
    (tmp_path / "go").write_text("")
    for k, job_id in enumerate(ids):
        job = slurm_cluster.wait(job_id)
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), _logs(tmp_path / f"p{k}", job_id)
    assert ports[0] != ports[1], ports


def test_a_requeued_job_keeps_its_first_logs_and_knows_its_attempt(tmp_path, env, slurm_cluster):
    code = ("import os, time\n"
            "print('ATTEMPT', os.environ['DISTMAP_ATTEMPT'], flush=True)\n"
            "time.sleep(120 if os.environ['DISTMAP_ATTEMPT'] == '0' else 0)\n")
    proc = _launch(env, tmp_path, "rq", "--grace_period=2", "--sbatch_option=--requeue", program=[PY, "-c", code])
    assert proc.returncode == 0, proc.stderr
    job_id, run_dir = proc.stdout.strip(), tmp_path / "rq"
    first = run_dir / f"rank_0.job{job_id}.log"
    _until(lambda: first.exists() and "ATTEMPT 0" in first.read_text(), 30, "the first start")
    assert slurm_cluster.run("scontrol", "requeue", job_id).returncode == 0
    _until(lambda: slurm_cluster.job(job_id).get("JobState") == "PENDING", 30, "the job pending again")
    slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")  # skip SLURM's requeue delay
    job = slurm_cluster.wait(job_id, timeout=60)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), _logs(run_dir, job_id)
    assert "ATTEMPT 0" in first.read_text()  # kept, not overwritten
    assert "ATTEMPT 1" in _rank_log(run_dir, job_id, 0, attempt=1)
    batch = (run_dir / f"batch.job{job_id}.log").read_text()
    assert "start 1 on" in batch and "start 2 on" in batch  # the batch log was appended to
    assert len((run_dir / "attempts").read_text().splitlines()) == 2
