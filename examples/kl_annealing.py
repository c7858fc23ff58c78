"""KL annealing (beta-VAE weighting) with ``agvi.handlers.scale``.

A linear latent factor model (probabilistic PCA) of the 30 standardised Breast Cancer Wisconsin
features: each tumour has two latent factors ``z_i``, ``x_i ~ Normal(W z_i, sigma)``. The
local latents are fitted by SVI with a Gaussian guide per tumour. Scaling the ``z`` sites of
both the model and the guide by ``beta`` turns the ELBO into

    E_q[log p(x | z)] - beta * KL(q(z) || p(z)),

the beta-VAE objective. Annealing ``beta`` from 0 to 1 over the first steps lets the factors
fit the data before the prior pulls them in. ``beta`` is passed to every step as an Array, so
on JAX the compiled step is reused for every value (no recompilation).

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/kl_annealing.py
"""

import os

import numpy as np

import agvi
import agvi.distributions as dist
from agvi.distributions import constraints
from agvi.handlers import scale
from agvi.infer import SVI, Trace_ELBO
from agvi.models import get_model
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()
K = 2                                              # latent factors
STEPS = 150 if QUICK else 3000
WARM = STEPS // 3                                  # beta goes 0 -> 1 over these steps

(X,), _ = get_model("logistic_regression").data()  # standardised features, (569, 30)
N, D = B.shape(X)
W0 = 0.1 * np.random.default_rng(0).normal(size=(D, K))


def model(X, beta):
    W = agvi.param("W", B.asarray(W0))
    sigma = agvi.param("sigma", B.asarray(1.0), constraint=constraints.positive)
    with agvi.plate("tumours", N):
        with scale(scale=beta):                    # the prior term, weighted by beta
            z = agvi.sample("z", dist.Normal(B.zeros((N, K)), 1.0).to_event(1))
        agvi.sample("x", dist.Normal(z @ B.matrix_transpose(W), sigma).to_event(1), obs=X)


def guide(X, beta):
    loc = agvi.param("z_loc", B.zeros((N, K)))
    sd = agvi.param("z_scale", B.full((N, K), 0.1), constraint=constraints.positive)
    with agvi.plate("tumours", N):
        with scale(scale=beta):                    # ... and the entropy term
            agvi.sample("z", dist.Normal(loc, sd).to_event(1))


def fit(anneal):
    svi = SVI(model, guide, Adam(0.02), Trace_ELBO())
    state = svi.init(agvi.random.key(0), X, B.asarray(0.0))
    for t in range(STEPS):
        beta = min(1.0, t / WARM) if anneal else 1.0
        state, _ = svi.update(state, X, B.asarray(beta))     # an Array: no recompilation
    one = B.asarray(1.0)
    elbo = -np.mean([float(svi.evaluate(state._replace(rng_key=agvi.random.key(i)), X, one))
                     for i in range(20)])
    params = svi.get_params(state)
    return elbo, float(params["sigma"]), B.to_numpy(params["z_loc"])


for anneal in (False, True):
    elbo, sigma, z = fit(anneal)
    label = "annealed beta 0 -> 1" if anneal else "beta = 1 throughout"
    print(f"{label:22}: ELBO (beta = 1) {elbo:10.1f}, noise sd {sigma:.3f}, "
          f"factor sds {np.round(z.std(axis=0), 2)}")
    assert np.isfinite(elbo)
