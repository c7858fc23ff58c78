"""The iterative, batched NUTS kernel.

Oracles:

- the recursive reference NUTS (:func:`agvi.testing.reference_nuts.reference_nuts`, NumPy
  float64), fed the same noise: same final state, steps, depth, U-turn and divergence flags and
  acceptance statistic, transition by transition, on an isotropic Gaussian, a diagonal Gaussian
  with holes (NaN and -inf regions), a correlated Gaussian with a dense metric, a banana and a
  funnel, with step sizes that make the trees hit the maximum depth and diverge;
- one-chain runs: chain i of a C-chain run equals a one-chain run with chain i's key;
- closed-form Gaussian moments, within 4 Monte Carlo standard errors (batch means).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agvi.backends import make_backend
from agvi.infer.mcmc import hmc, nuts
from agvi.infer.mcmc.metrics import gaussian_euclidean
from agvi.infer.mcmc.termination import checkpoint_indices
from agvi.testing.reference_nuts import reference_nuts

NAN, INF = float("nan"), float("inf")
DEPTH = 5          # max_tree_depth of the reference comparisons (trees of up to 31 steps)
_KERNELS: dict = {}   # compiled kernels shared by the tests of one session (JAX compiles once)


# ------------------------------------------------------------------------------ targets
def gauss_holes(B):
    """Diagonal Gaussian (sd 1, 0.5, 0.2) whose log density is NaN for x0 > 2 and -inf for
    x1 < -1."""
    prec = B.asarray([1.0, 4.0, 25.0])

    def logdensity(x):
        lp = -0.5 * B.sum(prec * x * x)
        lp = B.where(x[0] > 2.0, NAN, lp)
        return B.where(x[1] < -1.0, -INF, lp)

    return logdensity


COV = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]]) * np.outer([1, 2, .5],
                                                                               [1, 2, .5])


def correlated(B):
    prec = B.asarray(np.linalg.inv(COV))

    def logdensity(x):
        return -0.5 * B.sum(x * (prec @ x))

    return logdensity


def banana(B):
    def logdensity(x):
        return -x[0] ** 2 / 8.0 - 0.5 * (x[1] - 0.3 * x[0] ** 2) ** 2

    return logdensity


def funnel(B):
    def logdensity(x):
        v = x[0]
        return -v ** 2 / 4.5 - 0.5 * B.sum(x[1:] ** 2) * B.exp(-v) - v

    return logdensity


# name: (target, dim, inverse mass matrix of one chain, step-size phases per chain
#        [(num transitions, (eps chain 0, eps chain 1))])
def isotropic(B):
    def logdensity(x):
        return -0.5 * B.sum(x * x)

    return logdensity


CASES = {
    "isotropic": (isotropic, 4, np.ones(4), [(20, (0.5, 0.3))]),
    "gauss_holes": (gauss_holes, 3, np.ones(3),
                    [(14, (0.25, 0.18)), (4, (0.004, 0.005)), (5, (1.0, 0.9))]),
    "correlated_dense": (correlated, 3, COV * 1.1 + 0.05 * np.eye(3),
                         [(18, (0.5, 0.3)), (4, (4.0, 3.0))]),
    "banana": (banana, 2, np.array([4.0, 1.0]), [(22, (0.6, 0.35))]),
    "funnel": (funnel, 3, np.ones(3), [(22, (0.4, 0.25))]),
}


def compiled(B, name, max_tree_depth=DEPTH):
    """The (jitted where possible) kernel of a case, built once per session and backend."""
    key = (B.name, B.device, name, max_tree_depth)
    if key not in _KERNELS:
        target = CASES[name][0] if name in CASES else MOMENT_CASES[name][0]
        _KERNELS[key] = B.jit(nuts.build_kernel(target(B), max_tree_depth=max_tree_depth))
    return _KERNELS[key]


def transition_keys(B, seed, t, num_chains):
    return B.split(B.fold_in(B.key(seed), t), num_chains)


def draw_noise(B, keys, position, imm, max_tree_depth=DEPTH):
    """:func:`nuts.draw_noise`, compiled once on JAX (eager ``lax.map`` would recompile)."""
    key = (B.name, B.device, "noise", max_tree_depth)
    if key not in _KERNELS:
        _KERNELS[key] = B.jit(lambda k, x, m: nuts.draw_noise(k, x, gaussian_euclidean(m),
                                                               max_tree_depth))
    return _KERNELS[key](keys, position, imm)


def to_np(B, tree):
    return B.tree_map(lambda a: B.to_numpy(a), tree)


# ------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("num_chains", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_recursive_reference(B, case, num_chains):
    if B.has_jit and num_chains == 1 and case != "gauss_holes":
        pytest.skip("one compiled one-chain case is enough (compilation is slow)")
    target, dim, imm_one, phases = CASES[case]
    kernel = compiled(B, case)
    reference_grad = make_backend("numpy", precision="float64").value_and_grad(
        target(make_backend("numpy", precision="float64")))
    rng = np.random.default_rng(0)
    x0 = 0.3 * rng.standard_normal((num_chains, dim))
    state = hmc.init(B.asarray(x0), target(B))
    imm = np.broadcast_to(imm_one, (num_chains,) + imm_one.shape).copy()
    seen = {"turning": 0, "divergent": 0, "nonfinite": 0, "max_depth": 0}
    t = 0
    for num_transitions, step_sizes in phases:
        eps = np.asarray(step_sizes[:num_chains])
        for _ in range(num_transitions):
            keys = transition_keys(B, 7, t, num_chains)
            noise = draw_noise(B, keys, state.position, B.asarray(imm))
            before = to_np(B, state)
            noise_np = to_np(B, noise)
            state, info = kernel(keys, state, B.asarray(eps), B.asarray(imm), noise)
            got, info_np = to_np(B, state), to_np(B, info)
            for c in range(num_chains):
                ref = reference_nuts(
                    reference_grad, before.position[c], eps[c], imm[c], noise_np.momentum[c],
                    noise_np.going_right[c], noise_np.u_subtree[c], noise_np.u_leaf[c],
                    max_tree_depth=DEPTH, logdensity=before.logdensity[c],
                    logdensity_grad=before.logdensity_grad[c])
                where = f"{case}, transition {t}, chain {c}"
                assert int(info_np.num_integration_steps[c]) == ref.num_steps, where
                assert int(info_np.num_trajectory_expansions[c]) == ref.depth, where
                assert bool(info_np.is_turning[c]) == ref.is_turning, where
                assert bool(info_np.is_divergent[c]) == ref.is_divergent, where
                assert int(info_np.num_nonfinite[c]) == ref.num_nonfinite, where
                np.testing.assert_allclose(got.position[c], ref.position, rtol=1e-10,
                                           atol=1e-12, err_msg=where)
                np.testing.assert_allclose(got.logdensity[c], ref.logdensity, rtol=1e-10,
                                           err_msg=where)
                np.testing.assert_allclose(got.logdensity_grad[c], ref.logdensity_grad,
                                           rtol=1e-10, atol=1e-12, err_msg=where)
                np.testing.assert_allclose(info_np.energy[c], ref.energy, rtol=1e-10,
                                           err_msg=where)
                np.testing.assert_allclose(info_np.acceptance_rate[c], ref.acceptance_rate,
                                           rtol=1e-10, atol=1e-14, err_msg=where)
                np.testing.assert_array_equal(info_np.momentum[c], noise_np.momentum[c])
                seen["turning"] += ref.is_turning
                seen["divergent"] += ref.is_divergent
                seen["nonfinite"] += ref.num_nonfinite
                seen["max_depth"] += ref.depth == DEPTH and not ref.is_divergent \
                    and not ref.is_turning
                assert np.all(np.isfinite(got.position[c])), where
            t += 1
    assert seen["turning"] > 0, seen
    if case == "gauss_holes":   # the phases were chosen to visit every way a tree ends
        assert seen["nonfinite"] > 0 and seen["max_depth"] > 0, seen
    if case == "correlated_dense":   # the last phase's step sizes are far too large
        assert seen["divergent"] > seen["nonfinite"] == 0, seen


def test_draws_its_noise_from_the_keys(B):
    kernel = compiled(B, "banana")
    state = hmc.init(B.asarray([[0.1, 0.2], [0.3, -0.1]]), banana(B))
    keys = transition_keys(B, 3, 0, 2)
    imm, eps = B.asarray(np.ones((2, 2))), B.asarray([0.5, 0.4])
    noise = draw_noise(B, keys, state.position, imm)
    a = to_np(B, kernel(keys, state, eps, imm))
    b = to_np(B, kernel(keys, state, eps, imm, noise))
    for x, y in zip(B.tree_leaves(a), B.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_deep_trees_draw_the_leaf_tail_from_the_keys(B):
    """Trees of depth 7 and more use leaf uniforms beyond the first 32, which every kernel
    draws from the chain's third key only when needed: the results equal those with all the
    numbers drawn up front (and some chains must have reached that depth)."""
    kernel = compiled(B, "isotropic", max_tree_depth=8)
    state = hmc.init(B.asarray(0.5 * np.ones((2, 4))), isotropic(B))
    imm, eps = B.ones((2, 4)), B.asarray([0.01, 0.02])   # tiny steps: long trajectories
    depths = []
    for t in range(3):
        keys = transition_keys(B, 5, t, 2)
        noise = draw_noise(B, keys, state.position, imm, max_tree_depth=8)
        a = to_np(B, kernel(keys, state, eps, imm))
        b = to_np(B, kernel(keys, state, eps, imm, noise))
        for x, y in zip(B.tree_leaves(a), B.tree_leaves(b)):
            np.testing.assert_array_equal(x, y)
        depths.extend(a[1].num_trajectory_expansions.tolist())
        state = kernel(keys, state, eps, imm)[0]
    assert max(depths) >= 7


def test_chain_of_a_batch_equals_a_one_chain_run(B):
    kernel = compiled(B, "gauss_holes")
    target = gauss_holes(B)
    num_chains = 3
    eps = np.array([0.25, 0.18, 0.3])
    x0 = 0.3 * np.random.default_rng(1).standard_normal((num_chains, 3))
    batch = hmc.init(B.asarray(x0), target)
    singles = [hmc.init(B.asarray(x0[c:c + 1]), target) for c in range(num_chains)]
    imm = B.ones((num_chains, 3))
    depths = set()
    for t in range(10):
        keys = transition_keys(B, 11, t, num_chains)
        batch, info = kernel(keys, batch, B.asarray(eps), imm)
        got, info_np = to_np(B, batch), to_np(B, info)
        depths.update(info_np.num_trajectory_expansions.tolist())
        for c in range(num_chains):
            singles[c], one = kernel(keys[c:c + 1], singles[c], B.asarray(eps[c:c + 1]),
                                     imm[c:c + 1])
            single, one = to_np(B, singles[c]), to_np(B, one)
            for a, b in zip(B.tree_leaves((got, info_np)), B.tree_leaves((single, one))):
                np.testing.assert_allclose(a[c], b[0], rtol=1e-12, atol=1e-12,
                                           err_msg=f"transition {t}, chain {c}")
    assert len(depths) > 1   # chains stopped at different depths, so the masks were exercised


def test_nonfinite_region_is_divergent_and_keeps_the_state(B):
    kernel = compiled(B, "gauss_holes")
    x = np.array([[1.9, 0.0, 0.0]])
    state = hmc.init(B.asarray(x), gauss_holes(B))
    d = DEPTH
    noise = nuts.NUTSNoise(B.asarray([[5.0, 0.0, 0.0]]), B.asarray(np.ones((1, d), bool)),
                           B.full((1, d), 0.5), B.full((1, 2 ** (d - 1)), 0.5))
    keys = transition_keys(B, 0, 0, 1)   # ignored: the noise is given
    new, info = kernel(keys, state, B.asarray([0.1]), B.ones((1, 3)), noise)
    np.testing.assert_array_equal(B.to_numpy(new.position), x)
    np.testing.assert_array_equal(B.to_numpy(new.logdensity), B.to_numpy(state.logdensity))
    assert bool(B.to_numpy(info.is_divergent)[0]) and not bool(B.to_numpy(info.is_turning)[0])
    assert int(B.to_numpy(info.num_nonfinite)[0]) == 1
    assert int(B.to_numpy(info.num_integration_steps)[0]) == 1
    assert int(B.to_numpy(info.num_trajectory_expansions)[0]) == 1
    assert float(B.to_numpy(info.acceptance_rate)[0]) == 0.0


def test_max_tree_depth_caps_the_trajectory(B):
    kernel = compiled(B, "gauss_holes")
    state = hmc.init(B.asarray([[0.1, 0.1, 0.05], [0.2, 0.0, 0.0]]), gauss_holes(B))
    _, info = kernel(transition_keys(B, 5, 0, 2), state, B.asarray([1e-3, 1e-3]),
                     B.ones((2, 3)))
    info = to_np(B, info)
    np.testing.assert_array_equal(info.num_trajectory_expansions, [DEPTH, DEPTH])
    np.testing.assert_array_equal(info.num_integration_steps, [2 ** DEPTH - 1] * 2)
    assert not info.is_turning.any() and not info.is_divergent.any()
    assert np.all(info.acceptance_rate > 0.999)


def test_checkpoint_indices_match_the_trailing_ones(B):
    for n in range(1, 200, 2):
        idx_min, idx_max = checkpoint_indices(n)
        trailing = len(bin(n)) - len(bin(n).rstrip("1"))
        assert int(idx_max) == bin(n).count("1") - 1
        assert int(idx_max) - int(idx_min) + 1 == trailing


def test_bad_arguments_raise(B):
    with pytest.raises(ValueError, match="max_tree_depth"):
        nuts.build_kernel(banana(B), max_tree_depth=0)
    with pytest.raises(ValueError, match="max_tree_depth"):
        nuts.build_kernel(banana(B), max_tree_depth=2.0)
    with pytest.raises(ValueError, match="delta_energy_max"):
        nuts.build_kernel(banana(B), delta_energy_max=-1.0)
    with pytest.raises(ValueError, match="num_chains, dim"):
        hmc.init(B.zeros((3,)), banana(B))


# ------------------------------------------------------------------------------ moments
def diagonal_gaussian(variances):
    def make(B):
        prec = B.asarray(1.0 / np.asarray(variances))

        def logdensity(x):
            return -0.5 * B.sum(prec * x * x)

        return logdensity

    return make


VARIANCES = np.array([0.01, 1.0, 100.0])
# name: (target, covariance, inverse mass matrix of one chain, step size)
MOMENT_CASES = {
    "isotropic": (diagonal_gaussian([1.0, 1.0]), np.eye(2), np.ones(2), 0.9),
    "ill_conditioned": (diagonal_gaussian(VARIANCES), np.diag(VARIANCES), VARIANCES, 0.8),
    "correlated_dense": (correlated, COV, COV, 0.8),
}


def batch_means_mcse(x, num_batches=10):
    """Monte Carlo standard error of the mean of draws x (N, C) by batch means per chain."""
    n = (x.shape[0] // num_batches) * num_batches
    means = x[:n].reshape(num_batches, -1, x.shape[1]).mean(axis=1)   # (batches, C)
    return means.std(ddof=1) / math.sqrt(means.size)


def run_chains(B, kernel, state, step_size, imm, num_draws, seed):
    """Draws (N, C, d) and divergence flags (N, C), the loop compiled where possible."""
    num_chains = B.shape(state.position)[0]
    keys = B.key_data(B.split(B.key(seed), num_draws * num_chains))
    keys = B.asarray(keys.reshape(num_draws, num_chains, 2), dtype=B.dtype("uint32"))
    eps = B.full((num_chains,), step_size)

    def body(st, ks):
        st, info = kernel(ks, st, eps, imm)
        return st, (st.position, info.is_divergent)

    _, (draws, divergent) = B.jit(lambda st, ks: B.scan(body, st, ks))(state, keys)
    return B.to_numpy(draws), B.to_numpy(divergent)


@pytest.mark.parametrize("case", sorted(MOMENT_CASES))
def test_gaussian_moments(B, case):
    target, cov, imm_one, step_size = MOMENT_CASES[case]
    dim, num_chains, num_draws = cov.shape[0], 4, 200
    kernel = nuts.build_kernel(target(B), max_tree_depth=8)
    rng = np.random.default_rng(2)
    x0 = rng.multivariate_normal(np.zeros(dim), cov, size=num_chains)   # start in the target
    imm = np.broadcast_to(imm_one, (num_chains,) + imm_one.shape).copy()
    state = hmc.init(B.asarray(x0), target(B))
    draws, divergent = run_chains(B, kernel, state, step_size, B.asarray(imm), num_draws, 3)
    assert not divergent.any()
    for i in range(dim):
        for j in range(i, dim):
            series = draws[:, :, i] * draws[:, :, j]
            err = abs(series.mean() - cov[i, j]) / batch_means_mcse(series)
            assert err < 4, f"E[x{i} x{j}]: {series.mean()} vs {cov[i, j]} ({err:.1f} MCSE)"
        err = abs(draws[:, :, i].mean()) / batch_means_mcse(draws[:, :, i])
        assert err < 4, f"E[x{i}]: {draws[:, :, i].mean()} ({err:.1f} MCSE)"
