"""The analytic KL table (agvi.distributions.kl) on every installed backend and precision.

Every registered pair of families is checked (float64) against a Monte Carlo estimate
(|analytic - MC| < 5 standard errors at a fixed key; ``+inf`` pairs must give ``+inf`` from
draws outside the support of q), against ``torch.distributions.kl_divergence`` where torch
computes the pair (rtol 1e-10, atol 1e-12), and against the NumPy float64 value (rtol 1e-10);
in float32 against that value at rtol 2e-4. Structural rules (Independent, expanded, masked,
transformed, Delta), the registry (nearest-ancestor lookup, duplicates, ambiguity), edge cases
with ``+inf`` and errors have their own tests.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import warnings
import zlib

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.distributions import kl as K
from agvi.distributions.kl import (
    kl_divergence,
    kl_divergence_mc,
    kl_table_markdown,
    register_kl,
    registered_kl_pairs,
)
from agvi.distributions.transformed import TransformedDistribution
from agvi.distributions.transforms import AffineTransform, ExpTransform

HAVE_TORCH = importlib.util.find_spec("torch") is not None
NUM_MC = 4000
BATCH = (3,)
REPO = pathlib.Path(__file__).resolve().parents[2]


def npy(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


# -- random parameters per family -----------------------------------------------------------------
def _u(rng, lo, hi, shape):
    return rng.uniform(lo, hi, size=shape)


def _loc(rng, shape):
    # locations of real-line families: at most half a scale above 0, so that draws below 0
    # (outside a positive q's support) are common enough for the Monte Carlo check of +inf
    return rng.uniform(-1.0, 0.25, size=shape)


def _tril(rng, shape, d=3):
    A = np.tril(rng.normal(size=shape + (d, d)) * 0.4, -1)
    return A + np.eye(d) * rng.uniform(0.6, 1.5, size=shape + (d, 1))


def _probs(rng, shape, k=4):
    return rng.dirichlet(np.full(k, 2.0), size=shape)


FACTORIES = {
    "Normal": lambda r, s: dist.Normal(_loc(r, s), _u(r, 0.5, 2.0, s)),
    "LogNormal": lambda r, s: dist.LogNormal(_u(r, -0.5, 0.5, s), _u(r, 0.3, 1.0, s)),
    "HalfNormal": lambda r, s: dist.HalfNormal(_u(r, 0.5, 2.0, s)),
    "HalfCauchy": lambda r, s: dist.HalfCauchy(_u(r, 0.5, 2.0, s)),
    "Cauchy": lambda r, s: dist.Cauchy(_loc(r, s), _u(r, 0.5, 2.0, s)),
    "StudentT": lambda r, s: dist.StudentT(_u(r, 3.0, 8.0, s), _loc(r, s), _u(r, 0.5, 2.0, s)),
    "Laplace": lambda r, s: dist.Laplace(_loc(r, s), _u(r, 0.5, 2.0, s)),
    "Logistic": lambda r, s: dist.Logistic(_loc(r, s), _u(r, 0.5, 1.5, s)),
    "Gumbel": lambda r, s: dist.Gumbel(_loc(r, s), _u(r, 0.5, 2.0, s)),
    "Exponential": lambda r, s: dist.Exponential(_u(r, 0.5, 2.0, s)),
    "Gamma": lambda r, s: dist.Gamma(_u(r, 1.5, 4.0, s), _u(r, 0.5, 2.0, s)),
    "InverseGamma": lambda r, s: dist.InverseGamma(_u(r, 3.0, 6.0, s), _u(r, 1.0, 3.0, s)),
    "Beta": lambda r, s: dist.Beta(_u(r, 1.5, 4.0, s), _u(r, 1.5, 4.0, s)),
    "Uniform": lambda r, s: dist.Uniform(_u(r, 0.1, 0.4, s), _u(r, 0.6, 0.9, s)),
    "Weibull": lambda r, s: dist.Weibull(_u(r, 0.5, 2.0, s), _u(r, 1.0, 3.0, s)),
    "Pareto": lambda r, s: dist.Pareto(_u(r, 0.5, 1.5, s), _u(r, 5.0, 8.0, s)),
    "VonMises": lambda r, s: dist.VonMises(_u(r, -1.0, 1.0, s), _u(r, 0.5, 3.0, s)),
    "Dirichlet": lambda r, s: dist.Dirichlet(_u(r, 1.0, 4.0, s + (4,))),
    "MultivariateNormal": lambda r, s: dist.MultivariateNormal(r.normal(size=s + (3,)),
                                                               scale_tril=_tril(r, s)),
    "LowRankMultivariateNormal": lambda r, s: dist.LowRankMultivariateNormal(
        r.normal(size=s + (3,)), 0.5 * r.normal(size=s + (3, 2)), _u(r, 0.5, 1.5, s + (3,))),
    "Bernoulli": lambda r, s: dist.Bernoulli(probs=_u(r, 0.1, 0.9, s)),
    "Binomial": lambda r, s: dist.Binomial(10, probs=_u(r, 0.1, 0.9, s)),
    "Categorical": lambda r, s: dist.Categorical(probs=_probs(r, s)),
    "OneHotCategorical": lambda r, s: dist.OneHotCategorical(logits=r.normal(size=s + (4,))),
    "Multinomial": lambda r, s: dist.Multinomial(6, probs=_probs(r, s)),
    "Poisson": lambda r, s: dist.Poisson(_u(r, 1.0, 5.0, s)),
    "Geometric": lambda r, s: dist.Geometric(probs=_u(r, 0.2, 0.8, s)),
    "NegativeBinomial": lambda r, s: dist.NegativeBinomial(4.0, probs=_u(r, 0.2, 0.7, s)),
}

# Pair-specific parameters: (p factory, q factory) where the defaults would leave the support
# condition or the Monte Carlo variance (finite fourth moments of the log ratio) to chance.
OVERRIDES = {
    ("Uniform", "Pareto"): (None, lambda r, s: dist.Pareto(_u(r, 0.02, 0.08, s),
                                                           _u(r, 1.0, 3.0, s))),
    ("Pareto", "Pareto"): (lambda r, s: dist.Pareto(_u(r, 1.0, 1.5, s), _u(r, 4.0, 8.0, s)),
                           lambda r, s: dist.Pareto(_u(r, 0.5, 0.9, s), _u(r, 4.0, 8.0, s))),
    ("Uniform", "Uniform"): (lambda r, s: dist.Uniform(_u(r, 0.3, 0.4, s), _u(r, 0.6, 0.7, s)),
                             lambda r, s: dist.Uniform(_u(r, 0.0, 0.2, s), _u(r, 0.8, 1.0, s))),
    ("Beta", "Uniform"): (None, lambda r, s: dist.Uniform(_u(r, -0.5, 0.0, s),
                                                          _u(r, 1.0, 1.5, s))),
    ("Laplace", "Gumbel"): (lambda r, s: dist.Laplace(_loc(r, s), _u(r, 0.3, 0.6, s)),
                            lambda r, s: dist.Gumbel(_loc(r, s), _u(r, 1.5, 2.0, s))),
    ("Gamma", "InverseGamma"): (lambda r, s: dist.Gamma(_u(r, 3.0, 5.0, s), _u(r, 0.5, 2.0, s)),
                                None),
    # a Poisson exceeds a Binomial's total count often enough to be seen in the draws
    ("Poisson", "Binomial"): (None, lambda r, s: dist.Binomial(2, probs=_u(r, 0.1, 0.9, s))),
}

# Rules whose types are not one concrete family: tested by the structural tests below.
STRUCTURAL = {
    ("Delta", "Distribution"), ("Delta", "ExpandedDistribution"), ("Delta", "MaskedDistribution"),
    ("Distribution", "ExpandedDistribution"), ("Distribution", "MaskedDistribution"),
    ("ExpandedDistribution", "Distribution"), ("ExpandedDistribution", "ExpandedDistribution"),
    ("ExpandedDistribution", "MaskedDistribution"), ("MaskedDistribution", "Distribution"),
    ("MaskedDistribution", "ExpandedDistribution"), ("MaskedDistribution", "MaskedDistribution"),
    ("Independent", "Independent"), ("Independent", "MultivariateNormal"),
    ("Independent", "LowRankMultivariateNormal"), ("MultivariateNormal", "Independent"),
    ("LowRankMultivariateNormal", "Independent"),
    ("TransformedDistribution", "TransformedDistribution"),
}

FAMILY_PAIRS = sorted(set(registered_kl_pairs()) - STRUCTURAL)


def build_pair(pair, shape=BATCH):
    """p and q of ``pair`` under the active backend, with parameters fixed by the pair's name."""
    rng = np.random.default_rng(zlib.crc32("-".join(pair).encode()))
    fp, fq = OVERRIDES.get(pair, (None, None))
    p = (fp or FACTORIES[pair[0]])(rng, shape)
    q = (fq or FACTORIES[pair[1]])(rng, shape)
    return p, q


