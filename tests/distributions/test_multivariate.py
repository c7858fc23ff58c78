"""MultivariateNormal, LowRankMultivariateNormal, Dirichlet and LKJCholesky against scipy.stats
and closed forms, on every installed backend in float32 and float64.

Tolerances: float64 rtol 1e-10 where both sides are closed forms (1e-9 where a matrix is
inverted first); float32 rtol 2e-4 (atol 1e-4 on log densities). Monte Carlo checks use
5 standard errors and Kolmogorov-Smirnov p > 1e-4 at fixed keys.
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
from agvi.distributions.multivariate import (
    Dirichlet,
    LKJCholesky,
    LowRankMultivariateNormal,
    MultivariateNormal,
)

# Few distinct shapes per test: JAX compiles every primitive once per shape.
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- helpers ---------------------------------------------------------------------------------------
def npy(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


def tol(B, f64=1e-10, f32=2e-4, atol64=1e-12, atol32=1e-4):
    return dict(rtol=f64, atol=atol64) if B.precision == "float64" else dict(rtol=f32, atol=atol32)


def assert_close(B, actual, expected, **kw):
    np.testing.assert_allclose(npy(B, actual), np.asarray(expected, dtype=np.float64),
                               **tol(B, **kw))


def random_cov(rng, d, batch=()):
    A = rng.normal(size=batch + (d, d))
    return A @ np.swapaxes(A, -1, -2) / d + np.eye(d) * rng.uniform(0.5, 2.0, size=batch + (1, 1))


def zscore_ok(est, expected, se, z=5.0, atol=0.0):
    est, expected, se = map(np.asarray, (est, expected, se))
    assert np.all(np.abs(est - expected) <= z * se + atol), (est, expected, se)


# -- MultivariateNormal ----------------------------------------------------------------------------
@SETTINGS
@given(d=hst.sampled_from([1, 3]), seed=hst.integers(0, 2**31 - 1),
       param=hst.sampled_from(["covariance_matrix", "precision_matrix", "scale_tril"]))
def test_mvn_matches_scipy(backend, d, seed, param):
    rng = np.random.default_rng(seed)
    mu, cov = rng.normal(size=d), random_cov(rng, d)
    x = rng.normal(size=(5, d)) * 2
    given_matrix = {"covariance_matrix": cov, "precision_matrix": np.linalg.inv(cov),
                    "scale_tril": np.linalg.cholesky(cov)}[param]
    ref = st.multivariate_normal(mu, cov)
    # inverting the precision first costs a few digits
    f64 = 1e-9 if param == "precision_matrix" else 1e-10
    with agvi.use_backend(backend):
        m = MultivariateNormal(mu, **{param: given_matrix})
        assert m.batch_shape == () and m.event_shape == (d,)
        assert_close(backend, m.log_prob(backend.asarray(x)), ref.logpdf(x).reshape(5), f64=f64)
        assert_close(backend, m.entropy(), ref.entropy(), f64=f64)
        assert_close(backend, m.mean, mu)
        assert_close(backend, m.variance, np.diag(cov), f64=f64)
        assert_close(backend, m.covariance_matrix, cov, f64=f64)
        assert_close(backend, m.precision_matrix, np.linalg.inv(cov), f64=f64, atol64=1e-11)
        assert_close(backend, m.scale_tril, np.linalg.cholesky(cov), f64=f64, atol64=1e-11)
        assert_close(backend, m.stddev, np.sqrt(np.diag(cov)), f64=f64)


@pytest.mark.parametrize("param", ["covariance_matrix", "precision_matrix", "scale_tril"])
def test_mvn_batch_broadcasting(backend, param):
    rng = np.random.default_rng(1)
    d = 3
    loc = rng.normal(size=(3, d))
    cov = random_cov(rng, d, batch=(2, 1))
    mat = {"covariance_matrix": cov, "precision_matrix": np.linalg.inv(cov),
           "scale_tril": np.linalg.cholesky(cov)}[param]
    x = rng.normal(size=(4, 1, 1, d))
    expected = np.array([[[st.multivariate_normal(loc[j], cov[i, 0]).logpdf(x[s, 0, 0])
                           for j in range(3)] for i in range(2)] for s in range(4)])
    ent = np.array([[st.multivariate_normal(loc[j], cov[i, 0]).entropy() for j in range(3)]
                    for i in range(2)])
    with agvi.use_backend(backend):
        m = MultivariateNormal(loc, **{param: mat})
        assert m.batch_shape == (2, 3) and m.event_shape == (d,)
        lp = m.log_prob(backend.asarray(x))
        assert backend.shape(lp) == (4, 2, 3)
        assert_close(backend, lp, expected, f64=1e-9)
        assert_close(backend, m.entropy(), ent, f64=1e-9)
        assert backend.shape(m.mean) == (2, 3, d)
        assert backend.shape(m.variance) == (2, 3, d)
        for name in ("covariance_matrix", "precision_matrix", "scale_tril"):
            assert backend.shape(getattr(m, name)) == (2, 3, d, d)
        draws = m.sample(0, (5,))
        assert backend.shape(draws) == (5, 2, 3, d)
        # the expanded / to_event wrappers of the base class
        assert backend.shape(m.expand((4, 2, 3)).log_prob(
            backend.expand_dims(draws, 1))) == (5, 4, 2, 3)
        assert m.to_event(1).event_shape == (3, d)


def test_mvn_scalar_loc_and_dtype(backend):
    with agvi.use_backend(backend):
        m = MultivariateNormal(0.0, covariance_matrix=np.eye(2) * 4.0)
        assert m.event_shape == (2,)
        assert backend.dtype_of(m.loc) == backend.float_dtype
        assert_close(backend, m.log_prob(backend.zeros((2,))), -math.log(2 * math.pi * 4.0))
        x = m.sample(0, (3,))
        assert backend.dtype_of(x) == backend.float_dtype


def test_mvn_sample_moments_and_ks(backend):
    rng = np.random.default_rng(2)
    d, n = 3, 20000
    mu, cov = rng.normal(size=d), random_cov(rng, d)
    with agvi.use_backend(backend):
        x = npy(backend, MultivariateNormal(mu, covariance_matrix=cov).sample(
            backend.key(3), (n,)))
    assert x.shape == (n, d)
    zscore_ok(x.mean(0), mu, np.sqrt(np.diag(cov) / n))
    emp = np.cov(x.T)
    # Var of the (i, j) product moment: (S_ii S_jj + S_ij^2) / n
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    zscore_ok(emp, cov, se)
    v = rng.normal(size=d)
    proj = x @ v
    p = st.kstest(proj, st.norm(v @ mu, math.sqrt(v @ cov @ v)).cdf).pvalue
    assert p > 1e-4, p


def test_mvn_pathwise_gradients(backend):
    rng = np.random.default_rng(4)
    d, m, n = 3, 200, 50
    mu, cov = rng.normal(size=d), random_cov(rng, d)
    L = np.linalg.cholesky(cov)
    key = backend.key(5)
    with agvi.use_backend(backend):
        B = backend

        def mean_sum(loc):
            return B.sum(MultivariateNormal(loc, scale_tril=L).rsample(key, (n,))) / n

        # d/dloc E[sum x] = 1 exactly, draw by draw
        g = B.grad(mean_sum)(B.asarray(mu))
        assert_close(B, g, np.ones(d), f32=1e-5, atol32=1e-5)

        # d/dL E[sum x^2] = 2 L; m independent replicas of L give m unbiased estimates
        def second_moment(Ls):
            x = MultivariateNormal(B.asarray(mu), scale_tril=Ls).rsample(key, (n,))
            return B.sum(x * x) / n

        gL = npy(B, B.grad(second_moment)(B.asarray(np.broadcast_to(L, (m, d, d)))))
        zscore_ok(gL.mean(0), 2 * L, gL.std(0) / math.sqrt(m), atol=1e-6)

        # through the Cholesky factorisation: d/dS E[sum x^2] = d/dS tr(S) = I
        def second_moment_cov(S):
            x = MultivariateNormal(B.asarray(mu), covariance_matrix=S).rsample(key, (n,))
            return B.sum(x * x) / n

        gS = npy(B, B.grad(second_moment_cov)(B.asarray(np.broadcast_to(cov, (m, d, d)))))
        gS = (gS + np.swapaxes(gS, -1, -2)) / 2  # frameworks split symmetric gradients differently
        zscore_ok(gS.mean(0), np.eye(d), gS.std(0) / math.sqrt(m), atol=1e-6)


def test_log_prob_gradients(backend):
    """Score functions through the triangular solves, Cholesky and gammaln: d/dloc log N(x) =
    S^{-1}(x - loc) for the full and low-rank normals, and d/dalpha log Dir(x) =
    log x - digamma(alpha) + digamma(alpha_0)."""
    rng = np.random.default_rng(15)
    d, k = 3, 2
    mu, W, D = rng.normal(size=d), rng.normal(size=(d, k)), rng.uniform(0.5, 1.5, d)
    cov = W @ W.T + np.diag(D)
    x = rng.normal(size=(4, d))
    expected = (np.linalg.inv(cov) @ (x - mu).T).T.sum(0)
    alpha = np.array([0.5, 2.0, 3.0])
    y = rng.dirichlet(np.ones(3), size=4)
    expected_alpha = (np.log(y) - sps.digamma(alpha) + sps.digamma(alpha.sum())).sum(0)
    with agvi.use_backend(backend):
        B = backend
        xb = B.asarray(x)
        for make in (lambda m: MultivariateNormal(m, covariance_matrix=cov),
                     lambda m: MultivariateNormal(m, precision_matrix=np.linalg.inv(cov)),
                     lambda m: MultivariateNormal(m, scale_tril=np.linalg.cholesky(cov)),
                     lambda m: LowRankMultivariateNormal(m, W, D)):
            g = B.grad(lambda m, make=make: B.sum(make(m).log_prob(xb)))(B.asarray(mu))
            assert_close(B, g, expected, f64=1e-9, f32=1e-3, atol32=1e-3)
        g = B.grad(lambda a: B.sum(Dirichlet(a).log_prob(B.asarray(y))))(B.asarray(alpha))
        assert_close(B, g, expected_alpha, f64=1e-9, f32=1e-4, atol32=1e-4)


def test_jit_compatible(backend):
    """Building the distributions and evaluating them inside the backend's jit (a real trace on
    JAX, the identity elsewhere)."""
    rng = np.random.default_rng(16)
    cov = random_cov(rng, 3)
    W, D = rng.normal(size=(3, 2)), rng.uniform(0.5, 1.5, 3)
    B = backend

    def f(loc, key):
        m = MultivariateNormal(loc, covariance_matrix=B.asarray(cov))
        lr = LowRankMultivariateNormal(loc, B.asarray(W), B.asarray(D))
        x = m.rsample(key, (2,))
        lkj = LKJCholesky(3, 2.0)
        eye = B.broadcast_to(B.eye(3), (2, 3, 3))
        return (B.sum(m.log_prob(x)) + B.sum(lr.log_prob(x)) + B.sum(m.entropy())
                + B.sum(lkj.log_prob(eye)))

    with agvi.use_backend(backend):
        loc, key = B.asarray(np.zeros(3)), B.key(17)
        eager, compiled = npy(B, f(loc, key)), npy(B, B.jit(f)(loc, key))
    np.testing.assert_allclose(compiled, eager, **tol(B, f64=1e-10, f32=1e-4, atol32=1e-3))


def test_mvn_validation(backend):
    bad = np.array([[1.0, 2.0], [2.0, 1.0]])  # symmetric, eigenvalues 3 and -1
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match="exactly one"):
            MultivariateNormal(np.zeros(2))
        with pytest.raises(ValueError, match="exactly one"):
            MultivariateNormal(np.zeros(2), covariance_matrix=np.eye(2), scale_tril=np.eye(2))
        with pytest.raises(ValueError, match="covariance_matrix"):
            MultivariateNormal(np.zeros(2), covariance_matrix=bad, validate_args=True)
        with pytest.raises(ValueError, match="precision_matrix"):
            MultivariateNormal(np.zeros(2), precision_matrix=bad, validate_args=True)
        with pytest.raises(ValueError, match="scale_tril"):
            MultivariateNormal(np.zeros(2), scale_tril=-np.eye(2), validate_args=True)
        with pytest.raises(ValueError, match="scale_tril"):
            MultivariateNormal(np.zeros(2), scale_tril=np.ones((2, 2)), validate_args=True)
        with pytest.raises(ValueError, match="loc"):
            MultivariateNormal(np.zeros(3), covariance_matrix=np.eye(2))
        with pytest.raises(ValueError, match="covariance_matrix"):
            MultivariateNormal(np.zeros(2), covariance_matrix=np.ones(2))
        with pytest.raises(ValueError, match="do not broadcast"):
            MultivariateNormal(np.zeros((3, 2)), covariance_matrix=np.broadcast_to(
                np.eye(2), (4, 2, 2)))
        if backend.name != "jax":  # JAX's cholesky returns NaN instead of raising
            with pytest.raises(ValueError, match="covariance_matrix"):
                MultivariateNormal(np.zeros(2), covariance_matrix=bad)
        ok = MultivariateNormal(np.zeros(2), covariance_matrix=np.eye(2), validate_args=True)
        assert np.isfinite(npy(backend, ok.log_prob(np.ones(2))))


# -- LowRankMultivariateNormal ---------------------------------------------------------------------
@SETTINGS
@given(d=hst.sampled_from([2, 5]), k=hst.sampled_from([1, 2]), seed=hst.integers(0, 2**31 - 1))
def test_lowrank_matches_full_mvn_and_scipy(backend, d, k, seed):
    rng = np.random.default_rng(seed)
    mu, W, D = rng.normal(size=d), rng.normal(size=(d, k)), rng.uniform(0.3, 2.0, size=d)
    cov = W @ W.T + np.diag(D)
    x = rng.normal(size=(4, d)) * 2
    ref = st.multivariate_normal(mu, cov)
    with agvi.use_backend(backend):
        B = backend
        lr = LowRankMultivariateNormal(mu, W, D)
        full = MultivariateNormal(mu, covariance_matrix=cov)
        assert lr.batch_shape == () and lr.event_shape == (d,)
        xb = B.asarray(x)
        assert_close(B, lr.log_prob(xb), npy(B, full.log_prob(xb)))
        assert_close(B, lr.log_prob(xb), ref.logpdf(x).reshape(4), f64=1e-9)
        assert_close(B, lr.entropy(), npy(B, full.entropy()))
        assert_close(B, lr.entropy(), ref.entropy(), f64=1e-9)
        assert_close(B, lr.mean, mu)
        assert_close(B, lr.variance, np.diag(cov))
        assert_close(B, lr.covariance_matrix, cov)
        assert_close(B, lr.precision_matrix, npy(B, full.precision_matrix), atol64=1e-11)
        assert_close(B, lr.precision_matrix, np.linalg.inv(cov), f64=1e-9, atol64=1e-10)
        assert_close(B, lr.scale_tril, np.linalg.cholesky(cov), f64=1e-9, atol64=1e-11)


def test_lowrank_batch_broadcasting(backend):
    rng = np.random.default_rng(6)
    d, k = 4, 2
    loc = rng.normal(size=(3, d))
    W = rng.normal(size=(2, 1, d, k))
    D = rng.uniform(0.5, 1.5, size=(d,))
    x = rng.normal(size=(5, 1, 1, d))
    cov = W @ np.swapaxes(W, -1, -2) + np.diag(D)
    expected = np.array([[[st.multivariate_normal(loc[j], cov[i, 0]).logpdf(x[s, 0, 0])
                           for j in range(3)] for i in range(2)] for s in range(5)])
    with agvi.use_backend(backend):
        lr = LowRankMultivariateNormal(loc, W, D)
        assert lr.batch_shape == (2, 3)
        lp = lr.log_prob(backend.asarray(x))
        assert backend.shape(lp) == (5, 2, 3)
        assert_close(backend, lp, expected, f64=1e-9)
        assert backend.shape(lr.entropy()) == (2, 3)
        assert backend.shape(lr.variance) == (2, 3, d)
        assert backend.shape(lr.covariance_matrix) == (2, 3, d, d)
        assert backend.shape(lr.rsample(0, (7,))) == (7, 2, 3, d)
        assert backend.shape(lr.cov_factor) == (2, 3, d, k)


def test_lowrank_large_dimension_no_dense_matrix(backend):
    """d = 20000: a dense covariance would take 3.2 GB; log_prob and entropy stay O(d k^2).
    With k = 1 the closed form is Sherman-Morrison: log det = sum log D + log(1 + w'D^-1 w)."""
    rng = np.random.default_rng(7)
    d = 20000
    mu, w, D = rng.normal(size=d), rng.normal(size=(d, 1)) * 0.1, rng.uniform(0.5, 1.5, d)
    x = rng.normal(size=(2, d))
    s = 1.0 + np.sum(w[:, 0] ** 2 / D)
    diff = x - mu
    maha = np.sum(diff**2 / D, -1) - (diff @ (w[:, 0] / D)) ** 2 / s
    logdet = np.sum(np.log(D)) + np.log(s)
    expected = -0.5 * (d * np.log(2 * np.pi) + logdet + maha)
    with agvi.use_backend(backend):
        lr = LowRankMultivariateNormal(mu, w, D)
        assert_close(backend, lr.log_prob(backend.asarray(x)), expected, f64=1e-10, f32=1e-4)
        assert_close(backend, lr.entropy(), 0.5 * (d * (1 + np.log(2 * np.pi)) + logdet),
                     f32=1e-4)
        assert backend.shape(lr.sample(0, (3,))) == (3, d)


def test_lowrank_sample_moments_and_gradients(backend):
    rng = np.random.default_rng(8)
    d, k, n = 3, 2, 20000
    mu, W, D = rng.normal(size=d), rng.normal(size=(d, k)), rng.uniform(0.5, 1.5, d)
    cov = W @ W.T + np.diag(D)
    with agvi.use_backend(backend):
        B = backend
        x = npy(B, LowRankMultivariateNormal(mu, W, D).sample(B.key(9), (n,)))
        zscore_ok(x.mean(0), mu, np.sqrt(np.diag(cov) / n))
        se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
        zscore_ok(np.cov(x.T), cov, se)

        m, n_small = 200, 50
        key = B.key(10)

        def mean_sum(loc):
            return B.sum(LowRankMultivariateNormal(loc, W, D).rsample(key, (n_small,))) / n_small

        assert_close(B, B.grad(mean_sum)(B.asarray(mu)), np.ones(d), f32=1e-5, atol32=1e-5)

        # E[sum x^2] = |mu|^2 + sum(W^2) + sum(D): gradients 2W and 1, per replica
        def second_moment(Ws, Ds):
            x = LowRankMultivariateNormal(B.asarray(mu), Ws, Ds).rsample(key, (n_small,))
            return B.sum(x * x) / n_small

        gW, gD = B.grad(second_moment, argnums=(0, 1))(
            B.asarray(np.broadcast_to(W, (m, d, k))), B.asarray(np.broadcast_to(D, (m, d))))
        gW, gD = npy(B, gW), npy(B, gD)
        zscore_ok(gW.mean(0), 2 * W, gW.std(0) / math.sqrt(m), atol=1e-6)
        zscore_ok(gD.mean(0), np.ones(d), gD.std(0) / math.sqrt(m), atol=1e-6)


def test_lowrank_validation(backend):
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match="cov_diag"):
            LowRankMultivariateNormal(np.zeros(2), np.ones((2, 1)), np.array([1.0, -1.0]),
                                      validate_args=True)
        with pytest.raises(ValueError, match="cov_factor"):
            LowRankMultivariateNormal(np.zeros(2), np.ones(2), np.ones(2))
        with pytest.raises(ValueError, match="loc"):
            LowRankMultivariateNormal(np.zeros(3), np.ones((2, 1)), np.ones(2))
        with pytest.raises(ValueError, match="do not broadcast"):
            LowRankMultivariateNormal(np.zeros((3, 2)), np.ones((4, 2, 1)), np.ones(2))


