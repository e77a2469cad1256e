"""``launch/tpu_vm.py``: gcloud commands, run for real through a stand-in ``gcloud`` on PATH.

The stand-in runs ``gcloud compute tpus tpu-vm ssh NAME --worker=W --command=CMD`` as
``bash -c CMD`` on fake worker W (its own home folder, ``TPU_WORKER_ID``) in its own session,
with the client's stdin, so that, as on a real TPU VM, killing the gcloud client leaves the
program running and only the remote watchdog (the ssh session's stdin closing) ends it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest
from _stand_ins import (
    HOSTILE, PY, ROOT, argvs, calls, check_golden, install, kill_started, pids_in, sigint_ends_every_program, wait_gone,
)

from distmap._src.launch import agent, tpu_vm
from distmap._src.launch.supervisor import SupervisorOptions

LAUNCHER = os.path.join(ROOT, "launch", "tpu_vm.py")

PROGRAM = """\
import json, os, sys, time
w = os.environ["TPU_WORKER_ID"]
print("ARGV " + json.dumps(sys.argv[1:]), flush=True)
keys = ("DISTMAP_", "JAX_", "MEGASCALE_")
print("INFO " + json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(keys)}, "cwd": os.getcwd()}),
      flush=True)
print("PID", os.getpid(), flush=True)
fail = os.environ.get("FAIL_AT", "")
if fail == os.environ.get("MEGASCALE_SLICE_ID", "0") + ":" + w:
    time.sleep(1.5)  # the other workers have started and printed their pids by then
    sys.exit(7)
if fail:
    time.sleep(60)
"""


@pytest.fixture
def tpus(tmp_path):
    """A stand-in gcloud with 2 workers per TPU VM, and a code folder holding the program."""
    bin_dir = str(tmp_path / "bin")
    env = install(bin_dir, "gcloud")
    env.update(FAKE_TPU_ROOT=str(tmp_path / "vms"), FAKE_TPU_WORKERS="2")
    code = tmp_path / "code"
    code.mkdir()
    (code / "prog.py").write_text(PROGRAM)
    yield {"bin": bin_dir, "env": env, "code": str(code), "vms": tmp_path / "vms"}
    kill_started(bin_dir)


def _launch(tmp_path, tpus, *flags, program=("prog.py",), env=None, timeout=60):
    args = [PY, LAUNCHER, "--zone=us-west4-a", f"--log_dir={tmp_path / 'runs'}", f"--code_source={tpus['code']}",
            "--nokill_tpu_holders", f"--tpu_lockfile={tmp_path / 'libtpu_lockfile'}", "--grace_period=1", *flags,
            "--", PY, *program]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=dict(tpus["env"], **(env or {})))


def _portable(text: str) -> str:
    """The printed script without this machine's paths (the Python and the checkout it runs)."""
    return text.replace(shlex.quote(PY), "/venv/bin/python").replace(ROOT, "/checkout")


def _info(lines):
    return [json.loads(line.split("INFO ", 1)[1]) for line in lines if "INFO " in line]



# ---------------------------------------------------------------------------- golden commands


