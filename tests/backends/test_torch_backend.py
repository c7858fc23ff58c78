"""Torch-specific behaviour of :class:`agvi.backends.torch_backend.TorchBackend`.

The cross-backend contract is checked by ``test_conformance.py``; this file covers what only the
torch backend does: device validation, dtype rules, host keys and generators, mixing frameworks,
``torch.func`` composition (custom VJPs, ``vmap`` fallbacks, forward mode through special
functions) and the accuracy fixes over torch's own special functions.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as ssp

torch = pytest.importorskip("torch")

from agvi.backends import make_backend  # noqa: E402
from agvi.backends._gamma_grad import standard_gamma_grad  # noqa: E402

PRECISIONS = ("float32", "float64")


@pytest.fixture(scope="module", params=PRECISIONS)
def B(request):
    return make_backend("torch", precision=request.param)


@pytest.fixture(scope="module")
def B64():
    return make_backend("torch", precision="float64")


def _np(B, x):
    return B.to_numpy(x)


# ------------------------------------------------------------------ construction and devices
def test_defaults():
    B = make_backend("torch")
    assert B.name == "torch" and B.install_extra == "torch"
    assert B.precision == "float32" and B.float_dtype == torch.float32
    assert B.int_dtype == torch.int64
    assert B.device == "cpu" and B.available_devices()[0] == "cpu"
    assert (B.has_jit, B.has_vmap, B.supports_forward_mode, B.compiles_control_flow) == (
        False, True, True, False)


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "cuda:x", "gpu:9"])
def test_bad_device_names_device_and_lists_available(device):
    with pytest.raises(ValueError) as info:
        make_backend("torch", device=device)
    msg = str(info.value)
    assert repr(device) in msg and "'cpu'" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_raises():
    with pytest.raises(ValueError, match="not available"):
        make_backend("torch", device="cuda")


def test_device_of_and_to_device(B):
    x = B.ones(3)
    assert B.device_of(x) == "cpu" and B.device_of(np.ones(2)) == "cpu"
    assert B.device_of(B.to_device(np.ones(2), "cpu")) == "cpu"
    with pytest.raises(ValueError):
        B.to_device(x, "cuda:99")


# ------------------------------------------------------------------ dtypes
def test_asarray_dtype_rules(B):
    assert B.asarray(np.array([1.0], dtype=np.float32)).dtype == B.float_dtype
    assert B.asarray([1.0, 2.0]).dtype == B.float_dtype
    assert B.asarray(np.array([1, 2], dtype=np.int32)).dtype == torch.int64
    assert B.asarray(3).dtype == torch.int64
    assert B.asarray([True, False]).dtype == torch.bool
    assert B.asarray(np.array([1, 2], dtype=np.uint32)).dtype == torch.uint32
    t = torch.ones(2, dtype=torch.float16)
    assert B.asarray(t).dtype == torch.float16  # torch tensors keep their dtype
    assert B.asarray(t, dtype=B.float_dtype).dtype == B.float_dtype
    assert B.asarray([1, 2], dtype="float64").dtype == torch.float64


def test_asarray_copies_host_memory(B):
    host = np.arange(3.0)
    x = B.asarray(host)
    host[0] = 99.0
    assert float(x[0]) == 0.0
    ro = np.arange(3.0)
    ro.setflags(write=False)
    np.testing.assert_array_equal(_np(B, B.asarray(ro[::-1])), [2.0, 1.0, 0.0])


def test_created_arrays_and_global_default_dtype_untouched(B):
    before = torch.get_default_dtype()
    for arr in (B.zeros(2), B.ones((2, 2)), B.full((2,), 1), B.eye(2), B.linspace(0, 1, 3),
                B.normal(B.key(0), (2,)), B.uniform(B.key(0), (2,)), B.where(B.ones(2) > 0, 1.0,
                                                                               0.0)):
        assert arr.dtype == B.float_dtype and B.device_of(arr) == "cpu"
    assert B.arange(3).dtype == torch.int64
    assert torch.get_default_dtype() == before


def test_dtype_names(B):
    assert B.dtype("float64") == torch.float64 and B.dtype(torch.int32) == torch.int32
    with pytest.raises(ValueError, match="unknown dtype name"):
        B.dtype("complex64")
    assert B.finfo().eps == pytest.approx(np.finfo(B.precision).eps)


def test_scalar_operands_keep_dtype(B):
    x = B.asarray([-1.0, 2.0])
    for fn in (B.maximum, B.minimum, B.logaddexp, B.arctan2, B.power, B.add):
        assert fn(x, 0.5).dtype == B.float_dtype and fn(0.5, x).dtype == B.float_dtype
    np.testing.assert_array_equal(_np(B, B.less(0.0, x)), [False, True])
    np.testing.assert_array_equal(_np(B, B.logical_and(x > 0, True)), [False, True])


def test_mixing_jax_arrays_raises():
    jnp = pytest.importorskip("jax.numpy")
    B = make_backend("torch")
    with pytest.raises(TypeError) as info:
        B.asarray(jnp.ones(2))
    assert "jax" in str(info.value) and "torch" in str(info.value)


# ------------------------------------------------------------------ to_numpy
def test_to_numpy_copies_and_detaches(B):
    x = B.ones(2)
    host = B.to_numpy(x)
    host[0] = 5.0
    assert float(x[0]) == 1.0
    np.testing.assert_array_equal(B.to_numpy(torch.ones(2, requires_grad=True)), [1.0, 1.0])


def test_to_numpy_inside_grad_and_error_inside_vmap(B64):
    B = B64
    x = B.asarray([1.0, 2.0])
    # inside torch.func.grad the value is seen through the wrapper (and is a constant)
    g = B.grad(lambda v: B.sum(v * B.asarray(B.to_numpy(v))))(x)
    np.testing.assert_allclose(_np(B, g), [1.0, 2.0])
    with pytest.raises(RuntimeError, match="vmap"):
        B.vmap(lambda v: B.asarray(B.to_numpy(v)))(B.ones((2, 2)))


# ------------------------------------------------------------------ random
def test_keys_and_cpu_draws_equal_numpy_backend(B):
    N = make_backend("numpy", precision=B.precision)
    k = B.key(2**40 + 3)
    np.testing.assert_array_equal(B.split(k, 3), N.split(k, 3))
    np.testing.assert_array_equal(B.fold_in(k, 5), N.fold_in(k, 5))
    assert isinstance(k, np.ndarray) and k.dtype == np.uint32
    np.testing.assert_array_equal(_np(B, B.normal(k, (3, 2))), N.normal(k, (3, 2)))
    np.testing.assert_array_equal(_np(B, B.uniform(k, (4,), minval=-2.0, maxval=1.0)),
                                  N.uniform(k, (4,), minval=-2.0, maxval=1.0))
    np.testing.assert_array_equal(_np(B, B.randint(k, (5,), 0, 7)), N.randint(k, (5,), 0, 7))
    np.testing.assert_array_equal(_np(B, B.permutation(k, 6)), N.permutation(k, 6))
    np.testing.assert_array_equal(_np(B, B.gamma(k, B.asarray([0.5, 3.0]))),
                                  N.gamma(k, np.array([0.5, 3.0], dtype=B.precision)))
    np.testing.assert_array_equal(_np(B, B.poisson(k, B.asarray(4.0), (3,))),
                                  N.poisson(k, np.asarray(4.0), (3,)))
    assert B.normal(k, ()).shape == ()


def test_same_key_same_draws_and_full_key_is_used(B):
    k = B.key(7)
    assert torch.equal(B.normal(k, (5,)), B.normal(k, (5,)))
    k1, k2 = B.split(k)
    assert not torch.equal(B.normal(k1, (5,)), B.normal(k2, (5,)))
    # torch's CPU generator keeps 32 bits of its seed; these keys differ in the other word
    a = B.normal(np.array([0, 9], dtype=np.uint32), (4,))
    b = B.normal(np.array([1, 9], dtype=np.uint32), (4,))
    assert not torch.equal(a, b)
    # a key given as a tensor is accepted
    assert torch.equal(B.normal(torch.as_tensor(k.astype(np.int64)), (2,)), B.normal(k, (2,)))


def test_gamma_reparameterisation_gradient(B):
    k = B.key(3)
    alpha = B.asarray([0.3, 1.0, 4.0, 25.0])
    z = _np(B, B.gamma(k, alpha)).astype(np.float64)
    g = B.grad(lambda a: B.sum(B.gamma(k, a)))(alpha)
    exact = standard_gamma_grad(_np(B, alpha).astype(np.float64), z)
    # float64: the accurate host routine; float32: torch._standard_gamma_grad
    rtol = 1e-12 if B.precision == "float64" else 1e-3
    np.testing.assert_allclose(_np(B, g), exact, rtol=rtol)
    _, tangent = B.jvp(lambda a: B.gamma(k, a), (alpha,), (B.ones_like(alpha),))
    np.testing.assert_allclose(_np(B, tangent), _np(B, g), rtol=1e-6)
    # broadcast draws: the gradient sums over the sample axes
    gb = B.grad(lambda a: B.sum(B.gamma(k, a, (3, 4))))(alpha)
    zb = _np(B, B.gamma(k, alpha, (3, 4))).astype(np.float64)
    exact_b = standard_gamma_grad(np.broadcast_to(_np(B, alpha), (3, 4)).astype(np.float64), zb)
    np.testing.assert_allclose(_np(B, gb), exact_b.sum(0), rtol=rtol)


def test_draws_under_vmap(B):
    keys = B.split(B.key(0), 3)
    # batched host keys: a loop over examples, same numbers as calling per key
    out = B.vmap(lambda k, s: B.normal(k, (2,)) * s, in_axes=(0, None))(keys, B.asarray(2.0))
    expect = np.stack([2.0 * _np(B, B.normal(k, (2,))) for k in keys])
    np.testing.assert_array_equal(_np(B, out), expect)
    # an unbatched key: every example sees the same numbers (as in JAX)
    out = B.vmap(lambda s: B.normal(B.key(1), (2,)) * s)(B.asarray([1.0, 3.0]))
    np.testing.assert_allclose(_np(B, out)[1], 3.0 * _np(B, out)[0], rtol=1e-6)


# ------------------------------------------------------------------ special functions
def test_special_accuracy_fixes(B64):
    B = B64
    x = np.array([-30.0, -20.0, -9.0, -1.0, 0.5, 5.0])
    np.testing.assert_allclose(_np(B, B.ndtr(B.asarray(x))), ssp.ndtr(x), rtol=1e-13)
    x = np.array([0.2, 1.3, 7.5, 55.0])
    np.testing.assert_allclose(_np(B, B.polygamma(1, B.asarray(x))), ssp.polygamma(1, x),
                               rtol=1e-14)
    g = B.grad(lambda t: B.sum(B.digamma(t)))(B.asarray(x))
    np.testing.assert_allclose(_np(B, g), ssp.polygamma(1, x), rtol=1e-14)
    a = np.array([25.0, 60.0, 250.0, 5000.0])
    xs = a * np.array([0.8, 1.1, 0.95, 1.02])
    for fn, ref in ((B.gammainc, ssp.gammainc), (B.gammaincc, ssp.gammaincc)):
        np.testing.assert_allclose(_np(B, fn(B.asarray(a), B.asarray(xs))), ref(a, xs),
                                   rtol=1e-13)


def test_gammainc_derivatives_in_x_both_modes(B64):
    B = B64
    a, x = B.asarray(2.5), B.asarray([0.5, 1.5, 4.0])
    xn = _np(B, x)
    dens = np.exp(1.5 * np.log(xn) - xn - ssp.gammaln(2.5))
    g = B.grad(lambda t: B.sum(B.gammainc(a, t)))(x)
    np.testing.assert_allclose(_np(B, g), dens, rtol=1e-12)
    _, t = B.jvp(lambda t: B.gammaincc(a, t), (x,), (B.ones_like(x),))
    np.testing.assert_allclose(_np(B, t), -dens, rtol=1e-12)
    h = B.hessian(lambda t: B.sum(B.gammainc(a, t)))(x)
    np.testing.assert_allclose(np.diag(_np(B, h)), dens * (1.5 / xn - 1.0), rtol=1e-10)
    gv = B.vmap(B.grad(lambda t: B.gammainc(a, t)))(x)
    np.testing.assert_allclose(_np(B, gv), dens, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="differentiable in x only"):
        B.grad(lambda s: B.sum(B.gammainc(s, x)))(a)


def test_xlogy_zero_conventions(B64):
    B = B64
    gx, gy = B.grad(lambda u, v: B.sum(B.xlogy(u, v)), argnums=(0, 1))(
        B.asarray([0.0, 0.0, 2.0]), B.asarray([0.0, 3.0, 3.0]))
    np.testing.assert_allclose(_np(B, gx), [0.0, np.log(3.0), np.log(3.0)])
    np.testing.assert_allclose(_np(B, gy), [0.0, 0.0, 2.0 / 3.0])


# ------------------------------------------------------------------ autodiff and torch.func
def test_grad_pytrees_and_non_tensor_aux(B64):
    B = B64
    x = B.asarray([1.0, 2.0])
    params = {"a": x, "b": (x * 2, None)}
    (val, aux), g = B.value_and_grad(
        lambda p: (B.sum(p["a"] ** 2) + B.sum(p["b"][0]), {"n": 3, "t": p["a"]}),
        has_aux=True)(params)
    assert aux["n"] == 3 and not aux["t"].requires_grad
    np.testing.assert_allclose(_np(B, g["a"]), [2.0, 4.0])
    np.testing.assert_allclose(_np(B, g["b"][0]), [1.0, 1.0])
    assert g["b"][1] is None
    g = B.grad(lambda s: s * s)(3.0)  # a Python float argument
    assert float(g) == 6.0
    out, pullback, aux = B.vjp(lambda v: (v * 2, "aux"), x, has_aux=True)
    assert aux == "aux"
    np.testing.assert_allclose(_np(B, pullback(B.ones(2))[0]), [2.0, 2.0])


def test_composes_with_torch_func(B64):
    B = B64
    f = lambda v: B.sum(B.sin(v) * v)  # noqa: E731
    x = B.asarray([[0.1, 0.2], [0.3, 0.4]])
    a = torch.func.vmap(B.grad(f))(x)
    b = B.vmap(torch.func.grad(f))(x)
    xn = _np(B, x)
    np.testing.assert_allclose(_np(B, a), np.cos(xn) * xn + np.sin(xn))
    np.testing.assert_allclose(_np(B, b), _np(B, a))
    h = torch.func.jacfwd(B.grad(f))(x[0])
    np.testing.assert_allclose(np.diag(_np(B, h)), 2 * np.cos(xn[0]) - xn[0] * np.sin(xn[0]))


def test_custom_vjp_composes(B64):
    B = B64

    def fun(a, b):
        return a * B.sin(b)

    def fwd(a, b):
        return fun(a, b), (a, B.cos(b), B.sin(b), 2.0)

    def bwd(res, g):
        a, cb, sb, two = res
        return g * sb * (two / 2.0), g * a * cb

    f = B.custom_vjp(fun, fwd, bwd)
    a, b = B.asarray([0.5, 1.5]), B.asarray([0.3, 1.1])
    an, bn = _np(B, a), _np(B, b)
    np.testing.assert_allclose(_np(B, f(a, b)), an * np.sin(bn))
    ga, gb = B.grad(lambda u, v: B.sum(f(u, v)), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(_np(B, ga), np.sin(bn))
    np.testing.assert_allclose(_np(B, gb), an * np.cos(bn))
    gv = B.vmap(B.grad(lambda u, v: B.sum(f(u, v))))(a, b)
    np.testing.assert_allclose(_np(B, gv), np.sin(bn))
    # second order reaches the inputs through the residuals (as jax.custom_vjp)
    gg = B.grad(lambda v: B.sum(B.grad(lambda w: B.sum(f(a, w)))(v)))(b)
    np.testing.assert_allclose(_np(B, gg), -an * np.sin(bn))
    # eager torch autograd works too
    leaf = torch.tensor(an, requires_grad=True)
    f(leaf, b).sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), np.sin(bn))


def test_jacobian_chunks_both_modes(B64):
    B = B64
    F = lambda v: B.stack([B.sum(v ** 2), B.prod(v), B.sin(v[0])])  # noqa: E731
    x = B.asarray([0.3, -1.2, 2.0])
    xn = _np(B, x)
    J = np.stack([2 * xn, [xn[1] * xn[2], xn[0] * xn[2], xn[0] * xn[1]],
                  [np.cos(xn[0]), 0.0, 0.0]])
    for mode in ("reverse", "forward"):
        for chunk in (1, 2, None):
            np.testing.assert_allclose(_np(B, B.jacobian(F, mode=mode, chunk_size=chunk)(x)), J,
                                       rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ functional updates, vmap
def test_functional_updates_under_vmap_and_grad(B64):
    B = B64
    x = B.asarray([1.0, 2.0, 3.0])
    out = B.vmap(lambda v: B.index_update(x, 1, v))(B.asarray([5.0, 6.0]))
    np.testing.assert_array_equal(_np(B, out), [[1, 5, 3], [1, 6, 3]])
    out = B.vmap(lambda v: B.index_add(x, B.asarray([0, 0]), v))(B.asarray([[1.0, 2.0]]))
    np.testing.assert_array_equal(_np(B, out), [[4, 2, 3]])
    g = B.grad(lambda v: B.sum(B.index_update(v, 0, 3 * v[1]) ** 2))(x)
    np.testing.assert_allclose(_np(B, g), [0.0, 4.0 + 36.0, 6.0])
    assert float(x[1]) == 2.0  # functional: x unchanged
    M = B.reshape(B.arange(12, dtype=B.float_dtype), (4, 3))
    s = B.vmap(lambda i: B.dynamic_slice(M, i, 2))(B.asarray([0, 3, -2]))
    np.testing.assert_array_equal(_np(B, s), _np(B, M)[[[0, 1], [2, 3], [0, 1]]])
    r = B.vmap(lambda i: B.dynamic_index(M, i, axis=1))(B.asarray([2, -1]))
    np.testing.assert_array_equal(_np(B, r), _np(B, M)[:, [2, 2]].T)
    u = B.vmap(lambda i: B.dynamic_update_index(x, i, 0.0))(B.asarray([0, 2]))
    np.testing.assert_array_equal(_np(B, u), [[0, 2, 3], [1, 2, 0]])


def test_batched_predicates_select(B64):
    B = B64
    x = B.asarray([-1.0, 2.0])
    out = B.vmap(lambda v: B.cond(v > 0, lambda u: 2 * u, lambda u: -u, v))(x)
    np.testing.assert_array_equal(_np(B, out), [1.0, 4.0])
    out = B.vmap(lambda i, v: B.switch(i, [lambda u: u, lambda u: 3 * u], v))(
        B.asarray([5, 0]), x)
    np.testing.assert_array_equal(_np(B, out), [-3.0, 2.0])


def test_popcount_int64(B):
    v = np.array([0, 1, 7, 2**31 + 5, 2**32 - 1], dtype=np.int64)
    np.testing.assert_array_equal(_np(B, B.popcount(B.asarray(v))),
                                  [bin(int(u)).count("1") for u in v])


def test_jit_is_identity_and_accepts_options(B):
    f = lambda v: v + 1  # noqa: E731
    assert B.jit(f, static_argnums=(0,), static_argnames=("a",), donate_argnums=0) is f


def test_trace_option_turns_compile_pure_off():
    """``trace=False`` makes ``compile_pure`` the identity (every call eager: a side effect
    runs each time) and clears ``compiles_pure``; the default traces on the second call."""
    eager = make_backend("torch", precision="float64", trace=False)
    traced = make_backend("torch", precision="float64")
    assert not eager.compiles_pure and traced.compiles_pure
    assert eager is not traced and make_backend("torch", precision="float64", trace=False) is eager
    # eager: 5 calls of f; traced: the first (eager) call, the trace and its eager check
    for B, want in ((eager, 5), (traced, 3)):
        calls = []

        def f(x, calls=calls, B=B):
            calls.append(1)
            return B.sin(x) * 2.0

        g = B.compile_pure(f)
        x = B.asarray([0.1, 0.2])
        for _ in range(5):
            np.testing.assert_allclose(B.to_numpy(g(x)), 2 * np.sin([0.1, 0.2]), rtol=1e-15)
        assert len(calls) == want
    with pytest.raises(ValueError, match="trace must be True or False"):
        make_backend("torch", trace="no")


def test_host_function_hoists_what_depends_on_the_data_alone(B64):
    """A traced function called through ``host_function`` computes the data's terms (here
    ``log(data)`` and ``2 * data``) once, not per call; the results equal the closed forms at
    every point, also when an output depends on the data alone or nothing can be hoisted."""
    B = B64
    data = np.array([0.5, 1.5, 3.0])
    log_data = np.log(data)
    cases = [   # (function, its closed form, whether something is hoisted)
        (B.value_and_grad(lambda x, d: B.sum(B.log(d) * x) - B.sum(x * x * (2.0 * d))),
         lambda x: (np.sum(log_data * x) - np.sum(2 * data * x * x), log_data - 4 * data * x),
         True),
        (B.value_and_grad(lambda x, d: B.sum(d * x)), lambda x: (np.sum(data * x), data),
         False),
        (lambda x, d: (B.sum(d * x), B.log(d)), lambda x: (np.sum(data * x), log_data), True),
    ]
    for f, closed_form, hoists in cases:
        compiled = B.compile_pure(f)
        x0 = np.array([0.2, -0.4, 1.1])
        call = B.host_function(compiled, x0, B.asarray(data))
        for k in range(4):   # eager, traced, then the split graph
            x = x0 * (k + 1)
            for got, want in zip(call(x), closed_form(x), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-14)
        (part,) = compiled._partials.values()
        assert (part is not None) == hoists
        if hoists:
            assert "log" in str(part.invariant.code)
            assert "aten::log" not in str(getattr(part.varying, "graph", part.varying))
