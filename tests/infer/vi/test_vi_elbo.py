"""ELBO objectives: closed forms on a conjugate Normal model, and unbiased gradient estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.infer import losses as L
from agvi.infer.elbo import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

Y = np.array([0.5, 1.2, -0.3, 0.9])
M0, S0, SIGMA = 0.3, 1.5, 0.8


def exact_posterior():
    prec = 1 / S0**2 + len(Y) / SIGMA**2
    mean = (M0 / S0**2 + Y.sum() / SIGMA**2) / prec
    return mean, 1 / math.sqrt(prec)


def log_evidence():
    n = len(Y)
    cov = SIGMA**2 * np.eye(n) + S0**2 * np.ones((n, n))
    d = Y - M0
    sign, logdet = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + logdet + d @ np.linalg.solve(cov, d))


def model(y):
    mu = agvi.sample("mu", dist.Normal(M0, S0))
    with agvi.plate("data", len(Y)):
        agvi.sample("y", dist.Normal(mu, SIGMA), obs=y)


def guide(y):
    loc = agvi.param("loc", 0.0)
    scale = agvi.param("scale", 1.0, constraint=dist.constraints.positive)
    agvi.sample("mu", dist.Normal(loc, scale))


def analytic_elbo(B, params):
    """E_q[log p(y, mu)] + H[q] for q = Normal(loc, scale), in closed form."""
    m, s = params["loc"], params["scale"]
    y = B.asarray(Y)
    ll = B.sum(-0.5 * math.log(2 * math.pi * SIGMA**2) - ((y - m) ** 2 + s**2) / (2 * SIGMA**2))
    lp = -0.5 * math.log(2 * math.pi * S0**2) - ((m - M0) ** 2 + s**2) / (2 * S0**2)
    h = 0.5 * math.log(2 * math.pi * math.e) + B.log(s)
    return ll + lp + h


def _params(B, loc, scale):
    return {"loc": B.asarray(loc), "scale": B.asarray(scale)}


@pytest.mark.parametrize("objective", [
    Trace_ELBO(num_particles=3), Trace_ELBO(num_particles=2, stl=True),
    Trace_ELBO(num_particles=2, vectorize_particles=False), RenyiELBO(alpha=0.5, num_particles=2),
    TraceGraph_ELBO(num_particles=2),
], ids=["trace", "trace-stl", "trace-loop", "renyi0.5", "tracegraph"])
def test_elbo_at_exact_posterior_is_log_evidence(B64, objective):
    # log p(y, mu) - log q(mu) = log p(y) for every mu when q is the posterior: the estimate is
    # exact whatever the draws.
    B = B64
    m, s = exact_posterior()
    loss = B.jit(lambda k, p: objective(k, p, model, guide, B.asarray(Y)))
    val = loss(B.key(3), _params(B, m, s))
    np.testing.assert_allclose(-float(val), log_evidence(), rtol=1e-10)


def test_stl_gradient_vanishes_at_posterior(B64):
    B = B64
    m, s = exact_posterior()
    elbo = Trace_ELBO(num_particles=2, stl=True)
    g = B.jit(B.grad(lambda p, k: elbo(k, p, model, guide, B.asarray(Y))))(
        _params(B, m, s), B.key(5))
    for v in g.values():
        np.testing.assert_allclose(float(v), 0.0, atol=1e-10)


@pytest.mark.parametrize("stl", [False, True])
def test_trace_elbo_gradient_is_unbiased(B64, stl):
    B = B64
    # near the posterior mean, with a too-small scale. Per-draw gradient sds (worked out from
    # the closed form): pathwise 1.3 (loc) and 1.9 (scale); path derivative 3.7 and 5.2 (its
    # variance vanishes only at the optimum). Tolerances are 5 standard errors at n=200.
    params = _params(B, 0.55, 0.2)
    n = 200
    elbo = Trace_ELBO(num_particles=n, stl=stl)
    g = B.jit(B.grad(lambda p, k: elbo(k, p, model, guide, B.asarray(Y))))(params, B.key(0))
    exact = B.grad(lambda p: -analytic_elbo(B, p))(params)
    assert abs(float(exact["scale"])) > 3
    tol_loc, tol_scale = (1.3, 1.9) if stl else (0.5, 0.7)
    np.testing.assert_allclose(float(g["loc"]), float(exact["loc"]), atol=tol_loc, rtol=0.0)
    np.testing.assert_allclose(float(g["scale"]), float(exact["scale"]), atol=tol_scale,
                               rtol=0.0)


def test_meanfield_elbo_uses_the_analytic_kl(B64):
    # a model without observations: the mean-field loss is KL(q || prior), exactly
    B = B64

    def prior_model(y):
        agvi.sample("mu", dist.Normal(M0, S0))

    m, s = 0.1, 0.7
    val = B.jit(lambda k, p: TraceMeanField_ELBO()(k, p, prior_model, guide, None))(
        B.key(1), _params(B, m, s))
    kl = math.log(S0 / s) + (s**2 + (m - M0) ** 2) / (2 * S0**2) - 0.5
    np.testing.assert_allclose(float(val), kl, rtol=1e-10)
    # with data, the KL term is exact and the likelihood term is Monte Carlo
    v2 = B.jit(lambda k, p: TraceMeanField_ELBO(num_particles=2)(k, p, model, guide,
                                                                    B.asarray(Y)))(
        B.key(1), _params(B, m, s))
    assert np.isfinite(float(v2))


def test_scale_handler_with_array_factor(B64):
    B = B64
    m, s = exact_posterior()

    def scaled_model(y, beta):
        with agvi.handlers.scale(scale=beta):
            model(y)

    def g(y, beta):
        guide(y)

    elbo = Trace_ELBO(stl=True)
    f = B.jit(lambda k, p, beta: elbo(k, p, scaled_model, g, B.asarray(Y), beta))
    one = f(B.key(0), _params(B, m, s), B.asarray(1.0))
    two = f(B.key(0), _params(B, m, s), B.asarray(2.0))
    np.testing.assert_allclose(-float(one), log_evidence(), rtol=1e-10)
    assert abs(float(two) - float(one)) > 1e-3


# -- functional losses: gradient estimators on Normal q vs Normal p --------------------------
@pytest.mark.parametrize("fn", [L.elbo_loss, L.elbo_path_derivative_loss, L.elbo_score_function,
                                L.elbo_rb_score_function])
def test_functional_estimators_unbiased(B64, fn):
    B = B64
    p = dist.Normal(0.0, 1.0)
    n = 20000

    def loss(theta, key):
        q = dist.Normal(theta[0], theta[1])
        z = q.rsample(key, (n,))
        return B.mean(fn(p, q, z))

    def kl(theta):
        m, s = theta[0], theta[1]
        return -B.log(s) + 0.5 * (s**2 + m**2) - 0.5

    theta = B.asarray(np.array([0.4, 0.6]))
    val, g = B.jit(B.value_and_grad(loss))(theta, B.key(7))
    exact = B.grad(kl)(theta)
    np.testing.assert_allclose(float(val), float(kl(theta)), atol=0.05)
    tol = 0.1 if fn in (L.elbo_score_function, L.elbo_rb_score_function) else 0.03
    np.testing.assert_allclose(B.to_numpy(g), B.to_numpy(exact), atol=tol)


def test_functional_loss_values(np_B64):
    B = np_B64
    assert round(float(L.elbo_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0)), 4) == 0.9189
    assert round(float(L.negative_log_prob_loss(dist.Normal(1.0, 1.0), 0.0)), 4) == 1.4189
    assert float(L.analytical_kl_divergence_loss(dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0),
                                                 1.0)) == 0.5
    ds = [dist.Cauchy(2.0, 2.0) for _ in range(5)]
    assert round(float(L.negative_log_prob(ds, [1.0, 2.0, 3.0, 4.0, 5.0])), 4) == 11.5075
    ps = [dist.Cauchy(0.0, 1.0) for _ in range(5)]
    qs = [dist.Normal(0.0, 1.0) for _ in range(5)]
    vals = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert round(float(L.vi_loss(ps, qs, vals, [False] * 5, kl_scaling=1)), 4) == -6.4327
    reg = L.vi_regularization(ps, qs, vals, kl_scaling=0.5)
    np.testing.assert_allclose(float(reg), -6.4327 / 2, atol=1e-4)
    # an observed entry contributes its negative log-likelihood
    obs = L.vi_loss(ps, qs, vals, [True] + [False] * 4)
    np.testing.assert_allclose(
        float(obs), -6.4327 - float(L.elbo_loss(ps[0], qs[0], 0.0))
        + float(L.negative_log_prob_loss(ps[0], 0.0)), atol=1e-4)
    # no analytic rule: the backup is used, or the error is re-raised
    with pytest.raises(NotImplementedError):
        L.analytical_kl_divergence_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0)
    backup = L.analytical_kl_divergence_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0,
                                             backup_loss_fn=L.elbo_loss)
    np.testing.assert_allclose(float(backup), 0.9189, atol=1e-4)
    mask = L.hard_negative_mining(np.array([[0.1, 0.9, 0.5, 0.3], [0.2, 0.1, 0.3, 0.4]]),
                                  np.array([[1, 0, 0, 0], [0, 0, 0, 0]]), 2)
    assert B.to_numpy(mask).tolist() == [[True, True, True, False], [False] * 4]


def test_functional_doctests():
    import doctest

    from agvi.infer import losses
    with agvi.use_backend("numpy", precision="float64"):
        res = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert res.attempted >= 8 and res.failed == 0


@pytest.fixture
def np_B64():
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b


def test_objective_argument_errors():
    with pytest.raises(ValueError, match="num_particles"):
        Trace_ELBO(num_particles=0)
    with pytest.raises(ValueError, match="alpha"):
        RenyiELBO(alpha=1)