# -- Dirichlet -------------------------------------------------------------------------------------
@SETTINGS
@given(alpha=hst.lists(hst.floats(0.3, 20.0), min_size=2, max_size=4),
       seed=hst.integers(0, 2**31 - 1))
def test_dirichlet_matches_scipy(backend, alpha, seed):
    alpha = np.array(alpha)
    K = len(alpha)
    x = np.random.default_rng(seed).dirichlet(np.ones(K), size=4)
    ref = st.dirichlet(alpha)
    with agvi.use_backend(backend):
        dd = Dirichlet(alpha)
        assert dd.batch_shape == () and dd.event_shape == (K,)
        assert_close(backend, dd.log_prob(backend.asarray(x)), ref.logpdf(x.T), f64=1e-9)
        assert_close(backend, dd.mean, ref.mean())
        assert_close(backend, dd.variance, ref.var())
        assert_close(backend, dd.entropy(), ref.entropy(), f64=1e-9, f32=5e-4, atol32=2e-4)


def test_dirichlet_batch_and_samples(backend):
    rng = np.random.default_rng(11)
    alpha = np.array([[0.5, 1.0, 2.0], [3.0, 4.0, 0.7]])
    x = rng.dirichlet(np.ones(3), size=(4, 1))
    expected = np.array([[st.dirichlet(alpha[b]).logpdf(x[s, 0]) for b in range(2)]
                         for s in range(4)])
    n = 10000
    with agvi.use_backend(backend):
        dd = Dirichlet(alpha)
        assert dd.batch_shape == (2,) and dd.event_shape == (3,)
        lp = dd.log_prob(backend.asarray(x))
        assert backend.shape(lp) == (4, 2)
        assert_close(backend, lp, expected, f64=1e-9)
        assert backend.shape(dd.entropy()) == (2,)
        # 200 copies of the batch and 50 draws each: the draw shape (50, 400, 3) is that of
        # test_dirichlet_pathwise_gradient, so JAX compiles its gamma sampler once for both
        s = npy(backend, Dirichlet(np.tile(alpha, (200, 1))).sample(backend.key(12), (50,)))
        s = s.reshape(n, 2, 3)
        assert np.all(np.isfinite(npy(backend, dd.log_prob(backend.asarray(s[:100])))))
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    a0 = alpha.sum(-1, keepdims=True)
    mean, var = alpha / a0, alpha * (a0 - alpha) / (a0**2 * (a0 + 1))
    zscore_ok(s.mean(0), mean, np.sqrt(var / n))
    for b in range(2):
        for j in range(3):
            marginal = st.beta(alpha[b, j], a0[b, 0] - alpha[b, j])
            assert st.kstest(s[:, b, j], marginal.cdf).pvalue > 1e-4


