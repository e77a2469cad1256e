"""Test set-up: 8 simulated CPU devices, fixed before JAX starts its backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    """The 8 simulated CPU devices."""
    devs = jax.devices()
    assert len(devs) == 8, f"tests expect 8 simulated CPU devices, got {len(devs)}"
    return devs
