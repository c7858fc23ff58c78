"""Tests of :func:`agvi.backends._gamma_grad.standard_gamma_grad` (implicit Gamma reparam.).

Ground truth is mpmath at 40 digits: ``dx/dalpha = -(d/dalpha) gammainc(alpha, 0, x,
regularized=True) / p(x; alpha)``, evaluated at ``x`` = Gamma quantiles from
``scipy.stats.gamma.ppf``. Tolerance: rtol = 1e-9 (the module reaches about 5e-14).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy import special, stats

from agvi.backends._gamma_grad import standard_gamma_grad

RTOL = 1e-9   # stated tolerance against the mpmath ground truth

ALPHAS = (1e-3, 0.1, 0.5, 1.0, 2.5, 10.0, 100.0, 1e3, 1e4, 1e5)
QUANTILES = (1e-8, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0 - 1e-8)


def mpmath_grad(alpha: float, x: float) -> float:
    """-(dP/dalpha) / density with mpmath at 40 significant digits."""
    with mpmath.workdps(40):
        a, z = mpmath.mpf(alpha), mpmath.mpf(x)
        dP = mpmath.diff(lambda t: mpmath.gammainc(t, 0, z, regularized=True), a)
        log_density = (a - 1) * mpmath.log(z) - z - mpmath.loggamma(a)
        return float(-dP / mpmath.exp(log_density))


@pytest.fixture(scope="module")
def quantile_grid():
    a = np.repeat(np.array(ALPHAS), len(QUANTILES))
    q = np.tile(np.array(QUANTILES), len(ALPHAS))
    x = stats.gamma.ppf(q, a)
    return a, q, x


def test_matches_mpmath_on_quantile_grid(quantile_grid):
    """Bulk and both tails (quantiles 1e-8 .. 1 - 1e-8), alpha from 1e-3 to 1e5, one call."""
    a, q, x = quantile_grid
    got = standard_gamma_grad(a, x)
    assert got.shape == a.shape and got.dtype == np.float64
    for ai, qi, xi, gi in zip(a, q, x, got, strict=True):
        if xi == 0.0:   # the quantile underflows (alpha = 1e-3, q <= 0.1): dx/dalpha is 0 there
            assert gi == 0.0
            continue
        want = mpmath_grad(ai, xi)
        assert gi == pytest.approx(want, rel=RTOL), f"alpha={ai}, q={qi}, x={xi!r}"


@pytest.mark.parametrize("alpha, x", [
    (0.5, 4.5 - 1e-9), (0.5, 4.5 + 1e-9),              # series | continued fraction (x = a + 4)
    (19.999999, 19.0), (20.0, 19.0), (20.0, 20.0),     # series | Temme (alpha = 20)
    (50.0, 0.39 * 50), (50.0, 0.40 * 50),              # series | Temme (eta = -1 near x = 0.393a)
    (50.0, 2.30 * 50), (50.0, 2.33 * 50),              # Temme | continued fraction (x = 2.314a)
    (3e4, 3e4), (1e6, 1e6 + 3e3), (1e-3, 1e-300),      # x = alpha; very large alpha; tiny x
])
def test_matches_mpmath_across_region_boundaries(alpha, x):
    got = standard_gamma_grad(alpha, x)
    assert float(got) == pytest.approx(mpmath_grad(alpha, x), rel=RTOL)


def test_alpha_one_closed_form():
    """For alpha = 1, dx/dalpha = log x + euler_gamma + e^x E_1(x) (from x = -log(1 - u)).

    Below x ~ 0.05 that float64 reference itself cancels; the mpmath tests cover small x.
    """
    x = np.geomspace(0.05, 600.0, 400)
    want = np.log(x) + np.euler_gamma + special.exp1(x) * np.exp(x)
    np.testing.assert_allclose(standard_gamma_grad(np.ones_like(x), x), want, rtol=1e-12)


def test_monte_carlo_mean_equals_derivative_of_mean():
    """E[dx/dalpha] = dE[x]/dalpha = 1 for x ~ Gamma(alpha, 1); here alpha = 3.7."""
    rng = np.random.default_rng(20180711)
    x = rng.standard_gamma(3.7, size=200_000)
    g = standard_gamma_grad(3.7, x)
    assert np.all(np.isfinite(g)) and np.all(g > 0)
    stderr = g.std(ddof=1) / np.sqrt(g.size)
    assert abs(g.mean() - 1.0) < 3.0 * stderr


def test_special_values():
    alpha = np.array([2.0, 2.0, np.nan, 2.0, np.inf, 2.0, 0.0, -1.0, 2.0, 1e-3])
    x = np.array([0.0, np.nan, 1.0, np.inf, 1.0, -1.0, 1.0, 1.0, 1.5, 0.0])
    got = standard_gamma_grad(alpha, x)
    assert got[0] == 0.0 and got[9] == 0.0
    assert np.all(np.isnan(got[1:8]))
    assert np.isfinite(got[8])


def test_broadcasting_dtypes_and_scalars():
    a = np.array([[0.5], [3.0], [40.0]])
    x = np.array([0.2, 1.0, 7.0, 60.0])
    got = standard_gamma_grad(a, x)
    assert got.shape == (3, 4) and got.dtype == np.float64
    elementwise = [[float(standard_gamma_grad(ai, xi)) for xi in x] for ai in a[:, 0]]
    np.testing.assert_array_equal(got, elementwise)

    got32 = standard_gamma_grad(a.astype(np.float32), x.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(
        got32, standard_gamma_grad(a.astype(np.float32).astype(np.float64),
                                   x.astype(np.float32).astype(np.float64)), rtol=1e-6)

    scalar = standard_gamma_grad(2, 3)
    assert scalar.shape == () and scalar.dtype == np.float64
    assert standard_gamma_grad(np.empty((0, 3)), 1.0).shape == (0, 3)
