"""Borch-style step functions (a user-kept loop over a list of parameters and a closure).

Oracles: the kernels of :mod:`agvi.infer.mcmc.hmc` / :mod:`agvi.infer.mcmc.nuts` run directly
on the same point with the same key (the step functions are thin wrappers over them);
Hoffman and Gelman's dual-averaging recursion written out; :func:`dual_averaging` of the
adaptation module; closed-form moments of a Gaussian sampled by a loop of steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi
from agvi.infer.mcmc import borch, hmc, nuts
from agvi.infer.mcmc.adaptation import dual_averaging as da_triple
from agvi.infer.mcmc.adaptation import find_reasonable_step_size
from agvi.infer.mcmc.diagnostics import mcse


def _problem(B):
    """A list of two parameters (a (2,) vector and a scalar) and the closure reading them."""
    parameters = [B.asarray([0.3, -0.2]), B.asarray(1.0)]

    def closure():   # negative log density of N(0, 1) x N(0, 1) x N(3, 2^2)
        return 0.5 * B.sum(parameters[0] ** 2) + 0.5 * (parameters[1] - 3.0) ** 2 / 4.0

    def logdensity(x):
        return -(0.5 * B.sum(x[:2] ** 2) + 0.5 * (x[2] - 3.0) ** 2 / 4.0)

    return parameters, closure, logdensity


@pytest.mark.parametrize("kind", ["hmc", "nuts"])
def test_step_is_the_kernel_transition(B, kind):
    parameters, closure, logdensity = _problem(B)
    originals = list(parameters)
    key = B.key(11)
    if kind == "hmc":
        accept, new = borch.hmc_step(0.4, 7, parameters, closure, key=key)
        kernel = hmc.build_kernel(logdensity, num_integration_steps=7)
    else:
        accept, new = borch.nuts_step(0.4, parameters, closure, max_tree_depth=6, key=key)
        kernel = nuts.build_kernel(logdensity, max_tree_depth=6)
    x0 = B.asarray([[0.3, -0.2, 1.0]])
    state, info = B.jit(kernel)(B.asarray(B.key_data(key)[None]), hmc.init(x0, logdensity),
                                B.full((1,), 0.4), B.ones((1, 3)))
    expected = B.to_numpy(state.position)[0]
    got = np.concatenate([B.to_numpy(new[0]), B.to_numpy(new[1])[None]])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert accept == pytest.approx(float(B.to_numpy(info.acceptance_rate)[0]), rel=1e-12)
    # the list holds the new values (shapes kept) and they are returned; where the backend
    # copies in place (Backend.assign_) the original arrays themselves were updated
    assert B.shape(parameters[0]) == (2,) and B.shape(parameters[1]) == ()
    if B.has_mutable_arrays:
        assert parameters[0] is originals[0] and parameters[1] is originals[1]
    np.testing.assert_allclose(B.to_numpy(parameters[0]), expected[:2], rtol=1e-12)
    assert all(p is q for p, q in zip(parameters, new, strict=True))


def test_find_reasonable_epsilon_is_algorithm_4(B):
    parameters, closure, logdensity = _problem(B)
    before = [B.to_numpy(p) for p in parameters]
    eps, eps_bar, h_bar = borch.find_reasonable_epsilon(parameters, closure, key=3)
    assert (eps_bar, h_bar) == (1.0, 0.0)
    x0 = B.asarray([[0.3, -0.2, 1.0]])
    expected = find_reasonable_step_size(B.asarray(B.key_data(B.key(3))[None]),
                                         hmc.init(x0, logdensity), logdensity,
                                         B.ones((1, 3)), B.ones(1))
    assert eps == float(B.to_numpy(expected)[0])
    for p, b in zip(parameters, before, strict=True):   # unchanged
        np.testing.assert_array_equal(B.to_numpy(p), b)


def test_dual_averaging_matches_the_adaptation_module():
    B = agvi.get_backend()
    init, update, final = da_triple(target_accept_prob=0.7)
    state = init(B.asarray([0.5]))
    eps, eps_bar, h_bar = 0.5, 1.0, 0.0
    for m, a in enumerate([0.1, 0.9, 0.95, float("nan"), 0.6, 0.3], start=1):
        eps, eps_bar, h_bar = borch.dual_averaging(a, m, 0.5, eps_bar, h_bar, delta=0.7)
        state = update(state, B.asarray([a]))
        assert eps == pytest.approx(float(np.exp(B.to_numpy(state.log_step_size)[0])),
                                    rel=1e-12)
        assert eps_bar == pytest.approx(float(B.to_numpy(final(state))[0]), rel=1e-12)
        assert h_bar == pytest.approx(float(B.to_numpy(state.avg_error)[0]), rel=1e-12)
    with pytest.raises(ValueError, match="m counts"):
        borch.dual_averaging(0.5, 0, 0.5, 1.0, 0.0)


def test_a_loop_of_nuts_steps_samples_the_gaussian(B):
    parameters, closure, _ = _problem(B)
    eps, eps_bar, h_bar = borch.find_reasonable_epsilon(parameters, closure, key=0)
    eps0, draws = eps, []
    for m in range(1, 1001):
        accept, values = borch.nuts_step(eps, parameters, closure, key=B.fold_in(B.key(1), m))
        if m <= 200:
            eps, eps_bar, h_bar = borch.dual_averaging(accept, m, eps0, eps_bar, h_bar)
            if m == 200:
                eps = eps_bar
        else:
            draws.append(np.concatenate([B.to_numpy(values[0]), B.to_numpy(values[1])[None]]))
    x = np.asarray(draws)[None]            # (1 chain, 800, 3)
    mean, sd = np.array([0.0, 0.0, 3.0]), np.array([1.0, 1.0, 2.0])
    assert np.all(np.abs(x.mean(axis=(0, 1)) - mean) < 5 * mcse(x))
    assert np.all(np.abs(x.std(axis=(0, 1)) / sd - 1) < 0.2)
    assert 0.5 < eps < 2.5


def test_errors():
    B = agvi.get_backend()
    with pytest.raises(TypeError, match="list"):
        borch.hmc_step(0.1, 3, (B.zeros(2),), lambda: 0.0)
    with pytest.raises(TypeError, match="closure"):
        borch.nuts_step(0.1, [B.zeros(2)], None)
    with pytest.raises(ValueError, match="epsilon"):
        borch.hmc_step(0.0, 3, [B.zeros(2)], lambda: 0.0)
    with pytest.raises(ValueError, match="L must"):
        borch.hmc_step(0.1, 0, [B.zeros(2)], lambda: 0.0)
    with pytest.raises(ValueError, match="max_tree_depth"):
        borch.nuts_step(0.1, [B.zeros(2)], lambda: 0.0, max_tree_depth=0)
    assert math.isfinite(borch.find_reasonable_epsilon([B.zeros(1)], lambda: 0.0, key=0)[0])
