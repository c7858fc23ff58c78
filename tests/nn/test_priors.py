"""Weight priors of agvi.nn: log densities against SciPy (Student-t marginals, the joint
multivariate t of the conjugate priors, the scale mixture), draws against the same marginals,
and the complexity term: closed form against Monte Carlo, Monte Carlo against a SciPy
estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import agvi
from agvi.distributions import kl_divergence_mc
from agvi.nn import (
    ConjugateKnownMeanPrior,
    ConjugatePrior,
    GammaPrecisionWeights,
    GaussianPrior,
    MixtureGaussianPrior,
    NormalGammaWeights,
    Variationalize,
    make_prior,
)

A0, B0, M0, K0 = 1.5, 0.8, 0.3, 2.0          # Normal-Gamma hyperparameters
MEAN = -0.2                                    # known mean
S1, S2, PI = 1.0, math.exp(-3.0), 0.3          # scale mixture


def host(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


def normal_gamma_mvt(k):
    shape = B0 / A0 * (np.eye(k) + np.ones((k, k)) / K0)
    return stats.multivariate_t(loc=np.full(k, M0), shape=shape, df=2 * A0)


def known_mean_mvt(k):
    return stats.multivariate_t(loc=np.full(k, MEAN), shape=B0 / A0 * np.eye(k), df=2 * A0)


def mixture_logpdf(w):
    return np.logaddexp(np.log(PI) + stats.norm(0, S1).logpdf(w),
                        np.log1p(-PI) + stats.norm(0, S2).logpdf(w))


@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)])
def test_conjugate_log_prob_is_the_multivariate_t(B64, shape):
    rng = np.random.default_rng(1)
    k = int(np.prod(shape))
    w = rng.normal(0.5, 1.3, size=(4,) + shape)
    d = make_prior("conjugate", alpha_0=A0, beta_0=B0, mu_0=M0, kappa_0=K0).distribution(shape)
    assert isinstance(d, NormalGammaWeights) and d.event_shape == shape
    got = host(B64, d.log_prob(B64.asarray(w)))
    want = normal_gamma_mvt(k).logpdf(w.reshape(4, k))
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)])
def test_conjugate_known_mean_log_prob_is_the_multivariate_t(B64, shape):
    rng = np.random.default_rng(2)
    k = int(np.prod(shape))
    w = rng.normal(0.0, 0.7, size=(3,) + shape)
    d = make_prior("conjugate_known_mean", mean=MEAN, alpha_0=A0, beta_0=B0).distribution(shape)
    assert isinstance(d, GammaPrecisionWeights)
    got = host(B64, d.log_prob(B64.asarray(w)))
    np.testing.assert_allclose(got, known_mean_mvt(k).logpdf(w.reshape(3, k)), rtol=1e-10)


def test_single_weight_marginals_are_student_t(B64):
    w = np.linspace(-4.0, 4.0, 9)
    ng = NormalGammaWeights(M0, K0, A0, B0, ())
    t_ng = stats.t(df=2 * A0, loc=M0, scale=math.sqrt(B0 * (K0 + 1) / (A0 * K0)))
    np.testing.assert_allclose(host(B64, ng.log_prob(B64.asarray(w))), t_ng.logpdf(w),
                               rtol=1e-10)
    gp = GammaPrecisionWeights(MEAN, A0, B0, ())
    t_gp = stats.t(df=2 * A0, loc=MEAN, scale=math.sqrt(B0 / A0))
    np.testing.assert_allclose(host(B64, gp.log_prob(B64.asarray(w))), t_gp.logpdf(w),
                               rtol=1e-10)


def test_gaussian_and_mixture_log_prob(B64):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, size=(2, 4, 3))
    d = GaussianPrior().distribution((4, 3), fan_in=16)      # std 1/sqrt(16)
    np.testing.assert_allclose(host(B64, d.log_prob(B64.asarray(w))),
                               stats.norm(0, 0.25).logpdf(w).sum(axis=(1, 2)), rtol=1e-10)
    d = GaussianPrior(mean=0.1, std=2.0).distribution((4, 3), fan_in=16)
    np.testing.assert_allclose(host(B64, d.log_prob(B64.asarray(w))),
                               stats.norm(0.1, 2.0).logpdf(w).sum(axis=(1, 2)), rtol=1e-10)
    d = MixtureGaussianPrior(sigma_1=S1, sigma_2=S2, pi=PI).distribution((4, 3))
    np.testing.assert_allclose(host(B64, d.log_prob(B64.asarray(w))),
                               mixture_logpdf(w).sum(axis=(1, 2)), rtol=1e-10)


def test_conjugate_draws_follow_the_student_t_marginals(B64):
    """KS tests of each prior's draws (entry (0, 1) of a (2, 3) tensor) against its Student-t
    marginal, and the entries of one draw share their precision (they are correlated in
    |w - mean|)."""
    n = 4000
    key = agvi.random.key(5)
    ng = NormalGammaWeights(M0, K0, A0, B0, (2, 3)).sample(key, (n,))
    t_ng = stats.t(df=2 * A0, loc=M0, scale=math.sqrt(B0 * (K0 + 1) / (A0 * K0)))
    x = host(B64, ng)
    assert x.shape == (n, 2, 3)
    assert stats.kstest(x[:, 0, 1], t_ng.cdf).pvalue > 1e-3
    gp = host(B64, GammaPrecisionWeights(MEAN, A0, B0, (2, 3)).sample(key, (n,)))
    t_gp = stats.t(df=2 * A0, loc=MEAN, scale=math.sqrt(B0 / A0))
    assert stats.kstest(gp[:, 1, 2], t_gp.cdf).pvalue > 1e-3
    r = stats.spearmanr(np.abs(gp[:, 0, 0] - MEAN), np.abs(gp[:, 1, 1] - MEAN))[0]
    assert r > 0.1  # independent entries: 0 +- 0.016


def make_net(B, prior, **kwargs):
    B_ = B

    def f(p, x):
        return B_.matmul(x, p["w"]) + p["b"]

    rng = np.random.default_rng(0)
    params = {"w": rng.normal(0, 0.5, size=(3, 4)), "b": rng.normal(0, 0.5, size=4)}
    bnn = Variationalize(f, params, prior=prior, prior_kwargs=kwargs, init_scale=0.3)
    vp = bnn.variational_params
    # give every weight its own posterior scale
    vp = {"loc": vp["loc"],
          "rho": {n: v + B.asarray(rng.normal(0, 0.3, size=B.shape(v)))
                  for n, v in vp["rho"].items()}}
    return bnn, vp


def test_gaussian_prior_loss_closed_form_matches_monte_carlo(B64):
    """KL(q || N(0, 1/fan_in)) in closed form (the default) against the Monte Carlo estimate
    of the same prior with n_mc_samples draws: within 4 standard errors."""
    bnn, vp = make_net(B64, "gaussian")
    assert bnn.fan_in == {"w": 3, "b": 3}
    exact = bnn.prior_loss(vp, per_parameter=True)
    n_mc = 4000
    bnn_mc, _ = make_net(B64, "gaussian", n_mc_samples=n_mc)
    key = agvi.random.key(11)
    mc = B64.jit(lambda v, k: bnn_mc.prior_loss(v, k, per_parameter=True))(vp, key)
    post = bnn.posterior(vp)
    for i, name in enumerate(bnn.names):
        _, se = kl_divergence_mc(post[name], bnn.prior_distribution(name),
                                 agvi.random.fold_in(key, 100 + i), n_mc, return_stderr=True)
        e, m, s = float(exact[name]), float(mc[name]), float(se)
        assert abs(e - m) < 4 * s, (name, e, m, s)
        # the closed form itself, from the Normal KL formula
        loc = host(B64, vp["loc"][name])
        sc = host(B64, bnn.scale(vp["rho"][name]))
        sp = 1 / math.sqrt(3)
        want = np.sum(np.log(sp / sc) + (sc**2 + loc**2) / (2 * sp**2) - 0.5)
        assert e == pytest.approx(want, rel=1e-12)
    assert float(bnn.prior_loss(vp)) == pytest.approx(sum(float(v) for v in exact.values()),
                                                      rel=1e-12)


def scipy_kl_estimate(loc, sc, logp, n, seed):
    """Monte Carlo KL(q || p) with SciPy densities: (estimate, standard error)."""
    rng = np.random.default_rng(seed)
    w = loc + sc * rng.normal(size=(n,) + loc.shape)
    lr = stats.norm(loc, sc).logpdf(w).reshape(n, -1).sum(1) - logp(w.reshape(n, -1))
    return lr.mean(), lr.std(ddof=1) / math.sqrt(n)


@pytest.mark.parametrize("prior_type,kwargs,logp", [
    ("conjugate", dict(alpha_0=A0, beta_0=B0, mu_0=M0, kappa_0=K0),
     lambda w: normal_gamma_mvt(w.shape[1]).logpdf(w)),
    ("conjugate_known_mean", dict(mean=MEAN, alpha_0=A0, beta_0=B0),
     lambda w: known_mean_mvt(w.shape[1]).logpdf(w)),
    ("mixtgauss", dict(sigma_1=S1, sigma_2=S2, pi=PI), lambda w: mixture_logpdf(w).sum(1)),
])
def test_monte_carlo_prior_loss_matches_a_scipy_estimate(B64, prior_type, kwargs, logp):
    """prior_loss with n_mc_samples draws against an independent SciPy Monte Carlo estimate:
    within 4 combined standard errors, per parameter tensor."""
    n_mc = 2000
    bnn, vp = make_net(B64, prior_type, n_mc_samples=n_mc, **kwargs)
    assert bnn.priors["w"].n_mc_samples == n_mc and not bnn.priors["w"].closed_form
    with pytest.raises(ValueError, match="pass key="):
        bnn.prior_loss(vp)
    # jit: one compilation on JAX instead of one per eager operation
    got = B64.jit(lambda v, k: bnn.prior_loss(v, k, per_parameter=True))(vp, agvi.random.key(3))
    for i, name in enumerate(bnn.names):
        loc = host(B64, vp["loc"][name])
        sc = host(B64, bnn.scale(vp["rho"][name]))
        est, se = scipy_kl_estimate(loc, sc, logp, 20000, seed=i)
        _, se_ours = kl_divergence_mc(bnn.posterior(vp)[name], bnn.prior_distribution(name),
                                      agvi.random.key(50 + i), n_mc, return_stderr=True)
        tol = 4 * math.hypot(se, float(se_ours))
        assert abs(float(got[name]) - est) < tol, (name, float(got[name]), est, tol)


def test_prior_loss_is_differentiable(B64):
    bnn, vp = make_net(B64, "conjugate", n_mc_samples=5)
    key = agvi.random.key(0)
    g = B64.jit(B64.grad(lambda p: bnn.prior_loss(p, key)))(vp)
    for part in ("loc", "rho"):
        for name in bnn.names:
            v = host(B64, g[part][name])
            assert np.all(np.isfinite(v)) and np.any(v != 0)


def test_make_prior_and_set_prior_validation():
    assert isinstance(make_prior("gaussian", std=0.5), GaussianPrior)
    assert isinstance(make_prior("conjugate"), ConjugatePrior)
    assert isinstance(make_prior("conjugate_known_mean"), ConjugateKnownMeanPrior)
    p = MixtureGaussianPrior()
    assert make_prior(p) is p
    with pytest.raises(ValueError, match="prior_type must be one of"):
        make_prior("laplace")
    with pytest.raises(ValueError, match="hyperparameters"):
        make_prior(p, pi=0.2)
    with pytest.raises(TypeError, match="conjugate"):
        make_prior("conjugate", sigma_1=1.0)
    with pytest.raises(ValueError, match="alpha_0"):
        make_prior("conjugate", alpha_0=-1.0)
    with pytest.raises(ValueError, match="pi"):
        make_prior("mixtgauss", pi=1.0)
    with pytest.raises(ValueError, match="n_mc_samples"):
        make_prior("mixtgauss", n_mc_samples=0)
    with pytest.raises(ValueError, match="std"):
        make_prior("gaussian", std=0.0)
    assert "ConjugatePrior(n_mc_samples=10" in repr(make_prior("conjugate"))