@pytest.mark.parametrize("config", ["tpu_v5e_32", "tpu_v5e_32x2_multislice"])
def test_golden_commands_from_the_configs(config):
    proc = subprocess.run(
        [PY, LAUNCHER, f"--flagfile={os.path.join(ROOT, 'configs', config + '.flags')}", "--dry_run",
         "--run_id=golden", "--log_dir=/shared/runs", "--code_source=/shared/distmap", "--coordinator_port=23456",
         "--", "python3", "examples/ensemble.py", f"--flagfile=configs/{config}.flags", *HOSTILE],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    check_golden(config + ".sh", _portable(proc.stdout))


def test_golden_git_revision_commands():
    job = tpu_vm.TpuJob(
        program=["python3", "train.py"], tpu_names=["pod"], zone="europe-west4-b", project="my-project",
        run_id="golden", run_dir="/shared/runs/golden", code_source="/shared/distmap", git_revision="v1.2.3",
        git_repo="https://github.com/example/distmap.git", coordinator_port=23456, env={"XLA_FLAGS": "--x=1 --y"},
        workers_per_slice=4, setup=["pip install -e .[tpu]"], gcloud_args=["--tunnel-through-iap"],
    )
    options = SupervisorOptions(run_id="golden", log_dir="/shared/runs", max_restarts=2)
    check_golden("tpu_git_revision.sh", tpu_vm.format_plan(job, options, python="/venv/bin/python",
                                                           agent="/shared/distmap/launch/agent.py"))


def test_one_command_per_worker_and_the_preparation_on_every_worker():
    job = tpu_vm.TpuJob(program=["p"], tpu_names=["a", "b"], zone="z", run_id="r", run_dir="/r", code_source="/c",
                        coordinator_address="host-a0", gcloud_args=["--internal-ip"])
    p = tpu_vm.plan(job, [2, 3])
    for step in p.steps:
        assert len(step.argv) == 2 and all("--worker=all" in a and "--internal-ip" in a for a in step.argv)
    assert [w.label for w in p.run] == ["a worker 0", "a worker 1", "b worker 0", "b worker 1", "b worker 2"]
    assert [a for w in p.run for a in w.argv if a.startswith("--worker=")] == [f"--worker={i}" for i in (0, 1, 0, 1, 2)]
    assert all(w.hold_stdin and "--internal-ip" in w.argv for w in p.run)
    assert [tpu_vm.slice_env(job, ["a", "b"], i, 0, 1, "host-a0")["MEGASCALE_SLICE_ID"] for i in range(2)] == ["0", "1"]
    with pytest.raises(Exception, match="one name per slice"):
        tpu_vm.slice_names(["a", "b"], 3)
    with pytest.raises(Exception, match="relative path"):
        tpu_vm.prepare_script(tpu_vm.TpuJob(program=["p"], tpu_names=["a"], zone="z", run_id="r", run_dir="/r",
                                            code_source="/c", remote_dir="../x"))


# ---------------------------------------------------------------------------- runs through the stand-in


def test_two_workers_end_to_end(tmp_path, tpus):
    """Code shipped to both workers, the TPU lock removed, --setup run there, per-worker logs, exit 0."""
    (tmp_path / "libtpu_lockfile").write_text("")
    proc = _launch(tmp_path, tpus, "--tpu_names=t1", "--run_id=ok", "--coordinator_port=23456",
                   "--setup=echo set up on $TPU_WORKER_ID > setup.txt", "--gcloud_arg=--internal-ip",
                   program=("prog.py", *HOSTILE))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "libtpu_lockfile").exists()
    lines = proc.stdout.splitlines()
    assert argvs(lines) == [HOSTILE, HOSTILE] and not os.path.exists("/tmp/distmap_pwned")
    vm = tpus["vms"] / "t1"
    infos = sorted(_info(lines), key=lambda i: i["cwd"])
    assert [i["cwd"] for i in infos] == [str(vm / f"worker_{w}" / "distmap_code" / "ok") for w in range(2)]
    for w, i in enumerate(infos):
        assert i["env"]["JAX_COORDINATOR_PORT"] == "23456" and i["env"]["DISTMAP_RUN_ID"] == "ok"
        assert "MEGASCALE_NUM_SLICES" not in i["env"]  # one slice: JAX's TPU detection needs nothing more
        assert (vm / f"worker_{w}" / "distmap_code" / "ok" / "setup.txt").read_text() == f"set up on {w}\n"
    run_dir = tmp_path / "runs" / "ok"
    for w in range(2):
        assert (run_dir / f"t1.worker_{w}.log").read_text().startswith("ARGV ")
        assert any(line.startswith(f"[t1 worker {w}] ARGV") for line in lines)
    ssh_calls = [c for c in calls(tpus["bin"]) if c[4] == "ssh"]
    assert all("--internal-ip" in c for c in ssh_calls)
    assert sorted(a for c in ssh_calls for a in c if a.startswith("--worker=")) == [
        "--worker=0", "--worker=1", "--worker=all"]


