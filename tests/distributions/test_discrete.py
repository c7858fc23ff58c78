"""Discrete families against scipy.stats, on every backend in float32 and float64.

Tolerances: float64 ``rtol = atol = 1e-9``; float32 ``rtol = atol = 2e-4``. Where the log-pmf is a
difference of ``gammaln`` terms, ``atol`` is multiplied by ``1 + |gammaln(n + 1)|`` (the size
of the terms that cancel). Parameters are rounded to the backend's precision before SciPy sees
them, so only the evaluation error is measured.

Parametrisation mapping to SciPy:

- ``Bernoulli(p)`` = ``bernoulli(p)``; ``Binomial(n, p)`` = ``binom(n, p)``;
  ``Poisson(rate)`` = ``poisson(rate)``.
- ``Geometric(p)`` counts failures before the first success = ``geom(p, loc=-1)`` (SciPy's
  ``geom`` counts trials, support 1, 2, ...).
- ``NegativeBinomial(r, p)`` (torch: successes before ``r`` failures, success probability
  ``p``) = ``nbinom(n=r, p=1 - p)`` (SciPy: failures before ``n`` successes, success
  probability ``p'``): the roles of success and failure swap.
- ``Categorical(p)`` = ``rv_discrete(values=(arange(K), p))``;
  ``Multinomial(n, p)`` = ``multinomial(n, p)``.

Samplers: chi-square goodness-of-fit tests with fixed keys (p > 1e-4), bins with expected count
below 5 pooled into one.

The computations under test run through ``B.jit`` (compiled once per test on JAX, whose eager
mode would compile every op for every new shape; the identity elsewhere), which also checks
that the families trace under ``jax.jit``. Validation needs concrete values and is tested
eagerly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as ssp
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import agvi
import agvi.distributions as dist

# log(0) = -inf is the intended value at the edges of the parameter space (p = 0 or 1) and
# outside the support; NumPy and SciPy warn about it.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning",
                                        "ignore:invalid value:RuntimeWarning")

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
PARAMS = ["probs", "logits"]


# --- helpers --------------------------------------------------------------------------------------
_COMPILED: dict = {}


def _run(B, name, fn, *args):
    """``B.jit(fn)(*args)`` with the compiled function cached per backend, precision and
    ``name`` (``fn`` must depend on nothing but ``name`` and its arguments). Returns a tuple of
    NumPy arrays."""
    key = (B.name, B.precision, B.device, name)
    if key not in _COMPILED:
        _COMPILED[key] = B.jit(fn)
    out = _COMPILED[key](*[B.asarray(a) for a in args])
    out = out if isinstance(out, tuple) else (out,)
    return tuple(np.asarray(B.to_numpy(o)) for o in out)


def _np_dtype(B):
    return np.float32 if B.precision == "float32" else np.float64


def _tol(B):
    return 2e-4 if B.precision == "float32" else 1e-9


def assert_close(B, actual, expected, scale=0.0, rtol=None, atol=None):
    """``actual`` (an Array of ``B``) against ``expected`` (NumPy, float64)."""
    tol = _tol(B)
    rtol = tol if rtol is None else rtol
    atol = tol * (1.0 + scale) if atol is None else atol
    if not isinstance(actual, np.ndarray):
        actual = B.to_numpy(actual)
    actual = np.asarray(actual, dtype=np.float64)
    np.testing.assert_allclose(actual, np.broadcast_to(expected, actual.shape),
                               rtol=rtol, atol=atol)


def _rounded(B, x):
    """``x`` rounded to the backend's precision, back in float64 (what SciPy should see)."""
    return np.asarray(x, dtype=_np_dtype(B)).astype(np.float64)


def _binary(B, param, raw):
    """``(kwargs, p)``: the distribution keyword for a probs / logits draw and the float64
    success probability that the rounded parameter represents."""
    x = _rounded(B, raw)
    p = x if param == "probs" else ssp.expit(x)
    return {param: np.asarray(x, dtype=_np_dtype(B))}, p


def _categorical(B, param, raw):
    """Like :func:`_binary` for a weight / logit vector; returns the float64 normalised p."""
    x = _rounded(B, raw)
    p = x / x.sum(-1, keepdims=True) if param == "probs" else ssp.softmax(x, axis=-1)
    return {param: np.asarray(x, dtype=_np_dtype(B))}, p


