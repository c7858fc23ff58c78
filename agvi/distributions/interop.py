"""Conversion between agvi distributions and ``torch.distributions`` / ``numpyro.distributions``.

:func:`from_torch` and :func:`from_numpyro` build the agvi distribution of the same law on the
*active* backend (:func:`agvi.get_backend`); :func:`to_torch` and :func:`to_numpyro` build the
framework's distribution from an agvi one. Parameters are converted with ``B.asarray``: arrays
of the target framework pass through unchanged (so gradients keep flowing when the agvi backend
is the framework's own), others go through a NumPy copy (``.detach().cpu().numpy()`` for torch
tensors, ``numpy.asarray`` for JAX arrays).

Frameworks are imported only through :func:`agvi.backends.import_framework`, inside the
functions, when a conversion is asked for: importing this module imports neither torch nor
numpyro.

Families converted (both directions, where the other side has them): Normal, LogNormal,
HalfNormal, HalfCauchy, Cauchy, StudentT, Laplace, Logistic (NumPyro only; to torch as the
equivalent TransformedDistribution), Gumbel, Exponential, Gamma, InverseGamma, Chi2, Beta,
Uniform, Weibull, Pareto, VonMises, Dirichlet, MultivariateNormal, LowRankMultivariateNormal,
LKJCholesky, Bernoulli, Binomial, Categorical, OneHotCategorical (torch only: NumPyro has none),
Poisson, Geometric, NegativeBinomial, Multinomial, Delta (NumPyro only), Independent,
MixtureSameFamily, and the expanded and masked wrappers (masked: NumPyro only).

Parametrisation notes:

- agvi follows torch's argument names and orders, so torch conversions map one to one; torch's
  ``Multinomial`` needs one Python-int ``total_count`` (agvi allows one per batch element).
- NumPyro's discrete families are split by parametrisation (``BernoulliProbs`` /
  ``BernoulliLogits``, ...) and put ``probs`` before ``total_count`` (``BinomialProbs(probs,
  total_count)``, ``MultinomialProbs(probs, total_count)``); the converters pass keywords.
- NumPyro's ``NegativeBinomialProbs(total_count, probs)`` / ``NegativeBinomialLogits`` are
  agvi's (and torch's) ``NegativeBinomial``: successes before ``total_count`` failures, mean
  ``total_count * probs / (1 - probs)``. NumPyro's ``NegativeBinomial2(mean, concentration)``
  converts to ``NegativeBinomial(total_count=concentration, probs=mean / (mean +
  concentration))``; ``to_numpyro`` always gives the Probs or Logits form.
- MultivariateNormal converts through ``scale_tril`` (the other matrices are derived from it on
  both sides).
"""

from __future__ import annotations

import numpy as np

from ..backends import get_backend, import_framework
from . import continuous as C
from . import discrete as D
from . import multivariate as M
from .distribution import Independent
from .mixture import MixtureSameFamily

__all__ = ["from_numpyro", "from_torch", "to_numpyro", "to_torch"]


def _import(name, extra):
    return import_framework(name, extra, "to convert distributions")


# ------------------------------------------------------------------ framework -> agvi
def _to_agvi_array(B, x, framework):
    """A parameter of a torch/numpyro distribution as an Array of ``B``."""
    if B.name == framework and B.is_array(x):
        return x
    if framework == "torch" and hasattr(x, "detach"):
        return B.asarray(x.detach().cpu().numpy())
    return B.asarray(np.asarray(x))


def _given(d, first, second):
    """Which of two lazily derived parametrisations was given (torch's lazy_property caches
    the derived one in ``__dict__`` only once it is read)."""
    return second if second in vars(d) else first


