"""The simulators for generalised VI (agvi.models.sir, agvi.models.random_walk) on every backend
and precision: trajectories against a plain NumPy reference, derivatives against finite
differences and across modes, the relaxation's limit, and the walk's step frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi
from agvi.models.random_walk import random_walk_loss, simulate_random_walk
from agvi.models.sir import TRUE_PARAMS, load_data, simulate_sir, sir_loss


def _np(B, x):
    return np.asarray(B.to_numpy(x), dtype=float)


def _rtol(B, f64):
    return f64 if B.precision == "float64" else 2e-4


def sir_reference(params, n_steps, i0=0.01, dt=1.0):
    """The SIR recursion as a plain Python loop in float64."""
    beta, gamma = math.exp(params[0]), math.exp(params[1])
    s, i, r = 1.0 - i0, i0, 0.0
    out = []
    for _ in range(n_steps):
        new_inf = s * (1.0 - math.exp(-beta * i * dt))
        new_rec = i * (1.0 - math.exp(-gamma * dt))
        s, i, r = s - new_inf, i + new_inf - new_rec, r + new_rec
        out.append((i, r))
    return np.array(out)


@pytest.fixture
def B(backend):
    with agvi.use_backend(backend):
        yield backend


@pytest.mark.parametrize("params", [TRUE_PARAMS, (math.log(0.2), math.log(0.3)),
                                    (math.log(2.0), math.log(0.05))])
def test_sir_matches_reference(B, params):
    out = simulate_sir(B.asarray(np.array(params)), 40, dt=0.5)
    assert B.shape(out) == (40, 2)
    ref = sir_reference(params, 40, dt=0.5)
    np.testing.assert_allclose(_np(B, out), ref, rtol=_rtol(B, 1e-12), atol=1e-7)
    # compartments stay in [0, 1] and R is non-decreasing
    assert np.all(ref >= 0) and np.all(ref.sum(1) <= 1 + 1e-12)
    assert np.all(np.diff(_np(B, out)[:, 1]) >= -1e-7)


def test_sir_batched_params(B):
    params = np.array([[math.log(0.5), math.log(0.1)], [math.log(0.3), math.log(0.2)],
                       [math.log(1.0), math.log(0.5)]])
    out = simulate_sir(B.asarray(params), 15)
    assert B.shape(out) == (3, 15, 2)
    for k in range(3):
        np.testing.assert_allclose(_np(B, out[k]), sir_reference(params[k], 15),
                                   rtol=_rtol(B, 1e-12), atol=1e-7)


def test_sir_gradients(B):
    """Reverse- and forward-mode derivatives of the loss and the trajectory against central
    finite differences of the NumPy reference."""
    (data,), _ = load_data(n_steps=20)
    theta = np.array([math.log(0.4), math.log(0.15)])
    g = _np(B, B.grad(lambda t: sir_loss(t, B.asarray(data)))(B.asarray(theta)))
    h = 1e-6
    fd = []
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        lp = 0.5 * np.sum((sir_reference(theta + e, 20) - data) ** 2) / 0.01**2
        lm = 0.5 * np.sum((sir_reference(theta - e, 20) - data) ** 2) / 0.01**2
        fd.append((lp - lm) / (2 * h))
    np.testing.assert_allclose(g, fd, rtol=_rtol(B, 1e-6))
    jr = B.jacobian(lambda t: simulate_sir(t, 20), mode="reverse")(B.asarray(theta))
    jf = B.jacobian(lambda t: simulate_sir(t, 20), mode="forward", chunk_size=1)(
        B.asarray(theta))
    assert B.shape(jr) == (20, 2, 2)
    np.testing.assert_allclose(_np(B, jf), _np(B, jr), rtol=_rtol(B, 1e-8), atol=1e-9)


def test_sir_observation_noise(B):
    theta = B.asarray(np.array(TRUE_PARAMS))
    clean = _np(B, simulate_sir(theta, 200))
    a = _np(B, simulate_sir(theta, 200, key=B.key(3), observation_noise=0.01))
    b = _np(B, simulate_sir(theta, 200, key=B.key(3), observation_noise=0.01))
    np.testing.assert_array_equal(a, b)
    noise = (a - clean).ravel() / 0.01
    # 400 standard normal draws: mean within 4 / sqrt(400), sd within 15%
    assert abs(noise.mean()) < 0.2 and abs(noise.std() - 1.0) < 0.15


def test_sir_errors(B):
    with pytest.raises(ValueError, match="shape"):
        simulate_sir(B.zeros((3,)), 5)
    with pytest.raises(ValueError, match="n_steps"):
        simulate_sir(B.zeros((2,)), 0)
    with pytest.raises(ValueError, match="key"):
        simulate_sir(B.zeros((2,)), 5, observation_noise=0.1)
    with pytest.raises(ValueError, match="data"):
        sir_loss(B.zeros((2,)), B.zeros((5, 3)))


def test_random_walk_hard_steps_have_probability_p(B):
    p = 0.7
    logit = math.log(p / (1 - p))
    walks = _np(B, simulate_random_walk(B.asarray([logit]), 200, B.key(0), n_walks=50))
    assert walks.shape == (50, 200)
    steps = np.diff(np.concatenate([np.zeros((50, 1)), walks], 1), axis=1)
    np.testing.assert_array_equal(np.abs(steps), 1.0)
    n = steps.size
    # binomial frequency of +1 steps within 4 standard errors of p
    assert abs((steps > 0).mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    again = _np(B, simulate_random_walk(B.asarray([logit]), 200, B.key(0), n_walks=50))
    np.testing.assert_array_equal(walks, again)


def test_random_walk_relaxation(B):
    """tanh((logit p + logit u) / (2 tau)) tends to the hard sign as tau -> 0, lies in (-1, 1)
    and has the derivative (1 - step^2) / (2 tau) in logit p."""
    theta = B.asarray([0.4])
    key = B.key(5)
    hard = np.diff(np.r_[0.0, _np(B, simulate_random_walk(theta, 300, key))])
    soft = np.diff(np.r_[0.0, _np(B, simulate_random_walk(theta, 300, key, temperature=0.2))])
    cold = np.diff(np.r_[0.0, _np(B, simulate_random_walk(theta, 300, key,
                                                          temperature=1e-4))])
    tol = 1e-12 if B.precision == "float64" else 1e-4  # diff of a float32 cumsum rounds
    assert np.all(np.abs(soft) <= 1 + tol)
    assert np.mean(np.sign(soft) == hard) == 1.0
    assert np.mean(np.abs(cold - hard) < 1e-3) > 0.99
    jac = _np(B, B.jacobian(lambda t: simulate_random_walk(t, 300, key, temperature=0.2))(
        theta))[:, 0]
    np.testing.assert_allclose(np.diff(np.r_[0.0, jac]), (1 - soft**2) / 0.4,
                               rtol=_rtol(B, 1e-8), atol=1e3 * tol)


def test_random_walk_loss_gradient(B):
    data = simulate_random_walk(B.asarray([0.8]), 100, B.key(1))
    theta = np.array([0.3])
    g = float(_np(B, B.grad(lambda t: random_walk_loss(t, data))(B.asarray(theta)))[0])
    h = 1e-5 if B.precision == "float64" else 1e-2
    lp = float(random_walk_loss(B.asarray(theta + h), data))
    lm = float(random_walk_loss(B.asarray(theta - h), data))
    # float32: the step is large, so the difference quotient carries O(h^2) error
    np.testing.assert_allclose(g, (lp - lm) / (2 * h),
                               rtol=1e-6 if B.precision == "float64" else 3e-3)


def test_random_walk_errors(B):
    with pytest.raises(ValueError, match="params"):
        simulate_random_walk(B.zeros((2,)), 5, 0)
    with pytest.raises(ValueError, match="n_steps"):
        simulate_random_walk(B.zeros((1,)), 0, 0)
    with pytest.raises(ValueError, match="temperature"):
        simulate_random_walk(B.zeros((1,)), 5, 0, temperature=-1.0)
    with pytest.raises(ValueError, match="data"):
        random_walk_loss(B.zeros((1,)), B.zeros((3, 2)))
