"""Euclidean metrics for Hamiltonian Monte Carlo: momentum draws, kinetic energy, U-turn test.

A metric is fixed by the inverse mass matrix ``M^{-1}``, one per chain: diagonal (shape (C, d))
or dense (shape (C, d, d)). The kinetic energy is ``K(p) = p^T M^{-1} p / 2`` and momenta are
drawn from ``N(0, M)``.

References
----------
Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, section 5.4.
Betancourt (2017), "A conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434,
section 4.2 (Euclidean-Gaussian kinetic energies) and appendix A.4.2 (generalised U-turn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ...backends import get_backend

__all__ = ["EuclideanMetric", "gaussian_euclidean"]


class EuclideanMetric(NamedTuple):
    """A Gaussian Euclidean metric batched over chains (built by :func:`gaussian_euclidean`).

    Attributes
    ----------
    inverse_mass_matrix : Array, shape (C, d) or (C, d, d)
        The diagonal of ``M^{-1}`` per chain, or the dense ``M^{-1}`` per chain.
    is_dense : bool
        Whether ``inverse_mass_matrix`` is dense.
    sample_momentum : callable
        ``sample_momentum(keys, position) -> Array (C, d)``: one ``N(0, M)`` draw per chain from
        that chain's key (``keys``: shape (C, 2)); ``position`` (C, d) gives shape and dtype.
    momentum_from_normal : callable
        ``momentum_from_normal(z) -> Array (C, d)``: the ``N(0, M)`` momentum made from standard
        normal draws ``z`` (C, d): ``z / sqrt(M^{-1})`` (diagonal) or ``L^{-T} z`` where
        ``M^{-1} = L L^T`` (dense; then ``Cov(p) = L^{-T} L^{-1} = M``).
    velocity : callable
        ``velocity(momentum) -> M^{-1} p`` for momentum of shape (C, d) or (C, ..., d).
    kinetic_energy : callable
        ``kinetic_energy(momentum, velocity=None) -> Array (C,)``: ``p^T M^{-1} p / 2``
        (pass ``velocity = M^{-1} p`` when it is at hand to save the product).
    is_turning : callable
        ``is_turning(momentum_left, momentum_right, momentum_sum) -> Array (C,) bool``: the
        generalised U-turn criterion (Betancourt 2017, A.4.2) in Stan's form, true where
        ``(M^{-1} p_left) . rho <= 0`` or ``(M^{-1} p_right) . rho <= 0`` with ``rho`` the sum
        of the momenta of the trajectory, both ends included.
    """

    inverse_mass_matrix: object
    is_dense: bool
    sample_momentum: Callable
    momentum_from_normal: Callable
    velocity: Callable
    kinetic_energy: Callable
    is_turning: Callable


def gaussian_euclidean(inverse_mass_matrix) -> EuclideanMetric:
    """The Gaussian Euclidean metric of a diagonal or dense inverse mass matrix, per chain.

    Parameters
    ----------
    inverse_mass_matrix : Array, shape (C, d) or (C, d, d)
        Per chain, the diagonal of ``M^{-1}`` (positive entries) or the dense symmetric
        positive-definite ``M^{-1}``.

    Returns
    -------
    EuclideanMetric
        Functions batched over the leading chain axis (see :class:`EuclideanMetric`).

    Raises
    ------
    ValueError
        If ``inverse_mass_matrix`` is not of rank 2 or 3, or a dense one is not square.

    Notes
    -----
    Dense momenta use the Cholesky factor of the *inverse* mass matrix, ``M^{-1} = L L^T``, and
    ``p = L^{-T} z`` (one triangular solve per draw), so the mass matrix itself is never formed.
    The factor is computed once per call of this function (once per transition in the kernels).

    References
    ----------
    Betancourt (2017), arXiv:1701.02434, section 4.2 and appendix A.4.2.
    """
    B = get_backend()
    imm = B.asarray(inverse_mass_matrix)
    ndim = B.ndim(imm)
    if ndim not in (2, 3):
        raise ValueError("inverse_mass_matrix must have shape (C, d) (diagonal) or (C, d, d) "
                         f"(dense), one per chain; got shape {B.shape(imm)}")
    shape = B.shape(imm)
    if ndim == 3 and shape[1] != shape[2]:
        raise ValueError(f"a dense inverse_mass_matrix must be square per chain, got {shape}")
    is_dense = ndim == 3

    if is_dense:
        def velocity_fn(momentum):
            if B.ndim(momentum) == 2:
                return B.squeeze(B.matmul(imm, B.expand_dims(momentum, -1)), -1)
            # (C, ..., d): M^{-1} is symmetric, so p M^{-1} is (M^{-1} p)^T row by row
            lead = B.shape(momentum)
            flat = B.reshape(momentum, (lead[0], -1, lead[-1]))
            return B.reshape(B.matmul(flat, imm), lead)

        chol = B.cholesky(imm)

        def momentum_from_normal(z):
            return B.squeeze(B.solve_triangular(chol, B.expand_dims(z, -1), lower=True,
                                                trans=True), -1)
    else:
        def velocity_fn(momentum):
            if B.ndim(momentum) == 2:
                return imm * momentum
            extra = B.ndim(momentum) - 2
            return B.reshape(imm, (shape[0],) + (1,) * extra + (shape[1],)) * momentum

        inv_sqrt = 1.0 / B.sqrt(imm)

        def momentum_from_normal(z):
            return z * inv_sqrt

    def sample_momentum(keys, position):
        d = B.shape(position)[-1]
        dtype = B.dtype_of(position)
        z = B.map(lambda k: B.normal(k, (d,), dtype=dtype), keys)
        return momentum_from_normal(z)

    def kinetic_energy(momentum, velocity=None):
        v = velocity_fn(momentum) if velocity is None else velocity
        return 0.5 * B.sum(momentum * v, axis=-1)

    def is_turning(momentum_left, momentum_right, momentum_sum):
        v_left = velocity_fn(momentum_left)
        v_right = velocity_fn(momentum_right)
        left = B.sum(v_left * momentum_sum, axis=-1)
        right = B.sum(v_right * momentum_sum, axis=-1)
        return B.logical_or(left <= 0, right <= 0)

    return EuclideanMetric(imm, is_dense, sample_momentum, momentum_from_normal, velocity_fn,
                           kinetic_energy, is_turning)
