"""The univariate continuous families against scipy.stats, on every backend and precision.

- Densities, cdf, icdf, moments and entropy at parameters drawn by hypothesis (a batch of three
  parameter sets per example, five values per set taken at fixed quantiles), compared with
  ``scipy.stats`` evaluated at the same (precision-rounded) inputs in float64.
- Draws: shape, dtype and support; sample mean and variance within 5 standard errors; a
  Kolmogorov-Smirnov test per batch element (p > 1e-4, fixed keys).
- Implicit reparameterisation (Gamma, Beta, StudentT(df), InverseGamma, Chi2): the mean of the
  per-draw pathwise gradients against the analytic derivative of a known expectation, within 4
  Monte Carlo standard errors.
- Validation errors name the parameter; values outside the support raise in ``log_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import agvi
import agvi.distributions as dist

# Tolerances (|actual - expected| <= atol + rtol |expected|). Inputs are rounded to the tested
# precision on both sides, so what remains is the evaluation error of the closed forms. Measured
# over 100 random parameter sets per family (25 on JAX), as min(abs, rel) error: float64 at most
# 9e-14 (Beta log_prob on JAX), float32 at most 1.6e-5 (Weibull variance on JAX, through
# float32 lgamma); the bounds below leave a margin of 100x and 10x.
TOL = {
    "float64": {"value": (1e-10, 1e-11), "icdf": (1e-10, 1e-11)},
    "float32": {"value": (2e-4, 2e-4), "icdf": (2e-4, 2e-5)},
}
QUANTILES = np.array([0.02, 0.2, 0.5, 0.8, 0.98])
N_SETS = 3  # parameter sets (the batch) per hypothesis example
HYPOTHESIS = settings(max_examples=8, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


def _vm_circular_variance(p):
    k = p["concentration"]
    return 1.0 - sp.i1e(k) / sp.i0e(k)


@dataclass
class Family:
    """One family: how to build it, its scipy twin and the ranges hypothesis draws from."""

    name: str
    make: Callable          # params (dict of arrays) -> agvi distribution (active backend)
    ref: Callable           # params (dict of float64 arrays) -> frozen scipy.stats object
    params: dict            # name -> (low, high) for hypothesis
    sample_params: dict     # name -> list of 2 values for the sampling tests
    cdf: bool = True
    icdf: bool = True
    mean: Callable | None = None      # expected mean where it differs from scipy's convention
    variance: Callable | None = None  # expected variance where it differs
    circular: bool = False


FAMILIES = [
    Family("Normal", lambda p: dist.Normal(p["loc"], p["scale"]),
           lambda p: st.norm(p["loc"], p["scale"]),
           {"loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"loc": [0.5, -1.0], "scale": [1.0, 2.5]}),
    Family("LogNormal", lambda p: dist.LogNormal(p["loc"], p["scale"]),
           lambda p: st.lognorm(p["scale"], scale=np.exp(p["loc"])),
           {"loc": (-2.0, 2.0), "scale": (0.2, 1.5)},
           {"loc": [0.3, -1.0], "scale": [0.4, 0.8]}),
    Family("HalfNormal", lambda p: dist.HalfNormal(p["scale"]),
           lambda p: st.halfnorm(scale=p["scale"]),
           {"scale": (0.2, 5.0)}, {"scale": [0.7, 3.0]}),
    Family("HalfCauchy", lambda p: dist.HalfCauchy(p["scale"]),
           lambda p: st.halfcauchy(scale=p["scale"]),
           {"scale": (0.2, 5.0)}, {"scale": [0.7, 3.0]}),
    Family("Cauchy", lambda p: dist.Cauchy(p["loc"], p["scale"]),
           lambda p: st.cauchy(p["loc"], p["scale"]),
           {"loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"loc": [0.5, -1.0], "scale": [1.0, 2.5]}),
    Family("StudentT", lambda p: dist.StudentT(p["df"], p["loc"], p["scale"]),
           lambda p: st.t(p["df"], p["loc"], p["scale"]),
           {"df": (0.5, 30.0), "loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"df": [6.0, 12.0], "loc": [0.5, -1.0], "scale": [1.0, 2.5]},
           cdf=False, icdf=False,
           # undefined mean: nan (torch, NumPyro); scipy says inf
           mean=lambda p: np.where(p["df"] > 1, p["loc"], np.nan)),
    Family("Laplace", lambda p: dist.Laplace(p["loc"], p["scale"]),
           lambda p: st.laplace(p["loc"], p["scale"]),
           {"loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"loc": [0.5, -1.0], "scale": [1.0, 2.5]}),
    Family("Logistic", lambda p: dist.Logistic(p["loc"], p["scale"]),
           lambda p: st.logistic(p["loc"], p["scale"]),
           {"loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"loc": [0.5, -1.0], "scale": [1.0, 2.5]}),
    Family("Gumbel", lambda p: dist.Gumbel(p["loc"], p["scale"]),
           lambda p: st.gumbel_r(p["loc"], p["scale"]),
           {"loc": (-3.0, 3.0), "scale": (0.2, 5.0)},
           {"loc": [0.5, -1.0], "scale": [1.0, 2.5]}),
    Family("Exponential", lambda p: dist.Exponential(p["rate"]),
           lambda p: st.expon(scale=1.0 / p["rate"]),
           {"rate": (0.2, 5.0)}, {"rate": [0.5, 3.0]}),
    Family("Gamma", lambda p: dist.Gamma(p["concentration"], p["rate"]),
           lambda p: st.gamma(p["concentration"], scale=1.0 / p["rate"]),
           {"concentration": (0.2, 20.0), "rate": (0.2, 5.0)},
           {"concentration": [0.5, 4.0], "rate": [2.0, 0.7]}, icdf=False),
    Family("InverseGamma", lambda p: dist.InverseGamma(p["concentration"], p["rate"]),
           lambda p: st.invgamma(p["concentration"], scale=p["rate"]),
           {"concentration": (0.5, 8.0), "rate": (0.2, 5.0)},
           {"concentration": [5.0, 9.0], "rate": [2.0, 0.7]}, icdf=False),
    Family("Chi2", lambda p: dist.Chi2(p["df"]), lambda p: st.chi2(p["df"]),
           {"df": (0.5, 30.0)}, {"df": [1.5, 7.0]}, icdf=False),
    Family("Beta", lambda p: dist.Beta(p["concentration1"], p["concentration0"]),
           lambda p: st.beta(p["concentration1"], p["concentration0"]),
           {"concentration1": (0.2, 10.0), "concentration0": (0.2, 10.0)},
           {"concentration1": [0.6, 3.0], "concentration0": [2.0, 0.8]}, cdf=False, icdf=False),
    Family("Uniform", lambda p: dist.Uniform(p["low"], p["high"]),
           lambda p: st.uniform(p["low"], p["high"] - p["low"]),
           {"low": (-3.0, 0.0), "high": (0.5, 3.0)},
           {"low": [-1.0, 0.0], "high": [2.0, 0.5]}),
    Family("Weibull", lambda p: dist.Weibull(p["scale"], p["concentration"]),
           lambda p: st.weibull_min(p["concentration"], scale=p["scale"]),
           {"scale": (0.2, 5.0), "concentration": (0.5, 5.0)},
           {"scale": [1.0, 2.5], "concentration": [0.8, 3.0]}),
    Family("Pareto", lambda p: dist.Pareto(p["scale"], p["alpha"]),
           lambda p: st.pareto(p["alpha"], scale=p["scale"]),
           {"scale": (0.2, 5.0), "alpha": (0.5, 8.0)},
           {"scale": [1.0, 2.5], "alpha": [5.0, 9.0]}),
    Family("VonMises", lambda p: dist.VonMises(p["loc"], p["concentration"]),
           lambda p: st.vonmises(p["concentration"], loc=p["loc"]),
           {"loc": (-3.0, 3.0), "concentration": (0.05, 50.0)},
           {"loc": [0.5, -2.5], "concentration": [0.5, 20.0]},
           cdf=False, icdf=False, mean=lambda p: p["loc"], variance=_vm_circular_variance,
           circular=True),
]
BY_NAME = {f.name: f for f in FAMILIES}
FAMILY_IDS = [f.name for f in FAMILIES]


# ----------------------------------------------------------------------------------- helpers
def _np_dtype(backend):
    return np.float32 if backend.precision == "float32" else np.float64


def _to64(backend, x):
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def _close(backend, actual, expected, kind="value", what=""):
    rtol, atol = TOL[backend.precision][kind]
    np.testing.assert_allclose(_to64(backend, actual), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def _check_dtype(backend, x, what):
    assert backend.dtype_of(x) == backend.float_dtype, \
        f"{what}: dtype {backend.dtype_of(x)}, expected {backend.float_dtype}"


def _params_strategy(family):
    return hst.fixed_dictionaries({
        name: hst.lists(hst.floats(lo, hi, allow_nan=False, allow_infinity=False),
                        min_size=N_SETS, max_size=N_SETS)
        for name, (lo, hi) in family.params.items()})


def _rounded(backend, raw):
    """(params in the backend's precision, the same values in float64 for scipy)."""
    dtype = _np_dtype(backend)
    low = {k: np.asarray(v, dtype=dtype) for k, v in raw.items()}
    return low, {k: v.astype(np.float64) for k, v in low.items()}


def _wrap(x):
    return np.mod(x + np.pi, 2 * np.pi) - np.pi


# ----------------------------------------------------------------------- values vs scipy
_EVALUATORS: dict = {}


def _evaluator(backend, family):
    """``evaluate(params, x, q) -> dict`` of every closed form of ``family``, compiled with the
    backend's ``jit`` (so the families are also checked under tracing; on JAX one compiled
    program per family is far cheaper than compiling each eager op) and cached across
    hypothesis examples."""
    key = (backend, family.name)
    if key not in _EVALUATORS:
        def evaluate(params, x, q):
            d = family.make(params)
            out = {"log_prob": d.log_prob(x), "mean": d.mean, "variance": d.variance,
                   "entropy": d.entropy()}
            if family.cdf:
                out["cdf"] = d.cdf(x)
            if family.icdf:
                out["icdf"] = d.icdf(q)
            return out

        _EVALUATORS[key] = backend.jit(evaluate)
    return _EVALUATORS[key]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # float32 x rounded to 1
@HYPOTHESIS
@given(data=hst.data())
def test_against_scipy(backend, family, data):
    """log_prob, cdf, icdf, mean, variance and entropy equal scipy.stats' at drawn parameters."""
    params, params64 = _rounded(backend, data.draw(_params_strategy(family), label="params"))
    ref = family.ref(params64)
    dtype = _np_dtype(backend)
    if family.circular:
        x = (params64["loc"] + np.linspace(-3.0, 3.0, 5)[:, None]).astype(dtype)
    else:
        x = ref.ppf(QUANTILES[:, None]).astype(dtype)
    x64 = x.astype(np.float64)
    q = np.broadcast_to(QUANTILES[:, None], x.shape).astype(dtype)
    with agvi.use_backend(backend):
        out = _evaluator(backend, family)(
            {k: backend.asarray(v) for k, v in params.items()},
            backend.asarray(_wrap(x) if family.circular else x), backend.asarray(q))
    for name, value in out.items():
        _check_dtype(backend, value, name)
    assert backend.shape(out["log_prob"]) == x.shape
    _close(backend, out["log_prob"], ref.logpdf(x64), what=f"{family.name}.log_prob({x64})")
    mean = family.mean(params64) if family.mean else ref.mean()
    var = family.variance(params64) if family.variance else ref.var()
    _close(backend, out["mean"], np.broadcast_to(mean, (N_SETS,)), what="mean")
    _close(backend, out["variance"], np.broadcast_to(var, (N_SETS,)), what="variance")
    _close(backend, out["entropy"], ref.entropy(), what="entropy")
    if family.cdf:
        _close(backend, out["cdf"], ref.cdf(x64), what="cdf")
    if family.icdf:
        _close(backend, out["icdf"], ref.ppf(q.astype(np.float64)), kind="icdf", what="icdf")


def test_no_closed_form_raises(backend):
    """Families without a closed-form cdf / icdf say so."""
    with agvi.use_backend(backend):
        for d in (dist.StudentT(3.0), dist.Beta(2.0, 3.0), dist.VonMises(0.0, 1.0)):
            with pytest.raises(NotImplementedError, match="cdf"):
                d.cdf(backend.asarray(0.5))
        for d in (dist.Gamma(2.0), dist.Chi2(2.0), dist.InverseGamma(2.0)):
            with pytest.raises(NotImplementedError, match="icdf"):
                d.icdf(backend.asarray(0.5))


# -------------------------------------------------------------------- moments that do not exist
def test_nonexistent_moments(backend):
    """nan / inf as scipy reports them (StudentT's undefined mean is nan, as torch)."""
    nan, inf = math.nan, math.inf
    with agvi.use_backend(backend):
        cases = [
            (dist.Cauchy(0.0, 1.0), nan, nan),
            (dist.HalfCauchy(1.0), inf, inf),
            (dist.StudentT(backend.asarray([0.5, 1.5, 2.0, 3.0])), [nan, 0, 0, 0],
             [nan, inf, inf, 3.0]),
            (dist.Pareto(1.0, backend.asarray([0.5, 1.5, 3.0])), [inf, 3.0, 1.5],
             [inf, inf, 0.75]),
            (dist.InverseGamma(backend.asarray([0.5, 1.5, 3.0]), 1.0), [inf, 2.0, 0.5],
             [inf, inf, 0.25]),
        ]
        for d, mean, var in cases:
            _close(backend, d.mean, np.broadcast_to(mean, d.batch_shape), what=f"{d} mean")
            _close(backend, d.variance, np.broadcast_to(var, d.batch_shape),
                   what=f"{d} variance")
        # scipy agrees wherever its convention is the same
        np.testing.assert_allclose(st.t(np.array([1.5, 2.0, 3.0])).var(), [inf, inf, 3.0])


# ------------------------------------------------------------------------------- sampling
N_DRAWS = 4000  # with a batch of 2: every draw in this file has shape DRAW
DRAW = (N_DRAWS, 2)


def _kurtosis_se(var, kurt, n):
    """Standard error of the sample variance: sqrt((mu4 - sigma^4) / n)."""
    return np.sqrt((kurt + 2.0) * var * var / n)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_sampling(backend, family):
    """Shape, dtype and support of draws; moments within 5 standard errors; KS test."""
    params, params64 = _rounded(backend, family.sample_params)
    with agvi.use_backend(backend):
        d = family.make({k: backend.asarray(v) for k, v in params.items()})
        key = backend.key(20240611)
        x = d.sample(key, (N_DRAWS,))
        assert backend.shape(x) == (N_DRAWS, 2)
        _check_dtype(backend, x, "sample")
        assert bool(backend.to_numpy(backend.all(d.support.check(x, backend))))
        if d.has_rsample:
            xr = d.rsample(key, (N_DRAWS,))
            np.testing.assert_array_equal(backend.to_numpy(xr), backend.to_numpy(x))
        else:
            with pytest.raises(NotImplementedError):
                d.rsample(key, (N_DRAWS,))
    x = _to64(backend, x)
    assert np.all(np.isfinite(x))
    for j in range(2):
        pj = {k: v[j] for k, v in params64.items()}
        rj = family.ref(pj)
        if family.circular:
            centred = _wrap(x[:, j] - pj["loc"])
            # E[cos(x - loc)] = I1/I0, E[sin(x - loc)] = 0, each within 5 standard errors
            r = sp.i1e(pj["concentration"]) / sp.i0e(pj["concentration"])
            for stat, target in ((np.cos(centred), r), (np.sin(centred), 0.0)):
                se = stat.std() / math.sqrt(N_DRAWS)
                assert abs(stat.mean() - target) < 5 * se + 1e-12, (family.name, j, stat.mean())
            p = st.kstest(centred, st.vonmises(pj["concentration"]).cdf).pvalue
        else:
            mean, var, kurt = (float(m) for m in rj.stats(moments="mvk"))
            if np.isfinite(mean) and np.isfinite(var):
                se = math.sqrt(var / N_DRAWS)
                assert abs(x[:, j].mean() - mean) < 5 * se, (family.name, j, x[:, j].mean(), mean)
            if np.isfinite(var) and np.isfinite(kurt):
                se = _kurtosis_se(var, kurt, N_DRAWS)
                assert abs(x[:, j].var(ddof=1) - var) < 5 * se, (family.name, j, x[:, j].var(),
                                                                 var)
            p = st.kstest(x[:, j], rj.cdf).pvalue
        assert p > 1e-4, f"{family.name}[{j}]: KS p-value {p:.2e}"


@pytest.mark.parametrize("kappas", [(1e-4, 1e5), (0.03, 300.0)])
def test_von_mises_extreme_concentrations(backend, kappas):
    """The sampler stays exact from near-uniform to near-normal concentrations in float32 too."""
    with agvi.use_backend(backend):
        x = dist.VonMises(1.0, backend.asarray(kappas)).sample(backend.key(7), (N_DRAWS,))
    x = _to64(backend, x)
    assert np.all(np.abs(x) <= np.pi)
    for j, kappa in enumerate(kappas):
        p = st.kstest(_wrap(x[:, j] - 1.0), st.vonmises(kappa).cdf).pvalue
        assert p > 1e-4, f"KS p-value {p:.2e} at kappa={kappa}"


def test_von_mises_jit_and_invalid(backend):
    """``sample`` compiles under the backend's jit; a nan concentration gives nan, not a hang."""
    with agvi.use_backend(backend):
        def draw(key):
            return dist.VonMises(0.5, backend.asarray([3.0, 3.0])).sample(key, (N_DRAWS,))

        jitted = backend.jit(draw)
        a, b = jitted(backend.key(1)), jitted(backend.key(1))
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
        np.testing.assert_allclose(_to64(backend, a), _to64(backend, draw(backend.key(1))),
                                   rtol=1e-5, atol=1e-5)
        assert st.kstest(_wrap(_to64(backend, a)[:, 0] - 0.5), st.vonmises(3.0).cdf).pvalue > 1e-4
        bad = dist.VonMises(0.0, backend.asarray([math.nan, 2.0])).sample(backend.key(2),
                                                                         (N_DRAWS,))
        bad = _to64(backend, bad)
        assert np.all(np.isnan(bad[:, 0])) and np.all(np.isfinite(bad[:, 1]))


# ------------------------------------------------------------------ reparameterised gradients


def _trigamma(x):
    return sp.polygamma(1, x)


def _abs_t_mean(df):
    """E|T| for T ~ StudentT(df), df > 1."""
    return (2.0 * np.sqrt(df) * np.exp(sp.gammaln(0.5 * (df + 1)) - sp.gammaln(0.5 * df))
            / (np.sqrt(np.pi) * (df - 1.0)))


def _fd(fn, x, h=1e-5):
    return (fn(x + h) - fn(x - h)) / (2 * h)


# (family, parameters, differentiated parameter, f name, expected d/dtheta E[f(x)])
GRAD_CASES = [
    ("Gamma", {"concentration": 2.5, "rate": 1.5}, "concentration", "x", 1 / 1.5),
    ("Gamma", {"concentration": 2.5, "rate": 1.5}, "rate", "x", -2.5 / 1.5 ** 2),
    ("Gamma", {"concentration": 2.5, "rate": 1.5}, "concentration", "log", _trigamma(2.5)),
    ("Gamma", {"concentration": 0.4, "rate": 1.0}, "concentration", "x", 1.0),
    ("Beta", {"concentration1": 2.0, "concentration0": 3.0}, "concentration1", "x", 3 / 25),
    ("Beta", {"concentration1": 2.0, "concentration0": 3.0}, "concentration0", "x", -2 / 25),
    ("Beta", {"concentration1": 2.0, "concentration0": 3.0}, "concentration1", "log",
     _trigamma(2.0) - _trigamma(5.0)),
    ("Beta", {"concentration1": 0.5, "concentration0": 0.7}, "concentration0", "x",
     -0.5 / 1.2 ** 2),
    ("StudentT", {"df": 8.0, "loc": 0.5, "scale": 1.5}, "df", "square",
     -2 * 1.5 ** 2 / (8.0 - 2) ** 2),
    ("StudentT", {"df": 8.0, "loc": 0.5, "scale": 1.5}, "scale", "square",
     2 * 1.5 * 8.0 / (8.0 - 2)),
    ("StudentT", {"df": 8.0, "loc": 0.5, "scale": 1.5}, "loc", "square", 2 * 0.5),
    ("StudentT", {"df": 4.0, "loc": 0.0, "scale": 1.0}, "df", "abs", _fd(_abs_t_mean, 4.0)),
    ("InverseGamma", {"concentration": 5.0, "rate": 2.0}, "concentration", "x", -2.0 / 16),
    ("InverseGamma", {"concentration": 5.0, "rate": 2.0}, "rate", "x", 1 / 4),
    ("Chi2", {"df": 3.0}, "df", "x", 1.0),
]
_F = {"x": lambda B, x: x, "log": lambda B, x: B.log(x), "square": lambda B, x: x * x,
      "abs": lambda B, x: B.abs(x)}


@pytest.mark.parametrize("family,theta,wrt,f,expected", GRAD_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in GRAD_CASES])
def test_reparameterised_gradient(backend, family, theta, wrt, f, expected):
    """mean_i d f(x_i) / d theta (pathwise, one parameter copy per draw, 8000 draws) equals
    d E[f(x)] / d theta within 4 Monte Carlo standard errors."""
    cls = getattr(dist, family)
    with agvi.use_backend(backend):
        key = backend.key(99)
        fixed = {k: backend.full(DRAW, v) for k, v in theta.items()}

        def total(value):
            d = cls(**{**fixed, wrt: value})
            return backend.sum(_F[f](backend, d.rsample(key)))

        g = _to64(backend, backend.grad(total)(backend.full(DRAW, theta[wrt]))).ravel()
    assert np.all(np.isfinite(g))
    se = g.std(ddof=1) / math.sqrt(g.size)
    err = abs(g.mean() - expected)
    assert err < 4 * se + 1e-4 * abs(expected), \
        f"{family} d/d{wrt} E[{f}]: {g.mean():.5f} vs {expected:.5f} (se {se:.2g})"


