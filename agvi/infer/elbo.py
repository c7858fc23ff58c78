"""Evidence lower bounds (ELBOs): the objectives of stochastic variational inference.

Each objective is a callable ``loss(key, params, model, guide, *args, **kwargs) -> Array``
of shape () that returns the *negative* ELBO estimated from ``num_particles`` draws of the
guide; :class:`~agvi.infer.svi.SVI` accepts any callable with that signature as a custom
objective. ``params`` are constrained values substituted into the guide's and the model's
:func:`~agvi.param` sites.

Particles
---------
With ``vectorize_particles=True`` the particles run under ``B.vmap`` over a batch of keys: on
JAX that is one vectorised computation; the NumPy and torch backends keep keys on the host and
their ``vmap`` over keys is a loop with the same numbers. With ``vectorize_particles=False`` a
plain Python loop (unrolled under ``jit``) is used on every backend.

Scaling (KL annealing, beta-VAE, mini-batch weights) goes through
:class:`agvi.handlers.scale` inside the model or guide; pass the factor as an Array argument so
that a changing value does not recompile on JAX.

References
----------
Ranganath, Gerrish and Blei (2014), "Black box variational inference".
Kingma and Welling (2014), "Auto-encoding variational Bayes".
Roeder, Wu and Duvenaud (2017), "Sticking the landing".
Li and Turner (2016), "Rényi divergence variational inference", eq. 5 (VR bound);
Burda, Grosse and Salakhutdinov (2016) (IWAE, alpha=0).
The class layout follows NumPyro's ``numpyro.infer.elbo``.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from ..handlers.handlers import replay, seed, substitute, trace
from ..handlers.util import site_log_prob
from .estimators import zero_with_grad

__all__ = ["ELBO", "RenyiELBO", "TraceMeanField_ELBO", "Trace_ELBO", "TraceGraph_ELBO"]


def _split2(B, key):
    keys = B.split(key, 2)
    return keys[0], keys[1]


def get_traces(key, params, model, guide, args, kwargs, stl: bool = False):
    """Run the guide, then the model replayed against the guide's draws.

    Parameters
    ----------
    key : Array, shape (2,)
    params : dict
        Constrained parameter values by name.
    model, guide : callable
    args : tuple
    kwargs : dict
    stl : bool
        Also return a trace of the guide run with stop-gradient params at the same values
        (for the path-derivative estimator), else None.

    Returns
    -------
    (guide_trace, model_trace, stl_guide_trace or None)
    """
    B = get_backend()
    k_guide, k_model = _split2(B, key)
    guide_tr = trace(substitute(seed(guide, k_guide), data=params)).get_trace(*args, **kwargs)
    model_tr = trace(replay(substitute(seed(model, k_model), data=params),
                            trace=guide_tr)).get_trace(*args, **kwargs)
    stl_tr = None
    if stl:
        frozen = B.tree_map(B.stop_gradient, params)
        stl_tr = trace(replay(substitute(seed(guide, k_guide), data=frozen),
                              trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr, stl_tr


def _is_latent(site):
    return site["type"] == "sample" and not site["is_observed"]


class ELBO:
    """Base class of the ELBO objectives.

    Parameters
    ----------
    num_particles : int
        Number of guide draws averaged per estimate (>= 1).
    vectorize_particles : bool
        Run the particles under ``B.vmap`` over keys (see the module notes) instead of a loop.

    Raises
    ------
    ValueError
        If ``num_particles`` is not a positive int.

    Notes
    -----
    Subclasses implement :meth:`particle_loss` (one particle's surrogate loss);
    :meth:`loss` averages it over particles.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) \
                or num_particles < 1:
            raise ValueError(f"{type(self).__name__}: num_particles must be a positive int, "
                             f"got {num_particles!r}")
        self.num_particles = num_particles
        self.vectorize_particles = bool(vectorize_particles)

    def particle_loss(self, key, params, model, guide, args, kwargs):
        """One particle's surrogate negative ELBO, Array of shape ()."""
        raise NotImplementedError

    def _per_particle(self, fn, key):
        """``fn(key_i)`` for each particle key, stacked along a new leading axis (n,)."""
        B = get_backend()
        n = self.num_particles
        if n == 1:
            return B.tree_map(lambda x: B.reshape(x, (1,) + B.shape(x)), fn(key))
        keys = B.split(key, n)
        if self.vectorize_particles:
            return B.vmap(fn)(keys)
        outs = [fn(keys[i]) for i in range(n)]
        return B.tree_map(lambda *xs: B.stack(xs, axis=0), *outs)

    def loss(self, key, params, model, guide, *args, **kwargs):
        """The negative ELBO averaged over particles.

        Parameters
        ----------
        key : Array, shape (2,)
        params : dict
            Constrained parameter values by name.
        model, guide : callable
        *args, **kwargs
            Passed to both model and guide.

        Returns
        -------
        Array, shape ()
        """
        B = get_backend()
        losses = self._per_particle(
            lambda k: self.particle_loss(k, params, model, guide, args, kwargs), key)
        return B.mean(losses)

    __call__ = loss


