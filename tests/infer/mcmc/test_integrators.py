"""Leapfrog integrator: closed-form steps, reversibility, energy error order, non-finite values.

Oracles: the leapfrog map of a Gaussian (harmonic oscillator) written out in NumPy, time
reversal, and the eps**2 order of the global energy error (Neal 2011, section 5.2.3).
"""

from __future__ import annotations

import numpy as np
import pytest

from agvi.infer.mcmc.integrators import IntegratorState, logdensity_and_grad_fn, velocity_verlet
from agvi.infer.mcmc.metrics import gaussian_euclidean

PREC = np.array([1.0, 4.0, 0.25])   # a diagonal Gaussian with standard deviations 1, 0.5, 2


def gaussian(B, prec=PREC):
    p = B.asarray(prec)

    def logdensity(x):
        return -0.5 * B.sum(p * x * x)

    return logdensity


def banana(B):
    def logdensity(x):
        return -x[0] ** 2 / 8.0 - 0.5 * (x[1] - 0.3 * x[0] ** 2) ** 2 - 0.5 * B.sum(x[2:] ** 2)

    return logdensity


def state_at(B, fn, position, momentum):
    position = B.asarray(position)
    logdensity, grad = logdensity_and_grad_fn(fn)(position)
    return IntegratorState(position, B.asarray(momentum), logdensity, grad)


def energy(B, metric, state):
    return B.to_numpy(metric.kinetic_energy(state.momentum) - state.logdensity)


def test_one_step_matches_closed_form(B):
    rng = np.random.default_rng(0)
    x, p = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    imm = rng.uniform(0.5, 2.0, (3, 3))
    eps = np.array([0.1, 0.3, -0.2])        # per chain, one of them backwards
    metric = gaussian_euclidean(B.asarray(imm))
    step = velocity_verlet(logdensity_and_grad_fn(gaussian(B)), metric)
    new = step(state_at(B, gaussian(B), x, p), B.asarray(eps))
    e = eps[:, None]
    p_half = p - 0.5 * e * PREC * x
    x_new = x + e * imm * p_half
    p_new = p_half - 0.5 * e * PREC * x_new
    np.testing.assert_allclose(B.to_numpy(new.position), x_new, rtol=1e-13)
    np.testing.assert_allclose(B.to_numpy(new.momentum), p_new, rtol=1e-13)
    np.testing.assert_allclose(B.to_numpy(new.logdensity),
                               -0.5 * np.sum(PREC * x_new ** 2, axis=1), rtol=1e-13)
    np.testing.assert_allclose(B.to_numpy(new.logdensity_grad), -PREC * x_new, rtol=1e-13)


@pytest.mark.parametrize("dense", [False, True])
def test_reversible(B, dense):
    rng = np.random.default_rng(1)
    num_chains = 3
    x, p = rng.standard_normal((num_chains, 3)), rng.standard_normal((num_chains, 3))
    if dense:
        a = rng.standard_normal((num_chains, 3, 3))
        imm = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(3)
    else:
        imm = rng.uniform(0.5, 2.0, (num_chains, 3))
    metric = gaussian_euclidean(B.asarray(imm))
    fn = banana(B)
    step = velocity_verlet(logdensity_and_grad_fn(fn), metric)
    eps = B.asarray([0.05, 0.1, 0.2])
    start = state_at(B, fn, x, p)
    state = start
    coefficients = step.prepare(eps)
    for _ in range(20):
        state = step.apply(state, coefficients)
    assert not np.allclose(B.to_numpy(state.position), x)
    back = step.prepare(-eps)
    for _ in range(20):
        state = step.apply(state, back)
    np.testing.assert_allclose(B.to_numpy(state.position), x, atol=1e-11)
    np.testing.assert_allclose(B.to_numpy(state.momentum), p, atol=1e-11)


def test_energy_error_is_second_order(B):
    # over a fixed integration time, halving the step size divides the energy error by ~4
    rng = np.random.default_rng(2)
    x, p = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
    metric = gaussian_euclidean(B.ones((1, 3)))
    fn = gaussian(B)
    step = velocity_verlet(logdensity_and_grad_fn(fn), metric)
    start = state_at(B, fn, x, p)
    h0 = energy(B, metric, start)
    errors = []
    for num_steps in (20, 40, 80):
        state, coefficients = start, step.prepare(B.asarray([1.0 / num_steps]))
        worst = 0.0
        for _ in range(num_steps):
            state = step.apply(state, coefficients)
            worst = max(worst, float(abs(energy(B, metric, state) - h0)[0]))
        errors.append(worst)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 4.0, rtol=0.1)


