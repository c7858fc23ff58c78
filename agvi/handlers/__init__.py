"""Effect handlers: the modelling primitives and the handlers that interpret models.

``agvi.sample``, ``agvi.param``, ``agvi.plate``, ``agvi.deterministic`` and ``agvi.factor`` are
re-exported at the top level; the handlers are ``agvi.handlers.trace``, ``seed``, ``replay``,
``condition``, ``substitute``, ``scale``, ``mask``, ``block`` and ``infer_config``.
"""

from . import util
from .handlers import (
    Trace,
    block,
    condition,
    infer_config,
    mask,
    replay,
    scale,
    seed,
    substitute,
    trace,
)
from .primitives import (
    CondIndepStackFrame,
    Messenger,
    Unit,
    apply_stack,
    deterministic,
    factor,
    get_handler_stack,
    param,
    plate,
    prng_key,
    sample,
    subsample,
)
from .util import constrain_fn, log_density, potential_energy, transform_fn, unconstrain_fn

__all__ = [
    "CondIndepStackFrame", "Messenger", "Trace", "Unit", "apply_stack", "block", "condition",
    "constrain_fn", "deterministic", "factor", "get_handler_stack", "infer_config",
    "log_density", "mask", "param", "plate", "potential_energy", "prng_key", "replay", "sample",
    "scale", "seed", "subsample", "substitute", "trace", "transform_fn", "unconstrain_fn",
    "util",
]
