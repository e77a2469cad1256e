"""The main job (examples/ensemble.py) runs and checks itself against one device."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTMAP_", "XLA_FLAGS", "JAX_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_single_process_on_8_devices():
    cmd = [sys.executable, "examples/ensemble.py", "--flagfile=configs/cpu_8dev.flags", "--steps=6", "--log_every=3"]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mesh {'data': 4, 'model': 2}" in out.stdout
    assert "step    6" in out.stdout
    assert "check against one device" in out.stdout and out.stdout.rstrip().endswith("OK")


def _launch(tmp_path, *program_flags, run_id):
    return [
        sys.executable, "launch/local.py", "--flagfile=configs/local_2proc.flags", f"--log_dir={tmp_path}",
        "--timeout=240", "--max_restarts=1", "--grace_period=60", f"--run_id={run_id}", "--", sys.executable,
        "examples/ensemble.py", "--flagfile=configs/local_2proc.flags", "--steps=60", "--log_every=10", *program_flags,
    ]


def _digest(text: str) -> str:
    return text.split("final parameters sha256 ")[1].split()[0]


@pytest.mark.multiprocess
def test_stopped_after_step_20_and_started_again_it_ends_as_an_uninterrupted_run(tmp_path):
    """2 processes x 4 devices, 60 steps: uninterrupted; then stopped (SIGTERM to the launcher) after step 20 and run again."""
    whole = subprocess.run(_launch(tmp_path, "--nocheck", run_id="whole"), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=300)
    text = whole.stdout + whole.stderr
    assert whole.returncode == 0, text
    assert "2 process(es), 8 devices" in text and "[rank 0] step   60" in text  # (the one-device check: above)

    ckpt = ["--checkpoint_dir=" + str(tmp_path / "ckpt"), "--checkpoint_every=1000", "--nocheck"]
    first = subprocess.Popen(_launch(tmp_path, *ckpt, run_id="first"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if "step   20 " in line:
                first.send_signal(signal.SIGTERM)  # what a scheduler's stop or a preemption does
        assert first.wait(timeout=120) == 128 + signal.SIGTERM, "".join(seen)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    text = "".join(seen)
    stopped = int(text.split("stopped at step ")[1].split(":")[0])
    assert stopped >= 20 and "final parameters" not in text and "Not restarted" in text, text

    again = subprocess.run(_launch(tmp_path, *ckpt, run_id="again"), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=300)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text
    assert f"[rank 0] resumed from step {stopped}" in text
    assert _digest(text) == _digest(whole.stdout)  # bit for bit the parameters of the uninterrupted run
