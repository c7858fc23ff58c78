"""Simulator calibration with generalised variational inference (GVI).

An SIR epidemic simulator (``agvi.models.sir``) is known only through a loss: the squared error
between simulated and observed (infected, recovered) curves. GVI (Knoblauch, Jewson and
Damoulas 2022; the BlackBIRDS design) fits a Gaussian ``q`` over ``(log beta, log gamma)`` by
minimising ``E_q[loss] + w KL(q || prior)``, with gradients of the loss taken through the
simulator (pathwise; forward or reverse mode). With the Gaussian negative log-likelihood as the
loss and ``w = 1`` this is ordinary VI; a larger ``w`` trusts the prior more.

The observations are synthetic, simulated at beta = 0.5, gamma = 0.1 with noise sd 0.005.

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/gvi_sir.py
"""

import functools
import math
import os

import numpy as np

import agvi
from agvi.infer.gvi import GVI
from agvi.infer.posterior_estimators import DiagonalGaussianEstimator
from agvi.models import sir
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()
EPOCHS = 40 if QUICK else 400

(data,), _ = sir.load_data()                    # (50, 2): infected and recovered fractions
data = B.asarray(data)
# the loss is the Gaussian negative log-likelihood with the noise sd of the data
loss = functools.partial(sir.sir_loss, sigma=0.005)

for w in (1.0, 100.0):
    prior = sir.sir_prior()
    q = DiagonalGaussianEstimator(2, loc=np.array(sir.PRIOR_LOC), scale=0.1)
    gvi = GVI(loss, prior, q, w=w, optimizer=Adam(0.05), n_samples_per_epoch=5,
              progress_bar=False, key=0)
    gvi.run(data, EPOCHS, max_epochs_without_improvement=EPOCHS)
    theta, _ = q.sample(agvi.random.key(1), 2000)
    rates = np.exp(B.to_numpy(theta))
    lo, hi = np.quantile(rates, [0.05, 0.95], axis=0)
    print(f"w = {w:5g}: beta {rates[:, 0].mean():.3f} [{lo[0]:.3f}, {hi[0]:.3f}], "
          f"gamma {rates[:, 1].mean():.3f} [{lo[1]:.3f}, {hi[1]:.3f}]  (90% intervals; "
          f"objective {gvi.history[0]['total']:.4g} -> {gvi.best_loss:.4g})")
    assert np.isfinite(rates).all()
    if not QUICK and w == 1.0:                   # the data pin the rates down
        assert abs(math.log(rates[:, 0].mean() / 0.5)) < 0.1
        assert abs(math.log(rates[:, 1].mean() / 0.1)) < 0.1
print("true values: beta 0.500, gamma 0.100; prior means "
      f"{math.exp(sir.PRIOR_LOC[0]):.3f}, {math.exp(sir.PRIOR_LOC[1]):.3f}")
