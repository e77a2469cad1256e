"""``launch/ssh.py``: supervised ssh children, run for real through a stand-in ``ssh`` on PATH.

The stand-in runs ``ssh HOST CMD`` as ``sh -c CMD`` on this machine in a session of its own,
as sshd runs a command with a POSIX login shell, with the client's stdin: killing the ssh
client leaves the "remote" program running, so only the remote watchdog (which sees the
session's stdin close) can end it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile

import pytest
from _stand_ins import (
    CHILD, HOSTILE, PY, ROOT, argvs, calls, check_golden, install, kill_pids, kill_started, pids_in, results,
    sigint_ends_every_program, wait_gone,
)

from distmap._src.launch import ssh
from distmap._src.launch.supervisor import SupervisorOptions

LAUNCHER = os.path.join(ROOT, "launch", "ssh.py")


@pytest.fixture
def hosts(tmp_path):
    bin_dir = str(tmp_path / "bin")
    env = install(bin_dir, "ssh")
    yield {"bin": bin_dir, "env": env}
    kill_started(bin_dir)



def test_golden_ssh_commands():
    proc = subprocess.run(
        [PY, LAUNCHER, "--hosts=node1,me@node2", "--processes_per_host=2", "--gpu_ids=0,1,2,3", "--dry_run",
         "--run_id=golden", "--coordinator_port=23456", "--remote_dir=/shared/distmap", "--env=XLA_FLAGS=--x=1 --y",
         "--mesh=data=-1", "--", "python", "examples/ensemble.py", *HOSTILE],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    check_golden("ssh_2hosts.sh", proc.stdout)


def test_hostfile_and_host_checks(tmp_path):
    assert ssh.parse_hostfile("# cluster\nnode1 slots=8\n\nme@node2  # second\n") == ["node1", "me@node2"]
    for bad in (["-oProxyCommand=x"], ["a b"], []):
        with pytest.raises(Exception, match="host"):
            ssh.check_hosts(bad)
    (tmp_path / "hosts").write_text("-bad\n")
    proc = subprocess.run([PY, LAUNCHER, f"--hostfile={tmp_path / 'hosts'}", "--", "prog"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "not a host name" in proc.stderr
    missing = tmp_path / "nope.txt"
    proc = subprocess.run([PY, LAUNCHER, f"--hostfile={missing}", "--", "prog"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "error: flag --hostfile=" in proc.stderr
    assert f"--hostfile={missing}: cannot read it (No such file or directory)" in proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout


@pytest.mark.multiprocess
def test_real_two_process_run_over_ssh(tmp_path, hosts):
    """Two hosts x 2 CPU devices, coordinator on 127.0.0.1: the sharded vmap is right, arguments arrive whole."""
    proc = subprocess.run(
        [PY, LAUNCHER, "--hosts=worker-a,worker-b", "--coordinator_host=127.0.0.1", "--devices_per_process=2",
         "--init_timeout=60", "--mesh=data=4", f"--log_dir={tmp_path}", "--run_id=real", f"--remote_dir={ROOT}",
         "--", PY, CHILD, "collective", *HOSTILE],
        capture_output=True, text=True, timeout=120, env=hosts["env"],
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    got = results(lines)
    assert sorted(r["rank"] for r in got) == [0, 1]
    for r in got:
        assert r["mode"] == "explicit" and r["processes"] == 2 and r["devices"] == 4
        assert r["centered"] == pytest.approx(r["expected"])
    assert argvs(lines) == [HOSTILE, HOSTILE] and not os.path.exists("/tmp/distmap_pwned")
    assert any(line.startswith("[rank 1 worker-b] RESULT") for line in lines)
    assert (tmp_path / "real" / "rank_1.log").read_text().count("RESULT") == 1
    assert {c[-2] for c in calls(hosts["bin"])} == {"worker-a", "worker-b"}


def test_failing_rank_fails_the_launch_and_remote_programs_are_ended(tmp_path, hosts):
    code = (
        "import os, sys, time\n"
        "print('PID', os.getpid(), os.environ['FAKE_SSH_HOST'], flush=True)\n"
        "if os.environ['DISTMAP_PROCESS_ID'] == '2':\n"
        "    time.sleep(1.5); sys.exit(5)\n"  # the others have printed their pids by then
        "time.sleep(60)\n"
    )
    proc = subprocess.run(
        [PY, LAUNCHER, "--hosts=h1,h2", "--processes_per_host=2", "--grace_period=30", f"--log_dir={tmp_path}",
         "--run_id=bad", "--", PY, "-c", code],
        capture_output=True, text=True, timeout=60, env=hosts["env"],
    )
    assert proc.returncode == 5, proc.stderr
    assert "rank 2 h2 exited with code 5" in proc.stderr
    pids = pids_in(proc.stdout)
    assert len(pids) == 4
    assert not wait_gone(pids, 5)  # the ssh clients were killed; the remote watchdogs ended the programs
    assert [c[0] for c in calls(hosts["bin"])] == ["ssh"] * 4  # no second connection to clean up
    assert not [f for f in os.listdir(tempfile.gettempdir()) if f.startswith("distmap-bad")]  # no pid files


def test_a_launcher_killed_outright_leaves_no_remote_program(tmp_path, hosts):
    code = "import os, time; print('PID', os.getpid(), flush=True); time.sleep(60)"
    launch = subprocess.Popen([PY, LAUNCHER, "--hosts=h1,h2", f"--log_dir={tmp_path}", "--", PY, "-c", code],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=hosts["env"],
                              start_new_session=True)
    pids: list[int] = []
    try:
        while len(pids) < 2:
            line = launch.stdout.readline()
            assert line
            pids += pids_in(line)
        launch.kill()  # SIGKILL: the ssh clients' stdin closes with the launcher
        launch.wait()
        assert not wait_gone(pids, 5)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
        launch.stdout.close()
        kill_pids(pids)


def test_sigint_to_the_launcher_ends_remote_programs(tmp_path, hosts):
    code = "import os, time; print('PID', os.getpid(), flush=True); time.sleep(60)"
    sigint_ends_every_program(
        [PY, LAUNCHER, "--hosts=h1,h2", "--grace_period=1", f"--log_dir={tmp_path}", "--", PY, "-c", code], hosts["env"]
    )


def test_port_is_new_for_each_start(tmp_path, hosts, monkeypatch):
    for k, v in hosts["env"].items():
        monkeypatch.setenv(k, v)
    code = ("import os, sys; e = os.environ\n"
            "print('COORD', e['DISTMAP_COORDINATOR'], e['DISTMAP_ATTEMPT'], flush=True)\n"
            "sys.exit(3 if e['DISTMAP_ATTEMPT'] == '0' else 0)")
    out = io.StringIO()
    res = ssh.run_ssh([PY, "-c", code], ["h1"], coordinator_host="127.0.0.1",
                      options=SupervisorOptions(log_dir=str(tmp_path), max_restarts=1, grace_period=1, announce=False),
                      out=out, err=io.StringIO())
    assert res.exit_code == 0
    coords = re.findall(r"COORD (\S+) (\d)", out.getvalue())
    assert [a for _, a in coords] == ["0", "1"] and coords[0][0] != coords[1][0]


@pytest.mark.parametrize("flag, value, words", [
    ("--hosts", "h1,h 2", "not a host name"),
    ("--hosts", "-oProxyCommand=id", "not a host name"),
    ("--coordinator_host", "a\nb", "not a host name"),
    ("--env", "1A=x", "not a valid environment variable name"),
    ("--run_id", "r\n1", "run id"),
])
def test_values_with_a_syntax_are_checked(flag, value, words, tmp_path, hosts):
    args = [PY, LAUNCHER, f"--log_dir={tmp_path / 'runs'}", f"{flag}={value}"]
    args += [] if flag == "--hosts" else ["--hosts=h1"]
    proc = subprocess.run([*args, "--", "true"], capture_output=True, text=True, timeout=60, env=hosts["env"])
    assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not calls(hosts["bin"]) and not (tmp_path / "runs").exists()


def test_values_without_a_syntax_reach_the_host_unchanged(tmp_path, hosts):
    """--remote_dir and --env values are quoted into the remote command, not interpreted there."""
    evil = "d $(touch pwned) 'q\" ;x\nz"
    (tmp_path / evil).mkdir()
    code = "import json, os; print('GOT ' + json.dumps([os.getcwd(), os.environ['EVIL']]))"
    proc = subprocess.run([PY, LAUNCHER, "--hosts=h1", f"--remote_dir={tmp_path / evil}", f"--env=EVIL={evil}",
                           f"--log_dir={tmp_path / 'runs'}", "--", PY, "-c", code], capture_output=True, text=True,
                          timeout=60, env=hosts["env"])
    assert proc.returncode == 0, proc.stderr
    got = [line.split("GOT ", 1)[1] for line in proc.stdout.splitlines() if "GOT " in line]
    assert [json.loads(g) for g in got] == [[str(tmp_path / evil), evil]]
    assert not os.path.exists(tmp_path / "pwned") and not os.path.exists(tmp_path / evil / "pwned")


def test_what_a_remote_program_leaves_behind_ends_with_it(tmp_path, hosts):
    """A child left by a rank that ended is killed with the rank's group (an sshd would keep the session open)."""
    code = "import os, subprocess; g = subprocess.Popen(['sleep', '60']); print('PID', g.pid, flush=True)"
    proc = subprocess.run([PY, LAUNCHER, "--hosts=h1", f"--log_dir={tmp_path}", "--", PY, "-c", code],
                          capture_output=True, text=True, timeout=60, env=hosts["env"])
    assert proc.returncode == 0, proc.stderr
    pids = pids_in(proc.stdout)
    assert len(pids) == 1 and not wait_gone(pids, 5)
