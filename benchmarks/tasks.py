"""The three benchmark targets and the SVI model, written once per framework.

Every target is defined exactly as in the project's benchmark definitions (float64):

- ``eight_schools`` (non-centred, d = 10): ``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``,
  ``theta_tilde ~ Normal(0, 1)`` (8), ``y ~ Normal(mu + tau * theta_tilde, sigma)``; unconstrained
  coordinates ``(mu, log tau, theta_tilde)`` with the log-Jacobian ``log tau`` of ``tau = exp``;
- ``logistic`` (d = 25): seed-0 synthetic data (N = 1000, D = 25), ``w ~ Normal(0, 1)``,
  ``y ~ Bernoulli(logits = X @ w)``, no intercept;
- ``gaussian100`` (d = 100): ``x ~ Normal(0, sd)``, ``sd = logspace(-2, 2, 100)``.

A log density here is ``f(z, *data) -> scalar`` for one point ``z`` of shape (d,); ``data(task)``
gives the ``data`` tuple as NumPy arrays (the harness converts them to the framework's arrays and
passes them as arguments, so that compiled programs take them as inputs, as a user's would).

Frameworks (``logdensity(task, lib)``):

- ``"agvi"``: agvi distributions on the active agvi backend (what an agvi user writes);
- ``"numpyro"``: ``numpyro.distributions``; ``"jax"``: plain ``jax.numpy`` / ``jax.scipy.stats``
  (BlackJAX's examples; the JAX floor);
- ``"pyro"``: ``pyro.distributions``; ``"torch"``: plain torch math (the torch floor);
- ``"autograd"``: plain ``autograd.numpy`` (the autograd floor).

Frameworks are imported inside the functions: importing this module imports NumPy only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DIMS", "TASKS", "data", "logdensity", "logistic_data", "svi_model"]

TASKS = ("eight_schools", "logistic", "gaussian100")
DIMS = {"eight_schools": 10, "logistic": 25, "gaussian100": 100}

EIGHT_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
EIGHT_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
GAUSS_SD = np.logspace(-2, 2, 100)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# the Normal constants of eight schools: mu (1), theta_tilde (8) and y (8); and Normal(0, 5)'s log 5
_EIGHT_CONST = -17 * HALF_LOG_2PI - math.log(5.0)


def logistic_data(n: int = 1000, d: int = 25):
    """The seed-0 synthetic logistic-regression data.

    Returns
    -------
    X : numpy.ndarray, shape (n, d)
    y : numpy.ndarray, shape (n,), float 0.0 / 1.0
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d))
    w_true = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(float)
    return X, y


def data(task: str) -> tuple:
    """The data arguments of ``task``'s log densities, a tuple of float64 NumPy arrays.

    Raises
    ------
    ValueError
        If ``task`` is unknown.
    """
    if task == "eight_schools":
        return (EIGHT_Y, EIGHT_SIGMA)
    if task == "logistic":
        return logistic_data()
    if task == "gaussian100":
        return (GAUSS_SD,)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# --------------------------------------------------------------------------- log densities