def test_dirichlet_pathwise_gradient(backend):
    """Mean of the implicit-reparameterisation gradient of E[c . x] against the analytic
    d/dalpha_i (c . alpha / alpha_0) = c_i / alpha_0 - c . alpha / alpha_0^2."""
    alpha = np.array([0.7, 2.0, 5.0])
    c = np.array([1.0, -2.0, 0.5])
    m, n = 400, 50
    a0 = alpha.sum()
    expected = c / a0 - (c @ alpha) / a0**2
    with agvi.use_backend(backend):
        B = backend
        key = B.key(13)

        def objective(conc):
            x = Dirichlet(conc).rsample(key, (n,))
            return B.sum(x * B.asarray(c)) / n

        g = npy(B, B.grad(objective)(B.asarray(np.broadcast_to(alpha, (m, 3)))))
    zscore_ok(g.mean(0), expected, g.std(0) / math.sqrt(m), atol=1e-6)


def test_dirichlet_validation(backend):
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match="concentration"):
            Dirichlet(np.array([1.0, 0.0]), validate_args=True)
        with pytest.raises(ValueError, match="concentration"):
            Dirichlet(np.array([[1.0, 2.0], [-1.0, 2.0]]), validate_args=True)
        with pytest.raises(ValueError, match="concentration"):
            Dirichlet(1.0)
        dd = Dirichlet(np.array([1.0, 2.0]), validate_args=True)
        with pytest.raises(ValueError, match="support"):
            dd.log_prob(np.array([0.7, 0.7]))


