"""Cross-backend agreement of the distributions (``agvi.distributions``) in float64.

Every family is built from fixed float64 parameters (batch shape (3,)) under each backend fed
shared noise (agvi.testing.SharedNoise) and compared with the NumPy oracle at ``RTOL``: log_prob
at fixed values, mean / variance / entropy / cdf / icdf where a closed form exists, draws with one
key (``sample`` and, where ``has_rsample``, ``rsample``), the gradient of ``sum(log_prob(value))``
with respect to the parameters and, for reparameterised families, the gradient of
``sum(log_prob(rsample(key)))``. A dozen registered KL
rules are compared with their gradients too. Integer draws must be equal. Errors are recorded
for the end-of-session summary by the ``agree`` fixture (conftest.py).

Shapes are few and fixed (JAX eager ops compile once per shape).
"""

from __future__ import annotations

import numpy as np
import pytest

import agvi.distributions as dist
from agvi.backends import make_backend, use_backend
from agvi.testing.agreement import AGREEMENT_RTOL

RTOL = AGREEMENT_RTOL
assert RTOL == 1e-10

RNG = np.random.default_rng(20240917)
KEY = 7
SAMPLE_SHAPE = (5,)

# ------------------------------------------------------------------ fixed inputs
LOC = np.array([-0.5, 0.3, 1.2])
SCALE = np.array([0.7, 1.3, 2.1])
REAL = np.array([-1.1, 0.4, 2.3])                 # values on the real line
POS = np.array([0.35, 1.4, 3.2])                  # positive values
UNIT = np.array([0.15, 0.55, 0.9])                # values in (0, 1)
Q = np.array([0.1, 0.5, 0.85])                    # probabilities for icdf
CONC = np.array([0.8, 2.5, 5.0])                  # shape parameters
PROBS = np.array([0.2, 0.55, 0.8])
LOGITS4 = RNG.normal(size=(3, 4))
LOC34 = RNG.normal(size=(3, 4))
SCALE34 = RNG.uniform(0.5, 2.0, size=(3, 4))
ALPHA34 = RNG.uniform(0.5, 3.0, size=(3, 4))
SIMPLEX = RNG.dirichlet(np.ones(4), size=3)
D = 3                                             # multivariate dimension
LOC3D = RNG.normal(size=(3, D))
_A = RNG.normal(size=(3, D, D))
COV = _A @ np.swapaxes(_A, -1, -2) + D * np.eye(D)
TRIL = np.linalg.cholesky(COV)
COV_FACTOR = RNG.normal(size=(3, D, 2)) * 0.6
COV_DIAG = RNG.uniform(0.5, 1.5, size=(3, D))
X3D = RNG.normal(size=(3, D))
_CORR = COV / np.sqrt(np.diagonal(COV, axis1=-2, axis2=-1)[..., :, None]
                      * np.diagonal(COV, axis1=-2, axis2=-1)[..., None, :])
CORR_CHOL = np.linalg.cholesky(_CORR)


# ------------------------------------------------------------------ families
# name -> (build(B, **params) -> Distribution, params (pytree of float64 arrays), value for
# log_prob and cdf, q for icdf or None). Parameters are differentiated (reparameterised families).
def _mvn_tril(B, loc, scale_tril):
    return dist.MultivariateNormal(loc, scale_tril=B.tril(scale_tril))


