"""Hamiltonian Monte Carlo with a fixed number of steps or a fixed trajectory length.

Chains live on a leading axis: positions have shape (C, d), and every quantity is computed per
chain, so that chain ``i`` of a C-chain run equals a one-chain run with chain ``i``'s key.

References
----------
Duane, Kennedy, Pendleton and Roweth (1987), "Hybrid Monte Carlo", Physics Letters B 195.
Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, section 5.3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from ...backends import get_backend
from .integrators import IntegratorState, logdensity_and_grad_fn, velocity_verlet
from .metrics import gaussian_euclidean
from .proposal import metropolis_accept, select

__all__ = ["HMCInfo", "HMCNoise", "HMCState", "build_kernel", "draw_noise", "init"]


class HMCState(NamedTuple):
    """The state of a batch of HMC/NUTS chains.

    Attributes
    ----------
    position : Array, shape (C, d)
    logdensity : Array, shape (C,)
    logdensity_grad : Array, shape (C, d)
    """

    position: object
    logdensity: object
    logdensity_grad: object


class HMCInfo(NamedTuple):
    """What one HMC transition did, per chain.

    Attributes
    ----------
    momentum : Array, shape (C, d)
        The momentum drawn at the start of the transition.
    acceptance_rate : Array, shape (C,)
        ``min(1, exp(H_start - H_end))`` (0 where the trajectory became non-finite).
    is_accepted : Array, shape (C,), bool
    is_divergent : Array, shape (C,), bool
        The energy error exceeded ``delta_energy_max`` or became non-finite.
    energy : Array, shape (C,)
        Hamiltonian of the state after the transition (the proposal if accepted, else the
        start with its fresh momentum), as Stan's ``energy__``.
    num_integration_steps : Array, shape (C,), int
        Leapfrog steps taken (fewer than asked where the trajectory became non-finite).
    num_nonfinite : Array, shape (C,), int
        1 where a non-finite log density or gradient was met, else 0.
    """

    momentum: object
    acceptance_rate: object
    is_accepted: object
    is_divergent: object
    energy: object
    num_integration_steps: object
    num_nonfinite: object


class HMCNoise(NamedTuple):
    """The random numbers of one HMC transition (drawn by :func:`draw_noise`).

    Attributes
    ----------
    momentum : Array, shape (C, d)
        ``N(0, M)`` momenta.
    u_accept : Array, shape (C,)
        Uniform draws on [0, 1) for the Metropolis test.
    """

    momentum: object
    u_accept: object


def init(position, logdensity_fn: Callable) -> HMCState:
    """The HMC/NUTS state at ``position``.

    Parameters
    ----------
    position : Array, shape (C, d)
        One row per chain (ravel pytrees first with ``B.ravel_pytree``).
    logdensity_fn : callable
        ``logdensity_fn(x: (d,)) -> scalar`` log density (up to a constant).

    Returns
    -------
    HMCState

    Raises
    ------
    ValueError
        If ``position`` is not of rank 2.
    """
    B = get_backend()
    if B.ndim(position) != 2:
        raise ValueError("position must have shape (num_chains, dim); got shape "
                         f"{B.shape(position)} (add a leading chain axis, e.g. x[None])")
    logdensity, grad = logdensity_and_grad_fn(logdensity_fn)(position)
    return HMCState(position, logdensity, grad)


def draw_noise(keys, position, metric) -> HMCNoise:
    """Draw the momenta and acceptance uniforms of one transition, each chain from its own key.

    Parameters
    ----------
    keys : Array, shape (C, 2)
        One key per chain.
    position : Array, shape (C, d)
        Gives the dimension and dtype.
    metric : EuclideanMetric

    Returns
    -------
    HMCNoise
    """
    B = get_backend()
    d = B.shape(position)[-1]
    dtype = B.dtype_of(position)

    def one(key):
        key_momentum, key_accept = B.split(key, 2)
        return B.normal(key_momentum, (d,), dtype=dtype), B.uniform(key_accept, (), dtype=dtype)

    z, u = B.map(one, keys)
    return HMCNoise(metric.momentum_from_normal(z), u)


def _per_chain(B, x, num_chains, dtype):
    """``x`` (scalar or (C,)) as an Array of shape (C,)."""
    x = B.asarray(x, dtype=dtype) if not B.is_array(x) else x
    if B.ndim(x) == 0:
        return B.broadcast_to(x, (num_chains,))
    return x


def build_kernel(logdensity_fn: Callable, *, num_integration_steps: int | None = None,
                 trajectory_length: float | None = None, delta_energy_max: float = 1000.0,
                 integrator: Callable = velocity_verlet, max_num_steps: int = 1024) -> Callable:
    """An HMC transition kernel batched over chains.

    Parameters
    ----------
    logdensity_fn : callable
        ``logdensity_fn(x: (d,)) -> scalar``, the log density up to a constant.
    num_integration_steps : int, optional
        Leapfrog steps per transition (the same for every chain).
    trajectory_length : float, optional
        Integration time per transition; chain ``c`` takes
        ``min(ceil(trajectory_length / step_size[c]), max_num_steps)`` steps. Exactly one of
        ``num_integration_steps`` and ``trajectory_length`` must be given.
    delta_energy_max : float
        Energy error above which a transition counts as divergent.
    integrator : callable
        ``integrator(logdensity_and_grad, metric) -> Integrator`` (default velocity Verlet).
    max_num_steps : int
        Cap on the steps of a ``trajectory_length`` kernel (guards against a tiny step size).
        The loop itself is a ``while_loop`` over the largest per-chain count, with chains that
        have finished masked out, so no static maximum is compiled in.

    Returns
    -------
    callable
        ``kernel(keys, state, step_size, inverse_mass_matrix, noise=None) -> (HMCState,
        HMCInfo)`` with ``keys`` (C, 2), ``state`` an :class:`HMCState`, ``step_size`` (C,),
        ``inverse_mass_matrix`` (C, d) or (C, d, d). ``noise`` (an :class:`HMCNoise`) replaces
        the draws from ``keys`` (for tests). Pure and fixed-shape: ``B.jit(kernel)`` compiles it.

    Raises
    ------
    ValueError
        If not exactly one of ``num_integration_steps`` and ``trajectory_length`` is given, or
        either is not positive, or ``delta_energy_max`` is not positive.

    Notes
    -----
    A step whose log density or gradient is non-finite ends that chain's trajectory at the last
    finite state; the transition is then divergent and rejected (the chain stays where it
    was), and ``num_nonfinite`` is 1. Nothing is raised.

    References
    ----------
    Neal (2011), "MCMC using Hamiltonian dynamics", section 5.3.2.
    """
    if (num_integration_steps is None) == (trajectory_length is None):
        raise ValueError("give exactly one of num_integration_steps and trajectory_length, got "
                         f"num_integration_steps={num_integration_steps!r}, "
                         f"trajectory_length={trajectory_length!r}")
    if num_integration_steps is not None and (
            not isinstance(num_integration_steps, int) or num_integration_steps < 1):
        raise ValueError("num_integration_steps must be a positive int, got "
                         f"{num_integration_steps!r}")
    if trajectory_length is not None and not trajectory_length > 0:
        raise ValueError(f"trajectory_length must be positive, got {trajectory_length!r}")
    if not isinstance(max_num_steps, int) or max_num_steps < 1:
        raise ValueError(f"max_num_steps must be a positive int, got {max_num_steps!r}")
    if not delta_energy_max > 0:
        raise ValueError(f"delta_energy_max must be positive, got {delta_energy_max!r}")
    B = get_backend()
    value_and_grad = logdensity_and_grad_fn(logdensity_fn)
    inf = math.inf

    def kernel(keys, state, step_size, inverse_mass_matrix, noise=None):
        position = state.position
        num_chains = B.shape(position)[0]
        dtype = B.dtype_of(position)
        metric = gaussian_euclidean(inverse_mass_matrix)
        if noise is None:
            noise = draw_noise(keys, position, metric)
        step_size = _per_chain(B, step_size, num_chains, dtype)
        step = integrator(value_and_grad, metric)
        coefficients = step.prepare(step_size)
        momentum0 = noise.momentum
        energy0 = metric.kinetic_energy(momentum0) - state.logdensity

        if num_integration_steps is not None:
            num_steps = B.full((num_chains,), num_integration_steps, dtype=B.int_dtype)
            longest = num_integration_steps
        else:
            num_steps = B.astype(B.clip(B.ceil(trajectory_length / step_size), 1,
                                        max_num_steps), B.int_dtype)
            longest = B.max(num_steps)

        def cond(carry):
            return carry[0] < longest

        def body(carry):
            i, current, failed, taken = carry
            moving = (i < num_steps) & ~failed
            new = step.apply(current, coefficients)
            finite = B.isfinite(new.logdensity + B.sum(new.logdensity_grad, axis=-1))
            current = select(moving & finite, new, current)
            return i + 1, current, failed | (moving & ~finite), taken + moving

        start = IntegratorState(position, momentum0, state.logdensity, state.logdensity_grad)
        _, end, failed, taken = B.while_loop(
            cond, body, (0, start, B.zeros((num_chains,), dtype=B.dtype("bool")),
                         B.zeros((num_chains,), dtype=B.int_dtype)))

        energy1 = metric.kinetic_energy(end.momentum) - end.logdensity
        log_ratio = energy0 - energy1
        # a non-finite trajectory or energy is divergent and never accepted
        log_ratio = B.where(failed | ~(B.abs(log_ratio) < inf), -inf, log_ratio)
        is_divergent = log_ratio < -delta_energy_max
        acceptance = B.exp(B.clip(log_ratio, max=0.0))
        accept = metropolis_accept(B.log(noise.u_accept), log_ratio)
        new_state = select(accept, HMCState(end.position, end.logdensity, end.logdensity_grad),
                           state)
        info = HMCInfo(momentum0, acceptance, accept, is_divergent,
                       B.where(accept, energy1, energy0), taken, B.astype(failed, B.int_dtype))
        return new_state, info

    return kernel
