"""The local launcher: supervisor (with plain ``python -c`` ranks, fast), env contract, CLI.

Only the tests marked ``multiprocess`` start JAX; every process a test starts is ended by
the test (the supervisor sweeps its ranks' process groups; the CLI tests kill what is left
by pid in ``finally``).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from distmap._src.launch import cli, contract, local
from distmap._src.launch.supervisor import EXIT_TIMEOUT, SupervisorOptions, Worker, supervise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local.py")
CHILD = os.path.join(ROOT, "tests", "_mp_child.py")
PY = sys.executable


def _opts(tmp_path, **kw) -> SupervisorOptions:
    kw.setdefault("grace_period", 1.0)
    return SupervisorOptions(log_dir=str(tmp_path), announce=False, **kw)


def _py(rank: int, code: str, **kw) -> Worker:
    return Worker(rank, (PY, "-c", code), **kw)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_pids(pids) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------- supervisor


def test_output_prefixed_and_logged_per_rank(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = ("import sys; print('hello', flush=True); sys.stderr.write('to stderr\\n'); sys.stderr.flush(); "
            "sys.stdout.write('no newline')")
    res = supervise(lambda a: [_py(r, code) for r in range(2)], _opts(tmp_path), out=out, err=err)
    assert res.exit_code == 0 and res.failed_rank is None
    lines = out.getvalue().splitlines()
    for r in range(2):
        assert f"[rank {r}] hello" in lines
        assert f"[rank {r}] no newline" in lines
        assert f"[rank {r}] to stderr" in lines
        with open(os.path.join(res.run_dir, f"rank_{r}.log")) as f:
            assert f.read() == "hello\nto stderr\nno newline"
    summary = json.load(open(os.path.join(res.run_dir, "launch.json")))
    assert summary["exit_code"] == 0 and summary["attempts"][0]["status"] == "ok"


def test_failing_rank_stops_the_others_and_gives_its_code(tmp_path):
    err = io.StringIO()
    workers = [
        _py(0, "import time; print('working', flush=True); time.sleep(60)"),
        _py(1, "import sys, time; time.sleep(0.3); print('about to fail'); sys.exit(3)"),
    ]
    t0 = time.monotonic()
    res = supervise(lambda a: workers, _opts(tmp_path), out=io.StringIO(), err=err)
    assert time.monotonic() - t0 < 8
    assert res.exit_code == 3 and res.failed_rank == 1
    msg = err.getvalue()
    assert "rank 1 exited with code 3" in msg and "about to fail" in msg and "rank_1.log" in msg
    assert "rank 0 was stopped by the launcher" in msg
    assert res.attempts[0].exits[0].stopped_by_launcher


def test_rank_killed_by_signal_gives_128_plus_signal(tmp_path):
    err = io.StringIO()
    workers = [
        _py(0, "import time; time.sleep(60)"),
        _py(1, "import os, signal, time; time.sleep(0.2); os.kill(os.getpid(), signal.SIGKILL)"),
    ]
    res = supervise(lambda a: workers, _opts(tmp_path), out=io.StringIO(), err=err)
    assert res.exit_code == 128 + signal.SIGKILL and res.failed_rank == 1
    assert "rank 1 was killed by SIGKILL (exit code 137)" in err.getvalue()


def test_a_failed_run_kills_the_other_ranks_at_once_even_one_that_ignores_sigterm(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    workers = [_py(0, stubborn), _py(1, "import time, sys; time.sleep(0.5); sys.exit(2)")]
    res = supervise(lambda a: workers, _opts(tmp_path, grace_period=30.0), out=io.StringIO(), err=io.StringIO())
    assert res.exit_code == 2
    exits = res.attempts[0].exits
    assert exits[0].exit_code == 128 + signal.SIGKILL and exits[0].stopped_by_launcher
    assert exits[0].after_s - exits[1].after_s < 30  # killed, not given the grace period
    with open(os.path.join(res.run_dir, "rank_0.log")) as f:
        assert "up" in f.read()  # what it printed is in its log


def test_after_sigint_ranks_get_sigterm_and_the_grace_period_and_no_restart(tmp_path):
    """A signal to the launcher: SIGTERM to every rank, which saves and exits 143; not restarted."""
    clean = ("import signal, sys, time\n"
             "def stop(*a):\n"
             "    time.sleep(0.5); print('saved', flush=True); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "print('up', flush=True); time.sleep(60)\n")
    run = _Launch(["--num_processes=2", "--grace_period=20", "--max_restarts=2", f"--log_dir={tmp_path}",
                   "--run_id=int", "--", PY, "-c", clean])
    try:
        run.wait_for(lambda text: "up" in text, count=2, timeout=30)
        run.proc.send_signal(signal.SIGINT)
        rc, err = run.finish(timeout=30)
    finally:
        run.kill()
    assert rc == 128 + signal.SIGINT and "interrupted by SIGINT" in err and "Not restarted" in err, err
    assert "[rank 0] saved" in run.seen and "[rank 1] saved" in run.seen
    attempts = json.loads((tmp_path / "int" / "launch.json").read_text())["attempts"]
    assert len(attempts) == 1 and attempts[0]["status"] == "interrupted"
    assert {r["exit_code"] for r in attempts[0]["ranks"].values()} == {143}  # each ended on its own


def test_a_rank_stopped_by_sigterm_stops_the_run_without_a_restart(tmp_path):
    """A preemption notice reaching one rank (SIGTERM, it saves and exits 143): the others get SIGTERM too."""
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), sys.exit(143)))\n"
            "print('up', flush=True)\n"
            "if os.environ['DISTMAP_PROCESS_ID'] == '1':\n"
            "    time.sleep(0.5); os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(60)\n")
    err = io.StringIO()
    out = io.StringIO()
    res = supervise(lambda a: [_py(r, code, env=dict(os.environ, DISTMAP_PROCESS_ID=str(r))) for r in range(2)],
                    _opts(tmp_path, max_restarts=2, grace_period=10.0), out=out, err=err)
    assert res.exit_code == 143 and [a.status for a in res.attempts] == ["stopped"], err.getvalue()
    assert out.getvalue().count("saved") == 2 and "it was stopped" in err.getvalue()
    assert res.attempts[0].exits[0].exit_code == 143  # given SIGTERM, not killed


def test_timeout_stops_everything_with_a_distinct_code(tmp_path):
    err = io.StringIO()
    res = supervise(lambda a: [_py(r, "import time; print('tick', flush=True); time.sleep(60)") for r in range(2)],
                    _opts(tmp_path, timeout=1.0), out=io.StringIO(), err=err)
    assert res.exit_code == EXIT_TIMEOUT == 124
    assert "timed out after 1 s" in err.getvalue() and "tick" in err.getvalue()


def test_max_restarts_restarts_the_whole_group(tmp_path):
    calls = []

    def make(attempt):
        calls.append(attempt)
        # Rank 1 fails on the first two attempts; rank 0 waits for it.
        return [
            _py(0, f"import time; time.sleep(0.4 if {attempt} == 2 else 30)"),
            _py(1, f"import sys; print('attempt {attempt}'); sys.exit(0 if {attempt} == 2 else 4)"),
        ]

    err = io.StringIO()
    res = supervise(make, _opts(tmp_path, max_restarts=3, restart_backoff=0.05), out=io.StringIO(), err=err)
    assert calls == [0, 1, 2] and res.exit_code == 0
    assert [a.status for a in res.attempts] == ["failed", "failed", "ok"]
    assert "restart 2 of 3" in err.getvalue() and "in 0.05 s (restart 1" in err.getvalue()
    assert os.path.exists(os.path.join(res.run_dir, "rank_1.attempt2.log"))
    assert os.path.exists(os.path.join(res.run_dir, "rank_1.log"))  # the first attempt's log is kept


def test_restarts_run_out(tmp_path):
    res = supervise(lambda a: [_py(0, "import sys; sys.exit(5)")], _opts(tmp_path, max_restarts=1, restart_backoff=0),
                    out=io.StringIO(), err=io.StringIO())
    assert res.exit_code == 5 and len(res.attempts) == 2


def test_free_retry_is_not_counted_as_a_restart(tmp_path):
    def make(attempt):
        code = f"import sys; print({contract.PORT_IN_USE_MARKER!r}); sys.exit(1)" if attempt == 0 else "pass"
        return [_py(0, code)]

    res = supervise(make, _opts(tmp_path), out=io.StringIO(), err=io.StringIO(),
                    retry_for_free=lambda r: any(contract.PORT_IN_USE_MARKER in t for t in r.tail))
    assert res.exit_code == 0 and len(res.attempts) == 2


def test_program_that_cannot_start(tmp_path):
    err = io.StringIO()
    res = supervise(lambda a: [Worker(0, ("/nonexistent/program", "x"))], _opts(tmp_path), out=io.StringIO(), err=err)
    assert res.exit_code == 127 and "could not be started" in err.getvalue()


def test_grandchildren_do_not_outlive_the_launch(tmp_path):
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('GRANDCHILD', p.pid, flush=True)\n"
    )
    out = io.StringIO()
    res = supervise(lambda a: [_py(0, code)], _opts(tmp_path), out=out, err=io.StringIO())
    pid = int(out.getvalue().split("GRANDCHILD")[1].split()[0])
    try:
        assert res.exit_code == 0
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        _kill_pids([pid])


# ---------------------------------------------------------------------------- env contract and local policy


def test_child_env_contract():
    spec = contract.RankSpec("127.0.0.1:5000", 2, 1, "run7", attempt=2, cpu_devices=4, init_timeout=3)
    env = contract.child_env(spec, base={"PATH": "/bin", "DISTMAP_STALE": "x", "DISTMAP_PROCESS_ID": "9"})
    assert env["PATH"] == "/bin" and "DISTMAP_STALE" not in env
    assert env[contract.PROCESS_ID] == "1" and env[contract.NUM_PROCESSES] == "2"
    assert env[contract.COORDINATOR] == "127.0.0.1:5000" and env[contract.CPU_DEVICES] == "4"
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_NUM_CPU_DEVICES"] == "4"
    assert env[contract.INIT_TIMEOUT] == "3" and env[contract.RUN_ID] == "run7" and env[contract.ATTEMPT] == "2"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert set(contract.rank_env(spec)) - {"JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", "PYTHONUNBUFFERED"} <= set(contract.ENV_VARS)


def test_gpu_workers_get_their_share_of_ids():
    ws = local.local_workers(["prog"], num_processes=2, port=1234, run_id="r", gpu_ids=[4, 5, 6, 7],
                             base_env={"JAX_PLATFORMS": "cuda"})
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in ws] == ["4,5", "6,7"]
    assert [w.env[contract.LOCAL_DEVICE_IDS] for w in ws] == ["0,1", "0,1"]
    assert all(contract.CPU_DEVICES not in w.env and w.env["JAX_PLATFORMS"] == "cuda" for w in ws)
    with pytest.raises(Exception, match="do not split evenly"):
        local.split_gpu_ids([0, 1, 2], 2)


def test_run_local_gives_each_rank_its_env_and_a_fresh_port_per_attempt(tmp_path):
    code = (
        "import os, sys\n"
        "e = os.environ\n"
        "print('ENV', e['DISTMAP_PROCESS_ID'], e['DISTMAP_NUM_PROCESSES'], e['DISTMAP_COORDINATOR'], "
        "e['DISTMAP_CPU_DEVICES'], e['DISTMAP_ATTEMPT'], e['JAX_PLATFORMS'], e['DISTMAP_STALL_TIMEOUT'])\n"
        "sys.exit(1 if e['DISTMAP_ATTEMPT'] == '0' and e['DISTMAP_PROCESS_ID'] == '1' else 0)\n"
    )
    out = io.StringIO()
    res = local.run_local([PY, "-c", code], num_processes=2, devices_per_process=3, stall_timeout=7.5,
                          options=_opts(tmp_path, max_restarts=1), out=out, err=io.StringIO())
    assert res.exit_code == 0
    envs = [line.split()[3:] for line in out.getvalue().splitlines() if " ENV " in line]
    by_attempt = {}
    for _rank, n, coord, cpus, attempt, platforms, stall in envs:
        assert n == "2" and cpus == "3" and platforms == "cpu" and coord.startswith("127.0.0.1:") and stall == "7.5"
        by_attempt.setdefault(attempt, set()).add(coord)
    assert set(by_attempt) == {"0", "1"}
    assert by_attempt["0"] != by_attempt["1"]  # a fresh coordinator port for the restart


def test_forced_port_that_is_taken_fails_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(Exception, match=contract.PORT_IN_USE_MARKER):
            local.run_local([PY, "-c", "pass"], num_processes=2, coordinator_port=port, options=_opts(tmp_path))
        proc = subprocess.run([PY, LAUNCHER, f"--coordinator_port={port}", f"--log_dir={tmp_path}", "--", PY, "-c", "pass"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and f"--coordinator_port={port} is taken" in proc.stderr


def test_shared_flags_map_onto_supervisor_options():
    from absl import flags

    fv = flags.FlagValues()
    cli.define_common_flags(fv)
    raw = ["launcher", "--timeout=9", "--max_restarts=2", "--grace_period=0.5", "--console=none", "--run_id=r.1",
           "--", "prog", "--x=1"]
    argv = fv(raw)
    opts = cli.options_from_flags(fv)
    assert (opts.timeout, opts.max_restarts, opts.grace_period, opts.console, opts.run_id) == (9.0, 2, 0.5, "none",
                                                                                                "r.1")
    assert cli.program_from_argv(argv, raw) == ["prog", "--x=1"]
    with pytest.raises(Exception, match="no program to run"):
        cli.program_from_argv(["launcher"], ["launcher"])
    fresh = flags.FlagValues()
    cli.define_common_flags(fresh)
    fresh(["launcher"])
    assert cli.options_from_flags(fresh).run_id != opts.run_id  # a new run id when none is given


# ---------------------------------------------------------------------------- the CLI, as users run it


class _Launch:
    """``launch/local.py`` in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, args, **kw):
        self.proc = subprocess.Popen([PY, LAUNCHER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, **kw)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate, count=1, timeout=60.0) -> list[str]:
        found, end = [], time.monotonic() + timeout
        while len(found) < count:
            try:
                line = self.lines.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for output; saw {self.seen[-20:]}") from None
            self.seen.append(line)
            if predicate(line):
                found.append(line)
        return found

    def finish(self, timeout=60.0):
        self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.proc.returncode, "".join(self.err)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