FAMILIES = {
    "Normal": (lambda B, loc, scale: dist.Normal(loc, scale),
               {"loc": LOC, "scale": SCALE}, REAL, Q),
    "LogNormal": (lambda B, loc, scale: dist.LogNormal(loc, scale),
                  {"loc": LOC, "scale": SCALE * 0.5}, POS, Q),
    "HalfNormal": (lambda B, scale: dist.HalfNormal(scale), {"scale": SCALE}, POS, Q),
    "Cauchy": (lambda B, loc, scale: dist.Cauchy(loc, scale),
               {"loc": LOC, "scale": SCALE}, REAL, Q),
    "HalfCauchy": (lambda B, scale: dist.HalfCauchy(scale), {"scale": SCALE}, POS, Q),
    "StudentT": (lambda B, df, loc, scale: dist.StudentT(df, loc, scale),
                 {"df": np.array([2.5, 4.0, 7.5]), "loc": LOC, "scale": SCALE}, REAL, Q),
    "Laplace": (lambda B, loc, scale: dist.Laplace(loc, scale),
                {"loc": LOC, "scale": SCALE}, REAL, Q),
    "Logistic": (lambda B, loc, scale: dist.Logistic(loc, scale),
                 {"loc": LOC, "scale": SCALE}, REAL, Q),
    "Gumbel": (lambda B, loc, scale: dist.Gumbel(loc, scale),
               {"loc": LOC, "scale": SCALE}, REAL, Q),
    "Exponential": (lambda B, rate: dist.Exponential(rate), {"rate": SCALE}, POS, Q),
    "Gamma": (lambda B, concentration, rate: dist.Gamma(concentration, rate),
              {"concentration": CONC, "rate": SCALE}, POS, Q),
    "Chi2": (lambda B, df: dist.Chi2(df), {"df": np.array([1.5, 3.0, 6.0])}, POS, Q),
    "InverseGamma": (lambda B, concentration, rate: dist.InverseGamma(concentration, rate),
                     {"concentration": CONC + 2.0, "rate": SCALE}, POS, Q),
    "Beta": (lambda B, c1, c0: dist.Beta(c1, c0),
             {"c1": CONC, "c0": CONC[::-1].copy()}, UNIT, Q),
    "Uniform": (lambda B, low, high: dist.Uniform(low, high),
                {"low": np.array([-1.0, 0.0, 0.5]), "high": np.array([1.0, 2.0, 3.0])},
                np.array([0.2, 1.1, 2.7]), Q),
    "Weibull": (lambda B, scale, concentration: dist.Weibull(scale, concentration),
                {"scale": SCALE, "concentration": CONC}, POS, Q),
    "Pareto": (lambda B, scale, alpha: dist.Pareto(scale, alpha),
               {"scale": np.array([0.3, 1.0, 2.0]), "alpha": CONC + 1.0},
               np.array([0.5, 1.7, 4.1]), Q),
    "VonMises": (lambda B, loc, concentration: dist.VonMises(loc, concentration),
                 {"loc": LOC, "concentration": CONC}, REAL, Q),
    "Delta": (lambda B, v: dist.Delta(v, log_density=0.25), {"v": LOC}, LOC, Q),
    "Bernoulli": (lambda B, probs: dist.Bernoulli(probs=probs), {"probs": PROBS},
                  np.array([0.0, 1.0, 1.0]), None),
    "Bernoulli_logits": (lambda B, logits: dist.Bernoulli(logits=logits), {"logits": LOC},
                         np.array([0.0, 1.0, 1.0]), None),
    "Binomial": (lambda B, total_count, probs: dist.Binomial(total_count, probs=probs),
                 {"total_count": np.array([5.0, 10.0, 3.0]), "probs": PROBS},
                 np.array([2.0, 7.0, 0.0]), None),
    "Geometric": (lambda B, probs: dist.Geometric(probs=probs), {"probs": PROBS},
                  np.array([0.0, 2.0, 5.0]), None),
    "NegativeBinomial": (lambda B, total_count, probs: dist.NegativeBinomial(total_count,
                                                                            probs=probs),
                         {"total_count": np.array([2.5, 4.0, 7.0]), "probs": PROBS * 0.9},
                         np.array([1.0, 4.0, 12.0]), None),
    "Poisson": (lambda B, rate: dist.Poisson(rate), {"rate": POS * 2},
                np.array([0.0, 3.0, 8.0]), None),
    "Categorical": (lambda B, logits: dist.Categorical(logits=logits), {"logits": LOGITS4},
                    np.array([0, 3, 2]), None),
    "Categorical_probs": (lambda B, probs: dist.Categorical(probs=probs), {"probs": SIMPLEX},
                          np.array([1, 0, 3]), None),
    "OneHotCategorical": (lambda B, logits: dist.OneHotCategorical(logits=logits),
                          {"logits": LOGITS4}, np.eye(4)[[0, 3, 2]], None),
    "Multinomial": (lambda B, probs: dist.Multinomial(6, probs=probs), {"probs": SIMPLEX},
                    np.array([[1.0, 2.0, 0.0, 3.0], [6.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 2.0]]),
                    None),
    "Dirichlet": (lambda B, concentration: dist.Dirichlet(concentration),
                  {"concentration": ALPHA34}, SIMPLEX, None),
    "LKJCholesky": (lambda B, concentration: dist.LKJCholesky(D, concentration),
                    {"concentration": np.array([0.5, 1.0, 2.5])}, CORR_CHOL, None),
    "LKJCholesky_cvine": (lambda B, concentration: dist.LKJCholesky(D, concentration, "cvine"),
                          {"concentration": np.array([0.5, 1.0, 2.5])}, CORR_CHOL, None),
    "MultivariateNormal": (_mvn_tril, {"loc": LOC3D, "scale_tril": TRIL}, X3D, None),
    "MultivariateNormal_cov": (
        lambda B, loc, cov: dist.MultivariateNormal(loc, covariance_matrix=cov),
        {"loc": LOC3D, "cov": COV}, X3D, None),
    "MultivariateNormal_precision": (
        lambda B, loc, prec: dist.MultivariateNormal(loc, precision_matrix=prec),
        {"loc": LOC3D, "prec": np.linalg.inv(COV)}, X3D, None),
    "LowRankMultivariateNormal": (
        lambda B, loc, f, d: dist.LowRankMultivariateNormal(loc, f, d),
        {"loc": LOC3D, "f": COV_FACTOR, "d": COV_DIAG}, X3D, None),
    "MixtureSameFamily": (
        lambda B, logits, loc, scale: dist.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale)),
        {"logits": LOGITS4, "loc": LOC34, "scale": SCALE34}, REAL, None),
    "MixtureSameFamily_mvn": (
        lambda B, logits, loc: dist.MixtureSameFamily(
            dist.Categorical(logits=logits),
            dist.MultivariateNormal(loc, scale_tril=B.asarray(np.broadcast_to(
                TRIL[:, None], (3, 4, D, D))))),
        {"logits": LOGITS4, "loc": RNG.normal(size=(3, 4, D))}, X3D, None),
    "TransformedDistribution": (
        lambda B, loc, scale: dist.TransformedDistribution(
            dist.Normal(loc, scale), [dist.ExpTransform(), dist.AffineTransform(1.0, 2.0)]),
        {"loc": LOC * 0.5, "scale": SCALE * 0.5}, 1.0 + 2.0 * POS, Q),
    "TransformedDistribution_stickbreaking": (
        lambda B, loc, scale: dist.TransformedDistribution(
            dist.Normal(loc, scale), dist.StickBreakingTransform()),
        {"loc": LOC34[:, :3], "scale": SCALE34[:, :3]}, SIMPLEX, None),
    "Independent": (lambda B, loc, scale: dist.Independent(dist.Normal(loc, scale), 1),
                    {"loc": LOC34, "scale": SCALE34}, LOC34 + 0.3, None),
    "Independent_gamma": (lambda B, c, r: dist.Gamma(c, r).to_event(1),
                          {"c": ALPHA34, "r": SCALE34}, SCALE34, None),
    "expand": (lambda B, loc, scale: dist.Normal(loc, scale).expand((2, 3)),
               {"loc": LOC, "scale": SCALE}, REAL, Q),
    "expand_beta": (lambda B, c1, c0: dist.Beta(c1, c0).expand((2, 3)),
                    {"c1": CONC, "c0": CONC[::-1].copy()}, UNIT, Q),
    "mask": (lambda B, loc, scale: dist.Normal(loc, scale).mask(
        B.asarray(np.array([True, False, True]))), {"loc": LOC, "scale": SCALE}, REAL, None),
    "mask_poisson": (lambda B, rate: dist.Poisson(rate).mask(
        B.asarray(np.array([False, True, True]))), {"rate": POS * 2},
        np.array([0.0, 3.0, 8.0]), None),
}

