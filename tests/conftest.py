"""Test set-up: 8 simulated CPU devices, fixed before JAX starts its backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    """The 8 simulated CPU devices."""
    devs = jax.devices()
    assert len(devs) == 8, f"tests expect 8 simulated CPU devices, got {len(devs)}"
    return devs


def _daemon_fixture(tmp_path_factory, module, name):
    """Start one of the real-daemon fixtures for the session, or skip (fail under DISTMAP_REQUIRE_DAEMONS=1)."""
    import _daemon

    reason = module.why_not()
    if reason is not None:
        if os.environ.get(_daemon.REQUIRE) == "1":
            pytest.fail(f"{_daemon.REQUIRE}=1 but {reason}")
        pytest.skip(reason)
    server = module.start(str(tmp_path_factory.mktemp(name)))
    yield server
    left = server.stop()
    assert not left, f"{name}: processes {left} outlived their daemons and were killed"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster on 127.0.0.1 (``tests/_slurm_cluster.py``), one per session."""
    import _slurm_cluster

    yield from _daemon_fixture(tmp_path_factory, _slurm_cluster, "slurm")


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """A real sshd on 127.0.0.1 and its client config (``tests/_ssh_server.py``), one per session."""
    import _ssh_server

    yield from _daemon_fixture(tmp_path_factory, _ssh_server, "sshd")
