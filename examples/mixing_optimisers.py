"""Mixing optimisers: one optimiser per group of parameters with ``agvi.optim.multi_transform``.

SVI of the baseball model (Efron and Morris's 18 players, ``agvi.models.hierarchical``) with
an AutoNormal guide, whose parameters come in two kinds: locations (``auto_*_loc``) and
scales (``auto_*_scale``, optimised in log space). Here the locations take large Adam steps and
the scales small RMSprop steps, matched by name patterns; we compare with one Adam for all.

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/mixing_optimisers.py
"""

import os

import numpy as np

import agvi
from agvi.infer import SVI, AutoNormal, Trace_ELBO
from agvi.models import get_model
from agvi.models.hierarchical import PLAYERS
from agvi.optim import SGD, Adam, RMSprop, multi_transform

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()
STEPS = 300 if QUICK else 3000

spec = get_model("baseball")
model = spec.model
args, kwargs = spec.data()

optimisers = {
    "one Adam(0.02)": Adam(0.02),
    # leaf names are the param names; the first matching pattern wins
    "Adam(0.05) on *_loc, RMSprop(0.005) on *_scale": multi_transform(
        {"*_loc": Adam(0.05), "*_scale": RMSprop(0.005)}),
    # a callable key is a predicate on the name: plain SGD for the two league-level sites
    "SGD(0.01) on mu and sigma, Adam(0.02) on players": multi_transform(
        {(lambda name: name.startswith(("auto_mu_", "auto_sigma_"))): SGD(0.01),
         "*": Adam(0.02)}),
}
results = {}
for label, opt in optimisers.items():
    guide = AutoNormal(spec.model)
    svi = SVI(model, guide, opt, Trace_ELBO())
    result = svi.run(agvi.random.key(0), STEPS, *args, progress_bar=False, **kwargs)
    losses = B.to_numpy(result.losses)
    draws = guide.sample_posterior(agvi.random.key(1), result.params, (1000,), *args, **kwargs)
    alpha = B.to_numpy(draws["mu"])[:, None] + B.to_numpy(draws["sigma"])[:, None] * \
        B.to_numpy(draws["alpha_std"])
    theta = 1.0 / (1.0 + np.exp(-alpha))
    results[label] = (-losses[-100:].mean(), theta.mean(axis=0))
    print(f"{label:50}: ELBO {-losses[:20].mean():8.1f} -> {-losses[-100:].mean():7.2f}")

raw = B.to_numpy(kwargs["hits"]) / 45
print(f"\n{'player':18} {'first 45 AB':>11} " + " ".join(f"{'fit ' + str(i + 1):>7}"
                                                          for i in range(len(results))))
for j in (0, 1, 8, 17):
    print(f"{PLAYERS[j]:18} {raw[j]:11.3f} " + " ".join(f"{r[1][j]:7.3f}"
                                                      for r in results.values()))
# partial pooling: every fit shrinks the extreme averages towards the league mean
for elbo, theta in results.values():
    assert np.isfinite(elbo) and theta[0] < raw[0] and theta[-1] > raw[-1]