_FROM_TORCH = {
    "Normal": lambda d, a: C.Normal(a(d.loc), a(d.scale)),
    "LogNormal": lambda d, a: C.LogNormal(a(d.loc), a(d.scale)),
    "HalfNormal": lambda d, a: C.HalfNormal(a(d.scale)),
    "HalfCauchy": lambda d, a: C.HalfCauchy(a(d.scale)),
    "Cauchy": lambda d, a: C.Cauchy(a(d.loc), a(d.scale)),
    "StudentT": lambda d, a: C.StudentT(a(d.df), a(d.loc), a(d.scale)),
    "Laplace": lambda d, a: C.Laplace(a(d.loc), a(d.scale)),
    "Gumbel": lambda d, a: C.Gumbel(a(d.loc), a(d.scale)),
    "Exponential": lambda d, a: C.Exponential(a(d.rate)),
    "Chi2": lambda d, a: C.Chi2(a(d.df)),
    "Gamma": lambda d, a: C.Gamma(a(d.concentration), a(d.rate)),
    "InverseGamma": lambda d, a: C.InverseGamma(a(d.concentration), a(d.rate)),
    "Beta": lambda d, a: C.Beta(a(d.concentration1), a(d.concentration0)),
    "Uniform": lambda d, a: C.Uniform(a(d.low), a(d.high)),
    "Weibull": lambda d, a: C.Weibull(a(d.scale), a(d.concentration)),
    "Pareto": lambda d, a: C.Pareto(a(d.scale), a(d.alpha)),
    "VonMises": lambda d, a: C.VonMises(a(d.loc), a(d.concentration)),
    "Dirichlet": lambda d, a: M.Dirichlet(a(d.concentration)),
    "MultivariateNormal": lambda d, a: M.MultivariateNormal(a(d.loc),
                                                            scale_tril=a(d.scale_tril)),
    "LowRankMultivariateNormal": lambda d, a: M.LowRankMultivariateNormal(
        a(d.loc), a(d.cov_factor), a(d.cov_diag)),
    "LKJCholesky": lambda d, a: M.LKJCholesky(int(d.dim), a(d.concentration)),
    "Poisson": lambda d, a: D.Poisson(a(d.rate)),
}


def _from_torch_binary(cls, d, a, **extra):
    given = _given(d, "probs", "logits")
    return cls(**extra, **{given: a(getattr(d, given))})


_FROM_TORCH.update({
    "Bernoulli": lambda d, a: _from_torch_binary(D.Bernoulli, d, a),
    "Geometric": lambda d, a: _from_torch_binary(D.Geometric, d, a),
    "Binomial": lambda d, a: _from_torch_binary(D.Binomial, d, a, total_count=a(d.total_count)),
    "NegativeBinomial": lambda d, a: _from_torch_binary(D.NegativeBinomial, d, a,
                                                        total_count=a(d.total_count)),
    "Categorical": lambda d, a: _from_torch_binary(D.Categorical, d, a),
    "OneHotCategorical": lambda d, a: _from_torch_binary(D.OneHotCategorical, d._categorical, a),
    "Multinomial": lambda d, a: _from_torch_binary(D.Multinomial, d._categorical, a,
                                                   total_count=d.total_count),
    "Independent": lambda d, a: Independent(from_torch(d.base_dist),
                                            d.reinterpreted_batch_ndims),
    "MixtureSameFamily": lambda d, a: MixtureSameFamily(from_torch(d.mixture_distribution),
                                                        from_torch(d.component_distribution)),
})


