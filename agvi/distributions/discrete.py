"""Discrete distributions, written once on the Backend.

Parametrisations follow ``torch.distributions`` (and NumPyro): the binary families take exactly
one of ``probs`` (success probability) or ``logits`` (log-odds), the categorical families exactly
one of ``probs`` (normalised along the last axis) or ``logits`` (unnormalised log-probabilities on
the last axis). The parameter that was not given is a lazily computed attribute. ``log_prob`` is
computed from the parameter that was given: ``xlogy`` / ``xlog1py`` on ``probs`` (exact at 0 and
1), ``log_expit`` / ``log_softmax`` on ``logits`` (stable for large log-odds).

Draws are not reparameterised (``has_rsample`` is False): ``sample`` returns integer-valued
arrays (floating, except :class:`Categorical`, whose draws are integer class labels) with no
gradient to the parameters.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from . import constraints
from .distribution import Distribution, broadcast_params

__all__ = [
    "Bernoulli", "Binomial", "Categorical", "Geometric", "Multinomial", "NegativeBinomial",
    "OneHotCategorical", "Poisson",
]


# --- private helpers -----------------------------------------------------------------------------
class _lazy_property:
    """A property computed on first access and cached in the instance ``__dict__`` (so the
    attribute given to ``__init__`` and the one derived from it look the same to users)."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


class _unit_interval_open_closed(constraints.Constraint):
    """0 < x <= 1 (torch checks this for ``Geometric.probs``)."""

    def _check(self, B, x):
        return (x > 0) & (x <= 1)

    def __repr__(self):
        return "open_closed_interval(lower_bound=0.0, upper_bound=1.0)"


class _unit_interval_closed_open(constraints.Constraint):
    """0 <= x < 1 (torch's ``half_open_interval(0, 1)`` for ``NegativeBinomial.probs``)."""

    def _check(self, B, x):
        return (x >= 0) & (x < 1)

    def __repr__(self):
        return "half_open_interval(lower_bound=0.0, upper_bound=1.0)"


class _one_hot(constraints.multinomial):
    """Vectors of zeros with a single one (a multinomial with one trial)."""

    def __init__(self):
        super().__init__(1)

    def __repr__(self):
        return "one_hot"


def _exactly_one(dist_name, probs, logits):
    if (probs is None) == (logits is None):
        got = "both" if probs is not None else "neither"
        raise ValueError(f"{dist_name}: pass exactly one of `probs` or `logits`, got {got}")
    return "probs" if probs is not None else "logits"


def _floating(B, x, dtype=None):
    """``x`` as a floating Array (integer parameters such as ``probs=1`` become float)."""
    x = B.asarray(x)
    if dtype is not None:
        return x if B.dtype_of(x) == dtype else B.astype(x, dtype)
    return x if B.is_floating(x) else B.astype(x, B.float_dtype)


def _batched_support(B, values, batch_shape, event_shape, expand):
    """``values`` (shape ``(n,) + event_shape``) on a new leading axis, broadcast over the batch
    as ``torch.distributions`` does: ``(n,) + (1,) * len(batch) + event`` or, with ``expand``,
    ``(n,) + batch + event``."""
    n = B.shape(values)[0]
    values = B.reshape(values, (n,) + (1,) * len(batch_shape) + tuple(event_shape))
    if expand:
        values = B.broadcast_to(values, (n,) + tuple(batch_shape) + tuple(event_shape))
    return values


class _Parametrised(Distribution):
    """Shared plumbing: which of ``probs`` / ``logits`` was given, validation of that one only,
    and values cast to the parameters' dtype."""

    _given = None  # "probs" or "logits"

    def _check_params(self):
        # Like torch.distributions, validate what the user gave; the other parametrisation is
        # derived from it (and would report a confusing name if it broke its constraint).
        B = self.B
        derived = {"probs": "logits", "logits": "probs"}.get(self._given)
        for name, constraint in self.arg_constraints.items():
            if name == derived or constraint is constraints.dependent:
                continue
            value = B.asarray(getattr(self, name))
            if not bool(B.to_numpy(B.all(constraint.check(value, B)))):
                raise ValueError(
                    f"{type(self).__name__}: parameter `{name}` must satisfy the constraint "
                    f"{constraint!r}, but got {B.to_numpy(value)!r}")

    @property
    def _param(self):
        return self.__dict__[self._given]

    def _cast(self, value, check=True):
        """``value`` checked against the support (``check``) and cast to the parameters' float
        dtype (so that integer or float64 values do not promote float32 computations)."""
        value = self._value(value) if check else self.B.asarray(value)
        return _floating(self.B, value, self.B.dtype_of(self._param))