#: Documented per-family tolerances (none needed so far: every family agrees at RTOL).
FAMILY_RTOL: dict[str, float] = {}


def _try(out, name, thunk):
    """Store ``thunk()`` under ``name`` unless the family has no closed form for it."""
    try:
        out[name] = thunk()
    except NotImplementedError:
        pass


def _family_fn(name):
    build, _, _, _ = FAMILIES[name]

    def fn(B, params, value, q):
        d = build(B, **params)
        out = {"log_prob": d.log_prob(value)}
        _try(out, "mean", lambda: d.mean)
        _try(out, "variance", lambda: d.variance)
        _try(out, "entropy", d.entropy)
        _try(out, "cdf", lambda: d.cdf(value))
        if q is not None:
            _try(out, "icdf", lambda: d.icdf(q))
        # score-function gradient: log_prob at the fixed values, in every parameter
        out["grad_log_prob"] = B.grad(lambda p: B.sum(build(B, **p).log_prob(value)))(params)
        key = B.key(KEY)
        out["sample"] = d.sample(key, SAMPLE_SHAPE)
        if d.has_rsample:
            out["rsample"] = d.rsample(key, SAMPLE_SHAPE)

            def loss(p):
                dd = build(B, **p)
                return B.sum(dd.log_prob(dd.rsample(key, SAMPLE_SHAPE)))

            out["grad"] = B.grad(loss)(params)
        return out

    return fn