class Trace_ELBO(ELBO):
    """The standard ELBO, ``E_q[log p(x, z) - log q(z)]``, from guide and model traces.

    Parameters
    ----------
    num_particles : int
    vectorize_particles : bool
    stl : bool
        Sticking the landing (path derivative): stop the gradient through the guide's
        parameters inside ``log q`` (the draws still carry it). Unbiased, and zero variance
        when the guide equals the posterior (Roeder et al., 2017).
    path_derivative : bool
        Alias of ``stl``.

    Notes
    -----
    Reparameterisable guide sites use the pathwise gradient; sites whose distribution has no
    ``rsample`` add the score-function term ``(log p - log q) * grad log q(z_site)`` with the
    whole particle's ELBO as cost (for Rao-Blackwellised costs use :class:`TraceGraph_ELBO`).
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True,
                 stl: bool = False, path_derivative: bool = False):
        super().__init__(num_particles, vectorize_particles)
        self.stl = bool(stl or path_derivative)

    def particle_loss(self, key, params, model, guide, args, kwargs):
        B = get_backend()
        guide_tr, model_tr, stl_tr = get_traces(key, params, model, guide, args, kwargs,
                                                stl=self.stl)
        log_p = 0.0
        for site in model_tr.values():
            if site["type"] == "sample":
                log_p = log_p + B.sum(site_log_prob(site))
        log_q = 0.0
        score_lq = 0.0
        q_tr = stl_tr if self.stl else guide_tr
        for name, site in q_tr.items():
            if site["type"] != "sample":
                continue
            log_q = log_q + B.sum(site_log_prob(site))
            if _is_latent(site) and not site["fn"].has_rsample:
                score_lq = score_lq + B.sum(site_log_prob(guide_tr[name]))
        elbo = log_p - log_q
        if not isinstance(score_lq, float):
            elbo = elbo + B.stop_gradient(elbo) * zero_with_grad(B, score_lq)
        return -elbo


class TraceMeanField_ELBO(ELBO):
    """ELBO with the analytic KL for latent sites where the KL table has the pair.

    ``ELBO = E_q[sum_obs log p] - sum_sites KL(q_site || p_site)``, where each site's KL is
    analytic (:func:`agvi.distributions.kl.kl_divergence`) when registered, else the Monte
    Carlo term ``log q - log p`` at the draw. Valid when the guide is mean-field with respect
    to the model's dependency structure (as NumPyro's ``TraceMeanField_ELBO``); the KL of a site
    whose model distribution depends on other latents is conditional on their drawn values,
    which keeps the estimate unbiased.

    Parameters
    ----------
    num_particles : int
    vectorize_particles : bool

    Notes
    -----
    Masked sites, ``Delta`` guide sites (the auto-continuous guides) and sites without a
    registered pair fall back to the Monte Carlo term. Non-reparameterisable guide sites are
    not supported (use :class:`Trace_ELBO`).
    """

    def particle_loss(self, key, params, model, guide, args, kwargs):
        from ..distributions.kl import kl_divergence

        B = get_backend()
        guide_tr, model_tr, _ = get_traces(key, params, model, guide, args, kwargs)
        elbo = 0.0
        analytic = set()
        for name, site in model_tr.items():
            if site["type"] != "sample":
                continue
            if _is_latent(site) and name in guide_tr and site["mask"] is None \
                    and guide_tr[name]["mask"] is None:
                gsite = guide_tr[name]
                if type(gsite["fn"]).__name__ != "Delta":
                    try:
                        kl = kl_divergence(gsite["fn"], site["fn"])
                    except NotImplementedError:
                        kl = None
                    if kl is not None:
                        if site["scale"] is not None:
                            kl = kl * site["scale"]
                        elbo = elbo - B.sum(kl)
                        analytic.add(name)
                        continue
            elbo = elbo + B.sum(site_log_prob(site))
        for name, site in guide_tr.items():
            if site["type"] == "sample" and name not in analytic:
                if _is_latent(site) and not site["fn"].has_rsample:
                    raise NotImplementedError(
                        f"TraceMeanField_ELBO: guide site {name!r} is not reparameterisable; "
                        "use Trace_ELBO (score-function terms) for it")
                elbo = elbo - B.sum(site_log_prob(site))
        return -elbo


class RenyiELBO(ELBO):
    """The Rényi (variational Rényi) bound of order ``alpha``; IWAE at ``alpha=0``.

    ``L_alpha = 1/(1-alpha) * log( 1/K sum_k w_k^(1-alpha) )`` with
    ``w_k = p(x, z_k) / q(z_k)`` over ``K = num_particles`` draws (Li and Turner, 2016, eq. 5).

    Parameters
    ----------
    alpha : float
        The order; ``alpha != 1`` (``alpha -> 1`` is :class:`Trace_ELBO`).
    num_particles : int
        ``K >= 2`` for a bound tighter than the ELBO.
    vectorize_particles : bool

    Raises
    ------
    ValueError
        If ``alpha == 1``.
    NotImplementedError
        (at call) If a guide site is not reparameterisable.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2,
                 vectorize_particles: bool = True):
        if alpha == 1:
            raise ValueError("RenyiELBO: alpha must differ from 1; use Trace_ELBO for alpha=1")
        super().__init__(num_particles, vectorize_particles)
        self.alpha = float(alpha)

    def _log_weight(self, key, params, model, guide, args, kwargs):
        B = get_backend()
        guide_tr, model_tr, _ = get_traces(key, params, model, guide, args, kwargs)
        lw = 0.0
        for site in model_tr.values():
            if site["type"] == "sample":
                lw = lw + B.sum(site_log_prob(site))
        for name, site in guide_tr.items():
            if site["type"] == "sample":
                if _is_latent(site) and not site["fn"].has_rsample:
                    raise NotImplementedError(
                        f"RenyiELBO: guide site {name!r} is not reparameterisable")
                lw = lw - B.sum(site_log_prob(site))
        return lw

    def loss(self, key, params, model, guide, *args, **kwargs):
        B = get_backend()
        lw = self._per_particle(
            lambda k: self._log_weight(k, params, model, guide, args, kwargs), key)
        a = 1.0 - self.alpha
        bound = (B.logsumexp(a * lw) - math.log(self.num_particles)) / a
        return -bound

    __call__ = loss


