"""A biased random walk simulator with a differentiable (continuously relaxed) form.

Each step is ``+1`` with probability ``p`` and ``-1`` otherwise; the position after ``t`` steps
is the sum of the first ``t`` steps. The parameter is unconstrained, ``params = (logit p,)``.

A hard draw has no useful derivative in ``p``. The relaxed simulator replaces each step by the
binary Concrete (Gumbel-softmax) relaxation of its sign,

    step = tanh((logit p + logit u) / (2 tau)),   u ~ Uniform(0, 1),

which is ``2 * sigmoid((logit p + logit u) / tau) - 1``: it tends to the hard step ``sign(logit
p + logit u)`` (``+1`` with probability ``p``) as the temperature ``tau -> 0`` and is smooth
in ``logit p`` for ``tau > 0``. With the uniforms drawn from a fixed key (common random
numbers) the simulator is a deterministic, differentiable function of ``params``; that is what
:func:`random_walk_loss` uses.

References
----------
Maddison, C. J., Mnih, A. and Teh, Y. W. (2017). The Concrete distribution: a continuous
relaxation of discrete random variables. ICLR (the binary Concrete, section 3.3).
Jang, E., Gu, S. and Poole, B. (2017). Categorical reparameterization with Gumbel-softmax.
ICLR.
Quera-Bofarull, A. et al. (2023). BlackBIRDS: Black-Box Inference foR Differentiable
Simulators. JOSS 8(89), 5776 (the random-walk example).
"""

from __future__ import annotations

import numpy as np

from ..backends import get_backend

__all__ = ["random_walk_loss", "simulate_random_walk"]


def _as_key(B, key):
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return B.key(int(key))
    return key


def simulate_random_walk(params, n_steps: int, key, *, n_walks: int | None = None,
                         temperature: float | None = None):
    """Simulate biased ``+-1`` random walks started at 0.

    Parameters
    ----------
    params : Array, shape (1,)
        ``(logit p,)`` with ``p`` the probability of a ``+1`` step.
    n_steps : int
        Number of steps.
    key : int or Array, shape (2,)
        Key of the uniforms ``u`` (the same key gives the same walks).
    n_walks : int or None
        Number of independent walks (None: one walk, no leading axis).
    temperature : float or None
        ``None`` (or 0): hard ``+-1`` steps (piecewise constant in ``params``: zero gradient).
        ``> 0``: the binary-Concrete relaxation above, differentiable in ``params``.

    Returns
    -------
    Array, shape (n_steps,) or (n_walks, n_steps)
        The positions after steps ``1..n_steps``.

    Raises
    ------
    ValueError
        If ``params`` is not of shape (1,), ``n_steps`` / ``n_walks`` is not a positive int,
        or ``temperature`` is negative.
    """
    B = get_backend()
    if not B.is_array(params):
        params = B.asarray(params)
    if tuple(B.shape(params)) != (1,):
        raise ValueError(f"simulate_random_walk: params must have shape (1,) = (logit p,), got "
                         f"{B.shape(params)}")
    for name, v in (("n_steps", n_steps), ("n_walks", 1 if n_walks is None else n_walks)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"simulate_random_walk: {name} must be a positive int, got {v!r}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"simulate_random_walk: temperature must be >= 0 or None, got "
                         f"{temperature!r}")
    shape = (int(n_steps),) if n_walks is None else (int(n_walks), int(n_steps))
    dtype = B.dtype_of(params)
    eps = B.finfo(dtype).eps
    # u in [eps, 1 - eps]: logit u stays finite in float32 and float64
    u = B.clip(B.uniform(_as_key(B, key), shape, dtype=dtype), eps, 1.0 - eps)
    logits = params[0] + (B.log(u) - B.log1p(-u))
    if temperature is None or temperature == 0:
        steps = B.where(logits > 0, B.ones_like(logits), -B.ones_like(logits))
    else:
        steps = B.tanh(logits / (2.0 * temperature))
    return B.cumsum(steps, axis=-1)


def random_walk_loss(params, data, *, key=0, n_walks: int = 32, temperature: float = 0.1,
                     scale: float = 1.0):
    """Squared distance between the observed path and the mean of relaxed simulated paths.

    ``0.5 * mean_t (m_t(params) - x_t)^2 / scale^2`` with ``m_t`` the mean position after ``t``
    steps over ``n_walks`` relaxed walks drawn with the fixed ``key`` (common random numbers:
    the loss is a deterministic, smooth function of ``params``). Averaging over walks before
    comparing keeps the minimiser near the drift of the observed path (comparing single walks
    would reward ``p`` near 0 or 1, where the walks' variance vanishes).

    Parameters
    ----------
    params : Array, shape (1,)
        ``(logit p,)``.
    data : Array, shape (T,)
        The observed positions after steps ``1..T``.
    key : int or Array, shape (2,)
        Key of the simulated walks (fixed across calls).
    n_walks : int
    temperature : float, > 0
    scale : float, > 0
        Divides the differences.

    Returns
    -------
    Array, shape ()

    Raises
    ------
    ValueError
        If ``data`` is not one-dimensional, or ``temperature`` or ``scale`` is not positive.
    """
    B = get_backend()
    if not B.is_array(data):
        data = B.asarray(data)
    if len(B.shape(data)) != 1:
        raise ValueError(f"random_walk_loss: data must have shape (T,), got {B.shape(data)}")
    if not temperature > 0:
        raise ValueError(f"random_walk_loss: temperature must be positive, got {temperature!r}")
    if not scale > 0:
        raise ValueError(f"random_walk_loss: scale must be positive, got {scale!r}")
    walks = simulate_random_walk(params, B.shape(data)[0], key, n_walks=n_walks,
                                 temperature=temperature)
    diff = (B.mean(walks, axis=0) - data) / scale
    return 0.5 * B.mean(diff * diff)
