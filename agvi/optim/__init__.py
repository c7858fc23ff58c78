"""Functional optimisers over pytrees, written once on the Backend (they compile on JAX).

Two layers (see :mod:`agvi.optim.base`):

- :class:`GradientTransformation` (optax-style): ``init(params) -> state``,
  ``update(grads, state, params=None, *, value=None) -> (updates, state)`` with additive updates;
  composed with :func:`chain`.
- :class:`Optimizer` (NumPyro-style, what SVI uses): ``init(params) -> opt_state``,
  ``update(grads, opt_state, params=None, *, value=None) -> (new_params, new_opt_state)``,
  ``get_params(opt_state)``.

Optimisers: :class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`ClippedAdam`,
:class:`RMSprop`, :class:`Adagrad`. Clipping: :func:`clip_by_global_norm`,
:func:`clip_by_value`. Schedules: :mod:`agvi.optim.schedules` and :class:`ReduceLROnPlateau`
(reads ``value=loss``). Wrappers: :func:`multi_transform` / :func:`partition`, :func:`EMA` with
:func:`ema_params`, :func:`skip_nonfinite`. Interop: :func:`from_optax` (JAX),
:func:`from_torch_optim` (torch; stateful, not compiled).

>>> import numpy as np
>>> from agvi.optim import Adam
>>> opt = Adam(0.1)
>>> state = opt.init({"w": np.zeros(2)})
>>> params, state = opt.update({"w": np.array([1.0, -2.0])}, state)
>>> params["w"]
array([-0.1,  0.1])

Importing this package imports no framework.
"""

from ..backends.optim_interop import TorchOptimizer, from_optax, from_torch_optim
from .base import (
    EmptyState,
    GradientTransformation,
    Optimizer,
    OptimizerState,
    apply_updates,
    chain,
)
from .clipping import clip_by_global_norm, clip_by_value, global_norm
from .optimizers import SGD, Adagrad, Adam, AdamW, ClippedAdam, RMSprop
from .schedules import (
    PlateauState,
    ReduceLROnPlateau,
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    linear_warmup,
    piecewise_constant,
    warmup_cosine_decay_schedule,
)
from .transforms import (
    add_decayed_weights,
    learning_rate,
    scale,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
    scale_by_schedule,
    trace,
)
from .wrappers import (
    EMA,
    EMAState,
    SkipNonfiniteState,
    ema_params,
    leaf_names,
    multi_transform,
    partition,
    skip_nonfinite,
)

__all__ = [
    "EMA", "EMAState", "SGD", "Adagrad", "Adam", "AdamW", "ClippedAdam", "EmptyState",
    "GradientTransformation", "Optimizer", "OptimizerState", "PlateauState", "RMSprop",
    "ReduceLROnPlateau", "SkipNonfiniteState", "TorchOptimizer", "add_decayed_weights",
    "apply_updates", "chain", "clip_by_global_norm", "clip_by_value", "constant_schedule",
    "cosine_decay_schedule", "ema_params", "exponential_decay", "from_optax", "from_torch_optim",
    "global_norm", "learning_rate", "leaf_names", "linear_warmup", "multi_transform",
    "partition", "piecewise_constant", "scale", "scale_by_adagrad", "scale_by_adam",
    "scale_by_rms", "scale_by_schedule", "skip_nonfinite", "trace",
    "warmup_cosine_decay_schedule",
]
