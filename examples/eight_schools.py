"""Eight schools with NUTS and with VI, on every installed backend.

The same model (``agvi.models.eight_schools``, the README's tour model) is fitted with NUTS and
with SVI (AutoNormal guide, Adam, Trace_ELBO) on each backend, and the posterior means of ``mu``
and ``tau`` are set against posteriordb's reference (long Stan runs: mu 4.41, tau 3.60).

Environment: ``AGVI_BACKEND=jax`` runs one backend only (default: every installed one);
``AGVI_EXAMPLES_QUICK=1`` makes the run short (as ``nox -s examples`` does).

    python examples/eight_schools.py
"""

import os
import time

import numpy as np

import agvi
from agvi.infer import MCMC, NUTS, SVI, AutoNormal, Trace_ELBO
from agvi.models import get_model
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
BACKENDS = [os.environ["AGVI_BACKEND"]] if os.environ.get("AGVI_BACKEND") else \
    agvi.available_backends()
WARMUP, SAMPLES, CHAINS = (100, 100, 2) if QUICK else (500, 1000, 4)
STEPS = 500 if QUICK else 3000

spec = get_model("eight_schools")
model = spec.model                       # eight_schools(sigma, y=None)
rows = []
for name in BACKENDS:
    with agvi.use_backend(name, precision="float64") as B:
        args, kwargs = spec.data()       # (sigma,), {"y": y} as this backend's arrays

        t0 = time.perf_counter()
        mcmc = MCMC(NUTS(model), num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS,
                    progress_bar=False)
        mcmc.run(agvi.random.key(0), *args, **kwargs)
        draws = {k: B.to_numpy(v) for k, v in mcmc.get_samples().items()}
        t_nuts = time.perf_counter() - t0
        if name == BACKENDS[0]:
            mcmc.print_summary()

        t0 = time.perf_counter()
        guide = AutoNormal(model)
        svi = SVI(model, guide, Adam(0.05), Trace_ELBO())
        result = svi.run(agvi.random.key(1), STEPS, *args, progress_bar=False, **kwargs)
        post = guide.sample_posterior(agvi.random.key(2), result.params, (2000,), *args,
                                      **kwargs)
        vi = {k: B.to_numpy(v) for k, v in post.items()}
        t_svi = time.perf_counter() - t0

        rows.append((name, draws["mu"].mean(), draws["tau"].mean(), t_nuts,
                     vi["mu"].mean(), vi["tau"].mean(), t_svi))

print("\nposterior means (reference: mu 4.41, tau 3.60)")
print(f"{'backend':8} {'NUTS mu':>8} {'NUTS tau':>9} {'time':>7}   {'SVI mu':>7} {'SVI tau':>8} "
      f"{'time':>7}")
for name, mu, tau, tn, vmu, vtau, ts in rows:
    print(f"{name:8} {mu:8.2f} {tau:9.2f} {tn:6.1f}s   {vmu:7.2f} {vtau:8.2f} {ts:6.1f}s")
# a loose sanity check (the quick run has few draws): the NUTS mean of mu is near 4.41
assert all(abs(r[1] - 4.41) < (2.5 if QUICK else 1.0) for r in rows), rows
assert all(np.isfinite(r[4]) for r in rows)