# -- LKJCholesky -----------------------------------------------------------------------------------
def chol2(r):
    r = np.asarray(r, dtype=float)
    L = np.zeros(r.shape + (2, 2))
    L[..., 0, 0] = 1.0
    L[..., 1, 0] = r
    L[..., 1, 1] = np.sqrt(1 - r**2)
    return L


@SETTINGS
@given(eta=hst.floats(0.2, 10.0), r=hst.lists(hst.floats(-0.99, 0.99), min_size=1, max_size=4))
def test_lkj_dim2_is_beta_on_correlation(backend, eta, r):
    """For d = 2, L = [[1, 0], [r, sqrt(1 - r^2)]] and r ~ 2 Beta(eta, eta) - 1."""
    r = np.array(r)
    expected = st.beta(eta, eta, loc=-1.0, scale=2.0).logpdf(r)
    with agvi.use_backend(backend):
        lkj = LKJCholesky(2, eta)
        assert lkj.batch_shape == () and lkj.event_shape == (2, 2)
        assert_close(backend, lkj.log_prob(backend.asarray(chol2(r))), expected,
                     f64=1e-9, f32=1e-4, atol32=3e-4)


def lkj_log_normaliser(d, eta):
    """log c_d(eta) = log of the integral of det(C)^(eta - 1) over correlation matrices, from the
    product formula of Lewandowski, Kurowicka & Joe (2009), section 3.2."""
    total = 0.0
    for k in range(1, d):
        b = eta + (d - k - 1) / 2
        total += (2 * eta - 2 + d - k) * (d - k) * math.log(2) + (d - k) * sps.betaln(b, b)
    return total