_REFERENCE = {}


def reference(pair):
    """The float64 NumPy-backend value (cached)."""
    if pair not in _REFERENCE:
        with agvi.use_backend("numpy", precision="float64") as B:
            p, q = build_pair(pair)
            _REFERENCE[pair] = npy(B, kl_divergence(p, q))
    return _REFERENCE[pair]


def torch_value(p, q):
    """torch.distributions.kl_divergence of the converted pair, or None where torch has no
    rule for it."""
    import torch.distributions as td

    from agvi.distributions.interop import to_torch
    try:
        tp, tq = to_torch(p), to_torch(q)
    except NotImplementedError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = td.kl_divergence(tp, tq)
        except NotImplementedError:
            return None
    return value.detach().numpy().astype(np.float64)


# -- the table covers what it claims ------------------------------------------------------------
def test_every_registered_pair_is_tested():
    missing = [pair for pair in FAMILY_PAIRS
               if pair[0] not in FACTORIES or pair[1] not in FACTORIES]
    assert not missing, f"registered KL pairs without a test factory: {missing}"
    assert STRUCTURAL <= set(registered_kl_pairs())


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_covers_torch_registry():
    """Every closed-form pair of torch's registry whose families agvi has is registered."""
    import torch.distributions.kl as tkl

    ours = set(registered_kl_pairs())
    ours_names = {n for pair in ours for n in pair} | set(FACTORIES)
    torch_pairs = {(p.__name__, q.__name__) for p, q in tkl._KL_REGISTRY}
    mapped = {pair for pair in torch_pairs if pair[0] in ours_names and pair[1] in ours_names}
    assert mapped - ours == set()
    # ContinuousBernoulli and ExponentialFamily have no agvi counterpart
    assert all("ContinuousBernoulli" in pair or "ExponentialFamily" in pair
               for pair in torch_pairs - mapped)