def test_pathwise_gradients_loc_scale(backend):
    """Every rsample is differentiable in its parameters: d/dloc x = 1 for location families and
    d/dscale x = x / scale for scale families, exactly, draw by draw."""
    with agvi.use_backend(backend):
        key = backend.key(3)
        two = (2,)
        for cls in (dist.Normal, dist.Cauchy, dist.Laplace, dist.Logistic, dist.Gumbel,
                    dist.StudentT):
            make = (lambda loc: dist.StudentT(5.0, loc, 2.0)) if cls is dist.StudentT else \
                (lambda loc, cls=cls: cls(loc, 2.0))
            g = backend.grad(lambda loc, make=make: backend.sum(
                make(loc).rsample(key, (N_DRAWS,))))(backend.full(two, 0.3))
            np.testing.assert_allclose(_to64(backend, g), [N_DRAWS] * 2, rtol=1e-4,
                                       err_msg=cls.__name__)
        for make in (lambda s: dist.HalfNormal(s), lambda s: dist.HalfCauchy(s),
                     lambda s: dist.Exponential(1.0 / s), lambda s: dist.Weibull(s, 1.7),
                     lambda s: dist.Pareto(s, 3.0), lambda s: dist.LogNormal(backend.log(s), 0.5),
                     lambda s: dist.Uniform(0.0, s), lambda s: dist.Gamma(2.0, 1.0 / s),
                     lambda s: dist.InverseGamma(3.0, s), lambda s: dist.StudentT(5.0, 0.0, s)):
            s = backend.full(two, 1.3)
            g = backend.grad(lambda s, make=make: backend.sum(make(s).rsample(key, (N_DRAWS,))))(s)
            x = _to64(backend, make(s).rsample(key, (N_DRAWS,)))
            np.testing.assert_allclose(_to64(backend, g), x.sum(axis=0) / 1.3, rtol=1e-4)


