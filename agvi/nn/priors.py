"""Priors over the weights of a Bayesian network, one per parameter tensor.

Each prior gives the distribution of a whole weight tensor (``event_shape`` = the tensor's
shape, so that a model can draw it at one :func:`agvi.sample` site) and the complexity term
``KL(q || prior)`` of a mean-field Gaussian ``q`` over that tensor: in closed form for the
Gaussian prior, otherwise the Monte Carlo estimate from ``n_mc_samples`` draws of ``q``.

=========================  ==============================================================
``"gaussian"``             ``w_i ~ N(mean, std^2)`` independently; ``std`` defaults to
                           ``1 / sqrt(fan_in)`` of the layer. Closed-form KL.
``"conjugate"``            Normal-Gamma: ``tau ~ Gamma(alpha_0, beta_0)`` (rate ``beta_0``),
                           ``mu | tau ~ N(mu_0, 1 / (kappa_0 tau))``,
                           ``w_i | mu, tau ~ N(mu, 1 / tau)``, with ``mu`` and ``tau`` shared by
                           the tensor and integrated out (:class:`NormalGammaWeights`).
``"conjugate_known_mean"`` ``tau ~ Gamma(alpha_0, beta_0)``, ``w_i | tau ~ N(mean, 1 / tau)``,
                           ``tau`` shared and integrated out (:class:`GammaPrecisionWeights`).
``"mixtgauss"``            ``w_i ~ pi N(0, sigma_1^2) + (1 - pi) N(0, sigma_2^2)``
                           independently (Blundell et al., 2015, eq. 7).
=========================  ==============================================================

References
----------
Blundell, C., Cornebise, J., Kavukcuoglu, K. and Wierstra, D. (2015). Weight uncertainty in
neural networks. ICML (the scale-mixture prior, eq. 7).
Murphy, K. P. (2007). Conjugate Bayesian analysis of the Gaussian distribution, sections 3 and
9 (the Normal-Gamma marginal likelihood, eq. 95, and its Student-t marginals).
Graves, A. (2011). Practical variational inference for neural networks. NIPS 24.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from ..distributions import constraints
from ..distributions.continuous import Gamma, Normal
from ..distributions.discrete import Categorical
from ..distributions.distribution import Distribution
from ..distributions.kl import kl_divergence, kl_divergence_mc
from ..distributions.mixture import MixtureSameFamily

__all__ = [
    "ConjugateKnownMeanPrior", "ConjugatePrior", "GammaPrecisionWeights", "GaussianPrior",
    "MixtureGaussianPrior", "NormalGammaWeights", "Prior", "make_prior", "PRIOR_TYPES",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _positive(value, name, who):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{who}: `{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def _real(value, name, who):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ValueError(f"{who}: `{name}` must be a finite number, got {value!r}")
    return float(value)


def _n_mc(value, who, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: `n_mc_samples` must be a positive int, got {value!r}")
    return int(value)


def _flatten_event(B, value, event_shape):
    """``value`` of shape ``batch + event_shape`` reshaped to ``batch + (n,)``."""
    shape = tuple(B.shape(value))
    k = len(event_shape)
    if shape[len(shape) - k:] != tuple(event_shape):
        raise ValueError(f"value of shape {shape} does not end with the event shape "
                         f"{tuple(event_shape)}")
    batch = shape[:len(shape) - k]
    return B.reshape(value, batch + (int(math.prod(event_shape)),)), batch


class _SharedPrecisionWeights(Distribution):
    """Base of the weight tensors whose entries share a Gamma(alpha_0, beta_0) precision."""

    support = constraints.real
    has_rsample = True

    def __init__(self, alpha_0, beta_0, event_shape, who, validate_args):
        self.B = get_backend()
        self.alpha_0 = _positive(alpha_0, "alpha_0", who)
        self.beta_0 = _positive(beta_0, "beta_0", who)
        event_shape = tuple(int(s) for s in event_shape)
        self.support = constraints.independent(constraints.real, len(event_shape))
        super().__init__((), event_shape, validate_args=validate_args)

    def _flat(self, value):
        """``value`` as ``batch + (n,)`` and ``n``."""
        v, _ = _flatten_event(self.B, self._value(value), self.event_shape)
        return v, self.B.shape(v)[-1]

    def _precision(self, key, sample_shape):
        """A precision draw per sample, shape ``sample_shape + (1,) * event_dim``."""
        ones = (1,) * len(self.event_shape)
        return Gamma(self.alpha_0, self.beta_0).rsample(key, tuple(sample_shape) + ones)


class NormalGammaWeights(_SharedPrecisionWeights):
    """A tensor of weights with a shared unknown mean and precision, both integrated out.

    ``tau ~ Gamma(alpha_0, beta_0)``, ``mu | tau ~ N(mu_0, 1 / (kappa_0 tau))``,
    ``w_i | mu, tau ~ N(mu, 1 / tau)`` for the ``n = prod(event_shape)`` entries. The joint
    density of ``w`` is the multivariate Student-t with ``2 alpha_0`` degrees of freedom,
    location ``mu_0`` and shape matrix ``beta_0 / alpha_0 (I + 1 1^T / kappa_0)``
    (``scipy.stats.multivariate_t``); each entry alone is Student-t with ``2 alpha_0``
    degrees of freedom, location ``mu_0`` and scale ``sqrt(beta_0 (kappa_0 + 1) /
    (alpha_0 kappa_0))``.

    Parameters
    ----------
    mu_0, kappa_0, alpha_0, beta_0 : float
        ``kappa_0, alpha_0, beta_0 > 0``.
    event_shape : tuple of int
        The shape of the weight tensor.

    Notes
    -----
    ``log_prob`` is the Normal-Gamma marginal likelihood (Murphy, 2007, eq. 95):
    ``log Gamma(alpha_n) - log Gamma(alpha_0) + alpha_0 log beta_0 - alpha_n log beta_n +
    1/2 log(kappa_0 / kappa_n) - n/2 log(2 pi)`` with ``kappa_n = kappa_0 + n``,
    ``alpha_n = alpha_0 + n/2`` and ``beta_n = beta_0 + S/2 + kappa_0 n (xbar - mu_0)^2 /
    (2 kappa_n)`` (``xbar`` the mean of the entries, ``S`` their sum of squared deviations).
    ``rsample`` draws ``tau``, ``mu``, then ``w`` (reparameterised, the gamma draw implicitly).
    """

    arg_constraints = {"mu_0": constraints.real, "kappa_0": constraints.positive,
                       "alpha_0": constraints.positive, "beta_0": constraints.positive}
    def __init__(self, mu_0, kappa_0, alpha_0, beta_0, event_shape, *, validate_args=None):
        who = "NormalGammaWeights"
        self.mu_0 = _real(mu_0, "mu_0", who)
        self.kappa_0 = _positive(kappa_0, "kappa_0", who)
        super().__init__(alpha_0, beta_0, event_shape, who, validate_args)

    def log_prob(self, value):
        B = self.B
        v, n = self._flat(value)
        a0, b0, k0, m0 = self.alpha_0, self.beta_0, self.kappa_0, self.mu_0
        kn, an = k0 + n, a0 + 0.5 * n
        xbar = B.mean(v, axis=-1, keepdims=True)
        ss = B.sum((v - xbar) ** 2, axis=-1)
        xbar = B.squeeze(xbar, -1)
        bn = b0 + 0.5 * ss + k0 * n * (xbar - m0) ** 2 / (2.0 * kn)
        const = (math.lgamma(an) - math.lgamma(a0) + a0 * math.log(b0)
                 + 0.5 * math.log(k0 / kn) - n * _HALF_LOG_2PI)
        return const - an * B.log(bn)

    def rsample(self, key, sample_shape=()):
        B = self.B
        sample_shape = tuple(sample_shape)
        k_tau, k_mu, k_w = B.split(self._key(key), 3)
        tau = self._precision(k_tau, sample_shape)
        mu = self.mu_0 + B.normal(k_mu, B.shape(tau)) / B.sqrt(self.kappa_0 * tau)
        return mu + B.normal(k_w, self.shape(sample_shape)) / B.sqrt(tau)

    @property
    def mean(self):
        value = self.mu_0 if self.alpha_0 > 0.5 else math.nan
        return self.B.full(self.event_shape, value)

    @property
    def variance(self):
        a, b, k = self.alpha_0, self.beta_0, self.kappa_0
        value = b * (k + 1.0) / (k * (a - 1.0)) if a > 1 else math.inf
        return self.B.full(self.event_shape, value)


class GammaPrecisionWeights(_SharedPrecisionWeights):
    """A tensor of weights with a known mean and a shared unknown precision, integrated out.

    ``tau ~ Gamma(alpha_0, beta_0)``, ``w_i | tau ~ N(mean, 1 / tau)``. The joint density is
    the multivariate Student-t with ``2 alpha_0`` degrees of freedom, location ``mean`` and
    shape matrix ``beta_0 / alpha_0 I``; each entry alone is Student-t with ``2 alpha_0``
    degrees of freedom, location ``mean`` and scale ``sqrt(beta_0 / alpha_0)``.

    Parameters
    ----------
    mean : float
    alpha_0, beta_0 : float
        ``> 0``.
    event_shape : tuple of int

    Notes
    -----
    ``log p(w) = log Gamma(alpha_0 + n/2) - log Gamma(alpha_0) + alpha_0 log beta_0 -
    (alpha_0 + n/2) log(beta_0 + S/2) - n/2 log(2 pi)`` with ``S = sum_i (w_i - mean)^2``
    (Murphy, 2007, section 9).
    """

    arg_constraints = {"loc": constraints.real, "alpha_0": constraints.positive,
                       "beta_0": constraints.positive}
    def __init__(self, mean, alpha_0, beta_0, event_shape, *, validate_args=None):
        self.loc = _real(mean, "mean", "GammaPrecisionWeights")
        super().__init__(alpha_0, beta_0, event_shape, "GammaPrecisionWeights", validate_args)

    def log_prob(self, value):
        B = self.B
        v, n = self._flat(value)
        a0, b0 = self.alpha_0, self.beta_0
        an = a0 + 0.5 * n
        ss = B.sum((v - self.loc) ** 2, axis=-1)
        const = math.lgamma(an) - math.lgamma(a0) + a0 * math.log(b0) - n * _HALF_LOG_2PI
        return const - an * B.log(b0 + 0.5 * ss)

    def rsample(self, key, sample_shape=()):
        B = self.B
        sample_shape = tuple(sample_shape)
        k_tau, k_w = B.split(self._key(key), 2)
        tau = self._precision(k_tau, sample_shape)
        return self.loc + B.normal(k_w, self.shape(sample_shape)) / B.sqrt(tau)

    @property
    def mean(self):
        return self.B.full(self.event_shape, self.loc if self.alpha_0 > 0.5 else math.nan)

    @property
    def variance(self):
        a, b = self.alpha_0, self.beta_0
        return self.B.full(self.event_shape, b / (a - 1.0) if a > 1 else math.inf)


class Prior:
    """The prior of one weight tensor (base class).

    Subclasses set :attr:`prior_type` and implement :meth:`distribution`; :meth:`kl` is the
    Monte Carlo estimate unless overridden.

    Attributes
    ----------
    prior_type : str
        The name :func:`make_prior` knows it by.
    n_mc_samples : int or None
        Draws of ``q`` per Monte Carlo estimate of the KL (None: closed form).
    """

    prior_type = "prior"
    n_mc_samples = None

    def distribution(self, shape, fan_in: int = 1) -> Distribution:
        """The prior of a tensor of shape ``shape``: a Distribution with ``batch_shape ()`` and
        ``event_shape shape``, built on the active backend.

        Parameters
        ----------
        shape : tuple of int
        fan_in : int
            The fan-in of the layer (used by priors whose default scale depends on it).
        """
        raise NotImplementedError

    @property
    def closed_form(self) -> bool:
        """Whether :meth:`kl` is exact (no key needed)."""
        return self.n_mc_samples is None

    def kl(self, loc, scale, key=None, fan_in: int = 1):
        """``KL(q || prior)`` summed over the tensor, ``q = N(loc, scale^2)`` entrywise.

        Parameters
        ----------
        loc, scale : Array, shape ``shape``
        key : Array, shape (2,), or None
            Needed for the Monte Carlo estimate.
        fan_in : int

        Returns
        -------
        Array, shape ()
            Exact, or the mean of ``log q(w) - log p(w)`` over ``n_mc_samples`` draws of
            ``w ~ q`` (unbiased; differentiable in ``loc`` and ``scale`` by the pathwise
            estimator).

        Raises
        ------
        ValueError
            If the estimate is Monte Carlo and ``key`` is None.
        """
        B = get_backend()
        shape = tuple(B.shape(loc))
        if key is None:
            raise ValueError(f"{type(self).__name__}.kl: the KL to a {self.prior_type!r} prior "
                             f"is a Monte Carlo estimate (n_mc_samples={self.n_mc_samples}); "
                             "pass key=")
        q = Normal(loc, scale).to_event(len(shape))
        return kl_divergence_mc(q, self.distribution(shape, fan_in), key, self.n_mc_samples)

    def _repr_args(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"


class GaussianPrior(Prior):
    """``w_i ~ N(mean, std^2)`` independently (``"gaussian"``).

    Parameters
    ----------
    mean : float
    std : float or None
        ``> 0``; None takes ``1 / sqrt(fan_in)`` of the layer.
    n_mc_samples : int or None
        None (default): the closed-form KL; an int: a Monte Carlo estimate instead (for
        checks).

    Raises
    ------
    ValueError
        If ``std`` is not positive or ``n_mc_samples`` not a positive int.
    """

    prior_type = "gaussian"

    def __init__(self, mean: float = 0.0, std: float | None = None,
                 n_mc_samples: int | None = None):
        self.mean = _real(mean, "mean", "gaussian prior")
        self.std = None if std is None else _positive(std, "std", "gaussian prior")
        self.n_mc_samples = _n_mc(n_mc_samples, "gaussian prior", allow_none=True)

    def std_for(self, fan_in: int) -> float:
        """The standard deviation used for a layer with this fan-in."""
        return self.std if self.std is not None else 1.0 / math.sqrt(max(int(fan_in), 1))

    def distribution(self, shape, fan_in: int = 1):
        B = get_backend()
        shape = tuple(shape)
        base = Normal(B.full(shape, self.mean), B.full(shape, self.std_for(fan_in)))
        return base.to_event(len(shape))

    def kl(self, loc, scale, key=None, fan_in: int = 1):
        if self.n_mc_samples is not None:
            return super().kl(loc, scale, key, fan_in)
        B = get_backend()
        return B.sum(kl_divergence(Normal(loc, scale), Normal(self.mean, self.std_for(fan_in))))

    def _repr_args(self):
        return {"mean": self.mean, "std": self.std, "n_mc_samples": self.n_mc_samples}


class ConjugatePrior(Prior):
    """Normal-Gamma prior with unknown mean and precision shared by the tensor
    (``"conjugate"``); its density is :class:`NormalGammaWeights`.

    Parameters
    ----------
    n_mc_samples : int
    alpha_0, beta_0 : float
        Gamma prior of the precision (shape, rate), ``> 0``.
    mu_0 : float
        Prior mean of the weights' mean.
    kappa_0 : float
        ``> 0``: the prior precision of the mean, in units of the weights' precision.
    """

    prior_type = "conjugate"

    def __init__(self, n_mc_samples: int = 10, alpha_0: float = 0.5, beta_0: float = 0.5,
                 mu_0: float = 0.0, kappa_0: float = 1.0):
        who = "conjugate prior"
        self.n_mc_samples = _n_mc(n_mc_samples, who)
        self.alpha_0 = _positive(alpha_0, "alpha_0", who)
        self.beta_0 = _positive(beta_0, "beta_0", who)
        self.mu_0 = _real(mu_0, "mu_0", who)
        self.kappa_0 = _positive(kappa_0, "kappa_0", who)

    def distribution(self, shape, fan_in: int = 1):
        return NormalGammaWeights(self.mu_0, self.kappa_0, self.alpha_0, self.beta_0,
                                  tuple(shape))

    def _repr_args(self):
        return {"n_mc_samples": self.n_mc_samples, "alpha_0": self.alpha_0,
                "beta_0": self.beta_0, "mu_0": self.mu_0, "kappa_0": self.kappa_0}


class ConjugateKnownMeanPrior(Prior):
    """Gamma prior on a precision shared by the tensor, known mean
    (``"conjugate_known_mean"``); its density is :class:`GammaPrecisionWeights`.

    Parameters
    ----------
    n_mc_samples : int
    mean : float
    alpha_0, beta_0 : float
        Gamma prior of the precision (shape, rate), ``> 0``.
    """

    prior_type = "conjugate_known_mean"

    def __init__(self, n_mc_samples: int = 10, mean: float = 0.0, alpha_0: float = 0.5,
                 beta_0: float = 0.5):
        who = "conjugate_known_mean prior"
        self.n_mc_samples = _n_mc(n_mc_samples, who)
        self.mean = _real(mean, "mean", who)
        self.alpha_0 = _positive(alpha_0, "alpha_0", who)
        self.beta_0 = _positive(beta_0, "beta_0", who)

    def distribution(self, shape, fan_in: int = 1):
        return GammaPrecisionWeights(self.mean, self.alpha_0, self.beta_0, tuple(shape))

    def _repr_args(self):
        return {"n_mc_samples": self.n_mc_samples, "mean": self.mean, "alpha_0": self.alpha_0,
                "beta_0": self.beta_0}


class MixtureGaussianPrior(Prior):
    """The scale mixture ``pi N(0, sigma_1^2) + (1 - pi) N(0, sigma_2^2)`` per weight
    (``"mixtgauss"``; Blundell et al., 2015, eq. 7).

    Parameters
    ----------
    n_mc_samples : int
    sigma_1, sigma_2 : float
        ``> 0``; Blundell et al. take ``sigma_1 > sigma_2`` and ``sigma_2 << 1``.
    pi : float
        In (0, 1): the weight of the first component.
    """

    prior_type = "mixtgauss"

    def __init__(self, n_mc_samples: int = 10, sigma_1: float = 1.0,
                 sigma_2: float = math.exp(-6.0), pi: float = 0.5):
        who = "mixtgauss prior"
        self.n_mc_samples = _n_mc(n_mc_samples, who)
        self.sigma_1 = _positive(sigma_1, "sigma_1", who)
        self.sigma_2 = _positive(sigma_2, "sigma_2", who)
        if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0 < pi < 1:
            raise ValueError(f"{who}: `pi` must be a number in (0, 1), got {pi!r}")
        self.pi = float(pi)

    def distribution(self, shape, fan_in: int = 1):
        B = get_backend()
        shape = tuple(shape)
        mix = MixtureSameFamily(Categorical(probs=B.asarray([self.pi, 1.0 - self.pi])),
                                Normal(B.zeros((2,)), B.asarray([self.sigma_1, self.sigma_2])))
        return mix.expand(shape).to_event(len(shape))

    def _repr_args(self):
        return {"n_mc_samples": self.n_mc_samples, "sigma_1": self.sigma_1,
                "sigma_2": self.sigma_2, "pi": self.pi}


#: prior type name -> class
PRIOR_TYPES = {
    "gaussian": GaussianPrior,
    "conjugate": ConjugatePrior,
    "conjugate_known_mean": ConjugateKnownMeanPrior,
    "mixtgauss": MixtureGaussianPrior,
}


def make_prior(prior_type="gaussian", **kwargs) -> Prior:
    """A :class:`Prior` from its type name and hyperparameters.

    Parameters
    ----------
    prior_type : str or Prior
        One of ``"gaussian"``, ``"conjugate"``, ``"conjugate_known_mean"``, ``"mixtgauss"``,
        or a Prior (returned as is; no ``kwargs`` then).
    **kwargs
        The hyperparameters of that type (see its class).

    Returns
    -------
    Prior

    Raises
    ------
    ValueError
        Unknown type name, or a Prior given together with ``kwargs``.
    TypeError
        An unknown hyperparameter for the type.
    """
    if isinstance(prior_type, Prior):
        if kwargs:
            raise ValueError(f"make_prior: hyperparameters {sorted(kwargs)} given with a Prior "
                             "object; set them on the object instead")
        return prior_type
    cls = PRIOR_TYPES.get(prior_type) if isinstance(prior_type, str) else None
    if cls is None:
        raise ValueError(f"prior_type must be one of {sorted(PRIOR_TYPES)} or a Prior, "
                         f"got {prior_type!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"prior_type {prior_type!r}: {exc}; its hyperparameters are those of "
                        f"{cls.__name__}") from None
