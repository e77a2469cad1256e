"""``launch/ssh.py`` against a real sshd on 127.0.0.1 (``ssh_server``), reached through ``--ssh_config``.

The two "hosts" are 127.0.0.1 twice: two real ssh logins, each a remote session the launcher
does not own. Every test gives its remote programs a marker variable (``--env``) and checks
with ``ps`` (``/proc``, by that marker) that none is left when the launcher has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import numpy as np
import pytest
from _daemon import marked_pids, wait_unmarked
from _stand_ins import CHILD, HOSTILE, PY, ROOT, argvs, pids_in, results

LAUNCHER = os.path.join(ROOT, "launch", "ssh.py")
TEST_MARK = "DISTMAP_TEST_JOB"

pytestmark = [pytest.mark.daemons]


@pytest.fixture
def marker():
    """A marker for this test's remote programs; at the end none of them may be left."""
    marker = uuid.uuid4().hex
    yield marker
    left = wait_unmarked(marker, 10.0, TEST_MARK)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"remote programs {left} outlived the launch"


def _argv(ssh_server, tmp_path, marker, run_id, *args, program=()):
    return [PY, LAUNCHER, "--hosts=127.0.0.1,127.0.0.1", f"--ssh_config={ssh_server.ssh_config}",
            "--coordinator_host=127.0.0.1", f"--remote_dir={ROOT}", f"--log_dir={tmp_path}", f"--run_id={run_id}",
            f"--env={TEST_MARK}={marker}", "--grace_period=1", *args, "--", *program]


def _remote(pid: int) -> dict[str, str]:
    """The ssh-related variables of a running process (the mark of a program started by sshd)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return {k.decode(): v.decode() for k, v in env.items() if k.startswith(b"SSH_")}


@pytest.mark.multiprocess
def test_two_ranks_over_real_ssh_run_a_sharded_vmap(tmp_path, ssh_server, marker):
    proc = subprocess.run(
        _argv(ssh_server, tmp_path, marker, "real", "--devices_per_process=2", "--init_timeout=60", "--mesh=data=4",
              program=[PY, CHILD, "collective", *HOSTILE]),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    got = sorted(results(lines), key=lambda r: r["rank"])
    assert [r["rank"] for r in got] == [0, 1], proc.stdout
    everything = np.arange(8, dtype=np.float32) ** 2
    want = everything - everything.mean()
    for r in got:
        assert r["mode"] == "explicit" and r["processes"] == 2 and r["devices"] == 4
        np.testing.assert_allclose(r["centered"], want[4 * r["rank"]: 4 * r["rank"] + 4], rtol=1e-6)
    assert argvs(lines) == [HOSTILE, HOSTILE] and not os.path.exists("/tmp/distmap_pwned")
    assert any(line.startswith("[rank 1 127.0.0.1] RESULT") for line in lines)
    assert (tmp_path / "real" / "rank_1.log").read_text().count("RESULT") == 1


def test_hostile_arguments_arrive_unchanged_through_sshd(tmp_path, ssh_server, marker):
    code = ("import json, os, sys; print('ARGV', json.dumps(sys.argv[1:]), flush=True); "
            "print('VIA', json.dumps(os.environ.get('SSH_CONNECTION', '').split()[2:]), flush=True)")
    proc = subprocess.run(_argv(ssh_server, tmp_path, marker, "hostile", program=[PY, "-c", code, *HOSTILE]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert argvs(lines) == [HOSTILE, HOSTILE], json.dumps(lines)
    vias = [json.loads(line.split("VIA ", 1)[1]) for line in lines if "VIA " in line]
    assert vias == [["127.0.0.1", str(ssh_server.port)]] * 2  # each rank was a login to the test sshd
    assert not os.path.exists("/tmp/distmap_pwned")


def test_failing_rank_stops_the_other_and_leaves_no_remote_process(tmp_path, ssh_server, marker):
    code = (
        "import os, sys, time\n"
        "print('PID', os.getpid(), flush=True)\n"
        "if os.environ['DISTMAP_PROCESS_ID'] == '1':\n"
        "    time.sleep(2); sys.exit(5)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.run(_argv(ssh_server, tmp_path, marker, "bad", program=[PY, "-c", code]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert "rank 1 127.0.0.1 exited with code 5" in proc.stderr, proc.stderr
    assert len(pids_in(proc.stdout)) == 2
    assert not wait_unmarked(marker, 5.0, TEST_MARK)


def test_a_stop_gives_every_remote_rank_sigterm_and_its_grace_and_no_restart(tmp_path, ssh_server, marker):
    code = ("import os, signal, sys, time\n"
            "def stop(*a):\n"
            "    time.sleep(1); print('saved', flush=True); sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('PID', os.getpid(), flush=True); time.sleep(120)\n")
    argv = _argv(ssh_server, tmp_path, marker, "stop", "--max_restarts=2", program=[PY, "-c", code])
    argv[argv.index("--grace_period=1")] = "--grace_period=10"
    launch = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids: list[int] = []
        while len(pids) < 2:
            line = launch.stdout.readline()
            assert line, launch.stderr.read()
            pids += pids_in(line)
        assert sorted(marked_pids(marker, TEST_MARK)) == sorted(pids)
        assert all(_remote(p).get("SSH_CONNECTION") for p in pids)  # started by sshd, not by the launcher
        launch.send_signal(signal.SIGTERM)
        out, err = launch.communicate(timeout=30)
        assert launch.returncode == 128 + signal.SIGTERM, err
        assert out.count("saved") == 2 and "Not restarted" in err, out + err  # each saved within its grace
        summary = json.loads((tmp_path / "stop" / "launch.json").read_text())
        assert len(summary["attempts"]) == 1 and {r["exit_code"] for r in summary["attempts"][0]["ranks"].values()} == {143}
        assert not wait_unmarked(marker, 5.0, TEST_MARK)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
        launch.stdout.close()
        launch.stderr.close()


def test_ssh_options_add_to_the_defaults(tmp_path, ssh_server, marker):
    """--ssh_option=Port=... (the port the test sshd listens on) reaches it, and BatchMode stays on."""
    code = "print('VIA', __import__('os').environ['SSH_CONNECTION'].split()[3], flush=True)"
    argv = _argv(ssh_server, tmp_path, marker, "opt", f"--ssh_option=Port={ssh_server.port}", program=[PY, "-c", code])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.count(f"VIA {ssh_server.port}") == 2, proc.stderr
    dry = subprocess.run(argv[:argv.index("--")] + ["--dry_run", "--", "true"], capture_output=True, text=True, timeout=60)
    assert f"-o Port={ssh_server.port} -o BatchMode=yes -o ServerAliveInterval=15" in dry.stdout, dry.stdout


def test_ssh_config_must_be_a_file(tmp_path):
    proc = subprocess.run([PY, LAUNCHER, "--hosts=127.0.0.1", f"--ssh_config={tmp_path / 'missing'}", "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--ssh_config must name an existing ssh client config file" in proc.stderr
