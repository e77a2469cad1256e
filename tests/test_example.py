"""The main job (examples/ensemble.py) runs and checks itself against one device."""

import os
import pathlib
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


@pytest.mark.multiprocess
def test_two_processes_through_the_local_launcher(tmp_path):
    cmd = [
        sys.executable, "launch/local.py", "--flagfile=configs/local_2proc.flags", f"--log_dir={tmp_path}", "--timeout=240",
        "--", sys.executable, "examples/ensemble.py", "--flagfile=configs/local_2proc.flags", "--steps=4", "--log_every=2",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "2 process(es), 8 devices" in text
    assert "[rank 0] check against one device" in text and ": OK" in text
