"""Probability distributions, constraints and bijectors written once on the Backend.

Conventionally imported as ``import agvi.distributions as dist``.
"""

from . import constraints, transforms
from .continuous import *  # noqa: F403
from .continuous import __all__ as _continuous_all
from .discrete import *  # noqa: F403
from .discrete import __all__ as _discrete_all
from .distribution import (
    Distribution,
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
    enable_validation,
    is_validation_enabled,
)
from .interop import from_numpyro, from_torch, to_numpyro, to_torch
from .kl import *  # noqa: F403
from .kl import __all__ as _kl_all
from .mixture import *  # noqa: F403
from .mixture import __all__ as _mixture_all
from .multivariate import *  # noqa: F403
from .multivariate import __all__ as _multivariate_all
from .transformed import TransformedDistribution
from .transforms import *  # noqa: F403
from .transforms import __all__ as _transforms_all

__all__ = [
    "Distribution", "ExpandedDistribution", "Independent", "MaskedDistribution", "constraints",
    "TransformedDistribution", "enable_validation", "is_validation_enabled", "transforms",
    "from_numpyro", "from_torch", "to_numpyro", "to_torch", *_kl_all,
    *_continuous_all, *_discrete_all, *_mixture_all, *_multivariate_all, *_transforms_all,
]
