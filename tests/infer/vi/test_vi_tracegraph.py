"""TraceGraph_ELBO and the score-function path of Trace_ELBO on discrete latents."""

from __future__ import annotations

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.infer.elbo import Trace_ELBO, TraceGraph_ELBO


def model():
    agvi.sample("z1", dist.Bernoulli(probs=0.05))
    z2 = agvi.sample("z2", dist.Bernoulli(probs=0.6))
    agvi.sample("y", dist.Normal(z2, 1.0), obs=0.8)


def guide():
    t1 = agvi.param("t1", 0.0)
    t2 = agvi.param("t2", 0.3)
    agvi.sample("z1", dist.Bernoulli(logits=t1))
    agvi.sample("z2", dist.Bernoulli(logits=t2))


def exact_neg_elbo(B, params):
    """Sum over the four outcomes of q(z) (log q(z) - log p(z, y))."""
    q1 = dist.Bernoulli(logits=params["t1"])
    q2 = dist.Bernoulli(logits=params["t2"])
    p1, p2 = dist.Bernoulli(probs=0.05), dist.Bernoulli(probs=0.6)
    total = 0.0
    for a in (0.0, 1.0):
        for b in (0.0, 1.0):
            za, zb = B.asarray(a), B.asarray(b)
            lq = q1.log_prob(za) + q2.log_prob(zb)
            lp = p1.log_prob(za) + p2.log_prob(zb) + dist.Normal(zb, 1.0).log_prob(0.8)
            total = total + B.exp(lq) * (lq - lp)
    return total


@pytest.fixture
def np_B():
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b


def test_score_function_gradients_unbiased_and_tracegraph_lower_variance(np_B):
    B = np_B
    params = {"t1": B.asarray(0.0), "t2": B.asarray(0.3)}
    exact = B.grad(lambda p: exact_neg_elbo(B, p))(params)
    n = 200
    draws = {}
    for name, elbo in [("trace", Trace_ELBO()), ("graph", TraceGraph_ELBO())]:
        grad = B.grad(lambda p, k, elbo=elbo: elbo(k, p, model, guide))
        keys = B.split(B.key(0), n)
        gs = np.array([float(grad(params, keys[i])["t2"]) for i in range(n)])
        draws[name] = gs
        se = gs.std() / np.sqrt(n)
        np.testing.assert_allclose(gs.mean(), float(exact["t2"]), atol=5 * se)
    # z1's (large) log-ratio is upstream of z2 and drops out of z2's cost
    assert draws["graph"].var() < 0.5 * draws["trace"].var()


N = 8
YS = np.linspace(-1.0, 2.0, N)


def plate_model():
    with agvi.plate("data", N):
        z = agvi.sample("z", dist.Bernoulli(probs=0.4))
        agvi.sample("y", dist.Normal(z, 1.0), obs=YS)


def plate_guide():
    t = agvi.param("t", np.zeros(N))
    with agvi.plate("data", N):
        agvi.sample("z", dist.Bernoulli(logits=t))


def test_tracegraph_uses_the_plate_structure(np_B):
    B = np_B

    def exact(p):
        q = dist.Bernoulli(logits=p["t"])
        total = 0.0
        for a in (0.0, 1.0):
            z = B.full((N,), a)
            lq = q.log_prob(z)
            lp = dist.Bernoulli(probs=0.4).log_prob(z) + dist.Normal(z, 1.0).log_prob(B.asarray(YS))
            total = total + B.sum(B.exp(lq) * (lq - lp))
        return total

    params = {"t": B.asarray(np.linspace(-0.5, 0.5, N))}
    g_exact = B.to_numpy(B.grad(exact)(params)["t"])
    n = 150
    keys = B.split(B.key(1), n)
    draws = {}
    for name, elbo in [("trace", Trace_ELBO()), ("graph", TraceGraph_ELBO())]:
        grad = B.grad(lambda p, k, elbo=elbo: elbo(k, p, plate_model, plate_guide))
        draws[name] = np.array([B.to_numpy(grad(params, keys[i])["t"]) for i in range(n)])
    gs = draws["graph"]
    se = gs.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(gs.mean(axis=0) - g_exact), 5 * se + 1e-12)
    # element i's cost no longer carries the other N-1 elements' terms
    assert gs.var(axis=0).mean() < 0.3 * draws["trace"].var(axis=0).mean()
