"""A Bayesian neural network with ``agvi.nn.Variationalize`` (Bayes by Backprop).

An ordinary MLP, written as a pure function ``f(params, x)`` with the backend's arrays, becomes
a Bayesian network: ``Variationalize`` puts a mean-field Gaussian posterior over every weight
and a Gaussian prior N(0, 1/fan_in), and ``fit`` minimises the negative ELBO over mini-batches
(the dense layers use the local reparameterisation trick of Kingma et al., 2015). Data: the
Breast Cancer Wisconsin tumours (standardised), 400 for training, 169 held out. We report the
held-out accuracy and the expected calibration error of the posterior predictive.

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/bnn_variationalize.py
"""

import os

import numpy as np

import agvi
from agvi.models.logistic_regression import load_data
from agvi.nn import Variationalize, dense, expected_calibration_error
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()
EPOCHS = 5 if QUICK else 100

(X,), kw = load_data()
y = kw["y"]
perm = np.random.default_rng(0).permutation(len(y))
train, test = perm[:400], perm[400:]
x_train, y_train = B.asarray(X[train]), B.asarray(y[train])
x_test, y_test = B.asarray(X[test]), y[test]

rng = np.random.default_rng(1)
params = {"l1": {"w": rng.normal(size=(30, 16)) / np.sqrt(30), "b": np.zeros(16)},
          "l2": {"w": rng.normal(size=(16, 1)) / 4.0, "b": np.zeros(1)}}


def mlp(p, x):
    """30 -> 16 (tanh) -> 1: the logit of 'benign'."""
    h = B.tanh(dense(x, p["l1"]["w"], p["l1"]["b"]))
    return dense(h, p["l2"]["w"], p["l2"]["b"])[..., 0]


bnn = Variationalize(mlp, params, prior="gaussian", local_reparameterization=True,
                     likelihood="bernoulli")
fit = bnn.fit(x_train, y_train, agvi.random.key(0), num_epochs=EPOCHS, batch_size=50,
              optim=Adam(0.01))
print(f"negative ELBO per batch: {fit.losses[:8].mean():.1f} (first epoch) -> "
      f"{fit.losses[-8:].mean():.1f} (last)")

prob = np.asarray(B.to_numpy(bnn.predict_proba(fit.variational_params, x_test, agvi.random.key(1),
                                               num_samples=50)))
acc = float(np.mean((prob > 0.5) == (y_test == 1.0)))
# ECE over the two classes' probabilities
ece = expected_calibration_error(np.stack([1 - prob, prob], axis=-1), y_test.astype(int))
print(f"held-out accuracy {acc:.3f}, expected calibration error {ece:.3f} "
      f"({len(test)} tumours)")
assert acc > (0.8 if QUICK else 0.93), acc
