"""Bayesian logistic regression on the Breast Cancer Wisconsin data: SVI and NUTS.

569 tumours, 30 standardised features, benign (1) or malignant (0); the data ship with agvi
(``agvi.models.logistic_regression``). SVI fits a full-rank Gaussian
(AutoMultivariateNormal: the coefficients of radius, perimeter and area are strongly
correlated), NUTS samples the exact posterior; we compare the coefficients and the posterior
predictive accuracy.

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/logistic_regression.py
"""

import os

import numpy as np

import agvi
from agvi.infer import MCMC, NUTS, SVI, AutoMultivariateNormal, Trace_ELBO
from agvi.models import get_model
from agvi.models.logistic_regression import feature_names
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()

spec = get_model("logistic_regression")
model = spec.model                     # logistic_regression(X, y=None)
(X,), kwargs = spec.data()
y = B.to_numpy(kwargs["y"])
Xh = B.to_numpy(X)

# --- SVI with a full-rank Gaussian guide ---------------------------------------------------
guide = AutoMultivariateNormal(model)
svi = SVI(model, guide, Adam(0.02), Trace_ELBO())
result = svi.run(agvi.random.key(0), 300 if QUICK else 3000, X, progress_bar=False, **kwargs)
vi = {k: B.to_numpy(v) for k, v in guide.sample_posterior(
    agvi.random.key(1), result.params, (1000,), X, **kwargs).items()}
losses = B.to_numpy(result.losses)
print(f"SVI: ELBO {-losses[:50].mean():.1f} (first 50 steps) -> {-losses[-50:].mean():.1f} "
      "(last 50)")

# --- NUTS ------------------------------------------------------------------------------------
mcmc = MCMC(NUTS(model), num_warmup=60 if QUICK else 500, num_samples=60 if QUICK else 500,
            num_chains=1 if QUICK else 2, progress_bar=False)
mcmc.run(agvi.random.key(2), X, **kwargs)
mc = {k: B.to_numpy(v) for k, v in mcmc.get_samples().items()}


def accuracy(draws):
    """Posterior predictive accuracy on the training data (mean probability > 0.5)."""
    logits = draws["w"] @ Xh.T + draws["intercept"][:, None]
    p = (1.0 / (1.0 + np.exp(-logits))).mean(axis=0)
    return float(np.mean((p > 0.5) == (y == 1.0)))


names = feature_names()
order = np.argsort(-np.abs(mc["w"].mean(axis=0)))[:6]
print(f"\n{'coefficient':24} {'NUTS mean (sd)':>16} {'SVI mean (sd)':>16}")
for j in order:
    print(f"{names[j]:24} {mc['w'][:, j].mean():7.2f} ({mc['w'][:, j].std():5.2f}) "
          f"{vi['w'][:, j].mean():7.2f} ({vi['w'][:, j].std():5.2f})")
print(f"{'intercept':24} {mc['intercept'].mean():7.2f} ({mc['intercept'].std():5.2f}) "
      f"{vi['intercept'].mean():7.2f} ({vi['intercept'].std():5.2f})")
acc_mc, acc_vi = accuracy(mc), accuracy(vi)
print(f"\ntraining accuracy of the posterior predictive: NUTS {acc_mc:.3f}, SVI {acc_vi:.3f}")
assert acc_mc > 0.9 and acc_vi > 0.9, (acc_mc, acc_vi)
