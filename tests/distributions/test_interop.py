"""agvi.distributions.interop: conversion to and from torch.distributions and
numpyro.distributions, on every installed backend and precision.

Each family is converted both ways; ``log_prob`` at draws of the agvi distribution must agree
with the framework's (float64 rtol 1e-12, except where the two sides evaluate a special function
differently: noted per case) and round trips (agvi -> framework -> agvi) reproduce ``log_prob``
to rtol 1e-12 in float64 (float32: rtol 1e-5).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.distributions.interop import from_numpyro, from_torch, to_numpyro, to_torch

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_NUMPYRO = importlib.util.find_spec("numpyro") is not None


def npy(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


def _tril(rng, d=3):
    A = np.tril(rng.normal(size=(2, d, d)) * 0.4, -1)
    return A + np.eye(d) * rng.uniform(0.6, 1.5, size=(2, d, 1))


def _corr_cholesky(rng, d=3):
    A = rng.normal(size=(d, d))
    C = A @ A.T + d * np.eye(d)
    s = np.sqrt(np.diag(C))
    return np.linalg.cholesky(C / np.outer(s, s))


# name -> (builder(rng), rtol against the framework in float64). Batch shape (2,) throughout.
_R = np.random.default_rng
CASES = {
    "Normal": (lambda r: dist.Normal(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "LogNormal": (lambda r: dist.LogNormal(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "HalfNormal": (lambda r: dist.HalfNormal(r.uniform(0.5, 2, 2)), 1e-12),
    "HalfCauchy": (lambda r: dist.HalfCauchy(r.uniform(0.5, 2, 2)), 1e-12),
    "Cauchy": (lambda r: dist.Cauchy(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "StudentT": (lambda r: dist.StudentT(r.uniform(2, 6, 2), r.normal(size=2),
                                         r.uniform(0.5, 2, 2)), 1e-12),
    "Laplace": (lambda r: dist.Laplace(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "Logistic": (lambda r: dist.Logistic(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "Gumbel": (lambda r: dist.Gumbel(r.normal(size=2), r.uniform(0.5, 2, 2)), 1e-12),
    "Exponential": (lambda r: dist.Exponential(r.uniform(0.5, 2, 2)), 1e-12),
    "Gamma": (lambda r: dist.Gamma(r.uniform(0.5, 4, 2), r.uniform(0.5, 2, 2)), 1e-12),
    "InverseGamma": (lambda r: dist.InverseGamma(r.uniform(1, 4, 2), r.uniform(0.5, 2, 2)),
                     1e-12),
    "Chi2": (lambda r: dist.Chi2(r.uniform(1, 6, 2)), 1e-12),
    "Beta": (lambda r: dist.Beta(r.uniform(0.5, 4, 2), r.uniform(0.5, 4, 2)), 1e-12),
    "Uniform": (lambda r: dist.Uniform(r.uniform(-1, 0, 2), r.uniform(1, 2, 2)), 1e-12),
    "Weibull": (lambda r: dist.Weibull(r.uniform(0.5, 2, 2), r.uniform(0.5, 3, 2)), 1e-12),
    "Pareto": (lambda r: dist.Pareto(r.uniform(0.5, 2, 2), r.uniform(1, 4, 2)), 1e-12),
    "VonMises": (lambda r: dist.VonMises(r.uniform(-1, 1, 2), r.uniform(0.5, 4, 2)), 1e-12),
    "Dirichlet": (lambda r: dist.Dirichlet(r.uniform(0.5, 3, (2, 4))), 1e-12),
    "MultivariateNormal": (lambda r: dist.MultivariateNormal(r.normal(size=(2, 3)),
                                                             scale_tril=_tril(r)), 1e-12),
    "LowRankMultivariateNormal": (lambda r: dist.LowRankMultivariateNormal(
        r.normal(size=(2, 3)), 0.5 * r.normal(size=(2, 3, 2)), r.uniform(0.5, 1.5, (2, 3))),
        1e-12),
    "LKJCholesky": (lambda r: dist.LKJCholesky(3, r.uniform(0.5, 3, 2)), 1e-12),
    "Bernoulli": (lambda r: dist.Bernoulli(probs=r.uniform(0.1, 0.9, 2)), 1e-12),
    "BernoulliLogits": (lambda r: dist.Bernoulli(logits=r.normal(size=2)), 1e-12),
    "Binomial": (lambda r: dist.Binomial(np.array([5.0, 8.0]), probs=r.uniform(0.1, 0.9, 2)),
                 1e-12),
    "BinomialLogits": (lambda r: dist.Binomial(7, logits=r.normal(size=2)), 1e-12),
    "Categorical": (lambda r: dist.Categorical(probs=r.dirichlet(np.ones(4), 2)), 1e-12),
    "CategoricalLogits": (lambda r: dist.Categorical(logits=r.normal(size=(2, 4))), 1e-12),
    "OneHotCategorical": (lambda r: dist.OneHotCategorical(logits=r.normal(size=(2, 4))), 1e-12),
    "Poisson": (lambda r: dist.Poisson(r.uniform(0.5, 5, 2)), 1e-12),
    "Geometric": (lambda r: dist.Geometric(probs=r.uniform(0.2, 0.8, 2)), 1e-12),
    "NegativeBinomial": (lambda r: dist.NegativeBinomial(np.array([2.5, 4.0]),
                                                         probs=r.uniform(0.2, 0.7, 2)), 1e-12),
    "NegativeBinomialLogits": (lambda r: dist.NegativeBinomial(3.0, logits=r.normal(size=2)),
                               1e-12),
    "Multinomial": (lambda r: dist.Multinomial(6, probs=r.dirichlet(np.ones(3), 2)), 1e-12),
    "Independent": (lambda r: dist.Normal(r.normal(size=(2, 3)), 1.5).to_event(1), 1e-12),
    "Expanded": (lambda r: dist.Gamma(r.uniform(1, 3, 2), 2.0).expand((4, 2)), 1e-12),
    "MixtureSameFamily": (lambda r: dist.MixtureSameFamily(
        dist.Categorical(logits=r.normal(size=(2, 3))),
        dist.Normal(r.normal(size=(2, 3)), r.uniform(0.5, 2, (2, 3)))), 1e-12),
}
NUMPYRO_ONLY = {
    "Delta": (lambda r: dist.Delta(r.normal(size=(2, 3)), 0.5, event_dim=1), 1e-12),
    "Masked": (lambda r: dist.Normal(r.normal(size=2), 1.0).mask(np.array([True, False])),
               1e-12),
}
# Converted to torch, but as a TransformedDistribution that does not convert back.
TORCH_ONE_WAY = {"Logistic"}
NOT_IN_NUMPYRO = {"OneHotCategorical"}
# Where the framework's own log_prob is less accurate than float64 (agvi's matches scipy.stats
# to ~1e-15 there): torch's VonMises evaluates log I0 by a polynomial approximation (~1e-7);
# NumPyro's NegativeBinomialProbs (a GammaPoisson) is off by up to ~1e-7 relative at some counts.
TORCH_RTOL = {"VonMises": 1e-7}
NUMPYRO_RTOL = {"NegativeBinomial": 1e-6, "NegativeBinomialLogits": 1e-6}


def _draws(B, d):
    return d.sample(B.key(3), (5,))


def _tol(B, rtol):
    return dict(rtol=rtol, atol=1e-13) if B.precision == "float64" else dict(rtol=1e-5, atol=1e-5)


# -- torch ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_round_trip(backend, name):
    import torch

    build, rtol = CASES[name]
    with agvi.use_backend(backend) as B:
        d = build(_R(0))
        x = _draws(B, d)
        lp = npy(B, d.log_prob(x))
        t = to_torch(d)
        assert tuple(t.batch_shape) == d.batch_shape and tuple(t.event_shape) == d.event_shape
        tx = x if B.name == "torch" else torch.as_tensor(np.asarray(B.to_numpy(x)))
        np.testing.assert_allclose(t.log_prob(tx).detach().numpy(), lp,
                                   **_tol(B, TORCH_RTOL.get(name, rtol)))
        if name in TORCH_ONE_WAY:
            with pytest.raises(NotImplementedError, match="TransformedDistribution"):
                from_torch(t)
            return
        back = from_torch(t)
        assert type(back) is type(d) or name == "Expanded"
        assert back.batch_shape == d.batch_shape and back.event_shape == d.event_shape
        np.testing.assert_allclose(npy(B, back.log_prob(x)), lp, **_tol(B, 1e-12))


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_tensors_pass_through():
    import torch

    with agvi.use_backend("torch", precision="float64"):
        loc = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
        d = dist.Normal(loc, 2.0)
        t = to_torch(d)
        assert t.loc is d.loc  # no copy: gradients flow
        t.log_prob(torch.zeros(2, dtype=torch.float64)).sum().backward()
        assert loc.grad is not None
        back = from_torch(t)
        assert back.loc is t.loc
    with agvi.use_backend("numpy", precision="float64"):
        back = from_torch(torch.distributions.Normal(torch.tensor([1.0]), torch.tensor([2.0])))
        assert isinstance(back.loc, np.ndarray) and back.loc.dtype == np.float64


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_errors():
    import torch

    with agvi.use_backend("numpy", precision="float64"):
        with pytest.raises(NotImplementedError, match="Delta"):
            to_torch(dist.Delta(1.0))
        with pytest.raises(NotImplementedError, match="MaskedDistribution"):
            to_torch(dist.Normal().mask(False))
        with pytest.raises(NotImplementedError, match="total_count"):
            to_torch(dist.Multinomial(np.array([2.0, 3.0]), probs=np.ones((2, 3)) / 3))
        with pytest.raises(NotImplementedError, match="ContinuousBernoulli"):
            from_torch(torch.distributions.ContinuousBernoulli(torch.tensor(0.3)))


# -- numpyro -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def numpyro_x64():
    """NumPyro in float64: building a float64 JAX backend turns JAX's x64 mode on."""
    if not HAVE_NUMPYRO:
        pytest.skip("numpyro is not installed")
    agvi.backends.make_backend("jax", precision="float64")


