"""Streaming (Welford) estimates of the posterior variance or covariance for the mass matrix.

The estimates are accumulated over the draws of a slow adaptation window and regularised as Stan
does, shrinking towards a small multiple of the identity:

``Sigma = n / (n + 5) * S + 1e-3 * 5 / (n + 5) * I``

with ``S`` the sample variance (or covariance, denominator ``n - 1``) of the ``n`` draws. The
inverse mass matrix is set to ``Sigma``.

States are batched over groups of chains: with one group per chain every chain gets its own
estimate (state leaves of leading size C); with a single group (leading size 1) the draws of all
chains are pooled, the C draws of one transition entering together by the pairwise update of
Chan, Golub and LeVeque. Draws with a non-finite coordinate are skipped, so a chain that met
a non-finite log density cannot poison the estimate.

References
----------
Welford (1962), "Note on a method for calculating corrected sums of squares and products",
Technometrics 4.
Chan, Golub and LeVeque (1979), "Updating formulae and a pairwise algorithm for computing sample
variances", Stanford CS report STAN-CS-79-773.
Stan Development Team, Stan Reference Manual, "HMC algorithm parameters: Euclidean metric"
(windowed adaptation and the regularisation above).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ....backends import get_backend

__all__ = ["WelfordState", "welford_covariance", "welford_variance"]


class WelfordState(NamedTuple):
    """Running moments of the draws, per group of chains.

    Attributes
    ----------
    mean : Array, shape (G, d)
    m2 : Array, shape (G, d) (diagonal) or (G, d, d) (dense)
        Sums of squared (or outer products of) deviations from the running mean.
    count : Array, shape (G,)
        Number of draws accumulated (a float counter).
    """

    mean: object
    m2: object
    count: object


def _welford(dense: bool, shrinkage: float, jitter: float) -> tuple[Callable, Callable, Callable]:
    B = get_backend()

    def init(num_groups: int, dim: int, dtype=None):
        dtype = dtype or B.float_dtype
        shape = (num_groups, dim, dim) if dense else (num_groups, dim)
        return WelfordState(B.zeros((num_groups, dim), dtype=dtype), B.zeros(shape, dtype=dtype),
                            B.zeros((num_groups,), dtype=dtype))

    def update(state, x):
        groups = B.shape(state.mean)[0]
        num, dim = B.shape(x)
        if groups not in (1, num):
            raise ValueError(f"x must hold one draw per chain, shape ({groups}, d), or the "
                             f"draws of all chains for a pooled state; got shape {B.shape(x)} "
                             f"for a state of {groups} group(s)")
        x = B.reshape(x, (groups, num // groups, dim))               # (G, k, d)
        finite = B.all(B.isfinite(x), axis=-1)                        # (G, k)
        weight = B.astype(finite, B.dtype_of(x))
        x = B.where(finite[..., None], x, 0.0)
        n_b = B.sum(weight, axis=1)                                   # (G,)
        safe_n_b = B.maximum(n_b, 1.0)
        mean_b = B.sum(weight[..., None] * x, axis=1) / safe_n_b[:, None]
        dev = (x - mean_b[:, None, :]) * weight[..., None]            # zero for skipped rows
        if dense:
            m2_b = B.einsum("gki,gkj->gij", dev, dev)
        else:
            m2_b = B.sum(dev * dev, axis=1)
        n_a = state.count
        n = n_a + n_b
        safe_n = B.maximum(n, 1.0)
        delta = mean_b - state.mean
        mean = state.mean + delta * (n_b / safe_n)[:, None]
        factor = n_a * n_b / safe_n
        if dense:
            m2 = state.m2 + m2_b + factor[:, None, None] * (delta[:, :, None] * delta[:, None, :])
        else:
            m2 = state.m2 + m2_b + factor[:, None] * delta * delta
        return WelfordState(mean, m2, n)

    def final(state, default=None):
        n = state.count
        denominator = B.maximum(n - 1.0, 1.0)
        shrink = n / (n + shrinkage)
        add = jitter * shrinkage / (n + shrinkage)
        if dense:
            dim = B.shape(state.mean)[-1]
            eye = B.eye(dim, dtype=B.dtype_of(state.mean))
            estimate = (shrink / denominator)[:, None, None] * state.m2 + add[:, None, None] * eye
            ok = (n >= 2.0)[:, None, None]
        else:
            estimate = (shrink / denominator)[:, None] * state.m2 + add[:, None]
            ok = (n >= 2.0)[:, None]
        if default is None:
            return estimate
        return B.where(ok, estimate, default)

    return init, update, final


_DOC = """{title}

    Parameters
    ----------
    shrinkage : float
        The ``5`` of Stan's regularisation ``n / (n + 5) S + 1e-3 * 5 / (n + 5) I``.
    jitter : float
        The ``1e-3`` of that regularisation.

    Returns
    -------
    init : callable
        ``init(num_groups, dim, dtype=None) -> WelfordState``: ``num_groups`` is C for one
        estimate per chain, 1 to pool all chains.
    update : callable
        ``update(state, x) -> WelfordState`` with ``x`` of shape (C, d), one draw per chain;
        rows with a non-finite entry are skipped.
    final : callable
        ``final(state, default=None) -> Array`` of shape {final_shape}: the regularised
        estimate; where fewer than two draws were accumulated it is ``default`` (an Array of
        that shape) when given.

    Raises
    ------
    ValueError
        From ``update``, if ``x`` has neither one row per group nor (pooled) any rows.

    References
    ----------
    Welford (1962); Chan, Golub and LeVeque (1979); Stan Reference Manual, "Euclidean metric".
    """


def welford_variance(shrinkage: float = 5.0, jitter: float = 1e-3):
    return _welford(False, shrinkage, jitter)


def welford_covariance(shrinkage: float = 5.0, jitter: float = 1e-3):
    return _welford(True, shrinkage, jitter)


welford_variance.__doc__ = _DOC.format(
    title="Streaming diagonal variance estimate as an ``(init, update, final)`` triple.",
    final_shape="(G, d)")
welford_covariance.__doc__ = _DOC.format(
    title="Streaming dense covariance estimate as an ``(init, update, final)`` triple.",
    final_shape="(G, d, d)")
