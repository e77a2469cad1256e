"""The README is a front page: short, its two commands first, the test command the one CI runs.

Its Python blocks run with every docs page's, in ``test_docs.py``; here, the mesh quickstart is
also checked against the same map on one device.
"""

import pathlib
import re

import numpy as np

from test_docs import fenced_blocks

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
LIMIT = 8000  # bytes: the rest belongs in docs/


def test_readme_stays_a_front_page():
    size = len(README.encode())
    assert size < LIMIT, f"README.md is {size} bytes (limit {LIMIT}): move the detail to a page in docs/"


def test_the_two_commands_come_first():
    assert README.startswith("# distmap\n\n```bash\n"), "README.md must open with its title and the commands"
    lang, _, block = fenced_blocks(README)[0]
    commands = [c for c in block.splitlines() if c.strip() and not c.startswith("#")]
    assert len(commands) == 2, commands
    install, test = commands
    assert 'pip install -e ".[test]"' in install
    assert "python launch/local.py" in install and "examples/ensemble.py" in install
    ci = re.search(r"^TEST_CMD=\((.*)\)", (ROOT / ".ci" / "run").read_text(), re.M)
    assert ci is not None, ".ci/run no longer defines TEST_CMD"
    assert test.split("&&")[-1].strip() == ci.group(1) == "python -m pytest -q"


def test_the_mesh_quickstart_gives_the_one_device_result():
    import distmap

    mesh_block = [code for lang, _, code in fenced_blocks(README) if lang == "python" and "make_mesh" in code]
    assert len(mesh_block) == 1
    scope: dict = {}
    exec(compile(mesh_block[0], "README.md", "exec"), scope)
    y, x, layer = scope["y"], scope["x"], scope["layer"]
    assert y.axis_names == ("batch", "hidden")
    ref = distmap.vmap(layer, scope["Batch"])(x)  # no mesh: one device
    np.testing.assert_allclose(np.asarray(y.array), np.asarray(ref.array), rtol=1e-5, atol=1e-6)
