"""TraceGraph_ELBO (Rao-Blackwellised score function with baselines) on discrete latents.

The oracle is exact enumeration in NumPy/SciPy: the gradient of the ELBO, and the mean and the
variance of each gradient *estimator* (over the 4**n outcomes of n particles). Many independent
draws of an estimator come from one call: the model is R independent replicas of a small model
in a plate, each with its own guide parameters, so (by the plate's Rao-Blackwellisation) the
gradient with respect to replica r's parameters is one draw of the single-model estimator.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm

import agvi
import agvi.distributions as dist
from agvi.infer.elbo import Trace_ELBO, TraceGraph_ELBO
from agvi.testing import assert_agree, run_on_all

P1, P2, YOBS = 0.05, 0.6, 0.8  # priors of z1, z2; y ~ Normal(z2, 1) observed at YOBS
T1, T2 = 0.0, 0.3  # guide logits
R = 4000  # replicas (independent draws per call)


def model():
    agvi.sample("z1", dist.Bernoulli(probs=P1))
    z2 = agvi.sample("z2", dist.Bernoulli(probs=P2))
    agvi.sample("y", dist.Normal(z2, 1.0), obs=YOBS)


def guide():
    t1 = agvi.param("t1", T1)
    t2 = agvi.param("t2", T2)
    agvi.sample("z1", dist.Bernoulli(logits=t1))
    agvi.sample("z2", dist.Bernoulli(logits=t2))


def rep_model(r=R):
    with agvi.plate("rep", r):
        model()


def rep_guide(r=R, baseline=None):
    t1 = agvi.param("t1", np.full(r, T1))
    t2 = agvi.param("t2", np.full(r, T2))
    with agvi.plate("rep", r):
        agvi.sample("z1", dist.Bernoulli(logits=t1))
        infer = {} if baseline is None else {"baseline": baseline()}
        agvi.sample("z2", dist.Bernoulli(logits=t2), infer=infer)


# -- the oracle ---------------------------------------------------------------------------------
def outcomes(t1=T1, t2=T2):
    """Rows (q(z), c1, c2, s1, s2) over the four outcomes z = (z1, z2) of one replica: c1 is
    the whole log p(z, y) - log q(z) (z1 is first, so every term is downstream of it), c2 its
    part downstream of z2, s_k = d log q(z_k) / d t_k = z_k - sigmoid(t_k)."""
    rows = []
    for a, b in itertools.product((0, 1), repeat=2):
        q1 = expit(t1) if a else 1 - expit(t1)
        q2 = expit(t2) if b else 1 - expit(t2)
        c2 = np.log(P2 if b else 1 - P2) + norm.logpdf(YOBS, b, 1.0) - np.log(q2)
        c1 = np.log(P1 if a else 1 - P1) - np.log(q1) + c2
        rows.append((q1 * q2, c1, c2, a - expit(t1), b - expit(t2)))
    return np.array(rows)


def estimator_moments(k, n, rb=True, loo=False, baseline=0.0):
    """Exact mean and variance of the n-particle estimator of d(-ELBO)/dt_k (k = 1, 2):
    ``-1/n sum_i (c_i - b_i) s_i`` with c the Rao-Blackwellised (rb) or the whole cost, b the
    leave-one-out mean (loo) or the constant ``baseline``."""
    rows = outcomes()
    p, s = rows[:, 0], rows[:, 2 + k]
    c = rows[:, 2 if (rb and k == 2) else 1]
    idx = np.array(list(itertools.product(range(4), repeat=n)))
    prob = np.prod(p[idx], axis=1)
    cost, score = c[idx], s[idx]
    b = (cost.sum(1, keepdims=True) - cost) / (n - 1) if loo else baseline
    g = -np.mean((cost - b) * score, axis=1)
    mean = np.sum(prob * g)
    return mean, np.sum(prob * g**2) - mean**2


def exact_gradient():
    rows = outcomes()
    return np.array([-np.sum(rows[:, 0] * rows[:, 1] * rows[:, 2 + k]) for k in (1, 2)])


@pytest.fixture
def np_B():
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b


def rep_params(B, r=R, **extra):
    return {"t1": B.full((r,), T1), "t2": B.full((r,), T2),
            **{k: B.asarray(v) for k, v in extra.items()}}


def draws(B, elbo, seed, guide_fn=rep_guide, params=None):
    """R independent draws of the estimator of d(-ELBO)/d(t1, t2), each shape (R,)."""
    params = rep_params(B) if params is None else params
    g = B.grad(lambda p: elbo(B.key(seed), p, rep_model, guide_fn))(params)
    return {k: B.to_numpy(v) for k, v in g.items()}


def check_mean(gs, exact, nsd=4.0):
    se = gs.std() / np.sqrt(gs.size)
    assert abs(gs.mean() - exact) < nsd * se, (gs.mean(), exact, se)


# -- tests --------------------------------------------------------------------------------------
def test_oracle_matches_autodiff_of_the_enumerated_elbo(np_B):
    # the oracle's gradient, and every estimator's exact mean, equal the autodiff gradient
    B = np_B

    def neg_elbo(p):
        q1, q2 = dist.Bernoulli(logits=p["t1"]), dist.Bernoulli(logits=p["t2"])
        total = 0.0
        for a, b in itertools.product((0.0, 1.0), repeat=2):
            za, zb = B.asarray(a), B.asarray(b)
            lq = q1.log_prob(za) + q2.log_prob(zb)
            lp = (dist.Bernoulli(probs=P1).log_prob(za) + dist.Bernoulli(probs=P2).log_prob(zb)
                  + dist.Normal(zb, 1.0).log_prob(YOBS))
            total = total + B.exp(lq) * (lq - lp)
        return total

    g = B.grad(neg_elbo)({"t1": B.asarray(T1), "t2": B.asarray(T2)})
    exact = exact_gradient()
    np.testing.assert_allclose([float(g["t1"]), float(g["t2"])], exact, rtol=1e-12)
    for k in (1, 2):
        for kw in ({"n": 1, "rb": False}, {"n": 1}, {"n": 4, "loo": True},
                   {"n": 1, "baseline": 0.7}):
            np.testing.assert_allclose(estimator_moments(k, **kw)[0], exact[k - 1], rtol=1e-12)


def test_rao_blackwellisation_and_leave_one_out_are_unbiased_with_the_exact_variance(np_B):
    # R = 4000 draws per estimator, 4 particles. Exact variances of one draw (t1, t2):
    #   plain score function (whole cost, no baseline)  0.228   0.367
    #   Trace_ELBO (the same, plus -grad log q)         0.528   0.667
    #   Rao-Blackwellised, no baseline                  0.228   0.078
    #   Rao-Blackwellised + leave-one-out baseline      0.094   0.0019
    # so RB + leave-one-out cuts the plain variance by 2.4x (t1: z1 comes first, every term is
    # downstream of it, only the baseline helps) and 197x (t2).
    B = np_B
    exact = exact_gradient()
    plain = [estimator_moments(k, 4, rb=False)[1] for k in (1, 2)]
    for loo, seed in ((False, 1), (True, 2)):
        elbo = TraceGraph_ELBO(num_particles=4, leave_one_out_baseline=loo)
        g = draws(B, elbo, seed)
        for k in (1, 2):
            gs = g[f"t{k}"]
            check_mean(gs, exact[k - 1])
            var = estimator_moments(k, 4, loo=loo)[1]
            np.testing.assert_allclose(gs.var(), var, rtol=0.15)  # ~4 sd of a variance at R
        if loo:
            ratios = np.array([estimator_moments(k, 4, loo=True)[1] for k in (1, 2)]) / plain
            assert ratios[0] < 0.45 and ratios[1] < 0.006, ratios
            assert g["t1"].var() < 0.55 * plain[0] and g["t2"].var() < 0.01 * plain[1]


def test_tracegraph_against_trace_elbo(np_B):
    # Trace_ELBO on the single model is the plain score function plus a zero-mean
    # -grad log q term (a constant baseline of 1 in the oracle). 120 draws with 2 particles:
    # unbiased, variance as the oracle says (exact (1.055, 1.335); measured over six seeds
    # within 0.91-1.14 of it). TraceGraph_ELBO(2) (Rao-Blackwellised, leave-one-out): exact
    # (0.552, 0.0103), measured ratios to Trace_ELBO's sample variance 0.48-0.57 (t1) and
    # 0.0068-0.0084 (t2).
    B = np_B
    params = {"t1": B.asarray(T1), "t2": B.asarray(T2)}
    exact = exact_gradient()
    n = 120
    keys = B.split(B.key(0), n)
    grad = B.grad(lambda p, k: Trace_ELBO(num_particles=2)(k, p, model, guide))
    gs = np.array([[float(v) for v in grad(params, keys[i]).values()] for i in range(n)])
    for k in (0, 1):
        check_mean(gs[:, k], exact[k])
        np.testing.assert_allclose(gs[:, k].var(),
                                   estimator_moments(k + 1, 2, rb=False, baseline=1.0)[1],
                                   rtol=0.35)
    g = draws(B, TraceGraph_ELBO(num_particles=2), 10)
    assert g["t1"].var() < 0.7 * gs[:, 0].var() and g["t2"].var() < 0.02 * gs[:, 1].var()


def test_decaying_average_baseline_is_unbiased_and_its_state_updates(np_B):
    # z2 with use_decaying_avg_baseline (beta 0.8), one particle, 20 steps at fixed params with
    # the state threaded through loss_with_state. The baseline of the last step is the state
    # before it, independent of its draws. Variance of one draw of t2's estimator: measured
    # 0.00252 (exact given the measured baselines 0.00253), against 0.311 exact without a
    # baseline (124x lower) and 1.468 for the plain score function (580x lower).
    B = np_B
    beta = 0.8
    elbo = TraceGraph_ELBO(baselines={"z2": {"use_decaying_avg_baseline": True,
                                             "baseline_beta": beta}})
    params = rep_params(B)
    state = elbo.init_state(B.key(0), params, rep_model, rep_guide)
    assert set(state) == {"z2"} and B.to_numpy(state["z2"]).shape == (R,)
    assert not np.any(B.to_numpy(state["z2"]))
    step = B.value_and_grad(lambda p, s, k: elbo.loss_with_state(k, p, s, rep_model, rep_guide),
                            has_aux=True)
    keys = B.split(B.key(4), 20)
    for i in range(20):
        old = B.to_numpy(state["z2"])
        (_, state), g = step(params, state, keys[i])
    g2, new = B.to_numpy(g["t2"]), B.to_numpy(state["z2"])
    rows = outcomes()
    c2 = {0: rows[0, 2], 1: rows[1, 2]}  # z1 = 0 rows, z2 = 0 / 1
    s2 = {0: -expit(T2), 1: 1 - expit(T2)}
    # each draw is exactly -(c2(z2) - b) s2(z2) for its z2, and the state moved towards c2(z2)
    cand = np.stack([-(c2[z] - old) * s2[z] for z in (0, 1)])
    z2 = np.argmin(np.abs(cand - g2), axis=0)
    np.testing.assert_allclose(g2, cand[z2, np.arange(R)], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new, beta * old + (1 - beta) * np.where(z2, c2[1], c2[0]),
                               rtol=1e-12)
    exact = exact_gradient()[1]
    check_mean(g2, exact)
    m2 = np.mean([np.sum(rows[:, 0] * (rows[:, 2] - b) ** 2 * rows[:, 4] ** 2) for b in old])
    np.testing.assert_allclose(g2.var(), m2 - exact**2, rtol=0.15)
    assert g2.var() < 0.02 * estimator_moments(2, 1)[1]


def test_learned_baseline_value_and_nn_baseline(np_B):
    # baseline_value from a guide param: the estimator stays unbiased with the exact variance
    # for a fixed (non-optimal) baseline, and the param's gradient is that of
    # sum((c2 - b)**2): 2 (b - c2) per draw, mean 2 (b - E[c2]).
    B = np_B
    b0 = 0.5

    def with_value():
        return {"baseline_value": agvi.param("b", np.full(R, b0))}

    g = draws(B, TraceGraph_ELBO(), 5, guide_fn=functools.partial(rep_guide, baseline=with_value),
              params=rep_params(B, b=np.full(R, b0)))
    check_mean(g["t2"], exact_gradient()[1])
    np.testing.assert_allclose(g["t2"].var(), estimator_moments(2, 1, baseline=b0)[1], rtol=0.15)
    rows = outcomes()
    check_mean(g["b"], 2 * (b0 - np.sum(rows[:, 0] * rows[:, 2])))

    # nn_baseline: a callable over an input, closed over guide params (Pyro's signature)
    x = np.linspace(-1.0, 1.0, R)

    def with_nn():
        w = agvi.param("w", np.array([b0, 0.0]))
        return {"nn_baseline": functools.partial(lambda w, x: w[0] + w[1] * x, w),
                "nn_baseline_input": x}

    elbo = TraceGraph_ELBO(num_particles=2, leave_one_out_baseline=False)
    guide_nn = functools.partial(rep_guide, baseline=with_nn)
    params = rep_params(B, w=np.array([b0, 0.0]))
    val, g2 = B.value_and_grad(lambda p: elbo(B.key(6), p, rep_model, guide_nn))(params)
    # same key: the value is the plain ELBO estimate, and the t2 gradient equals the one with
    # the equivalent baseline_value (the learned baseline acts through the score term only)
    plain = elbo(B.key(6), params, rep_model, rep_guide)
    np.testing.assert_allclose(float(val), float(plain), rtol=1e-13)
    g_same = B.grad(lambda p: elbo(B.key(6), p, rep_model, functools.partial(
        rep_guide, baseline=with_value)))(rep_params(B, b=np.full(R, b0)))
    np.testing.assert_allclose(B.to_numpy(g2["t2"]), B.to_numpy(g_same["t2"]), rtol=1e-12)
    gb = B.to_numpy(g_same["b"])  # per-replica 2 (b - c2), summed over particles / n
    np.testing.assert_allclose(B.to_numpy(g2["w"]), [gb.sum(), (gb * x).sum()], rtol=1e-10)


def test_scale_enters_once(np_B):
    # handlers.scale(2) around model and guide doubles the ELBO and its gradient exactly (same
    # key), for TraceGraph_ELBO and Trace_ELBO: the score function is that of the unscaled
    # log q, the cost carries the scale.
    B = np_B

    def scaled(fn):
        def f():
            with agvi.handlers.scale(scale=2.0):
                fn()
        return f

    params = rep_params(B, r=6)
    m6, g6 = functools.partial(rep_model, 6), functools.partial(rep_guide, 6)
    for elbo in (TraceGraph_ELBO(num_particles=3), TraceGraph_ELBO(),
                 Trace_ELBO(num_particles=3)):
        one = B.value_and_grad(functools.partial(elbo, B.key(7), model=m6, guide=g6))(params)
        two = B.value_and_grad(functools.partial(elbo, B.key(7), model=scaled(m6),
                                                 guide=scaled(g6)))(params)
        np.testing.assert_allclose(float(two[0]), 2 * float(one[0]), rtol=1e-13)
        for k in ("t1", "t2"):
            np.testing.assert_allclose(B.to_numpy(two[1][k]), 2 * B.to_numpy(one[1][k]),
                                       rtol=1e-12)


def test_baselines_agree_across_backends():
    # every baseline at once, 3 particles, 3 steps of a B.scan threading the decaying-average
    # state, compiled with B.jit (JAX), identical noise: equal to the NumPy oracle at 1e-10
    r = 3
    x = np.array([0.5, -1.0, 2.0])

    def guide_fn():
        t1 = agvi.param("t1", np.full(r, T1))
        t2 = agvi.param("t2", np.full(r, T2))
        w = agvi.param("w", np.array([0.2, -0.1]))
        with agvi.plate("rep", r):
            agvi.sample("z1", dist.Bernoulli(logits=t1),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})
            agvi.sample("z2", dist.Bernoulli(logits=t2), infer={"baseline": {
                "nn_baseline": lambda v: w[0] + w[1] * v, "nn_baseline_input": x}})

    def model_fn():
        rep_model(r)

    def run(B):
        elbo = TraceGraph_ELBO(num_particles=3)
        step = B.value_and_grad(
            lambda p, s, k: elbo.loss_with_state(k, p, s, model_fn, guide_fn), has_aux=True)

        def body(carry, k):
            params, s = carry
            (val, s), g = step(params, s, k)
            return (params, s), (val, g)

        def all_of_it(params, keys):
            state0 = elbo.init_state(keys[0], params, model_fn, guide_fn)
            (_, state), steps = B.scan(body, (params, state0), keys[1:])
            loo = B.value_and_grad(lambda p: elbo(keys[0], p, model_fn, rep_guide_r))(params)
            return {"state": state, "steps": steps, "loo": loo}

        params = {"t1": B.asarray(np.linspace(-1.0, 1.0, r)), "t2": B.full((r,), T2),
                  "w": B.asarray(np.array([0.2, -0.1]))}
        return B.jit(all_of_it)(params, B.split(B.key(8), 4))

    def rep_guide_r():
        rep_guide(r)

    res = run_on_all(run)
    assert_agree(res, what="TraceGraph_ELBO baselines")
    ref = res["numpy"]
    assert np.any(ref["state"]["z1"] != 0) and np.all(np.isfinite(ref["steps"][1]["w"]))


def test_baseline_option_errors(np_B):
    B = np_B
    params = rep_params(B, r=2)

    def call(baselines=None, loo=True, **kw):
        elbo = TraceGraph_ELBO(num_particles=2, baselines=baselines,
                               leave_one_out_baseline=loo)
        return elbo(B.key(0), params, functools.partial(rep_model, 2),
                    functools.partial(rep_guide, 2), **kw)

    with pytest.raises(ValueError, match="unknown baseline option"):
        call({"z2": {"use_decaying_avg": True}})
    with pytest.raises(ValueError, match="baseline_beta"):
        call({"z2": {"use_decaying_avg_baseline": True, "baseline_beta": 1.0}})
    with pytest.raises(ValueError, match="both nn_baseline and baseline_value"):
        call({"z2": {"nn_baseline": lambda v: v, "baseline_value": 0.0}})
    with pytest.raises(ValueError, match="choose one"):
        call({"z2": {"use_leave_one_out_baseline": True, "baseline_value": 0.0}})
    with pytest.raises(ValueError, match="does not broadcast"):
        call({"z2": {"baseline_value": np.zeros(3)}})
    with pytest.raises(TypeError, match="must be callable"):
        call({"z2": {"nn_baseline": 1.0}})
    with pytest.raises(TypeError, match="baselines must be a dict"):
        TraceGraph_ELBO(baselines={"z2": True})
    with pytest.warns(UserWarning, match="loss_with_state"):
        call({"z2": {"use_decaying_avg_baseline": True}})