def _chisquare_p(samples, pmf):
    """Chi-square goodness of fit of integer ``samples`` to ``pmf`` over 0..len(pmf)-1 (the
    rest of the mass, if any, goes to an extra tail bin). Bins expected to hold fewer than 5
    are pooled."""
    samples = np.asarray(samples).astype(np.int64).ravel()
    n = samples.size
    m = len(pmf)
    obs = np.bincount(np.clip(samples, 0, m), minlength=m + 1)[: m + 1].astype(float)
    exp = np.append(pmf, max(0.0, 1.0 - pmf.sum())) * n
    assert obs[exp == 0].sum() == 0, "draws where the pmf is 0"
    big = exp >= 5
    obs_b = np.append(obs[big], obs[~big].sum())
    exp_b = np.append(exp[big], exp[~big].sum())
    keep = exp_b > 0
    obs_b, exp_b = obs_b[keep], exp_b[keep]
    exp_b = exp_b * obs_b.sum() / exp_b.sum()
    if len(obs_b) < 2:
        return 1.0
    return st.chisquare(obs_b, exp_b).pvalue


# --- log_prob, moments, entropy, cdf against SciPy ----------------------------------------------
# Every example has the same shapes (batch of BATCH parameters, fixed value grids), so that JAX
# compiles each test once.
BATCH = 3
# probs: 0, 1, or normal floats (XLA's CPU flushes subnormals to zero).
PROBS = hst.one_of(hst.sampled_from([0.0, 1.0]), hst.floats(1e-30, 1.0))
# SciPy sees p = expit(logits), whose 1 - p loses relative accuracy ~eps * exp(|logits|): keep
# |logits| <= 12 here; test_stable_in_logits checks larger log-odds against exact values.
LOGITS = hst.floats(-12.0, 12.0)


def _batch(strategy, size=BATCH):
    return hst.lists(strategy, min_size=size, max_size=size)


def _binary_raw(data, param, probs=PROBS, logits=LOGITS):
    return data.draw(_batch(probs if param == "probs" else logits))


def _bernoulli_stats(param):
    def stats(theta, x, xs):
        d = dist.Bernoulli(**{param: theta}, validate_args=False)
        return d.log_prob(x), d.cdf(xs), d.mean, d.variance, d.entropy()
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_bernoulli_vs_scipy(backend, param, data):
    raw = _binary_raw(data, param)
    with agvi.use_backend(backend):
        kw, p = _binary(backend, param, raw)
        x = np.array([[0.0], [1.0]])
        xs = np.array([[-0.5], [0.0], [0.5], [1.0], [3.0]])
        lp, cdf, mean, var, ent = _run(backend, ("bernoulli", param), _bernoulli_stats(param),
                                       kw[param], x, xs)
        ref = st.bernoulli(p)
        assert_close(backend, lp, ref.logpmf(x))
        assert_close(backend, cdf, ref.cdf(xs))
        assert_close(backend, mean, p)
        assert_close(backend, var, p * (1 - p))
        assert_close(backend, ent, ref.entropy())


NMAX = 60


def _binomial_stats(param):
    def stats(n, theta, k):
        d = dist.Binomial(n, **{param: theta}, validate_args=False)
        return d.log_prob(k), d.mean, d.variance
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_binomial_vs_scipy(backend, param, data):
    n = np.array(data.draw(_batch(hst.integers(0, NMAX))), dtype=float)
    raw = _binary_raw(data, param)
    with agvi.use_backend(backend):
        kw, p = _binary(backend, param, raw)
        k = np.arange(NMAX + 1.0)[:, None]
        lp, mean, var = _run(backend, ("binomial", param), _binomial_stats(param),
                             n.astype(_np_dtype(backend)), kw[param], k)
        inside = np.broadcast_to(k <= n, lp.shape)  # compare on the support only
        scale = ssp.gammaln(n.max() + 1.0)
        assert_close(backend, lp[inside], st.binom(n, p).logpmf(k)[inside], scale=scale)
        assert_close(backend, mean, n * p, scale=NMAX)
        assert_close(backend, var, n * p * (1 - p), scale=NMAX)


def _geometric_stats(param):
    def stats(theta, k, x):
        d = dist.Geometric(**{param: theta}, validate_args=False)
        return d.log_prob(k), d.cdf(x), d.mean, d.variance, d.entropy()
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_geometric_vs_scipy(backend, param, data):
    raw = _binary_raw(data, param, hst.floats(1e-3, 1.0), hst.floats(-7.0, 12.0))
    with agvi.use_backend(backend):
        kw, p = _binary(backend, param, raw)
        k = np.arange(50.0)[:, None]
        x = np.array([[-1.0], [0.0], [2.5], [10.0], [49.0]])
        lp, cdf, mean, var, ent = _run(backend, ("geometric", param), _geometric_stats(param),
                                       kw[param], k, x)
        ref = st.geom(p, loc=-1)
        scale = 50.0 * float(np.max(np.abs(np.log1p(-np.where(p == 1.0, 0.0, p)))))
        assert_close(backend, lp, ref.logpmf(k), scale=scale)
        assert_close(backend, cdf, ref.cdf(x), scale=10.0)
        ref_mean, ref_var = ref.stats()
        assert_close(backend, mean, ref_mean)
        assert_close(backend, var, ref_var)
        # SciPy's geom entropy is nan at p = 1 (a point mass: entropy 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref_ent = np.where(p == 1.0, 0.0, ref.entropy())
        assert_close(backend, ent, ref_ent)