HOSTILE = [
    "a b", "'single'", '"double"', "$(touch /tmp/distmap_pwned)", "; rm -rf /", "`id`", "line1\nline2",
    "tab\there", "*", "", "--", "--num_processes=9", "--flagfile=/nonexistent.flags", "ünï", "\\", "a=b=c",
]


def test_hostile_arguments_reach_every_rank_unchanged_and_flags_override_configs(tmp_path):
    code = "import json, sys; print('ARGV ' + json.dumps(sys.argv[1:]))"
    run = _Launch([
        "--flagfile=" + os.path.join(ROOT, "configs", "local_2proc.flags"),
        "--num_processes=3", "--devices_per_process=1", "--mesh=data=-1,model=1",  # later flags win over the config
        f"--log_dir={tmp_path}", "--", PY, "-c", code, *HOSTILE,
    ], cwd=str(tmp_path))
    try:
        rc, err = run.finish()
    finally:
        run.kill()
    assert rc == 0, err
    got = {line.split("]")[0]: json.loads(line.split("ARGV ", 1)[1]) for line in run.seen if "ARGV " in line}
    assert set(got) == {"[rank 0", "[rank 1", "[rank 2"}
    assert all(v == HOSTILE for v in got.values())
    assert not os.path.exists("/tmp/distmap_pwned")