@pytest.mark.parametrize("d", [2, 3, 4, 6])
def test_lkj_normaliser_matches_product_formula(backend, d):
    etas = np.array([0.5, 1.0, 2.5, 7.0])
    expected = np.array([-lkj_log_normaliser(d, e) for e in etas])
    with agvi.use_backend(backend):
        lkj = LKJCholesky(d, etas)
        assert lkj.batch_shape == (4,)
        # at L = I every log L_ii vanishes, leaving -log c_d(eta)
        lp = lkj.log_prob(backend.asarray(np.broadcast_to(np.eye(d), (4, d, d))))
        assert_close(backend, lp, expected, f64=1e-10, f32=1e-4, atol32=1e-3)


@pytest.mark.parametrize("eta", [1.0, 2.0, 3.5])
def test_lkj_dim3_integrates_to_one(backend, eta):
    """Quadrature over the strictly-lower entries (a, b, c) of a 3x3 Cholesky factor, with
    a = sin t and (b, c) = sin(s) (cos u, sin u), which smooths the boundary behaviour."""
    n = 48
    xg, wg = np.polynomial.legendre.leggauss(n)
    t, wt = xg * np.pi / 2, wg * np.pi / 2  # t in (-pi/2, pi/2)
    s, ws = (xg + 1) * np.pi / 4, wg * np.pi / 4  # s in (0, pi/2)
    u = np.array([0.3, 2.0, 4.5])  # the density does not depend on the angle u
    T, S, U = np.meshgrid(t, s, u, indexing="ij")
    a, rho = np.sin(T), np.sin(S)
    b, c = rho * np.cos(U), rho * np.sin(U)
    L = np.zeros(T.shape + (3, 3))
    L[..., 0, 0] = 1
    L[..., 1, 0], L[..., 1, 1] = a, np.sqrt(1 - a**2)
    L[..., 2, 0], L[..., 2, 1], L[..., 2, 2] = b, c, np.sqrt(1 - rho**2)
    with agvi.use_backend(backend):
        dens = np.exp(npy(backend, LKJCholesky(3, eta).log_prob(backend.asarray(L))))
    # da = cos t dt; db dc = rho drho du = sin s cos s ds du, and the u-integral is 2 pi
    jac = np.cos(T) * np.sin(S) * np.cos(S) * 2 * np.pi
    integral = np.einsum("i,j,ijk->k", wt, ws, dens * jac)
    np.testing.assert_allclose(integral, 1.0, rtol=1e-7 if backend.precision == "float64"
                               else 1e-4)


