"""JAX-specific behaviour of :class:`agvi.backends.jax_backend.JaxBackend`.

The cross-backend conformance suite (tests/backends/test_conformance.py) checks every contract
entry's values and gradients; this file covers what only JAX has: the process-wide x64 flag,
device placement and device errors, composition of the backend's operations under
``jit``/``vmap``/``lax``, traced indices, foreign arrays, and that the backend adds nothing to
(and recompiles nothing in) compiled programs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
scipy_special = pytest.importorskip("scipy.special")
scipy_stats = pytest.importorskip("scipy.stats")

from agvi.backends import make_backend  # noqa: E402
from agvi.backends.base import BINARY_FUNCTIONS, UNARY_FUNCTIONS  # noqa: E402

DEVICE = os.environ.get("AGVI_TEST_DEVICE") or None


@pytest.fixture(scope="module")
def B():
    """A float64 JAX backend (turns on jax_enable_x64 for the process, as documented)."""
    try:
        return make_backend("jax", precision="float64", device=DEVICE)
    except ValueError as exc:
        pytest.skip(f"the jax backend cannot use device {DEVICE!r} here: {exc}")


def _run_python(code: str, env_extra=None) -> str:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# ---------------------------------------------------------------------------------------------
def test_flags_namespace_and_direct_binding(B):
    assert B.name == "jax" and B.install_extra == "jax"
    assert B.has_jit and B.has_vmap and B.supports_forward_mode and B.compiles_control_flow
    assert B.xp is jnp
    for name in UNARY_FUNCTIONS + BINARY_FUNCTIONS:
        assert getattr(B, name) is getattr(jnp, name), name  # no wrapper frame
    assert B.float_dtype == np.float64 and B.int_dtype == np.int64


def test_x64_precision_and_device_placement_in_a_fresh_process():
    # A fresh interpreter: x64 starts off, and two host devices stand in for a second device.
    out = _run_python("""
        import jax, numpy as np
        before = dict(jax.config.values)
        import agvi
        from agvi.backends import make_backend
        from agvi.backends.jax_backend import JaxBackend
        assert dict(jax.config.values) == before, "importing changed a JAX setting"

        B = make_backend("jax")
        assert (B.precision, B.float_dtype, B.int_dtype) == ("float32", np.float32, np.int32)
        try:
            B.asarray(2**40)  # would wrap silently in a NumPy int32 cast
        except ValueError as exc:
            assert "int32" in str(exc)
        else:
            raise AssertionError("an int64 value outside int32 was accepted without x64")
        B32 = make_backend("jax", precision="float32")
        assert dict(jax.config.values) == before, "a float32 backend changed a JAX setting"
        try:
            JaxBackend(precision="float64", device="cpu:7")
        except ValueError as exc:
            assert "cpu:7" in str(exc) and "['cpu', 'cpu:1']" in str(exc), exc
        else:
            raise AssertionError("absent device accepted")
        assert not jax.config.jax_enable_x64, "a failed construction turned x64 on"

        B64 = make_backend("jax", precision="float64")
        assert jax.config.jax_enable_x64
        assert (B64.float_dtype, B64.int_dtype) == (np.float64, np.int64)
        assert B64.asarray(1.5).dtype == np.float64 and B64.asarray(2**40).dtype == np.int64
        # float32 under x64: created explicitly as float32, ints follow x64
        F = JaxBackend(precision="float32")
        k = F.key(0)
        for a in (F.asarray(1.5), F.asarray(np.ones(2)), F.asarray([1.0, 2.0]), F.zeros(2),
                  F.ones(2), F.full((2,), 3.0), F.eye(2), F.linspace(0, 1, 3),
                  F.normal(k, (2,)), F.uniform(k, (2,)), F.gamma(k, 2.0), F.poisson(k, 3.0),
                  F.binomial(k, 5, 0.5), F.exponential(k, (2,)), F.beta(k, 2.0, 2.0)):
            assert a.dtype == np.float32, a.dtype
        assert F.int_dtype == np.int64 and F.asarray(3).dtype == np.int64
        assert F.randint(k, (2,), 0, 5).dtype == np.int64
        assert JaxBackend().precision == "float64"   # None now follows the flag
        assert B32.float_dtype == np.float32 and B32.int_dtype == np.int32  # fixed for life
        JaxBackend(precision="float32")
        assert jax.config.jax_enable_x64, "float32 must never turn x64 off"

        # device placement: every created array, key and draw lands on cpu:1
        D = make_backend("jax", precision="float64", device="cpu:1")
        d1 = jax.devices("cpu")[1]
        assert D.device == "cpu:1" and D.available_devices() == ["cpu", "cpu:1"]
        key = D.key(0)
        made = [D.asarray([1.0]), D.asarray(np.ones(2)), D.asarray(jax.numpy.ones(2)),
                D.zeros(2), D.ones(2), D.full((2,), 1.0), D.eye(2), D.arange(3),
                D.linspace(0, 1, 3), key, D.split(key, 3), D.fold_in(key, 2),
                D.normal(key, (2,)), D.normal(np.array([0, 1], np.uint32), (2,)),
                D.gamma(key, 2.0), D.randint(key, (2,), 0, 3), D.permutation(key, 4),
                D.categorical(key, D.zeros(3)), D.one_hot(D.arange(2), 2),
                D.pure_callback(lambda: np.ones(2), ((2,), "float64"))]
        assert all(a.devices() == {d1} for a in made), [a.devices() for a in made]
        step = jax.jit(lambda k, x: x + D.normal(k, (2,)) + D.zeros(2))
        assert step(key, D.ones(2)).devices() == {d1}
        assert D.device_of(D.zeros(2)) == "cpu:1" and D.device_of(np.ones(2)) == "cpu"
        assert D.device_of(D.to_device(D.zeros(2), "cpu")) == "cpu"
        assert D.to_device(jax.numpy.ones(2), "cpu:1").devices() == {d1}
        print("OK")
    """, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert "OK" in out


def test_device_errors():
    from agvi.backends.jax_backend import JaxBackend

    for bad in ("mps", "cuda:x", "npu:0"):
        with pytest.raises(ValueError, match="is not a device name"):
            JaxBackend(device=bad)
    with pytest.raises(ValueError, match="device must be a string"):
        JaxBackend(device=0)
    B = JaxBackend(precision="float32")
    assert B.available_devices()[0] == "cpu"
    if not any(name.startswith("cuda") for name in B.available_devices()):
        for bad in ("cuda", "cuda:0", "gpu"):
            with pytest.raises(ValueError, match=r"not available to JAX.*available devices: "
                                                 r"\['cpu'"):
                JaxBackend(device=bad)
    with pytest.raises(ValueError, match="precision"):
        JaxBackend(precision="float16")


def test_asarray_dtypes_tracers_and_foreign_arrays(B):
    assert B.asarray(1.0).dtype == B.float_dtype
    assert B.asarray(np.float32(1.0)).dtype == B.float_dtype
    assert B.asarray(np.arange(3, dtype=np.int16)).dtype == B.int_dtype
    assert B.asarray(True).dtype == np.bool_
    assert B.asarray(np.array([1, 2], np.uint32)).dtype == np.uint32
    x32 = jnp.ones(2, dtype=jnp.float32)
    assert B.asarray(x32).dtype == np.float32  # this framework's arrays keep their dtype
    assert B.asarray(x32, dtype=B.float_dtype).dtype == np.float64

    @jax.jit
    def f(x):
        assert B.is_array(x) and B.asarray(x) is x
        return B.asarray([x, 2.0 * x])  # a list of tracers never goes through the host

    np.testing.assert_allclose(B.to_numpy(f(B.asarray(1.5))), [1.5, 3.0])
    host = B.to_numpy(B.ones(3))
    host[0] = 5.0  # a writable copy
    assert isinstance(host, np.ndarray)

    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"torch.*jax|jax.*torch"):
        B.asarray(torch.ones(2))


def test_keys_match_jax_and_are_stable(B):
    for seed in (7, 2**32 - 1, 2**40 + 3):
        np.testing.assert_array_equal(B.key_data(B.key(seed)),
                                      np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))))
    assert B.key(2**70).shape == (2,)
    with pytest.raises(ValueError):
        B.key(-1)
    k = B.key(3)
    assert B.split(k, 4).shape == (4, 2) and B.split(k).dtype == np.uint32
    np.testing.assert_array_equal(B.key_data(jax.jit(B.fold_in)(k, 5)),
                                  B.key_data(B.fold_in(k, 5)))
    assert not np.array_equal(B.key_data(B.fold_in(k, 5)), B.key_data(B.fold_in(k, 5 + 2**32)))
    np.testing.assert_array_equal(B.to_numpy(B.normal(k, (4,))),
                                  B.to_numpy(B.normal(B.key_data(k), (4,))))
    batched = jax.vmap(lambda kk: B.gamma(kk, 2.0, (3,)))(B.split(k, 5))
    assert batched.shape == (5, 3)


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7])
def test_draws_are_jax_randoms_threefry_numbers(B, seed):
    # the backend's unrolled threefry (agvi/backends/_jax_threefry.py) against jax.random's own
    # threefry2x32 on the same raw key: eager, under jit and under vmap, every sampler
    k, jk = B.key(seed), jax.random.PRNGKey(seed)
    f64 = jnp.float64
    alpha, n = jnp.array([0.3, 2.0, 40.0]), jnp.array([3.0, 50.0, 1000.0])
    pairs = [
        (B.split(k, 5), jax.random.split(jk, 5)),
        (B.split(k, 1), jax.random.split(jk, 1)),
        (B.fold_in(k, 77), jax.random.fold_in(jk, 77)),
        (B.fold_in(k, 2**40 + 3), jax.random.fold_in(jax.random.fold_in(jk, 3), 256)),
        (B.normal(k, (7, 3)), jax.random.normal(jk, (7, 3), dtype=f64)),
        (B.normal(k, (), dtype=jnp.float32), jax.random.normal(jk, (), dtype=jnp.float32)),
        (B.uniform(k, (11,)), jax.random.uniform(jk, (11,), dtype=f64)),
        (B.gamma(k, alpha), jax.random.gamma(jk, alpha, dtype=f64)),
        (B.poisson(k, n), jax.random.poisson(jk, n).astype(f64)),
        (B.binomial(k, n, 0.3), jax.random.binomial(jk, n, 0.3, dtype=f64)),
        (B.randint(k, (6,), 0, 10), jax.random.randint(jk, (6,), 0, 10, dtype=jnp.int64)),
        (B.permutation(k, 9), jax.random.permutation(jk, 9)),
        (jax.jit(lambda kk, t: B.normal(B.fold_in(kk, t), (4,)))(k, 9),
         jax.random.normal(jax.random.fold_in(jk, 9), (4,), dtype=f64)),
        (jax.vmap(lambda kk: B.uniform(B.split(kk, 3)[2], (4,)))(B.split(k, 3)),
         jax.vmap(lambda kk: jax.random.uniform(jax.random.split(kk, 3)[2], (4,), dtype=f64))(
             jax.random.split(jk, 3))),
    ]
    for i, (ours, theirs) in enumerate(pairs):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=f"pair {i}")


def test_draws_do_not_depend_on_jax_threefry_flags():
    # agvi's numbers stay those of JAX's default scheme whatever a user sets globally
    code = textwrap.dedent("""
        import jax, numpy as np
        import agvi.backends as ab
        B = ab.make_backend("jax", precision="float64")
        k = B.key(5)
        before = np.asarray(B.normal(B.split(k, 3)[1], (4,)))
        jax.config.update("jax_threefry_partitionable", False)
        jax.config.update("jax_default_prng_impl", "rbg")
        after = np.asarray(B.normal(B.split(k, 3)[1], (4,)))
        assert np.array_equal(before, after), (before, after)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_xlogy_xlog1py_gradients_at_the_edges(B):
    # d/dx = log(y) (0 at x == y == 0); d/dy = 0 where x == 0 (jax.scipy gives -inf/nan there)
    x = B.asarray([0.0, 0.0, 2.0])
    gx, gy = jax.grad(lambda a, b: B.sum(B.xlogy(a, b)), (0, 1))(x, B.asarray([2.0, 0.0, 3.0]))
    np.testing.assert_allclose(B.to_numpy(gx), [np.log(2.0), 0.0, np.log(3.0)])
    np.testing.assert_allclose(B.to_numpy(gy), [0.0, 0.0, 2.0 / 3.0])
    gx, gy = jax.grad(lambda a, b: B.sum(B.xlog1py(a, b)), (0, 1))(x, B.asarray([1.0, -1.0, 3.0]))
    np.testing.assert_allclose(B.to_numpy(gx), [np.log(2.0), 0.0, np.log(4.0)])
    np.testing.assert_allclose(B.to_numpy(gy), [0.0, 0.0, 0.5])
    _, t = B.jvp(B.xlogy, (x, B.asarray([2.0, 0.0, 3.0])), (B.ones(3), B.ones(3)))
    np.testing.assert_allclose(B.to_numpy(t), [np.log(2.0), 0.0, np.log(3.0) + 2.0 / 3.0])


