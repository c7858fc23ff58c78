"""Gaussian Euclidean metrics: kinetic energy, velocity, momentum law, U-turn criterion.

Oracles: NumPy linear algebra (M^{-1} p, p^T M^{-1} p / 2, L^{-T} z), the sample covariance of
many momentum draws against M = inv(M^{-1}), and the criterion evaluated by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from agvi.infer.mcmc.metrics import gaussian_euclidean


def random_dense(rng, num_chains, d):
    a = rng.standard_normal((num_chains, d, d))
    return a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d)


def chain_keys(B, seed, num_chains):
    key = B.key(seed)
    keys = [B.fold_in(key, c) for c in range(num_chains)]
    # host keys (torch) stack with NumPy, framework keys with the backend
    return B.stack(keys) if B.is_array(keys[0]) else np.stack(keys)


@pytest.mark.parametrize("dense", [False, True])
def test_velocity_and_kinetic_energy(B, dense):
    rng = np.random.default_rng(0)
    imm = random_dense(rng, 3, 4) if dense else rng.uniform(0.2, 3.0, (3, 4))
    p = rng.standard_normal((3, 4))
    metric = gaussian_euclidean(B.asarray(imm))
    v = np.einsum("cij,cj->ci", imm, p) if dense else imm * p
    np.testing.assert_allclose(B.to_numpy(metric.velocity(B.asarray(p))), v, rtol=1e-13)
    np.testing.assert_allclose(B.to_numpy(metric.kinetic_energy(B.asarray(p))),
                               0.5 * np.sum(p * v, axis=1), rtol=1e-13)
    np.testing.assert_allclose(
        B.to_numpy(metric.kinetic_energy(B.asarray(p), B.asarray(v))),
        0.5 * np.sum(p * v, axis=1), rtol=1e-13)
    # stacks of momenta (C, K, d), as the U-turn checkpoints hold them
    pk = rng.standard_normal((3, 5, 4))
    vk = np.einsum("cij,ckj->cki", imm, pk) if dense else imm[:, None, :] * pk
    np.testing.assert_allclose(B.to_numpy(metric.velocity(B.asarray(pk))), vk, rtol=1e-13)


def test_dense_momentum_uses_inverse_cholesky_transpose(B):
    rng = np.random.default_rng(1)
    imm = random_dense(rng, 2, 3)
    z = rng.standard_normal((2, 3))
    p = B.to_numpy(gaussian_euclidean(B.asarray(imm)).momentum_from_normal(B.asarray(z)))
    for c in range(2):
        chol = np.linalg.cholesky(imm[c])
        np.testing.assert_allclose(p[c], np.linalg.solve(chol.T, z[c]), rtol=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_momentum_covariance_is_the_mass_matrix(B, dense):
    rng = np.random.default_rng(2)
    n = 4000
    if dense:
        one = random_dense(rng, 1, 3)[0]
        mass = np.linalg.inv(one)
    else:
        one = np.array([0.25, 1.0, 4.0])
        mass = np.diag(1.0 / one)
    imm = np.broadcast_to(one, (n,) + one.shape).copy()
    metric = gaussian_euclidean(B.asarray(imm))
    p = B.to_numpy(metric.sample_momentum(B.split(B.key(3), n), B.zeros((n, 3))))
    assert np.abs(p.mean(axis=0)).max() < 4 * np.sqrt(np.diag(mass).max() / n)
    cov = np.cov(p.T)
    # standard error of a sample covariance entry: sqrt((M_ii M_jj + M_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(mass), np.diag(mass)) + mass ** 2) / n)
    assert np.all(np.abs(cov - mass) < 4.5 * se)


def test_momentum_of_a_chain_depends_only_on_its_key(B):
    keys = chain_keys(B, 4, 3)
    metric = gaussian_euclidean(B.ones((3, 2)))
    p = B.to_numpy(metric.sample_momentum(keys, B.zeros((3, 2))))
    for c in range(3):
        one = gaussian_euclidean(B.ones((1, 2))).sample_momentum(keys[c:c + 1], B.zeros((1, 2)))
        np.testing.assert_array_equal(B.to_numpy(one)[0], p[c])
    assert len({tuple(row) for row in p}) == 3


@pytest.mark.parametrize("dense", [False, True])
def test_is_turning(B, dense):
    rng = np.random.default_rng(5)
    imm = random_dense(rng, 6, 3) if dense else rng.uniform(0.2, 3.0, (6, 3))
    left, right, total = (rng.standard_normal((6, 3)) for _ in range(3))
    metric = gaussian_euclidean(B.asarray(imm))
    got = B.to_numpy(metric.is_turning(B.asarray(left), B.asarray(right), B.asarray(total)))

    def vel(p):
        return np.einsum("cij,cj->ci", imm, p) if dense else imm * p

    want = (np.sum(vel(left) * total, 1) <= 0) | (np.sum(vel(right) * total, 1) <= 0)
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    # a straight trajectory does not turn; one that comes back does
    p = np.ones((1, 3))
    ones = B.asarray(np.ones((1, 3)) if not dense else np.eye(3)[None])
    m = gaussian_euclidean(ones)
    assert not B.to_numpy(m.is_turning(B.asarray(p), B.asarray(p), B.asarray(3 * p)))[0]
    assert B.to_numpy(m.is_turning(B.asarray(p), B.asarray(-p), B.asarray(0.5 * p)))[0]


def test_bad_shapes_raise(B):
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        gaussian_euclidean(B.ones((3,)))
    with pytest.raises(ValueError, match="square"):
        gaussian_euclidean(B.ones((2, 3, 4)))