def test_nonfinite_values_pass_through_without_raising(B):
    # the log density is NaN beyond x0 = 1: the step reports it, the caller marks divergence
    def fn(x):
        return B.where(x[0] > 1.0, float("nan"), -0.5 * B.sum(x * x))

    metric = gaussian_euclidean(B.ones((2, 2)))
    step = velocity_verlet(logdensity_and_grad_fn(fn), metric)
    state = state_at(B, fn, [[0.9, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.1, 0.0]])
    new = step(state, B.asarray([0.5, 0.5]))
    lp = B.to_numpy(new.logdensity)
    assert np.isnan(lp[0]) and np.isfinite(lp[1])
    assert not np.all(np.isfinite(energy(B, metric, new)))


def test_logdensity_and_grad_one_chain_equals_batched(B):
    fn = banana(B)
    x = np.random.default_rng(3).standard_normal((4, 3))
    lp, g = logdensity_and_grad_fn(fn)(B.asarray(x))
    assert B.shape(lp) == (4,) and B.shape(g) == (4, 3)
    for c in range(4):
        lp1, g1 = logdensity_and_grad_fn(fn)(B.asarray(x[c:c + 1]))
        assert B.shape(lp1) == (1,) and B.shape(g1) == (1, 3)
        np.testing.assert_allclose(B.to_numpy(lp1)[0], B.to_numpy(lp)[c], rtol=1e-14)
        np.testing.assert_allclose(B.to_numpy(g1)[0], B.to_numpy(g)[c], rtol=1e-14)
    x0, x1 = x[:, 0], x[:, 1]
    np.testing.assert_allclose(B.to_numpy(g)[:, 1], -(x1 - 0.3 * x0 ** 2), rtol=1e-13)


def test_compiled_logdensity_takes_new_data_without_recompiling(B):
    """A CompiledLogDensity bound to different data of one shape gives each data's value and
    gradient (closed form of a diagonal Gaussian), one chain and batched; where the backend
    traces (torch) it traces one graph per function, so the data are inputs, not constants."""
    from agvi.infer.mcmc.integrators import CompiledLogDensity

    target = CompiledLogDensity(lambda x, args: -0.5 * B.sum(args[0] * x * x))
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    for prec in (PREC, 3.0 * PREC, PREC):
        bound = target.bind((B.asarray(prec),))
        for rows in (x[:1], x):
            ld, g = logdensity_and_grad_fn(bound)(B.asarray(rows))
            np.testing.assert_allclose(B.to_numpy(ld), -0.5 * (rows * rows) @ prec, rtol=1e-12)
            np.testing.assert_allclose(B.to_numpy(g), -prec * rows, rtol=1e-12)
        np.testing.assert_allclose(float(bound(B.asarray(x[1]))), -0.5 * (x[1] ** 2) @ prec,
                                   rtol=1e-12)
    for fn in (target.value_and_grad_one, target.value_and_grad_batched):
        if hasattr(fn, "num_traced"):
            assert fn.num_traced == 1


def test_host_value_and_grad_of_one_point_and_of_chains(B):
    """The host value and gradient of a bound log density (the eager NUTS path), of one point
    and of a stack of chains (batched, or one point at a time where ``vmap`` is a loop), equal
    the closed form of a diagonal Gaussian, as NumPy arrays."""
    from agvi.infer.mcmc.integrators import CompiledLogDensity

    bound = CompiledLogDensity(lambda x, args: -0.5 * B.sum(args[0] * x * x)).bind(
        (B.asarray(PREC),))
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-0.3, 0.6, 0.1]])
    for rows in (x[0], x[:2], x):
        ld, g = bound.host_value_and_grad(rows)(rows)
        assert isinstance(g, np.ndarray) and g.shape == rows.shape
        np.testing.assert_allclose(ld, -0.5 * (rows * rows) @ PREC, rtol=1e-12)
        np.testing.assert_allclose(g, -PREC * rows, rtol=1e-12)
