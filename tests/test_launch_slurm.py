"""``launch/slurm.py``: the sbatch script and its agent, run through stand-in ``sbatch``/``srun``/``scontrol``.

The stand-ins (``tests/_stand_ins.py``) run the job on this machine with SLURM's environment:
the script ``exec`` s the agent, which starts every rank as a one-task step of the stand-in
``srun``. Every process they start is ended by the test (``kill_started``). The real
cluster's behaviour (signals, requeues, ports) is tested in ``tests/test_slurm_real.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess

import pytest
from _stand_ins import (
    CHILD, HOSTILE, PY, ROOT, argvs, calls, check_golden, install, kill_started, results, wait_gone,
)

from distmap._src.launch import local, slurm
from distmap._src.launch.supervisor import SupervisorOptions

LAUNCHER = os.path.join(ROOT, "launch", "slurm.py")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Stand-in sbatch and srun first on PATH (here and in launcher subprocesses)."""
    bin_dir, state = str(tmp_path / "bin"), tmp_path / "state"
    state.mkdir()
    env = install(bin_dir, "sbatch", "srun", "scontrol")
    env["FAKE_SLURM_STATE"] = str(state)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("DISTMAP_")]:
        monkeypatch.delenv(k)
    yield {"bin": bin_dir, "state": state, "env": env}
    kill_started(bin_dir)


def _job(tmp_path, program, **kw) -> slurm.SlurmJob:
    kw.setdefault("run_id", "t")
    return slurm.SlurmJob(program=program, run_dir=str(tmp_path / "runs" / kw["run_id"]), workdir=str(tmp_path), **kw)


def _status(state, job_id) -> int:
    return int((state / f"job_{job_id}.status").read_text())


def _task_log(job: slurm.SlurmJob, t: int, job_id: str, suffix: str = "") -> str:
    with open(os.path.join(job.run_dir, f"rank_{t}.job{job_id}{suffix}.log")) as f:
        return f.read()


def _portable(text: str) -> str:
    """The script without this machine's paths (the Python and the checkout the agent runs from)."""
    return text.replace(shlex.quote(PY), "/venv/bin/python").replace(ROOT, "/checkout")


_OPTS = SupervisorOptions(run_id="t", restart_backoff=0.05, grace_period=2.0, announce=False)


# ---------------------------------------------------------------------------- golden scripts


def test_golden_sbatch_from_the_gpu_config():
    """The multi-node GPU config, rendered by the CLI: run id, folders and port fixed by flags."""
    proc = subprocess.run(
        [PY, LAUNCHER, "--flagfile=" + os.path.join(ROOT, "configs", "slurm_gpu_2node.flags"), "--dry_run",
         "--run_id=golden", "--log_dir=/shared/runs", "--workdir=/shared/distmap", "--partition=gpu", "--",
         "python", "examples/ensemble.py", "--flagfile=configs/slurm_gpu_2node.flags", *HOSTILE],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    check_golden("slurm_gpu_2node.sbatch", _portable(proc.stdout))


def test_golden_sbatch_with_every_option():
    job = slurm.SlurmJob(
        program=["python", "train.py", "--lr=0.1"], run_id="r1", run_dir="/shared/runs/100%/r1", workdir="/shared/code",
        nodes=4, tasks_per_node=8, gpus_per_node=8, cpus_per_task=12, time="2:00:00", partition="a100",
        account="team-ml", job_name="ens", coordinator_port=29400, coordinator_bind_host="node001-ib",
        init_timeout=600, env={"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"},
        sbatch_options=["--exclusive", "--mem=0"],
    )
    options = SupervisorOptions(run_id="r1", log_dir="/shared/runs/100%", max_restarts=2, grace_period=60)
    text = slurm.render_sbatch(job, options, python="/venv/bin/python", agent="/checkout/launch/agent.py")
    assert "#SBATCH --signal=B:TERM@90" in text  # the agent's SIGTERM comes grace + 30 s before the limit
    check_golden("slurm_every_option.sbatch", text)


def test_sbatch_directives_refuse_what_sbatch_would_split(tmp_path):
    with pytest.raises(Exception, match="--partition=.gpu large.*no spaces, quotes or newlines"):
        slurm.render_sbatch(_job(tmp_path, ["prog"], partition="gpu large"), _OPTS)
    with pytest.raises(Exception, match="does not split evenly"):
        slurm.render_sbatch(_job(tmp_path, ["prog"], tasks_per_node=3, gpus_per_node=8), _OPTS)


# ---------------------------------------------------------------------------- the script, run


def test_each_rank_is_a_step_with_its_gpus_and_the_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTMAP_COORDINATOR", "stale-host:1")  # from an enclosing launch: must not leak in
    job = _job(tmp_path, [PY, CHILD, "env"], nodes=2, tasks_per_node=2, gpus_per_node=4, init_timeout=30,
               cpus_per_task=3, coordinator_bind_host="127.0.0.2")
    alloc = slurm.Allocation("77", ("n0", "n1"))
    ws = slurm.slurm_workers(job, alloc, attempt=1, port=23456, grace=9)
    assert [w.label for w in ws] == ["rank 0 n0", "rank 1 n0", "rank 2 n1", "rank 3 n1"]
    assert all(w.hold_stdin and "DISTMAP_COORDINATOR" not in w.env for w in ws)
    assert ws[2].argv[:4] == ["srun", "--nodes=1", "--ntasks=1", "--nodelist=n1"] and "--cpus-per-task=3" in ws[2].argv
    command = ws[3].argv[-1]
    for text in ("distmap-rank 9 env", "DISTMAP_COORDINATOR=n0:23456", "DISTMAP_COORDINATOR_BIND=127.0.0.2:23456",
                 "DISTMAP_PROCESS_ID=3", "DISTMAP_NUM_PROCESSES=4", "DISTMAP_LOCAL_DEVICE_IDS=2,3", "DISTMAP_ATTEMPT=1",
                 "SLURM_PROCID=3", "SLURM_NTASKS=4", "SLURM_LOCALID=1", "JAX_COORDINATOR_PORT=23456"):
        assert text in command, text


def test_allocation_puts_the_batch_host_first(tmp_path, cluster):
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "a,b,c", "SLURMD_NODENAME": "b", "SLURM_RESTART_COUNT": "2"}
    assert slurm.allocation(env) == slurm.Allocation("9", ("b", "a", "c"), 2)
    with pytest.raises(Exception, match="run it as the batch script of a SLURM job"):
        slurm.allocation({})


