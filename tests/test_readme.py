"""The README's Python examples run as written, and its commands are the ones CI runs."""

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    y = scope["y"]
    assert y.axis_names == ("batch", "hidden")
    # The mesh block reran the map split over devices: it must equal the one-device result.
    x, layer = scope["x"], scope["layer"]
    import distmap

    ref = distmap.vmap(layer, scope["Batch"])(x)
    np.testing.assert_allclose(np.asarray(y.array), np.asarray(ref.array), rtol=1e-5, atol=1e-6)


def test_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)[0].strip().splitlines()
    test_line = [c for c in commands if "pytest" in c][0]
    assert "python -m pytest -q" in test_line
    assert 'TEST_CMD=(python -m pytest -q)' in ci