def test_failing_worker_fails_the_launch_and_the_remote_programs_end(tmp_path, tpus):
    """Two slices; worker 1 of the second exits 7: every worker stops, exit 7, nothing left on any worker."""
    proc = _launch(tmp_path, tpus, "--tpu_names=a,b", "--run_id=bad", env={"FAIL_AT": "1:1"})
    assert proc.returncode == 7, proc.stderr
    assert "b worker 1 exited with code 7" in proc.stderr
    pids = pids_in(proc.stdout)
    assert len(pids) == 4
    assert not wait_gone(pids, 5)
    infos = _info(proc.stdout.splitlines())
    assert sorted(i["env"]["MEGASCALE_SLICE_ID"] for i in infos) == ["0", "0", "1", "1"]
    assert {i["env"]["MEGASCALE_COORDINATOR_ADDRESS"] for i in infos} == {"127.0.0.1:8080"}  # from describe
    summary = json.loads((tmp_path / "runs" / "bad" / "launch.json").read_text())
    assert summary["exit_code"] == 7 and summary["attempts"][0]["failed_rank"] == 3


def test_a_restart_checks_the_vm_and_prepares_the_workers_again(tmp_path, tpus):
    proc = _launch(tmp_path, tpus, "--tpu_names=t1", "--run_id=again", "--max_restarts=1", "--restart_backoff=0.1",
                   env={"FAIL_AT": "0:1"})
    assert proc.returncode == 7, proc.stderr  # worker 1 fails on both attempts
    assert "restarting the whole group in 0.1 s (restart 1 of 1)" in proc.stderr
    made = calls(tpus["bin"])
    assert [c for c in made if "--format=value(state)" in c]  # the VM's state was asked before the restart
    assert len([c for c in made if c[4] == "scp"]) == 2 and len([c for c in made if "--worker=all" in c]) == 4
    summary = json.loads((tmp_path / "runs" / "again" / "launch.json").read_text())
    assert [a["attempt"] for a in summary["attempts"]] == [0, 1]


def test_a_vm_that_is_not_ready_fails_the_attempt_and_the_next_waits_longer(tmp_path, tpus):
    proc = _launch(tmp_path, tpus, "--tpu_names=t1", "--run_id=down", "--max_restarts=2", "--restart_backoff=0.1",
                   env={"FAIL_AT": "0:1", "FAKE_TPU_STATE": "REPAIRING"})
    assert proc.returncode == tpu_vm.EXIT_NOT_READY, proc.stderr
    assert "t1 is REPAIRING, not READY" in proc.stderr and "in 0.2 s (restart 2 of 2)" in proc.stderr


def test_a_failed_preparation_starts_nothing(tmp_path, tpus):
    for w in range(2):  # the code cannot be unpacked on either worker
        (tpus["vms"] / "t1" / f"worker_{w}").mkdir(parents=True)
        (tpus["vms"] / "t1" / f"worker_{w}" / "distmap_code").write_text("a file where the folder should be")
    proc = _launch(tmp_path, tpus, "--tpu_names=t1", "--run_id=prep")
    assert proc.returncode != 0 and "The program was not started" in proc.stderr
    assert not [c for c in calls(tpus["bin"]) if any(a.startswith("--worker=") and a[9:].isdigit() for a in c)]


