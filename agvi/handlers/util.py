"""Log densities of models and the maps between constrained and unconstrained parameters.

Conventions (as NumPyro): a model's sample and param sites hold *constrained* values. An
inference algorithm works with unconstrained values ``u`` and maps them onto each site's support
with ``biject_to(support)(u)`` (:func:`constrain_fn`); :func:`potential_energy` adds the
log-Jacobian of that map.

Examples
--------
>>> import agvi, agvi.distributions as dist
>>> from agvi.handlers.util import log_density
>>> def model():
...     agvi.sample("x", dist.Normal(0.0, 1.0))
>>> lp, tr = log_density(model, (), {}, {"x": 0.0})
>>> round(float(lp), 6)
-0.918939
"""

from __future__ import annotations

from ..backends import get_backend
from ..distributions.transforms import biject_to
from .handlers import substitute, trace

__all__ = [
    "constrain_fn", "log_density", "potential_energy", "site_log_prob", "trace_log_prob",
    "transform_fn", "unconstrain_fn",
]


def _apply_mask(B, lp, mask):
    if mask is None or mask is True:
        return lp
    if mask is False:
        return B.zeros_like(lp)
    return B.where(mask, lp, B.zeros_like(lp))


def site_log_prob(site, scaled: bool = True):
    """The log-probability of a sample site's value, masked and (by default) scaled.

    Parameters
    ----------
    site : dict
        A sample site of a :class:`~agvi.handlers.handlers.Trace`.
    scaled : bool
        Multiply by ``site["scale"]`` (plate subsampling and :class:`~agvi.handlers.scale`).

    Returns
    -------
    Array, shape ``sample_shape + batch_shape`` of the site (broadcast with its mask)
        ``fn.log_prob(value)``, zero where ``site["mask"]`` is False, times ``site["scale"]``.
    """
    fn = site["fn"]
    B = fn.B
    lp = _apply_mask(B, fn.log_prob(site["value"]), site["mask"])
    if scaled and site["scale"] is not None:
        lp = lp * site["scale"]
    return lp


def trace_log_prob(tr, site_filter=None):
    """Sum of :func:`site_log_prob` over the sample sites of the trace ``tr``.

    Parameters
    ----------
    tr : Trace
    site_filter : callable or None
        ``site_filter(name, site) -> bool``; default every sample site.

    Returns
    -------
    Array, shape ()
        Zero (of the active backend's float dtype) when no site is selected.
    """
    total = None
    for name, site in tr.items():
        if site["type"] != "sample" or (site_filter is not None and not site_filter(name, site)):
            continue
        fn = site["fn"]
        term = fn.B.sum(site_log_prob(site))
        total = term if total is None else total + term
    return get_backend().zeros(()) if total is None else total


