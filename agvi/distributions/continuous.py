"""Continuous distributions, written once on the Backend.

Each family follows scipy.stats' parametrisation unless noted, with the moments, entropy, cdf
and icdf where a closed form exists.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from . import constraints
from .distribution import Distribution, broadcast_params

__all__ = ["Normal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Normal(Distribution):
    """Normal (Gaussian) distribution.

    Parameters
    ----------
    loc : float or Array
        Mean.
    scale : float or Array
        Standard deviation (> 0). ``loc`` and ``scale`` broadcast to the batch shape.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` is ``loc + scale * eps`` with ``eps ~ Normal(0, 1)`` (pathwise gradient).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = broadcast_params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        eps = self.B.normal(self._key(key), self.shape(sample_shape), dtype=self.B.dtype_of(self.loc))
        return self.loc + self.scale * eps

    def log_prob(self, value):
        value = self._value(value)
        z = (value - self.loc) / self.scale
        return -0.5 * z * z - self.B.log(self.scale) - _HALF_LOG_2PI

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale * self.scale

    def entropy(self):
        return 0.5 + _HALF_LOG_2PI + self.B.log(self.scale)

    def cdf(self, value):
        return self.B.ndtr((self._value(value) - self.loc) / self.scale)

    def icdf(self, q):
        return self.loc + self.scale * self.B.ndtri(self.B.asarray(q))