# ------------------------------------------------------------------------------ validation
BAD_PARAMS = [
    (lambda: dist.LogNormal(0.0, -1.0, validate_args=True), "scale"),
    (lambda: dist.HalfNormal(0.0, validate_args=True), "scale"),
    (lambda: dist.HalfCauchy(-2.0, validate_args=True), "scale"),
    (lambda: dist.Cauchy(0.0, -1.0, validate_args=True), "scale"),
    (lambda: dist.StudentT(-1.0, validate_args=True), "df"),
    (lambda: dist.StudentT(2.0, 0.0, -1.0, validate_args=True), "scale"),
    (lambda: dist.Laplace(0.0, 0.0, validate_args=True), "scale"),
    (lambda: dist.Logistic(0.0, -1.0, validate_args=True), "scale"),
    (lambda: dist.Gumbel(0.0, -1.0, validate_args=True), "scale"),
    (lambda: dist.Exponential(-1.0, validate_args=True), "rate"),
    (lambda: dist.Gamma(-1.0, 1.0, validate_args=True), "concentration"),
    (lambda: dist.Gamma(1.0, 0.0, validate_args=True), "rate"),
    (lambda: dist.InverseGamma(0.0, 1.0, validate_args=True), "concentration"),
    (lambda: dist.InverseGamma(1.0, -1.0, validate_args=True), "rate"),
    (lambda: dist.Chi2(-3.0, validate_args=True), "df"),
    (lambda: dist.Beta(-1.0, 1.0, validate_args=True), "concentration1"),
    (lambda: dist.Beta(1.0, 0.0, validate_args=True), "concentration0"),
    (lambda: dist.Uniform(1.0, 0.0, validate_args=True), "`low` must be less than `high`"),
    (lambda: dist.Weibull(-1.0, 1.0, validate_args=True), "scale"),
    (lambda: dist.Weibull(1.0, -1.0, validate_args=True), "concentration"),
    (lambda: dist.Pareto(0.0, 1.0, validate_args=True), "scale"),
    (lambda: dist.Pareto(1.0, -1.0, validate_args=True), "alpha"),
    (lambda: dist.VonMises(0.0, -1.0, validate_args=True), "concentration"),
    (lambda: dist.VonMises(math.nan, 1.0, validate_args=True), "loc"),
    (lambda: dist.Delta(0.0, math.nan, validate_args=True), "log_density"),
]
OUTSIDE_SUPPORT = [
    (lambda: dist.LogNormal(0.0, 1.0, validate_args=True), -1.0),
    (lambda: dist.HalfNormal(1.0, validate_args=True), -0.5),
    (lambda: dist.HalfCauchy(1.0, validate_args=True), -0.5),
    (lambda: dist.Exponential(1.0, validate_args=True), -0.5),
    (lambda: dist.Gamma(2.0, 1.0, validate_args=True), 0.0),
    (lambda: dist.InverseGamma(2.0, 1.0, validate_args=True), -1.0),
    (lambda: dist.Chi2(2.0, validate_args=True), -1.0),
    (lambda: dist.Beta(2.0, 2.0, validate_args=True), 1.5),
    (lambda: dist.Uniform(0.0, 1.0, validate_args=True), 1.5),
    (lambda: dist.Weibull(1.0, 2.0, validate_args=True), -1.0),
    (lambda: dist.Pareto(2.0, 3.0, validate_args=True), 1.5),
    (lambda: dist.VonMises(0.0, 1.0, validate_args=True), 4.0),
    (lambda: dist.StudentT(3.0, validate_args=True), math.nan),
]


