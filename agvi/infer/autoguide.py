"""Automatic guides: variational families built from a model's latent sites.

An autoguide is called like the model (``guide(*args, **kwargs)``) and is passed to
:class:`~agvi.infer.svi.SVI`. On its first call it runs the model once (seeded, hidden from
the outer handlers by :class:`~agvi.handlers.block`) to find the latent sample sites, their
shapes and supports, and picks initial values with ``init_loc_fn``. Each latent value ``x``
of a site with support ``S`` is ``biject_to(S)(u)`` of an unconstrained ``u``; the guides place
their family on ``u``.

- :class:`AutoNormal`: one Normal per site (``loc``, ``scale`` params per site).
- :class:`AutoDelta`: a point mass per site (MAP estimation).
- :class:`AutoDiagonalNormal`, :class:`AutoMultivariateNormal`,
  :class:`AutoLowRankMultivariateNormal`: one distribution over the concatenated unconstrained
  vector ``u`` of length ``D`` (an auxiliary site ``"_<prefix>_latent"``); each model site then
  gets a ``Delta`` at its slice, with the log-Jacobian of ``biject_to`` as log-density, so
  ``log q(x)`` is the density of the pushed-forward family.
- :class:`AutoLaplaceApproximation`: a point mass during training; afterwards the Gaussian with
  precision the Hessian of the potential at the mode.

Notes
-----
The first call must happen outside ``jit`` (SVI.init does it eagerly): the shapes and initial
values it records are reused by later calls. Subsampled plates over local latent sites are not
supported (the guides hold full-size parameters and do not open plates).

References
----------
Kucukelbir et al. (2017), "Automatic differentiation variational inference", JMLR 18(14).
The classes and parameter names follow NumPyro's ``numpyro.infer.autoguide``.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from ..distributions import constraints
from ..distributions.continuous import Delta, Normal
from ..distributions.multivariate import LowRankMultivariateNormal, MultivariateNormal
from ..distributions.transformed import TransformedDistribution
from ..distributions.transforms import IdentityTransform, biject_to
from ..handlers.handlers import block, seed, substitute, trace
from ..handlers.primitives import param, prng_key, sample
from . import initialization as _init

__all__ = [
    "AutoContinuous", "AutoDelta", "AutoDiagonalNormal", "AutoGuide", "AutoLaplaceApproximation",
    "AutoLowRankMultivariateNormal", "AutoMultivariateNormal", "AutoNormal",
]

_FACTORIES = (_init.init_to_median, _init.init_to_sample, _init.init_to_uniform,
              _init.init_to_value)


def _resolve_init(fn):
    if fn in _FACTORIES:
        return fn()
    if not callable(fn):
        raise TypeError(f"init_loc_fn must be an init strategy (e.g. init_to_median()), "
                        f"got {type(fn).__name__}")
    return fn


def _is_identity(t):
    base = getattr(t, "base_transform", None)
    return isinstance(t, IdentityTransform) or (base is not None and _is_identity(base))


class _Site:
    __slots__ = ("name", "shape", "u_shape", "transform", "event_dim", "u_event_dim",
                 "init_u", "size")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class AutoGuide:
    """Base class of the autoguides.

    Parameters
    ----------
    model : callable
        The model the guide approximates the posterior of.
    prefix : str
        Prefix of the guide's param names (``"<prefix>_<site>_loc"``, ...).
    init_loc_fn : callable
        An init strategy of :mod:`agvi.infer.initialization` (default
        ``init_to_median()``); a factory such as ``init_to_median`` itself is also accepted.

    Raises
    ------
    TypeError
        If ``model`` is not callable.
    """

    def __init__(self, model, *, prefix: str = "auto", init_loc_fn=_init.init_to_median):
        if not callable(model):
            raise TypeError(f"{type(self).__name__}: model must be callable, "
                            f"got {type(model).__name__}")
        self.model = model
        self.prefix = prefix
        self.init_loc_fn = _resolve_init(init_loc_fn)
        self._sites = None
        self._args = ((), {})

    # -- the prototype run -----------------------------------------------------------------
    def _setup(self, args, kwargs):
        B = get_backend()
        key = prng_key()
        if key is None:
            key = B.key(0)
        k_model, k_init = B.split(key, 2)
        with block():
            tr = trace(seed(self.model, k_model)).get_trace(*args, **kwargs)
        sites = {}
        for i, (name, site) in enumerate(tr.items()):
            if site["type"] != "sample" or site["is_observed"] \
                    or site["infer"].get("is_auxiliary"):
                continue
            fn = site["fn"]
            if not fn.has_rsample or getattr(fn.support, "is_discrete", False):
                raise NotImplementedError(
                    f"{type(self).__name__}: latent site {name!r} has no reparameterised "
                    "sampler (a discrete site?); autoguides cover continuous latents only")
            x = self.init_loc_fn(site, B.fold_in(k_init, i))
            x = B.broadcast_to(B.astype(x, B.float_dtype) if not B.is_floating(x) else x,
                               B.shape(site["value"]))
            t = biject_to(fn.support)
            u = B.stop_gradient(t.inverse(x))
            u_shape = B.shape(u)
            u_event_dim = fn.event_dim + len(u_shape) - len(B.shape(x))
            sites[name] = _Site(name=name, shape=B.shape(x), u_shape=u_shape, transform=t,
                                event_dim=fn.event_dim, u_event_dim=max(u_event_dim, 0),
                                init_u=u, size=int(math.prod(u_shape)))
        self._sites = sites
        self._args = (args, kwargs)

    def _ensure(self, args, kwargs):
        if self._sites is None:
            self._setup(args, kwargs)

    def __call__(self, *args, **kwargs):
        raise NotImplementedError

    # -- posterior helpers -----------------------------------------------------------------
    def _check_ready(self):
        if self._sites is None:
            raise RuntimeError(f"{type(self).__name__}: call the guide once (SVI.init does) "
                               "before asking for its posterior")

    def sample_posterior(self, key, params, sample_shape=(), *args, **kwargs):
        """Draws of the latent sites from the guide at ``params``.

        Parameters
        ----------
        key : Array, shape (2,)
        params : dict
            Constrained parameters (``SVI.get_params(state)``).
        sample_shape : tuple of int
        *args, **kwargs
            The model's arguments (default: those of the guide's first call).

        Returns
        -------
        dict ``name -> Array`` of shape ``sample_shape + site shape``.
        """
        self._check_ready()
        B = get_backend()
        if not args and not kwargs:
            args, kwargs = self._args
        sample_shape = tuple(sample_shape)
        n = int(math.prod(sample_shape))
        names = list(self._sites)

        def one(k):
            tr = trace(substitute(seed(self._posterior_fn(params), k), data=params)).get_trace(
                *args, **kwargs)
            return {nm: tr[nm]["value"] for nm in names}

        keys = B.split(key, max(n, 1))
        out = B.vmap(one)(keys)
        return {nm: B.reshape(v, sample_shape + tuple(B.shape(v)[1:])) for nm, v in out.items()}

    def _posterior_fn(self, params):
        """The callable whose draws are posterior samples (the guide itself by default)."""
        return self


class AutoNormal(AutoGuide):
    """A Normal distribution per latent site, in unconstrained space (mean field).

    Parameters
    ----------
    model : callable
    prefix : str
    init_loc_fn : callable
    init_scale : float
        Initial standard deviation of every unconstrained coordinate (> 0).

    Notes
    -----
    Params ``"<prefix>_<site>_loc"`` (shape of the unconstrained site) and
    ``"<prefix>_<site>_scale"`` (positive). The guide site has the model site's batch shape and
    event dimension, so :class:`~agvi.infer.elbo.TraceMeanField_ELBO` uses the analytic KL for
    real-valued sites.

    Examples
    --------
    >>> import agvi, agvi.distributions as dist
    >>> from agvi.infer.autoguide import AutoNormal
    >>> def model():
    ...     agvi.sample("s", dist.HalfNormal(1.0))
    >>> guide = AutoNormal(model)
    >>> tr = agvi.handlers.trace(agvi.handlers.seed(guide, rng_seed=0)).get_trace()
    >>> sorted(n for n, s in tr.items() if s["type"] == "param")
    ['auto_s_loc', 'auto_s_scale']
    """

    def __init__(self, model, *, prefix: str = "auto", init_loc_fn=_init.init_to_median,
                 init_scale: float = 0.1):
        if not init_scale > 0:
            raise ValueError(f"AutoNormal: init_scale must be positive, got {init_scale!r}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)
        self.init_scale = float(init_scale)

    def _base(self, s):
        B = get_backend()
        loc = param(f"{self.prefix}_{s.name}_loc", s.init_u, event_dim=s.u_event_dim)
        scale = param(f"{self.prefix}_{s.name}_scale",
                      B.full(s.u_shape, self.init_scale, dtype=B.dtype_of(s.init_u)),
                      constraint=constraints.positive, event_dim=s.u_event_dim)
        return Normal(loc, scale).to_event(s.u_event_dim) if s.u_event_dim else \
            Normal(loc, scale)

    def __call__(self, *args, **kwargs):
        self._ensure(args, kwargs)
        out = {}
        for name, s in self._sites.items():
            base = self._base(s)
            fn = base if _is_identity(s.transform) else TransformedDistribution(base,
                                                                              s.transform)
            out[name] = sample(name, fn)
        return out

    def median(self, params):
        """The median of each site: ``biject_to(support)(loc)``; dict ``name -> Array``."""
        self._check_ready()
        return {n: s.transform(params[f"{self.prefix}_{n}_loc"]) for n, s in self._sites.items()}

    def quantiles(self, params, quantiles):
        """Elementwise quantiles of each site's marginal.

        Parameters
        ----------
        params : dict
        quantiles : sequence of float, shape (Q,), in (0, 1)

        Returns
        -------
        dict ``name -> Array`` of shape ``(Q,) + site shape``.

        Notes
        -----
        Exact for sites whose ``biject_to`` acts elementwise and monotonically increasing
        (real, positive, intervals); for vector supports the map of the marginal quantiles.
        """
        self._check_ready()
        B = get_backend()
        q = B.asarray(list(quantiles))
        z = B.ndtri(q)
        out = {}
        for n, s in self._sites.items():
            loc = params[f"{self.prefix}_{n}_loc"]
            scale = params[f"{self.prefix}_{n}_scale"]
            zz = B.reshape(z, (-1,) + (1,) * len(s.u_shape))
            out[n] = s.transform(loc + scale * zz)
        return out


class AutoDelta(AutoGuide):
    """A point mass per latent site (maximum a posteriori estimation).

    Parameters
    ----------
    model : callable
    prefix : str
    init_loc_fn : callable

    Notes
    -----
    Params ``"<prefix>_<site>_loc"`` in constrained space, with the site's support as
    constraint. ``log q = 0``, so the ELBO is the log joint at the point.
    """

    def __call__(self, *args, **kwargs):
        self._ensure(args, kwargs)
        out = {}
        for name, s in self._sites.items():
            x = param(f"{self.prefix}_{name}_loc", s.transform(s.init_u),
                      constraint=s.transform.codomain, event_dim=s.event_dim)
            out[name] = sample(name, Delta(x, event_dim=s.event_dim))
        return out

    def median(self, params):
        """The point of each site; dict ``name -> Array``."""
        self._check_ready()
        return {n: params[f"{self.prefix}_{n}_loc"] for n in self._sites}

    def quantiles(self, params, quantiles):
        """Every quantile is the point: dict ``name -> Array`` of shape ``(Q,) + site shape``."""
        self._check_ready()
        B = get_backend()
        nq = len(list(quantiles))
        return {n: B.stack([v] * nq, axis=0) for n, v in self.median(params).items()}


class AutoContinuous(AutoGuide):
    """Base class of guides over the concatenated unconstrained latent vector ``u`` (length D).

    Subclasses define :meth:`get_base_posterior` (a distribution with event shape (D,)) from
    the current params (inside a model run) and the loc param name ``"<prefix>_loc"``.
    """

    init_scale = 0.1

    def __init__(self, model, *, prefix: str = "auto", init_loc_fn=_init.init_to_median,
                 init_scale: float = 0.1):
        if not init_scale > 0:
            raise ValueError(f"{type(self).__name__}: init_scale must be positive, "
                             f"got {init_scale!r}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)
        self.init_scale = float(init_scale)

    @property
    def latent_dim(self) -> int:
        """D, the length of the unconstrained latent vector."""
        self._check_ready()
        return sum(s.size for s in self._sites.values())

    def _init_loc(self):
        B = get_backend()
        return B.concatenate([B.reshape(s.init_u, (-1,)) for s in self._sites.values()], axis=0)

    def _unpack(self, z):
        """Split ``z`` (shape ``batch + (D,)``) into constrained site values (dict)."""
        B = get_backend()
        out, start = {}, 0
        batch = tuple(B.shape(z)[:-1])
        for n, s in self._sites.items():
            u = B.reshape(z[..., start:start + s.size], batch + tuple(s.u_shape))
            out[n] = (u, s.transform(u))
            start += s.size
        return out

    def get_base_posterior(self):
        """The distribution of ``u`` (event shape (D,)), built from param sites."""
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        self._ensure(args, kwargs)
        B = get_backend()
        post = self.get_base_posterior()
        z = sample(f"_{self.prefix}_latent", post, infer={"is_auxiliary": True})
        out = {}
        for name, (u, x) in self._unpack(z).items():
            s = self._sites[name]
            ladj = s.transform.log_abs_det_jacobian(u, x)
            out[name] = sample(name, Delta(x, log_density=-B.sum(ladj), event_dim=B.ndim(x)))
        return out

    def _loc(self, params):
        return params[f"{self.prefix}_loc"]

    def median(self, params):
        """The image of the posterior's centre ``loc`` (the median in unconstrained space for
        the Gaussian families); dict ``name -> Array``."""
        self._check_ready()
        return {n: x for n, (u, x) in self._unpack(self._loc(params)).items()}

    def _marginal_scale(self, params):
        raise NotImplementedError

    def quantiles(self, params, quantiles):
        """Elementwise quantiles of each site's marginal (Gaussian in unconstrained space).

        Parameters
        ----------
        params : dict
        quantiles : sequence of float, shape (Q,)

        Returns
        -------
        dict ``name -> Array`` of shape ``(Q,) + site shape``.
        """
        self._check_ready()
        B = get_backend()
        z = B.reshape(B.ndtri(B.asarray(list(quantiles))), (-1, 1))
        vec = self._loc(params) + self._marginal_scale(params) * z
        return {n: x for n, (u, x) in self._unpack(vec).items()}


class AutoDiagonalNormal(AutoContinuous):
    """A Normal with diagonal covariance over the unconstrained latent vector.

    Params ``"<prefix>_loc"`` (D,) and ``"<prefix>_scale"`` (D,, positive; init
    ``init_scale``).
    """

    def get_base_posterior(self):
        B = get_backend()
        loc = param(f"{self.prefix}_loc", self._init_loc())
        scale = param(f"{self.prefix}_scale", B.full((self.latent_dim,), self.init_scale),
                      constraint=constraints.positive)
        return Normal(loc, scale).to_event(1)

    def _marginal_scale(self, params):
        return params[f"{self.prefix}_scale"]


class AutoMultivariateNormal(AutoContinuous):
    """A full-covariance Normal over the unconstrained latent vector.

    Params ``"<prefix>_loc"`` (D,) and ``"<prefix>_scale_tril"`` (D, D, lower Cholesky; init
    ``init_scale * I``).
    """

    def get_base_posterior(self):
        B = get_backend()
        loc = param(f"{self.prefix}_loc", self._init_loc())
        tril = param(f"{self.prefix}_scale_tril", self.init_scale * B.eye(self.latent_dim),
                     constraint=constraints.lower_cholesky)
        return MultivariateNormal(loc, scale_tril=tril)

    def _marginal_scale(self, params):
        B = get_backend()
        L = params[f"{self.prefix}_scale_tril"]
        return B.sqrt(B.sum(L * L, axis=-1))


class AutoLowRankMultivariateNormal(AutoContinuous):
    """A Normal with covariance ``W W^T + diag(d)`` over the unconstrained latent vector.

    Parameters
    ----------
    model : callable
    prefix : str
    init_loc_fn : callable
    init_scale : float
    rank : int or None
        Columns of ``W`` (default ``ceil(sqrt(D))``).

    Notes
    -----
    Params ``"<prefix>_loc"`` (D,), ``"<prefix>_cov_factor"`` (D, rank; init zeros) and
    ``"<prefix>_cov_diag"`` (D,, positive; init ``init_scale**2``).
    """

    def __init__(self, model, *, prefix: str = "auto", init_loc_fn=_init.init_to_median,
                 init_scale: float = 0.1, rank: int | None = None):
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, init_scale=init_scale)
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"AutoLowRankMultivariateNormal: rank must be a positive int, "
                             f"got {rank!r}")
        self.rank = rank

    def get_base_posterior(self):
        B = get_backend()
        D = self.latent_dim
        rank = self.rank or int(math.ceil(math.sqrt(D)))
        loc = param(f"{self.prefix}_loc", self._init_loc())
        W = param(f"{self.prefix}_cov_factor", B.zeros((D, rank)))
        d = param(f"{self.prefix}_cov_diag", B.full((D,), self.init_scale ** 2),
                  constraint=constraints.positive)
        return LowRankMultivariateNormal(loc, W, d)

    def _marginal_scale(self, params):
        B = get_backend()
        W = params[f"{self.prefix}_cov_factor"]
        return B.sqrt(B.sum(W * W, axis=-1) + params[f"{self.prefix}_cov_diag"])


class AutoLaplaceApproximation(AutoContinuous):
    """Laplace approximation: MAP training of ``loc``, then a Gaussian with precision the
    Hessian of the potential (in unconstrained space) at ``loc``.

    Notes
    -----
    During SVI the guide is a point mass at ``"<prefix>_loc"`` (so the ELBO is the log joint
    plus the log-Jacobian of ``biject_to``: MAP in unconstrained space). :meth:`get_posterior`
    computes the Hessian with ``B.hessian`` at the model arguments of the guide's first call
    (or those given to :meth:`sample_posterior`).
    """

    def get_base_posterior(self):
        loc = param(f"{self.prefix}_loc", self._init_loc())
        return Delta(loc, event_dim=1)

    def _potential(self, args, kwargs):
        from ..handlers.util import potential_energy

        def U(z):
            u = {n: u for n, (u, x) in self._unpack(z).items()}
            return potential_energy(self.model, args, kwargs, u)

        return U

    def _hessian(self, params, args, kwargs):
        B = get_backend()
        if not args and not kwargs:
            args, kwargs = self._args
        # reverse-over-reverse: robust on every backend (autograd's forward-over-reverse fails
        # on some transforms' second derivatives)
        H = B.jacobian(B.grad(self._potential(args, kwargs)))(self._loc(params))
        return 0.5 * (H + B.matrix_transpose(H))

    def get_posterior(self, params, *args, **kwargs):
        """The Laplace approximation: ``MultivariateNormal(loc, precision_matrix=H)`` with ``H``
        the Hessian (shape (D, D)) of the potential energy at ``loc``.

        Raises
        ------
        RuntimeError
            If the guide was never called.
        """
        self._check_ready()
        H = self._hessian(params, args, kwargs)
        return MultivariateNormal(self._loc(params), precision_matrix=H)

    def _marginal_scale(self, params):
        B = get_backend()
        return B.sqrt(B.diagonal(B.inv(self._hessian(params, (), {}))))

    def sample_posterior(self, key, params, sample_shape=(), *args, **kwargs):
        """Draws from the Laplace approximation; dict ``name -> Array`` of shape
        ``sample_shape + site shape``."""
        self._check_ready()
        post = self.get_posterior(params, *args, **kwargs)
        z = post.sample(key, tuple(sample_shape))
        return {n: x for n, (u, x) in self._unpack(z).items()}