def _negative_binomial_stats(param):
    def stats(r, theta, k):
        d = dist.NegativeBinomial(r, **{param: theta}, validate_args=False)
        return d.log_prob(k), d.mean, d.variance
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_negative_binomial_vs_scipy(backend, param, data):
    r = data.draw(_batch(hst.floats(0.01, 50.0)))
    # SciPy's p' = 1 - p rounds to 1 for tiny p: keep p = 0 or p >= 1e-6.
    probs = hst.one_of(hst.just(0.0), hst.floats(1e-6, 0.95))
    raw = _binary_raw(data, param, probs, hst.floats(-10.0, 3.0))
    with agvi.use_backend(backend):
        kw, p = _binary(backend, param, raw)
        r = _rounded(backend, r)
        k = np.arange(60.0)[:, None]
        lp, mean, var = _run(backend, ("negative_binomial", param),
                             _negative_binomial_stats(param), r, kw[param], k)
        ref = st.nbinom(r, 1.0 - p)  # successes <-> failures: see the module docstring
        scale = ssp.gammaln(r.max() + 60.0) + 60.0 * 10.0
        assert_close(backend, lp, ref.logpmf(k), scale=scale)
        ref_mean, ref_var = ref.stats()
        assert_close(backend, mean, ref_mean)
        assert_close(backend, var, ref_var)


def _nb_zero(k):
    d = dist.NegativeBinomial(0.0, probs=0.3, validate_args=False)
    return d.log_prob(k), d.mean


def test_negative_binomial_zero_total_count(backend):
    with agvi.use_backend(backend):
        lp, mean = _run(backend, "nb_zero", _nb_zero, np.array([0.0, 2.0]))
        assert_close(backend, lp, [0.0, -np.inf])
        assert_close(backend, mean, 0.0)


def _poisson_stats(rate, k, x):
    d = dist.Poisson(rate, validate_args=False)
    return d.log_prob(k), d.cdf(x), d.mean, d.variance


@SETTINGS
@given(rate=_batch(hst.floats(1e-3, 100.0)))
def test_poisson_vs_scipy(backend, rate):
    with agvi.use_backend(backend):
        rate = _rounded(backend, rate)
        k = np.arange(150.0)[:, None]
        x = np.array([[-1.0], [0.0], [0.5], [3.0], [20.5], [120.0]])
        lp, cdf, mean, var = _run(backend, "poisson", _poisson_stats, rate, k, x)
        ref = st.poisson(rate)
        assert_close(backend, lp, ref.logpmf(k), scale=ssp.gammaln(151.0))
        assert_close(backend, cdf, ref.cdf(x), scale=5.0)
        assert_close(backend, mean, rate)
        assert_close(backend, var, rate)


K_CAT = 4


def _categorical_draw(data, param, rows=BATCH, K=K_CAT):
    # weights 0 or >= 1e-6: subnormal float32 weights lose their value when normalised
    weight = hst.one_of(hst.just(0.0), hst.floats(1e-6, 1.0))
    inner = weight if param == "probs" else hst.floats(-20.0, 20.0)
    drawn = data.draw(_batch(_batch(inner, K), rows))
    if param == "probs":
        drawn = [r if sum(r) > 0.05 else [1.0] * K for r in drawn]
    return np.array(drawn)