def test_validation_errors_name_the_parameter(backend):
    with agvi.use_backend(backend):
        for make, name in BAD_PARAMS:
            with pytest.raises(ValueError, match=name):
                make()
        for make, value in OUTSIDE_SUPPORT:
            d = make()
            with pytest.raises(ValueError, match="outside the support"):
                d.log_prob(backend.asarray(value))
        # without validation the same constructions succeed
        dist.Gamma(-1.0, 1.0)
        dist.Uniform(1.0, 0.0, validate_args=False)


# --------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_shapes_and_broadcasting(backend, family):
    """Parameters of shapes (3, 1) and (2,) broadcast to batch (3, 2); log_prob, moments and
    entropy have the batch shape (plus the sample axes for log_prob); expand and to_event
    compose. (Draw shapes are checked by the sampling tests.)"""
    names = list(family.sample_params)
    raw = {k: np.asarray(family.sample_params[k]) for k in names}
    # first parameter as a column of 3, the others as rows of 2
    first = names[0]
    raw[first] = np.stack([raw[first][0], raw[first][1], raw[first][0]])[:, None]
    if len(names) == 1:
        raw[first] = np.concatenate([raw[first], raw[first][::-1]], axis=1)
    x = family.ref({k: v[0] for k, v in family.sample_params.items()}).median()
    with agvi.use_backend(backend):
        d = family.make({k: backend.asarray(v) for k, v in raw.items()})
        assert d.batch_shape == (3, 2) and d.event_shape == ()
        value = backend.full((4, 3, 2), float(x))
        assert backend.shape(d.log_prob(value)) == (4, 3, 2)
        assert backend.shape(d.log_prob(backend.asarray(float(x)))) == (3, 2)
        assert backend.shape(d.mean) == (3, 2) and backend.shape(d.variance) == (3, 2)
        assert backend.shape(d.entropy()) == (3, 2)
        e = d.expand((4, 3, 2))
        assert e.batch_shape == (4, 3, 2) and backend.shape(e.log_prob(value)) == (4, 3, 2)
        ind = d.to_event(1)
        assert ind.batch_shape == (3,) and ind.event_shape == (2,)
        assert backend.shape(ind.log_prob(value)) == (4, 3)


