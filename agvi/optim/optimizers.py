"""The optimisers: SGD, Adam, AdamW, ClippedAdam, RMSprop, Adagrad.

Each is an :class:`~agvi.optim.base.Optimizer` (``init`` / ``update`` / ``get_params``) built from
the transformations in :mod:`agvi.optim.transforms`. ``step_size`` is a float, a schedule from
:mod:`agvi.optim.schedules` (any callable of the int step count) or a
:class:`~agvi.optim.schedules.ReduceLROnPlateau`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .base import GradientTransformation, Optimizer, chain, resolve_backend
from .transforms import (
    add_decayed_weights,
    learning_rate,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
    trace,
)

__all__ = ["Adagrad", "Adam", "AdamW", "ClippedAdam", "ClippedAdamState", "RMSprop", "SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    ``buf = momentum * buf + g``; ``params -= step_size * buf`` (or ``g + momentum * buf`` with
    ``nesterov``). This is PyTorch's form; with a constant step size it is Sutskever et al.'s
    (2013) classical and Nesterov momentum, the latter tracked at the look-ahead point.

    Parameters
    ----------
    step_size : float, schedule or ReduceLROnPlateau
    momentum : float >= 0
    nesterov : bool
    backend : Backend or None

    Raises
    ------
    ValueError
        If ``nesterov`` is set without momentum, or ``momentum`` is negative.

    References
    ----------
    Sutskever, I., Martens, J., Dahl, G. and Hinton, G. (2013). On the importance of
    initialization and momentum in deep learning. ICML.
    """

    def __init__(self, step_size, momentum: float = 0.0, nesterov: bool = False, *,
                 backend=None):
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        B = resolve_backend(backend)
        parts = [trace(momentum, nesterov, B)] if momentum else []
        super().__init__(chain(*parts, learning_rate(step_size, B), backend=B))


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1, with bias correction).

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``params -= step_size * m_hat / (sqrt(v_hat) + eps)``.

    Parameters
    ----------
    step_size : float, schedule or ReduceLROnPlateau
    b1, b2 : float in [0, 1)
    eps : float
    backend : Backend or None

    References
    ----------
    Kingma, D. P. and Ba, J. (2015). Adam: A method for stochastic optimization. ICLR.
    """

    def __init__(self, step_size, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                 backend=None):
        B = resolve_backend(backend)
        super().__init__(chain(scale_by_adam(b1, b2, eps, B), learning_rate(step_size, B),
                               backend=B))


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019, Algorithm 2).

    ``params -= step_size * (m_hat / (sqrt(v_hat) + eps) + weight_decay * params)``: the decay
    is scaled by the step size, as in PyTorch and optax (the paper's schedule multiplier
    ``eta_t`` is ``step_size`` here and its ``alpha`` is 1).

    Parameters
    ----------
    step_size : float, schedule or ReduceLROnPlateau
    b1, b2, eps : float
    weight_decay : float
    backend : Backend or None

    References
    ----------
    Loshchilov, I. and Hutter, F. (2019). Decoupled weight decay regularization. ICLR.
    """

    def __init__(self, step_size, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, backend=None):
        B = resolve_backend(backend)
        super().__init__(chain(scale_by_adam(b1, b2, eps, B), add_decayed_weights(weight_decay, B),
                               learning_rate(step_size, B), backend=B))


class ClippedAdamState(NamedTuple):
    """State of :class:`ClippedAdam`: step count and moment estimates."""

    count: Any
    mu: Any
    nu: Any


class ClippedAdam(Optimizer):
    """Pyro's ClippedAdam: Adam with elementwise gradient clipping and step-size decay.

    Per step ``t`` (from 1): ``g = clip(g, -clip_norm, clip_norm) + weight_decay * params``;
    moments as Adam; ``params -= lr_t * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` with
    ``lr_t = step_size * lrd ** t`` (Kingma & Ba's "efficient" form, eps outside the bias
    correction, as ``pyro.optim.ClippedAdam``).

    Parameters
    ----------
    step_size : float
    b1, b2, eps : float
    clip_norm : float > 0
        Elementwise bound on the gradient.
    lrd : float
        Multiplicative step-size decay per step.
    weight_decay : float
        L2 penalty added to the gradient.
    backend : Backend or None

    Raises
    ------
    ValueError
        If ``clip_norm`` is not positive.
    """

    def __init__(self, step_size: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, clip_norm: float = 10.0, lrd: float = 1.0,
                 weight_decay: float = 0.0, *, backend=None):
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm!r}")
        B = resolve_backend(backend)

        def init(params):
            z = B.tree_map(B.zeros_like, params)
            return ClippedAdamState(B.zeros((), B.dtype("int32")), z,
                                    B.tree_map(B.zeros_like, params))

        def update(grads, state, params, value):
            if weight_decay and params is None:
                raise ValueError("ClippedAdam with weight_decay needs params")
            count = state.count + 1
            g = B.tree_map(lambda x: B.clip(x, -clip_norm, clip_norm), grads)
            if weight_decay:
                g = B.tree_map(lambda x, p: x + weight_decay * p, g, params)
            mu = B.tree_map(lambda m, x: b1 * m + (1.0 - b1) * x, state.mu, g)
            nu = B.tree_map(lambda n, x: b2 * n + (1.0 - b2) * x * x, state.nu, g)

            def step(m, n):
                t = B.astype(count, B.dtype_of(m))
                lr = step_size * lrd ** t
                return -lr * B.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t) * m / (B.sqrt(n) + eps)

            return B.tree_map(step, mu, nu), ClippedAdamState(count, mu, nu)

        super().__init__(GradientTransformation(init, update, B, name="clipped_adam"))


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton, 2012) in PyTorch's form.

    ``v = alpha v + (1 - alpha) g^2``; ``params -= step_size * g / (sqrt(v) + eps)``; with
    ``centered`` the running mean of ``g`` is subtracted from ``v`` as ``v - mean^2``; with
    ``momentum`` the scaled gradient feeds a momentum buffer.

    Parameters
    ----------
    step_size : float, schedule or ReduceLROnPlateau
    alpha : float in [0, 1)
    eps : float
    momentum : float >= 0
    centered : bool
    backend : Backend or None
    """

    def __init__(self, step_size=1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, *, backend=None):
        B = resolve_backend(backend)
        super().__init__(chain(scale_by_rms(alpha, eps, momentum, centered, B),
                               learning_rate(step_size, B), backend=B))


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011): ``params -= step_size * g / (sqrt(sum g^2) + eps)``.

    Parameters
    ----------
    step_size : float, schedule or ReduceLROnPlateau
    initial_accumulator_value : float
    eps : float
    backend : Backend or None

    References
    ----------
    Duchi, J., Hazan, E. and Singer, Y. (2011). Adaptive subgradient methods for online learning
    and stochastic optimization. JMLR 12, 2121-2159.
    """

    def __init__(self, step_size=1e-2, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, backend=None):
        B = resolve_backend(backend)
        super().__init__(chain(scale_by_adagrad(initial_accumulator_value, eps, B),
                               learning_rate(step_size, B), backend=B))