# -- every family pair --------------------------------------------------------------------------
@pytest.mark.parametrize("pair", FAMILY_PAIRS, ids=lambda pair: f"{pair[0]}-{pair[1]}")
def test_registered_pair(backend, pair):
    B = backend
    expected = reference(pair)
    with agvi.use_backend(B):
        p, q = build_pair(pair)
        kl = kl_divergence(p, q)
        assert B.shape(kl) == BATCH
        value = npy(B, kl)
        infinite = np.isinf(expected)
        assert np.all(infinite) or not np.any(infinite), "test parameters mix finite and inf"
        if B.precision == "float32":
            assert B.dtype_of(kl) == B.dtype("float32")
            np.testing.assert_allclose(value, expected, rtol=2e-4, atol=2e-5)
            return
        np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
        # The +inf pairs' Monte Carlo check (draws outside q's support) runs on the eager
        # backends only: JAX compiles every op per shape, which made it the file's costliest part.
        if not (np.all(infinite) and B.has_jit):
            est, se = kl_divergence_mc(p, q, B.key(7), NUM_MC, return_stderr=True)
            est, se = npy(B, est), npy(B, se)
            if np.all(infinite):
                assert np.all(np.isposinf(est)), f"MC estimate {est} for an infinite KL"
            else:
                assert np.all(np.abs(value - est) <= 5.0 * se + 1e-9 * (1.0 + np.abs(value))), \
                    (value, est, se)
        if HAVE_TORCH:
            ref = torch_value(p, q)
            if ref is not None:
                np.testing.assert_allclose(value, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_pairs_are_compared():
    """The comparison above really reaches torch for its closed-form pairs."""
    compared = []
    with agvi.use_backend("numpy", precision="float64"):
        for pair in FAMILY_PAIRS:
            p, q = build_pair(pair)
            if torch_value(p, q) is not None:
                compared.append(pair)
    assert len(compared) >= 60, compared


BROADCAST_CASES = {
    # name: (constructor, p parameters of shape (3,), q parameters of shape (2, 1))
    "Normal-Normal": (dist.Normal, dist.Normal, ([0.1, 0.5, -1.0], [1.0, 0.5, 2.0]),
                      ([[0.3], [-0.2]], [[1.5], [0.7]])),
    "Gamma-Exponential": (dist.Gamma, dist.Exponential, ([1.5, 2.0, 3.0], [1.0, 0.5, 2.0]),
                          ([[0.7], [1.3]],)),
    "Uniform-Uniform": (dist.Uniform, dist.Uniform, ([0.2, 0.3, -0.5], [0.8, 0.9, 0.5]),
                        ([[0.0], [0.1]], [[1.0], [2.0]])),
    "Beta-Beta": (dist.Beta, dist.Beta, ([1.5, 2.0, 3.0], [2.0, 2.5, 1.2]),
                  ([[2.0], [0.7]], [[1.1], [3.0]])),
}


@pytest.mark.parametrize("case", sorted(BROADCAST_CASES))
def test_broadcast_batch_shapes(backend, case):
    make_p, make_q, p_args, q_args = BROADCAST_CASES[case]
    wide = [np.broadcast_to(np.asarray(a), (2, 3)) for a in p_args]
    wide_q = [np.broadcast_to(np.asarray(a), (2, 3)) for a in q_args]
    with agvi.use_backend(backend) as B:
        kl = kl_divergence(make_p(*p_args), make_q(*q_args))
        assert B.shape(kl) == (2, 3)
        full = kl_divergence(make_p(*wide), make_q(*wide_q))
        np.testing.assert_allclose(npy(B, kl), npy(B, full),
                                   rtol=1e-5 if B.precision == "float32" else 1e-12)


# -- +inf and edge cases --------------------------------------------------------------------------
def test_infinite_cases(backend):
    with agvi.use_backend(backend) as B:
        def kl(p, q):
            return npy(B, kl_divergence(p, q))

        assert np.isposinf(kl(dist.Uniform(0.0, 2.0), dist.Uniform(0.0, 1.0)))
        assert np.isfinite(kl(dist.Uniform(0.0, 1.0), dist.Uniform(0.0, 2.0)))
        np.testing.assert_allclose(kl(dist.Uniform(0.0, 1.0), dist.Uniform(0.0, 2.0)),
                                   math.log(2.0), rtol=1e-6)
        assert np.isfinite(kl(dist.Exponential(1.5), dist.Normal(0.0, 1.0)))
        assert np.isposinf(kl(dist.Normal(0.0, 1.0), dist.Exponential(1.5)))
        assert np.isposinf(kl(dist.Beta(2.0, 3.0), dist.Uniform(0.2, 0.5)))
        assert np.isfinite(kl(dist.Beta(2.0, 3.0), dist.Uniform(0.0, 1.0)))
        assert np.isposinf(kl(dist.Pareto(1.0, 3.0), dist.Pareto(2.0, 3.0)))
        assert np.isposinf(kl(dist.Uniform(-0.1, 0.5), dist.Gamma(2.0, 1.0)))
        assert np.isposinf(kl(dist.Uniform(0.5, 1.5), dist.Beta(2.0, 2.0)))
        assert np.isposinf(kl(dist.Uniform(0.05, 1.0), dist.Pareto(0.1, 2.0)))
        # infinite variance of p against a Normal q
        assert np.isposinf(kl(dist.Pareto(1.0, 1.5), dist.Normal(0.0, 1.0)))
        assert np.isposinf(kl(dist.StudentT(1.5, 0.0, 1.0), dist.Normal(0.0, 1.0)))
        assert np.isposinf(kl(dist.Gamma(0.8, 1.0), dist.InverseGamma(2.0, 1.0)))
        assert np.isposinf(kl(dist.Laplace(0.0, 3.0), dist.Gumbel(0.0, 2.0)))
        # elementwise: only the offending batch element is infinite
        v = kl(dist.Uniform([0.0, 0.0], [1.0, 3.0]), dist.Uniform(0.0, 2.0))
        assert np.isfinite(v[0]) and np.isposinf(v[1])
        # discrete: probabilities 0 and 1
        assert np.isposinf(kl(dist.Bernoulli(probs=0.5), dist.Bernoulli(probs=1.0)))
        assert kl(dist.Bernoulli(probs=0.0), dist.Bernoulli(probs=0.0)) == 0.0
        np.testing.assert_allclose(kl(dist.Bernoulli(probs=1.0), dist.Bernoulli(probs=0.5)),
                                   math.log(2.0), rtol=1e-6)
        assert np.isposinf(kl(dist.Categorical(probs=[0.5, 0.5, 0.0]),
                              dist.Categorical(probs=[0.5, 0.0, 0.5])))
        np.testing.assert_allclose(kl(dist.Categorical(probs=[0.5, 0.5, 0.0]),
                                      dist.Categorical(probs=[0.25, 0.25, 0.5])),
                                   math.log(2.0), rtol=1e-6)
        assert np.isposinf(kl(dist.Binomial(5, probs=0.3), dist.Binomial(4, probs=0.3)))
        with pytest.raises(NotImplementedError, match="total_count"):
            kl_divergence(dist.Binomial(3, probs=0.3), dist.Binomial(4, probs=0.3))
        with pytest.raises(NotImplementedError, match="total counts"):
            kl_divergence(dist.NegativeBinomial(3.0, probs=0.3),
                          dist.NegativeBinomial(4.0, probs=0.3))
        assert np.isposinf(kl(dist.Multinomial(3, probs=[0.5, 0.5]),
                              dist.Multinomial(4, probs=[0.5, 0.5])))
        assert kl(dist.Multinomial(0, probs=[0.5, 0.5]), dist.Multinomial(0, probs=[0.9, 0.1])) \
            == 0.0
        assert np.isposinf(kl(dist.Poisson(2.0), dist.Bernoulli(probs=0.5)))
        # identical distributions
        assert abs(kl(dist.Gamma(2.0, 3.0), dist.Gamma(2.0, 3.0))) < 1e-6


def test_chi2_uses_gamma_rules(backend):
    """Nearest-ancestor lookup: Chi2 is a Gamma subclass."""
    with agvi.use_backend(backend) as B:
        a = npy(B, kl_divergence(dist.Chi2(3.0), dist.Gamma(2.0, 0.7)))
        b = npy(B, kl_divergence(dist.Gamma(1.5, 0.5), dist.Gamma(2.0, 0.7)))
        np.testing.assert_allclose(a, b, rtol=1e-6 if B.precision == "float32" else 1e-14)
        c = npy(B, kl_divergence(dist.Exponential(0.4), dist.Chi2(4.0)))
        d = npy(B, kl_divergence(dist.Exponential(0.4), dist.Gamma(2.0, 0.5)))
        np.testing.assert_allclose(c, d, rtol=1e-6 if B.precision == "float32" else 1e-14)


# -- structural rules -----------------------------------------------------------------------------
def _close(B, a, b):
    np.testing.assert_allclose(npy(B, a), npy(B, b) if not isinstance(b, np.ndarray) else b,
                               rtol=2e-5 if B.precision == "float32" else 1e-12, atol=1e-12)


def test_independent(backend):
    rng = np.random.default_rng(1)
    m1, s1, m2, s2 = rng.normal(size=(2, 3)), _u(rng, .5, 2, (2, 3)), rng.normal(size=(2, 3)), \
        _u(rng, .5, 2, (2, 3))
    with agvi.use_backend(backend) as B:
        base = kl_divergence(dist.Normal(m1, s1), dist.Normal(m2, s2))
        p1, q1 = dist.Normal(m1, s1).to_event(1), dist.Normal(m2, s2).to_event(1)
        kl = kl_divergence(p1, q1)
        assert B.shape(kl) == (2,)
        _close(B, kl, B.sum(base, axis=-1))
        p2, q2 = dist.Normal(m1, s1).to_event(2), dist.Normal(m2, s2).to_event(2)
        _close(B, kl_divergence(p2, q2), B.sum(base))
        # nested Independents flatten: (1 then 1) against 2
        nested = dist.Independent(dist.Independent(dist.Normal(m1, s1), 1), 1)
        _close(B, kl_divergence(nested, q2), B.sum(base))
        # q expanded over the batch
        q_exp = dist.Normal(m2[0], s2[0]).expand((2, 3)).to_event(1)
        _close(B, kl_divergence(p1, q_exp),
               B.sum(kl_divergence(dist.Normal(m1, s1), dist.Normal(m2[0], s2[0])), axis=-1))
        # mismatched reinterpreted axes with equal event shapes have no rule
        with pytest.raises(NotImplementedError, match="reinterpreted"):
            kl_divergence(dist.Independent(dist.Dirichlet(_u(rng, 1, 2, (2, 3))), 1), q2)


def test_independent_normal_vs_multivariate(backend):
    rng = np.random.default_rng(2)
    # batch BATCH and event (3,) as in test_registered_pair (JAX reuses its compiled ops)
    loc, scale = rng.normal(size=BATCH + (3,)), _u(rng, 0.5, 2.0, BATCH + (3,))
    with agvi.use_backend(backend) as B:
        diag = dist.Normal(loc, scale).to_event(1)
        as_mvn = dist.MultivariateNormal(loc, scale_tril=np.eye(3) * scale[..., None])
        q = FACTORIES["MultivariateNormal"](rng, BATCH)
        r = FACTORIES["LowRankMultivariateNormal"](rng, BATCH)
        for other in (q, r):
            _close(B, kl_divergence(diag, other), kl_divergence(as_mvn, other))
            _close(B, kl_divergence(other, diag), kl_divergence(other, as_mvn))
        with pytest.raises(NotImplementedError, match="Independent"):
            kl_divergence(dist.Laplace(loc, scale).to_event(1), q)


def test_expanded(backend):
    with agvi.use_backend(backend) as B:
        p = dist.Normal([0.0, 1.0, 2.0], 1.0)
        q = dist.Normal(0.5, 2.0)
        ref = kl_divergence(p, q)
        pe, qe = p.expand((4, 3)), q.expand((4, 3))
        for a, b in [(pe, q), (p, qe), (pe, qe)]:
            kl = kl_divergence(a, b)
            assert B.shape(kl) == (4, 3)
            _close(B, kl, np.broadcast_to(npy(B, ref), (4, 3)))


def test_masked(backend):
    with agvi.use_backend(backend) as B:
        p = dist.Normal([0.0, 1.0, 2.0], 1.0)
        q = dist.Normal(0.5, 2.0)
        ref = npy(B, kl_divergence(p, q))
        mask = np.array([True, False, True])
        _close(B, kl_divergence(p.mask(mask), q), np.where(mask, ref, 0.0))
        _close(B, kl_divergence(p, q.mask(mask)), np.where(mask, ref, 0.0))
        other = np.array([True, True, False])
        _close(B, kl_divergence(p.mask(mask), q.mask(other)), np.where(mask & other, ref, 0.0))
        _close(B, kl_divergence(p.mask(False), q), np.zeros(3))
        _close(B, kl_divergence(p.mask(True), q), ref)
        # masked against expanded, and a point mass against a masked q
        _close(B, kl_divergence(p.mask(mask), q.expand((3,))), np.where(mask, ref, 0.0))
        _close(B, kl_divergence(p.expand((2, 3)), q.mask(mask)),
               np.broadcast_to(np.where(mask, ref, 0.0), (2, 3)))
        delta = dist.Delta([0.0, 1.0, 2.0], log_density=0.3)
        lp = npy(B, q.log_prob(B.asarray([0.0, 1.0, 2.0])))
        _close(B, kl_divergence(delta, q.mask(mask)), np.where(mask, 0.3 - lp, 0.0))


def test_delta(backend):
    with agvi.use_backend(backend) as B:
        q = dist.Normal(0.5, 2.0)
        v = [0.0, 1.0, 3.0]
        delta = dist.Delta(v, log_density=0.25)
        _close(B, kl_divergence(delta, q), 0.25 - npy(B, q.log_prob(B.asarray(v))))
        _close(B, kl_divergence(delta, q.expand((3,))),
               0.25 - npy(B, q.log_prob(B.asarray(v))))
        out = npy(B, kl_divergence(dist.Delta([-1.0, 1.0]), dist.Exponential(1.0)))
        assert np.isposinf(out[0]) and np.isfinite(out[1])
        # vector events
        mvn = FACTORIES["MultivariateNormal"](np.random.default_rng(3), ())
        point = np.array([0.1, -0.2, 0.3])
        _close(B, kl_divergence(dist.Delta(point, event_dim=1), mvn),
               -npy(B, mvn.log_prob(B.asarray(point))))


def test_transformed(backend):
    with agvi.use_backend(backend) as B:
        p_base, q_base = dist.Normal([0.0, 0.5], 1.0), dist.Normal(0.3, 1.5)
        ref = kl_divergence(p_base, q_base)
        p = TransformedDistribution(p_base, ExpTransform())
        q = TransformedDistribution(q_base, ExpTransform())
        _close(B, kl_divergence(p, q), ref)
        # separately built, equal affine maps count as the same transform
        p = TransformedDistribution(p_base, [AffineTransform(1.0, 2.0), ExpTransform()])
        q = TransformedDistribution(q_base, [AffineTransform(1.0, 2.0), ExpTransform()])
        _close(B, kl_divergence(p, q), ref)
        q_other = TransformedDistribution(q_base, [AffineTransform(1.0, 3.0), ExpTransform()])
        with pytest.raises(NotImplementedError, match="equal transforms"):
            kl_divergence(p, q_other)


# -- registry ----------------------------------------------------------------------------------
def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match=r"\(Normal, Normal\).*already registered"):
        register_kl(dist.Normal, dist.Normal)(lambda p, q: None)
    with pytest.raises(TypeError, match="type_q"):
        register_kl(dist.Normal, int)


