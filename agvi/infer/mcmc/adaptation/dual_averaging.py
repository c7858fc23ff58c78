"""Dual averaging of the step size (Nesterov 2009, as adapted by Hoffman and Gelman 2014).

The step size is tuned during warmup so that the mean acceptance statistic of the transitions
(Stan's ``accept_stat__``) approaches ``target_accept_prob``. After ``m`` updates with
acceptance statistics ``alpha_1 .. alpha_m``:

``H_m = (1 - 1/(m + t0)) H_{m-1} + (delta - alpha_m) / (m + t0)``
``log eps_m = mu - sqrt(m) / gamma * H_m``
``log epsbar_m = m**(-kappa) log eps_m + (1 - m**(-kappa)) log epsbar_{m-1}``

with ``H_0 = 0`` and ``log epsbar_0 = 0``; ``eps_m`` is used by the next transition and
``epsbar_m`` (the averaged iterate) is the step size kept after warmup.

Everything is batched over chains (states hold Arrays of shape (C,)); pooled adaptation uses one
state of shape (1,) fed with the chains' mean acceptance.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler: adaptively setting path lengths in
Hamiltonian Monte Carlo", JMLR 15, section 3.2 and Algorithm 6.
Nesterov (2009), "Primal-dual subgradient methods for convex problems", Mathematical Programming
120.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from ....backends import get_backend

__all__ = ["DualAveragingState", "dual_averaging"]


class DualAveragingState(NamedTuple):
    """The state of dual averaging, per chain.

    Attributes
    ----------
    log_step_size : Array, shape (C,)
        ``log eps_m``: the step size the next transition uses.
    log_step_size_avg : Array, shape (C,)
        ``log epsbar_m``: the averaged iterate (the final step size).
    step : Array, shape (C,)
        ``m``, the number of updates so far (a float counter).
    avg_error : Array, shape (C,)
        ``H_m``, the running average of ``target - accept_prob``.
    mu : Array, shape (C,)
        The point the iterates shrink towards, ``log(10 * eps_0)``.
    """

    log_step_size: object
    log_step_size_avg: object
    step: object
    avg_error: object
    mu: object


def dual_averaging(target_accept_prob: float = 0.8, gamma: float = 0.05, t0: float = 10.0,
                   kappa: float = 0.75) -> tuple[Callable, Callable, Callable]:
    """Dual averaging step-size adaptation as a pure ``(init, update, final)`` triple.

    Parameters
    ----------
    target_accept_prob : float
        ``delta``, the acceptance statistic aimed at, in (0, 1).
    gamma : float
        Regularisation scale (> 0): larger values let ``log eps`` move less far from ``mu``.
    t0 : float
        Offset (>= 0) that damps the first iterations.
    kappa : float
        Decay exponent of the averaging weights, in (0.5, 1].

    Returns
    -------
    init : callable
        ``init(step_size) -> DualAveragingState`` for ``step_size`` an Array of shape (C,)
        (positive); sets ``mu = log(10 * step_size)``.
    update : callable
        ``update(state, accept_prob) -> DualAveragingState`` with ``accept_prob`` of shape
        (C,); non-finite values count as 0 (a transition that went non-finite accepted
        nothing), values are clipped to [0, 1].
    final : callable
        ``final(state) -> Array (C,)``: the averaged step size ``exp(log epsbar_m)``; before
        any update it is ``exp(log eps_0)``.

    Raises
    ------
    ValueError
        If a parameter lies outside the range given above.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 6 (equation 6).
    """
    if not 0.0 < target_accept_prob < 1.0:
        raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")
    if not t0 >= 0:
        raise ValueError(f"t0 must be non-negative, got {t0!r}")
    if not 0.5 < kappa <= 1.0:
        raise ValueError(f"kappa must lie in (0.5, 1], got {kappa!r}")
    B = get_backend()
    log10 = math.log(10.0)

    def init(step_size):
        log_eps = B.log(step_size)
        zeros = B.zeros_like(log_eps)
        return DualAveragingState(log_eps, zeros, zeros, zeros, log_eps + log10)

    def update(state, accept_prob):
        accept_prob = B.where(B.isfinite(accept_prob), B.clip(accept_prob, 0.0, 1.0), 0.0)
        m = state.step + 1.0
        weight = 1.0 / (m + t0)
        avg_error = (1.0 - weight) * state.avg_error + weight * (target_accept_prob - accept_prob)
        log_eps = state.mu - B.sqrt(m) / gamma * avg_error
        eta = m ** (-kappa)
        log_eps_avg = eta * log_eps + (1.0 - eta) * state.log_step_size_avg
        return DualAveragingState(log_eps, log_eps_avg, m, avg_error, state.mu)

    def final(state):
        return B.exp(B.where(state.step > 0, state.log_step_size_avg, state.log_step_size))

    return init, update, final
