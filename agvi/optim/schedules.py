"""Learning-rate schedules: Array-valued functions of the step count, and a plateau rule.

A schedule is any callable ``schedule(count) -> scalar`` of the int Array ``count`` (the number of
updates already made, starting at 0); the ones here are written on the Backend with ``B.where``,
so they compile. :class:`ReduceLROnPlateau` instead reads the loss passed as ``value=`` to
``update`` and keeps its best loss and patience counter as Arrays in the optimiser state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .base import GradientTransformation, resolve_backend

__all__ = ["PlateauState", "ReduceLROnPlateau", "Schedule", "constant_schedule",
           "cosine_decay_schedule", "exponential_decay", "linear_warmup", "piecewise_constant",
           "warmup_cosine_decay_schedule"]


class Schedule:
    """Base class: a schedule bound to a backend; call it with the int Array step count."""

    def __init__(self, backend=None):
        self.backend = resolve_backend(backend)

    def _t(self, count):
        B = self.backend
        return B.astype(B.asarray(count), B.float_dtype)

    def __call__(self, count):  # pragma: no cover - abstract
        raise NotImplementedError


class constant_schedule(Schedule):
    """``value`` at every step.

    Parameters
    ----------
    value : float
    """

    def __init__(self, value: float, backend=None):
        super().__init__(backend)
        self.value = float(value)

    def __call__(self, count):
        return self._t(count) * 0.0 + self.value


class exponential_decay(Schedule):
    """``init_value * decay_rate ** (count / transition_steps)``.

    The argument order is optax's (``transition_steps`` before ``decay_rate``); pass them by
    keyword when in doubt.

    Parameters
    ----------
    init_value : float
    transition_steps : int, > 0
    decay_rate : float, > 0
    staircase : bool
        Decay in whole steps: ``decay_rate ** floor(count / transition_steps)``.
    end_value : float or None
        A floor (decay_rate < 1) or ceiling (decay_rate > 1) for the value.

    Raises
    ------
    ValueError
        If ``transition_steps`` is not positive or ``decay_rate`` not positive.
    """

    def __init__(self, init_value: float, transition_steps: int, decay_rate: float,
                 staircase: bool = False, end_value: float | None = None, backend=None):
        super().__init__(backend)
        if transition_steps <= 0:
            raise ValueError(f"transition_steps must be a positive int, got {transition_steps!r}")
        if decay_rate <= 0:
            raise ValueError(f"decay_rate must be positive, got {decay_rate!r}")
        self.init_value, self.decay_rate = float(init_value), float(decay_rate)
        self.transition_steps, self.staircase = transition_steps, staircase
        self.end_value = end_value

    def __call__(self, count):
        B = self.backend
        p = self._t(count) / self.transition_steps
        if self.staircase:
            p = B.floor(p)
        v = self.init_value * B.exp(p * math.log(self.decay_rate))
        if self.end_value is not None:
            v = (B.maximum if self.decay_rate < 1 else B.minimum)(v, v * 0.0 + self.end_value)
        return v


class cosine_decay_schedule(Schedule):
    """Cosine decay (Loshchilov & Hutter, 2017, SGDR eq. 5 without restarts).

    ``init_value * ((1 - alpha) * 0.5 * (1 + cos(pi * min(count, decay_steps) / decay_steps))
    + alpha)``.

    Parameters
    ----------
    init_value : float
    decay_steps : int, > 0
    alpha : float
        The final value as a fraction of ``init_value``.

    References
    ----------
    Loshchilov, I. and Hutter, F. (2017). SGDR: Stochastic gradient descent with warm restarts.
    ICLR.
    """

    def __init__(self, init_value: float, decay_steps: int, alpha: float = 0.0, backend=None):
        super().__init__(backend)
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be a positive int, got {decay_steps!r}")
        self.init_value, self.decay_steps, self.alpha = float(init_value), decay_steps, alpha

    def __call__(self, count):
        B = self.backend
        t = B.minimum(self._t(count), self._t(count) * 0.0 + self.decay_steps)
        cos = 0.5 * (1.0 + B.cos(math.pi * t / self.decay_steps))
        return self.init_value * ((1.0 - self.alpha) * cos + self.alpha)


class piecewise_constant(Schedule):
    """Step schedule: ``init_value`` times every ``scales[i]`` whose boundary has been reached.

    Parameters
    ----------
    init_value : float
    boundaries_and_scales : dict {int: float}
        At step ``count >= boundary`` the value is multiplied by ``scale``.
    """

    def __init__(self, init_value: float, boundaries_and_scales: dict, backend=None):
        super().__init__(backend)
        self.init_value = float(init_value)
        self.items = sorted((int(b), float(s)) for b, s in boundaries_and_scales.items())

    def __call__(self, count):
        B = self.backend
        t = self._t(count)
        v = t * 0.0 + self.init_value
        for boundary, scale in self.items:
            v = B.where(t >= boundary, v * scale, v)
        return v


class linear_warmup(Schedule):
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``after(count - warmup_steps)`` (default: constant ``peak_value``).

    Parameters
    ----------
    init_value, peak_value : float
    warmup_steps : int, >= 0
    after : Schedule or callable or None
    """

    def __init__(self, init_value: float, peak_value: float, warmup_steps: int, after=None,
                 backend=None):
        super().__init__(backend)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        self.init_value, self.peak_value = float(init_value), float(peak_value)
        self.warmup_steps, self.after = warmup_steps, after

    def __call__(self, count):
        B = self.backend
        t = self._t(count)
        if self.warmup_steps == 0:
            warm = t * 0.0 + self.peak_value
        else:
            frac = B.minimum(t / self.warmup_steps, t * 0.0 + 1.0)
            warm = self.init_value + (self.peak_value - self.init_value) * frac
        if self.after is None:
            return warm
        rest = B.astype(self.after(B.maximum(t - self.warmup_steps, t * 0.0)), B.dtype_of(t))
        return B.where(t < self.warmup_steps, warm, rest)


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                 decay_steps: int, end_value: float = 0.0, backend=None):
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value`` over ``decay_steps``.

    Returns
    -------
    linear_warmup
    """
    alpha = end_value / peak_value if peak_value else 0.0
    return linear_warmup(init_value, peak_value, warmup_steps,
                         cosine_decay_schedule(peak_value, decay_steps, alpha, backend=backend),
                         backend=backend)


class PlateauState(NamedTuple):
    """State of :class:`ReduceLROnPlateau` (all 0-d Arrays).

    Attributes
    ----------
    lr : the current learning rate.
    best : the best loss seen (``+inf`` at first).
    num_bad : steps since the last improvement.
    cooldown_counter : steps left in the cool-down after a reduction.
    """

    lr: object
    best: object
    num_bad: object
    cooldown_counter: object


class ReduceLROnPlateau:
    """A step size that is multiplied by ``factor`` when the loss stops improving.

    Pass it as ``step_size`` to any optimiser and pass the loss to every update
    (``opt.update(grads, state, value=loss)``). The rules are those of
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode "min"), applied after the step: the
    loss read at step ``t`` sets the learning rate from step ``t + 1`` on.

    Parameters
    ----------
    init_lr : float
        The learning rate at the start.
    factor : float in (0, 1)
        Multiplier of a reduction.
    patience : int
        Steps without improvement tolerated; the rate is reduced when the count exceeds it.
    threshold : float
        Minimum improvement: ``loss < best * (1 - threshold)`` ("rel") or
        ``loss < best - threshold`` ("abs").
    threshold_mode : {"rel", "abs"}
    cooldown : int
        Steps after a reduction during which bad steps are not counted.
    min_lr : float
        The learning rate never goes below this.
    eps : float
        Reductions smaller than this are skipped.
    backend : Backend or None

    Raises
    ------
    ValueError
        For a ``factor`` outside (0, 1) or an unknown ``threshold_mode``; at update time, when
        no ``value`` is passed.
    """

    def __init__(self, init_lr: float, factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8, backend=None):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.backend = resolve_backend(backend)
        self.init_lr, self.factor, self.patience = float(init_lr), float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)

    def init_state(self) -> PlateauState:
        """The state before any step."""
        B = self.backend
        i32 = B.dtype("int32")
        return PlateauState(B.asarray(self.init_lr), B.asarray(math.inf), B.zeros((), i32),
                            B.zeros((), i32))

    def next_state(self, state: PlateauState, value) -> PlateauState:
        """The state after reading the loss ``value`` (a scalar)."""
        if value is None:
            raise ValueError("ReduceLROnPlateau needs the loss: call update(..., value=loss)")
        B = self.backend
        value = B.astype(B.asarray(value), B.dtype_of(state.best))
        if self.threshold_mode == "rel":
            improved = value < state.best * (1.0 - self.threshold)
        else:
            improved = value < state.best - self.threshold
        best = B.where(improved, value, state.best)
        num_bad = B.where(improved, state.num_bad * 0, state.num_bad + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = B.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        num_bad = B.where(in_cooldown, num_bad * 0, num_bad)
        reduce = num_bad > self.patience
        new_lr = B.maximum(state.lr * self.factor, state.lr * 0.0 + self.min_lr)
        lr = B.where(B.logical_and(reduce, state.lr - new_lr > self.eps), new_lr, state.lr)
        cooldown_counter = B.where(reduce, cooldown_counter * 0 + self.cooldown, cooldown_counter)
        num_bad = B.where(reduce, num_bad * 0, num_bad)
        return PlateauState(lr, best, num_bad, cooldown_counter)

    def transformation(self) -> GradientTransformation:
        """The transformation ``updates = -lr * grads`` that then reads the loss."""
        B = self.backend

        def init(params):
            return self.init_state()

        def update(grads, state, params, value):
            updates = B.tree_map(lambda g: -B.astype(state.lr, B.dtype_of(g)) * g, grads)
            return updates, self.next_state(state, value)

        return GradientTransformation(init, update, B, name=f"plateau(lr={self.init_lr})")