def _categorical_stats(family, param):
    def stats(theta, x):
        d = family(**{param: theta}, validate_args=False)
        return d.log_prob(x), d.mean, d.variance, d.entropy(), d.probs
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_categorical_vs_scipy(backend, param, data):
    raw = _categorical_draw(data, param)
    with agvi.use_backend(backend):
        kw, p = _categorical(backend, param, raw)
        P, K = p.shape
        d = dist.Categorical(**kw)
        assert d.batch_shape == (P,) and d.event_shape == () and d.num_categories == K
        k = np.arange(K)[:, None]
        lp, mean, var, ent, probs = _run(backend, ("categorical", param),
                                         _categorical_stats(dist.Categorical, param), kw[param], k)
        with np.errstate(divide="ignore"):
            assert_close(backend, lp, np.log(p.T), scale=20.0)
        refs = [st.rv_discrete(values=(np.arange(K), row)) for row in p]
        assert_close(backend, mean, [r.mean() for r in refs], scale=K)
        assert_close(backend, var, [r.var() for r in refs], scale=K * K)
        assert_close(backend, ent, st.entropy(p, axis=-1), scale=20.0)
        assert_close(backend, probs, p)


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_one_hot_categorical_vs_scipy(backend, param, data):
    raw = _categorical_draw(data, param)
    with agvi.use_backend(backend):
        kw, p = _categorical(backend, param, raw)
        P, K = p.shape
        d = dist.OneHotCategorical(**kw)
        assert d.batch_shape == (P,) and d.event_shape == (K,)
        x = np.eye(K)[:, None, :]  # (K, 1, K) against batch (P,)
        lp, mean, var, ent, _ = _run(backend, ("one_hot", param),
                                     _categorical_stats(dist.OneHotCategorical, param),
                                     kw[param], x)
        with np.errstate(divide="ignore"):
            assert_close(backend, lp, np.log(p.T), scale=20.0)
        assert_close(backend, mean, p)
        assert_close(backend, var, p * (1 - p))
        assert_close(backend, ent, st.entropy(p, axis=-1), scale=20.0)


def _multinomial_stats(param):
    def stats(n, theta, x):
        d = dist.Multinomial(n, **{param: theta}, validate_args=False)
        return d.log_prob(x), d.mean, d.variance
    return stats


@pytest.mark.parametrize("param", PARAMS)
@SETTINGS
@given(data=hst.data())
def test_multinomial_vs_scipy(backend, param, data):
    n = np.array(data.draw(_batch(hst.integers(0, 15))), dtype=float)
    raw = _categorical_draw(data, param)
    seed = data.draw(hst.integers(0, 2**31))
    with agvi.use_backend(backend):
        kw, p = _categorical(backend, param, raw)
        P, K = p.shape
        d = dist.Multinomial(n.astype(_np_dtype(backend)), **kw)
        assert d.batch_shape == (P,) and d.event_shape == (K,)
        with pytest.raises(NotImplementedError):
            d.entropy()
        rng = np.random.default_rng(seed)
        # per batch column: 6 count vectors summing to n (uniform Dirichlet-multinomial) and one
        # that does not (log_prob -inf, as SciPy)
        x = np.stack([np.stack([rng.multinomial(int(m), rng.dirichlet(np.ones(K)))
                                for m in n]) for _ in range(6)]
                     + [np.stack([np.eye(K)[0] * (m + 1) for m in n])])  # (7, P, K)
        lp, mean, var = _run(backend, ("multinomial", param), _multinomial_stats(param),
                             n.astype(_np_dtype(backend)), kw[param], x)
        expected = np.stack([st.multinomial(int(m), row).logpmf(x[:, j])
                             for j, (m, row) in enumerate(zip(n, p, strict=True))], axis=-1)
        scale = ssp.gammaln(n.max() + 1.0) + 20.0 * n.max()
        assert_close(backend, lp, expected, scale=scale)
        assert_close(backend, mean, n[:, None] * p, scale=15)
        assert_close(backend, var, n[:, None] * p * (1 - p), scale=15)


def _single_category(param):
    def run(key):
        c = dist.Categorical(**{param: np.array([[0.7], [0.2]])}, validate_args=False)
        m = dist.Multinomial(3, **{param: np.array([0.7])}, validate_args=False)
        return (c.log_prob(np.array(0)), c.entropy(), c.sample(key, (3,)),
                m.log_prob(np.array([3.0])), m.sample(key, (2,)))
    return run


@pytest.mark.parametrize("param", PARAMS)
def test_single_category(backend, param):
    with agvi.use_backend(backend):
        c_lp, c_ent, c_x, m_lp, m_x = _run(backend, ("single", param), _single_category(param),
                                           backend.key(0))
        assert_close(backend, c_lp, [0.0, 0.0])
        assert_close(backend, c_ent, [0.0, 0.0])
        np.testing.assert_array_equal(c_x, np.zeros((3, 2)))
        assert_close(backend, m_lp, 0.0)
        np.testing.assert_array_equal(m_x, np.full((2, 1), 3.0))


# --- the two parametrisations agree ---------------------------------------------------------------
def _both_stats(family, extra):
    def stats(p, logits, values):
        a = family(probs=p, **extra, validate_args=False)
        b = family(logits=logits, **extra, validate_args=False)
        return (a.log_prob(values), b.log_prob(values), a.mean, b.mean, a.variance, b.variance,
                a.logits, b.logits, a.probs, b.probs)
    return stats