class _Binary(_Parametrised):
    """Families built on one success probability per batch element (``probs`` or ``logits``)."""

    def _init_binary(self, probs, logits):
        self._given = _exactly_one(type(self).__name__, probs, logits)
        return _floating(self.B, probs if probs is not None else logits)

    @_lazy_property
    def probs(self):
        """Success probability, shape ``batch_shape``, in [0, 1]."""
        return self.B.expit(self.logits)

    @_lazy_property
    def logits(self):
        """Log-odds ``log(probs / (1 - probs))``, shape ``batch_shape``."""
        return self.B.logit(self.probs)

    # x * log(p), x * log(1 - p) and 1 - p, each from the parameter that was given.
    def _xlog_p(self, x):
        if self._given == "probs":
            return self.B.xlogy(x, self.probs)
        return x * self.B.log_expit(self.logits)

    def _xlog_q(self, x):
        if self._given == "probs":
            return self.B.xlog1py(x, -self.probs)
        return x * self.B.log_expit(-self.logits)

    def _xlog_pq(self, x, y=None):
        """``x * log(p) + y * log(1 - p)`` (``y = 1 - x`` when None); from logits one
        softplus: ``x * l - (x + y) * softplus(l)``, as ``log p = l - softplus(l)``."""
        if self._given == "probs":
            return self._xlog_p(x) + self._xlog_q(1.0 - x if y is None else y)
        softplus = self.B.softplus(self.logits)
        return x * self.logits - (softplus if y is None else (x + y) * softplus)

    def _log_q(self):
        if self._given == "probs":
            return self.B.log1p(-self.probs)
        return self.B.log_expit(-self.logits)

    def _q(self):
        if self._given == "probs":
            return 1.0 - self.probs
        return self.B.expit(-self.logits)


# --- Bernoulli ------------------------------------------------------------------------------------
class Bernoulli(_Binary):
    """Bernoulli distribution on {0, 1}.

    Parameters
    ----------
    probs : float or Array, optional
        Probability of 1, in [0, 1]; its shape is the batch shape.
    logits : float or Array, optional
        Log-odds of 1 (real). Pass exactly one of ``probs`` and ``logits``.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given; under validation, if
        ``probs`` is outside [0, 1] (or ``logits`` is nan), or a value is not 0 or 1.

    Notes
    -----
    Draws are floating 0.0 / 1.0 (as torch), from ``uniform < probs``.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_binary(probs, logits)
        self.__dict__[self._given] = param
        super().__init__(self.B.shape(param), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws, shape ``sample_shape + batch_shape``, floating 0.0 / 1.0."""
        p = self.B.stop_gradient(self.probs)
        x = self.B.bernoulli(self._key(key), p, self.shape(sample_shape))
        return self.B.astype(x, self.B.dtype_of(p))

    def log_prob(self, value):
        x = self._cast(value)
        return self._xlog_pq(x)

    def cdf(self, value):
        """P(X <= value), shape ``broadcast(value.shape, batch_shape)``."""
        x = self._cast(value, check=False)
        zero, one = self.B.zeros_like(x), self.B.ones_like(x)
        return self.B.where(x < 0, zero, self.B.where(x < 1, self._q() * one, one))

    @property
    def mean(self):
        return self.probs

    @property
    def variance(self):
        return self.probs * self._q()

    def entropy(self):
        """Shannon entropy in nats, ``-p log p - (1 - p) log(1 - p)``, shape ``batch_shape``."""
        p = self.probs
        return -(self._xlog_p(p) + self._xlog_q(self._q()))

    def enumerate_support(self, expand=True):
        """The values 0.0 and 1.0 on a new leading axis.

        Returns
        -------
        Array, shape ``(2,) + batch_shape`` (``expand=True``) or ``(2,) + (1,) * len(batch)``.
        """
        values = self.B.asarray([0.0, 1.0], dtype=self.B.dtype_of(self._param))
        return _batched_support(self.B, values, self.batch_shape, (), expand)


