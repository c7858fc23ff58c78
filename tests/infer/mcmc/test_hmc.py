"""The batched HMC kernel.

Oracles: Gaussian moments within 4 Monte Carlo standard errors (detailed balance), the
Metropolis probability recomputed with the leapfrog integrator, ceil(length / step size) steps
per chain, one-chain runs for chains of a batch, and a log density with a NaN region.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agvi.infer.mcmc import hmc
from agvi.infer.mcmc.integrators import IntegratorState, logdensity_and_grad_fn, velocity_verlet
from agvi.infer.mcmc.metrics import gaussian_euclidean

COV = np.array([[1.0, 0.6], [0.6, 0.5]])


def correlated(B):
    prec = B.asarray(np.linalg.inv(COV))

    def logdensity(x):
        return -0.5 * B.sum(x * (prec @ x))

    return logdensity


def with_nan_region(B):
    def logdensity(x):
        return B.where(x[0] > 1.0, float("nan"), -0.5 * B.sum(x * x))

    return logdensity


def batch_means_mcse(x, num_batches=10):
    """Monte Carlo standard error of the mean of draws x (N, C) by batch means per chain."""
    n = (x.shape[0] // num_batches) * num_batches
    means = x[:n].reshape(num_batches, -1, x.shape[1]).mean(axis=1)
    return means.std(ddof=1) / math.sqrt(means.size)


def chain_keys(B, seed, num_chains):
    return B.split(B.key(seed), num_chains)


def test_gaussian_moments(B):
    num_chains, num_draws = 4, 250
    kernel = hmc.build_kernel(correlated(B), num_integration_steps=7)
    rng = np.random.default_rng(0)
    state = hmc.init(B.asarray(rng.multivariate_normal([0, 0], COV, size=num_chains)),
                     correlated(B))
    keys = B.key_data(B.split(B.key(1), num_draws * num_chains)).reshape(num_draws, num_chains, 2)
    eps, imm = B.full((num_chains,), 0.3), B.asarray(np.tile(np.diag(COV), (num_chains, 1)))

    def body(st, ks):
        st, info = kernel(ks, st, eps, imm)
        return st, (st.position, info.is_accepted)

    run = B.jit(lambda st, ks: B.scan(body, st, ks))
    _, (draws, accepted) = run(state, B.asarray(keys, dtype=B.dtype("uint32")))
    draws, accepted = B.to_numpy(draws), B.to_numpy(accepted)
    assert 0.5 < accepted.mean() < 1.0
    for i in range(2):
        err = abs(draws[:, :, i].mean()) / batch_means_mcse(draws[:, :, i])
        assert err < 4, f"E[x{i}] off by {err:.1f} MCSE"
        for j in range(i, 2):
            series = draws[:, :, i] * draws[:, :, j]
            err = abs(series.mean() - COV[i, j]) / batch_means_mcse(series)
            assert err < 4, f"E[x{i} x{j}] off by {err:.1f} MCSE"


@pytest.mark.parametrize("dense", [False, True])
def test_acceptance_probability_matches_the_integrator(B, dense):
    num_chains = 3
    rng = np.random.default_rng(1)
    x = rng.standard_normal((num_chains, 2))
    imm = np.tile(COV, (num_chains, 1, 1)) if dense else rng.uniform(0.5, 1.5, (num_chains, 2))
    eps = np.array([0.2, 0.5, 0.9])
    fn = correlated(B)
    kernel = hmc.build_kernel(fn, num_integration_steps=5)
    state = hmc.init(B.asarray(x), fn)
    metric = gaussian_euclidean(B.asarray(imm))
    keys = chain_keys(B, 2, num_chains)
    noise = hmc.draw_noise(keys, state.position, metric)
    new, info = kernel(keys, state, B.asarray(eps), B.asarray(imm))
    # the same transition, integrated here
    step = velocity_verlet(logdensity_and_grad_fn(fn), metric)
    end = IntegratorState(state.position, noise.momentum, state.logdensity,
                          state.logdensity_grad)
    for _ in range(5):
        end = step(end, B.asarray(eps))
    h0 = B.to_numpy(metric.kinetic_energy(noise.momentum) - state.logdensity)
    h1 = B.to_numpy(metric.kinetic_energy(end.momentum) - end.logdensity)
    info = B.tree_map(lambda a: B.to_numpy(a), info)
    np.testing.assert_allclose(info.acceptance_rate, np.minimum(1, np.exp(h0 - h1)), rtol=1e-10)
    accept = np.log(B.to_numpy(noise.u_accept)) < h0 - h1
    np.testing.assert_array_equal(info.is_accepted, accept)
    want = np.where(accept[:, None], B.to_numpy(end.position), x)
    np.testing.assert_allclose(B.to_numpy(new.position), want, rtol=1e-12)
    np.testing.assert_allclose(info.energy, np.where(accept, h1, h0), rtol=1e-12)
    np.testing.assert_array_equal(info.num_integration_steps, [5] * num_chains)
    np.testing.assert_array_equal(info.is_divergent, h1 - h0 > 1000.0)
    if not dense:   # eps 0.9 is unstable there (with the dense metric the problem is whitened)
        assert info.is_divergent.any() and not info.is_divergent.all()
    assert not info.num_nonfinite.any()


def test_trajectory_length_sets_steps_per_chain(B):
    fn = correlated(B)
    kernel = hmc.build_kernel(fn, trajectory_length=1.0, max_num_steps=8)
    state = hmc.init(B.asarray(np.zeros((4, 2))), fn)
    eps = np.array([0.3, 0.25, 0.5, 0.1])
    _, info = kernel(chain_keys(B, 3, 4), state, B.asarray(eps), B.ones((4, 2)))
    np.testing.assert_array_equal(B.to_numpy(info.num_integration_steps), [4, 4, 2, 8])


def test_chain_of_a_batch_equals_a_one_chain_run(B):
    fn = correlated(B)
    kernel = B.jit(hmc.build_kernel(fn, trajectory_length=1.2))
    x = np.random.default_rng(4).standard_normal((3, 2))
    eps = np.array([0.2, 0.3, 0.45])
    keys = chain_keys(B, 5, 3)
    new, info = kernel(keys, hmc.init(B.asarray(x), fn), B.asarray(eps), B.ones((3, 2)))
    for c in range(3):
        one, one_info = kernel(keys[c:c + 1], hmc.init(B.asarray(x[c:c + 1]), fn),
                               B.asarray(eps[c:c + 1]), B.ones((1, 2)))
        for a, b in zip(B.tree_leaves((new, info)), B.tree_leaves((one, one_info))):
            np.testing.assert_allclose(B.to_numpy(a)[c], B.to_numpy(b)[0], rtol=1e-12,
                                       atol=1e-14)


def test_nonfinite_log_density_is_divergent_and_rejected(B):
    fn = with_nan_region(B)
    kernel = hmc.build_kernel(fn, num_integration_steps=10)
    x = np.array([[0.9, 0.0], [-2.0, 0.0]])
    state = hmc.init(B.asarray(x), fn)
    noise = hmc.HMCNoise(B.asarray([[3.0, 0.0], [0.0, 0.1]]), B.asarray([0.5, 0.5]))
    new, info = kernel(None, state, B.asarray([0.1, 0.1]), B.ones((2, 2)), noise)
    info = B.tree_map(lambda a: B.to_numpy(a), info)
    np.testing.assert_array_equal(info.is_divergent, [True, False])
    np.testing.assert_array_equal(info.num_nonfinite, [1, 0])
    np.testing.assert_array_equal(info.is_accepted, [False, True])
    assert info.acceptance_rate[0] == 0.0
    assert int(info.num_integration_steps[0]) < 10 and int(info.num_integration_steps[1]) == 10
    np.testing.assert_array_equal(B.to_numpy(new.position)[0], x[0])
    assert np.all(np.isfinite(B.to_numpy(new.position)))
    assert np.all(np.isfinite(info.energy))


def test_bad_arguments_raise(B):
    fn = correlated(B)
    with pytest.raises(ValueError, match="exactly one"):
        hmc.build_kernel(fn)
    with pytest.raises(ValueError, match="exactly one"):
        hmc.build_kernel(fn, num_integration_steps=3, trajectory_length=1.0)
    with pytest.raises(ValueError, match="num_integration_steps"):
        hmc.build_kernel(fn, num_integration_steps=0)
    with pytest.raises(ValueError, match="trajectory_length"):
        hmc.build_kernel(fn, trajectory_length=-1.0)
    with pytest.raises(ValueError, match="delta_energy_max"):
        hmc.build_kernel(fn, num_integration_steps=3, delta_energy_max=0.0)
