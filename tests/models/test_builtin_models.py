"""The built-in models (agvi.models): embedded data, registry, and log densities checked
against hand-written formulas with scipy.stats on every backend and precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

import agvi
import agvi.models as models
from agvi.handlers import seed, trace
from agvi.handlers.util import log_density

POSTERIORDB = Path(__file__).parents[1] / "data" / "posteriordb"


def _tol(B):
    return {"rtol": 1e-10, "atol": 1e-8} if B.precision == "float64" else \
        {"rtol": 2e-5, "atol": 2e-3}


def _log_joint(B, spec, params):
    """agvi's log joint of ``spec``'s model at the constrained ``params`` (host arrays)."""
    args, kwargs = spec.data(B)
    lp, tr = log_density(spec.model, args, kwargs,
                         {k: B.asarray(v, dtype=B.float_dtype) for k, v in params.items()})
    return float(B.to_numpy(lp)), tr


# --------------------------------------------------------------------------- data
def test_eight_schools_data_match_posteriordb():
    ref = json.loads((POSTERIORDB / "eight_schools-eight_schools_noncentered" /
                      "data.json").read_text())
    (sigma,), kwargs = models.get_model("eight_schools").load_data()
    np.testing.assert_array_equal(sigma, ref["sigma"])
    np.testing.assert_array_equal(kwargs["y"], ref["y"])


def test_breast_cancer_data_match_scikit_learn():
    from agvi.models.logistic_regression import load_raw
    X, y, names = load_raw()
    assert X.shape == (569, 30) and y.shape == (569,) and len(names) == 30
    assert np.bincount(y.astype(int)).tolist() == [212, 357]   # malignant, benign
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    d = sklearn_datasets.load_breast_cancer()
    np.testing.assert_array_equal(X, d.data)        # exact: the file was written with %.10g
    np.testing.assert_array_equal(y, d.target)
    assert names == [n.replace(" ", "_") for n in d.feature_names]


def test_breast_cancer_features_are_standardised():
    (X,), kwargs = models.get_model("logistic_regression").load_data()
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-12)
    assert set(np.unique(kwargs["y"]).tolist()) == {0.0, 1.0}


def test_baseball_data():
    from agvi.models.hierarchical import HITS, PLAYERS
    (at_bats,), kwargs = models.get_model("baseball").load_data()
    assert len(PLAYERS) == len(HITS) == 18
    np.testing.assert_array_equal(at_bats, 45.0)
    # Efron and Morris (1975), table 1: averages 0.400 (Clemente) down to 0.156 (Alvis)
    np.testing.assert_allclose(kwargs["hits"][[0, -1]] / 45, [0.4, 0.156], atol=5e-4)
    assert kwargs["hits"].sum() == 215


# --------------------------------------------------------------------------- registry
def test_registry_names_aliases_and_errors():
    names = models.list_models()
    assert names[:3] == ["eight_schools", "logistic_regression", "baseball"]
    assert "sir" in names
    assert models.get_model("Eight-Schools") is models.get_model("eight_schools")
    assert models.get_model("hierarchical").name == "baseball"
    assert models.model_info("sir")["methods"] == ("gvi",)
    with pytest.raises(KeyError, match="unknown model 'nope'.*eight_schools"):
        models.get_model("nope")
    for name in names[:3]:
        spec = models.get_model(name)
        assert spec.methods[0] == "nuts" and "svi" in spec.methods
        assert models.model_info(name)["description"] == spec.description


def test_register_model_rejects_taken_names():
    spec = models.get_model("eight_schools")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(spec)
    with pytest.raises(TypeError):
        models.register_model("eight_schools")


def test_to_backend_keeps_integer_dtypes(backend):
    tree = ({"a": np.arange(3), "b": np.ones(2)}, [1.5, None])
    out = models.to_backend(tree, backend)
    assert backend.is_floating(out[0]["b"]) and not backend.is_floating(out[0]["a"])
    assert backend.dtype_of(out[0]["b"]) == backend.float_dtype
    assert out[1] == [1.5, None]


# --------------------------------------------------------------------------- log densities
def test_eight_schools_log_density(backend):
    spec = models.get_model("eight_schools")
    (sigma,), kwargs = spec.load_data()
    y = kwargs["y"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = {"mu": rng.normal(0, 5), "tau": rng.gamma(2.0, 2.0), "theta_tilde": rng.normal(size=8)}
        with agvi.use_backend(backend) as B:
            lp, tr = _log_joint(B, spec, p)
        theta = p["mu"] + p["tau"] * p["theta_tilde"]
        expected = (stats.norm(0, 5).logpdf(p["mu"]) + stats.halfcauchy(scale=5).logpdf(p["tau"])
                    + stats.norm.logpdf(p["theta_tilde"]).sum()
                    + stats.norm(theta, sigma).logpdf(y).sum())
        np.testing.assert_allclose(lp, expected, **_tol(backend))
        np.testing.assert_allclose(backend.to_numpy(tr["theta"]["value"]), theta,
                                   **_tol(backend))


def test_logistic_regression_log_density(backend):
    spec = models.get_model("logistic_regression")
    (X,), kwargs = spec.load_data()
    y = kwargs["y"]
    rng = np.random.default_rng(1)
    p = {"intercept": rng.normal(), "w": 0.3 * rng.normal(size=30)}
    with agvi.use_backend(backend) as B:
        lp, _ = _log_joint(B, spec, p)
    logits = X @ p["w"] + p["intercept"]
    expected = (stats.norm(0, 5).logpdf(p["intercept"]) + stats.norm.logpdf(p["w"]).sum()
                + stats.bernoulli(special.expit(logits)).logpmf(y).sum())
    tol = _tol(backend)
    if backend.precision == "float32":      # 569 Bernoulli terms summed in float32
        tol = {"rtol": 1e-4, "atol": 1e-2}
    np.testing.assert_allclose(lp, expected, **tol)


def test_baseball_log_density(backend):
    spec = models.get_model("baseball")
    (at_bats,), kwargs = spec.load_data()
    hits = kwargs["hits"]
    rng = np.random.default_rng(2)
    p = {"mu": rng.normal(-1, 1), "sigma": rng.gamma(2.0, 0.3), "alpha_std": rng.normal(size=18)}
    with agvi.use_backend(backend) as B:
        lp, tr = _log_joint(B, spec, p)
    alpha = p["mu"] + p["sigma"] * p["alpha_std"]
    expected = (stats.norm(-1, 1).logpdf(p["mu"]) + stats.halfnorm.logpdf(p["sigma"])
                + stats.norm.logpdf(p["alpha_std"]).sum()
                + stats.binom(at_bats.astype(int), special.expit(alpha)).logpmf(hits).sum())
    np.testing.assert_allclose(lp, expected, **_tol(backend))
    np.testing.assert_allclose(backend.to_numpy(tr["theta"]["value"]), special.expit(alpha),
                               **_tol(backend))


@pytest.mark.parametrize("name", ["eight_schools", "logistic_regression", "baseball"])
def test_prior_predictive_shapes(name):
    """With the observations left out, the model draws them with the data's shape."""
    spec = models.get_model(name)
    with agvi.use_backend("numpy", precision="float64") as B:
        args, kwargs = spec.data(B)
        obs_name, obs = next(iter(kwargs.items()))
        tr = trace(seed(spec.model, 0)).get_trace(*args)
        site = next(s for s in tr.values() if s["type"] == "sample" and s["name"] in
                    (obs_name, "obs"))
        assert B.shape(site["value"]) == B.shape(obs)
        assert not site["is_observed"]