def test_mesh_from_a_config_must_fit_the_launch(tmp_path):
    proc = subprocess.run([PY, LAUNCHER, "--flagfile=" + os.path.join(ROOT, "configs", "local_2proc.flags"),
                           "--devices_per_process=1", f"--log_dir={tmp_path}", "--", PY, "-c", "pass"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "--mesh=data=4,model=2 does not fit the 2 devices" in proc.stderr


_STUBBORN_RANK = (
    "import os, signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # as JAX's preemption handler does
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('PIDS', os.getpid(), g.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _wait_gone(pids, within=3.0):
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_launcher_leaves_no_process_behind(tmp_path, sig):
    run = _Launch(["--num_processes=2", "--grace_period=1", f"--log_dir={tmp_path}", "--", PY, "-c", _STUBBORN_RANK])
    pids: list[int] = []
    try:
        for line in run.wait_for(lambda text: "PIDS" in text, count=2, timeout=30):
            pids += [int(p) for p in line.split("PIDS")[1].split()]
        assert all(_alive(p) for p in pids)
        t0 = time.monotonic()
        run.proc.send_signal(sig)
        rc, err = run.finish(timeout=15)
        assert time.monotonic() - t0 < 6
        assert rc == 128 + sig and f"interrupted by {signal.Signals(sig).name}" in err
        assert not _wait_gone(pids)  # ranks (which ignore SIGTERM) and their children
    finally:
        run.kill()
        _kill_pids(pids)


def test_nothing_outlives_a_launcher_killed_outright(tmp_path):
    """SIGKILL to the launcher: a quiet rank, a shell wrapper that does not exec, and their children all end."""
    quiet = "import os, time; print('PIDS', os.getpid(), flush=True); time.sleep(60)"
    wrapper = f"{PY} -c {shlex.quote(quiet)}; echo after"  # sh waits for python: python is a grandchild
    run = _Launch(["--num_processes=2", f"--log_dir={tmp_path}", "--", "sh", "-c", wrapper])
    pids: list[int] = []
    try:
        for line in run.wait_for(lambda text: "PIDS" in text, count=2, timeout=30):
            pids += [int(p) for p in line.split("PIDS")[1].split()]
        run.proc.kill()  # the launcher cannot clean up; its watchdog ends every rank's process group
        run.proc.wait()
        assert not _wait_gone(pids)
    finally:
        run.kill()
        _kill_pids(pids)
    assert not [f for f in os.listdir(tempfile.gettempdir()) if f.startswith("distmap") and f.endswith(".pid")]


_LAUNCHERS = {
    "local": [],
    "slurm": [],
    "ssh": ["--hosts=h1"],
    "tpu_vm": ["--tpu_names=t", "--zone=us-west4-a"],
    "k8s": ["--image=img"],
}


@pytest.mark.parametrize("name", sorted(_LAUNCHERS))
def test_help_lists_the_shared_flags(name):
    proc = subprocess.run([PY, os.path.join(ROOT, "launch", name + ".py"), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert "Traceback" not in proc.stderr, proc.stderr  # (absl's --help exits with 1)
    for flag in ("dry_run", "timeout", "max_restarts", "env", "stall_timeout", "coordinator_port", "console", "mesh"):
        assert f"--{flag}" in proc.stdout, (name, flag)
    assert ("--devices_per_process" in proc.stdout) == (name != "tpu_vm")


@pytest.mark.parametrize("name", sorted(_LAUNCHERS))
@pytest.mark.parametrize("args, words", [
    (["python", "x.py", "--mesh=data=4,model=2"], "put '--' before the program"),
    (["--coordinator_port=70000", "--", "x"], "70000 is not an integer in the range [1, 65535]"),
    (["--run_id=a\nb", "--", "x"], "run id 'a\\nb' is not allowed"),
    ([], "no program to run: put it after '--'"),
])
def test_usage_errors_come_alone_and_say_what_to_do(name, args, words, tmp_path):
    launcher = os.path.join(ROOT, "launch", name + ".py")
    proc = subprocess.run([PY, launcher, *_LAUNCHERS[name], f"--log_dir={tmp_path}", *args], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "--helpfull" not in proc.stdout + proc.stderr.split(words)[0]
    assert not proc.stdout and not os.listdir(tmp_path)  # nothing printed as a plan, nothing written


def test_the_programs_own_mesh_is_checked(tmp_path):
    flagfile = tmp_path / "prog.flags"
    flagfile.write_text("--mesh=data=4,model=2\n")
    for program in (["--mesh=data=4,model=2"], ["--mesh", "data=3"], [f"--flagfile={flagfile}"]):
        proc = subprocess.run([PY, LAUNCHER, "--num_processes=2", "--devices_per_process=8", "--", "python", "x.py",
                               *program], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and "the program's --mesh=" in proc.stderr and "16 devices" in proc.stderr


def test_dry_run_prints_each_ranks_command_and_environment_and_they_run(tmp_path):
    code = "import os; e = os.environ; print('RANK', e['DISTMAP_PROCESS_ID'], e['DISTMAP_STALL_TIMEOUT'], e['A'])"
    proc = subprocess.run([PY, LAUNCHER, "--dry_run", "--num_processes=2", "--stall_timeout=0", "--env=A=x y",
                           "--coordinator_port=23456", "--run_id=dry", f"--log_dir={tmp_path}", "--", PY, "-c", code],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all("DISTMAP_COORDINATOR=127.0.0.1:23456" in c for c in commands)
    assert "# rank 1" in proc.stdout and not os.path.exists(tmp_path / "dry")  # nothing started, nothing written
    outs = [subprocess.run(["bash", "-c", c], capture_output=True, text=True, timeout=30).stdout for c in commands]
    assert outs == ["RANK 0 0 x y\n", "RANK 1 0 x y\n"]


def test_console_leaves_out_start_up_chatter_but_the_log_keeps_it(tmp_path):
    lines = [
        "step 1 loss 0.5",
        "[Gloo] Rank 0 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3",
        "[Gloo] Rank [Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1",
        "1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1",
        "[Gloo] Rank 0 is connected to 3[Gloo] Rank 1 peer ranks.  is connected to Expected number of connected peer "
        "ranks is : 33 peer ranks. ",
        "Expected number of connected peer ranks is : 3",
        "I1202 00:56:32.074566 140453020527488 distributed.py:172] Connecting to JAX distributed service",
        "I0000 00:00:1733100000.123456   12345 coordination_service_agent.cc:303] Coordination agent connected",
        "I1202 00:56:33.000000 140453020527488 prog.py:9] program progress through absl logging",
        "W1202 00:56:33.000000 140453020527488 xla_bridge.py:9] a warning stays",
        "E0000 00:00:1733100000.1 12345 x.cc:1] an error stays",
        "Traceback (most recent call last):",
    ]
    script = tmp_path / "prog.py"
    script.write_text("import sys\nsys.stdout.write(sys.argv[1])\n")
    lines.append("we have 3 peer ranks. connected: 2")  # the program's own words are kept
    for console, shown in (("brief", [0, 8, 9, 10, 11, 12]), ("all", list(range(len(lines)))), ("none", [])):
        out = io.StringIO()
        res = supervise(lambda a: [Worker(0, (PY, str(script), "\n".join(lines) + "\n"))],
                        _opts(tmp_path, console=console, run_id=console), out=out, err=io.StringIO())
        assert res.exit_code == 0
        assert out.getvalue().splitlines() == [f"[rank 0] {lines[i]}" for i in shown], console
        with open(os.path.join(res.run_dir, "rank_0.log")) as f:
            assert f.read().splitlines() == lines


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "mode, code, words",
    [
        ("die", 128 + signal.SIGKILL, "rank 1 was killed by SIGKILL (exit code 137)"),
        ("raise", 1, "rank 1 exited with code 1"),
    ],
)
def test_rank_failing_mid_run_stops_the_others_fast(tmp_path, mode, code, words):
    run = _Launch(["--num_processes=2", "--devices_per_process=2", "--grace_period=2", "--init_timeout=60",
                   f"--log_dir={tmp_path}", f"--run_id={mode}", "--", PY, CHILD, mode])
    try:
        rc, err = run.finish(timeout=90)
    finally:
        run.kill()
    assert rc == code, err
    assert words in err and "step 2" in err
    if mode == "raise":
        assert "RuntimeError: rank 1 fails at step 2" in err, err
    summary = json.load(open(os.path.join(tmp_path, mode, "launch.json")))
    ranks = summary["attempts"][0]["ranks"]
    assert summary["attempts"][0]["failed_rank"] == 1
    assert ranks["0"]["after_s"] - ranks["1"]["after_s"] < 10