def log_density(model, model_args=(), model_kwargs=None, params=None):
    """The log joint density of ``model`` with the sites in ``params`` fixed.

    Parameters
    ----------
    model : callable
    model_args : tuple
    model_kwargs : dict or None
    params : dict or None
        Constrained values by site name (sample and param sites), substituted into the model.

    Returns
    -------
    (log_joint, trace)
        ``log_joint``: Array of shape (), the sum over sample sites (latent and observed, factors
        included) of their log-probabilities, masked and scaled (plate subsampling,
        :class:`~agvi.handlers.scale`); ``trace``: the model's Trace.

    Raises
    ------
    RuntimeError
        If a latent site is missing from ``params`` and no :class:`~agvi.handlers.seed` around
        the model gives it a key.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    fn = model if params is None else substitute(model, data=params)
    tr = trace(fn).get_trace(*model_args, **model_kwargs)
    return trace_log_prob(tr), tr


def transform_fn(transforms: dict, params: dict, invert: bool = False) -> dict:
    """Apply ``transforms[name]`` (or its inverse) to ``params[name]``; other entries pass.

    Parameters
    ----------
    transforms : dict
        ``name -> Transform``.
    params : dict
        ``name -> Array``.
    invert : bool
        Apply ``t.inverse`` instead of ``t``.

    Returns
    -------
    dict
        A new dict with the same keys as ``params``.
    """
    out = {}
    for name, value in params.items():
        t = transforms.get(name)
        if t is None:
            out[name] = value
        else:
            out[name] = t.inverse(value) if invert else t(value)
    return out


def _site_transform(site):
    if site["type"] == "param":
        return biject_to(site["kwargs"]["constraint"])
    return biject_to(site["fn"].support)


def _is_latent(site):
    return site["type"] == "param" or (site["type"] == "sample" and not site["is_observed"])


def constrain_fn(model, model_args=(), model_kwargs=None, params=None,
                 return_deterministic: bool = False) -> dict:
    """Map unconstrained values onto the supports of the model's sites.

    Parameters
    ----------
    model : callable
    model_args, model_kwargs
        Arguments of the model.
    params : dict
        Unconstrained values by site name (latent sample sites: ``biject_to(fn.support)``;
        param sites: ``biject_to(constraint)``).
    return_deterministic : bool
        Also return the values of the deterministic sites.

    Returns
    -------
    dict
        Constrained values by name (and deterministic sites' values).

    Raises
    ------
    KeyError
        If a name in ``params`` is not a latent sample or param site of the model.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs

    def sub(site):
        if site["name"] in params and _is_latent(site):
            return _site_transform(site)(params[site["name"]])
        return None

    tr = trace(substitute(model, substitute_fn=sub)).get_trace(*model_args, **model_kwargs)
    missing = [n for n in params if n not in tr or not _is_latent(tr[n])]
    if missing:
        raise KeyError(f"constrain_fn: {missing} are not latent sample or param sites of the "
                       "model")
    out = {n: tr[n]["value"] for n in params}
    if return_deterministic:
        out.update({n: s["value"] for n, s in tr.items() if s["type"] == "deterministic"})
    return out


def unconstrain_fn(model, model_args=(), model_kwargs=None, params=None) -> dict:
    """Map constrained values of latent sample and param sites to unconstrained space.

    Parameters
    ----------
    model : callable
    model_args, model_kwargs
        Arguments of the model.
    params : dict
        Constrained values by site name.

    Returns
    -------
    dict
        ``biject_to(support).inverse(value)`` by name.

    Raises
    ------
    KeyError
        If a name in ``params`` is not a latent sample or param site of the model.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    tr = trace(substitute(model, data=params)).get_trace(*model_args, **model_kwargs)
    missing = [n for n in params if n not in tr or not _is_latent(tr[n])]
    if missing:
        raise KeyError(f"unconstrain_fn: {missing} are not latent sample or param sites of "
                       "the model")
    return {n: _site_transform(tr[n]).inverse(params[n]) for n in params}


def potential_energy(model, model_args=(), model_kwargs=None, params=None):
    """Minus the log density of the model in unconstrained space.

    Parameters
    ----------
    model : callable
    model_args, model_kwargs
        Arguments of the model.
    params : dict
        Unconstrained values of the latent sample sites by name.

    Returns
    -------
    Array, shape ()
        ``-(log p(y, x) + sum_sites log|det d x / d u|)`` with ``x = biject_to(support)(u)``;
        each site's log-Jacobian is masked and scaled like its log-probability.

    Notes
    -----
    This is the negative of the ``logdensity_fn`` that agvi's samplers take.
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    pushed = {}

    def sub(site):
        name = site["name"]
        if site["type"] == "sample" and not site["is_observed"] and name in params:
            t = _site_transform(site)
            u = params[name]
            x = t(u)
            pushed[name] = (t, u, x)
            return x
        return None

    tr = trace(substitute(model, substitute_fn=sub)).get_trace(*model_args, **model_kwargs)
    log_joint = trace_log_prob(tr)
    for name, (t, u, x) in pushed.items():
        site = tr[name]
        B = t.B
        ladj = _apply_mask(B, t.log_abs_det_jacobian(u, x), site["mask"])
        if site["scale"] is not None:
            ladj = ladj * site["scale"]
        log_joint = log_joint + B.sum(ladj)
    return -log_joint
