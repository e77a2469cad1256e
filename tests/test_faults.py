"""Faults in a multi-process run: a rank that fails, exits non-zero, stalls or diverges is named, fast.

The real runs (marked ``multiprocess``) start ``tests/_fault_child.py`` on 2 processes through
the local launcher on 127.0.0.1, with JAX's shutdown barrier and heartbeat lowered to 5 s. Every run is bounded by the launcher's ``timeout`` (a hang ends with the
launcher's time-out code, which no test accepts), and afterwards no process carrying the
run's marker (an environment variable given to the ranks) may be alive. The stall timeout is
2 s where a test needs a stall noticed, else 10 s, so that a rank starved of CPU on a loaded
machine is not taken for a stalled one.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from _daemon import wait_unmarked
from distmap import distributed, errors
from distmap._src import exits, progress
from distmap._src.launch import contract, local
from distmap._src.launch.supervisor import SupervisorOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "_fault_child.py")
PY = sys.executable
MARKER = "DISTMAP_FAULT_TEST_MARKER_"  # not DISTMAP_*-prefixed on its own: launchers drop those


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No launcher environment, no earlier initialize() in this process."""
    for name in [k for k in os.environ if k.startswith("DISTMAP_")] + ["JAX_COORDINATOR_ADDRESS"]:
        monkeypatch.delenv(name, raising=False)
    distributed.shutdown()
    yield
    distributed.shutdown()


# ---------------------------------------------------------------------------- the pieces, in this process


def _record(count, ring, state="run", idle=0.0, beat=1):
    return {"beat": beat, "count": count, "idle": idle, "state": state, "ring": ring}


def _ring(texts, start=1):
    out, fp = [], 0
    import zlib

    for i, text in enumerate(texts, start):
        fp = zlib.crc32(text.encode(), fp)
        out.append([i, fp, text])
    return out


def _watch(n=3, rank=0, stall=2.0):
    return progress._Watch(client=None, rank=rank, num_processes=n, stall_timeout=stall, interval=0.1, peer_grace=1.0)


def test_divergence_names_the_minority_and_the_launches_that_differ():
    same = _ring(["call 'step'", "call 'step'", "call 'eval'"])
    other = _ring(["call 'step'", "call 'step'", "call 'step'"])
    culprits, message = progress._divergence({0: {"ring": same}, 1: {"ring": other}, 2: {"ring": same}})
    assert culprits == [1]
    assert "rank 1 diverged" in message and "from launch 3 on" in message
    assert "ranks 0, 2: call 'eval'" in message and "rank 1: call 'step'" in message
    assert progress._divergence({0: {"ring": same}, 1: {"ring": same}}) is None


def test_judge_stall_names_the_rank_behind_only_when_nobody_progresses():
    w = _watch(n=2)
    ring = _ring(["call 'psum'"] * 3)
    busy = {0: _record(3, ring, idle=5.0), 1: _record(2, ring[:2], idle=0.5)}
    assert w._judge(busy) is None  # rank 1 still launches: slow is not stalled
    what, culprits, message = w._judge({0: _record(3, ring, idle=5.0), 1: _record(2, ring[:2], idle=5.0)})
    assert (what, culprits) == ("stalled", [1])
    assert "rank 1 stopped making progress" in message and "rank 0 launched 3" in message


def test_judge_a_rank_that_left_early_is_a_divergence_and_equal_counts_only_warn(capsys):
    w = _watch(n=2)
    ring = _ring(["call 'psum'"] * 3)
    what, culprits, message = w._judge({0: _record(3, ring, idle=5.0), 1: _record(2, ring[:2], state="done", idle=9)})
    assert (what, culprits) == ("diverged", [1]) and "rank 1 left the run after 2" in message
    assert w._judge({0: _record(3, ring, idle=5.0), 1: _record(3, ring, idle=5.0)}) is None
    assert "does not see" in capsys.readouterr().err  # said once, not fatal: all wait at the same count


def test_judge_a_silent_heartbeat_is_a_gone_rank():
    w = _watch(n=2, stall=0.2)
    w.gone_after = 0.2  # at least 10 s in real runs
    ring = _ring(["call 'psum'"])
    records = {0: _record(1, ring), 1: _record(1, ring, beat=7)}
    assert w._judge(records) is None
    time.sleep(0.3)
    what, culprits, message = w._judge(records)  # rank 1's beat did not change since
    assert (what, culprits) == ("gone", [1]) and "stopped reporting" in message