def test_nearest_ancestor_and_user_rules(backend):
    class MyNormal(dist.Normal):
        pass

    class OtherNormal(dist.Normal):
        pass

    with agvi.use_backend(backend) as B:
        p, q = MyNormal(0.0, 1.0), dist.Normal(1.0, 2.0)
        ref = npy(B, kl_divergence(dist.Normal(0.0, 1.0), q))
        _close(B, kl_divergence(p, q), ref)  # through (Normal, Normal)
        try:
            @register_kl(MyNormal, dist.Normal)
            def _mine(p, q):
                return B.full(B.broadcast_shapes(p.batch_shape, q.batch_shape), 42.0)

            assert npy(B, kl_divergence(p, q)) == 42.0  # the cache was cleared
            assert npy(B, kl_divergence(p, MyNormal(1.0, 2.0))) == 42.0  # nearest in p first
            with pytest.raises(ValueError, match="already registered"):
                register_kl(MyNormal, dist.Normal)(_mine)
            register_kl(MyNormal, dist.Normal, override=True)(_mine)

            # ambiguity: (MyNormal, Normal) and (Normal, OtherNormal) are equally near
            @register_kl(dist.Normal, OtherNormal)
            def _other(p, q):
                return B.full(B.broadcast_shapes(p.batch_shape, q.batch_shape), 7.0)

            with pytest.warns(RuntimeWarning, match="ambiguous"):
                out = kl_divergence(p, OtherNormal(1.0, 2.0))
            assert npy(B, out) == 42.0  # the first in the total order: nearer in p's MRO
        finally:
            K._unregister_kl(MyNormal, dist.Normal)
            K._unregister_kl(dist.Normal, OtherNormal)
        _close(B, kl_divergence(p, q), ref)


