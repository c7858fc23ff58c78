"""NUTS on the posteriordb reference posteriors (tests/data/posteriordb), every backend.

The criterion is the one of tests/data/posteriordb/README.md, for every parameter on the
constrained scale (through each posterior's ``constrain``):

- ``|mean - ref_mean| < 4 * sqrt(mcse^2 + ref_mcse^2)`` with ``mcse = sd / sqrt(bulk ESS)``;
- rank-normalised split R-hat < 1.05;
- bulk ESS >= 100.

NUTS runs with its defaults (Stan's warmup, target acceptance 0.8, maximum tree depth 10,
diagonal metric), from zeros in unconstrained space, with no tuning per posterior, on all five
posteriors and every backend:

- JAX (compiled): 2 vectorized chains, 1000 warmup and 1000 draws each;
- NumPy and torch (eager loops): 2 sequential chains, 500 warmup and 500 draws each.

Eight schools also runs as an agvi model (``NUTS(model=...)``: handlers, bijectors, the default
``init_to_uniform``) with the same settings.

Wall times on 2 cores (one test at a time; NumPy / torch / JAX with a warm compilation cache):
arK 45 / 16 / 7 s, eight schools 8 / 4 / 6 s, garch 34 / 17 / 13 s, kidiq 67 / 38 / 8 s,
low_dim_gauss_mix 18 / 9 / 10 s; the eight schools model 19 / 13 / 2 s. Every case is marked
``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

import agvi
import agvi.distributions as dist
from agvi.backends import available_backends, make_backend
from agvi.infer.mcmc import MCMC, NUTS
from agvi.infer.mcmc.diagnostics import effective_sample_size, split_gelman_rubin

ROOT = Path(__file__).resolve().parents[2] / "data" / "posteriordb"
POSTERIORS = sorted(p.name for p in ROOT.iterdir() if p.is_dir())


def load(name):
    spec = importlib.util.spec_from_file_location(f"posteriordb_{name.replace('-', '_')}",
                                                  ROOT / name / "logdensity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.prepare_data(json.loads((ROOT / name / "data.json").read_text()))
    reference = json.loads((ROOT / name / "reference.json").read_text())["params"]
    return module, data, reference


def _backends():
    """The installed backends, narrowed by AGVI_TEST_BACKENDS as in tests/conftest.py."""
    wanted = os.environ.get("AGVI_TEST_BACKENDS", "").strip()
    names = available_backends()
    if wanted:
        names = [n for n in names if n in {w.strip().lower() for w in wanted.split(",")}]
    return names


def cases():
    return [pytest.param(backend, name, id=f"{backend}-{name}", marks=pytest.mark.slow)
            for backend in _backends() for name in POSTERIORS]


def check(draws, module, data, reference):
    """The README's criterion; returns (max |z|, min bulk ESS, max R-hat, failures).

    ``draws``: unconstrained draws (chains, draws, DIM), or a dict of constrained ones
    ``{reference name: (chains, draws)}``.
    """
    constrained = draws if isinstance(draws, dict) else module.constrain(draws, data, np)
    zs, esss, rhats = [], [], []
    failures = []
    for name, ref in reference.items():
        x = np.asarray(constrained[name])          # (chains, draws)
        ess = effective_sample_size(x)
        rhat = split_gelman_rubin(x)
        mcse = x.std(ddof=1) / np.sqrt(ess)
        z = (x.mean() - ref["mean"]) / np.sqrt(mcse ** 2 + ref["mcse_mean"] ** 2)
        zs.append(abs(z))
        esss.append(ess)
        rhats.append(rhat)
        if not (abs(z) < 4 and rhat < 1.05 and ess >= 100):
            failures.append(f"{name}: mean {x.mean():.4g} (ref {ref['mean']:.4g}), z {z:.2f}, "
                            f"R-hat {rhat:.3f}, bulk ESS {ess:.0f}")
    return max(zs), min(esss), max(rhats), failures


@pytest.mark.parametrize(("backend_name", "posterior"), cases())
def test_nuts_recovers_the_reference_posterior(backend_name, posterior):
    device = os.environ.get("AGVI_TEST_DEVICE") or None
    try:
        B = make_backend(backend_name, precision="float64", device=device)
    except ValueError as exc:
        pytest.skip(f"backend {backend_name!r} cannot use device {device!r} here: {exc}")
    module, data, reference = load(posterior)
    eager = backend_name != "jax"
    with agvi.use_backend(B):
        kernel = NUTS(logdensity_fn=lambda theta: module.log_density(theta, data, B.xp))
        mcmc = MCMC(kernel, num_warmup=500 if eager else 1000,
                    num_samples=500 if eager else 1000, num_chains=2,
                    chain_method="sequential" if eager else "vectorized", progress_bar=False)
        mcmc.run(B.key(2024), init_params=B.zeros(module.DIM))
        draws = B.to_numpy(mcmc.get_samples(group_by_chain=True))
    assert np.all(np.isfinite(draws))
    max_z, min_ess, max_rhat, failures = check(draws, module, data, reference)
    print(f"{backend_name} {posterior}: max |z| {max_z:.2f}, min bulk ESS {min_ess:.0f}, "
          f"max R-hat {max_rhat:.3f}")
    assert not failures, "\n".join(failures)


def eight_schools(sigma, y=None):
    """The non-centred eight schools of posteriordb, as an agvi model."""
    mu = agvi.sample("mu", dist.Normal(0.0, 5.0))
    tau = agvi.sample("tau", dist.HalfCauchy(5.0))
    with agvi.plate("schools", sigma.shape[0]):
        theta_trans = agvi.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = agvi.deterministic("theta", mu + tau * theta_trans)
        agvi.sample("y", dist.Normal(theta, sigma), obs=y)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", _backends())
def test_nuts_on_a_model_recovers_eight_schools(backend_name):
    """NUTS(model=...) (handlers, bijectors, the default init_to_uniform) on the same
    posterior, with the settings of the log-density runs above."""
    device = os.environ.get("AGVI_TEST_DEVICE") or None
    try:
        B = make_backend(backend_name, precision="float64", device=device)
    except ValueError as exc:
        pytest.skip(f"backend {backend_name!r} cannot use device {device!r} here: {exc}")
    name = "eight_schools-eight_schools_noncentered"
    module, data, reference = load(name)
    eager = backend_name != "jax"
    with agvi.use_backend(B):
        mcmc = MCMC(NUTS(eight_schools), num_warmup=500 if eager else 1000,
                    num_samples=500 if eager else 1000, num_chains=2,
                    chain_method="sequential" if eager else "vectorized", progress_bar=False)
        mcmc.run(B.key(2024), data["sigma"], y=data["y"])
        samples = {k: B.to_numpy(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    draws = {f"theta[{j + 1}]": samples["theta"][..., j] for j in range(8)}
    draws.update(mu=samples["mu"], tau=samples["tau"])
    max_z, min_ess, max_rhat, failures = check(draws, module, data, reference)
    print(f"{backend_name} {name} (model): max |z| {max_z:.2f}, min bulk ESS {min_ess:.0f}, "
          f"max R-hat {max_rhat:.3f}")
    assert not failures, "\n".join(failures)
