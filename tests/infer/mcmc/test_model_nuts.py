"""NUTS and HMC on models (``NUTS(model=...)``): agvi's effect handlers in unconstrained space.

Oracles: the same posterior written by hand as a ``logdensity_fn`` (draw-for-draw agreement from
the same key and initial point); closed-form moments of constrained distributions and of a
conjugate Normal-Normal posterior (within 4 Monte Carlo standard errors); the driver's exact
identities (chain 0 of a 3-chain run is a 1-chain run with the same key); on JAX a count of
traces (a second run with new data of the same shape compiles nothing).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.infer import init_to_median, init_to_value
from agvi.infer.mcmc import HMC, MCMC, NUTS
from agvi.infer.mcmc.diagnostics import effective_sample_size, mcse

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = agvi.sample("mu", dist.Normal(0.0, 5.0))
    tau = agvi.sample("tau", dist.HalfCauchy(5.0))
    with agvi.plate("schools", len(sigma)):
        theta_tilde = agvi.sample("theta_tilde", dist.Normal(0.0, 1.0))
        agvi.deterministic("theta", mu + tau * theta_tilde)
        agvi.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def eight_schools_logdensity(B):
    """The same posterior by hand, unconstrained, coordinates in the driver's order (site names
    sorted: mu, tau, theta_tilde)."""
    sigma, y = B.asarray(SIGMA), B.asarray(Y)

    def logdensity(z):
        mu, log_tau, tt = z[0], z[1], z[2:]
        tau = B.exp(log_tau)
        lp = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfCauchy(5.0).log_prob(tau) + log_tau
        lp = lp + B.sum(dist.Normal(0.0, 1.0).log_prob(tt))
        return lp + B.sum(dist.Normal(mu + tau * tt, sigma).log_prob(y))

    return logdensity


def within(x, mean, var, k=4.0):
    """Means and variances of (C, N) draws against the truth, within k MCSE."""
    x = np.asarray(x)
    assert abs(x.mean() - mean) < k * mcse(x), (x.mean(), mean, mcse(x))
    sq = (x - mean) ** 2
    assert abs(sq.mean() - var) < k * mcse(sq), (sq.mean(), var, mcse(sq))
    assert effective_sample_size(x) > 100


# ------------------------------------------------------------------------------ exactness
def test_eight_schools_model_matches_the_logdensity_draw_for_draw(B64):
    B = B64
    # a fixed step size and mass matrix: with adaptation, rounding differences of the two
    # (equal) log densities grow chaotically over the warmup
    settings = {"step_size": 0.3, "adapt_step_size": False, "adapt_mass_matrix": False}
    init = {"mu": B.zeros(()), "tau": B.zeros(()), "theta_tilde": B.zeros(8)}
    model = MCMC(NUTS(eight_schools, **settings), num_warmup=0, num_samples=50,
                 progress_bar=False)
    model.run(B.key(3), SIGMA, y=Y, init_params=init)
    hand = MCMC(NUTS(logdensity_fn=eight_schools_logdensity(B), **settings), num_warmup=0,
                num_samples=50, progress_bar=False)
    hand.run(B.key(3), init_params=B.zeros(10))
    z = B.to_numpy(hand.get_samples())
    draws = {k: B.to_numpy(v) for k, v in model.get_samples().items()}
    assert list(draws) == ["mu", "tau", "theta_tilde", "theta"]
    assert len(np.unique(z[:, 0])) > 40          # the chain moves
    np.testing.assert_allclose(draws["mu"], z[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(draws["tau"], np.exp(z[:, 1]), rtol=1e-8)
    np.testing.assert_allclose(draws["theta_tilde"], z[:, 2:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(draws["theta"], z[:, :1] + np.exp(z[:, 1:2]) * z[:, 2:],
                               rtol=1e-8, atol=1e-10)
    for field in ("num_steps", "tree_depth", "diverging"):
        np.testing.assert_array_equal(B.to_numpy(model.get_extra_fields()[field]),
                                      B.to_numpy(hand.get_extra_fields()[field]))
    np.testing.assert_allclose(B.to_numpy(model.get_extra_fields()["logdensity"]),
                               B.to_numpy(hand.get_extra_fields()["logdensity"]), rtol=1e-10)


def test_chain_zero_of_three_is_a_one_chain_run(B64):
    B = B64
    def model(y):
        loc = agvi.sample("loc", dist.Normal(0.0, 3.0))
        scale = agvi.sample("scale", dist.LogNormal(0.0, 1.0))
        with agvi.plate("data", y.shape[0]):
            agvi.sample("y", dist.Normal(loc, scale), obs=y)

    y = np.array([0.5, -1.0, 2.0, 1.5])
    kernel = NUTS(model)          # init_to_uniform: a random start from each chain's key
    one = MCMC(kernel, num_warmup=15, num_samples=10, progress_bar=False)
    one.run(B.key(11), y)
    three = MCMC(kernel, num_warmup=15, num_samples=10, num_chains=3, progress_bar=False)
    three.run(B.key(11), y)
    a = one.get_samples(group_by_chain=True)
    b = three.get_samples(group_by_chain=True)
    for name in ("loc", "scale"):
        assert B.shape(b[name]) == (3, 10)
        np.testing.assert_allclose(B.to_numpy(b[name])[0], B.to_numpy(a[name])[0], rtol=1e-8)
    start = B.to_numpy(three.get_samples(group_by_chain=True)["loc"])[:, 0]
    assert len(set(np.round(start, 6))) == 3          # the chains started apart


# ------------------------------------------------------------------------------ statistics
def test_constrained_latent_sites_have_their_closed_form_moments(B64):
    B = B64
    def model():
        agvi.sample("g", dist.Gamma(3.0, 2.0))
        agvi.sample("r", dist.LogNormal(0.5, 0.6))
        agvi.sample("h", dist.HalfNormal(1.5))
        agvi.sample("b", dist.Beta(2.0, 5.0))

    mcmc = MCMC(NUTS(model), num_warmup=150, num_samples=250, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(B.key(7))
    draws = {k: B.to_numpy(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    assert draws["g"].shape == (2, 250)
    assert np.all(draws["g"] > 0) and np.all((draws["b"] > 0) & (draws["b"] < 1))
    within(draws["g"], 1.5, 0.75)
    m, s2 = 0.5, 0.36
    within(draws["r"], math.exp(m + s2 / 2), (math.exp(s2) - 1) * math.exp(2 * m + s2))
    within(draws["h"], 1.5 * math.sqrt(2 / math.pi), 1.5 ** 2 * (1 - 2 / math.pi))
    within(draws["b"], 2 / 7, 10 / (49 * 8))


def test_conjugate_normal_posterior_with_a_subsampled_plate(B64):
    B = B64
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 2.0, size=20)
    z = rng.normal(-1.0, 2.0, size=50)

    def model(y, z, prior_sd=3.0):
        mu = agvi.sample("mu", dist.Normal(0.5, prior_sd))
        with agvi.plate("y", y.shape[0]):
            agvi.sample("obs_y", dist.Normal(mu, 2.0), obs=y)
        nu = agvi.sample("nu", dist.Normal(0.0, prior_sd))
        with agvi.plate("z", z.shape[0], subsample_size=10) as idx:
            agvi.deterministic("idx", idx)
            agvi.sample("obs_z", dist.Normal(nu, 2.0), obs=z[idx])

    mcmc = MCMC(NUTS(model), num_warmup=150, num_samples=250, num_chains=2,
                chain_method="sequential", progress_bar=False)
    mcmc.run(B.key(5), y, z=z)
    draws = {k: B.to_numpy(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    # Normal-Normal: precision 1/3^2 + n/2^2, mean (0.5/3^2 + sum(y)/2^2) / precision
    prec = 1 / 9 + len(y) / 4
    within(draws["mu"], (0.5 / 9 + y.sum() / 4) / prec, 1 / prec)
    # one subsample for the whole run, its likelihood scaled by 50/10
    idx = draws["idx"].reshape(-1, 10)
    assert np.all(idx == idx[0]) and len(set(idx[0].tolist())) == 10
    prec = 1 / 9 + 5 * 10 / 4
    within(draws["nu"], (5 * z[idx[0]].sum() / 4) / prec, 1 / prec)


# ------------------------------------------------------------------------------ compilation
def test_second_model_run_with_new_data_does_not_recompile(B64):
    B = B64
    if not B.has_jit:
        pytest.skip("only a compiling backend can recompile")
    import jax

    traces = {"n": 0}

    def model(sigma, y=None):
        if isinstance(sigma, jax.core.Tracer):   # only inside a compiled program
            traces["n"] += 1
        eight_schools(sigma, y)

    kernel = NUTS(model)
    mcmc = MCMC(kernel, num_warmup=20, num_samples=20, num_chains=2, progress_bar=False)
    mcmc.run(B.key(0), SIGMA, y=Y)
    mcmc.get_samples()
    first = traces["n"]
    assert first > 0
    mcmc.run(B.key(1), SIGMA * 2, y=Y + 1)
    other = MCMC(kernel, num_warmup=30, num_samples=10, num_chains=2, progress_bar=False)
    other.run(B.key(2), SIGMA, y=-Y)
    draws = other.get_samples()
    assert traces["n"] == first, "a second run with data of the same shape recompiled"
    assert B.shape(draws["theta"]) == (20, 8)
    assert np.all(np.isfinite(B.to_numpy(draws["tau"])))


# ------------------------------------------------------------------------------ interface
def test_summary_arviz_hmc_and_continuation_use_site_names(np_B, capsys, monkeypatch):
    B = np_B

    def model(y):
        scale = agvi.sample("scale", dist.HalfNormal(2.0))
        with agvi.plate("data", y.shape[0]):
            loc = agvi.sample("loc", dist.Normal(0.0, 1.0))
            agvi.sample("y", dist.Normal(loc, scale), obs=y)

    y = np.array([0.3, -0.2, 1.1])
    mcmc = MCMC(HMC(model, num_steps=5, init_strategy=init_to_median()), num_warmup=30,
                num_samples=20, num_chains=2, progress_bar=False)
    mcmc.warmup(B.key(1), y)
    mcmc.run(B.key(2), y)
    samples = mcmc.get_samples(group_by_chain=True)
    assert list(samples) == ["scale", "loc"]
    assert B.shape(samples["loc"]) == (2, 20, 3) and np.all(B.to_numpy(samples["scale"]) > 0)
    assert B.shape(mcmc.get_samples()["loc"]) == (40, 3)
    mcmc.print_summary()
    out = capsys.readouterr().out
    assert "scale" in out and "loc[2]" in out and "in warmup" in out
    assert set(mcmc.summary()) == {"scale", "loc[0]", "loc[1]", "loc[2]"}
    try:
        import arviz  # noqa: F401
    except ImportError:
        pass
    else:
        idata = mcmc.to_arviz()
        assert idata.posterior["loc"].shape == (2, 20, 3)
        np.testing.assert_allclose(idata.posterior["scale"].values,
                                   B.to_numpy(samples["scale"]))
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        mcmc.to_arviz()
    # init_params (unconstrained, here one per chain: scale = exp(u)) and init_to_value
    # (constrained) give the same start, hence the same draws
    starts = {"scale": np.log([0.5, 4.0]), "loc": np.zeros((2, 3))}
    by_params = MCMC(NUTS(model), num_warmup=0, num_samples=3, num_chains=2,
                     progress_bar=False)
    by_params.run(B.key(0), y, init_params=starts)
    first = B.to_numpy(by_params.get_samples(group_by_chain=True)["scale"])
    assert not np.allclose(first[0], first[1])
    by_value = MCMC(NUTS(model, init_strategy=init_to_value({"scale": 0.5})), num_warmup=0,
                    num_samples=3, progress_bar=False)
    by_value.run(B.key(0), y, init_params={"loc": np.zeros(3)})     # chain 0's start
    np.testing.assert_allclose(B.to_numpy(by_value.get_samples()["scale"]), first[0],
                               rtol=1e-12)


def test_initialisation_errors_name_the_site(np_B):
    B = np_B

    def model(y):
        v = agvi.sample("v", dist.HalfNormal(1.0).expand([3]).to_event(1))
        agvi.sample("y", dist.Uniform(0.0, v).to_event(1), obs=y)

    y = np.array([0.5, 3.0, 0.5])             # needs v[1] > 3
    start = init_to_value({"v": np.ones(3)})
    with pytest.raises(ValueError, match=r"no finite initial point for chain 0: the log "
                       r"density is non-finite .* site 'v' coordinate \[1\] \(flat index 1, "
                       r"unconstrained value\) = 0\.0"):
        MCMC(NUTS(model, init_strategy=start), num_warmup=5, num_samples=5,
             progress_bar=False).run(B.key(0), y)
    # the default init_to_uniform redraws until the log density is finite
    mcmc = MCMC(NUTS(model), num_warmup=10, num_samples=5, num_chains=2, progress_bar=False)
    mcmc.run(B.key(0), y)
    assert np.all(B.to_numpy(mcmc.get_samples()["v"])[:, 1] > 3.0)
    with pytest.raises(ValueError, match=r"init_params names \['w'\]"):
        mcmc.run(B.key(0), y, init_params={"w": 0.0})
    with pytest.raises(ValueError, match=r"init_params\['v'\] must have .* \(3,\)"):
        mcmc.run(B.key(0), y, init_params={"v": np.zeros(2)})

    def discrete():
        agvi.sample("k", dist.Poisson(3.0))

    with pytest.raises(NotImplementedError, match="site 'k' is discrete"):
        MCMC(NUTS(discrete), num_warmup=1, num_samples=1).run(B.key(0))
    with pytest.raises(TypeError, match=r"keyword arguments \['y'\]"):
        MCMC(NUTS(logdensity_fn=lambda x: -B.sum(x ** 2)), num_warmup=1,
             num_samples=1).run(B.key(0), init_params=B.zeros(1), y=y)
