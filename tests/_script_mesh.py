"""A user's script, run at module scope by tests/test_script_scope.py (it is not a test module itself).

Written the way users write: module globals rebound between steps, loops that rebuild lambdas
and read loop variables, flags read by the mapped function, Modules whose weights live on the
mesh, eager transformations under ``jax.set_mesh``. Every mesh result must equal the same code
on one device (values, axes, dtypes; the error class where one raises), on an Explicit and an
Auto mesh, with a mapped axis the mesh does not divide evenly.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

import distmap

B = distmap.Axis("batch", 6)  # 6 over 4 devices: padded to 8
F = distmap.Axis("feature", 4)
H = distmap.Axis("hidden", 2)
MAPPING = {"batch": "data"}
MESHES = {
    "explicit": distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Explicit),
    "auto": distmap.make_mesh({"data": 4, "model": 2}, axis_types=AxisType.Auto),
}
x = distmap.random.normal(jax.random.key(0), (B, F))

COMPILES = [0]
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _d, **_k: COMPILES.__setitem__(0, COMPILES[0] + (event == "/jax/core/compile/backend_compile_duration"))
)


def leaves(tree):
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda v: isinstance(v, distmap.NamedArray))


def same(got, want, what):
    a, b = leaves(got), leaves(want)
    assert len(a) == len(b), what
    for u, v in zip(a, b):
        assert type(u) is type(v), (what, type(u), type(v))
        if isinstance(u, distmap.NamedArray):
            assert u.axes == v.axes, (what, u.axes, v.axes)
            u, v = u.array, v.array
        assert u.dtype == v.dtype, (what, u.dtype, v.dtype)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=what)


def outcome(thunk):
    try:
        return thunk(), None
    except Exception as e:  # noqa: BLE001 - any error: the class is what must agree
        return None, type(e)


def agree(one, mesh, what, raises=None):
    """The mesh result equals the one-device result; with ``raises``, both raise that error class."""
    (want, want_err), (got, got_err) = outcome(one), outcome(mesh)
    assert want_err is raises, (what, "one device", want_err, raises)
    assert got_err is want_err, (what, got_err, want_err)
    if want_err is None:
        same(got, want, what)


def mapped(fn, mesh=None, **kw):
    if mesh is None:
        return distmap.vmap(fn, B, **kw)
    return distmap.vmap(fn, B, mesh=mesh, axis_mapping=MAPPING, **kw)


# -- 1. a global weight rebound between steps --------------------------------------------
w = distmap.ones(F)


def layer(r):
    return r * w


for kind, mesh in MESHES.items():
    long_lived = mapped(layer, mesh)
    jitted_one, jitted_mesh = jax.jit(mapped(layer)), jax.jit(long_lived)
    w = distmap.ones(F)
    for step in range(3):
        agree(lambda: mapped(layer)(x), lambda: jax.jit(mapped(layer, mesh))(x), f"{kind} fresh jit, step {step}")
        agree(lambda: mapped(layer)(x), lambda: long_lived(x), f"{kind} one mapped function, step {step}")
        # One jax.jit object kept across steps: both bake w in at their first trace, as jax.jit does.
        agree(lambda: jitted_one(x), lambda: jitted_mesh(x), f"{kind} one jit object, step {step}")
        w = w + 1.0

# -- 2. loops over closures, flags and collectives -----------------------------------------
for kind, mesh in MESHES.items():
    for lr in (0.1, 0.2, -0.0, 0.0):
        agree(lambda: mapped(lambda r: r * lr)(x), lambda: mapped(lambda r: r * lr, mesh)(x), f"{kind} lr={lr}")
    for op in (distmap.psum, distmap.pmax, distmap.pmin, distmap.pmean):
        agree(lambda: mapped(lambda r: op(r, "batch"))(x), lambda: mapped(lambda r: op(r, "batch"), mesh)(x), f"{kind} {op.__name__}")
    one_op, mesh_op = mapped(lambda r: op(r, "batch")), mapped(lambda r: op(r, "batch"), mesh)
    for op in (distmap.psum, distmap.pmax):  # the same two mapped functions, a global rebound under them
        agree(lambda: one_op(x), lambda: mesh_op(x), f"{kind} long-lived {op.__name__}")

    layers = distmap.random.normal(jax.random.key(1), (distmap.Axis("layer", 3), F))
    REVERSE = False

    def stack(h):
        return distmap.fold(lambda c, lw: distmap.tanh(c * lw + c.sum()), "layer", reverse=REVERSE)(h, layers)

    one_fold, mesh_fold = mapped(stack), mapped(stack, mesh)
    for REVERSE in (False, True, False):
        agree(lambda: one_fold(x), lambda: mesh_fold(x), f"{kind} fold reverse={REVERSE}")

# -- 3. Modules whose weights live on the mesh; a bound method whose object changes ----------


class Linear(eqx.Module):
    w: distmap.NamedArray
    b: distmap.NamedArray

    def __call__(self, r):
        return distmap.tanh(distmap.dot(r, self.w, axis="feature") + self.b)

    def scaled(self, r, s):
        return self(r) * s


model = Linear(distmap.random.normal(jax.random.key(2), (F, H)), distmap.zeros(H))


class Holder:  # a plain object, not a pytree
    pass


holder = Holder()


def apply(r):
    return holder.model(r)


for kind, mesh in MESHES.items():
    on_mesh = distmap.shard(model, {"hidden": "model"}, mesh)  # weights split over "model"
    agree(lambda: mapped(model)(x), lambda: mapped(on_mesh, mesh)(x), f"{kind} module on the mesh")
    agree(lambda: mapped(lambda r: model(r))(x), lambda: mapped(lambda r: on_mesh(r), mesh)(x), f"{kind} global module")
    agree(lambda: mapped(model.scaled)(x, 2.0), lambda: mapped(on_mesh.scaled, mesh)(x, 2.0), f"{kind} bound method")

    # A plain object whose model changes between calls of the same two mapped functions.
    one_apply, mesh_apply = mapped(apply), mapped(apply, mesh)
    for scale in (1.0, 3.0):
        holder.model = eqx.tree_at(lambda m: m.b, model, model.b + scale)
        want = one_apply(x)
        holder.model = distmap.shard(holder.model, {"hidden": "model"}, mesh)
        agree(lambda: want, lambda: mesh_apply(x), f"{kind} holder b+{scale}")

    # A jitted training step that updates the weights: one compilation, new values every step.
    def make_step(where):
        def loss(m, v):
            return mapped(lambda r: m(r), where)(v).sum().array

        @jax.jit
        def step(m, v):
            g = jax.grad(loss)(m, v)
            return jax.tree_util.tree_map(lambda p, d: p - 0.1 * d, m, g)

        return step

    step_one, step_mesh = make_step(None), make_step(mesh)
    m1 = step_one(step_one(model, x), x)
    m2 = step_mesh(step_mesh(on_mesh, x), x)  # the first step compiles (and may lay the new weights out anew)
    before = COMPILES[0]
    for i in range(3):
        m1, m2 = step_one(m1, x), step_mesh(m2, x)
        same(m2, m1, f"{kind} training step {i}")
    assert COMPILES[0] == before, (kind, COMPILES[0] - before)

    # Eager transformations under jax.set_mesh and a context mapping, against one device without them.
    checks = {
        "grad": lambda: jax.grad(lambda m: mapped(m)(x).sum().array)(model),
        "jacfwd": lambda: jax.jacfwd(lambda s: mapped(lambda r: r * s)(x).array)(2.0),
        "vmap": lambda: jax.vmap(lambda s: mapped(lambda r: distmap.pmax(r * s, "batch"))(x).array)(jnp.arange(3.0)),
        "closure over a tracer": lambda: jax.jit(lambda c: mapped(lambda r: r * c)(x))(jnp.float32(3.0)),
        "fold": lambda: jax.grad(lambda s: distmap.fold(lambda h, lw: h * lw * s, "layer")(x, layers).sum().array)(2.0),
    }
    wants = {name: check() for name, check in checks.items()}
    with jax.set_mesh(mesh), distmap.axis_mapping({"batch": "data", "hidden": "model"}):
        for name, check in checks.items():
            agree(lambda: wants[name], check, f"{kind} eager {name} under set_mesh")

    # A Python scalar argument: traced, so new values compile nothing.
    scaled = mapped(lambda r, s: r * s, mesh)
    scaled(x, 1.0)
    before = COMPILES[0]
    for s in (0.5, 2.0, -0.0):
        agree(lambda: mapped(lambda r, s: r * s)(x, s), lambda: scaled(x, s), f"{kind} scalar {s}")
    assert COMPILES[0] == before, (kind, COMPILES[0] - before)

    # functools.partial: its arrays traced, the same values as one device.
    agree(lambda: mapped(functools.partial(lambda r, v: r * v, v=w))(x),
          lambda: mapped(functools.partial(lambda r, v: r * v, v=w), mesh)(x), f"{kind} partial")

# -- 4. NaN and dtypes through every reduction --------------------------------------------
data = {
    "nan": x.array.at[5, 1].set(jnp.nan),
    "bool": x.array > 0,
    "int": (x.array * 10).astype(jnp.int32),
    "complex": x.array + 1j * x.array[::-1],
}
for kind, mesh in MESHES.items():
    for name, arr in data.items():
        v = distmap.named(arr, (B, F))
        for op in (distmap.psum, distmap.pmean, distmap.pmax, distmap.pmin):
            agree(lambda: mapped(lambda r: op(r, "batch"))(v), lambda: mapped(lambda r: op(r, "batch"), mesh)(v),
                  f"{kind} {op.__name__} {name}")

# -- 5. errors agree -------------------------------------------------------------------------
short = distmap.ones({"batch": 5, "feature": 4})
for kind, mesh in MESHES.items():
    agree(lambda: mapped(lambda a, b: a + b)(x, short), lambda: mapped(lambda a, b: a + b, mesh)(x, short), f"{kind} sizes",
          raises=distmap.errors.AxisSizeError)
    agree(lambda: mapped(lambda r: distmap.psum(r, "batch"), chunk_size=2)(x),
          lambda: mapped(lambda r: distmap.psum(r, "batch"), mesh, chunk_size=2)(x), f"{kind} chunked collective",
          raises=distmap.errors.MappingError)

# -- 6. what fn reaches: shared helpers, recursion, sentinels, wrappers, state fn changes, arguments ----------
SHARED = distmap.ones(F)


def norm(r):
    return r * SHARED


def via_a(r):
    return norm(r)


def via_b(r):
    return norm(r) * 10


def diamond(r):  # two helpers that call one helper reading a global
    return via_a(r) + via_b(r)


def recurse(r, n=2):
    return r * SHARED if n == 0 else recurse(r, n - 1) + SHARED


class _Missing:
    pass


MISSING = _Missing()


def maybe_scale(r, s=MISSING):
    return r if s is MISSING else r * s


class Wrapper:  # delegates every attribute to what it wraps
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, r):
        return self.inner(r)


TRACED = []


def logged(r):
    TRACED.append(r.shape)  # trace-time state: appended when traced, as under jax.jit
    return r * SHARED


class Config:
    pass


config = Config()
config.scale = 2.0
options = set()

for kind, mesh in MESHES.items():
    one_diamond, mesh_diamond = mapped(diamond), mapped(diamond, mesh)
    one_recurse, mesh_recurse = mapped(recurse), mapped(recurse, mesh)
    for value in (1.0, 2.0):
        SHARED = distmap.full(F, value)
        agree(lambda: one_diamond(x), lambda: mesh_diamond(x), f"{kind} shared helper, {value}")
        agree(lambda: one_recurse(x), lambda: mesh_recurse(x), f"{kind} recursive function, {value}")
    SHARED = distmap.shard(distmap.full(F, 3.0), {"feature": "data"}, mesh)  # a global that lives on the mesh
    agree(lambda: mapped(diamond)(x), lambda: mesh_diamond(x), f"{kind} shared helper, global on the mesh")
    agree(lambda: mapped(maybe_scale)(x), lambda: mapped(maybe_scale, mesh)(x), f"{kind} sentinel default")
    agree(lambda: mapped(Wrapper(lambda r: r * 3))(x), lambda: mapped(Wrapper(lambda r: r * 3), mesh)(x),
          f"{kind} delegating wrapper")

    want = mapped(logged)(x)
    mesh_logged = mapped(logged, mesh)
    TRACED.clear()
    before = COMPILES[0]
    for step in range(3):
        agree(lambda: want, lambda: mesh_logged(x), f"{kind} fn appends to a global, step {step}")
    # Traced and compiled once: what fn appends while traced is trace-time state, as under jax.jit.
    assert COMPILES[0] - before == 1 and len(TRACED) == 1, (kind, COMPILES[0] - before, TRACED)
    TRACED.clear()

    one_cfg, mesh_cfg = mapped(lambda r, c: r * c.scale), mapped(lambda r, c: r * c.scale, mesh)
    one_opt = mapped(lambda r, o: r * (2.0 if "double" in o else 1.0))
    mesh_opt = mapped(lambda r, o: r * (2.0 if "double" in o else 1.0), mesh)
    for scale in (2.0, 3.0):
        config.scale = scale
        agree(lambda: one_cfg(x, config), lambda: mesh_cfg(x, config), f"{kind} object argument, scale {scale}")
        agree(lambda: one_opt(x, options), lambda: mesh_opt(x, options), f"{kind} set argument {options}")
        options.add("double")
    options.clear()

    # Eager grad through a mesh map, with no jax.set_mesh around it. (On an Explicit mesh JAX itself asks for
    # jax.set_mesh: jax.grad reshards its seed cotangent onto the mesh of the output.)
    if kind == "auto":
        agree(lambda: jax.grad(lambda a: mapped(lambda u: u * u)(distmap.named(a, (B, F))).sum().array)(x.array),
              lambda: jax.grad(lambda a: mapped(lambda u: u * u, mesh)(distmap.named(a, (B, F))).sum().array)(x.array),
              f"{kind} eager grad without set_mesh")

# A Module as fn, and its bound method: the globals its class's methods read are fn's own.
MODULE_SCALE, MODULE_SHIFT = 2.0, distmap.zeros(F)


class Shifted(eqx.Module):
    w: jax.Array

    def __call__(self, r):
        return r * self.w * MODULE_SCALE + MODULE_SHIFT

    def halved(self, r):
        return self(r) / 2


shifted = Shifted(jnp.float32(3.0))
for kind, mesh in MESHES.items():
    mesh_module, mesh_method = mapped(shifted, mesh), mapped(shifted.halved, mesh)
    for MODULE_SCALE, MODULE_SHIFT in ((2.0, distmap.zeros(F)), (5.0, distmap.ones(F))):  # noqa: B007 - globals Shifted reads
        agree(lambda: mapped(shifted)(x), lambda: mesh_module(x), f"{kind} Module reading globals, {MODULE_SCALE}")
        agree(lambda: mapped(shifted.halved)(x), lambda: mesh_method(x), f"{kind} its bound method, {MODULE_SCALE}")

# Stacked.vmap under a context mapping: a layer reading a global.
L = distmap.Axis("layer", 4)
LAYER_SCALE = 2.0


class Scaled(eqx.Module):
    w: jax.Array

    def __call__(self, r):
        return r * self.w * LAYER_SCALE


stacked = distmap.Stacked.init(L, lambda k: Scaled(jnp.ones(())))(jax.random.split(jax.random.key(3), 4))
for kind, mesh in MESHES.items():
    for LAYER_SCALE in (2.0, 5.0):
        with jax.set_mesh(mesh), distmap.axis_mapping({"layer": "data"}):
            on_mesh = stacked.vmap(jnp.ones(()))
        agree(lambda: stacked.vmap(jnp.ones(())), lambda: on_mesh, f"{kind} Stacked.vmap, scale {LAYER_SCALE}")

DONE = True
