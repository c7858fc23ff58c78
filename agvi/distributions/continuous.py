"""Continuous distributions, written once on the Backend.

Parameters are named and ordered as in ``torch.distributions`` / NumPyro (``Gamma(concentration,
rate)``, ``Weibull(scale, concentration)``, ...); each class docstring gives the matching
``scipy.stats`` object. Moments, entropy, cdf and icdf are closed forms where one exists; a moment
that does not exist is ``nan`` (undefined) or ``inf`` (infinite), as ``scipy.stats`` reports it
(except StudentT's undefined mean for ``df <= 1``: ``nan`` as torch, where scipy says ``inf``).

Draws use the Backend's random primitives only, so every backend (and shared test noise) gives
the same construction; families with ``has_rsample`` give pathwise-differentiable draws
(Gamma, Beta, StudentT, Chi2 and InverseGamma through the implicit reparameterisation of
``Backend.gamma``).

``log_prob`` of a value outside the support raises ``ValueError`` under validation; without it
the closed form is evaluated as is (as NumPyro does: no masking cost on the hot path), except
for :class:`Uniform` and :class:`Delta`, whose densities are ``-inf`` off their support.
"""

from __future__ import annotations

import functools
import math

from ..backends import get_backend
from . import constraints
from .distribution import Distribution, broadcast_params

