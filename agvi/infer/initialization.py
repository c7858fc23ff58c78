"""Initialisation strategies for the latent sites of autoguides.

A strategy is a callable ``init_fn(site, key) -> Array`` that returns a *constrained* initial
value (shape of the site's value) for the latent sample site ``site`` (a site dict of a model
trace), using the random key ``key`` (Array, shape (2,)).

>>> import agvi, agvi.distributions as dist
>>> from agvi.infer.initialization import init_to_median
>>> site = {"name": "x", "fn": dist.Normal(3.0, 1.0), "value": None}
>>> round(float(init_to_median(num_samples=101)(site, agvi.random.key(0))), 1)
3.0

References
----------
The strategies follow NumPyro's ``numpyro.infer.initialization``.
"""

from __future__ import annotations

from ..backends import get_backend
from ..distributions.transforms import biject_to

__all__ = ["init_to_median", "init_to_sample", "init_to_uniform", "init_to_value"]


def _draw(fn, key, sample_shape=()):
    return fn.rsample(key, sample_shape) if fn.has_rsample else fn.sample(key, sample_shape)


def init_to_uniform(radius: float = 2.0):
    """Uniform on ``(-radius, radius)`` in unconstrained space, mapped onto the support.

    Parameters
    ----------
    radius : float
        Positive.

    Returns
    -------
    callable ``init_fn(site, key) -> Array`` (shape of the site's value).

    Raises
    ------
    ValueError
        If ``radius`` is not positive.
    """
    if not radius > 0:
        raise ValueError(f"init_to_uniform: radius must be positive, got {radius!r}")

    def init_fn(site, key):
        B = get_backend()
        k1, k2 = B.split(key, 2)
        fn = site["fn"]
        t = biject_to(fn.support)
        u0 = t.inverse(B.stop_gradient(_draw(fn, k1)))
        u = B.uniform(k2, B.shape(u0), minval=-radius, maxval=radius)
        return t(u)

    return init_fn


def init_to_median(num_samples: int = 15):
    """The elementwise median of ``num_samples`` draws from the site's (prior) distribution.

    Parameters
    ----------
    num_samples : int
        Positive.

    Returns
    -------
    callable ``init_fn(site, key) -> Array``.

    Notes
    -----
    The median is taken in unconstrained space (elementwise) and mapped back, so the value
    is always inside the support (also for simplex- or matrix-valued sites).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"init_to_median: num_samples must be a positive int, "
                         f"got {num_samples!r}")

    def init_fn(site, key):
        B = get_backend()
        fn = site["fn"]
        t = biject_to(fn.support)
        u = t.inverse(B.stop_gradient(_draw(fn, key, (num_samples,))))
        med = B.sort(u, axis=0)[num_samples // 2] if num_samples % 2 else \
            0.5 * (B.sort(u, axis=0)[num_samples // 2 - 1] + B.sort(u, axis=0)[num_samples // 2])
        return t(med)

    return init_fn


def init_to_sample():
    """One draw from the site's (prior) distribution.

    Returns
    -------
    callable ``init_fn(site, key) -> Array``.
    """
    def init_fn(site, key):
        return get_backend().stop_gradient(_draw(site["fn"], key))

    return init_fn


def init_to_value(values: dict | None = None, fallback=None):
    """Given constrained values by site name; other sites use ``fallback``.

    Parameters
    ----------
    values : dict
        ``name -> Array`` of the site's shape, inside its support.
    fallback : callable or None
        The strategy for the other sites (default :func:`init_to_uniform`).

    Returns
    -------
    callable ``init_fn(site, key) -> Array``.
    """
    values = {} if values is None else dict(values)
    fallback = init_to_uniform() if fallback is None else fallback

    def init_fn(site, key):
        if site["name"] in values:
            B = get_backend()
            v = values[site["name"]]
            return v if B.is_array(v) else B.asarray(v)
        return fallback(site, key)

    return init_fn