@pytest.mark.parametrize("family, p, extra, values", [
    (dist.Bernoulli, [0.1, 0.5, 0.97], {}, [[0.0], [1.0]]),
    (dist.Binomial, [0.1, 0.5, 0.97], {"total_count": 7}, np.arange(8.0)[:, None]),
    (dist.Geometric, [0.1, 0.5, 0.97], {}, np.arange(10.0)[:, None]),
    (dist.NegativeBinomial, [0.1, 0.5, 0.9], {"total_count": 2.5}, np.arange(10.0)[:, None]),
    (dist.Categorical, [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], {}, np.arange(3)[:, None]),
    (dist.OneHotCategorical, [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], {}, np.eye(3)[:, None]),
    (dist.Multinomial, [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], {"total_count": 4},
     np.array([[[4.0, 0, 0]], [[1, 2, 1]], [[0, 1, 3]]])),
])
def test_probs_and_logits_give_the_same_log_prob(backend, family, p, extra, values):
    with agvi.use_backend(backend):
        p = np.asarray(p, dtype=_np_dtype(backend))
        if family in (dist.Categorical, dist.OneHotCategorical, dist.Multinomial):
            logits = np.log(p)
        else:
            logits = ssp.logit(p.astype(np.float64)).astype(p.dtype)
        out = _run(backend, ("both", family.__name__), _both_stats(family, extra),
                   p, logits, np.asarray(values))
        for a, b in zip(out[::2], out[1::2], strict=True):
            assert_close(backend, a, b, scale=10.0)


def _large_logits(x, label):
    d = dist.Bernoulli(logits=np.array([-200.0, 200.0]), validate_args=False)
    c = dist.Categorical(logits=np.array([0.0, -300.0]), validate_args=False)
    return d.log_prob(x), c.log_prob(label), c.entropy()


def test_stable_in_logits(backend):
    """Large log-odds: log_prob stays finite and exact where probs would round to 0 or 1."""
    with agvi.use_backend(backend):
        lp, c_lp, c_ent = _run(backend, "large_logits", _large_logits,
                               np.array([[1.0], [0.0]]), np.array(1))
        assert_close(backend, lp, [[-200.0, 0.0], [0.0, -200.0]], rtol=1e-6, atol=1e-6)
        assert_close(backend, c_lp, -300.0, rtol=1e-6, atol=1e-6)
        assert np.isfinite(c_ent)


# --- samplers -------------------------------------------------------------------------------------
# Samplers run eagerly: JAX's binomial / Poisson / gamma samplers are compiled per shape and
# dtype, and shared across tests that use the same shape (hence batch size 4 everywhere).
N = 4000
SAMPLE_SHAPE = (2, N // 2)


def _draw(B, make, seed):
    """N draws of ``make()`` with a 2-d sample shape, checking the shape, that the same key
    gives the same draws, and that every draw has a finite log_prob. Returns NumPy, shape
    ``(N,) + batch_shape + event_shape``."""
    d = make()
    assert not d.has_rsample
    x = d.sample(B.key(seed), SAMPLE_SHAPE)
    assert B.shape(x) == SAMPLE_SHAPE + d.batch_shape + d.event_shape, type(d).__name__
    xn = np.asarray(B.to_numpy(x))
    np.testing.assert_array_equal(xn, B.to_numpy(make().sample(B.key(seed), SAMPLE_SHAPE)))
    lp = np.asarray(B.to_numpy(d.log_prob(x)))
    assert lp.shape == SAMPLE_SHAPE + d.batch_shape
    assert np.all(np.isfinite(lp)), type(d).__name__
    return xn.reshape((N,) + xn.shape[2:])


def _check_columns(draws, pmfs):
    """Chi-square per batch column: draws (N, P) (NumPy), pmfs list of P arrays."""
    for j, pmf in enumerate(pmfs):
        pval = _chisquare_p(draws[:, j], pmf)
        assert pval > 1e-4, f"column {j}: chi-square p = {pval:.2e}"


def _kw(B, param, p, logits=None):
    """``{"probs": p}`` or ``{"logits": logit(p)}`` in the backend's precision."""
    theta = p if param == "probs" else (ssp.logit(p) if logits is None else logits)
    return {param: np.asarray(theta, dtype=_np_dtype(B))}


@pytest.mark.parametrize("param", PARAMS)
def test_bernoulli_sampler(backend, param):
    p = np.array([0.0, 0.1, 0.55, 1.0])
    # (finite logits: +-inf log-odds give nan log_prob, as in torch)
    kw = _kw(backend, param, p, ssp.logit(p.clip(1e-12, 1 - 1e-7)))
    with agvi.use_backend(backend):
        assert backend.dtype_of(dist.Bernoulli(**kw).sample(backend.key(0))) == \
            backend.float_dtype
        x = _draw(backend, lambda: dist.Bernoulli(**kw), 0)
        _check_columns(x, [np.array([1 - q, q]) for q in p])


@pytest.mark.parametrize("param", PARAMS)
def test_binomial_sampler(backend, param):
    n = np.array([0.0, 1.0, 10.0, 25.0])
    p = np.array([0.3, 0.6, 0.25, 0.9])
    kw = _kw(backend, param, p)
    nn = n.astype(_np_dtype(backend))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.Binomial(nn, **kw), 1)
        _check_columns(x, [st.binom(int(m), q).pmf(np.arange(m + 1))
                           for m, q in zip(n, p, strict=True)])