def test_no_builtin_ambiguity():
    """Every pair of the types the tests build resolves without an ambiguity warning."""
    types = {dist.Normal, dist.Gamma, dist.Chi2, dist.Delta, dist.Independent,
             dist.ExpandedDistribution, dist.MaskedDistribution, TransformedDistribution,
             dist.MultivariateNormal, dist.LowRankMultivariateNormal, dist.Bernoulli}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for tp in types:
            for tq in types:
                K._dispatch(tp, tq)


def test_errors(backend):
    with agvi.use_backend(backend):
        with pytest.raises(NotImplementedError,
                           match=r"StudentT.*StudentT.*kl_divergence_mc"):
            kl_divergence(dist.StudentT(3.0), dist.StudentT(4.0))
        with pytest.raises(ValueError, match="event_shape"):
            kl_divergence(dist.Normal([0.0, 1.0]), dist.Normal([0.0, 1.0]).to_event(1))
        with pytest.raises(ValueError, match="do not broadcast"):
            kl_divergence(dist.Normal([0.0, 1.0]), dist.Normal([0.0, 1.0, 2.0]))
        with pytest.raises(TypeError, match="Distribution"):
            kl_divergence(dist.Normal(), 3.0)
    other = "numpy" if backend.name != "numpy" else "numpy"
    if backend.name != other:
        with agvi.use_backend(backend):
            p = dist.Normal()
        with agvi.use_backend(other):
            q = dist.Normal()
        with pytest.raises(ValueError, match="backend"):
            kl_divergence(p, q)


