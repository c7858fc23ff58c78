"""MixtureSameFamily against hand-computed scipy mixtures, on every installed backend in float32
and float64.

Tolerances: float64 rtol 1e-10 (1e-9 for multivariate components); float32 rtol 2e-4,
atol 1e-4. Monte Carlo checks use 5 standard errors and Kolmogorov-Smirnov p > 1e-4 at fixed
keys.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import agvi
from agvi.distributions import discrete
from agvi.distributions.continuous import Normal
from agvi.distributions.mixture import MixtureSameFamily
from agvi.distributions.multivariate import MultivariateNormal

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class DuckCategorical:
    """The least a mixing distribution needs: ``batch_shape`` and ``logits`` or ``probs``."""

    def __init__(self, logits=None, probs=None):
        self.logits, self.probs = logits, probs
        self.batch_shape = np.shape(logits if logits is not None else probs)[:-1]


def mixing(B, logits):
    """``Categorical(logits=...)`` once discrete.py provides it, else the duck-typed stand-in."""
    categorical = getattr(discrete, "Categorical", None)
    if categorical is not None:
        return categorical(logits=B.asarray(logits))
    return DuckCategorical(logits=B.asarray(logits))


def npy(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


def assert_close(B, actual, expected, f64=1e-10, f32=2e-4, atol64=1e-12, atol32=1e-4):
    kw = dict(rtol=f64, atol=atol64) if B.precision == "float64" else dict(rtol=f32, atol=atol32)
    np.testing.assert_allclose(npy(B, actual), np.asarray(expected, dtype=np.float64), **kw)


def zscore_ok(est, expected, se, z=5.0):
    est, expected, se = map(np.asarray, (est, expected, se))
    assert np.all(np.abs(est - expected) <= z * se), (est, expected, se)


def normal_mixture_ref(w, loc, scale):
    """logpdf, cdf, mean and variance of sum_k w_k N(loc_k, scale_k^2), by scipy."""
    def logpdf(x):
        x = np.asarray(x)[..., None]
        return sps.logsumexp(np.log(w) + st.norm.logpdf(x, loc, scale), axis=-1)

    def cdf(x):
        return np.sum(w * st.norm.cdf(np.asarray(x)[..., None], loc, scale), axis=-1)

    mean = np.sum(w * loc)
    var = np.sum(w * (scale**2 + loc**2)) - mean**2
    return logpdf, cdf, mean, var


@SETTINGS
@given(K=hst.sampled_from([1, 3]), seed=hst.integers(0, 2**31 - 1))
def test_normal_mixture_matches_scipy(backend, K, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=K)
    w = np.exp(logits - sps.logsumexp(logits))
    loc, scale = rng.normal(size=K) * 3, rng.uniform(0.3, 2.0, size=K)
    x = rng.normal(size=6) * 3
    logpdf, cdf, mean, var = normal_mixture_ref(w, loc, scale)
    with agvi.use_backend(backend):
        mix = MixtureSameFamily(mixing(backend, logits), Normal(loc, scale))
        assert mix.batch_shape == () and mix.event_shape == ()
        assert mix.num_components == K
        assert_close(backend, mix.log_prob(backend.asarray(x)), logpdf(x))
        assert_close(backend, mix.cdf(backend.asarray(x)), cdf(x))
        assert_close(backend, mix.mean, mean)
        assert_close(backend, mix.variance, var, f64=1e-9)


def test_probs_and_logits_give_the_same_mixture(backend):
    logits = np.array([0.3, -1.0, 2.0])
    probs = np.exp(logits) / np.exp(logits).sum()
    loc, scale = np.array([-2.0, 0.0, 3.0]), np.array([1.0, 0.5, 2.0])
    x = np.linspace(-4, 5, 7)
    logpdf = normal_mixture_ref(probs, loc, scale)[0](x)
    with agvi.use_backend(backend):
        by_logits = MixtureSameFamily(DuckCategorical(logits=backend.asarray(logits)),
                                      Normal(loc, scale))
        by_probs = MixtureSameFamily(DuckCategorical(probs=backend.asarray(probs * 5.0)),
                                     Normal(loc, scale))  # unnormalised weights are normalised
        assert_close(backend, by_logits.log_prob(backend.asarray(x)), logpdf)
        assert_close(backend, by_probs.log_prob(backend.asarray(x)), logpdf)


def test_mvn_mixture_matches_scipy(backend):
    rng = np.random.default_rng(1)
    K, d = 3, 2
    logits = rng.normal(size=K)
    w = np.exp(logits - sps.logsumexp(logits))
    locs = rng.normal(size=(K, d)) * 2
    A = rng.normal(size=(K, d, d))
    covs = A @ np.swapaxes(A, -1, -2) + np.eye(d)
    x = rng.normal(size=(5, d)) * 2
    expected = sps.logsumexp(np.log(w) + np.stack(
        [st.multivariate_normal(locs[k], covs[k]).logpdf(x) for k in range(K)], -1), axis=-1)
    mean = w @ locs
    total_cov = sum(w[k] * (covs[k] + np.outer(locs[k], locs[k])) for k in range(K)) \
        - np.outer(mean, mean)
    with agvi.use_backend(backend):
        mix = MixtureSameFamily(mixing(backend, logits),
                                MultivariateNormal(locs, covariance_matrix=covs))
        assert mix.batch_shape == () and mix.event_shape == (d,)
        lp = mix.log_prob(backend.asarray(x))
        assert backend.shape(lp) == (5,)
        assert_close(backend, lp, expected, f64=1e-9)
        assert_close(backend, mix.mean, mean)
        assert_close(backend, mix.variance, np.diag(total_cov), f64=1e-9)
        with pytest.raises(NotImplementedError):
            mix.cdf(backend.asarray(x))

        n = 20000
        s = npy(backend, mix.sample(backend.key(2), (n,)))
    assert s.shape == (n, d)
    zscore_ok(s.mean(0), mean, np.sqrt(np.diag(total_cov) / n))
    var_se = np.sqrt(2 * np.diag(total_cov) ** 2 / n) * 2  # generous: mixtures have fat 4th moments
    zscore_ok(s.var(0), np.diag(total_cov), var_se)


def test_batched_mixture_and_broadcast_components(backend):
    rng = np.random.default_rng(3)
    K = 2
    logits = rng.normal(size=(3, K))
    loc, scale = rng.normal(size=(K,)), rng.uniform(0.5, 1.5, size=(K,))
    x = rng.normal(size=(4, 1))
    with agvi.use_backend(backend):
        # mixing batch (3,) and one shared set of components: the components are expanded
        mix = MixtureSameFamily(mixing(backend, logits), Normal(loc, scale))
        assert mix.batch_shape == (3,)
        lp = mix.log_prob(backend.asarray(x))
        assert backend.shape(lp) == (4, 3)
        for b in range(3):
            w = np.exp(logits[b] - sps.logsumexp(logits[b]))
            assert_close(backend, lp[:, b], normal_mixture_ref(w, loc, scale)[0](x[:, 0]))
        assert backend.shape(mix.mean) == (3,) and backend.shape(mix.variance) == (3,)
        assert backend.shape(mix.sample(backend.key(4), (5, 2))) == (5, 2, 3)
        # a shared mixing distribution and batched components
        mix2 = MixtureSameFamily(mixing(backend, logits[0]),
                                 Normal(rng.normal(size=(3, K)), np.ones((3, K))))
        assert mix2.batch_shape == (3,)
        assert backend.shape(mix2.sample(backend.key(5), (6,))) == (6, 3)
        assert backend.shape(mix2.log_prob(mix2.sample(backend.key(5), (6,)))) == (6, 3)
        # expand and to_event from the base class
        assert mix.expand((2, 3)).batch_shape == (2, 3)
        assert mix.to_event(1).event_shape == (3,)


def test_normal_mixture_samples(backend):
    logits = np.array([0.0, 1.0, -0.5])
    w = np.exp(logits - sps.logsumexp(logits))
    loc, scale = np.array([-3.0, 0.5, 4.0]), np.array([0.5, 1.0, 2.0])
    _, cdf, mean, var = normal_mixture_ref(w, loc, scale)
    n = 20000
    with agvi.use_backend(backend):
        mix = MixtureSameFamily(mixing(backend, logits), Normal(loc, scale))
        assert not mix.has_rsample
        with pytest.raises(NotImplementedError):
            mix.rsample(backend.key(0))
        s = npy(backend, mix.sample(backend.key(6), (n,)))
        s2 = npy(backend, mix.sample(backend.key(6), (n,)))
    np.testing.assert_array_equal(s, s2)  # same key, same draws
    assert s.shape == (n,)
    zscore_ok(s.mean(), mean, math.sqrt(var / n))
    assert st.kstest(s, cdf).pvalue > 1e-4


def test_mixture_validation(backend):
    with agvi.use_backend(backend):
        comps = Normal(np.zeros(3), np.ones(3))
        with pytest.raises(ValueError, match="3 components"):
            MixtureSameFamily(mixing(backend, np.zeros(2)), comps)
        with pytest.raises(ValueError, match="batch axis"):
            MixtureSameFamily(mixing(backend, np.zeros(1)), Normal(0.0, 1.0))
        with pytest.raises(ValueError, match="logits"):
            MixtureSameFamily(object(), comps)
        with pytest.raises(ValueError, match="broadcast"):
            MixtureSameFamily(mixing(backend, np.zeros((4, 3))),
                              Normal(np.zeros((2, 3)), np.ones((2, 3))))
        mix = MixtureSameFamily(mixing(backend, np.zeros(3)),
                                Normal(np.zeros(3), np.ones(3)), validate_args=True)
        assert np.isfinite(npy(backend, mix.log_prob(backend.asarray(0.5))))


def test_log_prob_gradient_is_responsibility_minus_weight(backend):
    """d/dlogits_k sum_x log p(x) = sum_x (r_k(x) - w_k), r the posterior responsibilities;
    d/dloc_k = sum_x r_k(x) (x - loc_k) / scale_k^2."""
    logits = np.array([0.2, -0.4, 1.0])
    w = np.exp(logits - sps.logsumexp(logits))
    loc, scale = np.array([-1.0, 0.5, 2.0]), np.array([0.7, 1.0, 1.5])
    x = np.array([-1.5, 0.0, 0.7, 3.0])
    joint = np.log(w) + st.norm.logpdf(x[:, None], loc, scale)
    r = np.exp(joint - sps.logsumexp(joint, axis=-1, keepdims=True))
    with agvi.use_backend(backend):
        B = backend
        xb = B.asarray(x)

        def total(lg, mu):
            return B.sum(MixtureSameFamily(mixing(B, lg), Normal(mu, scale)).log_prob(xb))

        g_logits, g_loc = B.grad(total, argnums=(0, 1))(B.asarray(logits), B.asarray(loc))
        assert_close(B, g_logits, (r - w).sum(0), f64=1e-9, atol64=1e-12)
        assert_close(B, g_loc, (r * (x[:, None] - loc) / scale**2).sum(0), f64=1e-9)