@pytest.mark.parametrize("param", PARAMS)
def test_geometric_sampler(backend, param):
    p = np.array([0.05, 0.3, 0.8, 1.0])
    kw = _kw(backend, param, p, ssp.logit(p.clip(0, 1 - 1e-7)))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.Geometric(**kw), 2)
        _check_columns(x, [st.geom(q, loc=-1).pmf(np.arange(200)) for q in p[:3]])
        np.testing.assert_array_equal(x[:, 3], 0.0)  # p = 1 (probs) or 1 - 1e-7 (logits)


@pytest.mark.parametrize("param", PARAMS)
def test_negative_binomial_sampler(backend, param):
    r = np.array([0.5, 3.0, 20.0, 1.0])
    p = np.array([0.7, 0.4, 0.1, 0.95])
    kw = _kw(backend, param, p)
    rr = r.astype(_np_dtype(backend))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.NegativeBinomial(rr, **kw), 3)
        _check_columns(x, [st.nbinom(a, 1 - q).pmf(np.arange(400))
                           for a, q in zip(r, p, strict=True)])


def test_poisson_sampler(backend):
    rate = np.array([0.01, 0.7, 4.0, 60.0])
    rr = rate.astype(_np_dtype(backend))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.Poisson(rr), 4)
        _check_columns(x, [st.poisson(lam).pmf(np.arange(200)) for lam in rate])


@pytest.mark.parametrize("param", PARAMS)
def test_categorical_samplers(backend, param):
    p = np.array([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])
    with np.errstate(divide="ignore"):
        kw = _kw(backend, param, p, np.log(p))
    with agvi.use_backend(backend):
        assert not backend.is_floating(dist.Categorical(**kw).sample(backend.key(5)))
        x = _draw(backend, lambda: dist.Categorical(**kw), 5)
        _check_columns(x, list(p))
        y = _draw(backend, lambda: dist.OneHotCategorical(**kw), 6)
        np.testing.assert_array_equal(y.sum(-1), 1.0)
        _check_columns(y.argmax(-1), list(p))


@pytest.mark.parametrize("param", PARAMS)
def test_multinomial_sampler(backend, param):
    p = np.array([[0.2, 0.0, 0.5, 0.3], [0.2, 0.0, 0.5, 0.3], [0.7, 0.1, 0.1, 0.1],
                  [0.25, 0.25, 0.25, 0.25]])
    n = 5
    with np.errstate(divide="ignore"):
        kw = _kw(backend, param, p, np.log(p))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.Multinomial(n, **kw), 7)  # (N, 4, 4)
        np.testing.assert_array_equal(x.sum(-1), n)
        np.testing.assert_array_equal(x[:, :2, 1], 0)
        # joint chi-square per batch column over all 56 count vectors
        outcomes = [c for c in np.ndindex(*(n + 1,) * 4) if sum(c) == n]
        index = {c: i for i, c in enumerate(outcomes)}
        for j in range(4):
            codes = np.array([index[tuple(int(v) for v in row)] for row in x[:, j]])
            pmf = st.multinomial(n, p[j]).pmf(np.array(outcomes, dtype=float))
            assert _chisquare_p(codes, pmf) > 1e-4, j


def test_multinomial_sampler_large_counts(backend):
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.49, 0.01], [0.3, 0.3, 0.4], [0.2, 0.0, 0.8]])
    n = np.array([1000.0, 50.0, 7.0, 0.0])
    pp, nn = p.astype(_np_dtype(backend)), n.astype(_np_dtype(backend))
    with agvi.use_backend(backend):
        x = _draw(backend, lambda: dist.Multinomial(nn, probs=pp), 8)
        np.testing.assert_array_equal(x.sum(-1), np.broadcast_to(n, (N, 4)))
        mean, var = n[:, None] * p, n[:, None] * p * (1 - p)
        se = np.sqrt(var / N)
        assert np.all(np.abs(x.mean(0) - mean) <= 5 * se)
        nonzero = var > 0
        assert np.all(np.abs(x.var(0)[nonzero] / var[nonzero] - 1) < 0.15)
        np.testing.assert_array_equal(x[:, 3], np.zeros((N, 3)))