# -- Monte Carlo estimate -----------------------------------------------------------------------
def test_kl_divergence_mc(backend):
    with agvi.use_backend(backend) as B:
        # a pair with no rule; batch shape and sample count as in test_registered_pair, and a
        # p without a gamma sampler (JAX compiles those per shape and dtype)
        p = dist.Laplace(np.zeros(BATCH), 1.0)
        q = dist.Cauchy(0.5, 2.0)
        with pytest.raises(NotImplementedError):
            kl_divergence(p, q)
        est = kl_divergence_mc(p, q, 0, num_samples=NUM_MC)
        assert B.shape(est) == BATCH
        est2, se = kl_divergence_mc(p, q, B.key(0), num_samples=NUM_MC, return_stderr=True)
        np.testing.assert_allclose(npy(B, est2), npy(B, est))
        assert np.all((0.0 < npy(B, se)) & (npy(B, se) < 0.05))
        with pytest.raises(ValueError, match="num_samples"):
            kl_divergence_mc(p, q, 0, num_samples=1, return_stderr=True)
        with pytest.raises(ValueError, match="num_samples"):
            kl_divergence_mc(p, q, 0, num_samples=0)
        # draws of p outside the support of q give +inf
        out = kl_divergence_mc(dist.Normal(0.0, 1.0), dist.Exponential(1.0), 0, 100)
        assert np.isposinf(npy(B, out))


