"""A custom variational objective: any callable ``loss(key, params, model, guide, *args,
**kwargs)`` can drive ``SVI``.

Two objectives written by hand with the effect handlers, on the eight-schools model:

- ``hand_elbo``: the negative ELBO with K particles, ``-mean_k [log p(x, z_k) - log q(z_k)]``
  with ``z_k ~ q`` (run the guide seeded, replay the model on its draws). Its mean over keys
  agrees with ``Trace_ELBO(num_particles=K)``; we check that within Monte Carlo error.
- ``iwae_loss``: the importance-weighted bound of Burda, Grosse and Salakhutdinov (2016),
  ``-log mean_k exp(log p(x, z_k) - log q(z_k))``, tighter than the ELBO for K > 1.

Environment: ``AGVI_BACKEND`` (default numpy), ``AGVI_EXAMPLES_QUICK=1`` for a short run.

    python examples/custom_elbo.py
"""

import math
import os

import numpy as np

import agvi
from agvi.handlers import replay, seed, substitute, trace
from agvi.handlers.util import trace_log_prob
from agvi.infer import SVI, AutoNormal, Trace_ELBO
from agvi.models import get_model
from agvi.optim import Adam

QUICK = os.environ.get("AGVI_EXAMPLES_QUICK", "0") not in ("", "0")
agvi.set_backend(os.environ.get("AGVI_BACKEND") or "numpy", precision="float64")
B = agvi.get_backend()
K = 4
STEPS = 300 if QUICK else 3000

spec = get_model("eight_schools")
model = spec.model
args, kwargs = spec.data()


def log_weights(key, params, model, guide, *args, **kwargs):
    """``log p(x, z_k) - log q(z_k)`` for K draws ``z_k ~ q`` (a list of scalar Arrays)."""
    out = []
    for k in B.split(key, K):
        guide_tr = trace(substitute(seed(guide, k), data=params)).get_trace(*args, **kwargs)
        model_tr = trace(replay(substitute(model, data=params), trace=guide_tr)).get_trace(
            *args, **kwargs)
        out.append(trace_log_prob(model_tr) - trace_log_prob(guide_tr))
    return out


def hand_elbo(key, params, model, guide, *args, **kwargs):
    """The negative K-particle ELBO."""
    return -sum(log_weights(key, params, model, guide, *args, **kwargs)) / K


def iwae_loss(key, params, model, guide, *args, **kwargs):
    """The negative importance-weighted bound (log-mean-exp of the K log weights)."""
    w = B.stack(log_weights(key, params, model, guide, *args, **kwargs))
    return -(B.logsumexp(w) - math.log(K))


# 1. the hand-written ELBO estimates what Trace_ELBO estimates: same mean over many keys
guide = AutoNormal(model)
svi = SVI(model, guide, Adam(0.05), Trace_ELBO(num_particles=K))
state = svi.init(agvi.random.key(0), *args, **kwargs)
params = svi.get_params(state)
n = 50 if QUICK else 400
ours = np.array([float(hand_elbo(agvi.random.key(i), params, model, guide, *args, **kwargs))
                 for i in range(n)])
ref = np.array([float(Trace_ELBO(num_particles=K)(agvi.random.key(10_000 + i), params, model,
                                                    guide, *args, **kwargs)) for i in range(n)])
se = math.sqrt(ours.var(ddof=1) / n + ref.var(ddof=1) / n)
print(f"at the initial guide: hand-written loss {ours.mean():.2f}, Trace_ELBO "
      f"{ref.mean():.2f} (difference {abs(ours.mean() - ref.mean()) / se:.1f} standard errors)")
assert abs(ours.mean() - ref.mean()) < 5 * se

# 2. each objective drives SVI as it is
for name, loss in (("hand-written ELBO", hand_elbo), ("IWAE bound", iwae_loss)):
    guide = AutoNormal(model)
    svi = SVI(model, guide, Adam(0.05), loss)
    result = svi.run(agvi.random.key(1), STEPS, *args, progress_bar=False, **kwargs)
    losses = B.to_numpy(result.losses)
    med = {k: float(B.to_numpy(v)) for k, v in guide.median(result.params).items()
           if k in ("mu", "tau")}
    print(f"{name:18}: loss {losses[:20].mean():7.2f} -> {losses[-100:].mean():6.2f}; "
          f"posterior median mu {med['mu']:.2f}, tau {med['tau']:.2f}")
    assert np.isfinite(losses[-100:]).all()