# --- enumerate_support ----------------------------------------------------------------------------
ENUMERABLE = {  # (validate_args=False: validation needs concrete values, not jit tracers)
    "Bernoulli": (lambda: dist.Bernoulli(probs=np.full((2, 3), 0.3), validate_args=False),
                  np.array([0.0, 1.0])),
    "Binomial": (lambda: dist.Binomial(4, probs=np.full((2, 3), 0.3), validate_args=False),
                 np.arange(5.0)),
    "Categorical": (lambda: dist.Categorical(probs=np.full((2, 3, 5), 0.2),
                                             validate_args=False), np.arange(5)),
    "OneHotCategorical": (lambda: dist.OneHotCategorical(probs=np.full((2, 3, 5), 0.2),
                                                         validate_args=False), np.eye(5)),
}


@pytest.mark.parametrize("name", list(ENUMERABLE))
def test_enumerate_support(backend, name):
    make, values = ENUMERABLE[name]

    def support():
        d = make()
        full = d.enumerate_support()
        return full, d.enumerate_support(expand=False), d.log_prob(full)

    with agvi.use_backend(backend):
        d = make()
        assert d.has_enumerate_support
        n, event = values.shape[0], values.shape[1:]
        # Binomial reads total_count on the host (as torch): it cannot run under jit
        full, small, lp = (tuple(np.asarray(backend.to_numpy(o)) for o in support())
                           if name == "Binomial" else _run(backend, ("enum", name), support))
        assert full.shape == (n, 2, 3) + event
        assert small.shape == (n, 1, 1) + event
        np.testing.assert_array_equal(small[:, 0, 0], values)
        np.testing.assert_array_equal(full[:, 1, 2], values)
        assert lp.shape == (n, 2, 3)
        np.testing.assert_allclose(np.exp(lp).sum(0), 1.0, rtol=1e-5)  # all the mass


def test_enumerate_support_flags(backend):
    with agvi.use_backend(backend):
        for d in (dist.Poisson(1.0), dist.Geometric(probs=0.5),
                  dist.NegativeBinomial(1.0, probs=0.5), dist.Multinomial(2, probs=[0.5, 0.5])):
            assert not d.has_enumerate_support
        with pytest.raises(NotImplementedError, match="total_count"):
            dist.Binomial(np.array([2, 3]), probs=0.5).enumerate_support()


# --- validation -----------------------------------------------------------------------------------
BAD_PARAMS = [
    (lambda: dist.Bernoulli(probs=1.5, validate_args=True), "probs"),
    (lambda: dist.Bernoulli(probs=-0.1, validate_args=True), "probs"),
    (lambda: dist.Bernoulli(logits=float("nan"), validate_args=True), "logits"),
    (lambda: dist.Binomial(2.5, probs=0.3, validate_args=True), "total_count"),
    (lambda: dist.Binomial(-1, probs=0.3, validate_args=True), "total_count"),
    (lambda: dist.Binomial(3, probs=1.1, validate_args=True), "probs"),
    (lambda: dist.Geometric(probs=0.0, validate_args=True), "probs"),
    (lambda: dist.Geometric(probs=1.2, validate_args=True), "probs"),
    (lambda: dist.NegativeBinomial(-1.0, probs=0.3, validate_args=True), "total_count"),
    (lambda: dist.NegativeBinomial(2.0, probs=1.0, validate_args=True), "probs"),
    (lambda: dist.Poisson(0.0, validate_args=True), "rate"),
    (lambda: dist.Poisson(-2.0, validate_args=True), "rate"),
    (lambda: dist.Categorical(probs=[0.5, -0.5, 1.0], validate_args=True), "probs"),
    (lambda: dist.OneHotCategorical(probs=[0.5, -0.5, 1.0], validate_args=True), "probs"),
    (lambda: dist.Multinomial(2, probs=[0.5, -0.5, 1.0], validate_args=True), "probs"),
    (lambda: dist.Multinomial(1.5, probs=[0.5, 0.5], validate_args=True), "total_count"),
    (lambda: dist.Categorical(probs=0.5), "probs"),
    (lambda: dist.Categorical(), "probs"),
    (lambda: dist.Categorical(probs=[0.5, 0.5], logits=[0.0, 0.0]), "logits"),
    (lambda: dist.Bernoulli(), "probs"),
    (lambda: dist.Bernoulli(probs=0.5, logits=0.0), "logits"),
    (lambda: dist.Binomial(3), "probs"),
    (lambda: dist.Geometric(), "probs"),
    (lambda: dist.NegativeBinomial(2.0), "probs"),
    (lambda: dist.Multinomial(3), "probs"),
]