__all__ = [
    "Beta", "Cauchy", "Chi2", "Delta", "Exponential", "Gamma", "Gumbel", "HalfCauchy",
    "HalfNormal", "InverseGamma", "Laplace", "LogNormal", "Logistic", "Normal", "Pareto",
    "StudentT", "Uniform", "VonMises", "Weibull",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_PI = math.log(math.pi)
_SQRT_HALF = math.sqrt(0.5)


def _normal_log_density(B, x, loc, scale):
    """log N(x; loc, scale) written with few operations on ``x``: each one costs a tape node on
    the eager backends (4 here; ``-0.5 * z * z - log(scale) - c`` has 6, 16 us more per
    gradient on autograd), and constant parameters fold into constants."""
    return -(B.log(scale) + _HALF_LOG_2PI) - B.square((x - loc) * (_SQRT_HALF / scale))
_LOG_2PI = math.log(2 * math.pi)
_EULER = 0.57721566490153286061  # Euler-Mascheroni constant


def _params(B, *params):
    """:func:`broadcast_params` with integer or boolean parameters promoted to the backend's
    floating dtype (``Gamma(2, 1)`` must draw floats, not fail on integer arrays)."""
    arrays = []
    for p in params:
        a = B.asarray(p)
        if not B.is_floating(a):
            a = B.astype(a, B.float_dtype)
        arrays.append(a)
    return broadcast_params(B, *arrays)


def _open_uniform(B, key, shape, dtype):
    """Uniform draws on the open interval (0, 1), shape ``shape``.

    The clip keeps inverse-cdf samplers finite: a float32 draw on [0, 1) can be exactly 0 and,
    by rounding a wider draw, exactly 1.
    """
    fi = B.finfo(dtype)
    return B.clip(B.uniform(key, shape, dtype=dtype), fi.tiny, 1.0 - fi.eps / 2)


def _positive_draw(B, x):
    """``x`` clamped below at the smallest normal number: a gamma draw of a small shape can
    underflow to 0, where log densities and reciprocals are infinite (torch does the same)."""
    return B.maximum(x, B.finfo(B.dtype_of(x)).tiny)


def _broadcast(B, x, shape):
    """``x`` broadcast to ``shape`` (no copy when it already has that shape)."""
    shape = tuple(shape)
    return x if B.shape(x) == shape else B.broadcast_to(x, shape)


def _gamma(B, key, alpha, shape):
    """Reparameterised ``Gamma(alpha, 1)`` draws of shape ``shape``. ``alpha`` is broadcast to
    ``shape`` first so that a compiling backend keys its sampler on the draw shape alone (JAX
    compiles one gamma sampler per (alpha shape, draw shape) pair, seconds each)."""
    return B.gamma(key, _broadcast(B, alpha, shape), shape)


def _nan_like(B, x):
    return B.full_like(x, math.nan)


def _inf_like(B, x):
    return B.full_like(x, math.inf)


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
        eps = self.B.normal(self._key(key), self.shape(sample_shape),
                            dtype=self.B.dtype_of(self.loc))
        return self.loc + self.scale * eps

    def log_prob(self, value):
        return _normal_log_density(self.B, self._value(value), self.loc, self.scale)

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


class LogNormal(Distribution):
    """Log-normal distribution: ``exp(X)`` for ``X ~ Normal(loc, scale)``.

    ``scipy.stats.lognorm(s=scale, scale=exp(loc))``.

    Parameters
    ----------
    loc : float or Array
        Mean of ``log X``.
    scale : float or Array
        Standard deviation of ``log X`` (> 0). Parameters broadcast to the batch shape.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` is ``exp(loc + scale * eps)`` with ``eps ~ Normal(0, 1)`` (pathwise gradient).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = _params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        eps = self.B.normal(self._key(key), self.shape(sample_shape),
                            dtype=self.B.dtype_of(self.loc))
        return self.B.exp(self.loc + self.scale * eps)

    def log_prob(self, value):
        value = self._value(value)
        log_x = self.B.log(value)
        return _normal_log_density(self.B, log_x, self.loc, self.scale) - log_x

    @property
    def mean(self):
        return self.B.exp(self.loc + 0.5 * self.scale * self.scale)

    @property
    def variance(self):
        s2 = self.scale * self.scale
        return self.B.expm1(s2) * self.B.exp(2.0 * self.loc + s2)

    def entropy(self):
        return 0.5 + _HALF_LOG_2PI + self.B.log(self.scale) + self.loc

    def cdf(self, value):
        return self.B.ndtr((self.B.log(self._value(value)) - self.loc) / self.scale)

    def icdf(self, q):
        return self.B.exp(self.loc + self.scale * self.B.ndtri(self.B.asarray(q)))


class HalfNormal(Distribution):
    """Half-normal distribution: ``|X|`` for ``X ~ Normal(0, scale)``.

    ``scipy.stats.halfnorm(scale=scale)``.

    Parameters
    ----------
    scale : float or Array
        Scale (> 0), the standard deviation of the underlying normal.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` is ``scale * |eps|`` with ``eps ~ Normal(0, 1)``.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.scale,), batch_shape = _params(self.B, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        eps = self.B.normal(self._key(key), self.shape(sample_shape),
                            dtype=self.B.dtype_of(self.scale))
        return self.scale * self.B.abs(eps)

    def log_prob(self, value):
        value = self._value(value)
        z = value / self.scale
        return -0.5 * z * z - self.B.log(self.scale) + 0.5 * math.log(2.0 / math.pi)

    @property
    def mean(self):
        return self.scale * math.sqrt(2.0 / math.pi)

    @property
    def variance(self):
        return self.scale * self.scale * (1.0 - 2.0 / math.pi)

    def entropy(self):
        return 0.5 * math.log(0.5 * math.pi) + 0.5 + self.B.log(self.scale)

    def cdf(self, value):
        return self.B.erf(self._value(value) / (self.scale * math.sqrt(2.0)))

    def icdf(self, q):
        return self.scale * math.sqrt(2.0) * self.B.erfinv(self.B.asarray(q))


class Cauchy(Distribution):
    """Cauchy distribution.

    ``scipy.stats.cauchy(loc, scale)``.

    Parameters
    ----------
    loc : float or Array
        Location (the median).
    scale : float or Array
        Half width at half maximum (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    The mean and variance do not exist: both are ``nan`` (as ``scipy.stats.cauchy``).
    ``rsample`` is ``loc + scale * Z1 / Z2`` for independent standard normals (the ratio is
    standard Cauchy), which has no infinite tail from a rounded uniform.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = _params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        z = self.B.normal(self._key(key), (2,) + self.shape(sample_shape),
                          dtype=self.B.dtype_of(self.loc))
        return self.loc + self.scale * (z[0] / z[1])

    def log_prob(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return -_LOG_PI - self.B.log(self.scale) - self.B.log1p(z * z)

    @property
    def mean(self):
        return _nan_like(self.B, self.loc)

    @property
    def variance(self):
        return _nan_like(self.B, self.loc)

    def entropy(self):
        return math.log(4.0 * math.pi) + self.B.log(self.scale)

    def cdf(self, value):
        return 0.5 + self.B.arctan((self._value(value) - self.loc) / self.scale) / math.pi

    def icdf(self, q):
        return self.loc + self.scale * self.B.tan(math.pi * (self.B.asarray(q) - 0.5))


class HalfCauchy(Distribution):
    """Half-Cauchy distribution: ``|X|`` for ``X ~ Cauchy(0, scale)``.

    ``scipy.stats.halfcauchy(scale=scale)``.

    Parameters
    ----------
    scale : float or Array
        Scale (> 0), the median.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    The mean and variance are infinite (``inf``, as ``scipy.stats.halfcauchy``).
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.scale,), batch_shape = _params(self.B, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        z = self.B.normal(self._key(key), (2,) + self.shape(sample_shape),
                          dtype=self.B.dtype_of(self.scale))
        return self.scale * self.B.abs(z[0] / z[1])

    def log_prob(self, value):
        z = self._value(value) / self.scale
        return math.log(2.0 / math.pi) - self.B.log(self.scale) - self.B.log1p(z * z)

    @property
    def mean(self):
        return _inf_like(self.B, self.scale)

    @property
    def variance(self):
        return _inf_like(self.B, self.scale)

    def entropy(self):
        return _LOG_2PI + self.B.log(self.scale)

    def cdf(self, value):
        return self.B.arctan(self._value(value) / self.scale) * (2.0 / math.pi)

    def icdf(self, q):
        return self.scale * self.B.tan(self.B.asarray(q) * (0.5 * math.pi))


class StudentT(Distribution):
    """Student's t distribution with ``df`` degrees of freedom, location and scale.

    ``scipy.stats.t(df, loc, scale)``.

    Parameters
    ----------
    df : float or Array
        Degrees of freedom (> 0).
    loc : float or Array
        Location (the median; the mean where ``df > 1``).
    scale : float or Array
        Scale (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``df`` or ``scale`` is not positive.

    Notes
    -----
    The mean is ``loc`` for ``df > 1`` and ``nan`` otherwise (undefined, as torch and NumPyro;
    ``scipy.stats.t`` reports ``inf``). The variance is ``scale**2 df / (df - 2)`` for
    ``df > 2``, ``inf`` for ``1 < df <= 2`` and ``nan`` for ``df <= 1`` (as scipy).

    ``rsample`` is ``loc + scale * Z * sqrt(df / (2 G))`` with ``Z ~ Normal(0, 1)`` and
    ``G ~ Gamma(df / 2, 1)`` (so ``2 G`` is chi-square with ``df`` degrees of freedom): pathwise
    in ``loc`` and ``scale``, and in ``df`` through the implicit reparameterisation of the gamma
    draw (Figurnov, Mohamed and Mnih, 2018).

    References
    ----------
    Figurnov, M., Mohamed, S. and Mnih, A. (2018). Implicit reparameterization gradients.
    NeurIPS 31.
    """

    arg_constraints = {"df": constraints.positive, "loc": constraints.real,
                       "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, df, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.df, self.loc, self.scale), batch_shape = _params(self.B, df, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        shape = self.shape(sample_shape)
        k_normal, k_gamma = B.split(self._key(key), 2)
        z = B.normal(k_normal, shape, dtype=B.dtype_of(self.loc))
        g = _positive_draw(B, _gamma(B, k_gamma, 0.5 * self.df, shape))
        return self.loc + self.scale * z * B.sqrt(0.5 * self.df / g)

    def log_prob(self, value):
        B = self.B
        z = (self._value(value) - self.loc) / self.scale
        half = 0.5 * (self.df + 1.0)
        return (B.gammaln(half) - B.gammaln(0.5 * self.df) - 0.5 * B.log(self.df)
                - 0.5 * _LOG_PI - B.log(self.scale) - half * B.log1p(z * z / self.df))

    @property
    def mean(self):
        return self.B.where(self.df > 1, self.loc, _nan_like(self.B, self.loc))

    @property
    def variance(self):
        B = self.B
        # Keep the untaken branch finite so that gradients through `where` stay clean.
        safe_df = B.where(self.df > 2, self.df, B.full_like(self.df, 3.0))
        var = self.scale * self.scale * safe_df / (safe_df - 2.0)
        return B.where(self.df > 2, var,
                       B.where(self.df > 1, _inf_like(B, var), _nan_like(B, var)))

    def entropy(self):
        B = self.B
        half = 0.5 * (self.df + 1.0)
        return (half * (B.digamma(half) - B.digamma(0.5 * self.df)) + 0.5 * B.log(self.df)
                + B.betaln(0.5 * self.df, B.full_like(self.df, 0.5)) + B.log(self.scale))


class Laplace(Distribution):
    """Laplace (double exponential) distribution.

    ``scipy.stats.laplace(loc, scale)``.

    Parameters
    ----------
    loc : float or Array
        Location (mean and median).
    scale : float or Array
        Scale (> 0); the variance is ``2 scale**2``.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` inverts the cdf at a uniform draw on (-1, 1):
    ``loc - scale * sign(u) * log1p(-|u|)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = _params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        dtype = B.dtype_of(self.loc)
        bound = 1.0 - B.finfo(dtype).eps / 2
        u = B.clip(B.uniform(self._key(key), self.shape(sample_shape), dtype=dtype,
                             minval=-1.0, maxval=1.0), -bound, bound)
        return self.loc - self.scale * B.sign(u) * B.log1p(-B.abs(u))

    def log_prob(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return -self.B.abs(z) - self.B.log(2.0 * self.scale)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return 2.0 * self.scale * self.scale

    def entropy(self):
        return 1.0 + self.B.log(2.0 * self.scale)

    def cdf(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return 0.5 - 0.5 * self.B.sign(z) * self.B.expm1(-self.B.abs(z))

    def icdf(self, q):
        t = self.B.asarray(q) - 0.5
        return self.loc - self.scale * self.B.sign(t) * self.B.log1p(-2.0 * self.B.abs(t))


class Logistic(Distribution):
    """Logistic distribution.

    ``scipy.stats.logistic(loc, scale)``.

    Parameters
    ----------
    loc : float or Array
        Location (mean and median).
    scale : float or Array
        Scale (> 0); the variance is ``(pi scale)**2 / 3``.

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` is ``loc + scale * logit(u)`` for ``u`` uniform on (0, 1).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = _params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        u = _open_uniform(B, self._key(key), self.shape(sample_shape), B.dtype_of(self.loc))
        return self.loc + self.scale * (B.log(u) - B.log1p(-u))

    def log_prob(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return -z - 2.0 * self.B.softplus(-z) - self.B.log(self.scale)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale * self.scale * (math.pi ** 2 / 3.0)

    def entropy(self):
        return self.B.log(self.scale) + 2.0

    def cdf(self, value):
        return self.B.expit((self._value(value) - self.loc) / self.scale)

    def icdf(self, q):
        return self.loc + self.scale * self.B.logit(self.B.asarray(q))


class Gumbel(Distribution):
    """Gumbel (type-I extreme value, for maxima) distribution.

    ``scipy.stats.gumbel_r(loc, scale)``.

    Parameters
    ----------
    loc : float or Array
        Location (the mode).
    scale : float or Array
        Scale (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``scale`` is not positive.

    Notes
    -----
    ``rsample`` is ``loc + scale * g`` with ``g`` from :meth:`Backend.gumbel`.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc=0.0, scale=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.scale), batch_shape = _params(self.B, loc, scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        g = self.B.gumbel(self._key(key), self.shape(sample_shape),
                          dtype=self.B.dtype_of(self.loc))
        return self.loc + self.scale * g

    def log_prob(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return -(z + self.B.exp(-z)) - self.B.log(self.scale)

    @property
    def mean(self):
        return self.loc + _EULER * self.scale

    @property
    def variance(self):
        return self.scale * self.scale * (math.pi ** 2 / 6.0)

    def entropy(self):
        return self.B.log(self.scale) + (_EULER + 1.0)

    def cdf(self, value):
        z = (self._value(value) - self.loc) / self.scale
        return self.B.exp(-self.B.exp(-z))

    def icdf(self, q):
        return self.loc - self.scale * self.B.log(-self.B.log(self.B.asarray(q)))


class Exponential(Distribution):
    """Exponential distribution with rate ``rate`` (mean ``1 / rate``).

    ``scipy.stats.expon(scale=1 / rate)``.

    Parameters
    ----------
    rate : float or Array
        Rate (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``rate`` is not positive.

    Notes
    -----
    ``rsample`` is ``e / rate`` with ``e`` from :meth:`Backend.exponential`.
    """

    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, rate=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.rate,), batch_shape = _params(self.B, rate)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        e = self.B.exponential(self._key(key), self.shape(sample_shape),
                               dtype=self.B.dtype_of(self.rate))
        return e / self.rate

    def log_prob(self, value):
        return self.B.log(self.rate) - self.rate * self._value(value)

    @property
    def mean(self):
        return 1.0 / self.rate

    @property
    def variance(self):
        return 1.0 / (self.rate * self.rate)

    def entropy(self):
        return 1.0 - self.B.log(self.rate)

    def cdf(self, value):
        return -self.B.expm1(-self.rate * self._value(value))

    def icdf(self, q):
        return -self.B.log1p(-self.B.asarray(q)) / self.rate


class Gamma(Distribution):
    """Gamma distribution with shape ``concentration`` and inverse scale ``rate``.

    ``scipy.stats.gamma(a=concentration, scale=1 / rate)``.

    Parameters
    ----------
    concentration : float or Array
        Shape parameter alpha (> 0).
    rate : float or Array
        Rate beta (> 0); the mean is ``concentration / rate``.

    Raises
    ------
    ValueError
        Under validation, if ``concentration`` or ``rate`` is not positive.

    Notes
    -----
    ``rsample`` is ``G / rate`` with ``G ~ Gamma(concentration, 1)`` from :meth:`Backend.gamma`,
    differentiable in ``concentration`` by implicit reparameterisation: per draw,
    ``dG/dalpha = -(dF/dalpha)(G; alpha) / p(G; alpha)`` with ``F`` the cdf (Figurnov et al.,
    2018, eq. 6). Draws are clamped below at the smallest normal number, which a small
    ``concentration`` can underflow to.
    The cdf is the regularised lower incomplete gamma function ``P(alpha, rate x)``; there is no
    closed-form icdf.

    References
    ----------
    Figurnov, M., Mohamed, S. and Mnih, A. (2018). Implicit reparameterization gradients.
    NeurIPS 31.
    """

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, concentration, rate=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.concentration, self.rate), batch_shape = _params(self.B, concentration, rate)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        g = _gamma(self.B, self._key(key), self.concentration, self.shape(sample_shape))
        return _positive_draw(self.B, g) / self.rate

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        a = self.concentration
        return (B.xlogy(a, self.rate) + B.xlogy(a - 1.0, value) - self.rate * value
                - B.gammaln(a))

    @property
    def mean(self):
        return self.concentration / self.rate

    @property
    def variance(self):
        return self.concentration / (self.rate * self.rate)

    def entropy(self):
        B = self.B
        a = self.concentration
        return a - B.log(self.rate) + B.gammaln(a) + (1.0 - a) * B.digamma(a)

    def cdf(self, value):
        return self.B.gammainc(self.concentration, self.rate * self._value(value))


class Chi2(Gamma):
    """Chi-square distribution with ``df`` degrees of freedom: ``Gamma(df / 2, 1 / 2)``.

    ``scipy.stats.chi2(df)``.

    Parameters
    ----------
    df : float or Array
        Degrees of freedom (> 0, not necessarily an integer).

    Raises
    ------
    ValueError
        Under validation, if ``df`` is not positive.

    Notes
    -----
    A subclass of :class:`Gamma` (as in torch), so Gamma's KL rules apply; ``rsample`` is
    reparameterised in ``df`` by the implicit gamma gradient.
    """

    arg_constraints = {"df": constraints.positive}

    def __init__(self, df, *, validate_args=None):
        self.B = get_backend()
        (self.df,), _ = _params(self.B, df)
        super().__init__(0.5 * self.df, self.B.full_like(self.df, 0.5),
                         validate_args=validate_args)


class InverseGamma(Distribution):
    """Inverse-gamma distribution: ``rate / G`` for ``G ~ Gamma(concentration, 1)``.

    ``scipy.stats.invgamma(a=concentration, scale=rate)``.

    Parameters
    ----------
    concentration : float or Array
        Shape parameter alpha (> 0).
    rate : float or Array
        Scale beta (> 0) (named ``rate`` as in NumPyro: it is the rate of the gamma variable
        ``1 / X``).

    Raises
    ------
    ValueError
        Under validation, if ``concentration`` or ``rate`` is not positive.

    Notes
    -----
    The mean ``rate / (alpha - 1)`` is ``inf`` for ``alpha <= 1``; the variance
    ``rate**2 / ((alpha - 1)**2 (alpha - 2))`` is ``inf`` for ``alpha <= 2`` (as scipy).
    ``rsample`` is reparameterised in both parameters (implicit gamma gradient, Figurnov et al.
    2018). The cdf is the regularised upper incomplete gamma function ``Q(alpha, rate / x)``.

    References
    ----------
    Figurnov, M., Mohamed, S. and Mnih, A. (2018). Implicit reparameterization gradients.
    NeurIPS 31.
    """

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, concentration, rate=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.concentration, self.rate), batch_shape = _params(self.B, concentration, rate)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        g = _gamma(self.B, self._key(key), self.concentration, self.shape(sample_shape))
        return self.rate / _positive_draw(self.B, g)

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        a = self.concentration
        return (B.xlogy(a, self.rate) - B.gammaln(a) - (a + 1.0) * B.log(value)
                - self.rate / value)

    @property
    def mean(self):
        B = self.B
        a = self.concentration
        safe = B.where(a > 1, a, B.full_like(a, 2.0))
        return B.where(a > 1, self.rate / (safe - 1.0), _inf_like(B, a))

    @property
    def variance(self):
        B = self.B
        a = self.concentration
        safe = B.where(a > 2, a, B.full_like(a, 3.0))
        var = self.rate * self.rate / ((safe - 1.0) ** 2 * (safe - 2.0))
        return B.where(a > 2, var, _inf_like(B, var))

    def entropy(self):
        B = self.B
        a = self.concentration
        return a + B.log(self.rate) + B.gammaln(a) - (1.0 + a) * B.digamma(a)

    def cdf(self, value):
        return self.B.gammaincc(self.concentration, self.rate / self._value(value))


class Beta(Distribution):
    """Beta distribution on [0, 1].

    ``scipy.stats.beta(a=concentration1, b=concentration0)``.

    Parameters
    ----------
    concentration1 : float or Array
        First shape parameter a (> 0), the pseudo-count of ones.
    concentration0 : float or Array
        Second shape parameter b (> 0), the pseudo-count of zeros.

    Raises
    ------
    ValueError
        Under validation, if either concentration is not positive.

    Notes
    -----
    ``rsample`` is :meth:`Backend.beta` (``G_a / (G_a + G_b)`` of two gamma draws), so it is
    reparameterised in both concentrations by the implicit gamma gradient (Figurnov et al.,
    2018). Draws are clamped to [tiny, 1 - eps/2] so that the log density stays finite.
    No closed-form cdf (it needs the incomplete beta function, not in the Backend contract).

    References
    ----------
    Figurnov, M., Mohamed, S. and Mnih, A. (2018). Implicit reparameterization gradients.
    NeurIPS 31.
    """

    arg_constraints = {"concentration1": constraints.positive,
                       "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1, concentration0, *, validate_args=None):
        self.B = get_backend()
        (self.concentration1, self.concentration0), batch_shape = _params(
            self.B, concentration1, concentration0)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        shape = self.shape(sample_shape)
        # Parameters broadcast to the draw shape first: see _gamma.
        x = B.beta(self._key(key), _broadcast(B, self.concentration1, shape),
                   _broadcast(B, self.concentration0, shape), shape)
        fi = B.finfo(B.dtype_of(x))
        return B.clip(x, fi.tiny, 1.0 - fi.eps / 2)

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        a, b = self.concentration1, self.concentration0
        return B.xlogy(a - 1.0, value) + B.xlog1py(b - 1.0, -value) - B.betaln(a, b)

    @property
    def mean(self):
        return self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def variance(self):
        a, b = self.concentration1, self.concentration0
        total = a + b
        return a * b / (total * total * (total + 1.0))

    def entropy(self):
        B = self.B
        a, b = self.concentration1, self.concentration0
        return (B.betaln(a, b) - (a - 1.0) * B.digamma(a) - (b - 1.0) * B.digamma(b)
                + (a + b - 2.0) * B.digamma(a + b))


class Uniform(Distribution):
    """Continuous uniform distribution on [low, high].

    ``scipy.stats.uniform(loc=low, scale=high - low)``.

    Parameters
    ----------
    low : float or Array
        Lower end.
    high : float or Array
        Upper end (> low).

    Raises
    ------
    ValueError
        Under validation, if ``low < high`` fails anywhere (the message names ``low`` and
        ``high``).

    Notes
    -----
    The support ``interval(low, high)`` is built per instance (``arg_constraints`` marks both
    ends ``dependent``, as torch). ``log_prob`` is ``-inf`` outside the support (when not
    validating). ``rsample`` is ``low + (high - low) * u``, pathwise in both ends.
    """

    arg_constraints = {"low": constraints.dependent, "high": constraints.dependent}
    has_rsample = True

    def __init__(self, low=0.0, high=1.0, *, validate_args=None):
        self.B = get_backend()
        (self.low, self.high), batch_shape = _params(self.B, low, high)
        self.support = constraints.interval(self.low, self.high)
        super().__init__(batch_shape, validate_args=validate_args)
        if self._validate_args and not bool(self.B.to_numpy(self.B.all(self.low < self.high))):
            raise ValueError(
                f"Uniform: parameter `low` must be less than `high` everywhere, but got "
                f"low={self.B.to_numpy(self.low)!r}, high={self.B.to_numpy(self.high)!r}")

    def rsample(self, key, sample_shape=()):
        u = self.B.uniform(self._key(key), self.shape(sample_shape),
                           dtype=self.B.dtype_of(self.low))
        return self.low + (self.high - self.low) * u

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        inside = (value >= self.low) & (value <= self.high)
        lp = -B.log(self.high - self.low) + B.zeros_like(value)
        return B.where(inside, lp, B.full_like(lp, -math.inf))

    @property
    def mean(self):
        return 0.5 * (self.low + self.high)

    @property
    def variance(self):
        width = self.high - self.low
        return width * width / 12.0

    def entropy(self):
        return self.B.log(self.high - self.low)

    def cdf(self, value):
        z = (self._value(value) - self.low) / (self.high - self.low)
        return self.B.clip(z, 0.0, 1.0)

    def icdf(self, q):
        return self.low + (self.high - self.low) * self.B.asarray(q)


class Weibull(Distribution):
    """Weibull distribution, parametrised as torch: ``Weibull(scale, concentration)``.

    ``scipy.stats.weibull_min(c=concentration, scale=scale)``; the cdf is
    ``1 - exp(-(x / scale)**concentration)``.

    Parameters
    ----------
    scale : float or Array
        Scale lambda (> 0).
    concentration : float or Array
        Shape k (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``scale`` or ``concentration`` is not positive.

    Notes
    -----
    ``rsample`` is ``scale * e**(1 / concentration)`` with ``e`` standard exponential.
    """

    arg_constraints = {"scale": constraints.positive, "concentration": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale, concentration, *, validate_args=None):
        self.B = get_backend()
        (self.scale, self.concentration), batch_shape = _params(self.B, scale, concentration)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        e = B.exponential(self._key(key), self.shape(sample_shape), dtype=B.dtype_of(self.scale))
        # A zero draw would give a nan gradient in the exponent (0 * log 0).
        return self.scale * B.exp(B.log(_positive_draw(B, e)) / self.concentration)

    def log_prob(self, value):
        B = self.B
        z = self._value(value) / self.scale
        k = self.concentration
        return B.log(k / self.scale) + B.xlogy(k - 1.0, z) - z ** k

    @property
    def mean(self):
        return self.scale * self.B.exp(self.B.gammaln(1.0 + 1.0 / self.concentration))

    @property
    def variance(self):
        B = self.B
        g1 = B.gammaln(1.0 + 1.0 / self.concentration)
        g2 = B.gammaln(1.0 + 2.0 / self.concentration)
        # Gamma(1 + 2/k) - Gamma(1 + 1/k)**2 cancels for large k; factor out and use expm1.
        return self.scale * self.scale * B.exp(2.0 * g1) * B.expm1(g2 - 2.0 * g1)

    def entropy(self):
        k = self.concentration
        return _EULER * (1.0 - 1.0 / k) + self.B.log(self.scale / k) + 1.0

    def cdf(self, value):
        z = self._value(value) / self.scale
        return -self.B.expm1(-(z ** self.concentration))

    def icdf(self, q):
        e = -self.B.log1p(-self.B.asarray(q))
        return self.scale * e ** (1.0 / self.concentration)


class Pareto(Distribution):
    """Pareto (type I) distribution on [scale, inf).

    ``scipy.stats.pareto(b=alpha, scale=scale)``.

    Parameters
    ----------
    scale : float or Array
        Minimum value x_m (> 0).
    alpha : float or Array
        Tail index (> 0).

    Raises
    ------
    ValueError
        Under validation, if ``scale`` or ``alpha`` is not positive.

    Notes
    -----
    The support ``greater_than_eq(scale)`` is built per instance. The mean is ``inf`` for
    ``alpha <= 1`` and the variance ``inf`` for ``alpha <= 2`` (as scipy).
    ``rsample`` is ``scale * exp(e / alpha)`` with ``e`` standard exponential.
    """

    arg_constraints = {"scale": constraints.positive, "alpha": constraints.positive}
    has_rsample = True

    def __init__(self, scale, alpha, *, validate_args=None):
        self.B = get_backend()
        (self.scale, self.alpha), batch_shape = _params(self.B, scale, alpha)
        self.support = constraints.greater_than_eq(self.scale)
        super().__init__(batch_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        e = self.B.exponential(self._key(key), self.shape(sample_shape),
                               dtype=self.B.dtype_of(self.scale))
        return self.scale * self.B.exp(e / self.alpha)

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        return (B.log(self.alpha) + self.alpha * B.log(self.scale)
                - (self.alpha + 1.0) * B.log(value))

    @property
    def mean(self):
        B = self.B
        safe = B.where(self.alpha > 1, self.alpha, B.full_like(self.alpha, 2.0))
        return B.where(self.alpha > 1, safe * self.scale / (safe - 1.0), _inf_like(B, safe))

    @property
    def variance(self):
        B = self.B
        a = B.where(self.alpha > 2, self.alpha, B.full_like(self.alpha, 3.0))
        var = self.scale * self.scale * a / ((a - 1.0) ** 2 * (a - 2.0))
        return B.where(self.alpha > 2, var, _inf_like(B, var))

    def entropy(self):
        return self.B.log(self.scale / self.alpha) + 1.0 / self.alpha + 1.0

    def cdf(self, value):
        return -self.B.expm1(self.alpha * self.B.log(self.scale / self._value(value)))

    def icdf(self, q):
        return self.scale * self.B.exp(-self.B.log1p(-self.B.asarray(q)) / self.alpha)


class VonMises(Distribution):
    """Von Mises (circular normal) distribution on [-pi, pi).

    ``scipy.stats.vonmises(kappa=concentration, loc=loc)`` (density
    ``exp(kappa cos(x - loc)) / (2 pi I0(kappa))``).

    Parameters
    ----------
    loc : float or Array
        Circular mean.
    concentration : float or Array
        Concentration kappa (> 0); large kappa approaches ``Normal(loc, 1 / sqrt(kappa))``.

    Raises
    ------
    ValueError
        Under validation, if ``concentration`` is not positive.

    Notes
    -----
    ``mean`` is the circular mean ``loc`` and ``variance`` the circular variance
    ``1 - I1(kappa) / I0(kappa)`` (as torch), not the linear moments of scipy's ``stats()``.
    There is no ``rsample`` (no implicit gradient is implemented); :meth:`sample` runs the
    rejection sampler of Best and Fisher (1979) on all draws at once inside
    :meth:`Backend.while_loop` over the mask of draws not yet accepted, so it runs on every
    backend and compiles under ``jit`` on JAX. The sampler's constants are computed in forms
    free of cancellation (for example ``rho = 2 kappa / (tau + sqrt(2 tau))`` and
    ``arccos(f) = 2 arcsin(sqrt((1 - f) / 2))`` with ``1 - f`` formed directly), so it stays
    accurate in float32 from kappa near 0 to kappa in the millions, without a cut-off between
    regimes. A draw not accepted after ``max_rejections`` rounds (probability below
    ``0.35**100`` for valid parameters) is ``nan``. The loop's stopping test is data-dependent,
    so ``sample`` cannot run under torch's ``vmap`` (batch the parameters instead).

    References
    ----------
    Best, D. J. and Fisher, N. I. (1979). Efficient simulation of the von Mises distribution.
    Journal of the Royal Statistical Society C (Applied Statistics), 28(2), 152-157.
    """

    arg_constraints = {"loc": constraints.real, "concentration": constraints.positive}
    support = constraints.interval(-math.pi, math.pi)
    has_rsample = False
    max_rejections = 100

    def __init__(self, loc, concentration, *, validate_args=None):
        self.B = get_backend()
        (self.loc, self.concentration), batch_shape = _params(self.B, loc, concentration)
        super().__init__(batch_shape, validate_args=validate_args)

    def _constants(self, kappa):
        """``(r - 1, r + 1)`` of Best and Fisher's envelope, computed without cancellation."""
        B = self.B
        two_k = 2.0 * kappa
        # s = sqrt(1 + 4 kappa^2), written to avoid overflowing 4 kappa^2 for huge kappa.
        big = kappa > 1
        inv = 1.0 / B.where(big, two_k, B.ones_like(two_k))
        s = B.where(big, two_k * B.sqrt(1.0 + inv * inv), B.sqrt(1.0 + two_k * two_k))
        tau = 1.0 + s
        root = B.sqrt(2.0 * tau)
        rho = two_k / (tau + root)
        # 1 - rho = (tau - 2 kappa + root) / (tau + root), with tau - 2 kappa = 1 + 1/(s + 2 kappa).
        one_minus_rho = (1.0 + 1.0 / (s + two_k) + root) / (tau + root)
        r_minus_1 = one_minus_rho * one_minus_rho / (2.0 * rho)
        return r_minus_1, r_minus_1 + 2.0

    def sample(self, key, sample_shape=()):
        """Draws by Best and Fisher's (1979) rejection sampler; no gradient.

        Parameters
        ----------
        key : Array, shape (2,)
            Random key (see :mod:`agvi.random`).
        sample_shape : tuple of int

        Returns
        -------
        Array, shape ``sample_shape + batch_shape``, values in [-pi, pi).
        """
        B = self.B
        shape = self.shape(sample_shape)
        loc = B.stop_gradient(self.loc)
        kappa = _broadcast(B, B.stop_gradient(self.concentration), shape)
        dtype = B.dtype_of(kappa)
        r_minus_1, r_plus_1 = self._constants(kappa)
        cond, body = _von_mises_loop(B, shape, dtype, self.max_rejections)
        init = (B.zeros((), dtype=B.int_dtype), self._key(key),
                B.zeros(shape, dtype=B.dtype("bool")), B.zeros(shape, dtype=dtype),
                kappa, r_minus_1, r_plus_1)
        _, _, done, theta, *_ = B.while_loop(cond, body, init)
        theta = B.where(done, theta, B.full_like(theta, math.nan))
        # Wrap loc + theta into [-pi, pi).
        return B.remainder(loc + theta + math.pi, 2.0 * math.pi) - math.pi

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        k = self.concentration
        # log I0(k) = log i0e(k) + k, folded into the cosine term.
        return k * (B.cos(value - self.loc) - 1.0) - _LOG_2PI - B.log(B.i0e(k))

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        k = self.concentration
        return 1.0 - self.B.i1e(k) / self.B.i0e(k)

    def entropy(self):
        B = self.B
        k = self.concentration
        return _LOG_2PI + B.log(B.i0e(k)) + k * (1.0 - B.i1e(k) / B.i0e(k))


@functools.lru_cache(maxsize=64)
def _von_mises_loop(B, shape, dtype, limit):
    """``(cond, body)`` of :class:`VonMises`' rejection loop for one backend, draw shape and
    dtype. Built once and cached (everything per-distribution travels in the loop state), so
    that JAX reuses its trace and compiled loop instead of recompiling on every eager call.

    The state is ``(round, key, accepted, theta, kappa, r - 1, r + 1)``.
    """
    half_pi = 0.5 * math.pi

    def cond(state):
        i, _, done = state[:3]
        return B.logical_and(i < limit, B.any(B.logical_not(done)))

    def body(state):
        i, key, done, theta, kappa, r_minus_1, r_plus_1 = state
        key, sub = B.split(key, 2)
        u = B.uniform(sub, (2,) + shape, dtype=dtype)
        u1 = 2.0 * u[0] - 1.0  # uniform on [-1, 1): z = cos(pi u1); its sign picks the side
        sin_half = B.sin(half_pi * u1)
        cos_half = B.cos(half_pi * u1)
        one_minus_z = 2.0 * sin_half * sin_half
        r_plus_z = r_minus_1 + 2.0 * cos_half * cos_half
        ratio = r_minus_1 / r_plus_z
        one_minus_f = ratio * one_minus_z  # f = (1 + r z) / (r + z)
        c = kappa * ratio * r_plus_1  # kappa (r - f)
        v = u[1]
        accept = (c * (2.0 - c) > v) | (B.log(c / v) + 1.0 - c >= 0)
        angle = 2.0 * B.arcsin(B.sqrt(B.clip(0.5 * one_minus_f, 0.0, 1.0)))  # arccos(f)
        take = B.logical_and(accept, B.logical_not(done))
        theta = B.where(take, B.sign(u1) * angle, theta)
        return i + 1, key, B.logical_or(done, accept), theta, kappa, r_minus_1, r_plus_1

    return cond, body


class Delta(Distribution):
    """Point mass at ``v`` (with an optional log density attached).

    Parameters
    ----------
    v : float or Array, shape ``batch_shape + event_shape``
        The location of the mass.
    log_density : float or Array, broadcastable to ``batch_shape``
        The value ``log_prob`` takes at ``v`` (default 0); used to carry a log-density term
        (for example a log-Jacobian) with a deterministic site.
    event_dim : int
        How many rightmost axes of ``v`` form one event (default 0).

    Raises
    ------
    ValueError
        If ``event_dim`` is negative or larger than the rank of ``v``.

    Notes
    -----
    ``log_prob(x)`` is ``log_density`` where ``x == v`` over the whole event and ``-inf``
    elsewhere. ``rsample`` returns ``v`` broadcast to ``sample_shape + batch_shape +
    event_shape`` (the gradient flows to ``v``). ``mean`` is ``v`` and ``variance`` zero.
    """

    arg_constraints = {"v": constraints.dependent, "log_density": constraints.real}
    has_rsample = True

    def __init__(self, v=0.0, log_density=0.0, event_dim=0, *, validate_args=None):
        self.B = get_backend()
        B = self.B
        (v,), _ = _params(B, v)
        event_dim = int(event_dim)
        if event_dim < 0 or event_dim > B.ndim(v):
            raise ValueError(
                f"Delta: event_dim must be in [0, {B.ndim(v)}] (the rank of `v`), got {event_dim}")
        v_shape = B.shape(v)
        cut = len(v_shape) - event_dim
        event_shape = v_shape[cut:]
        (log_density,), _ = _params(B, log_density)
        batch_shape = B.broadcast_shapes(v_shape[:cut], B.shape(log_density))
        self.v = _broadcast(B, v, batch_shape + event_shape)
        self.log_density = _broadcast(B, log_density, batch_shape)
        self.support = constraints.independent(constraints.real, event_dim)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        return _broadcast(self.B, self.v, self.shape(sample_shape))

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        hit = value == self.v
        if self.event_dim:
            hit = B.all(hit, axis=tuple(range(-self.event_dim, 0)))
        lp = _broadcast(B, self.log_density, B.broadcast_shapes(B.shape(hit), self.batch_shape))
        return B.where(hit, lp, B.full_like(lp, -math.inf))

    @property
    def mean(self):
        return self.v

    @property
    def variance(self):
        return self.B.zeros_like(self.v)
