"""Bayesian logistic regression on the Breast Cancer Wisconsin (Diagnostic) data.

569 breast masses, 30 features of their cell nuclei, and the diagnosis (1 = benign,
0 = malignant, scikit-learn's coding). The features are standardised (mean 0, standard
deviation 1 over the 569 rows), so that one prior scale suits every coefficient::

    intercept ~ Normal(0, 5)
    w_k ~ Normal(0, 1)                                   k = 1..30
    y_i ~ Bernoulli(logits = intercept + x_i . w)       i = 1..569

The data ship with agvi (``agvi/models/data/breast_cancer.csv.gz``, CC BY 4.0; attribution in
``agvi/models/data/README.md``), so the model needs no scikit-learn at run time. Several
features are nearly collinear (radius, perimeter and area), which makes the posterior strongly
correlated: a good test of mass-matrix adaptation.

References
----------
Street, Wolberg and Mangasarian (1993), "Nuclear feature extraction for breast tumor
diagnosis", Proc. SPIE 1905, 861-870. UCI Machine Learning Repository,
https://doi.org/10.24432/C5DW2B.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from .. import distributions as dist
from ..handlers import plate, sample
from . import ModelSpec

__all__ = ["DATA_FILE", "SPEC", "feature_names", "load_data", "load_raw", "logistic_regression"]

#: The shipped data file (CSV, gzip): 30 feature columns, then ``target``.
DATA_FILE = os.path.join(os.path.dirname(__file__), "data", "breast_cancer.csv.gz")


def load_raw():
    """The data as shipped: ``(X, y, feature_names)``.

    Returns
    -------
    X : numpy.ndarray, shape (569, 30), float64
        Unstandardised features (equal to scikit-learn's ``load_breast_cancer().data``).
    y : numpy.ndarray, shape (569,), float64
        1.0 = benign, 0.0 = malignant.
    feature_names : list of str, length 30
    """
    with gzip.open(DATA_FILE, "rt", encoding="ascii") as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1], header[:-1]


def feature_names() -> list[str]:
    """The 30 feature names (e.g. ``"mean_radius"``)."""
    return load_raw()[2]


def load_data():
    """``((X,), {"y": y})``: standardised features (569, 30) and labels (569,), float64.

    Each column of ``X`` is centred and divided by its standard deviation (``ddof=0``).
    """
    X, y, _ = load_raw()
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return (X,), {"y": y}


def logistic_regression(X, y=None):
    """Logistic regression with Normal priors on the intercept and the coefficients.

    Parameters
    ----------
    X : Array, shape (N, D)
        Standardised features.
    y : Array of shape (N,) or None
        Labels in {0, 1} (floats); ``None`` draws them.

    Returns
    -------
    None
        Sites: ``intercept`` (), ``w`` (D,), the observed ``y`` (N,).
    """
    n, d = X.shape
    intercept = sample("intercept", dist.Normal(0.0, 5.0))
    with plate("features", d):
        w = sample("w", dist.Normal(0.0, 1.0))
    with plate("data", n):
        sample("y", dist.Bernoulli(logits=X @ w + intercept), obs=y)


SPEC = ModelSpec(
    name="logistic_regression",
    model=logistic_regression,
    load_data=load_data,
    description="Bayesian logistic regression, Breast Cancer Wisconsin data (569 x 30, "
                "standardised)",
    methods=("nuts", "hmc", "svi"),
    defaults={"num_warmup": 300, "num_samples": 300, "num_chains": 2, "num_steps": 2000,
              "learning_rate": 0.02},
    source="UCI Breast Cancer Wisconsin (Diagnostic), Street, Wolberg and Mangasarian (1993); "
           "CC BY 4.0",
)
