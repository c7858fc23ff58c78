"""A first step size for dual averaging: Hoffman and Gelman's heuristic (their Algorithm 4).

From the current position and a fresh momentum, one leapfrog step of size ``eps`` is taken and
the acceptance ratio ``a = exp(H0 - H1)`` computed. If ``a > 1/2`` the step size is doubled until
``a`` falls below 1/2; otherwise it is halved until ``a`` rises above 1/2. The first step size
that crosses the threshold is returned. Every chain runs its own search (masks stop the chains
that are done), and the loop is a ``B.while_loop``, so it compiles on JAX.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithm 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ....backends import get_backend
from ..integrators import IntegratorState, logdensity_and_grad_fn, velocity_verlet
from ..metrics import gaussian_euclidean

__all__ = ["find_reasonable_step_size"]


def find_reasonable_step_size(keys, state, logdensity_fn: Callable, inverse_mass_matrix,
                              step_size, *, integrator: Callable = velocity_verlet,
                              target_log_ratio: float = math.log(0.5),
                              max_iterations: int = 100, logdensity_and_grad=None):
    """Per-chain step size at which one leapfrog step has acceptance ratio near 1/2.

    Parameters
    ----------
    keys : Array, shape (C, 2)
        One key per chain (for the momentum draw).
    state : HMCState
        ``position`` (C, d), ``logdensity`` (C,), ``logdensity_grad`` (C, d).
    logdensity_fn : callable
        ``logdensity_fn(x: (d,)) -> scalar``, the log density (unused when
        ``logdensity_and_grad`` is given).
    inverse_mass_matrix : Array, shape (C, d) or (C, d, d)
    step_size : Array, shape (C,)
        Starting step sizes (positive).
    integrator : callable
        ``integrator(logdensity_and_grad, metric) -> Integrator`` (default velocity Verlet).
    target_log_ratio : float
        ``log`` of the threshold on ``exp(H0 - H1)`` (Algorithm 4: ``log(1/2)``).
    max_iterations : int
        At most this many doublings or halvings per chain (a step size of ``2**100`` times
        the start means the density is flat in the direction drawn).
    logdensity_and_grad : callable, optional
        The batched ``fn(position (C, d)) -> (logdensity (C,), grad (C, d))`` to use instead of
        one built from ``logdensity_fn``.

    Returns
    -------
    Array, shape (C,)
        The step sizes. A non-finite energy after the step counts as a ratio of 0 (so the step
        size is halved), which keeps the search away from regions where the density overflows.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 4.
    """
    B = get_backend()
    if logdensity_and_grad is None:
        logdensity_and_grad = logdensity_and_grad_fn(logdensity_fn)
    metric = gaussian_euclidean(inverse_mass_matrix)
    step = integrator(logdensity_and_grad, metric)
    momentum = metric.sample_momentum(keys, state.position)
    energy0 = metric.kinetic_energy(momentum) - state.logdensity
    start = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
    neg_inf = -math.inf

    def log_ratio(eps):
        new = step(start, eps)
        value = energy0 - (metric.kinetic_energy(new.momentum) - new.logdensity)
        return B.where(value > neg_inf, value, neg_inf)    # NaN -> -inf

    eps0 = step_size
    ratio0 = log_ratio(eps0)
    increase = ratio0 > target_log_ratio
    # (a Python-float where would be float64 on NumPy: keep the step size's dtype)
    factor = B.where(increase, 2.0 * B.ones_like(eps0), 0.5 * B.ones_like(eps0))

    def crossed(ratio):
        return B.where(increase, ~(ratio > target_log_ratio), ~(ratio < target_log_ratio))

    def cond(carry):
        i, _, done = carry
        return B.any(~done) & (i < max_iterations)

    def body(carry):
        i, eps, done = carry
        new_eps = B.where(done, eps, eps * factor)
        return i + 1, new_eps, done | crossed(log_ratio(new_eps))

    _, eps, _ = B.while_loop(cond, body, (0, eps0, crossed(ratio0)))
    return eps