@pytest.mark.parametrize("d,eta,method", [(2, 0.5, "onion"), (3, 2.0, "cvine"),
                                          (4, 1.0, "onion"), (4, 1.0, "cvine")])
def test_lkj_samples(backend, d, eta, method):
    n = 4000
    with agvi.use_backend(backend):
        lkj = LKJCholesky(d, np.array([eta, eta]), sample_method=method, validate_args=True)
        L = lkj.sample(backend.key(14), (n,))
        assert backend.shape(L) == (n, 2, d, d)
        lp = npy(backend, lkj.log_prob(L[:50]))  # validation checks the support
        assert np.all(np.isfinite(lp))
        L = npy(backend, L)
    assert np.allclose(np.triu(L, 1), 0) and np.all(np.diagonal(L, 0, -2, -1) > 0)
    C = L @ np.swapaxes(L, -1, -2)
    np.testing.assert_allclose(np.diagonal(C, 0, -2, -1), 1.0, atol=1e-5)
    b = eta + (d - 2) / 2
    r = C[..., 1, 0].ravel()  # 2n draws of one off-diagonal correlation
    m2, m4 = 1 / (2 * b + 1), 3 / ((2 * b + 1) * (2 * b + 3))  # E r^2, E r^4
    zscore_ok(r.mean(), 0.0, math.sqrt(m2 / r.size))
    zscore_ok(np.mean(r**2), 1 / (2 * eta + d - 1), math.sqrt((m4 - m2**2) / r.size))
    marginal = st.beta(b, b, loc=-1, scale=2)
    for i in range(1, d):
        for j in range(i):
            assert st.kstest(C[:, 0, i, j], marginal.cdf).pvalue > 1e-4, (i, j)


def test_lkj_validation(backend):
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match="dimension"):
            LKJCholesky(1)
        with pytest.raises(ValueError, match="dimension"):
            LKJCholesky(2.5)
        with pytest.raises(ValueError, match="sample_method"):
            LKJCholesky(3, sample_method="vine")
        with pytest.raises(ValueError, match="concentration"):
            LKJCholesky(3, 0.0, validate_args=True)
        lkj = LKJCholesky(2, 1.0, validate_args=True)
        with pytest.raises(ValueError, match="support"):
            lkj.log_prob(np.array([[1.0, 0.0], [0.5, 0.5]]))
        assert not lkj.has_rsample