@pytest.mark.multiprocess
def test_real_two_process_run_through_the_agent(tmp_path, cluster):
    """2 tasks x 2 CPU devices: the sharded distmap.vmap with a collective is right on both."""
    port = local.free_port()
    proc = subprocess.run(
        [PY, LAUNCHER, "--nodes=2", "--tasks_per_node=1", "--devices_per_process=2", f"--coordinator_port={port}",
         "--coordinator_bind_host=127.0.0.1", "--init_timeout=60", "--mesh=data=4", f"--log_dir={tmp_path}",
         "--run_id=real", "--", PY, CHILD, "collective", *HOSTILE],
        capture_output=True, text=True, timeout=120, env=cluster["env"], cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit() and "submitted job " + job_id in proc.stderr
    run_dir = tmp_path / "real"
    logs = [(run_dir / f"rank_{t}.job{job_id}.log").read_text() for t in range(2)]
    assert _status(cluster["state"], job_id) == 0, (run_dir / f"batch.job{job_id}.log").read_text() + "".join(logs)
    got = [results(log.splitlines())[0] for log in logs]
    assert sorted(r["rank"] for r in got) == [0, 1]
    for r in got:
        assert r["mode"] == "explicit" and r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
        assert r["centered"] == pytest.approx(r["expected"])
    assert all(argvs(log.splitlines()) == [HOSTILE] for log in logs)  # spaces, $(...), %t: unchanged
    assert not os.path.exists("/tmp/distmap_pwned")


def test_failing_task_fails_the_job_with_its_exit_status(tmp_path, cluster):
    code = (
        "import os, sys, time\n"
        "if os.environ['SLURM_PROCID'] == '1':\n"
        "    time.sleep(1); sys.exit(3)\n"
        "print('PID', os.getpid(), flush=True); time.sleep(60)\n"
    )
    job = _job(tmp_path, [PY, "-c", code], nodes=2)
    job_id, _ = slurm.submit(job, _OPTS)
    assert _status(cluster["state"], job_id) == 3
    pid = int(re.search(r"PID (\d+)", _task_log(job, 0, job_id)).group(1))
    assert not wait_gone([pid], 5)  # the agent killed the healthy rank when the other failed
    with open(os.path.join(job.run_dir, f"batch.job{job_id}.log")) as f:
        assert "rank 1 127.0.0.2 exited with code 3" in f.read()


def test_restart_starts_every_rank_again_with_a_new_port(tmp_path, cluster):
    code = (
        "import os, sys\n"
        "print('PORT', os.environ['JAX_COORDINATOR_PORT'], 'ATTEMPT', os.environ['DISTMAP_ATTEMPT'], flush=True)\n"
        "sys.exit(4 if os.environ['DISTMAP_ATTEMPT'] == '0' and os.environ['SLURM_PROCID'] == '1' else 0)\n"
    )
    job = _job(tmp_path, [PY, "-c", code], nodes=2, coordinator_port=21000)
    job_id, _ = slurm.submit(job, dataclasses.replace(_OPTS, max_restarts=1))
    assert _status(cluster["state"], job_id) == 0
    assert "PORT 21000 ATTEMPT 0" in _task_log(job, 1, job_id)
    assert "PORT 21001 ATTEMPT 1" in _task_log(job, 1, job_id, ".attempt1")


def test_a_program_argument_that_is_not_utf8_arrives_byte_for_byte(tmp_path, cluster):
    raw = b"caf\xe9 \xff\xfe $(x)"  # Latin-1 bytes, not UTF-8
    code = "import os, sys; sys.stdout.buffer.write(b'BYTES ' + os.fsencode(sys.argv[1]).hex().encode() + b'\\n')"
    env = dict(cluster["env"])
    proc = subprocess.run([PY, LAUNCHER, f"--log_dir={tmp_path}", "--run_id=bytes", "--", PY, "-c", code, raw],
                          capture_output=True, timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.decode().strip()
    assert _status(cluster["state"], job_id) == 0
    log = (tmp_path / "bytes" / f"rank_0.job{job_id}.log").read_text()
    assert f"BYTES {raw.hex()}" in log
    dry = subprocess.run([PY, LAUNCHER, "--dry_run", f"--log_dir={tmp_path}", "--run_id=bytes", "--", PY, "-c", code,
                          raw], capture_output=True, timeout=60, cwd=str(tmp_path))
    assert dry.returncode == 0 and dry.stdout == (tmp_path / "bytes" / "job.sbatch").read_bytes()  # the same script


@pytest.mark.parametrize("flag", ["--partition", "--account", "--job_name", "--time", "--sbatch_option", "--workdir",
                                  "--log_dir", "--coordinator_bind_host", "--run_id"])
def test_every_value_that_reaches_the_script_is_checked(flag, tmp_path, cluster):
    """A newline or a quote in a value that goes into the script is refused before anything is written."""
    value = "/x\n#SBATCH --wrap='rm -rf ~'" if flag in ("--workdir", "--log_dir") else "x\n#SBATCH --wrap='id'"
    args = [f"--log_dir={tmp_path}/runs", f"{flag}={value}"]
    proc = subprocess.run([PY, LAUNCHER, *args, "--", "python", "t.py"], capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path))
    assert proc.returncode == 1 and flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() and not calls(cluster["bin"])


def test_env_values_and_arguments_are_quoted_not_checked(tmp_path, cluster):
    value = "a\nb $(touch /tmp/distmap_pwned) 'q\""
    code = "import os, sys; print('ENVV ' + repr(os.environ['EVIL'])); print('ARG ' + repr(sys.argv[1]))"
    job = _job(tmp_path, [PY, "-c", code, value], env={"EVIL": value})
    job_id, _ = slurm.submit(job, _OPTS)
    assert _status(cluster["state"], job_id) == 0
    log = _task_log(job, 0, job_id)
    assert f"ENVV {value!r}" in log and f"ARG {value!r}" in log and not os.path.exists("/tmp/distmap_pwned")


# ---------------------------------------------------------------------------- configs


def test_cluster_configs_parse_for_the_program():
    """The program accepts every cluster config (launcher flags through --undefok) with the same mesh."""
    code = (
        "import importlib.util, json, sys\n"
        "from absl import flags\n"
        "spec = importlib.util.spec_from_file_location('ensemble', "
        f"{os.path.join(ROOT, 'examples', 'ensemble.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import distmap.flags as df\n"
        "for cfg in sys.argv[1:]:\n"
        "    flags.FLAGS.unparse_flags()  # each config alone (the multi-slice one sets --dcn_mesh)\n"
        "    flags.FLAGS(['ensemble.py', '--flagfile=' + cfg])\n"
        "    print(json.dumps([df.mesh_shape_from_flags(), str(df.axis_mapping_from_flags())]))\n"
    )
    names = ["slurm_gpu_2node", "tpu_v5e_32", "tpu_v5e_32x2_multislice", "k8s_gpu"]
    proc = subprocess.run([PY, "-c", code, *(os.path.join(ROOT, "configs", n + ".flags") for n in names)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    meshes = [json.loads(line)[0] for line in proc.stdout.splitlines()]
    assert meshes == [{"data": 8, "model": 2}, {"data": -1, "model": 4}, {"replica": 2, "data": -1, "model": 4},
                      {"data": 8, "model": 2}]