# --- Binomial -------------------------------------------------------------------------------------
class Binomial(_Binary):
    """Binomial distribution: the number of successes in ``total_count`` Bernoulli trials.

    Parameters
    ----------
    total_count : int or Array
        Number of trials (a non-negative integer).
    probs : float or Array, optional
        Success probability in [0, 1].
    logits : float or Array, optional
        Log-odds of success. Pass exactly one of ``probs`` and ``logits``; the parameters
        broadcast to the batch shape.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given; under validation, if
        ``total_count`` is not a non-negative integer, ``probs`` is outside [0, 1], or a value
        is not an integer in [0, total_count].

    Notes
    -----
    There is no closed-form entropy (``entropy`` raises NotImplementedError). Draws come from
    the Backend's binomial sampler.
    """

    arg_constraints = {"total_count": constraints.nonnegative_integer,
                       "probs": constraints.unit_interval, "logits": constraints.real}
    has_enumerate_support = True

    def __init__(self, total_count=1, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_binary(probs, logits)
        (n, param), batch_shape = broadcast_params(self.B, total_count, param)
        self.total_count = _floating(self.B, n, self.B.dtype_of(param))
        self.__dict__[self._given] = param
        super().__init__(batch_shape, validate_args=validate_args)

    @property
    def support(self):
        """Integers in [0, total_count]."""
        return constraints.integer_interval(0, self.total_count)

    def sample(self, key, sample_shape=()):
        """Draws, shape ``sample_shape + batch_shape``, integer-valued floats."""
        p = self.B.stop_gradient(self.probs)
        n = self.B.stop_gradient(self.total_count)
        x = self.B.binomial(self._key(key), n, p, self.shape(sample_shape))
        return self.B.astype(x, self.B.dtype_of(p))

    def log_prob(self, value):
        B = self.B
        k = self._cast(value)
        n = self.total_count
        log_binom = B.gammaln(n + 1.0) - B.gammaln(k + 1.0) - B.gammaln(n - k + 1.0)
        return log_binom + self._xlog_pq(k, n - k)

    @property
    def mean(self):
        return self.total_count * self.probs

    @property
    def variance(self):
        return self.total_count * self.probs * self._q()

    def enumerate_support(self, expand=True):
        """The values 0, 1, ..., total_count on a new leading axis.

        Returns
        -------
        Array, shape ``(total_count + 1,) + batch_shape`` (``expand=True``) or
        ``(total_count + 1,) + (1,) * len(batch_shape)``.

        Raises
        ------
        NotImplementedError
            If ``total_count`` differs across the batch (as torch).
        """
        B = self.B
        counts = B.to_numpy(self.total_count)
        n = int(counts.max()) if counts.size else 0
        if counts.size and int(counts.min()) != n:
            raise NotImplementedError(
                "Binomial.enumerate_support needs the same total_count across the batch; got "
                f"values from {int(counts.min())} to {n}")
        values = B.arange(n + 1, dtype=B.dtype_of(self._param))
        return _batched_support(B, values, self.batch_shape, (), expand)


# --- Geometric ------------------------------------------------------------------------------------
class Geometric(_Binary):
    """Geometric distribution: the number of failures before the first success (support
    0, 1, 2, ...), ``P(X = k) = (1 - p)^k p`` as in ``torch.distributions.Geometric``.

    Parameters
    ----------
    probs : float or Array, optional
        Success probability in (0, 1].
    logits : float or Array, optional
        Log-odds of success. Pass exactly one of ``probs`` and ``logits``.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given; under validation, if
        ``probs`` is outside (0, 1] or a value is not a non-negative integer.

    Notes
    -----
    ``scipy.stats.geom(p)`` counts trials (support 1, 2, ...): this distribution is
    ``geom(p, loc=-1)``. Draws are ``floor(E / -log(1 - p))`` with ``E`` standard exponential
    (inversion; Devroye 1986, "Non-Uniform Random Variate Generation", X.2).
    """

    arg_constraints = {"probs": _unit_interval_open_closed(), "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_binary(probs, logits)
        self.__dict__[self._given] = param
        super().__init__(self.B.shape(param), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws, shape ``sample_shape + batch_shape``, integer-valued floats."""
        B = self.B
        dtype = B.dtype_of(self._param)
        e = B.exponential(self._key(key), self.shape(sample_shape), dtype=dtype)
        return B.floor(e / -B.stop_gradient(self._log_q()))

    def log_prob(self, value):
        k = self._cast(value)
        if self._given == "probs":
            return self.B.xlog1py(k, -self.probs) + self.B.log(self.probs)
        return self._xlog_q(k) + self.B.log_expit(self.logits)

    def cdf(self, value):
        """P(X <= value) = 1 - (1 - p)^(floor(value) + 1) for value >= 0, else 0."""
        B = self.B
        k = self._cast(value, check=False)
        m = B.floor(B.where(k < 0, B.zeros_like(k), k)) + 1.0
        return B.where(k < 0, B.zeros_like(k), -B.expm1(m * self._log_q()))

    @property
    def mean(self):
        if self._given == "probs":
            return 1.0 / self.probs - 1.0
        return self.B.exp(-self.logits)

    @property
    def variance(self):
        return self.mean / self.probs

    def entropy(self):
        """``(-(1 - p) log(1 - p) - p log p) / p`` nats, shape ``batch_shape``."""
        p = self.probs
        return -(self._xlog_q(self._q()) + self._xlog_p(p)) / p


# --- NegativeBinomial -----------------------------------------------------------------------------
class NegativeBinomial(_Binary):
    """Negative binomial distribution, as ``torch.distributions.NegativeBinomial``: the number
    of successes before ``total_count`` failures, each trial succeeding with probability
    ``probs``::

        P(X = k) = Gamma(k + r) / (k! Gamma(r)) * (1 - p)^r * p^k,   k = 0, 1, ...

    with ``r = total_count`` (any non-negative real) and ``p = probs``.

    Parameters
    ----------
    total_count : float or Array
        Number of failures ``r`` (>= 0; ``r = 0`` is the point mass at 0).
    probs : float or Array, optional
        Success probability in [0, 1).
    logits : float or Array, optional
        Log-odds of success. Pass exactly one of ``probs`` and ``logits``; the parameters
        broadcast to the batch shape.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given; under validation, if
        ``total_count`` is negative, ``probs`` is outside [0, 1), or a value is not a
        non-negative integer.

    Notes
    -----
    In SciPy's parametrisation (failures before ``n`` successes with success probability
    ``p'``) this is ``scipy.stats.nbinom(n=total_count, p=1 - probs)``. Mean
    ``r p / (1 - p)``, variance ``r p / (1 - p)^2``. Draws are the gamma-Poisson mixture
    ``Poisson(G)``, ``G ~ Gamma(r, scale=p / (1 - p))`` (as torch). No closed-form entropy.
    """

    arg_constraints = {"total_count": constraints.nonnegative,
                       "probs": _unit_interval_closed_open(), "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, total_count, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_binary(probs, logits)
        (r, param), batch_shape = broadcast_params(self.B, total_count, param)
        self.total_count = _floating(self.B, r, self.B.dtype_of(param))
        self.__dict__[self._given] = param
        super().__init__(batch_shape, validate_args=validate_args)

    def _odds(self):
        if self._given == "probs":
            return self.probs / (1.0 - self.probs)
        return self.B.exp(self.logits)

    def sample(self, key, sample_shape=()):
        """Draws, shape ``sample_shape + batch_shape``, integer-valued floats."""
        B = self.B
        kg, kp = B.split(self._key(key), 2)
        shape = self.shape(sample_shape)
        g = B.gamma(kg, B.stop_gradient(self.total_count), shape)
        rate = g * B.stop_gradient(self._odds())
        return B.astype(B.poisson(kp, rate, shape), B.dtype_of(self._param))

    def log_prob(self, value):
        B = self.B
        k = self._cast(value)
        r = self.total_count
        # r = k = 0 has probability 1, but gammaln(0) is infinite: evaluate gammaln at 1 there
        # (log_norm = 0) instead of masking an inf - inf afterwards.
        rk = r + k
        degenerate = rk == 0
        one = B.ones_like(rk)
        log_norm = (B.gammaln(B.where(degenerate, one, rk)) - B.gammaln(k + 1.0)
                    - B.gammaln(B.where(degenerate, one, r * one)))
        return log_norm + self._xlog_pq(k, r)

    @property
    def mean(self):
        return self.total_count * self._odds()

    @property
    def variance(self):
        return self.mean / self._q()


# --- Poisson --------------------------------------------------------------------------------------
class Poisson(_Parametrised):
    """Poisson distribution, ``P(X = k) = rate^k exp(-rate) / k!``.

    Parameters
    ----------
    rate : float or Array
        Mean (> 0); its shape is the batch shape.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        Under validation, if ``rate`` is not positive or a value is not a non-negative integer.

    Notes
    -----
    ``cdf(k) = Q(floor(k) + 1, rate)`` (regularised upper incomplete gamma). There is no
    closed-form entropy. Draws come from the Backend's Poisson sampler.
    """

    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative_integer
    _given = "rate"

    def __init__(self, rate, *, validate_args=None):
        self.B = get_backend()
        self.rate = _floating(self.B, rate)
        super().__init__(self.B.shape(self.rate), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws, shape ``sample_shape + batch_shape``, integer-valued floats."""
        B = self.B
        x = B.poisson(self._key(key), B.stop_gradient(self.rate), self.shape(sample_shape))
        return B.astype(x, B.dtype_of(self.rate))

    def log_prob(self, value):
        k = self._cast(value)
        return self.B.xlogy(k, self.rate) - self.rate - self.B.gammaln(k + 1.0)

    def cdf(self, value):
        """P(X <= value), shape ``broadcast(value.shape, batch_shape)``."""
        B = self.B
        k = self._cast(value, check=False)
        negative = k < 0
        m = B.floor(B.where(negative, B.zeros_like(k), k)) + 1.0
        rate = B.broadcast_to(self.rate, B.shape(m * self.rate))
        m = B.broadcast_to(m, B.shape(rate))
        return B.where(negative, B.zeros_like(rate), B.gammaincc(m, rate))

    @property
    def mean(self):
        return self.rate

    @property
    def variance(self):
        return self.rate


# --- Categorical families -------------------------------------------------------------------------
class _CategoricalBase(_Parametrised):
    """Probabilities over ``K`` categories on the last axis of ``probs`` / ``logits``."""

    def _init_categorical(self, probs, logits):
        B = self.B
        self._given = _exactly_one(type(self).__name__, probs, logits)
        param = _floating(B, probs if probs is not None else logits)
        if B.ndim(param) < 1:
            raise ValueError(f"{type(self).__name__}: `{self._given}` must have at least one "
                             "axis (the categories are on the last axis), got a scalar")
        if self._given == "probs":
            # torch semantics: probs are normalised along the last axis.
            param = param / B.sum(param, axis=-1, keepdims=True)
        else:
            param = B.log_softmax(param, axis=-1)
        return param

    @_lazy_property
    def probs(self):
        """Normalised probabilities, shape ``param_shape = batch_shape + (K,)``."""
        return self.B.exp(self.logits)

    @_lazy_property
    def logits(self):
        """Normalised log-probabilities, shape ``batch_shape + (K,)`` (``-inf`` where
        ``probs`` is 0)."""
        B = self.B
        p = self.probs
        # log of the positive entries only: no divide-by-zero warning (NumPy), no inf gradient.
        positive = p > 0
        logp = B.log(B.where(positive, p, B.ones_like(p)))
        return B.where(positive, logp, B.full_like(logp, -math.inf))

    @property
    def num_categories(self) -> int:
        """Number of categories ``K``."""
        return self.B.shape(self._param)[-1]

    def _p_log_p(self):
        # torch clamps -inf logits to the most negative float so that 0 * log 0 = 0.
        B = self.B
        logits = B.clip(self.logits, min=B.finfo(B.dtype_of(self._param)).min)
        return self.probs * logits

    def entropy(self):
        """Shannon entropy ``-sum_k p_k log p_k`` in nats, shape ``batch_shape``."""
        return -self.B.sum(self._p_log_p(), axis=-1)

    def _draw_labels(self, key, sample_shape):
        B = self.B
        logits = B.stop_gradient(self.logits)
        return B.categorical(self._key(key), logits, shape=tuple(sample_shape) + self.batch_shape)

    def _xlogp(self, x):
        """``x * log p`` summed over the categories, 0 where ``x == 0`` (even if ``p == 0``)."""
        B = self.B
        logits = B.where(x == 0, B.zeros_like(self.logits), self.logits)  # no 0 * -inf
        return B.sum(x * logits, axis=-1)


class Categorical(_CategoricalBase):
    """Categorical distribution over the labels 0, ..., K - 1.

    Parameters
    ----------
    probs : Array, shape ``batch_shape + (K,)``, optional
        Non-negative category weights; normalised along the last axis (as torch).
    logits : Array, shape ``batch_shape + (K,)``, optional
        Unnormalised log-probabilities (log-softmax normalised). Pass exactly one.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given or the parameter is a scalar;
        under validation, if ``probs`` has negative entries, or a value is not an integer in
        [0, K - 1].

    Notes
    -----
    ``event_shape`` is ``()``; draws are integer labels (the Backend's ``int_dtype``) from the
    Gumbel-max trick. ``mean`` and ``variance`` are the moments of the label (torch returns nan
    there). Values outside [0, K - 1] have ``log_prob`` ``-inf`` when validation is off.
    """

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_categorical(probs, logits)
        self.__dict__[self._given] = param
        super().__init__(self.B.shape(param)[:-1], validate_args=validate_args)

    @property
    def support(self):
        """Integers in [0, K - 1]."""
        return constraints.integer_interval(0, self.num_categories - 1)

    def sample(self, key, sample_shape=()):
        """Labels, shape ``sample_shape + batch_shape``, integers."""
        return self._draw_labels(key, sample_shape)

    def log_prob(self, value):
        B = self.B
        value = self._value(value)
        idx = value if not B.is_floating(value) else B.astype(value, B.int_dtype)
        K = self.num_categories
        shape = B.broadcast_shapes(B.shape(idx), self.batch_shape)
        idx = B.broadcast_to(idx, shape)
        logits = B.broadcast_to(self.logits, shape + (K,))
        # Select with a one-hot mask rather than take_along_axis: differentiable on every
        # backend, and labels outside [0, K - 1] select nothing (log_prob -inf).
        hit = B.expand_dims(idx, -1) == B.arange(K, dtype=B.dtype_of(idx))
        lp = B.sum(B.where(hit, logits, B.zeros_like(logits)), axis=-1)
        inside = (idx >= 0) & (idx < K)
        return B.where(inside, lp, B.full_like(lp, -math.inf))

    def _labels(self):
        return self.B.arange(self.num_categories, dtype=self.B.dtype_of(self._param))

    @property
    def mean(self):
        return self.B.sum(self.probs * self._labels(), axis=-1)

    @property
    def variance(self):
        labels = self._labels()
        m = self.B.expand_dims(self.mean, -1)
        return self.B.sum(self.probs * (labels - m) ** 2, axis=-1)

    def enumerate_support(self, expand=True):
        """The labels 0, ..., K - 1 on a new leading axis.

        Returns
        -------
        Array of ints, shape ``(K,) + batch_shape`` (``expand=True``) or
        ``(K,) + (1,) * len(batch_shape)``.
        """
        values = self.B.arange(self.num_categories, dtype=self.B.int_dtype)
        return _batched_support(self.B, values, self.batch_shape, (), expand)


class OneHotCategorical(_CategoricalBase):
    """Categorical distribution over one-hot vectors of length K.

    Parameters
    ----------
    probs : Array, shape ``batch_shape + (K,)``, optional
        Non-negative category weights; normalised along the last axis (as torch).
    logits : Array, shape ``batch_shape + (K,)``, optional
        Unnormalised log-probabilities. Pass exactly one.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given or the parameter is a scalar;
        under validation, if ``probs`` has negative entries or a value is not one-hot.

    Notes
    -----
    ``event_shape`` is ``(K,)``; draws are floating one-hot vectors. ``mean`` is ``probs`` and
    ``variance`` is ``probs * (1 - probs)``.
    """

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = _one_hot()
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        param = self._init_categorical(probs, logits)
        self.__dict__[self._given] = param
        shape = self.B.shape(param)
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """One-hot draws, shape ``sample_shape + batch_shape + (K,)``, floating."""
        labels = self._draw_labels(key, sample_shape)
        return self.B.one_hot(labels, self.num_categories, dtype=self.B.dtype_of(self._param))

    def log_prob(self, value):
        return self._xlogp(self._cast(value))

    @property
    def mean(self):
        return self.probs

    @property
    def variance(self):
        return self.probs * (1.0 - self.probs)

    def enumerate_support(self, expand=True):
        """The K one-hot vectors on a new leading axis.

        Returns
        -------
        Array, shape ``(K,) + batch_shape + (K,)`` (``expand=True``) or
        ``(K,) + (1,) * len(batch_shape) + (K,)``.
        """
        K = self.num_categories
        values = self.B.eye(K, dtype=self.B.dtype_of(self._param))
        return _batched_support(self.B, values, self.batch_shape, (K,), expand)


class Multinomial(_CategoricalBase):
    """Multinomial distribution: counts of ``total_count`` categorical draws over K categories.

    Parameters
    ----------
    total_count : int or Array
        Number of draws (a non-negative integer), broadcast against ``batch_shape``.
    probs : Array, shape ``batch_shape + (K,)``, optional
        Non-negative category weights; normalised along the last axis (as torch).
    logits : Array, shape ``batch_shape + (K,)``, optional
        Unnormalised log-probabilities. Pass exactly one.
    validate_args : bool or None
        See :class:`~agvi.distributions.Distribution`.

    Raises
    ------
    ValueError
        If neither or both of ``probs`` and ``logits`` are given or the parameter is a scalar;
        under validation, if ``total_count`` is not a non-negative integer, ``probs`` has
        negative entries, or a value is not a count vector summing to ``total_count``.

    Notes
    -----
    ``event_shape`` is ``(K,)``. ``log_prob`` is ``-inf`` for count vectors that do not sum to
    ``total_count``. Draws are sequential conditional binomials,
    ``x_k ~ Binomial(n - sum_{j<k} x_j, p_k / sum_{j>=k} p_j)`` (Devroye 1986,
    "Non-Uniform Random Variate Generation", XI.1), vectorised over the batch: K - 1 binomial
    draws in all. There is no closed-form entropy.
    """

    arg_constraints = {"total_count": constraints.nonnegative_integer,
                       "probs": constraints.simplex, "logits": constraints.real_vector}

    def __init__(self, total_count=1, probs=None, logits=None, *, validate_args=None):
        self.B = get_backend()
        B = self.B
        param = self._init_categorical(probs, logits)
        n = _floating(B, total_count, B.dtype_of(param))
        shape = B.shape(param)
        try:
            batch_shape = B.broadcast_shapes(B.shape(n), shape[:-1])
        except ValueError:
            raise ValueError(f"Multinomial: `total_count` of shape {B.shape(n)} does not "
                             f"broadcast with the batch shape {shape[:-1]} of `{self._given}`"
                             ) from None
        self.total_count = B.broadcast_to(n, batch_shape)
        self.__dict__[self._given] = B.broadcast_to(param, batch_shape + shape[-1:])
        super().__init__(batch_shape, shape[-1:], validate_args=validate_args)

    @property
    def support(self):
        """Non-negative integer vectors summing to ``total_count``."""
        return constraints.multinomial(self.total_count)

    def sample(self, key, sample_shape=()):
        """Count vectors, shape ``sample_shape + batch_shape + (K,)``, integer-valued floats."""
        B = self.B
        K = self.num_categories
        dtype = B.dtype_of(self._param)
        shape = self.shape(sample_shape)[:-1]
        p = B.stop_gradient(self.probs)
        remaining = B.broadcast_to(B.stop_gradient(self.total_count), shape)
        if K == 1:
            return B.expand_dims(remaining, -1)
        # tail[k] = sum_{j >= k} p_j: the conditional success probability of category k is
        # p_k / tail[k] given that the draws went to none of the earlier categories.
        tail = B.flip(B.cumsum(B.flip(p, -1), axis=-1), -1)
        safe_tail = B.where(tail > 0, tail, B.ones_like(tail))
        cond = B.clip(B.where(tail > 0, p / safe_tail, B.zeros_like(p)), min=0.0, max=1.0)
        keys = B.split(self._key(key), K - 1)
        counts = []
        for k in range(K - 1):
            c = B.astype(B.binomial(keys[k], remaining, cond[..., k], shape), dtype)
            counts.append(c)
            remaining = remaining - c
        counts.append(remaining)
        return B.stack(counts, axis=-1)

    def log_prob(self, value):
        B = self.B
        x = self._cast(value)
        n = self.total_count
        lp = B.gammaln(n + 1.0) - B.sum(B.gammaln(x + 1.0), axis=-1) + self._xlogp(x)
        return B.where(B.sum(x, axis=-1) == n, lp, B.full_like(lp, -math.inf))

    @property
    def mean(self):
        return self.B.expand_dims(self.total_count, -1) * self.probs

    @property
    def variance(self):
        return self.B.expand_dims(self.total_count, -1) * self.probs * (1.0 - self.probs)

    def entropy(self):
        """Not available in closed form.

        Raises
        ------
        NotImplementedError
            Always (the categorical entropy of the base class does not apply).
        """
        return self._unavailable("entropy")