def _converter(table, obj, package):
    """The table entry of the nearest class of ``obj`` defined in ``package``."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith(package) and cls.__name__ in table:
            return table[cls.__name__]
    return None


def from_torch(torch_dist):
    """The agvi distribution of the same law as a ``torch.distributions`` object, on the active
    backend.

    Parameters
    ----------
    torch_dist : torch.distributions.Distribution
        One of the families listed in the module docstring (subclasses convert as their
        nearest listed ancestor).

    Returns
    -------
    Distribution
        Built under :func:`agvi.get_backend`; tensors pass through on the torch backend and are
        copied through NumPy (``.detach().cpu().numpy()``) on the others.

    Raises
    ------
    ImportError
        If torch is not installed.
    NotImplementedError
        If the family has no agvi counterpart (the message names it).
    """
    _import("torch", "torch")
    rule = _converter(_FROM_TORCH, torch_dist, "torch.distributions")
    if rule is None:
        raise NotImplementedError(f"from_torch: no agvi counterpart for "
                                  f"torch.distributions.{type(torch_dist).__name__}")
    B = get_backend()
    return rule(torch_dist, lambda x: _to_agvi_array(B, x, "torch"))


# numpyro -> agvi ---------------------------------------------------------------------
def _from_numpyro_nb2(d, a):
    mean, conc = a(d.mean), a(d.concentration)
    return D.NegativeBinomial(total_count=conc, probs=mean / (mean + conc))


_FROM_NUMPYRO = {
    name: rule for name, rule in _FROM_TORCH.items()
    if name not in ("LKJCholesky", "Bernoulli", "Geometric", "Binomial", "NegativeBinomial",
                    "Categorical", "OneHotCategorical", "Multinomial", "Independent",
                    "MixtureSameFamily")
}
_FROM_NUMPYRO.update({
    "Logistic": lambda d, a: C.Logistic(a(d.loc), a(d.scale)),
    "LKJCholesky": lambda d, a: M.LKJCholesky(int(d.dimension), a(d.concentration),
                                              sample_method=d.sample_method),
    "Delta": lambda d, a: C.Delta(a(d.v), a(d.log_density), event_dim=len(d.event_shape)),
    "BernoulliProbs": lambda d, a: D.Bernoulli(probs=a(d.probs)),
    "BernoulliLogits": lambda d, a: D.Bernoulli(logits=a(d.logits)),
    "GeometricProbs": lambda d, a: D.Geometric(probs=a(d.probs)),
    "GeometricLogits": lambda d, a: D.Geometric(logits=a(d.logits)),
    "BinomialProbs": lambda d, a: D.Binomial(a(d.total_count), probs=a(d.probs)),
    "BinomialLogits": lambda d, a: D.Binomial(a(d.total_count), logits=a(d.logits)),
    "NegativeBinomialProbs": lambda d, a: D.NegativeBinomial(a(d.total_count),
                                                             probs=a(d.probs)),
    "NegativeBinomialLogits": lambda d, a: D.NegativeBinomial(a(d.total_count),
                                                              logits=a(d.logits)),
    "NegativeBinomial2": _from_numpyro_nb2,
    "CategoricalProbs": lambda d, a: D.Categorical(probs=a(d.probs)),
    "CategoricalLogits": lambda d, a: D.Categorical(logits=a(d.logits)),
    "MultinomialProbs": lambda d, a: D.Multinomial(a(d.total_count), probs=a(d.probs)),
    "MultinomialLogits": lambda d, a: D.Multinomial(a(d.total_count), logits=a(d.logits)),
    "Independent": lambda d, a: Independent(from_numpyro(d.base_dist),
                                            d.reinterpreted_batch_ndims),
    "ExpandedDistribution": lambda d, a: from_numpyro(d.base_dist).expand(d.batch_shape),
    "MaskedDistribution": lambda d, a: from_numpyro(d.base_dist).mask(
        d._mask if isinstance(d._mask, bool) else a(d._mask)),
    "MixtureSameFamily": lambda d, a: MixtureSameFamily(from_numpyro(d.mixing_distribution),
                                                        from_numpyro(d.component_distribution)),
})


def from_numpyro(numpyro_dist):
    """The agvi distribution of the same law as a ``numpyro.distributions`` object, on the
    active backend.

    Parameters
    ----------
    numpyro_dist : numpyro.distributions.Distribution
        One of the families listed in the module docstring (NumPyro's Probs/Logits classes,
        ``NegativeBinomial2``, and the Independent, expanded and masked wrappers included).

    Returns
    -------
    Distribution
        Built under :func:`agvi.get_backend`; JAX arrays pass through on the JAX backend and
        are copied through NumPy on the others.

    Raises
    ------
    ImportError
        If numpyro is not installed.
    NotImplementedError
        If the family has no agvi counterpart (the message names it).
    """
    _import("numpyro", "numpyro")
    rule = _converter(_FROM_NUMPYRO, numpyro_dist, "numpyro.distributions")
    if rule is None:
        raise NotImplementedError(f"from_numpyro: no agvi counterpart for "
                                  f"numpyro.distributions.{type(numpyro_dist).__name__}")
    B = get_backend()
    return rule(numpyro_dist, lambda x: _to_agvi_array(B, x, "jax"))


# ------------------------------------------------------------------ agvi -> framework
def _framework_array(d, x, framework):
    """The Array ``x`` of the agvi distribution ``d`` as a ``framework`` array (passing through
    when ``d`` was built on that framework's backend)."""
    B = d.B
    if B.name == framework:
        return x
    host = B.to_numpy(x) if B.is_array(x) else np.asarray(x)
    if framework == "torch":
        return _import("torch", "torch").as_tensor(host)
    return _import("jax.numpy", "jax").asarray(host)


def _param_name(d):
    return d._given  # "probs" or "logits", whichever the agvi distribution was built from


def _to_torch_binary(td, name, d, a, **extra):
    given = _param_name(d)
    return getattr(td, name)(**extra, **{given: a(d.__dict__[given])})


def _to_torch_multinomial(td, d, a):
    counts = np.unique(d.B.to_numpy(d.total_count))
    if counts.size != 1:
        raise NotImplementedError("to_torch: torch.distributions.Multinomial needs one "
                                  f"total_count for the whole batch, got {counts.tolist()}")
    return _to_torch_binary(td, "Multinomial", d, a, total_count=int(counts[0]))


def _to_torch_logistic(td, d, a):
    base = td.Uniform(a(d.B.zeros_like(d.loc)), a(d.B.ones_like(d.loc)))
    return td.TransformedDistribution(
        base, [td.transforms.SigmoidTransform().inv, td.transforms.AffineTransform(a(d.loc),
                                                                                   a(d.scale))])


_TO_TORCH = {
    "Normal": lambda td, d, a: td.Normal(a(d.loc), a(d.scale)),
    "LogNormal": lambda td, d, a: td.LogNormal(a(d.loc), a(d.scale)),
    "HalfNormal": lambda td, d, a: td.HalfNormal(a(d.scale)),
    "HalfCauchy": lambda td, d, a: td.HalfCauchy(a(d.scale)),
    "Cauchy": lambda td, d, a: td.Cauchy(a(d.loc), a(d.scale)),
    "StudentT": lambda td, d, a: td.StudentT(a(d.df), a(d.loc), a(d.scale)),
    "Laplace": lambda td, d, a: td.Laplace(a(d.loc), a(d.scale)),
    "Logistic": _to_torch_logistic,
    "Gumbel": lambda td, d, a: td.Gumbel(a(d.loc), a(d.scale)),
    "Exponential": lambda td, d, a: td.Exponential(a(d.rate)),
    "Chi2": lambda td, d, a: td.Chi2(a(d.df)),
    "Gamma": lambda td, d, a: td.Gamma(a(d.concentration), a(d.rate)),
    "InverseGamma": lambda td, d, a: td.InverseGamma(a(d.concentration), a(d.rate)),
    "Beta": lambda td, d, a: td.Beta(a(d.concentration1), a(d.concentration0)),
    "Uniform": lambda td, d, a: td.Uniform(a(d.low), a(d.high)),
    "Weibull": lambda td, d, a: td.Weibull(a(d.scale), a(d.concentration)),
    "Pareto": lambda td, d, a: td.Pareto(a(d.scale), a(d.alpha)),
    "VonMises": lambda td, d, a: td.VonMises(a(d.loc), a(d.concentration)),
    "Dirichlet": lambda td, d, a: td.Dirichlet(a(d.concentration)),
    "MultivariateNormal": lambda td, d, a: td.MultivariateNormal(a(d.loc),
                                                                 scale_tril=a(d.scale_tril)),
    "LowRankMultivariateNormal": lambda td, d, a: td.LowRankMultivariateNormal(
        a(d.loc), a(d.cov_factor), a(d.cov_diag)),
    "LKJCholesky": lambda td, d, a: td.LKJCholesky(d.dimension, a(d.concentration)),
    "Poisson": lambda td, d, a: td.Poisson(a(d.rate)),
    "Bernoulli": lambda td, d, a: _to_torch_binary(td, "Bernoulli", d, a),
    "Geometric": lambda td, d, a: _to_torch_binary(td, "Geometric", d, a),
    "Binomial": lambda td, d, a: _to_torch_binary(td, "Binomial", d, a,
                                                  total_count=a(d.total_count)),
    "NegativeBinomial": lambda td, d, a: _to_torch_binary(td, "NegativeBinomial", d, a,
                                                          total_count=a(d.total_count)),
    "Categorical": lambda td, d, a: _to_torch_binary(td, "Categorical", d, a),
    "OneHotCategorical": lambda td, d, a: _to_torch_binary(td, "OneHotCategorical", d, a),
    "Multinomial": _to_torch_multinomial,
    "Independent": lambda td, d, a: td.Independent(to_torch(d.base_dist),
                                                   d.reinterpreted_batch_ndims),
    "ExpandedDistribution": lambda td, d, a: to_torch(d.base_dist).expand(d.batch_shape),
    "MixtureSameFamily": lambda td, d, a: td.MixtureSameFamily(
        td.Categorical(logits=a(d._log_weights)), to_torch(d.component_distribution)),
}


def _agvi_converter(table, d):
    for cls in type(d).__mro__:
        if cls.__module__.startswith("agvi.distributions") and cls.__name__ in table:
            return table[cls.__name__]
    return None


def to_torch(dist):
    """The ``torch.distributions`` object of the same law as an agvi distribution.

    Parameters
    ----------
    dist : Distribution
        One of the families listed in the module docstring.

    Returns
    -------
    torch.distributions.Distribution
        Parameters are ``dist``'s own tensors on the torch backend (gradients flow), and CPU
        tensors copied through NumPy (same dtype) on the others.

    Raises
    ------
    ImportError
        If torch is not installed.
    NotImplementedError
        If torch has no counterpart (Delta, MaskedDistribution, TransformedDistribution, ...),
        or a Multinomial has more than one ``total_count``.
    """
    td = _import("torch.distributions", "torch")
    rule = _agvi_converter(_TO_TORCH, dist)
    if rule is None:
        raise NotImplementedError(f"to_torch: no torch.distributions counterpart for agvi's "
                                  f"{type(dist).__name__}")
    return rule(td, dist, lambda x: _framework_array(dist, x, "torch"))


def _to_numpyro_binary(nd, stem, d, a, **extra):
    given = _param_name(d)
    return getattr(nd, stem + given.capitalize())(**extra, **{given: a(d.__dict__[given])})


_TO_NUMPYRO = {
    name: rule for name, rule in _TO_TORCH.items()
    if name in ("Normal", "LogNormal", "HalfNormal", "HalfCauchy", "Cauchy", "StudentT",
                "Laplace", "Gumbel", "Exponential", "Chi2", "Gamma", "InverseGamma", "Beta",
                "Uniform", "Weibull", "Pareto", "VonMises", "Dirichlet", "MultivariateNormal",
                "LowRankMultivariateNormal", "Poisson")
}
_TO_NUMPYRO.update({
    "Logistic": lambda nd, d, a: nd.Logistic(a(d.loc), a(d.scale)),
    "LKJCholesky": lambda nd, d, a: nd.LKJCholesky(d.dimension, a(d.concentration),
                                                   sample_method=d.sample_method),
    "Delta": lambda nd, d, a: nd.Delta(a(d.v), a(d.log_density), event_dim=d.event_dim),
    "Bernoulli": lambda nd, d, a: _to_numpyro_binary(nd, "Bernoulli", d, a),
    "Geometric": lambda nd, d, a: _to_numpyro_binary(nd, "Geometric", d, a),
    "Binomial": lambda nd, d, a: _to_numpyro_binary(nd, "Binomial", d, a,
                                                    total_count=a(d.total_count)),
    "NegativeBinomial": lambda nd, d, a: _to_numpyro_binary(nd, "NegativeBinomial", d, a,
                                                            total_count=a(d.total_count)),
    "Categorical": lambda nd, d, a: _to_numpyro_binary(nd, "Categorical", d, a),
    "Multinomial": lambda nd, d, a: _to_numpyro_binary(nd, "Multinomial", d, a,
                                                       total_count=a(d.total_count)),
    "Independent": lambda nd, d, a: nd.Independent(to_numpyro(d.base_dist),
                                                   d.reinterpreted_batch_ndims),
    "ExpandedDistribution": lambda nd, d, a: to_numpyro(d.base_dist).expand(d.batch_shape),
    "MaskedDistribution": lambda nd, d, a: to_numpyro(d.base_dist).mask(
        d._mask if isinstance(d._mask, bool) else a(d._mask)),
    "MixtureSameFamily": lambda nd, d, a: nd.MixtureSameFamily(
        nd.CategoricalLogits(a(d._log_weights)), to_numpyro(d.component_distribution)),
})


def to_numpyro(dist):
    """The ``numpyro.distributions`` object of the same law as an agvi distribution.

    Parameters
    ----------
    dist : Distribution
        One of the families listed in the module docstring.

    Returns
    -------
    numpyro.distributions.Distribution
        Parameters are ``dist``'s own arrays on the JAX backend, and JAX arrays copied through
        NumPy on the others (float64 stays float64 only where JAX's x64 mode is on, e.g. after
        building a ``precision="float64"`` JAX backend).

    Raises
    ------
    ImportError
        If numpyro is not installed.
    NotImplementedError
        If NumPyro has no counterpart (e.g. TransformedDistribution).
    """
    nd = _import("numpyro.distributions", "numpyro")
    rule = _agvi_converter(_TO_NUMPYRO, dist)
    if rule is None:
        raise NotImplementedError(f"to_numpyro: no numpyro.distributions counterpart for agvi's "
                                  f"{type(dist).__name__}")
    return rule(nd, dist, lambda x: _framework_array(dist, x, "jax"))
