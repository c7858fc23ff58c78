"""Symplectic integrators of Hamiltonian dynamics, batched over chains.

States hold positions and momenta of shape (C, d) (one row per chain) together with the log
density and its gradient at the position, so that each step costs exactly one gradient
evaluation. Step sizes are per chain, shape (C,), and may be negative (integration backwards in
time, as NUTS does when it extends a trajectory to the left).

The integrators do not test for non-finite values: a non-finite log density or gradient gives a
non-finite energy at the new state, which the kernels (:mod:`.hmc`, :mod:`.nuts`) treat as a
divergence: the state is flagged, never integrated from again, and never accepted.

References
----------
Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, section 5.2.3 (leapfrog).
Leimkuhler and Reich (2004), "Simulating Hamiltonian Dynamics", chapter 4 (Stoermer-Verlet).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ...backends import get_backend

__all__ = ["BoundLogDensity", "CompiledLogDensity", "IntegratorState", "Integrator",
           "logdensity_and_grad_fn", "velocity_verlet"]


class IntegratorState(NamedTuple):
    """A point of phase space with the log density and its gradient at the position.

    Attributes
    ----------
    position : Array, shape (C, d)
    momentum : Array, shape (C, d)
    logdensity : Array, shape (C,)
    logdensity_grad : Array, shape (C, d)
    """

    position: object
    momentum: object
    logdensity: object
    logdensity_grad: object


class Integrator(NamedTuple):
    """One integrator step split in a per-step-size part and a per-step part.

    ``prepare(step_size)`` computes the coefficients of a signed per-chain step size (shape (C,)
    or (C, 1)) once; ``apply(state, coefficients)`` takes one step with them. Kernels that take
    many steps with one step size (a NUTS subtree, an HMC trajectory) prepare once and apply many
    times, which keeps the per-step work (and so the Python overhead on eager backends) minimal.
    ``integrator(state, step_size)`` does both.

    Attributes
    ----------
    prepare : callable
        ``prepare(step_size) -> coefficients`` (a tuple of Arrays).
    apply : callable
        ``apply(state: IntegratorState, coefficients) -> IntegratorState``.
    """

    prepare: Callable
    apply: Callable

    def __call__(self, state, step_size):
        """One step of size ``step_size`` (Array (C,) or (C, 1), signed) from ``state``."""
        return self.apply(state, self.prepare(step_size))


class CompiledLogDensity:
    """A log density with data, ``fn(x, args)``, whose gradients compile once for many data.

    Samplers build their kernels again for each block of transitions with the data bound
    (:meth:`bind`); the value-and-gradient functions are made once here, with the data as an
    input, so an eager framework that traces them (``B.compile_pure``: torch) traces once per
    shape of the inputs, not once per block, and never freezes the data into a graph.

    Parameters
    ----------
    fn : callable
        ``fn(x, args) -> scalar`` for one point ``x`` of shape (d,) and ``args`` a pytree of
        Arrays and Python scalars (the data), written with the active backend's operations.
    """

    def __init__(self, fn: Callable):
        B = get_backend()
        self.fn = fn
        # a compiling backend compiles the whole kernel around these; nothing to add there
        compile_ = (lambda f: f) if B.compiles_control_flow else B.compile_pure

        def summed(position, args):
            values = B.vmap(fn, in_axes=(0, None))(position, args)
            return B.sum(values), values

        self.value_and_grad_one = compile_(B.value_and_grad(fn))
        self.value_and_grad_batched = compile_(B.value_and_grad(summed, has_aux=True))

    def bind(self, args) -> BoundLogDensity:
        """The one-point log density ``x -> fn(x, args)`` (a :class:`BoundLogDensity`)."""
        return BoundLogDensity(self, args)


class BoundLogDensity:
    """``x -> fn(x, args)`` of a :class:`CompiledLogDensity`, with its compiled gradients.

    Calling it gives the log density of one point ``x`` (d,); :func:`logdensity_and_grad_fn`
    and the NUTS kernel use :meth:`value_and_grad_one` and :meth:`value_and_grad` instead of
    differentiating it again.
    """

    def __init__(self, compiled: CompiledLogDensity, args):
        self.compiled, self.args = compiled, args
        self._host = {}   # (shape, dtype) -> host_value_and_grad's function

    def __call__(self, x):
        return self.compiled.fn(x, self.args)

    def value_and_grad_one(self, x):
        """``(logdensity (), grad (d,))`` at one point ``x`` (d,)."""
        return self.compiled.value_and_grad_one(x, self.args)

    def host_value_and_grad(self, x):
        """The value and gradient between host arrays shaped like ``x`` (NumPy, (d,) or
        (C, d)): ``call(x) -> [logdensity, grad]`` with NumPy leaves of shapes () and (d,), or
        (C,) and (C, d) (see ``Backend.host_function``), for the eager NUTS transition."""
        key = (x.shape, x.dtype)
        call = self._host.get(key)
        if call is None:
            B = get_backend()
            if x.ndim == 1:
                call = B.host_function(self.compiled.value_and_grad_one, x, self.args)
            elif not B.has_vmap:   # one point at a time, as _over_chains does; stacked
                # with np.array (through _over_chains' B.stack: 5% more a NUTS step)
                one = self.host_value_and_grad(x[0])

                def call(x):
                    values = [one(point) for point in x]
                    return (np.array([value for value, _ in values]),
                            np.array([grad for _, grad in values]))
            else:
                batched = B.host_function(self.compiled.value_and_grad_batched, x, self.args)
                call = lambda x: batched(x)[1:]   # noqa: E731  (leaves (sum, values, grad))
            self._host[key] = call
        return call

    def value_and_grad(self, position):
        """``(logdensity (C,), grad (C, d))`` at ``position`` (C, d), as
        :func:`logdensity_and_grad_fn` computes them."""
        return _over_chains(get_backend(), self.value_and_grad_one,
                            lambda p: self.compiled.value_and_grad_batched(p, self.args),
                            position)


def _over_chains(B, value_and_grad_one, value_and_grad_batched, position):
    """``(logdensity (C,), grad (C, d))`` at ``position`` (C, d): one chain directly (no
    ``vmap``: much cheaper on eager backends), else the batched ``((sum, values), grad)``.

    Without a native ``vmap`` (NumPy + autograd) the batched function is a loop over the points
    recorded on one tape: one tape per point costs less (gaussian100, 4 chains: 4 x 81 us
    against 470 us), so the points are evaluated one at a time there."""
    num_chains = B.shape(position)[0]
    if num_chains == 1:
        logdensity, grad = value_and_grad_one(position[0])
        return B.reshape(logdensity, (1,)), grad[None]
    if not B.has_vmap:
        values = [value_and_grad_one(position[c]) for c in range(num_chains)]
        return (B.stack([value for value, _ in values]),
                B.stack([grad for _, grad in values]))
    (_, logdensity), grad = value_and_grad_batched(position)
    return logdensity, grad


def logdensity_and_grad_fn(logdensity_fn: Callable) -> Callable:
    """Batch a one-point log density over chains, with its gradient.

    Parameters
    ----------
    logdensity_fn : callable
        ``logdensity_fn(x) -> scalar`` for one point ``x`` of shape (d,), written with the active
        backend's operations.

    Returns
    -------
    callable
        ``fn(position) -> (logdensity, grad)`` for ``position`` of shape (C, d), returning
        Arrays of shapes (C,) and (C, d). With one chain the density is called directly on
        ``position[0]`` (no ``vmap``: much cheaper on eager backends); otherwise the gradient
        of the sum over chains of the vmapped density (chains are independent, so row ``c`` of
        that gradient is chain ``c``'s): one reverse pass for all chains, which eager torch
        runs with plain autograd (about half the cost of ``vmap(value_and_grad)`` through
        torch.func) and JAX compiles to the same program. A :class:`BoundLogDensity` gives its
        own compiled function.
    """
    if isinstance(logdensity_fn, BoundLogDensity):
        return logdensity_fn.value_and_grad
    B = get_backend()
    value_and_grad = B.value_and_grad(logdensity_fn)
    vmapped = B.vmap(logdensity_fn)

    def summed(position):
        values = vmapped(position)
        return B.sum(values), values

    batched = B.value_and_grad(summed, has_aux=True)

    def fn(position):
        return _over_chains(B, value_and_grad, batched, position)

    return fn


def velocity_verlet(logdensity_and_grad: Callable, metric) -> Integrator:
    """The velocity Verlet (leapfrog) integrator.

    One step of size ``eps`` (per chain) maps ``(x, p)`` with gradient ``g = grad log pi(x)`` to

    ``p' = p + eps/2 g;  x_new = x + eps M^{-1} p';  p_new = p' + eps/2 grad log pi(x_new)``.

    It is symplectic, time reversible (a step of ``-eps`` from ``(x_new, p_new)`` returns to
    ``(x, p)`` up to rounding) and has a global energy error of order ``eps**2``.

    Parameters
    ----------
    logdensity_and_grad : callable
        ``fn(position (C, d)) -> (logdensity (C,), grad (C, d))``, e.g. from
        :func:`logdensity_and_grad_fn`.
    metric : EuclideanMetric
        From :func:`agvi.infer.mcmc.metrics.gaussian_euclidean`; supplies ``M^{-1} p``.

    Returns
    -------
    Integrator
        ``integrator(state, step_size)`` with ``state`` an :class:`IntegratorState` (all Arrays
        with leading chain axis C) and ``step_size`` of shape (C,) or (C, 1), possibly negative.
        Non-finite values are passed through unchecked (see the module docstring).

    References
    ----------
    Neal (2011), "MCMC using Hamiltonian dynamics", eqs. 5.18-5.20.
    """
    B = get_backend()
    if metric.is_dense:
        def prepare(step_size):
            eps = step_size[:, None] if B.ndim(step_size) == 1 else step_size
            return 0.5 * eps, eps

        def position_update(position, momentum, coefficient):
            return position + coefficient * metric.velocity(momentum)
    else:
        imm = metric.inverse_mass_matrix

        def prepare(step_size):
            eps = step_size[:, None] if B.ndim(step_size) == 1 else step_size
            # eps * M^{-1} folded once: the position update is then one multiply-add
            return 0.5 * eps, eps * imm

        def position_update(position, momentum, coefficient):
            return position + coefficient * momentum

    def apply(state, coefficients):
        half, coefficient = coefficients
        momentum = state.momentum + half * state.logdensity_grad
        position = position_update(state.position, momentum, coefficient)
        logdensity, grad = logdensity_and_grad(position)
        momentum = momentum + half * grad
        return IntegratorState(position, momentum, logdensity, grad)

    return Integrator(prepare, apply)