def test_expand_widens_size_one_axes_with_independent_draws(backend):
    """Expanding batch (1, 3, 1) to (2, 4, 3, 5): every new element is its own draw (the
    per-location moments match Normal(loc, 1) over 6 * 2 * 4 * 5 = 240 draws each, 4 standard
    errors), the locations stay on their axis, and rsample keeps gradients per element."""
    loc = np.array([0.0, 100.0, 200.0]).reshape(1, 3, 1)
    with agvi.use_backend(backend):
        d = dist.Normal(backend.asarray(loc), 1.0).expand((2, 4, 3, 5))
        x = backend.to_numpy(d.sample(backend.key(0), (6,)))
        assert x.shape == (6, 2, 4, 3, 5)
        centred = np.moveaxis(x, 3, 0).reshape(3, -1) - loc.reshape(3, 1)
        assert np.all(np.abs(centred.mean(axis=1)) < 4 / np.sqrt(240))
        assert np.all(np.abs(centred.std(axis=1) - 1) < 4 / np.sqrt(2 * 240))
        assert len(np.unique(x)) == x.size
        r = dist.Normal(backend.zeros((4, 1)), 1.0).expand((4, 3)).rsample(backend.key(1))
        assert backend.shape(r) == (4, 3) and len(np.unique(backend.to_numpy(r))) == 12


