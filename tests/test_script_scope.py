"""The mesh map equals the one-device map in code written at module scope, as users write it.

Function-scope tests with fresh values once hid a stale-trace bug: here the same checks run as a
script (``tests/_script_mesh.py``, through ``runpy``), where the mapped functions read module
globals that the script rebinds, and as scripts generated from random choices.
"""

from __future__ import annotations

import os
import runpy

from _trees import assert_same

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_users_script_gets_the_one_device_results_on_a_mesh():
    namespace = runpy.run_path(os.path.join(HERE, "_script_mesh.py"), run_name="__main__")
    assert namespace["DONE"]


# -- scripts generated from random choices -------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TEMPLATE = '''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType
import distmap

mesh = distmap.make_mesh({{"data": {shards}, "model": {rest}}}, axis_types=AxisType.{kind})
B = distmap.Axis("batch", {n})
raw = np.random.default_rng({seed}).normal(size=({n}, 3)) * 4
if {nan}:
    raw[{n} - 1, 0] = np.nan
x = distmap.named(jnp.asarray({convert}), ("batch", "f"))
scale = {scale}

def body(r):
    return {op}

results = []
one, on_mesh = distmap.vmap(body, B), distmap.vmap(body, B, mesh=mesh, axis_mapping={{"batch": {target}}})
for step in range(2):
    # jax.jit of the same function reuses its trace (JAX caches by the function): both bake scale in alike.
    results.append((one(x), on_mesh(x), jax.jit(one)(x), jax.jit(on_mesh)(x)))
    scale = scale + 1  # a global rebound between steps: each call must see it
'''

_OPS = {
    "psum": "distmap.psum(r * scale, 'batch')",
    "pmean": "distmap.pmean(r * scale, 'batch')",
    "pmax": "distmap.pmax(r * scale, 'batch')",
    "pmin": "distmap.pmin(r * scale, 'batch')",
    "gather": "distmap.all_gather(r * scale, 'batch').sum('batch')",
    "index": "r * scale + distmap.axis_index('batch')",
    "rotate": "distmap.ppermute(r * scale, 'batch', [(i, (i + 1) % distmap.axis_size('batch')) for i in range(distmap.axis_size('batch'))])",
}
_CONVERT = {
    "float32": "raw.astype(np.float32)",
    "int32": "raw.astype(np.int32)",
    "bool": "raw > 0",
    "complex64": "(raw + 1j * raw[::-1]).astype(np.complex64)",
}


@settings(max_examples=6, deadline=None)
@given(
    kind=st.sampled_from(["Explicit", "Auto"]),
    shards=st.sampled_from([(2, 4), (4, 2), (8, 1)]),
    n=st.integers(1, 9),
    op=st.sampled_from(sorted(_OPS)),
    dtype=st.sampled_from(sorted(_CONVERT)),
    nan=st.booleans(),
    target=st.sampled_from(['"data"', '("data", "model")']),
    seed=st.integers(0, 3),
)
def test_generated_scripts_get_the_one_device_results(kind, shards, n, op, dtype, nan, target, seed):
    scale = "1" if dtype in ("int32", "bool") else "0.5"
    source = _TEMPLATE.format(
        kind=kind, shards=shards[0], rest=shards[1], n=n, seed=seed, nan=nan and dtype in ("float32", "complex64"),
        convert=_CONVERT[dtype], scale=scale, op=_OPS[op], target=target,
    )
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<generated script>", "exec"), namespace)  # module scope: body reads the global scale
    for one, on_mesh, jitted_one, jitted_mesh in namespace["results"]:
        assert_same(on_mesh, one, rtol=1e-5, equal_nan=True)
        assert_same(jitted_mesh, jitted_one, rtol=1e-5, equal_nan=True)