@pytest.mark.parametrize("make, name", BAD_PARAMS)
def test_bad_parameters_raise(backend, make, name):
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match=name):
            make()


BAD_VALUES = [
    (lambda: dist.Bernoulli(probs=0.5, validate_args=True), 2.0),
    (lambda: dist.Bernoulli(probs=0.5, validate_args=True), 0.5),
    (lambda: dist.Binomial(3, probs=0.5, validate_args=True), 4.0),
    (lambda: dist.Binomial(3, probs=0.5, validate_args=True), -1.0),
    (lambda: dist.Geometric(probs=0.5, validate_args=True), 1.5),
    (lambda: dist.NegativeBinomial(2.0, probs=0.5, validate_args=True), -1.0),
    (lambda: dist.Poisson(2.0, validate_args=True), 0.5),
    (lambda: dist.Categorical(probs=[0.5, 0.5], validate_args=True), 2),
    (lambda: dist.Categorical(probs=[0.5, 0.5], validate_args=True), -1),
    (lambda: dist.OneHotCategorical(probs=[0.5, 0.5], validate_args=True), [1.0, 1.0]),
    (lambda: dist.Multinomial(3, probs=[0.5, 0.5], validate_args=True), [1.0, 1.0]),
]


@pytest.mark.parametrize("make, value", BAD_VALUES)
def test_values_outside_support_raise(backend, make, value):
    with agvi.use_backend(backend):
        d = make()
        with pytest.raises(ValueError, match="support"):
            d.log_prob(np.asarray(value))


def test_validation_only_checks_the_given_parametrisation(backend):
    with agvi.use_backend(backend):
        # probs = 0 and 1 give infinite logits: valid, and logits are not checked
        d = dist.Bernoulli(probs=np.array([0.0, 1.0]), validate_args=True)
        assert_close(backend, d.log_prob(np.array([0.0, 1.0])), [0.0, 0.0])
        assert "logits" not in d.__dict__
        assert np.all(np.isinf(backend.to_numpy(d.logits)))
        c = dist.Categorical(probs=np.array([0.0, 2.0, 2.0]), validate_args=True)  # normalised
        assert_close(backend, c.probs, [0.0, 0.5, 0.5])
        assert_close(backend, c.log_prob(np.array(0)), -np.inf)


def _out_of_range(labels):
    return dist.Categorical(probs=np.array([0.5, 0.5]), validate_args=False).log_prob(labels)


def test_out_of_range_labels_without_validation(backend):
    with agvi.use_backend(backend):
        (lp,) = _run(backend, "out_of_range", _out_of_range, np.array([-1, 0, 2]))
        np.testing.assert_array_equal(np.isinf(lp), [True, False, True])


# --- gradients ------------------------------------------------------------------------------------
def test_log_prob_gradients(backend):
    B = backend
    dt = _np_dtype(B)
    with agvi.use_backend(B):
        x = B.asarray(np.array([1.0, 0.0, 1.0], dtype=dt))
        k = B.asarray(np.array([3.0, 0.0, 7.0], dtype=dt))
        lgt = B.asarray(np.array([-1.0, 0.5, 2.0], dtype=dt))
        cases = [
            (lambda t: B.sum(dist.Bernoulli(logits=t).log_prob(x)),
             B.to_numpy(x) - ssp.expit(B.to_numpy(lgt))),
            (lambda t: B.sum(dist.Binomial(7, logits=t).log_prob(k)),
             B.to_numpy(k) - 7 * ssp.expit(B.to_numpy(lgt))),
            (lambda t: B.sum(dist.Poisson(B.exp(t)).log_prob(k)),
             B.to_numpy(k) - np.exp(B.to_numpy(lgt))),
            (lambda t: dist.Categorical(logits=t).log_prob(B.asarray(np.array(2))),
             np.eye(3)[2] - ssp.softmax(B.to_numpy(lgt))),
            # probs parametrisations (xlogy / xlog1py, and the normalisation of probs)
            (lambda t: B.sum(dist.Bernoulli(probs=B.expit(t)).log_prob(x)),
             B.to_numpy(x) - ssp.expit(B.to_numpy(lgt))),
            (lambda t: dist.Categorical(probs=B.exp(t)).log_prob(B.asarray(np.array(2))),
             np.eye(3)[2] - ssp.softmax(B.to_numpy(lgt))),
        ]
        for i, (f, expected) in enumerate(cases):
            (grad,) = _run(B, ("grad", i), B.grad(f), lgt)
            assert_close(B, grad, expected, scale=10.0)