@pytest.mark.parametrize("name", sorted((set(CASES) | set(NUMPYRO_ONLY)) - NOT_IN_NUMPYRO))
def test_numpyro_round_trip(backend, name, numpyro_x64):
    import jax.numpy as jnp

    build, rtol = {**CASES, **NUMPYRO_ONLY}[name]
    with agvi.use_backend(backend) as B:
        d = build(_R(0))
        x = _draws(B, d)
        lp = npy(B, d.log_prob(x))
        n = to_numpyro(d)
        assert tuple(n.batch_shape) == d.batch_shape and tuple(n.event_shape) == d.event_shape
        jx = x if B.name == "jax" else jnp.asarray(np.asarray(B.to_numpy(x)))
        np.testing.assert_allclose(np.asarray(n.log_prob(jx), dtype=np.float64), lp,
                                   **_tol(B, NUMPYRO_RTOL.get(name, rtol)))
        back = from_numpyro(n)
        assert back.batch_shape == d.batch_shape and back.event_shape == d.event_shape
        np.testing.assert_allclose(npy(B, back.log_prob(x)), lp, **_tol(B, 1e-12))


def test_numpyro_negative_binomial2(numpyro_x64):
    import jax.numpy as jnp
    import numpyro.distributions as nd

    n = nd.NegativeBinomial2(jnp.asarray([2.0, 5.0]), jnp.asarray([1.5, 3.0]))
    k = jnp.asarray([[0.0, 3.0], [4.0, 1.0]])
    with agvi.use_backend("numpy", precision="float64") as B:
        d = from_numpyro(n)
        assert isinstance(d, dist.NegativeBinomial)
        np.testing.assert_allclose(npy(B, d.log_prob(np.asarray(k))), np.asarray(n.log_prob(k)),
                                   rtol=1e-12)
        np.testing.assert_allclose(npy(B, d.mean), [2.0, 5.0], rtol=1e-12)


def test_numpyro_arrays_pass_through(numpyro_x64):
    import jax.numpy as jnp
    import numpyro.distributions as nd

    with agvi.use_backend("jax", precision="float64"):
        n = nd.Normal(jnp.asarray([0.0, 1.0]), jnp.asarray([1.0, 2.0]))
        assert from_numpyro(n).loc is n.loc
    with pytest.raises(NotImplementedError, match="ZeroInflated"):
        from_numpyro(nd.ZeroInflatedPoisson(0.3, 2.0))
    with agvi.use_backend("numpy"):
        with pytest.raises(NotImplementedError, match="OneHotCategorical"):
            to_numpyro(dist.OneHotCategorical(probs=[0.5, 0.5]))


def test_no_framework_imported_at_import():
    code = ("import sys, json; import agvi.distributions.interop, agvi.distributions.kl; "
            "print(json.dumps(sorted(m for m in ('torch', 'jax', 'numpyro') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