def test_gamma_draw_gradient_is_the_implicit_reparameterisation(B):
    # dz/da = -(dF/da)(z; a) / p(z; a) (Figurnov et al. 2018, eq. 6), dF/da by central differences.
    k = B.key(11)
    a0 = np.array([0.3, 1.7, 40.0])

    @jax.jit
    def draws_and_grads(a):
        z, pullback = jax.vjp(lambda a: B.gamma(k, a, (6, 3)), a)
        # each z[i, j] depends on a[j] only: one VJP per sample row gives every dz_ij/da_j
        rows = jax.vmap(lambda e: pullback(e)[0])(jnp.eye(6)[:, :, None] * jnp.ones(3))
        return z, rows

    z, dz = (B.to_numpy(v) for v in draws_and_grads(B.asarray(a0)))
    h = 1e-6 * a0
    dF = (scipy_special.gammainc(a0 + h, z) - scipy_special.gammainc(a0 - h, z)) / (2 * h)
    np.testing.assert_allclose(dz, -dF / scipy_stats.gamma.pdf(z, a0), rtol=1e-6)


def test_traced_indices_under_jit(B):
    x = B.asarray(np.arange(12.0).reshape(6, 2))
    host = np.arange(12.0).reshape(6, 2)

    @jax.jit
    def f(i):
        return (B.dynamic_slice(x, i, 2), B.dynamic_index(x, i, axis=0),
                B.dynamic_update_index(x, i, 7.0, axis=0), B.index_update(x, i, -1.0),
                B.index_add(x, (i, 1), 10.0))

    for i in (0, 3, 5):
        sl, ix, up, iu, ia = f(i)
        np.testing.assert_array_equal(B.to_numpy(sl), host[min(i, 4):min(i, 4) + 2])
        np.testing.assert_array_equal(B.to_numpy(ix), host[i])
        want = host.copy()
        want[i] = 7.0
        np.testing.assert_array_equal(B.to_numpy(up), want)
        want[i] = -1.0
        np.testing.assert_array_equal(B.to_numpy(iu), want)
        want = host.copy()
        want[i, 1] += 10.0
        np.testing.assert_array_equal(B.to_numpy(ia), want)
    # a negative start clamps to 0 (as the NumPy backend), traced or not
    np.testing.assert_array_equal(B.to_numpy(f(-3)[0]), host[0:2])
    np.testing.assert_array_equal(B.to_numpy(B.dynamic_slice(x, -3, 2)), host[0:2])