def test_note_verify_and_watched_are_inert_without_a_watch():
    assert progress.active() is None
    distributed.note("step", 1)
    assert distributed.verify("step 1") == 0
    assert distributed.watched(lambda x: x + 1, "inc")(1) == 2


def test_note_counts_and_fingerprints_deterministically():
    a, b = _watch(), _watch()
    for w in (a, b):
        w.note("vmap", ("batch", (8, 4)))
        w.note("call", "step")
    assert (a.count, a.fp) == (b.count, b.fp) == (2, b.fp)
    b.note("call", "eval")
    a.note("call", "step")
    assert a.count == b.count and a.fp != b.fp
    a.error = errors.DivergenceError("diverged", [1])
    with pytest.raises(errors.DivergenceError):
        a.note("call", "step")  # once found, the next launch on this rank raises


def test_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv(contract.STALL_TIMEOUT, "2.5")
    assert progress.stall_timeout_from_env() == 2.5
    monkeypatch.setenv(contract.STALL_TIMEOUT, "soon")
    with pytest.raises(errors.DistributedError, match="DISTMAP_STALL_TIMEOUT='soon' is not a number"):
        progress.stall_timeout_from_env()
    monkeypatch.setenv(contract.STALL_TIMEOUT, "-1")
    with pytest.raises(errors.DistributedError, match="expected seconds >= 0"):
        progress.stall_timeout_from_env()
    monkeypatch.setenv(contract.FAST_EXIT, "0")
    assert exits.fast_exit_from_env() is False
    monkeypatch.setenv(contract.FAST_EXIT, "maybe")
    with pytest.raises(errors.DistributedError, match="DISTMAP_FAST_EXIT='maybe'"):
        exits.fast_exit_from_env()
    monkeypatch.delenv(contract.FAST_EXIT)
    monkeypatch.delenv(contract.STALL_TIMEOUT)
    with pytest.raises(errors.DistributedError, match="stall_timeout=-3"):
        distributed.initialize(stall_timeout=-3)
    assert [exits.exit_code(v) for v in (None, 0, 3, True, "bad", 256 + 4)] == [0, 0, 3, 1, 1, 4]


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTMAP_")}
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          start_new_session=True, **kw)


