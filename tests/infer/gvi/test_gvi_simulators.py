"""GVI recovers simulator parameters from synthetic data on every backend: the SIR epidemic
and the relaxed random walk (pathwise gradients)."""

from __future__ import annotations

import functools
import math

import numpy as np

import agvi.distributions as dist
from agvi.infer.gvi import GVI
from agvi.infer.posterior_estimators import DiagonalGaussianEstimator
from agvi.models.random_walk import random_walk_loss, simulate_random_walk
from agvi.models.sir import PRIOR_LOC, TRUE_PARAMS, load_data, sir_loss, sir_prior
from agvi.optim import Adam


def _np(B, x):
    return np.asarray(B.to_numpy(x), dtype=float)


def test_gvi_recovers_sir_parameters(B64):
    B = B64
    (data,), _ = load_data(n_steps=20)  # 20 days, noise sd 0.005, loss sigma 0.01
    est = DiagonalGaussianEstimator(2, loc=np.array(PRIOR_LOC), scale=0.1)
    gvi = GVI(sir_loss, sir_prior(), est, optimizer=Adam(0.05), n_samples_per_epoch=3,
              progress_bar=False, key=0)
    hist = gvi.run(B.asarray(data), 120, max_epochs_without_improvement=120)
    loc = _np(B, est.params["loc"])
    # starting 0.5 (beta) and 0.7 (gamma) log-units off, GVI lands within 0.05 log-units
    # (5% in the rates) of the truth; the generalised posterior is narrow (sd < 0.1)
    np.testing.assert_allclose(loc, TRUE_PARAMS, atol=0.05)
    assert np.all(np.exp(_np(B, est.params["log_scale"])) < 0.1)
    assert hist[-1]["total"] < hist[0]["total"] / 10


def test_gvi_recovers_random_walk_probability(B64):
    B = B64
    p_true, n_steps = 0.7, 150
    loss = functools.partial(random_walk_loss, n_walks=16)
    data = simulate_random_walk(B.asarray([math.log(p_true / (1 - p_true))]), n_steps,
                                B.key(11))
    up = float(np.mean(np.diff(np.r_[0.0, _np(B, data)]) > 0))
    # the loss's own minimiser, by grid search: the oracle for the posterior mean
    grid = np.linspace(-0.5, 2.5, 61)
    loss_at = B.jit(loss)  # compiled on JAX (121 eager calls would dominate the test there)
    argmin = grid[int(np.argmin([float(loss_at(B.asarray([g]), data)) for g in grid]))]
    est = DiagonalGaussianEstimator(1, loc=0.0, scale=0.5)
    prior = dist.Normal(B.zeros((1,)), B.ones((1,)))
    gvi = GVI(loss, prior, est, optimizer=Adam(0.05), n_samples_per_epoch=3,
              progress_bar=False, key=1)
    gvi.run(data, 80, max_epochs_without_improvement=80)
    loc = float(_np(B, est.params["loc"])[0])
    p_hat = 1 / (1 + math.exp(-loc))
    assert abs(loc - argmin) < 0.1
    # within 4 binomial standard errors of the truth, and near the observed up-fraction
    assert abs(p_hat - p_true) < 4 * math.sqrt(p_true * (1 - p_true) / n_steps)
    assert abs(p_hat - up) < 0.03