def test_jit_vmap_lax_composition(B):
    """A vmapped, jitted per-chain loop: scan carrying a NamedTuple, cond/switch/while on traced
    values, grad inside the body, and a dynamic update at a traced index."""
    from typing import NamedTuple

    class State(NamedTuple):
        x: object
        hist: object

    def logp(x):
        return -0.5 * B.sum(x * x)

    def step(state, i):
        g = B.grad(logp)(state.x)
        x = B.cond(B.sum(g) > 0, lambda v: v * 0.5, lambda v: v - 0.1 * g, state.x)
        x = B.switch(i % 3, [lambda v: v, lambda v: v + 1.0, lambda v: v - 1.0], x)
        n = B.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, 1.0))[1]
        return State(x, B.dynamic_update_index(state.hist, i, B.sum(x) * n)), B.sum(x)

    def chain(x0):
        init = State(x0, B.zeros((5,)))
        return B.scan(step, init, B.arange(5))

    x0 = B.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    final, ys = B.jit(B.vmap(chain))(x0)
    for c in range(4):  # the same loop run eagerly, in Python, per chain
        x = np.asarray(B.to_numpy(x0[c]))
        hist = np.zeros(5)
        for i in range(5):
            g = -x
            x = x * 0.5 if g.sum() > 0 else x - 0.1 * g
            x = [x, x + 1.0, x - 1.0][i % 3]
            hist[i] = x.sum() * 8.0
            np.testing.assert_allclose(B.to_numpy(ys[c, i]), x.sum(), rtol=1e-12)
        np.testing.assert_allclose(B.to_numpy(final.x[c]), x, rtol=1e-12)
        np.testing.assert_allclose(B.to_numpy(final.hist[c]), hist, rtol=1e-12)

    # reverse mode through scan and fori_loop; forward mode through fori_loop
    gs = jax.jit(B.grad(lambda a: B.scan(lambda c, _: (c * a, None), 1.0, length=3)[0]))
    np.testing.assert_allclose(B.to_numpy(gs(B.asarray(2.0))), 12.0)
    _, t = B.jvp(lambda a: B.fori_loop(0, 3, lambda i, v: v * a, 1.0), (B.asarray(2.0),),
                 (B.asarray(1.0),))
    np.testing.assert_allclose(B.to_numpy(t), 12.0)
    # a Python bool/int predicate runs only the chosen branch (the other would fail to trace)
    assert B.cond(True, lambda: 1.0, lambda: 1 / 0) == 1.0
    assert B.switch(5, [lambda: 1 / 0, lambda: 2.0]) == 2.0


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("chunk_size", [1, 2, None])
def test_jacobian_chunks_under_jit(B, mode, chunk_size):
    def f(a, b):
        return B.tanh(B.matmul(b, a ** 2))

    rng = np.random.default_rng(1)
    a, b = B.asarray(rng.normal(size=3)), B.asarray(rng.normal(size=(2, 3)))
    want = jax.jacfwd(f, argnums=(0, 1))(a, b)
    got = jax.jit(B.jacobian(f, argnums=(0, 1), mode=mode, chunk_size=chunk_size))(a, b)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(B.to_numpy(g), B.to_numpy(w), rtol=1e-12, atol=1e-14)
    (j, aux) = B.jacobian(lambda a, b: (f(a, b), B.sum(a)), mode=mode, chunk_size=chunk_size,
                          has_aux=True)(a, b)
    np.testing.assert_allclose(B.to_numpy(j), B.to_numpy(want[0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(B.to_numpy(aux), B.to_numpy(B.sum(a)))


def test_custom_vjp_and_pure_callback_compose_with_transforms(B):
    f = B.custom_vjp(lambda a: B.sin(a), lambda a: (B.sin(a), (a,)),
                     lambda res, g: [g * 10.0])  # a list is accepted as the cotangent tuple
    x = B.asarray([0.1, 0.2, 0.3])
    np.testing.assert_allclose(B.to_numpy(jax.jit(B.grad(lambda a: B.sum(f(a))))(x)), 10.0)
    np.testing.assert_allclose(B.to_numpy(B.vmap(B.grad(f))(x)), 10.0)

    seen = []

    def host(a, b):
        seen.append(type(a))
        return {"s": np.sum(a) + b, "c": np.cumsum(a)}

    rsd = {"s": ((), "float64"), "c": ((3,), "float64")}
    out = jax.jit(lambda a: B.pure_callback(host, rsd, a, 1.0))(x)
    np.testing.assert_allclose(B.to_numpy(out["c"]), np.cumsum(B.to_numpy(x)))
    assert out["s"].dtype == B.float_dtype and seen and all(t is np.ndarray for t in seen)
    batched = B.vmap(lambda a: B.pure_callback(host, rsd, a, 1.0))(B.stack([x, 2 * x]))
    np.testing.assert_allclose(B.to_numpy(batched["s"]), [1.6, 2.2])
    k = B.pure_callback(lambda kk: kk + np.uint32(1), ((2,), "uint32"), B.key(1))
    assert k.dtype == np.uint32 and int(k[1]) == 2


def test_backend_adds_nothing_to_compiled_programs(B):
    rng = np.random.default_rng(2)
    X = B.asarray(rng.normal(size=(50, 4)))
    y = B.asarray((rng.random(50) < 0.5).astype(float))

    def loglik_backend(w):
        z = B.sum(X * w, axis=-1)
        return B.sum(y * z - B.log1p(B.exp(z))) - 0.5 * B.sum(w * w)

    def loglik_jnp(w):
        z = jnp.sum(X * w, axis=-1)
        return jnp.sum(y * z - jnp.log1p(jnp.exp(z))) - 0.5 * jnp.sum(w * w)

    w = B.zeros((4,))

    def run(grad, fn):
        return lambda w: B.fori_loop(0, 10, lambda i, v: v + 0.01 * grad(fn)(v), w)

    def clean(jaxpr):
        return re.sub(r"\s+", " ", str(jaxpr))

    assert (clean(jax.make_jaxpr(run(B.grad, loglik_backend))(w))
            == clean(jax.make_jaxpr(run(jax.grad, loglik_jnp))(w)))


def test_no_recompilation(B):
    import jax.monitoring

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *args, **kw: compiles.append(name)
        if name == "/jax/core/compile/backend_compile_duration" else None)
    traces = []

    def step(key, x):
        traces.append(1)
        k1, k2 = B.split(key)
        noise = B.normal(k1, B.shape(x))
        x = B.cond(B.sum(x) > 0, lambda v: v - 0.1, lambda v: v + 0.1, x + 0.01 * noise)
        g = B.grad(lambda v: B.sum(B.sin(v)))(x)
        return k2, B.fori_loop(0, 3, lambda i, v: v + 0.1 * g, x)

    jstep = B.jit(step)
    key, x = B.key(0), B.ones((3,))
    key, x = jstep(key, x)
    inputs = [(B.key(s), B.asarray(np.full(3, float(s)))) for s in range(1, 4)]
    jax.block_until_ready(inputs)
    before = len(compiles)
    for k, v in inputs:  # new keys and values, same shapes: no retrace, no compile
        jax.block_until_ready(jstep(k, v))
    assert len(traces) == 1 and len(compiles) == before
    # the cached backend object is one hashable static argument
    assert make_backend("jax", precision="float64", device=DEVICE) is B
    static = B.jit(lambda backend, v: backend.exp(v), static_argnums=0)
    static(B, x)
    x2 = jax.block_until_ready(x + 1.0)
    before = len(compiles)
    static(make_backend("jax", precision="float64", device=DEVICE), x2)
    assert len(compiles) == before
