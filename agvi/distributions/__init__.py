"""Probability distributions, constraints and bijectors written once on the Backend.

Conventionally imported as ``import agvi.distributions as dist``.
"""

from . import constraints
from .continuous import *  # noqa: F403
from .continuous import __all__ as _continuous_all
from .distribution import (
    Distribution,
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
    enable_validation,
    is_validation_enabled,
)

__all__ = [
    "Distribution", "ExpandedDistribution", "Independent", "MaskedDistribution", "constraints",
    "enable_validation", "is_validation_enabled", *_continuous_all,
]
