"""Whole-model log densities against hand-written SciPy formulas, under jit and vmap, and the
constrained/unconstrained helpers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import agvi.distributions as dist
from agvi import handlers
from agvi.distributions.transforms import ExpTransform
from agvi.handlers import deterministic, plate, sample
from agvi.handlers.util import (
    constrain_fn,
    log_density,
    potential_energy,
    transform_fn,
    unconstrain_fn,
)

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    """Non-centred eight schools."""
    mu = sample("mu", dist.Normal(0.0, 5.0))
    tau = sample("tau", dist.HalfCauchy(5.0))
    with plate("J", 8):
        theta_tilde = sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = deterministic("theta", mu + tau * theta_tilde)
        sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_scipy(mu, tau, tt):
    return (stats.norm.logpdf(mu, 0.0, 5.0) + stats.halfcauchy.logpdf(tau, scale=5.0)
            + stats.norm.logpdf(tt).sum() + stats.norm.logpdf(Y, mu + tau * tt, SIGMA).sum())


def _points():
    rng = np.random.default_rng(0)
    return [(float(rng.normal(0, 5)), float(rng.gamma(2.0, 2.0)), rng.normal(size=8))
            for _ in range(4)] + [(0.0, 1e-3, np.zeros(8)), (-12.5, 40.0, np.linspace(-3, 3, 8))]


def _params(B, mu, tau, tt):
    return {"mu": B.asarray(mu), "tau": B.asarray(tau), "theta_tilde": B.asarray(tt)}


def test_eight_schools_matches_scipy(B):
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    args = (B.asarray(Y), B.asarray(SIGMA))
    for mu, tau, tt in _points():
        lp, tr = log_density(eight_schools, args, {}, _params(B, mu, tau, tt))
        assert B.shape(lp) == ()
        np.testing.assert_allclose(float(lp), eight_schools_scipy(mu, tau, tt), rtol=rtol)
    assert tr["y"]["is_observed"] and tr["theta"]["type"] == "deterministic"


def test_eight_schools_under_jit(B):
    """Handlers run while tracing: the jitted log density equals the eager one (on JAX it
    compiles once for all points)."""
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    args = (B.asarray(Y), B.asarray(SIGMA))
    traces = []

    def f(params):
        traces.append(1)
        return log_density(eight_schools, args, {}, params)[0]
    jitted = B.jit(f)
    for mu, tau, tt in _points():
        np.testing.assert_allclose(float(jitted(_params(B, mu, tau, tt))),
                                   eight_schools_scipy(mu, tau, tt), rtol=rtol)
    if B.has_jit:
        assert len(traces) == 1


def test_eight_schools_gradient(B64):
    B = B64  # finite differences need float64
    mu, tau, tt = _points()[0]
    args = (B.asarray(Y), B.asarray(SIGMA))
    g = B.grad(lambda p: log_density(eight_schools, args, {}, p)[0])(_params(B, mu, tau, tt))
    h = 1e-6
    fd_mu = (eight_schools_scipy(mu + h, tau, tt) - eight_schools_scipy(mu - h, tau, tt)) / 2 / h
    fd_tau = (eight_schools_scipy(mu, tau + h, tt) - eight_schools_scipy(mu, tau - h, tt)) / 2 / h
    np.testing.assert_allclose(float(g["mu"]), fd_mu, rtol=1e-6)
    np.testing.assert_allclose(float(g["tau"]), fd_tau, rtol=1e-6)
    assert B.shape(g["theta_tilde"]) == (8,)


def test_log_density_under_vmap(B64):
    B = B64
    """A batch of latent points through ``B.vmap`` equals one call per point."""
    pts = _points()[:3]
    args = (B.asarray(Y), B.asarray(SIGMA))
    batch = {"mu": B.asarray([p[0] for p in pts]), "tau": B.asarray([p[1] for p in pts]),
             "theta_tilde": B.asarray(np.stack([p[2] for p in pts]))}
    lps = B.vmap(lambda p: log_density(eight_schools, args, {}, p)[0])(batch)
    expect = [eight_schools_scipy(*p) for p in pts]
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    np.testing.assert_allclose(B.to_numpy(lps), expect, rtol=rtol)


def test_seeded_model_under_jit_with_traced_key(B64):
    B = B64
    """On JAX the key may be a traced argument of the jitted function."""
    def draw(key):
        tr = handlers.trace(handlers.seed(eight_schools, rng_seed=key)).get_trace(
            B.asarray(Y), B.asarray(SIGMA))
        return tr["theta_tilde"]["value"], tr.log_prob_sum()
    key = B.key(11)
    eager = draw(key)
    jitted = B.jit(draw)(key)
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    np.testing.assert_allclose(B.to_numpy(jitted[0]), B.to_numpy(eager[0]), rtol=rtol)
    np.testing.assert_allclose(float(jitted[1]), float(eager[1]), rtol=rtol)


def test_scale_as_a_traced_argument_does_not_retrace(B):
    """A per-step factor (KL annealing) passed as an Array is multiplied, never branched on."""
    args = (B.asarray(Y), B.asarray(SIGMA))
    mu, tau, tt = _points()[0]
    params = _params(B, mu, tau, tt)
    traces = []

    def f(beta):
        traces.append(1)
        return log_density(handlers.scale(eight_schools, scale=beta), args, {}, params)[0]
    jitted = B.jit(f)
    base = eight_schools_scipy(mu, tau, tt)
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    for beta in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(float(jitted(B.asarray(beta))), beta * base, rtol=rtol,
                                   atol=1e-12)
    if B.has_jit:
        assert len(traces) == 1


def test_constrain_unconstrain_and_potential_energy(B64):
    B = B64
    rtol = 1e-12 if B.precision == "float64" else 2e-5
    args = (B.asarray(Y), B.asarray(SIGMA))
    mu, tau, tt = _points()[1]
    u = {"mu": B.asarray(mu), "tau": B.asarray(np.log(tau)), "theta_tilde": B.asarray(tt)}
    c = constrain_fn(eight_schools, args, {}, u, return_deterministic=True)
    np.testing.assert_allclose(float(c["tau"]), tau, rtol=rtol)
    np.testing.assert_allclose(B.to_numpy(c["theta"]), mu + tau * tt, rtol=rtol)
    back = unconstrain_fn(eight_schools, args, {}, {k: c[k] for k in u})
    np.testing.assert_allclose(float(back["tau"]), np.log(tau), rtol=rtol)
    pe = potential_energy(eight_schools, args, {}, u)
    # log-Jacobian of tau = exp(u): u
    np.testing.assert_allclose(float(pe), -(eight_schools_scipy(mu, tau, tt) + np.log(tau)),
                               rtol=rtol)
    with pytest.raises(KeyError, match="not latent"):
        constrain_fn(eight_schools, args, {}, {**u, "y": B.asarray(Y)})
    out = transform_fn({"tau": ExpTransform()}, {"tau": B.asarray(0.0), "mu": 3.0})
    assert float(out["tau"]) == 1.0 and out["mu"] == 3.0
    inv = transform_fn({"tau": ExpTransform()}, {"tau": B.asarray(1.0)}, invert=True)
    assert float(inv["tau"]) == 0.0


def test_potential_energy_of_param_free_model_with_subsampling(np_B):
    def m():
        s = sample("s", dist.HalfCauchy(1.0))
        with plate("data", 8, subsample_size=4):
            sample("x", dist.Normal(0.0, s), obs=np.ones(4))
    pe = potential_energy(handlers.seed(m, rng_seed=0), (), {}, {"s": 0.5})
    s = np.exp(0.5)
    expect = stats.halfcauchy.logpdf(s) + 0.5 + 2.0 * stats.norm.logpdf(np.ones(4), 0, s).sum()
    np.testing.assert_allclose(pe, -expect, rtol=1e-12)


def test_log_density_of_a_model_without_sample_sites(B64):
    lp, tr = log_density(lambda: None)
    assert float(lp) == 0.0 and len(tr) == 0
    assert B64.shape(lp) == () and B64.is_floating(lp)


def test_seeded_model_vmapped_over_keys(B64):
    """One seeded run per key under ``B.vmap`` equals a loop over the keys."""
    B = B64
    args = (B.asarray(Y), B.asarray(SIGMA))

    def draw(key):
        tr = handlers.trace(handlers.seed(eight_schools, rng_seed=key)).get_trace(*args)
        return tr["theta_tilde"]["value"], tr.log_prob_sum()
    keys = B.split(B.key(2), 3)
    tt, lp = B.vmap(draw)(keys)
    assert B.shape(tt) == (3, 8) and B.shape(lp) == (3,)
    for i in range(3):
        tt_i, lp_i = draw(keys[i])
        np.testing.assert_allclose(B.to_numpy(tt)[i], B.to_numpy(tt_i), rtol=1e-12)
        np.testing.assert_allclose(B.to_numpy(lp)[i], float(lp_i), rtol=1e-12)