_FINITE_DIFFERENCES = {}


def _gradient_cases(B):
    """Scalar functions of x (shape (2,)) through KL closed forms, built on the Backend ``B``."""
    return {
        "normal": lambda x: kl_divergence(dist.Normal(x[0], x[1]), dist.Normal(0.3, 1.7)),
        "gamma": lambda x: kl_divergence(dist.Gamma(x[0], x[1]), dist.Gamma(2.0, 1.0)),
        "beta": lambda x: kl_divergence(dist.Beta(x[0], x[1]), dist.Beta(2.0, 3.0)),
        "lognormal_gamma": lambda x: kl_divergence(dist.LogNormal(x[0] - 1.0, x[1]),
                                                   dist.Gamma(2.0, 1.0)),
        "mvn": lambda x: kl_divergence(
            dist.MultivariateNormal(B.stack([x[0], x[1]]),
                                    scale_tril=B.diag_embed(B.stack([x[1], x[0]]))),
            dist.MultivariateNormal(B.asarray([0.1, 0.2]), scale_tril=B.asarray(
                [[1.0, 0.0], [0.3, 0.8]]))),
        "lowrank": lambda x: kl_divergence(
            dist.LowRankMultivariateNormal(B.stack([x[0], x[1]]),
                                           B.reshape(B.stack([x[0], x[1]]), (2, 1)),
                                           B.stack([x[1], x[0]])),
            dist.LowRankMultivariateNormal(B.asarray([0.1, 0.2]), B.asarray([[0.5], [0.1]]),
                                           B.asarray([1.0, 0.7]))),
    }


