"""Whole NUTS runs agree draw for draw across backends (issue: MCMC, "Tests").

Every backend runs the same 50 NUTS transitions of 2 chains on the non-centred eight schools
(Student-t likelihood) from the same start, fed the NumPy oracle's noise (SharedNoise), in
float64, with a fixed step size and unit metric. Positions agree at rtol 1e-8 after 50
transitions; tree depths, step counts and divergences agree exactly.

With warmup on, the runs are not compared: dual averaging feeds each acceptance statistic back
into the step size, which amplifies the last-digit differences of the gradients (measured: 1e-6
relative in the adapted step size after 60 warmup transitions, torch and JAX against NumPy).
"""

from __future__ import annotations

import numpy as np

import agvi
from agvi.infer import MCMC, NUTS

from .test_backend_agreement import Z0, schools_logp


def nuts_run(B, z0):
    kernel = NUTS(logdensity_fn=lambda z: schools_logp(B, z), step_size=0.3,
                  adapt_step_size=False, adapt_mass_matrix=False)
    mcmc = MCMC(kernel, num_warmup=0, num_samples=50, num_chains=2, progress_bar=False)
    mcmc.run(agvi.random.key(11), init_params=B.stack([z0, 0.5 * z0]))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    out = {"position": mcmc.get_samples(group_by_chain=True),
           "tree_depth": extra["tree_depth"], "num_steps": extra["num_steps"],
           "diverging": extra["diverging"]}
    return out


def test_nuts_transitions_agree(agree):
    # integer and boolean leaves (tree depths, step counts, divergences) are compared exactly
    res = agree(lambda B, z: nuts_run(B, z), Z0, rtol=1e-8, atol=1e-10)
    depth, steps = np.asarray(res["tree_depth"]), np.asarray(res["num_steps"])
    assert depth.shape == (2, 50) and steps.min() >= 1
    assert len(np.unique(depth)) > 1, "the run should build trees of several depths"
