"""SVI with autoguides: posterior recovery on a conjugate model, stable updates, resumable
state, compiled runs, Predictive, and agreement across backends with shared noise."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.backends import available_backends, make_backend
from agvi.infer import autoguide as ag
from agvi.infer.elbo import Trace_ELBO
from agvi.infer.predictive import Predictive
from agvi.infer.svi import SVI, SVIRunResult, SVIState
from agvi.optim import SGD, Adam

Y = np.array([0.5, 1.2, -0.3, 0.9])
M0, S0, SIGMA = 0.3, 1.5, 0.8


def exact_posterior():
    prec = 1 / S0**2 + len(Y) / SIGMA**2
    return (M0 / S0**2 + Y.sum() / SIGMA**2) / prec, 1 / math.sqrt(prec)


def model(y):
    mu = agvi.sample("mu", dist.Normal(M0, S0))
    with agvi.plate("data", len(Y)):
        agvi.sample("y", dist.Normal(mu, SIGMA), obs=y)


def model2(y):
    """Two latents (a positive one): for shapes, transforms and agreement."""
    mu = agvi.sample("mu", dist.Normal(M0, S0))
    s = agvi.sample("s", dist.HalfNormal(1.0))
    with agvi.plate("data", len(Y)):
        agvi.sample("y", dist.Normal(mu, s), obs=y)


@pytest.mark.parametrize("guide_cls", [ag.AutoNormal, ag.AutoDiagonalNormal])
def test_svi_recovers_exact_posterior(B64, guide_cls):
    B = B64
    m, s = exact_posterior()
    guide = guide_cls(model)
    svi = SVI(model, guide, Adam(0.05), Trace_ELBO(stl=True))
    res = svi.run(B.key(0), 400, B.asarray(Y), progress_bar=False)
    assert isinstance(res, SVIRunResult) and B.shape(res.losses) == (400,)
    med = guide.median(res.params)["mu"]
    q = guide.quantiles(res.params, [0.158655253931457])["mu"]
    # STL has zero gradient variance at the exact posterior: the optimum is hit closely
    np.testing.assert_allclose(float(med), m, atol=2e-3)
    np.testing.assert_allclose(float(med - q[0]), s, rtol=1e-2)
    # and the final loss is minus the log evidence
    assert float(res.losses[-1]) < float(res.losses[0])


def test_autodelta_finds_the_mode(B64):
    B = B64
    m, _ = exact_posterior()  # Gaussian posterior: mode = mean
    guide = ag.AutoDelta(model)
    svi = SVI(model, guide, Adam(0.05), Trace_ELBO())
    res = svi.run(B.key(0), 300, B.asarray(Y), progress_bar=False)
    np.testing.assert_allclose(float(guide.median(res.params)["mu"]), m, atol=2e-3)
    draws = guide.sample_posterior(B.key(1), res.params, (2,))
    assert B.shape(draws["mu"]) == (2,)


@pytest.mark.parametrize("guide_cls", [ag.AutoMultivariateNormal,
                                       ag.AutoLowRankMultivariateNormal])
def test_full_rank_guides_recover_posterior(np_B, guide_cls):
    B = np_B
    m, s = exact_posterior()
    guide = guide_cls(model)
    svi = SVI(model, guide, Adam(0.05), Trace_ELBO(stl=True))
    res = svi.run(B.key(0), 400, B.asarray(Y), progress_bar=False)
    med = guide.median(res.params)["mu"]
    q = guide.quantiles(res.params, [0.158655253931457, 0.5])["mu"]
    np.testing.assert_allclose(float(med), m, atol=3e-3)
    np.testing.assert_allclose(float(q[1]), m, atol=3e-3)
    np.testing.assert_allclose(float(med - q[0]), s, rtol=2e-2)


def test_laplace_is_exact_for_a_gaussian_posterior(np_B):
    B = np_B
    m, s = exact_posterior()
    guide = ag.AutoLaplaceApproximation(model)
    svi = SVI(model, guide, Adam(0.05), Trace_ELBO())
    state = svi.init(B.key(0), B.asarray(Y))
    params = svi.get_params(state)
    params["auto_loc"] = B.asarray([m])
    post = guide.get_posterior(params)
    np.testing.assert_allclose(B.to_numpy(post.covariance_matrix), [[s**2]], rtol=1e-10)
    q = guide.quantiles(params, [0.158655253931457])["mu"]
    np.testing.assert_allclose(m - float(q[0]), s, rtol=1e-10)
    draws = guide.sample_posterior(B.key(1), params, (3000,))["mu"]
    np.testing.assert_allclose(float(B.std(draws)), s, rtol=0.1)


def test_autoguide_shapes_and_supports(np_B):
    B = np_B
    for cls in [ag.AutoNormal, ag.AutoDiagonalNormal, ag.AutoMultivariateNormal,
                ag.AutoLowRankMultivariateNormal, ag.AutoDelta, ag.AutoLaplaceApproximation]:
        guide = cls(model2, init_loc_fn=ag._init.init_to_median)
        svi = SVI(model2, guide, Adam(0.01), Trace_ELBO())
        res = svi.run(B.key(0), 5, B.asarray(Y), progress_bar=False)
        draws = guide.sample_posterior(B.key(1), res.params, (4, 2))
        assert B.shape(draws["mu"]) == (4, 2) and B.shape(draws["s"]) == (4, 2), cls
        assert float(B.min(draws["s"])) > 0, cls
        med = guide.median(res.params)
        assert set(med) == {"mu", "s"} and float(med["s"]) > 0, cls
        q = guide.quantiles(res.params, [0.1, 0.5, 0.9])
        assert B.shape(q["s"]) == (3,) and float(B.min(q["s"])) > 0, cls


def test_init_strategies(np_B):
    from agvi.infer.initialization import (
        init_to_median,
        init_to_sample,
        init_to_uniform,
        init_to_value,
    )
    B = np_B
    site = {"name": "s", "fn": dist.HalfNormal(1.0), "value": None}
    for fn in [init_to_median(), init_to_sample(), init_to_uniform(0.5)]:
        v = fn(site, B.key(0))
        assert B.shape(v) == () and float(v) > 0
    assert float(init_to_value({"s": 2.0})(site, B.key(0))) == 2.0
    assert float(init_to_uniform(0.5)(site, B.key(0))) < math.exp(0.5)
    guide = ag.AutoNormal(model2, init_loc_fn=init_to_value({"mu": 0.25}))
    SVI(model2, guide, Adam(0.01), Trace_ELBO()).init(B.key(0), B.asarray(Y))
    np.testing.assert_allclose(float(guide._sites["mu"].init_u), 0.25)
    with pytest.raises(ValueError):
        init_to_uniform(-1.0)


def test_resume_reproduces_numbers(B64):
    B = B64
    guide = ag.AutoNormal(model2)
    svi = SVI(model2, guide, Adam(0.02), Trace_ELBO(num_particles=2))
    y = B.asarray(Y)
    # equal chunk lengths (10) so that JAX compiles the chunk once per SVI object
    full = svi.run(B.key(0), 20, y, num_chunks=2)
    half = svi.run(B.key(0), 10, y, num_chunks=1)
    blob = pickle.dumps(svi.state_to_host(half.state))
    # a fresh SVI object (as after a restart)
    svi2 = SVI(model2, ag.AutoNormal(model2), Adam(0.02), Trace_ELBO(num_particles=2))
    state = svi2.state_from_host(pickle.loads(blob))
    rest = svi2.run(None, 10, y, num_chunks=1, init_state=state)
    losses = np.concatenate([B.to_numpy(half.losses), B.to_numpy(rest.losses)])
    np.testing.assert_array_equal(losses, B.to_numpy(full.losses))
    for k in full.params:
        np.testing.assert_array_equal(B.to_numpy(rest.params[k]), B.to_numpy(full.params[k]))


def test_update_stable_update_evaluate(B64):
    B = B64

    def guide(flag):
        agvi.param("x", 0.0)

    def loss(key, params, model, guide, flag):
        x = params["x"]
        return B.where(flag > 0, B.log(x - 10.0), (x - 1.0) ** 2)

    svi = SVI(lambda flag: None, guide, SGD(0.25), loss)
    state = svi.init(B.key(0), B.asarray(0.0))
    assert isinstance(state, SVIState)
    state, l0 = svi.update(state, B.asarray(0.0))
    np.testing.assert_allclose(float(l0), 1.0)
    np.testing.assert_allclose(float(svi.get_params(state)["x"]), 0.5)
    bad, lbad = svi.stable_update(state, B.asarray(1.0))
    assert not np.isfinite(float(lbad))
    assert int(bad.num_skipped) == 1
    np.testing.assert_allclose(float(svi.get_params(bad)["x"]), 0.5)
    good, _ = svi.stable_update(bad, B.asarray(0.0))
    assert int(good.num_skipped) == 1
    np.testing.assert_allclose(float(svi.get_params(good)["x"]), 0.75)
    np.testing.assert_allclose(float(svi.evaluate(good, B.asarray(0.0))), 0.0625)
    # forward-mode gradients give the same step
    fwd, _ = svi.update(state, B.asarray(0.0), forward_mode_differentiation=True)
    np.testing.assert_allclose(float(svi.get_params(fwd)["x"]), 0.75)
    res = svi.run(None, 3, B.asarray(1.0), progress_bar=False, stable_update=True,
                  init_state=good)
    assert int(res.state.num_skipped) == 4


def test_second_run_does_not_retrace(B64):
    B = B64
    calls = []
    elbo = Trace_ELBO()

    def loss(*a, **k):
        calls.append(1)
        return elbo(*a, **k)

    svi = SVI(model, ag.AutoNormal(model), Adam(0.01), loss)
    svi.run(B.key(0), 6, B.asarray(Y), progress_bar=True, num_chunks=3)
    n1 = len(calls)
    svi.run(B.key(1), 6, B.asarray(Y + 1.0), progress_bar=True, num_chunks=3)
    if B.has_jit or B.compiles_pure:
        assert len(calls) == n1  # compiled chunk (JAX) or traced step (torch) reused
    else:
        assert len(calls) == 2 * n1


def test_predictive(np_B):
    B = np_B
    guide = ag.AutoNormal(model2)
    svi = SVI(model2, guide, Adam(0.01), Trace_ELBO())
    res = svi.run(B.key(0), 5, B.asarray(Y), progress_bar=False)
    pred = Predictive(model2, guide=guide, params=res.params, num_samples=7)(B.key(1), None)
    assert set(pred) == {"y"} and B.shape(pred["y"]) == (7, 4)
    post = guide.sample_posterior(B.key(2), res.params, (5,))
    pred2 = Predictive(model2, posterior_samples=post)(B.key(3), None)
    assert B.shape(pred2["y"]) == (5, 4)
    prior = Predictive(model2, num_samples=3, return_sites=["mu", "y"])(B.key(4), None)
    assert B.shape(prior["mu"]) == (3,) and B.shape(prior["y"]) == (3, 4)
    with pytest.raises(ValueError):
        Predictive(model2)


def test_predictive_every_backend(B64):
    B = B64
    post = {"mu": B.asarray(np.array([0.0, 1.0, 2.0])), "s": B.asarray(np.array([1.0, 1.0, 1.0]))}
    pred = Predictive(model2, posterior_samples=post)(B.key(0), None)
    assert B.shape(pred["y"]) == (3, 4)
    # each draw used its own posterior sample
    assert float(B.mean(pred["y"][2])) > float(B.mean(pred["y"][0]))


def test_agreement_across_backends_shared_noise():
    from agvi.testing.shared_noise import SharedNoise

    results = {}
    for name in available_backends():
        SB = SharedNoise(make_backend(name, precision="float64"))
        with agvi.use_backend(SB) as B:
            guide = ag.AutoNormal(model2)
            elbo = Trace_ELBO(num_particles=3, vectorize_particles=False)
            svi = SVI(model2, guide, SGD(0.01), elbo)
            state = svi.init(B.key(0), B.asarray(Y))
            params = svi.get_params(state)
            val, g = B.value_and_grad(
                lambda p, elbo=elbo, guide=guide, B=B: elbo(B.key(1), p, model2, guide,
                                                           B.asarray(Y)))(params)
            results[name] = (float(val), {k: B.to_numpy(v) for k, v in g.items()})
    ref_val, ref_g = results["numpy"]
    for name, (val, g) in results.items():
        np.testing.assert_allclose(val, ref_val, rtol=1e-10, err_msg=name)
        for k in ref_g:
            np.testing.assert_allclose(g[k], ref_g[k], rtol=1e-10, atol=1e-12, err_msg=name)


def test_svi_argument_errors(np_B):
    with pytest.raises(TypeError, match="loss"):
        SVI(model, ag.AutoNormal(model), Adam(0.1), loss=3)
    svi = SVI(model, ag.AutoNormal(model), Adam(0.1), Trace_ELBO())
    with pytest.raises(RuntimeError, match="init"):
        svi.update(None)
    with pytest.raises(ValueError, match="num_steps"):
        svi.run(np_B.key(0), 0, np_B.asarray(Y))


@pytest.fixture
def np_B():
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b


def test_static_kwargs_stay_static(B64):
    B = B64

    def sized_model(y, n):
        mu = agvi.sample("mu", dist.Normal(M0, S0))
        with agvi.plate("data", n):  # n sets a shape: it must not be traced
            agvi.sample("y", dist.Normal(mu, SIGMA), obs=y)

    guide = ag.AutoDelta(sized_model)
    svi = SVI(sized_model, guide, Adam(0.05), Trace_ELBO(), n=len(Y))
    res = svi.run(B.key(0), 3, B.asarray(Y), progress_bar=False)
    assert B.shape(res.losses) == (3,)
    state, loss = svi.update(res.state, B.asarray(Y))
    assert np.isfinite(float(loss))


def test_svi_threads_the_decaying_average_baseline(B64):
    # TraceGraph_ELBO's decaying-average baseline is state carried in SVIState.mutable_state:
    # SVI recovers the exact posterior of independent Bernoulli latents (enumerated), the
    # running average ends at the per-element log evidence (the cost at the optimum), and no
    # "stateless" warning is raised.
    import warnings

    from scipy.stats import norm

    from agvi.infer import TraceGraph_ELBO
    from agvi.optim import Adam

    B = B64
    ys = np.array([0.2, 1.5, 1.1, -0.3, 0.9, 1.7])

    def model():
        with agvi.plate("d", len(ys)):
            z = agvi.sample("z", dist.Bernoulli(probs=0.5))
            agvi.sample("y", dist.Normal(z, 0.7), obs=ys)

    def guide():
        t = agvi.param("t", np.zeros(len(ys)))
        with agvi.plate("d", len(ys)):
            agvi.sample("z", dist.Bernoulli(logits=t),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})

    l1, l0 = norm.logpdf(ys, 1, 0.7), norm.logpdf(ys, 0, 0.7)
    post = 1 / (1 + np.exp(l0 - l1))
    log_ev = np.log(0.5 * np.exp(l0) + 0.5 * np.exp(l1))
    svi = SVI(model, guide, Adam(0.1), TraceGraph_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = svi.run(0, 400, progress_bar=False)
        loss = svi.evaluate(res.state)
    probs = 1 / (1 + np.exp(-B.to_numpy(res.params["t"])))
    np.testing.assert_allclose(probs, post, atol=0.02)
    np.testing.assert_allclose(B.to_numpy(res.state.mutable_state["z"]), log_ev, atol=0.05)
    np.testing.assert_allclose(float(loss), -log_ev.sum(), atol=0.05)


@pytest.mark.parametrize("num_particles", [1, 4])
def test_run_equals_numpy_draw_for_draw(num_particles):
    """SVI.run on torch (whose steps after the first run as a traced graph, random draws
    included) gives the NumPy backend's losses and parameters: CPU draws are the same host
    numbers on both, so only rounding may differ."""
    calls, results = [], {}
    for label, name, options in (("numpy", "numpy", {}), ("torch", "torch", {}),
                                 ("torch-eager", "torch", {"trace": False})):
        if name not in available_backends():
            pytest.skip(f"{name} is not installed")
        with agvi.use_backend(name, precision="float64", **options) as B:
            elbo = Trace_ELBO(num_particles=num_particles)

            def loss(*a, elbo=elbo, label=label, **k):
                calls.append(label)
                return elbo(*a, **k)

            svi = SVI(model2, ag.AutoNormal(model2), Adam(0.05), loss)
            res = svi.run(B.key(3), 20, B.asarray(Y), progress_bar=False)
            results[label] = (B.to_numpy(res.losses),
                              {k: B.to_numpy(v) for k, v in res.params.items()})
    for label in ("torch", "torch-eager"):
        np.testing.assert_allclose(results[label][0], results["numpy"][0], rtol=1e-10)
        for k, v in results["numpy"][1].items():
            np.testing.assert_allclose(results[label][1][k], v, rtol=1e-10, atol=1e-12)
    # torch: one eager step, one trace (and its eager check), then the graph; trace=False and
    # NumPy run the loss at every step
    assert calls.count("torch") <= 3
    assert calls.count("torch-eager") == calls.count("numpy") == 20
