"""Convergence diagnostics (NumPy only).

Oracles: ArviZ (``ess``, ``rhat``, ``mcse`` with its defaults) where it is installed, to 1%;
otherwise, and in addition, closed forms: the ESS of independent draws is about the number of
draws, that of AR(1) chains ``N (1 - rho) / (1 + rho)``; R-hat of chains with the same
distribution is about 1 and far above 1 when a chain is shifted.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

from agvi.infer.mcmc.diagnostics import (
    autocorrelation,
    effective_sample_size,
    format_summary,
    mcse,
    split_gelman_rubin,
    summary,
)

HAVE_ARVIZ = importlib.util.find_spec("arviz") is not None


def ar1(rng, rho, chains, draws):
    """Stationary AR(1) chains with unit innovation variance."""
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains) / np.sqrt(1 - rho ** 2)
    noise = rng.normal(size=(chains, draws))
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def test_ess_of_independent_draws_is_about_the_number_of_draws():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2000))
    for method in ("bulk", "tail", "mean"):
        ess = effective_sample_size(x, method)
        assert 0.85 * 8000 < ess < 1.15 * 8000, (method, ess)


@pytest.mark.parametrize("rho", [0.5, 0.9, -0.5])
def test_ess_of_ar1_chains_matches_the_closed_form(rho):
    rng = np.random.default_rng(1)
    x = ar1(rng, rho, 4, 5000)
    expected = 4 * 5000 * (1 - rho) / (1 + rho)
    # the estimator's relative sd is a few percent here; antithetic chains (rho < 0) are
    # capped at S log10(S) by Stan's rule
    expected = min(expected, 20000 * np.log10(20000))
    for method in ("bulk", "mean"):
        ess = effective_sample_size(x, method)
        assert abs(ess / expected - 1) < 0.15, (method, ess, expected)


def test_rhat_near_one_for_agreeing_chains_and_large_for_a_shifted_chain():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 1000))
    assert abs(split_gelman_rubin(x) - 1) < 0.01
    x[0] += 2.0
    assert split_gelman_rubin(x) > 1.2
    # a drifting single chain is caught by splitting it
    drift = np.linspace(0, 5, 1000)[None] + rng.normal(size=(1, 1000))
    assert split_gelman_rubin(drift) > 1.5
    # scale differences show in the folded (tail) R-hat
    y = rng.normal(size=(4, 1000))
    y[0] *= 3.0
    assert split_gelman_rubin(y) > 1.05


def test_mcse_of_the_mean_is_sd_over_root_ess():
    rng = np.random.default_rng(3)
    x = ar1(rng, 0.7, 4, 4000)
    expected = np.std(x, ddof=1) / np.sqrt(effective_sample_size(x, "mean"))
    np.testing.assert_allclose(mcse(x), expected, rtol=1e-12)
    # and it is the actual sampling sd of the mean: AR(1) variance 1 / (1 - rho^2)
    true = np.sqrt(1 / (1 - 0.49) * (1 + 0.7) / (1 - 0.7) / x.size)
    assert abs(mcse(x) / true - 1) < 0.15


def test_trailing_axes_and_edge_cases():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 500, 3, 2))
    for fn in (effective_sample_size, split_gelman_rubin, mcse):
        out = fn(x)
        assert out.shape == (3, 2)
        np.testing.assert_allclose(out[1, 0], fn(x[:, :, 1, 0]))
    assert np.isnan(effective_sample_size(np.ones((2, 100))))
    assert np.isnan(split_gelman_rubin(np.full((2, 100), np.nan)))
    assert np.isnan(effective_sample_size(np.zeros((2, 3)) + rng.normal(size=(2, 3))))
    with pytest.raises(ValueError, match="chains, draws"):
        effective_sample_size(np.zeros(10))
    with pytest.raises(ValueError, match="method"):
        effective_sample_size(np.zeros((2, 10)), method="median")
    acf = autocorrelation(ar1(rng, 0.5, 1, 20000))[0]
    np.testing.assert_allclose(acf[:3], [1.0, 0.5, 0.25], atol=0.03)


def test_summary_rows_and_table():
    rng = np.random.default_rng(5)
    samples = {"mu": rng.normal(1.0, 2.0, size=(2, 500)),
               "beta": rng.normal(size=(2, 500, 2, 2))}
    rows = summary(samples)
    assert list(rows) == ["mu", "beta[0,0]", "beta[0,1]", "beta[1,0]", "beta[1,1]"]
    mu = rows["mu"]
    assert set(mu) == {"mean", "sd", "q5", "q50", "q95", "mcse", "ess_bulk", "ess_tail",
                       "r_hat"}
    np.testing.assert_allclose(mu["mean"], samples["mu"].mean())
    np.testing.assert_allclose(mu["q95"], np.quantile(samples["mu"], 0.95))
    assert abs(mu["mean"] - 1.0) < 4 * mu["mcse"]
    table = format_summary(samples)
    assert "ess_bulk" in table and "beta[1,1]" in table and "5%" in table
    assert set(summary(rng.normal(size=(2, 50, 3)))) == {"x[0]", "x[1]", "x[2]"}
    with pytest.raises(ValueError, match="prob"):
        summary(samples, prob=1.5)


@pytest.mark.skipif(not HAVE_ARVIZ, reason="arviz is not installed (pip install arviz)")
def test_agrees_with_arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    rng = np.random.default_rng(6)
    cases = [rng.normal(size=(4, 1001)), ar1(rng, 0.8, 2, 700), ar1(rng, -0.4, 3, 400),
             rng.standard_cauchy(size=(3, 301)), ar1(rng, 0.97, 2, 300) + np.arange(2)[:, None],
             np.exp(ar1(rng, 0.5, 4, 250))]
    for x in cases:
        for method in ("bulk", "tail", "mean"):
            ref = float(np.asarray(az.ess(x, method=method)))
            np.testing.assert_allclose(effective_sample_size(x, method), ref, rtol=0.01)
        np.testing.assert_allclose(split_gelman_rubin(x), float(np.asarray(az.rhat(x))),
                                   rtol=0.01)
        np.testing.assert_allclose(mcse(x), float(np.asarray(az.mcse(x))), rtol=0.01)
