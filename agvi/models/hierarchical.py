"""A hierarchical model on real data: Efron and Morris's (1975) baseball players.

18 major-league players' hits in their first 45 at-bats of the 1970 season. Each player's
batting ability is a log-odds ``alpha_j``, partially pooled towards the league's ``mu``
(Carpenter's logit-normal model, non-centred)::

    mu ~ Normal(-1, 1)                       league log-odds
    sigma ~ HalfNormal(1)                    spread of abilities
    alpha_std_j ~ Normal(0, 1)               j = 1..18
    alpha_j = mu + sigma * alpha_std_j
    theta_j = expit(alpha_j)                 (deterministic site "theta": chance of a hit)
    hits_j ~ Binomial(45, logits = alpha_j)

With 45 at-bats each the raw averages (0.156 to 0.400) overstate the spread; the posterior
shrinks them towards the mean, as the James-Stein estimator of Efron and Morris does.

References
----------
Efron and Morris (1975), "Data analysis using Stein's estimator and its generalizations",
Journal of the American Statistical Association 70(350), 311-319, table 1 (the hits). Carpenter
(2016), "Hierarchical partial pooling for repeated binary trials", Stan case study (the model).
"""

from __future__ import annotations

import numpy as np

from .. import distributions as dist
from ..backends import get_backend
from ..handlers import deterministic, plate, sample
from . import ModelSpec

__all__ = ["AT_BATS", "HITS", "PLAYERS", "SPEC", "baseball", "load_data"]

#: The players, in Efron and Morris's order (highest early average first).
PLAYERS = (
    "Roberto Clemente", "Frank Robinson", "Frank Howard", "Jay Johnstone", "Ken Berry",
    "Jim Spencer", "Don Kessinger", "Luis Alvarado", "Ron Santo", "Ron Swoboda",
    "Rico Petrocelli", "Ellie Rodriguez", "George Scott", "Del Unser", "Billy Williams",
    "Bert Campaneris", "Thurman Munson", "Max Alvis",
)
#: Hits in the first 45 at-bats of the 1970 season (Efron and Morris 1975, table 1).
HITS = (18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7)
#: At-bats behind each count.
AT_BATS = 45


def baseball(at_bats, hits=None):
    """Logit-normal partial pooling of binomial success rates (non-centred).

    Parameters
    ----------
    at_bats : Array, shape (J,)
        Trials per player (floats or ints, positive).
    hits : Array of shape (J,) or None
        Successes per player; ``None`` draws them.

    Returns
    -------
    None
        Sites: ``mu`` (), ``sigma`` () (positive), ``alpha_std`` (J,), the deterministic
        ``theta`` (J,) and the observed ``hits`` (J,).
    """
    mu = sample("mu", dist.Normal(-1.0, 1.0))
    sigma = sample("sigma", dist.HalfNormal(1.0))
    with plate("players", at_bats.shape[0]):
        alpha_std = sample("alpha_std", dist.Normal(0.0, 1.0))
        alpha = mu + sigma * alpha_std
        deterministic("theta", get_backend().expit(alpha))
        sample("hits", dist.Binomial(at_bats, logits=alpha), obs=hits)


def load_data():
    """``((at_bats,), {"hits": hits})``, float64 arrays of shape (18,)."""
    return (np.full(len(HITS), float(AT_BATS)),), {"hits": np.array(HITS, dtype=np.float64)}


SPEC = ModelSpec(
    name="baseball",
    model=baseball,
    load_data=load_data,
    description="Efron-Morris baseball: 18 players' hits in 45 at-bats, logit-normal partial "
                "pooling",
    methods=("nuts", "hmc", "svi"),
    defaults={"num_warmup": 500, "num_samples": 500, "num_chains": 4, "num_steps": 2000,
              "learning_rate": 0.05},
    source="Efron and Morris (1975), JASA 70(350), table 1",
)
