"""Borch-style MCMC step functions for users who keep their own sampling loop.

These mirror the step functions of the borch library: the parameters are a list of arrays,
and ``closure()`` returns the **negative** log density (the potential energy) at their current
values. One call makes one transition from the current values and writes the new ones back:

>>> import numpy as np
>>> import agvi
>>> from agvi.infer.mcmc import borch
>>> B = agvi.get_backend()
>>> parameters = [B.zeros(2)]
>>> def closure():
...     return 0.5 * B.sum(parameters[0] ** 2)
>>> eps, eps_bar, h_bar = borch.find_reasonable_epsilon(parameters, closure, key=B.key(0))
>>> for m in range(1, 21):
...     accept, _ = borch.nuts_step(eps, parameters, closure, key=B.key(m))
...     eps, eps_bar, h_bar = borch.dual_averaging(accept, m, 1.0, eps_bar, h_bar)
>>> B.shape(parameters[0])
(2,)

How the closure is evaluated at other points: the step puts trial values into the entries of
the list ``parameters`` (``parameters[i] = value``), calls ``closure()`` and restores them, and
differentiates that with the backend's ``value_and_grad``. So the closure must read the values
**through the list** (``parameters[0]``, ``for p in parameters``), as in the example: a closure
that holds its own references to the arrays sees no change.

After the step the list holds the new values: on backends with mutable arrays that offer an
in-place copy (``Backend.assign_``; torch leaf tensors with ``requires_grad``) the original
arrays are overwritten in place (outside the autograd tape), so other references to them see
the new values; otherwise the list entries are replaced. The new values are returned as well.

The steps are built on the batched kernels of :mod:`.hmc` and :mod:`.nuts` with one chain and a
unit (identity) mass matrix. On JAX each kind of step is compiled once per closure, list of
parameters and shapes (a few are cached), so a Python loop of steps runs compiled steps.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithms 4 (reasonable
epsilon), 6 (dual averaging) and 3 (NUTS); Neal (2011), "MCMC using Hamiltonian dynamics".
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ...backends import get_backend
from . import hmc as hmc_module
from . import nuts as nuts_module
from .adaptation.step_size import find_reasonable_step_size

__all__ = ["dual_averaging", "find_reasonable_epsilon", "hmc_step", "nuts_step"]


def _check(parameters, closure):
    if not isinstance(parameters, list) or not parameters:
        raise TypeError("parameters must be a non-empty list of arrays (the closure reads the "
                        f"values through it), got {type(parameters).__name__}")
    if not callable(closure):
        raise TypeError(f"closure must be callable, got {type(closure).__name__}")


def _key(B, key):
    if key is None:
        # a fresh seed per call (like borch's global RNG); pass `key` to reproduce a step
        return B.key(int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0]))
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return B.key(int(key))
    return key


class _Flat:
    """Ravel the list of parameters into one vector (d,) and evaluate the closure at vectors."""

    def __init__(self, B, parameters, closure):
        self.B, self.parameters, self.closure = B, parameters, closure
        self.originals = list(parameters)
        self.shapes = [tuple(B.shape(p)) for p in parameters]
        self.sizes = [int(math.prod(s)) for s in self.shapes]
        self.dtype = B.dtype_of(parameters[0])

    def ravel(self):
        B = self.B
        flat = B.concatenate([B.reshape(B.stop_gradient(p), (-1,)) for p in self.originals],
                             axis=0)
        return B.astype(flat, self.dtype)

    def unravel(self, flat):
        B, out, start = self.B, [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            out.append(B.reshape(flat[start:start + size], shape))
            start += size
        return out

    def logdensity(self, x):
        """``-closure()`` with the list entries set to the pieces of ``x`` (then restored)."""
        saved = list(self.parameters)
        self.parameters[:] = self.unravel(x)
        try:
            return -self.closure()
        finally:
            self.parameters[:] = saved

    def write_back(self, flat):
        """Put the new values into ``parameters`` (in place where the backend can) and return
        them as a list."""
        B = self.B
        new = self.unravel(flat)
        for i, (old, value) in enumerate(zip(self.originals, new, strict=True)):
            # in place where arrays are mutable (B.has_mutable_arrays), else the new value
            self.parameters[i] = B.assign_(old, B.astype(value, B.dtype_of(old)))
        return list(self.parameters)


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8


def _runner(B, flat, kind, settings):
    """``run(keys (1, 2), position (1, d), step_size (1,)) -> (position (d,), statistic)`` for
    one transition (``kind`` "hmc" or "nuts") or the step-size search ("epsilon").

    On backends that compile, the jitted runner is kept (a few of them, least recently used
    first out) per closure, parameter list, shapes and settings, so a loop of steps compiles
    once.
    """
    def run(keys, position, step_size):
        state = hmc_module.init(position, flat.logdensity)
        imm = B.ones(B.shape(position), dtype=B.dtype_of(position))
        if kind == "epsilon":
            return position[0], find_reasonable_step_size(keys, state, flat.logdensity, imm,
                                                          step_size)[0]
        if kind == "hmc":
            kernel = hmc_module.build_kernel(flat.logdensity, num_integration_steps=settings[0])
        else:
            kernel = nuts_module.build_kernel(flat.logdensity, max_tree_depth=settings[0],
                                              delta_energy_max=settings[1])
        new_state, info = kernel(keys, state, step_size, imm)
        return new_state.position[0], info.acceptance_rate[0]

    if not B.has_jit:
        return run
    key = (flat.closure, id(flat.parameters), tuple(flat.shapes), str(flat.dtype), kind,
           settings)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key][0]
    jitted = B.jit(run)
    _CACHE[key] = (jitted, flat.parameters)      # keeps the list alive: its id stays unique
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return jitted


def _transition(kind, settings, epsilon, parameters, closure, key):
    B = get_backend()
    flat = _Flat(B, parameters, closure)
    position = flat.ravel()[None]
    keys = B.asarray(B.key_data(_key(B, key))[None])
    step = B.full((1,), float(epsilon), dtype=B.dtype_of(position))
    new_position, statistic = _runner(B, flat, kind, settings)(keys, position, step)
    return flat, new_position, float(B.to_numpy(statistic))


def hmc_step(epsilon, L, parameters, closure, key=None):
    """One HMC transition with ``L`` leapfrog steps of size ``epsilon`` and a unit mass matrix.

    Parameters
    ----------
    epsilon : float
        Step size (> 0).
    L : int
        Number of leapfrog steps (>= 1).
    parameters : list of Arrays
        The current values (any shapes); updated with the new ones (see the module docstring).
    closure : callable
        ``closure() -> scalar``: the negative log density at the values in ``parameters``.
    key : Array or int, optional
        Random key (a fresh one per call when omitted).

    Returns
    -------
    accept_prob : float
        ``min(1, exp(H_start - H_proposal))`` (0 when the trajectory met a non-finite value).
    new_parameters : list of Arrays
        The values after the transition (the same objects as in ``parameters`` where they were
        updated in place).

    Raises
    ------
    TypeError
        If ``parameters`` is not a non-empty list or ``closure`` is not callable.
    ValueError
        If ``epsilon`` is not positive or ``L`` is not a positive int.

    References
    ----------
    Neal (2011), "MCMC using Hamiltonian dynamics", section 5.3.2.
    """
    _check(parameters, closure)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    if not isinstance(L, (int, np.integer)) or L < 1:
        raise ValueError(f"L must be a positive int, got {L!r}")
    flat, position, accept = _transition("hmc", (int(L),), epsilon, parameters, closure, key)
    return accept, flat.write_back(position)


def nuts_step(epsilon, parameters, closure, max_tree_depth=10, delta_energy_max=1000.0,
              key=None):
    """One NUTS transition (multinomial, generalised U-turn) with step size ``epsilon``.

    Parameters
    ----------
    epsilon : float
        Step size (> 0).
    parameters : list of Arrays
        The current values; updated with the new ones (see the module docstring).
    closure : callable
        ``closure() -> scalar``: the negative log density at the values in ``parameters``.
    max_tree_depth : int
        At most ``2**max_tree_depth - 1`` leapfrog steps.
    delta_energy_max : float
        Energy error that counts as a divergence (ends the trajectory).
    key : Array or int, optional
        Random key (a fresh one per call when omitted).

    Returns
    -------
    accept_prob : float
        Mean Metropolis acceptance over the trajectory (Stan's ``accept_stat__``), the
        statistic to feed to :func:`dual_averaging`.
    new_parameters : list of Arrays

    Raises
    ------
    TypeError, ValueError
        As :func:`hmc_step`; ``ValueError`` also for ``max_tree_depth`` outside [1, 20].

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 3; Betancourt (2017), arXiv:1701.02434.
    """
    _check(parameters, closure)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    if (not isinstance(max_tree_depth, int) or isinstance(max_tree_depth, bool)
            or not 1 <= max_tree_depth <= 20):
        raise ValueError(f"max_tree_depth must be an int between 1 and 20, got "
                         f"{max_tree_depth!r}")
    flat, position, accept = _transition("nuts", (max_tree_depth, float(delta_energy_max)),
                                         epsilon, parameters, closure, key)
    return accept, flat.write_back(position)


def find_reasonable_epsilon(parameters, closure, key=None, initial_epsilon=1.0):
    """A first step size by Hoffman and Gelman's heuristic, and the initial dual-averaging
    state.

    Parameters
    ----------
    parameters : list of Arrays
        The current values (not changed).
    closure : callable
        ``closure() -> scalar``: the negative log density at the values in ``parameters``.
    key : Array or int, optional
        Random key for the momentum (a fresh one per call when omitted).
    initial_epsilon : float
        Where the doubling / halving starts.

    Returns
    -------
    epsilon : float
        The step size at which one leapfrog step's acceptance ratio crosses 1/2.
    epsilon_bar : float
        1.0, the initial averaged step size of dual averaging.
    h_bar : float
        0.0, the initial averaged error of dual averaging.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 4 (and the initialisation of Algorithm 6).
    """
    _check(parameters, closure)
    if not initial_epsilon > 0:
        raise ValueError(f"initial_epsilon must be positive, got {initial_epsilon!r}")
    _, _, epsilon = _transition("epsilon", (), initial_epsilon, parameters, closure, key)
    return epsilon, 1.0, 0.0


def dual_averaging(accept_prob, m, initial_epsilon, epsilon_bar, h_bar, delta=0.8, gamma=0.05,
                   t0=10, kappa=0.75):
    """One dual-averaging update of the step size (Python floats).

    Parameters
    ----------
    accept_prob : float
        The acceptance statistic of iteration ``m`` (non-finite counts as 0).
    m : int
        The iteration, counting from 1.
    initial_epsilon : float
        The step size dual averaging started from (``mu = log(10 * initial_epsilon)``).
    epsilon_bar, h_bar : float
        The averaged step size and averaged error after iteration ``m - 1`` (1.0 and 0.0
        before the first, as :func:`find_reasonable_epsilon` returns).
    delta : float
        Target acceptance statistic.
    gamma, t0, kappa : float
        Dual-averaging constants (Hoffman and Gelman's defaults).

    Returns
    -------
    epsilon : float
        The step size for iteration ``m + 1`` during adaptation.
    epsilon_bar : float
        The averaged step size (use it after adaptation).
    h_bar : float
        The averaged error.

    Raises
    ------
    ValueError
        If ``m < 1`` or ``initial_epsilon`` or ``epsilon_bar`` is not positive.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 6.
    """
    if m < 1:
        raise ValueError(f"m counts iterations from 1, got {m!r}")
    if not initial_epsilon > 0 or not epsilon_bar > 0:
        raise ValueError("initial_epsilon and epsilon_bar must be positive, got "
                         f"{initial_epsilon!r} and {epsilon_bar!r}")
    accept_prob = float(accept_prob)
    if not math.isfinite(accept_prob):
        accept_prob = 0.0
    accept_prob = min(max(accept_prob, 0.0), 1.0)
    mu = math.log(10.0 * initial_epsilon)
    weight = 1.0 / (m + t0)
    h_bar = (1.0 - weight) * h_bar + weight * (delta - accept_prob)
    log_epsilon = mu - math.sqrt(m) / gamma * h_bar
    eta = m ** (-kappa)
    log_epsilon_bar = eta * log_epsilon + (1.0 - eta) * math.log(epsilon_bar)
    return math.exp(log_epsilon), math.exp(log_epsilon_bar), h_bar

