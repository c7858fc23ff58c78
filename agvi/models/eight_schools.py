"""Eight schools: the effect of SAT coaching in eight high schools (Rubin 1981).

Each school ``j`` reports an estimated treatment effect ``y_j`` with a known standard error
``sigma_j``. The non-centred hierarchical model (the README's tour model, and posteriordb's
``eight_schools_noncentered``)::

    mu ~ Normal(0, 5)
    tau ~ HalfCauchy(5)
    theta_tilde_j ~ Normal(0, 1)                  j = 1..8
    theta_j = mu + tau * theta_tilde_j            (deterministic site "theta")
    y_j ~ Normal(theta_j, sigma_j)

The non-centred form avoids the funnel between ``tau`` and the school effects that makes the
centred form hard for HMC.

References
----------
Rubin (1981), "Estimation in parallel randomized experiments", Journal of Educational
Statistics 6(4), 377-401. Gelman, Carlin, Stern, Dunson, Vehtari and Rubin (2013), *Bayesian
Data Analysis*, 3rd ed., section 5.5 (table 5.2). The reference posterior summaries are those
of posteriordb's ``eight_schools-eight_schools_noncentered`` (long Stan NUTS runs: 10 chains,
10,000 kept draws; ``tests/data/posteriordb``).
"""

from __future__ import annotations

import numpy as np

from .. import distributions as dist
from ..handlers import deterministic, plate, sample
from . import ModelSpec

__all__ = ["SIGMA", "SPEC", "Y", "eight_schools", "load_data"]

#: Estimated coaching effects (SAT-V points), schools A-H.
Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
#: Their standard errors.
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def eight_schools(sigma, y=None):
    """The non-centred eight-schools model.

    Parameters
    ----------
    sigma : Array, shape (J,)
        Standard errors of the schools' estimates (positive).
    y : Array of shape (J,) or None
        The estimates; ``None`` draws them (prior predictive).

    Returns
    -------
    None
        Sites: ``mu`` (), ``tau`` () (positive), ``theta_tilde`` (J,), the deterministic
        ``theta`` (J,) and the observed ``obs`` (J,).
    """
    mu = sample("mu", dist.Normal(0.0, 5.0))
    tau = sample("tau", dist.HalfCauchy(5.0))
    with plate("schools", sigma.shape[0]):
        theta_tilde = sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = deterministic("theta", mu + tau * theta_tilde)
        sample("obs", dist.Normal(theta, sigma), obs=y)


def load_data():
    """``((sigma,), {"y": y})`` as float64 NumPy arrays of shape (8,)."""
    return (np.array(SIGMA),), {"y": np.array(Y)}


# posteriordb's reference (eight_schools-eight_schools_noncentered): mean, sd, mcse of the mean
_REFERENCE = {
    "mu": {"mean": 4.4105183369549295, "sd": 3.3092964767263533, "mcse": 0.03303747059509169},
    "tau": {"mean": 3.6020595236405932, "sd": 3.1984776709766325,
            "mcse": 0.031861513564070555},
}

SPEC = ModelSpec(
    name="eight_schools",
    model=eight_schools,
    load_data=load_data,
    description="Rubin's eight schools (SAT coaching effects), non-centred hierarchy",
    methods=("nuts", "hmc", "svi"),
    defaults={"num_warmup": 500, "num_samples": 500, "num_chains": 4, "num_steps": 2000,
              "learning_rate": 0.05},
    source="Rubin (1981), J. Educational Statistics 6(4); Gelman et al., BDA3, table 5.2",
    reference=_REFERENCE,
)