def test_the_dry_run_script_runs_as_printed(tmp_path, tpus):
    """The printed script packs, ships, prepares and runs on every worker of both slices by itself."""
    args = [PY, LAUNCHER, "--zone=us-west4-a", "--tpu_names=a,b", "--dry_run", "--run_id=dry",
            f"--log_dir={tmp_path / 'runs'}", f"--code_source={tpus['code']}", "--nokill_tpu_holders",
            f"--tpu_lockfile={tmp_path / 'lock'}", "--", PY, "prog.py", *HOSTILE]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=tpus["env"])
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "runs").exists()  # printing wrote nothing
    script = tmp_path / "run.sh"
    script.write_text(proc.stdout)
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, env=tpus["env"])
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert argvs(lines) == [HOSTILE] * 4
    assert sorted(line.split("]")[0] + "]" for line in lines if "ARGV" in line) == [
        "[a worker 0]", "[a worker 1]", "[b worker 0]", "[b worker 1]"]
    infos = _info(lines)
    assert sorted(i["env"]["MEGASCALE_SLICE_ID"] for i in infos) == ["0", "0", "1", "1"]
    assert {i["env"]["MEGASCALE_COORDINATOR_ADDRESS"] for i in infos} == {"127.0.0.1:8080"}


def test_sigint_ends_the_program_on_every_worker(tmp_path, tpus):
    args = [PY, LAUNCHER, "--zone=us-west4-a", "--tpu_names=t1", f"--log_dir={tmp_path / 'runs'}", "--run_id=int",
            f"--code_source={tpus['code']}", "--nokill_tpu_holders", f"--tpu_lockfile={tmp_path / 'lock'}",
            "--grace_period=1", "--", PY, "prog.py"]
    sigint_ends_every_program(args, dict(tpus["env"], FAIL_AT="9:9"))


@pytest.mark.parametrize("flag, value, words", [
    ("--zone", "us-west4-a\nx", "not a Google Cloud zone"),
    ("--project", "p; id", "not a Google Cloud project id"),
    ("--tpu_names", "pod 1", "not a TPU VM name"),
    ("--remote_dir", "../elsewhere", "relative path inside the workers' home"),
    ("--remote_dir", "a\nb", "relative path inside the workers' home"),
    ("--env", "A-B=1", "not a valid environment variable name"),
    ("--megascale_port", "0", "not an integer in the range [1, 65535]"),
])
def test_values_with_a_syntax_are_checked(flag, value, words, tmp_path, tpus):
    args = [PY, LAUNCHER, "--zone=us-west4-a", "--tpu_names=t1", f"--log_dir={tmp_path / 'runs'}", f"{flag}={value}",
            "--dry_run", "--", "python3", "t.py"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=tpus["env"])
    assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stdout and not (tmp_path / "runs").exists()


def test_values_without_a_syntax_are_quoted_into_the_script(tmp_path, tpus):
    """--git_repo, --git_revision, --gcloud_arg and --env values reach the printed commands as single words."""
    evil = "x $(touch /tmp/distmap_pwned) 'q\";y"
    proc = subprocess.run(
        [PY, LAUNCHER, "--zone=us-west4-a", "--tpu_names=t1", "--workers_per_slice=2", "--dry_run", "--run_id=q",
         f"--git_repo={evil}", f"--git_revision={evil}", f"--gcloud_arg={evil}", f"--env=EVIL={evil}", "--",
         "python3", "t.py", evil], capture_output=True, text=True, timeout=60, env=tpus["env"])
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # it parses as bash
    lines = script.splitlines()
    kind, fields, _ = agent.read_plan(lines[lines.index("DISTMAP_PLAN") - 1 if "DISTMAP_PLAN" in lines else -2])
    assert kind == "tpu_vm" and fields["program"][-1] == evil and fields["env"]["EVIL"] == evil
    job = tpu_vm.TpuJob(**fields)
    clone = next(line for line in tpu_vm.prepare_script(job).splitlines() if line.startswith("rm -rf distmap_code/q"))
    words = shlex.split(clone)
    assert words[words.index("clone") + 2] == evil and words[-1] == evil
    ssh = next(line for line in lines if line.startswith("#") and "--worker=all" in line)
    assert evil in shlex.split(ssh.split(": ", 1)[1].split(" --command=")[0])
    assert not os.path.exists("/tmp/distmap_pwned")
