"""Posterior (and prior) predictive draws from a model.

Vectorised with ``B.vmap`` over draws (one seeded model run per draw): a single vectorised
computation on JAX; on the NumPy and torch backends, whose keys live on the host, the same
numbers from a loop (see :mod:`agvi.handlers.primitives`).

References
----------
The interface follows NumPyro's ``numpyro.infer.Predictive``.
"""

from __future__ import annotations

from ..backends import get_backend, use_backend
from ..handlers.handlers import seed, substitute, trace

__all__ = ["Predictive"]


class Predictive:
    """Draws of a model's sites given posterior samples, a guide, or nothing (the prior).

    Parameters
    ----------
    model : callable
    guide : callable or None
        A guide (with ``params``): each draw runs the guide, then the model given its latents.
    params : dict or None
        Constrained parameter values substituted into the guide and the model.
    posterior_samples : dict or None
        ``name -> Array`` with a leading axis of draws (S,): each model run substitutes one.
    num_samples : int or None
        The number of draws (required without ``posterior_samples``; must equal S with them).
    return_sites : sequence of str or None
        Sites to return. Default: every sample site not in ``posterior_samples`` (with a guide:
        not drawn by the guide) and every deterministic site.

    Raises
    ------
    ValueError
        If neither ``posterior_samples`` nor ``num_samples`` is given, they disagree, or both
        ``guide`` and ``posterior_samples`` are given.

    Examples
    --------
    >>> import agvi, agvi.distributions as dist
    >>> from agvi.infer.predictive import Predictive
    >>> def model():
    ...     agvi.sample("x", dist.Normal(0.0, 1.0))
    >>> Predictive(model, num_samples=4)(agvi.random.key(0))["x"].shape
    (4,)
    """

    def __init__(self, model, guide=None, params=None, posterior_samples=None,
                 num_samples=None, return_sites=None):
        if guide is not None and posterior_samples is not None:
            raise ValueError("Predictive: give either `guide` or `posterior_samples`, not both")
        B = get_backend()
        if posterior_samples is not None:
            sizes = {B.shape(v)[0] for v in posterior_samples.values()}
            if len(sizes) != 1:
                raise ValueError(f"Predictive: posterior_samples must share one leading size, "
                                 f"got {sorted(sizes)}")
            (s,) = sizes
            if num_samples is not None and num_samples != s:
                raise ValueError(f"Predictive: num_samples={num_samples} but posterior_samples "
                                 f"have {s} draws")
            num_samples = s
        if num_samples is None:
            raise ValueError("Predictive: give `num_samples` (or `posterior_samples`)")
        self.model = model
        self.guide = guide
        self.params = {} if params is None else dict(params)
        self.posterior_samples = posterior_samples
        self.num_samples = int(num_samples)
        self.return_sites = None if return_sites is None else list(return_sites)
        self.B = B
        self._fn = None

    def _one(self, key, sample, args, kwargs):
        B = self.B
        k_guide, k_model = B.split(key, 2)
        latent = dict(sample) if sample is not None else {}
        if self.guide is not None:
            gtr = trace(substitute(seed(self.guide, k_guide), data=self.params)).get_trace(
                *args, **kwargs)
            latent = {n: s["value"] for n, s in gtr.items()
                      if s["type"] == "sample" and not s["is_observed"]
                      and not s["infer"].get("is_auxiliary")}
        data = {**self.params, **latent}
        tr = trace(substitute(seed(self.model, k_model), data=data)).get_trace(*args, **kwargs)
        if self.return_sites is not None:
            names = self.return_sites
        else:
            names = [n for n, s in tr.items()
                     if (s["type"] == "sample" and n not in latent) or s["type"] == "deterministic"]
        return {n: tr[n]["value"] for n in names}

    def __call__(self, key, *args, **kwargs):
        """Draw.

        Parameters
        ----------
        key : Array, shape (2,) or int
        *args, **kwargs
            The model's arguments (e.g. covariates, with the observations set to None).

        Returns
        -------
        dict ``name -> Array`` of shape ``(num_samples,) + site shape``.
        """
        from ..random import sanitize_seed

        with use_backend(self.B):
            B = self.B
            key = sanitize_seed(key)
            keys = B.split(key, self.num_samples)
            if self._fn is None:
                # compiled once per Predictive object where the backend compiles (JAX)
                self._fn = B.jit(lambda ks, post, a, kw: B.vmap(
                    lambda k, s: self._one(k, s, a, kw),
                    in_axes=(0, None if post is None else 0))(ks, post))
            return self._fn(keys, self.posterior_samples, args, kwargs)
