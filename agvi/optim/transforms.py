"""Elementary gradient transformations, written once on the Backend.

Each function returns a :class:`~agvi.optim.base.GradientTransformation`; the optimisers in
:mod:`agvi.optim.optimizers` are chains of these. Step counters are int32 Arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .base import EmptyState, GradientTransformation, resolve_backend
from .schedules import ReduceLROnPlateau

__all__ = ["AdamState", "CountState", "ScaleByScheduleState", "TraceState",
           "add_decayed_weights", "learning_rate", "scale", "scale_by_adagrad", "scale_by_adam",
           "scale_by_rms", "scale_by_schedule", "trace"]


class CountState(NamedTuple):
    """A step counter (int32 0-d Array)."""

    count: Any


class AdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step count, first and second moment estimates."""

    count: Any
    mu: Any
    nu: Any


class TraceState(NamedTuple):
    """State of :func:`trace`: the momentum buffer (pytree like the parameters)."""

    trace: Any


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the step count."""

    count: Any


def _zero_count(B):
    return B.zeros((), B.dtype("int32"))


def _cast(B, s, like):
    """The scalar ``s`` (float or Array) in the dtype of ``like``."""
    return B.astype(s, B.dtype_of(like)) if B.is_array(s) else s


def scale(factor: float, backend=None) -> GradientTransformation:
    """``updates = factor * grads``."""
    B = resolve_backend(backend)
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda g, s, p, v: (B.tree_map(lambda x: factor * x, g), s), B, name=f"scale({factor})")


def scale_by_schedule(schedule, backend=None) -> GradientTransformation:
    """``updates = schedule(count) * grads``, ``count`` the number of earlier updates."""
    B = resolve_backend(backend)

    def update(grads, state, params, value):
        s = schedule(state.count)
        return (B.tree_map(lambda x: _cast(B, s, x) * x, grads),
                ScaleByScheduleState(state.count + 1))

    return GradientTransformation(lambda params: ScaleByScheduleState(_zero_count(B)), update, B,
                                  name="scale_by_schedule")


def learning_rate(step_size, backend=None) -> GradientTransformation:
    """The descent step ``-step_size * grads`` for a float, a schedule or a
    :class:`~agvi.optim.schedules.ReduceLROnPlateau`.

    Raises
    ------
    TypeError
        If ``step_size`` is none of these.
    """
    if isinstance(step_size, ReduceLROnPlateau):
        return step_size.transformation()
    if callable(step_size):
        return scale_by_schedule(lambda c: -step_size(c), backend)
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        return scale(-float(step_size), backend)
    raise TypeError("step_size must be a float, a schedule (callable of the step count) or a "
                    f"ReduceLROnPlateau, got {type(step_size).__name__}")


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  backend=None) -> GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba, 2015, Algorithm 1).

    References
    ----------
    Kingma, D. P. and Ba, J. (2015). Adam: A method for stochastic optimization. ICLR.
    """
    B = resolve_backend(backend)

    def init(params):
        return AdamState(_zero_count(B), B.tree_map(B.zeros_like, params),
                         B.tree_map(B.zeros_like, params))

    def update(grads, state, params, value):
        count = state.count + 1
        mu = B.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
        nu = B.tree_map(lambda n, g: b2 * n + (1.0 - b2) * g * g, state.nu, grads)

        corrections = {}   # the bias corrections, once per dtype (not once per leaf)

        def direction(m, n):
            dtype = B.dtype_of(m)
            if dtype not in corrections:
                t = B.astype(count, dtype)
                corrections[dtype] = (1.0 - b1 ** t, 1.0 - b2 ** t)
            c1, c2 = corrections[dtype]
            return (m / c1) / (B.sqrt(n / c2) + eps)

        return B.tree_map(direction, mu, nu), AdamState(count, mu, nu)

    return GradientTransformation(init, update, B, name=f"scale_by_adam(b1={b1}, b2={b2})")