def _agvi(task):
    import agvi
    import agvi.distributions as dist

    B = agvi.get_backend()
    if task == "eight_schools":
        def f(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = B.exp(log_tau)
            lp = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfCauchy(5.0).log_prob(tau)
            lp = lp + log_tau + B.sum(dist.Normal(0.0, 1.0).log_prob(tt))
            return lp + B.sum(dist.Normal(mu + tau * tt, sigma).log_prob(y))
    elif task == "logistic":
        def f(w, X, y):
            lp = B.sum(dist.Normal(0.0, 1.0).log_prob(w))
            return lp + B.sum(dist.Bernoulli(logits=B.matmul(X, w)).log_prob(y))
    else:
        def f(x, sd):
            return B.sum(dist.Normal(0.0, sd).log_prob(x))
    return f


def _numpyro(task):
    import jax.numpy as jnp
    import numpyro.distributions as nd

    if task == "eight_schools":
        def f(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = jnp.exp(log_tau)
            lp = nd.Normal(0.0, 5.0).log_prob(mu) + nd.HalfCauchy(5.0).log_prob(tau) + log_tau
            lp = lp + nd.Normal(0.0, 1.0).log_prob(tt).sum()
            return lp + nd.Normal(mu + tau * tt, sigma).log_prob(y).sum()
    elif task == "logistic":
        def f(w, X, y):
            return (nd.Normal(0.0, 1.0).log_prob(w).sum()
                    + nd.Bernoulli(logits=X @ w).log_prob(y).sum())
    else:
        def f(x, sd):
            return nd.Normal(0.0, sd).log_prob(x).sum()
    return f


def _jax(task):
    import jax
    import jax.numpy as jnp
    from jax.scipy import stats

    if task == "eight_schools":
        def f(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = jnp.exp(log_tau)
            lp = stats.norm.logpdf(mu, 0.0, 5.0) + stats.cauchy.logpdf(tau, 0.0, 5.0)
            lp = lp + math.log(2.0) + log_tau + stats.norm.logpdf(tt).sum()
            return lp + stats.norm.logpdf(y, mu + tau * tt, sigma).sum()
    elif task == "logistic":
        def f(w, X, y):
            logits = X @ w
            return (-0.5 * jnp.dot(w, w) - w.shape[0] * HALF_LOG_2PI
                    + jnp.sum(y * logits - jax.nn.softplus(logits)))
    else:
        def f(x, sd):
            return stats.norm.logpdf(x, 0.0, sd).sum()
    return f


def _pyro(task):
    import pyro.distributions as pd
    import torch

    if task == "eight_schools":
        normal5, halfcauchy, std = pd.Normal(0.0, 5.0), pd.HalfCauchy(5.0), pd.Normal(0.0, 1.0)

        def f(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = torch.exp(log_tau)
            lp = normal5.log_prob(mu) + halfcauchy.log_prob(tau) + log_tau
            lp = lp + std.log_prob(tt).sum()
            return lp + pd.Normal(mu + tau * tt, sigma).log_prob(y).sum()
    elif task == "logistic":
        def f(w, X, y):
            return (pd.Normal(0.0, 1.0).log_prob(w).sum()
                    + pd.Bernoulli(logits=X @ w).log_prob(y).sum())
    else:
        def f(x, sd):
            return pd.Normal(0.0, sd).log_prob(x).sum()
    return f


def _plain(task, xp, softplus):
    """The log density in plain array math: ``xp`` has ``exp``, ``log``, ``log1p`` and ``sum``
    (the torch or autograd.numpy module); ``softplus(x) = log(1 + exp(x))``."""
    if task == "eight_schools":
        log_c = math.log(2.0 / (math.pi * 5.0))

        def f(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = xp.exp(log_tau)
            lp = -0.5 * (mu / 5.0) ** 2 + log_c - xp.log1p((tau / 5.0) ** 2) + log_tau
            lp = lp - 0.5 * xp.sum(tt * tt)
            r = (y - mu - tau * tt) / sigma
            return lp - 0.5 * xp.sum(r * r) - xp.sum(xp.log(sigma)) + _EIGHT_CONST
    elif task == "logistic":
        def f(w, X, y):
            logits = X @ w
            return (-0.5 * xp.sum(w * w) - w.shape[0] * HALF_LOG_2PI
                    + xp.sum(y * logits - softplus(logits)))
    else:
        def f(x, sd):
            r = x / sd
            return -0.5 * xp.sum(r * r) - xp.sum(xp.log(sd)) - x.shape[0] * HALF_LOG_2PI
    return f


def _torch(task):
    import torch
    import torch.nn.functional as F

    return _plain(task, torch, F.softplus)


def _autograd(task):
    import autograd.numpy as anp

    return _plain(task, anp, lambda x: anp.logaddexp(0.0, x))


_BUILDERS = {"agvi": _agvi, "numpyro": _numpyro, "jax": _jax, "pyro": _pyro, "torch": _torch,
             "autograd": _autograd}


def logdensity(task: str, lib: str):
    """The unconstrained log density of ``task`` written with ``lib``: ``f(z, *data(task))``.

    Parameters
    ----------
    task : {"eight_schools", "logistic", "gaussian100"}
    lib : {"agvi", "numpyro", "jax", "pyro", "torch", "autograd"}
        ``"agvi"`` uses the agvi backend active at this call.

    Returns
    -------
    callable
        ``f(z, *data) -> scalar`` for ``z`` of shape ``(DIMS[task],)``.

    Raises
    ------
    ValueError
        If ``task`` or ``lib`` is unknown.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if lib not in _BUILDERS:
        raise ValueError(f"lib must be one of {sorted(_BUILDERS)}, got {lib!r}")
    return _BUILDERS[lib](task)


# --------------------------------------------------------------------------- the SVI model
def svi_model(lib: str):
    """The logistic-regression model as a probabilistic program of ``lib``.

    ``model(X, y)`` with ``X`` (N, D) and ``y`` (N,): ``w ~ Normal(0, 1)`` (D independent
    coordinates, one site ``"w"``), ``y ~ Bernoulli(logits = X @ w)`` in a plate of size N.

    Parameters
    ----------
    lib : {"agvi", "numpyro", "pyro"}

    Raises
    ------
    ValueError
        If ``lib`` is unknown.
    """
    if lib == "agvi":
        import agvi
        import agvi.distributions as dist

        B = agvi.get_backend()

        def model(X, y):
            d = B.shape(X)[1]
            zeros = B.zeros((d,), dtype=B.dtype_of(X))
            w = agvi.sample("w", dist.Normal(zeros, 1.0).to_event(1))
            with agvi.plate("data", B.shape(X)[0]):
                agvi.sample("y", dist.Bernoulli(logits=B.matmul(X, w)), obs=y)
        return model
    if lib == "numpyro":
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        def model(X, y):
            w = numpyro.sample("w", nd.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
            with numpyro.plate("data", X.shape[0]):
                numpyro.sample("y", nd.Bernoulli(logits=X @ w), obs=y)
        return model
    if lib == "pyro":
        import pyro
        import pyro.distributions as pd
        import torch

        def model(X, y):
            w = pyro.sample("w", pd.Normal(torch.zeros(X.shape[1], dtype=X.dtype),
                                           1.0).to_event(1))
            logits = w @ X.T
            if w.dim() > 1:
                # vectorised particles: w is (P, 1, D), its 1 in the data plate's dim -1
                logits = logits.squeeze(-2)
            with pyro.plate("data", X.shape[0]):
                pyro.sample("y", pd.Bernoulli(logits=logits), obs=y)
        return model
    raise ValueError(f"lib must be 'agvi', 'numpyro' or 'pyro', got {lib!r}")