def test_gradients_match_finite_differences(backend):
    """The closed forms are differentiable with the Backend's autodiff (float64 only)."""
    if backend.precision != "float64":
        pytest.skip("finite differences need float64")
    B = backend
    cases = _gradient_cases(B)
    x0, h = np.array([1.3, 0.8]), 1e-6
    for name in cases:
        # central differences of the NumPy float64 value (backend-independent, computed once)
        if name not in _FINITE_DIFFERENCES:
            with agvi.use_backend("numpy", precision="float64") as N:
                f = _gradient_cases(N)[name]
                _FINITE_DIFFERENCES[name] = [
                    (float(f(N.asarray(x0 + h * e))) - float(f(N.asarray(x0 - h * e)))) / (2 * h)
                    for e in np.eye(2)]
        with agvi.use_backend(B):
            # compiled where the backend compiles: one program instead of op-by-op tracing
            g = npy(B, B.jit(B.grad(cases[name]))(B.asarray(x0)))
        np.testing.assert_allclose(g, _FINITE_DIFFERENCES[name], rtol=1e-6, atol=1e-8,
                                   err_msg=name)


def test_compiles_under_jit(backend):
    if not backend.has_jit:
        pytest.skip("the backend does not compile")
    B = backend

    def f(a, n):
        with agvi.use_backend(B):
            return (kl_divergence(dist.Gamma(a, 1.0), dist.Normal(0.0, 2.0))
                    + kl_divergence(dist.Binomial(n, probs=0.3), dist.Binomial(n, probs=0.4)))

    a, n = B.asarray([1.5, 2.5]), B.asarray([3.0, 5.0])
    np.testing.assert_allclose(npy(B, B.jit(f)(a, n)), npy(B, f(a, n)),
                               rtol=1e-5 if B.precision == "float32" else 1e-12)


# -- the generated table ------------------------------------------------------------------------
def test_table_and_docs():
    pairs = registered_kl_pairs()
    assert pairs == sorted(pairs) and len(pairs) == len(set(pairs)) == len(K._KL_REGISTRY)
    text = kl_table_markdown()
    for p, q in pairs:
        assert f"| {p} | {q} |" in text
    doc = REPO / "docs" / "kl_table.md"
    assert doc.read_text() == text, \
        "docs/kl_table.md is stale: run `python -m agvi.distributions.kl`"


def test_main_writes_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert K.main([str(out)]) == 0
    assert out.read_text() == kl_table_markdown()
    capsys.readouterr()
    K.main(["-"])
    assert capsys.readouterr().out == kl_table_markdown()
