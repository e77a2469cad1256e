"""``distmap.distributed``: start-up rules in this process, the start-up check, hybrid meshes,
and real 2-process runs (marked ``multiprocess``) through the local launcher on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from distmap import distributed, errors
from distmap._src import hybrid_mesh as dist_impl
from distmap._src import flags as dflags
from distmap._src.launch import contract, local
from distmap._src.launch.supervisor import SupervisorOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "_mp_child.py")
PY = sys.executable


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No launcher environment, no earlier initialize() in this process."""
    for name in (*contract.ENV_VARS, *contract.PROGRAM_ENV_VARS, "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    distributed.shutdown()
    yield
    distributed.shutdown()


# ---------------------------------------------------------------------------- initialize, in this process


def test_single_process_without_launcher_or_cluster(devices):
    config = distributed.initialize()
    assert (config.mode, config.num_processes, config.process_id) == ("single", 1, 0)
    assert distributed.initialize() is config  # idempotent
    assert distributed.initialize(cpu_devices=8).mode == "single"  # agrees with the running backend
    assert distributed.is_initialized()
    assert (distributed.process_index(), distributed.process_count()) == (0, 1)


def test_second_call_with_another_configuration_raises(devices):
    distributed.initialize()
    with pytest.raises(errors.DistributedError, match="already called.*num_processes=2"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=0)


def test_cpu_devices_after_the_backend_started_is_refused(devices):
    with pytest.raises(errors.DistributedError, match="too late.*8 CPU device"):
        distributed.initialize(cpu_devices=4)


def test_multi_process_after_the_backend_started_is_refused(devices):
    with pytest.raises(errors.DistributedError, match="must run before anything starts JAX's backend"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=1)


def test_environment_is_read_and_checked(monkeypatch, devices):
    monkeypatch.setenv(contract.NUM_PROCESSES, "two")
    with pytest.raises(errors.DistributedError, match="DISTMAP_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize()
    monkeypatch.setenv(contract.NUM_PROCESSES, "2")
    with pytest.raises(errors.DistributedError, match="no coordinator address.*launch/local.py"):
        distributed.initialize()
    monkeypatch.setenv(contract.COORDINATOR, "127.0.0.1:1234")
    with pytest.raises(errors.DistributedError, match="not process_id"):
        distributed.initialize()
    monkeypatch.setenv(contract.PROCESS_ID, "2")
    with pytest.raises(errors.DistributedError, match="process_id=2 is not in 0..1"):
        distributed.initialize()
    monkeypatch.setenv(contract.COORDINATOR, "no-port")
    monkeypatch.setenv(contract.PROCESS_ID, "1")
    with pytest.raises(errors.DistributedError, match="expected 'host:port'"):
        distributed.initialize()


def test_explicit_arguments_win_over_the_environment(monkeypatch, devices):
    monkeypatch.setenv(contract.NUM_PROCESSES, "4")
    assert distributed.initialize(num_processes=1).mode == "single"


def test_initialize_from_flags_and_flag_config(devices):
    fv = flags.FlagValues()
    dflags.define_mesh_flags(fv)
    dflags.define_distributed_flags(fv)
    flags.DEFINE_float("learning_rate", 0.1, "lr", flag_values=fv)
    fv(["prog", "--learning_rate=0.5", "--mesh=data=8", "--process_id=0"])
    cfg = distributed.flag_config(fv)
    assert cfg["learning_rate"] == 0.5 and cfg["mesh"] == {"data": 8}
    assert "process_id" not in cfg and "flagfile" not in cfg and "verbosity" not in cfg
    assert distributed.initialize_from_flags(fv).mode == "single"


# ---------------------------------------------------------------------------- the start-up check


def _report(**over):
    base = {"program": ["train.py", "aaaa"], "distmap": "0.1.0 (x)", "jax": "jax 0.10.2, jaxlib 0.10.2", "run": "r1 attempt 0",
            "config": {"lr": ["h1", "0.1"], "steps": ["h2", "10"]}}
    base.update(over)
    return base


def test_compare_fingerprints_names_ranks_and_components():
    same = _report()
    assert distributed.compare_fingerprints({0: same, 1: same, 2: same}) == []
    diff = distributed.compare_fingerprints({
        0: same,
        1: _report(program=["train.py", "bbbb"], jax="jax 0.12.0, jaxlib 0.12.0"),
        2: _report(config={"lr": ["h9", "0.2"]}),
        3: same,
    })
    text = "\n".join(diff)
    assert "program differs" in text and "ranks 0, 2, 3: train.py sha256 aaaa; rank 1: train.py sha256 bbbb" in text
    assert "jax version differs: ranks 0, 2, 3: jax 0.10.2, jaxlib 0.10.2; rank 1: jax 0.12.0, jaxlib 0.12.0" in text
    assert "config key 'lr' differs: ranks 0, 1, 3: 0.1; rank 2: 0.2" in text
    assert "config key 'steps' differs: ranks 0, 1, 3: 10; rank 2: (not set)" in text


def test_fingerprint_is_stable_and_json_ready():
    a = distributed.fingerprint_of({"lr": 0.1, "mesh": {"data": 4}})
    assert a == distributed.fingerprint_of({"mesh": {"data": 4}, "lr": 0.1})
    assert json.loads(json.dumps(a)) == a
    assert a["config"]["lr"][1] == "0.1" and a["jax"].startswith(f"jax {jax.__version__}")
    assert distributed.check_consistency({"lr": 0.1}) == distributed.check_consistency({"lr": 0.1})


# ---------------------------------------------------------------------------- hybrid meshes


@dataclasses.dataclass(frozen=True)
class _Dev:
    id: int
    process_index: int
    slice_index: int | None = None
    platform: str = "cpu"
    device_kind: str = "cpu"  # read by jax.experimental.mesh_utils


def test_hybrid_layout_with_processes_as_granules():
    devs = [_Dev(i, i // 4) for i in range(8)]  # 2 processes x 4 devices, no slice_index
    names, arr = dist_impl.hybrid_device_array({"data": 2, "model": 2}, {"data": 2}, devs)
    assert names == ("data", "model") and arr.shape == (4, 2)
    procs = np.vectorize(lambda d: d.process_index)(arr)
    np.testing.assert_array_equal(procs, [[0, 0], [0, 0], [1, 1], [1, 1]])  # ICI inner, DCN outer


def test_hybrid_layout_with_slices_as_granules_and_dcn_only_axes():
    devs = [_Dev(i, i // 2, slice_index=i // 4) for i in range(8)]  # 2 slices x 2 processes x 2 devices
    names, arr = dist_impl.hybrid_device_array({"fsdp": 4}, {"replica": 2}, devs)
    assert names == ("fsdp", "replica") and arr.shape == (4, 2)
    slices = np.vectorize(lambda d: d.slice_index)(arr)
    np.testing.assert_array_equal(slices, [[0, 1]] * 4)


def test_hybrid_layout_errors_say_what_does_not_fit():
    devs = [_Dev(i, i // 4) for i in range(8)]
    with pytest.raises(errors.MeshError, match="needs 4 process"):
        dist_impl.hybrid_device_array({"data": 2}, {"data": 4}, devs)
    with pytest.raises(errors.MeshError, match="needs 2 devices in each process, but they have \\[4\\]"):
        dist_impl.hybrid_device_array({"data": 2}, {"data": 2}, devs)
    with pytest.raises(errors.MeshError, match="size 0"):
        dist_impl.hybrid_device_array({"data": 0}, {"data": 2}, devs)


def test_make_hybrid_mesh_on_one_process(devices):
    mesh = distributed.make_hybrid_mesh({"data": 2, "model": 4}, {"data": 1}, devices)
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    assert [d.id for d in mesh.devices.flat] == sorted(d.id for d in devices)


# ---------------------------------------------------------------------------- real runs: 2 processes x 2 CPU devices


def _opts(tmp_path, **kw):
    kw.setdefault("grace_period", 2.0)
    return SupervisorOptions(log_dir=str(tmp_path), announce=False, **kw)


def _results(text: str) -> dict[int, dict]:
    out = {}
    for line in text.splitlines():
        if "RESULT " in line:
            rank = int(line.split("]")[0].split()[-1])
            out[rank] = json.loads(line.split("RESULT ", 1)[1])
    return out


@pytest.mark.multiprocess
def test_two_processes_compute_collectives_and_survive_a_taken_port(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = local.free_port
        monkeypatch.setattr(local, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
        out, err = io.StringIO(), io.StringIO()
        res = local.run_local([PY, CHILD, "collective"], num_processes=2, devices_per_process=2, init_timeout=60,
                              options=_opts(tmp_path), out=out, err=err)
    assert res.exit_code == 0, err.getvalue() + out.getvalue()[-3000:]
    # The first start found its port taken: rank 0 said so clearly (no crash), and the launcher started again.
    assert len(res.attempts) == 2 and res.attempts[0].failed.rank == 0
    assert any(contract.PORT_IN_USE_MARKER in line for line in res.attempts[0].tail)
    got = _results(out.getvalue())
    assert set(got) == {0, 1}
    local_rows = [np.arange(6, dtype=np.float32).reshape(2, 3) + 100 * r for r in range(2)]
    everything = np.concatenate(local_rows)
    xs = np.arange(8, dtype=np.float32)
    for rank, r in got.items():
        assert r["processes"] == [rank, 2, 2]
        np.testing.assert_allclose(r["psum"], [everything.sum(0)])
        assert r["sum"] == pytest.approx(float(everything.sum()))
        np.testing.assert_allclose(r["centered_local"], (xs - xs.mean())[rank * 4 : (rank + 1) * 4])
        assert r["hybrid"] == [[0, 0, 1, 1]]
        assert "process-local array" in r["local_input"] and "host_local_to_global" in r["local_input"]
        assert "args[0]" in r["local_input"] and "spans 2 processes" in r["local_input"]


@pytest.mark.multiprocess
def test_mismatched_fingerprints_fail_on_every_rank(tmp_path):
    err = io.StringIO()
    res = local.run_local([PY, CHILD, "fingerprint"], num_processes=2, devices_per_process=1, init_timeout=60,
                          options=_opts(tmp_path), out=io.StringIO(), err=err)
    assert res.exit_code == 1
    for rank in range(2):
        log = open(res.attempts[0].logs[rank]).read()
        assert "DistributedError: the 2 processes of this run disagree at start-up" in log
        assert "config key 'learning_rate' differs: rank 0: 0.1; rank 1: 0.2" in log
        assert "steps" not in log.split("disagree")[1]  # only what differs is named
    assert "config key 'learning_rate' differs" in err.getvalue()


@pytest.mark.multiprocess
def test_a_rank_that_never_joins_ends_in_a_clear_time_out(tmp_path):
    err = io.StringIO()
    res = local.run_local([PY, CHILD, "skip"], num_processes=2, devices_per_process=1, init_timeout=3,
                          options=_opts(tmp_path), out=io.StringIO(), err=err)
    assert res.exit_code == contract.EXIT_INIT_TIMEOUT and res.failed_rank == 0
    msg = err.getvalue()
    assert "rank 0 exited with code 75 (start-up time-out: not every rank joined the run)" in msg
    assert "rank 1 exited with code 0" in msg  # the one that never joined
    assert "rank 0 of 2 waited 3 s" in msg and "for every process to join the run" in msg
    assert "rank 1 never reached distmap.distributed.initialize()" in msg  # named, from the run folder's markers
    run_dir = os.path.dirname(res.attempts[0].logs[0])
    assert not [n for n in os.listdir(run_dir) if n.startswith(".joining")]  # the markers are removed


@pytest.mark.multiprocess
def test_rank_0_reports_a_taken_port_instead_of_crashing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spec = contract.RankSpec(f"127.0.0.1:{taken.getsockname()[1]}", 2, 0, "port-test", cpu_devices=1, init_timeout=5)
        code = f"import sys; sys.path.insert(0, {ROOT!r}); from distmap import distributed; distributed.initialize()"
        proc = subprocess.run([PY, "-c", code], env=contract.child_env(spec), capture_output=True, text=True,
                              timeout=60, start_new_session=True)
    assert proc.returncode == 1, proc.stderr  # an exception, not a segfault (-11) or an abort
    assert "DistributedError: " + contract.PORT_IN_USE_MARKER in proc.stderr
