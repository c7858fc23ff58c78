"""Warmup adaptation: dual averaging, Welford estimates, Stan's windows, the first step size.

Oracles: the recursions of Hoffman and Gelman (2014, Alg. 6) written out in plain Python;
NumPy's variance and covariance with Stan's regularisation; Stan's window boundaries for
``num_warmup = 1000`` and its rules for short warmups; a NumPy leapfrog step for Algorithm 4's
crossing condition; and, end to end, the closed-form variances of a Gaussian and the target
acceptance rate.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import agvi
from agvi.infer.mcmc import hmc
from agvi.infer.mcmc.adaptation import (
    AdaptationWindow,
    dual_averaging,
    find_reasonable_step_size,
    schedule_arrays,
    welford_covariance,
    welford_variance,
    windowed_schedule,
)
from agvi.infer.mcmc.metrics import gaussian_euclidean
from agvi.infer.mcmc.sampler import MCMC, NUTS


def _keys(B, n, seed=0):
    return B.asarray(np.stack([B.key_data(B.fold_in(B.key(seed), c)) for c in range(n)]))


# ------------------------------------------------------------------------------ dual averaging
def _da_reference(accepts, eps0, delta=0.8, gamma=0.05, t0=10.0, kappa=0.75):
    mu, h, log_bar = math.log(10 * eps0), 0.0, 0.0
    out = []
    for m, a in enumerate(accepts, start=1):
        a = 0.0 if not math.isfinite(a) else min(max(a, 0.0), 1.0)
        h = (1 - 1 / (m + t0)) * h + (delta - a) / (m + t0)
        log_eps = mu - math.sqrt(m) / gamma * h
        eta = m ** -kappa
        log_bar = eta * log_eps + (1 - eta) * log_bar
        out.append((math.exp(log_eps), math.exp(log_bar)))
    return out


def test_dual_averaging_matches_algorithm_6_per_chain(B):
    init, update, final = dual_averaging()
    update = B.jit(update)   # (eager JAX would dispatch op by op)
    rng = np.random.default_rng(0)
    accepts = rng.uniform(size=(30, 3))
    accepts[4, 1] = np.nan            # a non-finite statistic counts as 0
    eps0 = np.array([0.5, 1.0, 2.0])
    state = init(B.asarray(eps0))
    np.testing.assert_allclose(B.to_numpy(final(state)), eps0)   # before any update
    got = []
    for row in accepts:
        state = update(state, B.asarray(row))
        got.append((B.to_numpy(B.exp(state.log_step_size)), B.to_numpy(final(state))))
    for c in range(3):
        ref = _da_reference(list(accepts[:, c]), eps0[c])
        np.testing.assert_allclose([g[0][c] for g in got], [r[0] for r in ref], rtol=1e-12)
        np.testing.assert_allclose([g[1][c] for g in got], [r[1] for r in ref], rtol=1e-12)


def test_dual_averaging_converges_to_the_target(B):
    # a smooth model of acceptance versus step size: accept(eps) = exp(-eps^2); the target
    # 0.8 is met at eps* = sqrt(-log 0.8)
    init, update, final = dual_averaging(target_accept_prob=0.8)

    def step(state, _):
        eps = B.exp(state.log_step_size)
        return update(state, B.exp(-eps * eps)), None

    state, _ = B.jit(lambda s: B.scan(step, s, length=2000))(init(B.asarray([0.05, 5.0])))
    np.testing.assert_allclose(B.to_numpy(final(state)), math.sqrt(-math.log(0.8)), rtol=0.02)


def test_dual_averaging_rejects_bad_settings():
    for kwargs in ({"target_accept_prob": 1.0}, {"gamma": 0.0}, {"t0": -1.0}, {"kappa": 0.5}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            dual_averaging(**kwargs)


# ------------------------------------------------------------------------------ Welford
def _stan_regularised(x, dense):
    n = x.shape[0]
    est = np.cov(x, rowvar=False, ddof=1) if dense else np.var(x, axis=0, ddof=1)
    jitter = 1e-3 * 5.0 / (n + 5.0)
    return n / (n + 5.0) * est + (jitter * np.eye(x.shape[1]) if dense else jitter)


@pytest.mark.parametrize("dense", [False, True])
def test_welford_per_chain_and_pooled_match_numpy(B, dense):
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(40, 3, 4)) * np.array([1.0, 3.0, 0.1, 10.0]) + 5.0  # (n, C, d)
    draws[7, 2, 1] = np.inf            # skipped (chain 2 keeps 39 draws)
    draws[9, 0, 3] = np.nan            # skipped (chain 0 keeps 39 draws)
    init, update, final = welford_covariance() if dense else welford_variance()
    update = B.jit(update)
    per_chain, pooled = init(3, 4), init(1, 4)
    for row in draws:
        per_chain = update(per_chain, B.asarray(row))
        pooled = update(pooled, B.asarray(row))
    got = B.to_numpy(final(per_chain))
    for c in range(3):
        x = draws[:, c]
        x = x[np.all(np.isfinite(x), axis=1)]
        np.testing.assert_allclose(got[c], _stan_regularised(x, dense), rtol=1e-10, atol=1e-12)
    x = draws.reshape(-1, 4)
    x = x[np.all(np.isfinite(x), axis=1)]
    np.testing.assert_allclose(B.to_numpy(final(pooled))[0], _stan_regularised(x, dense),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B.to_numpy(per_chain.count), [39, 40, 39])


def test_welford_final_falls_back_with_fewer_than_two_draws(B):
    init, update, final = welford_variance()
    state = update(init(2, 3), B.asarray([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]]))
    default = B.asarray([[7.0, 7.0, 7.0], [8.0, 8.0, 8.0]])
    np.testing.assert_allclose(B.to_numpy(final(state, default=default)), B.to_numpy(default))
    with pytest.raises(ValueError, match="one draw per chain"):
        update(init(3, 3), B.zeros((2, 3)))


# ------------------------------------------------------------------------------ windows
def test_windowed_schedule_is_stans():
    w = windowed_schedule(1000)
    assert [(x.start, x.end, x.slow) for x in w] == [
        (0, 74, False), (75, 99, True), (100, 149, True), (150, 249, True), (250, 449, True),
        (450, 949, True), (950, 999, False)]
    # short warmups: 15% / 75% / 10%
    assert [(x.start, x.end, x.slow) for x in windowed_schedule(100)] == [
        (0, 14, False), (15, 89, True), (90, 99, False)]
    # Stan stretches a later window, never the first, to the terminal buffer
    assert [(x.start, x.end) for x in windowed_schedule(170)] == [
        (0, 74), (75, 99), (100, 119), (120, 169)]
    assert [(x.start, x.end) for x in windowed_schedule(2000)][-2:] == [(850, 1949),
                                                                      (1950, 1999)]
    with pytest.warns(UserWarning, match="only the step size"):
        assert windowed_schedule(19) == [AdaptationWindow(0, 18, False)]
    assert windowed_schedule(0) == []
    for n in range(20, 400, 7):   # always a contiguous cover
        flags = schedule_arrays(windowed_schedule(n), n)
        assert flags["slow"].shape == (n,)
        assert flags["window_end"].sum() == sum(x.slow for x in windowed_schedule(n))
    with pytest.raises(ValueError, match="num_warmup"):
        windowed_schedule(-1)
    with pytest.raises(ValueError, match="contiguously"):
        schedule_arrays([AdaptationWindow(0, 4, False), AdaptationWindow(6, 9, True)], 10)


def test_schedule_arrays_flags():
    flags = schedule_arrays(windowed_schedule(1000), 1000)
    assert flags["slow"][75:950].all() and not flags["slow"][:75].any()
    assert not flags["slow"][950:].any()
    assert list(np.flatnonzero(flags["window_end"])) == [99, 149, 249, 449, 949]


# ------------------------------------------------------------------------------ Algorithm 4
def test_find_reasonable_step_size_crosses_one_half_per_chain(B):
    scales = np.array([[1.0, 1.0], [0.01, 0.02], [30.0, 50.0]])   # three chains, three targets

    def logdensity(x):
        return -0.5 * B.sum(x * x)

    # chain c sees the standard normal through x / scale (a diagonal metric of scale^2 is
    # the same as rescaling): the inverse mass matrix carries the scales
    position = B.asarray(np.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]]))
    state = hmc.init(position, logdensity)
    imm = B.asarray(1.0 / scales ** 2)
    keys = _keys(B, 3)
    search = B.jit(lambda k, s, i, e: find_reasonable_step_size(k, s, logdensity, i, e))
    eps = B.to_numpy(search(keys, state, imm, B.ones(3)))
    momentum = B.to_numpy(gaussian_euclidean(imm).sample_momentum(keys, position))
    x0 = B.to_numpy(position)

    def log_ratio(c, e):       # one leapfrog step in NumPy
        m_inv = 1.0 / scales[c] ** 2
        p = momentum[c] - 0.5 * e * x0[c]
        x = x0[c] + e * m_inv * p
        p = p - 0.5 * e * x
        h0 = 0.5 * np.sum(momentum[c] ** 2 * m_inv) + 0.5 * np.sum(x0[c] ** 2)
        return h0 - (0.5 * np.sum(p ** 2 * m_inv) + 0.5 * np.sum(x ** 2))

    half = math.log(0.5)
    for c in range(3):
        if log_ratio(c, 1.0) > half:        # doubled until the ratio fell below 1/2
            assert eps[c] > 1.0 and log_ratio(c, eps[c]) <= half < log_ratio(c, eps[c] / 2)
        else:                               # halved until it rose above 1/2
            assert eps[c] < 1.0 and log_ratio(c, eps[c]) >= half > log_ratio(c, eps[c] * 2)
        assert math.log2(eps[c]) == round(math.log2(eps[c]))
    # each chain's search depends on its own key and state only
    one = search(keys[1:2], hmc.HMCState(*[v[1:2] for v in state]), imm[1:2], B.ones(1))
    assert float(B.to_numpy(one)[0]) == eps[1]


def test_find_reasonable_step_size_halves_away_from_nonfinite_regions(B):
    def logdensity(x):   # -inf outside |x| < 1: a big step lands there
        return B.where(B.abs(x[0]) < 1.0, -0.5 * x[0] ** 2, -math.inf)

    state = hmc.init(B.zeros((1, 1)), logdensity)
    search = B.jit(lambda k, s, i, e: find_reasonable_step_size(k, s, logdensity, i, e))
    eps = search(_keys(B, 1), state, B.ones((1, 1)), B.full((1,), 100.0))
    assert 0 < float(B.to_numpy(eps)[0]) < 100.0


# ------------------------------------------------------------------------------ end to end
SCALES = np.array([0.2, 1.0, 4.0, 0.5])     # variances 0.04 to 16


@pytest.fixture(scope="module")
def gaussian_runs():
    return {}


def _gaussian_run(B, cache):
    """One NUTS warmup (500 transitions, collected) and sampling run per backend: (mcmc,
    warmup acceptance statistics (500,), warmup draws (500, 4))."""
    if B.name not in cache:
        scales = B.asarray(SCALES)
        kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum((x / scales) ** 2))
        mcmc = MCMC(kernel, num_warmup=500, num_samples=300, progress_bar=False)
        mcmc.warmup(B.key(3), init_params=B.zeros(4), collect_warmup=True)
        warmup_accept = B.to_numpy(mcmc.get_extra_fields()["accept_prob"])
        warmup_draws = B.to_numpy(mcmc.get_samples())
        mcmc.run(B.key(3))
        cache[B.name] = (mcmc, warmup_accept, warmup_draws)
    return cache[B.name]


def test_adapted_diagonal_inverse_mass_matrix_is_the_variance(B, gaussian_runs):
    """After Stan's windows the inverse mass matrix is the regularised sample variance of the
    last slow window's draws (transitions 250 to 449, collected by the warmup), and that
    estimates the posterior variances of an ill-conditioned Gaussian."""
    mcmc, _, draws = _gaussian_run(B, gaussian_runs)
    imm = B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"])[0]
    window = draws[250:450]
    n = len(window)
    expected = n / (n + 5) * window.var(axis=0, ddof=1) + 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(imm, expected, rtol=1e-10)
    # 200 autocorrelated draws: the widest coordinate has a bulk ESS of about 50 there, so a
    # variance estimate has a relative sd of about sqrt(2 / 50) = 0.2; 0.7 in log is 3.5 sd
    assert np.all(np.abs(np.log(imm / SCALES ** 2)) < 0.7), imm / SCALES ** 2


def test_dual_averaging_reaches_the_target_acceptance(B, gaussian_runs):
    """Dual averaging drives the mean acceptance statistic of the adapting transitions to the
    target (Hoffman and Gelman 2014, section 3.2): the last slow window (transitions 250 to
    449) adapts the step size without a restart, with a fixed metric."""
    _, accept, _ = _gaussian_run(B, gaussian_runs)
    assert accept.shape == (500,)
    assert abs(accept[300:450].mean() - 0.8) < 0.05, accept[300:450].mean()


def test_sampling_acceptance_after_warmup(B, gaussian_runs):
    """With the averaged step size the acceptance is at or a little above the target (the
    average of log step sizes lies below the iterates), and the step size suits a metric that
    made the target isotropic (about 1 in d = 4)."""
    mcmc, _, _ = _gaussian_run(B, gaussian_runs)
    accept = B.to_numpy(mcmc.get_extra_fields()["accept_prob"])
    assert accept.shape == (300,)
    assert 0.75 < accept.mean() < 0.97, accept.mean()
    step = B.to_numpy(mcmc.adapted_params["step_size"])
    assert 0.3 < step[0] < 1.6


def test_short_warmup_adapts_step_size_only():
    B = agvi.get_backend()
    kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum(x ** 2))
    mcmc = MCMC(kernel, num_warmup=10, num_samples=5, progress_bar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(0, init_params=B.zeros(2))
    assert any("only the step size" in str(w.message) for w in caught)
    np.testing.assert_array_equal(B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"]),
                                  np.ones((1, 2)))
    assert B.to_numpy(mcmc.adapted_params["step_size"])[0] != 1.0