def test_every_family_is_covered():
    exported = {n for n in dist.__all__ if isinstance(getattr(dist, n), type)
                and issubclass(getattr(dist, n), dist.Distribution)}
    with use_backend(make_backend("numpy", precision="float64")) as B:
        covered = {type(build(B, **{k: B.asarray(v) for k, v in params.items()})).__name__
                   for build, params, _, _ in FAMILIES.values()}
    # expand and mask are reached through Distribution.expand / .mask
    missing = exported - covered - {"Distribution"}
    assert not missing, f"families without an agreement test: {sorted(missing)}"


# Delta's reparameterised log_prob does not depend on its parameters (autograd says so)
@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family(agree, name):
    _, params, value, q = FAMILIES[name]
    res = agree(_family_fn(name), params, value, q, rtol=FAMILY_RTOL.get(name, RTOL))
    assert "log_prob" in res and "sample" in res


# ------------------------------------------------------------------ KL divergences
# name -> (build(B, **params) -> (p, q), params)
KL_PAIRS = {
    "Normal-Normal": (lambda B, a, b, c, d: (dist.Normal(a, b), dist.Normal(c, d)),
                      {"a": LOC, "b": SCALE, "c": LOC[::-1].copy(), "d": SCALE * 0.8}),
    "Gamma-Gamma": (lambda B, a, b, c, d: (dist.Gamma(a, b), dist.Gamma(c, d)),
                    {"a": CONC, "b": SCALE, "c": CONC[::-1] + 0.3, "d": SCALE * 1.7}),
    "Beta-Beta": (lambda B, a, b, c, d: (dist.Beta(a, b), dist.Beta(c, d)),
                  {"a": CONC, "b": CONC[::-1].copy(), "c": CONC + 0.5, "d": SCALE}),
    "Dirichlet-Dirichlet": (lambda B, a, c: (dist.Dirichlet(a), dist.Dirichlet(c)),
                            {"a": ALPHA34, "c": ALPHA34[::-1].copy()}),
    "MultivariateNormal-MultivariateNormal": (
        lambda B, a, b, c, d: (_mvn_tril(B, a, b), _mvn_tril(B, c, d)),
        {"a": LOC3D, "b": TRIL, "c": LOC3D[::-1].copy(), "d": TRIL[::-1].copy()}),
    "LowRank-LowRank": (
        lambda B, a, b, c, d, e, f: (dist.LowRankMultivariateNormal(a, b, c),
                                     dist.LowRankMultivariateNormal(d, e, f)),
        {"a": LOC3D, "b": COV_FACTOR, "c": COV_DIAG, "d": LOC3D[::-1].copy(),
         "e": COV_FACTOR[::-1].copy(), "f": COV_DIAG[::-1] + 0.2}),
    "Categorical-Categorical": (
        lambda B, a, c: (dist.Categorical(logits=a), dist.Categorical(logits=c)),
        {"a": LOGITS4, "c": LOGITS4[::-1].copy()}),
    "Poisson-Poisson": (lambda B, a, c: (dist.Poisson(a), dist.Poisson(c)),
                        {"a": POS * 2, "c": SCALE}),
    "Bernoulli-Bernoulli": (lambda B, a, c: (dist.Bernoulli(probs=a), dist.Bernoulli(probs=c)),
                            {"a": PROBS, "c": PROBS[::-1].copy()}),
    "Exponential-Gamma": (lambda B, a, c, d: (dist.Exponential(a), dist.Gamma(c, d)),
                          {"a": SCALE, "c": CONC, "d": SCALE[::-1].copy()}),
    "Uniform-Normal": (lambda B, a, b, c, d: (dist.Uniform(a, b), dist.Normal(c, d)),
                       {"a": np.array([-1.0, 0.0, 0.5]), "b": np.array([1.0, 2.0, 3.0]),
                        "c": LOC, "d": SCALE}),
    "Laplace-Laplace": (lambda B, a, b, c, d: (dist.Laplace(a, b), dist.Laplace(c, d)),
                        {"a": LOC, "b": SCALE, "c": LOC[::-1].copy(), "d": SCALE * 1.4}),
}

KL_RTOL: dict[str, float] = {}


@pytest.mark.parametrize("name", list(KL_PAIRS))
def test_kl_divergence(agree, name):
    build, params = KL_PAIRS[name]

    def fn(B, params):
        def kl(p):
            return dist.kl_divergence(*build(B, **p))

        return {"kl": kl(params), "grad": B.grad(lambda p: B.sum(kl(p)))(params)}

    res = agree(fn, params, rtol=KL_RTOL.get(name, RTOL))
    assert np.all(np.isfinite(res["kl"])) and np.all(res["kl"] >= -1e-12)