def add_decayed_weights(weight_decay: float, backend=None) -> GradientTransformation:
    """``updates = grads + weight_decay * params`` (decoupled weight decay when placed after the
    adaptive scaling, as in AdamW).

    Raises
    ------
    ValueError
        At update time, if ``params`` is not passed.
    """
    B = resolve_backend(backend)

    def update(grads, state, params, value):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        return B.tree_map(lambda g, p: g + weight_decay * p, grads, params), state

    return GradientTransformation(lambda params: EmptyState(), update, B,
                                  name=f"add_decayed_weights({weight_decay})")


def trace(decay: float, nesterov: bool = False, backend=None) -> GradientTransformation:
    """Momentum: ``buf = decay * buf + g``; updates ``buf`` (or ``g + decay * buf`` with
    ``nesterov``), the form of PyTorch's SGD (Sutskever et al., 2013, rewritten at the
    look-ahead point).

    References
    ----------
    Sutskever, I., Martens, J., Dahl, G. and Hinton, G. (2013). On the importance of
    initialization and momentum in deep learning. ICML, eqs. (1)-(4).
    """
    B = resolve_backend(backend)

    def update(grads, state, params, value):
        buf = B.tree_map(lambda b, g: decay * b + g, state.trace, grads)
        out = B.tree_map(lambda g, b: g + decay * b, grads, buf) if nesterov else buf
        return out, TraceState(buf)

    return GradientTransformation(lambda params: TraceState(B.tree_map(B.zeros_like, params)),
                                  update, B, name=f"trace({decay}, nesterov={nesterov})")


class RMSState(NamedTuple):
    """State of :func:`scale_by_rms`: mean square, mean (centred only) and momentum buffer."""

    nu: Any
    mu: Any
    momentum: Any


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 centered: bool = False, backend=None) -> GradientTransformation:
    """RMSprop's direction ``g / (sqrt(v) + eps)`` with ``v = alpha v + (1 - alpha) g^2``
    (Tieleman & Hinton, 2012; PyTorch's form, ``eps`` outside the root), optionally centred
    (``v - mean(g)^2``, Graves 2013) and with momentum on the scaled gradient.

    References
    ----------
    Tieleman, T. and Hinton, G. (2012). Lecture 6.5, RMSProp. COURSERA: Neural networks for
    machine learning.
    """
    B = resolve_backend(backend)

    def init(params):
        z = B.tree_map(B.zeros_like, params)
        return RMSState(z, B.tree_map(B.zeros_like, params) if centered else EmptyState(),
                        B.tree_map(B.zeros_like, params) if momentum else EmptyState())

    def update(grads, state, params, value):
        nu = B.tree_map(lambda n, g: alpha * n + (1.0 - alpha) * g * g, state.nu, grads)
        if centered:
            mu = B.tree_map(lambda m, g: alpha * m + (1.0 - alpha) * g, state.mu, grads)
            denom = B.tree_map(lambda n, m: B.sqrt(n - m * m) + eps, nu, mu)
        else:
            mu = state.mu
            denom = B.tree_map(lambda n: B.sqrt(n) + eps, nu)
        out = B.tree_map(lambda g, d: g / d, grads, denom)
        mom = state.momentum
        if momentum:
            mom = B.tree_map(lambda b, u: momentum * b + u, mom, out)
            out = mom
        return out, RMSState(nu, mu, mom)

    return GradientTransformation(init, update, B, name="scale_by_rms")


def scale_by_adagrad(initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                     backend=None) -> GradientTransformation:
    """Adagrad's direction ``g / (sqrt(sum of g^2) + eps)`` (Duchi et al., 2011).

    References
    ----------
    Duchi, J., Hazan, E. and Singer, Y. (2011). Adaptive subgradient methods for online learning
    and stochastic optimization. JMLR 12, 2121-2159.
    """
    B = resolve_backend(backend)

    def update(grads, state, params, value):
        acc = B.tree_map(lambda a, g: a + g * g, state.trace, grads)
        return B.tree_map(lambda g, a: g / (B.sqrt(a) + eps), grads, acc), TraceState(acc)

    return GradientTransformation(
        lambda params: TraceState(B.tree_map(lambda p: B.full_like(p, initial_accumulator_value),
                                             params)),
        update, B, name="scale_by_adagrad")