def test_a_folder_named_distmap_without_init_is_named(tmp_path):
    # Say, the user's data folder next to the program; distmap itself comes from its (editable,
    # as in the README and CI) install.
    (tmp_path / "distmap").mkdir()
    (tmp_path / "train.py").write_text("from distmap import distributed\ndistributed.initialize()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTMAP_")}
    proc = subprocess.run([PY, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "DistributedError: 'import distmap' found" in proc.stderr, proc.stderr[-2000:]
    assert str(tmp_path / "distmap") in proc.stderr and "without __init__.py" in proc.stderr
    assert "TypeError" not in proc.stderr


def test_after_the_programs_own_jax_distributed_initialize_the_message_names_jax():
    code = textwrap.dedent(f"""
        import socket, sys
        sys.path.insert(0, {ROOT!r})
        import jax
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        jax.distributed.initialize(f"127.0.0.1:{{port}}", 1, 0, cluster_detection_method="deactivate")
        from distmap import distributed
        assert distributed.initialize().num_processes == 1  # no values: adopt JAX's run
        distributed.shutdown()
        jax.distributed.initialize(f"127.0.0.1:{{port}}", 1, 0, cluster_detection_method="deactivate")
        distributed.initialize(num_processes=2)
    """)
    proc = _python(code)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "jax.distributed.initialize() was already called in this process" in proc.stderr
    assert "num_processes=2 (jax.distributed has 1)" in proc.stderr
    assert "distmap.distributed.initialize() was already called" not in proc.stderr


# ---------------------------------------------------------------------------- real runs: 2 processes


def _launch(tmp_path, mode: str, stall_timeout: float = 10.0, **env: str):
    """Run the fault child's ``mode`` on 2 processes; returns (result, output, launcher errors, logs by rank)."""
    token = uuid.uuid4().hex
    marker = f"{MARKER}={token}"
    settings = {"DISTMAP_STALL_TIMEOUT": f"{stall_timeout:g}", "DISTMAP_SHUTDOWN_TIMEOUT": "5", "DISTMAP_HEARTBEAT_TIMEOUT": "5", **env}
    program = ["env", marker, *(f"{k}={v}" for k, v in settings.items()), PY, CHILD, mode]
    out, err = io.StringIO(), io.StringIO()
    opts = SupervisorOptions(log_dir=str(tmp_path), announce=False, grace_period=5.0, timeout=60.0)
    res = local.run_local(program, num_processes=2, devices_per_process=1, init_timeout=60, options=opts, out=out, err=err)
    # the launcher has reaped its ranks; give the kernel a moment
    assert wait_unmarked(token, 10.0, MARKER) == [], "a process of the run outlived it"
    logs = {r: open(res.attempts[-1].logs[r]).read() for r in range(2)}
    return res, out.getvalue(), err.getvalue(), logs


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["exit3", "absl"])
def test_a_rank_exiting_non_zero_is_named_with_its_code(tmp_path, mode):
    res, out, err, logs = _launch(tmp_path, mode)
    assert (res.exit_code, res.failed_rank) == (3, 1), err + out[-3000:]
    assert "rank 1 exited with code 3" in err
    assert "distmap: rank 1 exits (code 3) after sys.exit(3)" in logs[1]
    assert "rank 1: atexit handler ran" in logs[1]  # registered after initialize(): still runs


@pytest.mark.multiprocess
def test_a_stalled_rank_is_named_with_where_it_stopped(tmp_path):
    res, out, err, logs = _launch(tmp_path, "stall", stall_timeout=2)
    assert (res.exit_code, res.failed_rank) == (progress.EXIT_STALLED, 1), err
    assert "rank 1 stopped making progress: no multi-process launch for over 2 s at launch 2" in logs[1]
    assert "while rank 0 launched 3 and waits for it" in logs[1]
    assert "time.sleep(600)" in logs[1]  # its main thread's stack


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["skipadd", "vmapskip"])  # skipadd's step 3 is the plain skip
def test_a_skipped_collective_is_a_divergence_before_any_wrong_result(tmp_path, mode):
    res, out, err, logs = _launch(tmp_path, mode)
    assert (res.exit_code, res.failed_rank) == (progress.EXIT_DIVERGED, 1), err
    assert "WRONG" not in out and "step 2 sum 401 ok" in out
    assert "DivergenceError: verify #2 (step 3): rank 1 diverged" in logs[1]
    assert "(rank 0: 3; rank 1: 2)" in logs[1]


@pytest.mark.multiprocess
def test_a_jitted_map_skipped_then_run_once_more_is_caught_by_the_collective_check(tmp_path):
    """Under jax.jit the map is traced once; the collective check counts its executions, so verify sees the skip."""
    res, out, err, logs = _launch(tmp_path, "jitskipadd", DISTMAP_CHECK_COLLECTIVES="1")
    assert (res.exit_code, res.failed_rank) == (progress.EXIT_DIVERGED, 1), err + logs[1][-3000:]
    assert "WRONG" not in out and "step 2 sum 401 ok" in out
    assert "DivergenceError: verify #2 (step 3): rank 1 diverged" in logs[1] and "(rank 0: 3; rank 1: 2)" in logs[1]
    assert "vmap run ('run.<locals>.<lambda> (_fault_child.py:" in logs[1]  # the call, as it executed


@pytest.mark.multiprocess
def test_without_verify_the_watch_still_fails_a_run_that_ends_short(tmp_path):
    res, out, err, logs = _launch(tmp_path, "skipquiet", stall_timeout=2)
    # The background watch cannot tell one psum from the next, so wrong sums do print here
    # (that is what verify() is for), but the run fails naming rank 1 instead of hanging.
    assert (res.exit_code, res.failed_rank) == (progress.EXIT_DIVERGED, 1), err
    assert "rank 1 left the run after 7 multi-process launches while rank 0 launched 8" in logs[1]


@pytest.mark.multiprocess
def test_a_clean_run_is_left_alone(tmp_path):
    res, out, err, logs = _launch(tmp_path, "ok")
    assert res.exit_code == 0, err + out[-3000:]
    assert out.count(" ok") == 16 and "WRONG" not in out, out
    assert all("atexit handler ran" in logs[r] for r in (0, 1))
