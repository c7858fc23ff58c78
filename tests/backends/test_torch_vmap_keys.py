"""TorchBackend.vmap over a stack of host keys: vectorised, and draw for draw equal to the loop.

The oracle is the per-key loop (each example's draws from its own key, computed by
:mod:`agvi.backends.host_random`, the NumPy backend's generator) and the NumPy backend itself.
Each test also checks which path ran: the vectorised one calls the function once, the loop once
per key.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import agvi  # noqa: E402
import agvi.distributions as dist  # noqa: E402
from agvi.backends import host_random, make_backend  # noqa: E402
from agvi.backends import torch_backend as tb  # noqa: E402
from agvi.infer.elbo import RenyiELBO, Trace_ELBO, TraceGraph_ELBO  # noqa: E402
from agvi.testing.shared_noise import SharedNoise  # noqa: E402

N_KEYS = 8


@pytest.fixture(scope="module", params=["float32", "float64"])
def T(request):
    return make_backend("torch", precision=request.param)


@pytest.fixture(scope="module")
def T64():
    return make_backend("torch", precision="float64")


def _np(B, x):
    return np.asarray(B.to_numpy(B.asarray(x)))


def _counted(fn):
    """``fn`` that records how often it ran (1: vectorised; one per key: looped)."""
    def counted(*args):
        counted.calls += 1
        return fn(*args)
    counted.calls = 0
    return counted


def _loop(f, *args):
    """The per-example loop: f on example i of each argument, stacked (the oracle)."""
    n = len(args[0])
    outs = [f(*[a[i] for a in args]) for i in range(n)]
    return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]} \
        if isinstance(outs[0], dict) else np.stack([np.asarray(o) for o in outs])


def _all_draws(B):
    def f(k):
        k1, k2 = B.split(k)
        k3 = B.fold_in(k2, 7)
        return {
            "split": B.split(k3, 3), "fold_in": B.fold_in(k1, 2**40 + 5),
            "normal": B.normal(k1, (3,)), "normal0": B.normal(k2, ()),
            "uniform": B.uniform(k3, (2, 2)),
            "uniform_bounds": B.uniform(k1, (2,), minval=-1.0, maxval=4.0),
            "uniform_arrays": B.uniform(k2, (2,), minval=B.asarray(1.0),
                                        maxval=B.asarray([2.0, 3.0])),
            "gamma": B.gamma(k1, B.asarray([0.5, 2.0])),
            "poisson": B.poisson(k2, B.asarray(3.0), (2,)),
            "binomial": B.binomial(k2, B.asarray([10.0, 4.0]), B.asarray(0.3)),
            "randint": B.randint(k3, (4,), 0, 10), "permutation": B.permutation(k1, 5),
            "bernoulli": B.bernoulli(k2, 0.3, (5,)),
            "categorical": B.categorical(k3, B.zeros(4), shape=(3,)),
            "beta": B.beta(k1, 2.0, 3.0), "dirichlet": B.dirichlet(k2, B.ones(3)),
            "mvn": B.multivariate_normal(k3, B.zeros(2), B.eye(2)),
        }
    return f


# ------------------------------------------------------------------ primitives
def test_vmapped_draws_equal_the_loop(T):
    B = T
    keys = B.split(B.key(0), N_KEYS)
    f = _counted(_all_draws(B))
    out = B.vmap(f)(keys)
    assert f.calls == 1  # vectorised: one call for all keys
    expect = _loop(lambda k: {n: _np(B, v) for n, v in f(k).items()}, keys)
    for name, v in out.items():
        got = _np(B, v)
        assert got.shape == expect[name].shape, name
        np.testing.assert_array_equal(got.astype(expect[name].dtype), expect[name], err_msg=name)
    # keys made inside come back as int64 tensors holding the host keys
    assert B.dtype_of(out["split"]) == B.int_dtype
    np.testing.assert_array_equal(B.key_data(out["split"]),
                                  np.stack([B.split(B.fold_in(B.split(k)[1], 7), 3)
                                            for k in keys]))


def test_vmapped_draws_equal_host_random_and_numpy_backend(T64):
    B = T64
    N = make_backend("numpy", precision="float64")
    keys = B.split(B.key(5), N_KEYS)
    out = B.vmap(lambda k: B.normal(B.fold_in(k, 3), (4,)) + B.uniform(B.split(k)[0]))(keys)
    host = np.stack([host_random.normal(host_random.fold_in(k, 3), (4,))
                     + host_random.uniform(host_random.split(k)[0], ()) for k in keys])
    np.testing.assert_array_equal(_np(B, out), host)
    np.testing.assert_array_equal(
        _np(B, out), N.vmap(lambda k: N.normal(N.fold_in(k, 3), (4,))
                            + N.uniform(N.split(k)[0]))(keys))


def test_nested_splits_and_vmaps(T64):
    B = T64
    keys = B.split(B.key(1), N_KEYS)

    def f(k):
        ks = B.split(k, 3)  # a batched stack of keys, vmapped again (keys batched twice)
        inner = B.vmap(lambda kk: B.normal(B.split(B.fold_in(kk, 1))[1], (2,)))(ks)
        # an inner vmap over data with the outer example's key (unbatched there)
        scaled = B.vmap(lambda x: x * B.normal(ks[0], (2,)))(B.asarray([1.0, 2.0]))
        gam = B.vmap(lambda a: B.gamma(ks[2], a, (2,)))(B.asarray([0.5, 3.0]))
        return {"inner": inner, "scaled": scaled, "gamma": gam}

    f = _counted(f)
    out = B.vmap(f)(keys)
    assert f.calls == 1
    for i, k in enumerate(keys):
        ks = host_random.split(k, 3)
        np.testing.assert_array_equal(_np(B, out["inner"][i]), np.stack(
            [host_random.normal(host_random.split(host_random.fold_in(kk, 1))[1], (2,))
             for kk in ks]))
        np.testing.assert_array_equal(
            _np(B, out["scaled"][i]),
            np.outer([1.0, 2.0], host_random.normal(ks[0], (2,))))
        np.testing.assert_array_equal(_np(B, out["gamma"][i]), np.stack(
            [host_random.standard_gamma(ks[2], a, (2,)) for a in (0.5, 3.0)]))


def test_unbatched_key_semantics_unchanged(T64):
    B = T64
    # an unbatched key inside vmap: every example the same numbers (randomness="same")
    out = B.vmap(lambda s: B.normal(B.key(1), (2,)) * s)(B.asarray([1.0, 3.0]))
    z = host_random.normal(host_random.key(1), (2,))
    np.testing.assert_array_equal(_np(B, out), np.stack([z, 3.0 * z]))
    # ... and batched parameters: one draw per example from the same key
    out = B.vmap(lambda a: B.gamma(B.key(2), a, (3,)))(B.asarray([0.5, 4.0]))
    np.testing.assert_array_equal(_np(B, out), np.stack(
        [host_random.standard_gamma(host_random.key(2), a, (3,)) for a in (0.5, 4.0)]))
    # outside vmap keys stay NumPy uint32
    k = B.split(B.key(0), 3)
    assert isinstance(k, np.ndarray) and k.dtype == np.uint32


def test_uint32_tensor_keys_and_in_axes(T64):
    B = T64
    keys = B.split(B.key(3), N_KEYS)
    x = B.asarray(np.arange(N_KEYS, dtype=float))
    out = B.vmap(lambda k, s: B.normal(k, (2,)) * s)(B.asarray(keys), x)  # uint32 tensor keys
    expect = np.stack([host_random.normal(k, (2,)) * i for i, k in enumerate(keys)])
    np.testing.assert_array_equal(_np(B, out), expect)
    # keys inside a pytree, an unmapped argument
    f = _counted(lambda d, s: B.normal(d["key"], (2,)) * s + d["x"])
    out = B.vmap(f, in_axes=(0, None))({"key": keys, "x": x}, B.asarray(2.0))
    assert f.calls == 1
    expect = np.stack([host_random.normal(k, (2,)) * 2.0 + i for i, k in enumerate(keys)])
    np.testing.assert_array_equal(_np(B, out), expect)


def test_batched_seedsequence_hash_equals_host_random():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**32, size=(300, 2), dtype=np.uint64).astype(np.uint32)
    keys[:4] = [[0, 0], [2**32 - 1, 2**32 - 1], [0, 1], [1, 0]]
    for num in (1, 2, 5):
        np.testing.assert_array_equal(host_random.split_many(keys, num),
                                      np.stack([host_random.split(k, num) for k in keys]))
    for data in (0, 1, 2**32 - 1, 2**32, 2**70 + 3):
        np.testing.assert_array_equal(host_random.fold_in_many(keys, data),
                                      np.stack([host_random.fold_in(k, data) for k in keys]))
    assert host_random.batched_hash_ok()
    with pytest.raises(ValueError, match="non-negative"):
        host_random.fold_in_many(keys, -1)


def test_per_key_loop_when_the_batched_hash_is_off(T64, monkeypatch):
    B = T64
    keys = B.split(B.key(9), N_KEYS)
    f = lambda k: B.normal(B.fold_in(B.split(k, 3)[2], 5), (2,))  # noqa: E731
    fast = _np(B, B.vmap(f)(keys))
    monkeypatch.setitem(host_random._SS_STATE, "ok", False)
    np.testing.assert_array_equal(_np(B, B.vmap(f)(keys)), fast)
    np.testing.assert_array_equal(fast, _loop(lambda k: _np(B, f(k)), keys))


def test_split_num_checked_inside_vmap(T64):
    with pytest.raises(ValueError, match="num"):
        T64.vmap(lambda k: T64.split(k, 0))(T64.split(T64.key(0), 2))


# ------------------------------------------------------------------ transforms
def test_per_example_gradients_through_gamma(T64):
    B = T64
    keys = B.split(B.key(4), N_KEYS)
    alpha = B.asarray([1.5, 0.7])

    def g(k, a):
        return B.grad(lambda a: B.sum(B.gamma(B.split(k)[1], a) * B.normal(k, (2,))))(a)

    out = B.vmap(g, in_axes=(0, None))(keys, alpha)
    expect = np.stack([_np(B, g(k, alpha)) for k in keys])
    np.testing.assert_allclose(_np(B, out), expect, rtol=1e-13)


# ------------------------------------------------------------------ ELBO particles
Y = np.array([0.5, 1.2, -0.3, 0.9])


def _model(y):
    mu = agvi.sample("mu", dist.Normal(0.3, 1.5))
    r = agvi.sample("r", dist.Gamma(2.0, 1.0))
    with agvi.plate("data", len(Y)):
        agvi.sample("y", dist.Normal(mu, r), obs=y)


def _guide(y):
    loc = agvi.param("loc", 0.0)
    scale = agvi.param("scale", 1.0, constraint=dist.constraints.positive)
    a = agvi.param("a", 3.0, constraint=dist.constraints.positive)
    agvi.sample("mu", dist.Normal(loc, scale))
    agvi.sample("r", dist.Gamma(a, 2.0))  # reparameterised through the gamma derivative


def _elbo_fn(B, objective, vectorize, num_particles=16):
    """The ELBO loss as a function of the guide parameters, and the parameters."""
    elbo = objective(num_particles=num_particles, vectorize_particles=vectorize)
    y = B.asarray(Y)
    params = {"loc": B.asarray(0.2), "scale": B.asarray(0.7), "a": B.asarray(2.5)}
    return (lambda p: elbo.loss(B.key(3), p, _model, _guide, y)), params


@pytest.mark.parametrize("objective", [Trace_ELBO, TraceGraph_ELBO,
                                       lambda **kw: RenyiELBO(alpha=0.5, **kw)],
                         ids=["Trace_ELBO", "TraceGraph_ELBO", "RenyiELBO"])
def test_elbo_particles_vectorised_equal_loop(T64, objective, monkeypatch):
    B = T64
    looped_vmap = tb._looped_vmap

    def no_loop(*args, **kwargs):
        looped_vmap(*args, **kwargs)

        def looped(*a):
            raise AssertionError("the particles were looped, not vectorised")
        return looped

    results = []
    with agvi.use_backend(B):
        for vectorize in (False, True):
            if vectorize:
                monkeypatch.setattr(tb, "_looped_vmap", no_loop)
            loss, params = _elbo_fn(B, objective, vectorize)
            value, grad = B.value_and_grad(loss)(params)
            results.append((_np(B, value), {k: _np(B, v) for k, v in grad.items()}))
    (v_loop, g_loop), (v_vec, g_vec) = results
    np.testing.assert_allclose(v_vec, v_loop, rtol=1e-12)
    for name in g_loop:
        np.testing.assert_allclose(g_vec[name], g_loop[name], rtol=1e-12, err_msg=name)


def test_elbo_forward_mode_vectorised_equal_loop(T64):
    B = T64
    out = []
    with agvi.use_backend(B):
        for vectorize in (False, True):
            loss, params = _elbo_fn(B, Trace_ELBO, vectorize, num_particles=8)
            out.append([_np(B, t) for t in B.jvp(
                lambda s, loss=loss, params=params: loss(dict(params, scale=s)),
                (params["scale"],), (B.asarray(1.0),))])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-12)


# ------------------------------------------------------------------ fallback to the loop
def test_falls_back_to_the_loop_when_a_host_value_is_needed(T64):
    B = T64
    keys = B.split(B.key(6), N_KEYS)
    # to_numpy of a batched draw, and Python control flow on one
    for fn in (lambda k: B.asarray(B.to_numpy(B.normal(k, (2,)))) * 2.0,
               lambda k: B.normal(k, (2,)) if float(B.sum(B.normal(k, (2,)))) > 0
               else -B.uniform(k, (2,))):
        f = _counted(fn)
        out = B.vmap(f)(keys)
        assert f.calls == 1 + N_KEYS  # the vectorised attempt, then one call per key
        np.testing.assert_array_equal(_np(B, out), _loop(lambda k, fn=fn: _np(B, fn(k)), keys))


def test_other_host_arrays_and_shared_noise_loop(T64):
    B = T64
    keys = B.split(B.key(7), 4)
    data = np.arange(4.0)
    f = _counted(lambda k, x: B.normal(k, (2,)) * x)
    out = B.vmap(f)(keys, data)  # a mapped float NumPy array: the loop, as before
    assert f.calls == 4
    np.testing.assert_array_equal(
        _np(B, out), np.stack([host_random.normal(k, (2,)) * x for k, x in zip(keys, data)]))
    S = SharedNoise(B)  # its own random primitives: the loop
    f = _counted(lambda k: S.normal(S.split(k)[1], (3,)))
    out = S.vmap(f)(S.split(S.key(7), 4))
    assert f.calls == 4
    np.testing.assert_array_equal(
        _np(B, out), np.stack([host_random.normal(host_random.split(k)[1], (3,))
                               for k in keys]))