def test_integer_parameters_become_floats(backend):
    with agvi.use_backend(backend):
        for d in (dist.Gamma(2, 1), dist.Beta(2, 3), dist.Uniform(0, 2), dist.StudentT(3),
                  dist.Exponential(2), dist.Pareto(1, 3), dist.VonMises(0, 2), dist.Delta(3)):
            x = d.sample(backend.key(0), DRAW)
            _check_dtype(backend, x, type(d).__name__)
            _check_dtype(backend, d.log_prob(x), type(d).__name__)


def test_chi2_is_a_gamma(backend):
    with agvi.use_backend(backend):
        d = dist.Chi2(backend.asarray([1.0, 4.0]))
        assert isinstance(d, dist.Gamma)
        _close(backend, d.concentration, [0.5, 2.0])
        _close(backend, d.rate, [0.5, 0.5])
        _close(backend, d.df, [1.0, 4.0])


# ---------------------------------------------------------------------------------- Delta
def test_delta(backend):
    nan_free = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    with agvi.use_backend(backend):
        v = backend.asarray(nan_free)
        d0 = dist.Delta(v, log_density=backend.asarray(1.5))
        assert d0.batch_shape == (3, 2) and d0.event_shape == ()
        lp = _to64(backend, d0.log_prob(backend.asarray([[1.0, 0.0], [3.0, 4.0], [0.0, 6.0]])))
        np.testing.assert_array_equal(lp, [[1.5, -np.inf], [1.5, 1.5], [-np.inf, 1.5]])

        d1 = dist.Delta(v, log_density=backend.asarray([0.0, -1.0, 2.0]), event_dim=1)
        assert d1.batch_shape == (3,) and d1.event_shape == (2,)
        lp = _to64(backend, d1.log_prob(backend.asarray([[1.0, 2.0], [3.0, 0.0], [5.0, 6.0]])))
        np.testing.assert_array_equal(lp, [0.0, -np.inf, 2.0])
        x = d1.rsample(backend.key(0), (4,))
        assert backend.shape(x) == (4, 3, 2)
        np.testing.assert_array_equal(_to64(backend, x), np.broadcast_to(nan_free, (4, 3, 2)))
        np.testing.assert_array_equal(_to64(backend, d1.mean), nan_free)
        np.testing.assert_array_equal(_to64(backend, d1.variance), np.zeros((3, 2)))
        assert backend.shape(d1.sample(backend.key(0))) == (3, 2)

        # gradient flows from the draw to v (4 draws) and from log_prob to log_density
        g = backend.grad(lambda v: backend.sum(dist.Delta(v, event_dim=1).rsample(
            backend.key(0), (4,))))(v)
        np.testing.assert_array_equal(_to64(backend, g), np.full((3, 2), 4.0))
        g = backend.grad(lambda ld: backend.sum(dist.Delta(v, ld, event_dim=1).log_prob(v)))(
            backend.zeros((3,)))
        np.testing.assert_array_equal(_to64(backend, g), np.ones(3))

        with pytest.raises(ValueError, match="event_dim"):
            dist.Delta(backend.asarray([1.0, 2.0]), event_dim=2)