def _rb_cost(B, lp, shared_dims, target_ndim):
    """Sum ``lp`` over every axis except the plate axes in ``shared_dims`` (negative ints),
    shaped to broadcast against an Array of rank ``target_ndim``."""
    shape = tuple(B.shape(lp))
    nd = len(shape)
    axes = tuple(i for i in range(nd) if (i - nd) not in shared_dims)
    c = B.sum(lp, axis=axes, keepdims=True) if axes else lp
    cshape = tuple(B.shape(c))
    if nd > target_ndim:
        c = B.reshape(c, cshape[nd - target_ndim:])
    elif nd < target_ndim:
        c = B.reshape(c, (1,) * (target_ndim - nd) + cshape)
    return c


class TraceGraph_ELBO(Trace_ELBO):
    """ELBO whose score-function terms are Rao-Blackwellised by program order and plates.

    Each non-reparameterisable guide site's score term uses as cost only the log-density terms
    that can depend on its draw: those of the sites recorded at or after it (guide sites in the
    guide's order, then the model-only sites, observations included), and, where a site shares
    a plate with it, only the matching slice of that plate (element ``i`` of a site in plate
    ``p`` is scored against element ``i`` of the other sites in ``p``). The whole particle's
    ELBO is the cost in :class:`Trace_ELBO`. The dropped terms are independent of the draw
    given its parents, so the estimator stays unbiased and its variance drops.

    Parameters
    ----------
    num_particles : int
    vectorize_particles : bool

    Notes
    -----
    Dependencies are assumed to follow program order and plate independence (as in Pyro's
    ``TraceGraph_ELBO``). Not yet done: learned or running-average baselines. The value is the
    plain ELBO estimate; only the gradient differs from :class:`Trace_ELBO`.

    References
    ----------
    Schulman, Heess, Weber and Abbeel (2015), "Gradient estimation using stochastic
    computation graphs", section 3 (surrogate loss, downstream costs).
    """

    def particle_loss(self, key, params, model, guide, args, kwargs):
        B = get_backend()
        guide_tr, model_tr, _ = get_traces(key, params, model, guide, args, kwargs)
        order = list(guide_tr) + [n for n in model_tr if n not in guide_tr]
        pos = {n: i for i, n in enumerate(order)}
        terms = []  # (position, plates {name: dim}, per-element log-density term)
        for name, site in model_tr.items():
            if site["type"] == "sample":
                terms.append((pos[name], {f.name: f.dim for f in site["cond_indep_stack"]},
                              site_log_prob(site)))
        for name, site in guide_tr.items():
            if site["type"] == "sample":
                terms.append((pos[name], {f.name: f.dim for f in site["cond_indep_stack"]},
                              -site_log_prob(site)))
        elbo = 0.0
        for _, _, t in terms:
            elbo = elbo + B.sum(t)
        surrogate = elbo
        for name, site in guide_tr.items():
            if not (_is_latent(site) and not site["fn"].has_rsample):
                continue
            lq = site_log_prob(site)
            plates = {f.name: f.dim for f in site["cond_indep_stack"]}
            nd = len(B.shape(lq))
            cost = 0.0
            for p, other_plates, t in terms:
                if p < pos[name]:
                    continue
                shared = {d for n, d in plates.items() if other_plates.get(n) == d}
                cost = cost + _rb_cost(B, t, shared, nd)
            surrogate = surrogate + B.sum(B.stop_gradient(cost) * zero_with_grad(B, lq))
        return -surrogate
