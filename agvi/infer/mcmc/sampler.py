"""The MCMC driver and the friendly :class:`NUTS` / :class:`HMC` kernels.

:class:`MCMC` runs warmup (Stan's windowed adaptation of the step size and the mass matrix) and
sampling for a batch of chains, written once on the Backend:

- chains live on a leading axis (positions (C, d)); chain ``c`` draws its random numbers from
  ``B.fold_in(key, c)`` only, so chain 0 of a 4-chain run equals a 1-chain run with the same key;
- warmup and sampling run one pure per-transition body in chunks of transitions, each chunk
  driven by a few flags (the schedule of Stan's windows, built in Python by
  :func:`~.adaptation.windows.windowed_schedule`, cut so that a window ends with a chunk; all off
  while sampling). On JAX a chunk is one compiled call (``B.jit``) of a loop whose trip count
  is an argument, the same program for both phases, cached on the kernel object so
  that a second run with data of the same shapes does not recompile; on torch and NumPy the
  same code runs as Python loops;
- the progress bar (tqdm, when installed and stderr is a terminal) moves once per chunk;
  Ctrl-C between chunks keeps the draws collected so far (with a warning);
- non-finite log densities or gradients never raise inside a run: the kernels treat them as
  divergences, the estimators skip them, and they are counted per chain
  (:meth:`MCMC.print_summary`);
- a model (``NUTS(model)``) becomes a flat log density in unconstrained space through agvi's
  effect handlers (:func:`agvi.handlers.util.potential_energy`); its array arguments are
  arguments of the compiled programs, so the cache above covers models too, and the draws are
  mapped back to constrained site values (with the deterministic sites) after the run.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler", JMLR 15 (Algorithms 4 and 6).
Stan Development Team, Stan Reference Manual, "HMC algorithm parameters" (windowed adaptation).
Phan, Pradhan and Jankowiak (2019), arXiv:1912.11554 (NumPyro's MCMC interface, followed here).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import optree

from ...backends import get_backend, use_backend
from ...distributions.transforms import biject_to
from ...handlers.handlers import seed, substitute, trace
from ...handlers.util import constrain_fn, potential_energy
from ..initialization import init_to_uniform
from ..progress import progress_bar as make_progress_bar
from . import hmc as hmc_module
from . import nuts as nuts_module
from .adaptation import (
    AdaptationWindow,
    dual_averaging,
    find_reasonable_step_size,
    schedule_arrays,
    welford_covariance,
    welford_variance,
    windowed_schedule,
)
from .diagnostics import format_summary
from .hmc import HMCState
from .integrators import CompiledLogDensity, logdensity_and_grad_fn

__all__ = ["HMC", "MCMC", "MCMCState", "NUTS"]

_INIT_TRIES = 100
_CONSTRAIN_BLOCK = 256       # draws per compiled call when constraining a model's draws
_INIT_RADIUS = 2.0
_ARVIZ_STATS = {"accept_prob": "acceptance_rate", "num_steps": "n_steps",
                "tree_depth": "tree_depth", "diverging": "diverging", "energy": "energy",
                "logdensity": "lp", "step_size": "step_size"}


class MCMCState(NamedTuple):
    """Where a batch of chains stands between runs (``MCMC.post_warmup_state``,
    ``MCMC.last_state``).

    Attributes
    ----------
    hmc_state : HMCState
        Flat positions (C, d) with their log densities (C,) and gradients (C, d).
    step_size : Array, shape (C,)
    inverse_mass_matrix : Array, shape (C, d) (diagonal) or (C, d, d) (dense)
    """

    hmc_state: HMCState
    step_size: object
    inverse_mass_matrix: object


class _Carry(NamedTuple):
    """What one compiled chunk of transitions carries (warmup and sampling alike)."""

    state: HMCState
    step_size: object          # (C,)
    inverse_mass_matrix: object
    dual_averaging: object     # DualAveragingState, leaves (C,) or (1,) when pooled
    welford: object            # WelfordState, leaves (C, ...) or (1, ...) when pooled
    keys: object               # (C, 2): the phase's base key of each chain
    num_divergent: object      # (C,) int, since the start of the phase
    num_steps: object
    num_nonfinite: object


# --------------------------------------------------------------------------- kernels
class _HamiltonianKernel:
    """Settings shared by :class:`NUTS` and :class:`HMC` (see their docstrings)."""

    #: name -> "float" | "int" | "bool": the per-chain scalars recorded at every draw
    _FIELDS: dict = {}

    def __init__(self, model=None, *, logdensity_fn=None, potential_fn=None, step_size=1.0,
                 adapt_step_size=True, adapt_mass_matrix=True, dense_mass=False,
                 target_accept_prob=0.8, inverse_mass_matrix=None, init_strategy=None,
                 adapt_per_chain=True):
        name = type(self).__name__
        given = [arg for arg, fn in (("model", model), ("logdensity_fn", logdensity_fn),
                                     ("potential_fn", potential_fn)) if fn is not None]
        if len(given) != 1:
            raise ValueError(f"{name} needs exactly one of model (a probabilistic program), "
                             "logdensity_fn (a log density) and potential_fn (its negative); "
                             f"got {' and '.join(given) if given else 'none'}")
        for arg, fn in (("model", model), ("logdensity_fn", logdensity_fn),
                        ("potential_fn", potential_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{arg} must be callable, got {type(fn).__name__}")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
        if model is not None:
            if not (init_strategy in (None, "uniform", "zeros") or callable(init_strategy)):
                raise ValueError("init_strategy of a model must be None (init_to_uniform()), "
                                 "'uniform', 'zeros' (unconstrained zeros) or a strategy of "
                                 "agvi.infer.initialization (init_to_uniform, init_to_median, "
                                 f"init_to_sample, init_to_value); got {init_strategy!r}")
        elif init_strategy not in (None, "uniform", "zeros"):
            hint = (" (the strategies of agvi.infer.initialization need model=)"
                    if callable(init_strategy) else "")
            raise ValueError("init_strategy must be None (start at init_params), 'uniform' "
                             "(uniform(-2, 2) draws, retried until finite) or 'zeros'; got "
                             f"{init_strategy!r}{hint}")
        self.model = model
        self.backend = get_backend()
        self.potential_fn = potential_fn
        if model is not None:
            self.logdensity_fn = None
        elif potential_fn is not None:
            def logdensity(*args):
                return -potential_fn(*args)
            self.logdensity_fn = logdensity
        else:
            self.logdensity_fn = logdensity_fn
        self.step_size = step_size
        self.adapt_step_size = bool(adapt_step_size)
        self.adapt_mass_matrix = bool(adapt_mass_matrix)
        self.dense_mass = bool(dense_mass)
        self.target_accept_prob = float(target_accept_prob)
        self.inverse_mass_matrix = inverse_mass_matrix
        self.init_strategy = init_strategy
        self.adapt_per_chain = bool(adapt_per_chain)
        # compiled chunk functions: see MCMC._compiled
        self._cache: dict = {}

    # what the driver needs from a kernel ------------------------------------------------------
    def _static(self) -> tuple:
        return (self.adapt_step_size, self.adapt_mass_matrix, self.dense_mass,
                self.target_accept_prob, self.adapt_per_chain)

    def _transition(self, logdensity_fn: Callable, warmup: bool) -> Callable:
        raise NotImplementedError

    def _fields(self, info) -> dict:
        raise NotImplementedError

    def _initial_step_size(self, chains, num_chains, dtype):
        """The starting step sizes of chains ``chains`` (list of ints), shape (len(chains),)."""
        B = self.backend
        eps = self.step_size
        arr = np.asarray(B.to_numpy(eps) if B.is_array(eps) else eps, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(len(chains), float(arr))
        elif arr.shape == (num_chains,):
            arr = arr[list(chains)]
        else:
            raise ValueError("step_size must be a positive float or an array of shape "
                             f"(num_chains,) = ({num_chains},); got shape {arr.shape}")
        if not np.all(arr > 0) or not np.all(np.isfinite(arr)):
            raise ValueError(f"step_size must be positive and finite, got {arr}")
        return B.asarray(arr, dtype=dtype)

    def _initial_inverse_mass_matrix(self, chains, dim, num_chains, dtype):
        """The starting inverse mass matrices of chains ``chains``: (n, d) or (n, d, d)."""
        B = self.backend
        n = len(chains)
        imm = self.inverse_mass_matrix
        if imm is None:
            eye = np.eye(dim) if self.dense_mass else np.ones(dim)
            return B.asarray(np.broadcast_to(eye, (n,) + eye.shape).copy(), dtype=dtype)
        arr = np.asarray(B.to_numpy(imm) if B.is_array(imm) else imm, dtype=np.float64)
        event = 2 if self.dense_mass else 1
        expected = (dim, dim) if self.dense_mass else (dim,)
        if arr.shape == expected:
            arr = np.broadcast_to(arr, (n,) + expected).copy()
        elif arr.ndim == event + 1 and arr.shape[1:] == expected and arr.shape[0] == num_chains:
            arr = arr[list(chains)]
        else:
            kind = "dense (dense_mass=True)" if self.dense_mass else "diagonal"
            raise ValueError(f"inverse_mass_matrix for a {kind} metric must have shape "
                             f"{expected} or {(num_chains,) + expected}; got {arr.shape}")
        return B.asarray(arr, dtype=dtype)


class NUTS(_HamiltonianKernel):
    """The No-U-Turn Sampler with Stan's warmup, for :class:`MCMC`.

    Parameters
    ----------
    model : callable, optional
        A probabilistic program (``agvi.sample``, ``agvi.plate``, ``agvi.deterministic``,
        ``agvi.factor``), called as ``model(*args, **kwargs)`` with the arguments of
        :meth:`MCMC.run`. Its latent sample sites (continuous, of fixed shapes) are sampled in
        unconstrained space: each through ``biject_to(site support)``, with the log-Jacobian
        added (:func:`agvi.handlers.util.potential_energy`); the coordinates are the sites'
        unconstrained values raveled in the order of their sorted names (as NumPyro's
        ``ravel_pytree``). A subsampled plate keeps one subsample (drawn by the first run of
        the model, from the key of :meth:`MCMC.run`) for the whole run, its sites' log
        densities scaled by ``size / subsample_size``; ``agvi.param`` sites are constants at
        their initial values. :meth:`MCMC.get_samples` returns constrained values by site
        name.
    logdensity_fn : callable, optional
        ``logdensity_fn(params, *args) -> scalar``: the log density (up to a constant) of one
        point ``params``, a pytree of floating Arrays of the structure of ``init_params`` (a
        single Array of shape (d,) in the simplest case), written with the backend's
        operations; ``args`` are the extra positional arguments of :meth:`MCMC.run` (data).
    potential_fn : callable, optional
        The negative log density, same signature. Give exactly one of ``model``,
        ``logdensity_fn`` and ``potential_fn``.
    step_size : float or Array of shape (num_chains,)
        Initial step size (the starting point of the warmup search when adapted).
    adapt_step_size : bool
        Adapt the step size by dual averaging during warmup.
    adapt_mass_matrix : bool
        Adapt the inverse mass matrix by Stan's windowed Welford estimates.
    dense_mass : bool
        Dense (full covariance) instead of diagonal inverse mass matrix.
    target_accept_prob : float
        The acceptance statistic dual averaging aims at (Stan's ``adapt_delta``).
    max_tree_depth : int
        At most ``2**max_tree_depth - 1`` leapfrog steps per transition.
    max_tree_depth_warmup : int or None
        A different maximum depth during warmup (default: ``max_tree_depth``).
    inverse_mass_matrix : array_like, optional
        Initial inverse mass matrix: shape (d,) or (num_chains, d) (diagonal), (d, d) or
        (num_chains, d, d) (dense); default the identity. With ``adapt_mass_matrix=False`` it
        is used throughout (e.g. ``mcmc.adapted_params["inverse_mass_matrix"]`` of an earlier
        run).
    init_strategy : {None, "uniform", "zeros"} or callable
        With ``logdensity_fn`` / ``potential_fn``: ``None``: start at ``init_params``;
        ``"uniform"``: ``init_params`` gives the structure only and every coordinate is drawn
        from uniform(-2, 2) (unconstrained space), redrawn up to 100 times per chain until the
        log density and its gradient are finite; ``"zeros"``: start at zeros of that
        structure. With ``model``: a strategy of :mod:`agvi.infer.initialization`
        (``init_to_uniform()``, the default as in NumPyro, also for ``None`` and
        ``"uniform"``; ``init_to_median()``, ``init_to_sample()``, ``init_to_value(values)``
        with constrained values), applied to the latent sites that ``init_params`` leaves
        out during one run of the model per chain (key: chain ``c``'s own), redrawn up to 100
        times until the log density and its gradient are finite; or ``"zeros"``
        (unconstrained zeros).
    adapt_per_chain : bool
        One step size and mass matrix per chain (default); ``False`` pools the chains: one
        dual-averaging update at the chains' mean acceptance, one Welford estimate over all
        chains' draws, shared by all chains.

    Raises
    ------
    ValueError
        If not exactly one of ``model``, ``logdensity_fn`` and ``potential_fn`` is given, or
        a setting is out of range.
    TypeError
        If the one given is not callable.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15; Betancourt (2017), arXiv:1701.02434.

    Examples
    --------
    >>> import agvi
    >>> from agvi.infer.mcmc import MCMC, NUTS
    >>> B = agvi.get_backend()
    >>> kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum(x ** 2))
    >>> mcmc = MCMC(kernel, num_warmup=50, num_samples=50, progress_bar=False)
    >>> mcmc.run(B.key(0), init_params=B.zeros(2))
    >>> B.shape(mcmc.get_samples())
    (50, 2)

    A model (constrained sites are sampled in unconstrained space):

    >>> import agvi.distributions as dist
    >>> def model(y):
    ...     scale = agvi.sample("scale", dist.HalfNormal(1.0))
    ...     with agvi.plate("data", len(y)):
    ...         agvi.sample("y", dist.Normal(0.0, scale), obs=y)
    >>> mcmc = MCMC(NUTS(model), num_warmup=50, num_samples=50, progress_bar=False)
    >>> mcmc.run(B.key(0), B.asarray([0.5, -1.0, 0.3]))
    >>> B.shape(mcmc.get_samples()["scale"])
    (50,)
    """

    _FIELDS = {"accept_prob": "float", "num_steps": "int", "tree_depth": "int",
               "diverging": "bool", "turning": "bool", "energy": "float",
               "num_nonfinite": "int"}

    def __init__(self, model=None, logdensity_fn=None, potential_fn=None, step_size=1.0,
                 adapt_step_size=True, adapt_mass_matrix=True, dense_mass=False,
                 target_accept_prob=0.8, max_tree_depth=10, max_tree_depth_warmup=None,
                 inverse_mass_matrix=None, init_strategy=None, adapt_per_chain=True):
        super().__init__(model, logdensity_fn=logdensity_fn, potential_fn=potential_fn,
                         step_size=step_size, adapt_step_size=adapt_step_size,
                         adapt_mass_matrix=adapt_mass_matrix, dense_mass=dense_mass,
                         target_accept_prob=target_accept_prob,
                         inverse_mass_matrix=inverse_mass_matrix, init_strategy=init_strategy,
                         adapt_per_chain=adapt_per_chain)
        for arg, value in (("max_tree_depth", max_tree_depth),
                           ("max_tree_depth_warmup", max_tree_depth_warmup)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 1 <= value <= 20):
                raise ValueError(f"{arg} must be an int between 1 and 20, got {value!r}")
        self.max_tree_depth = max_tree_depth
        self.max_tree_depth_warmup = max_tree_depth_warmup

    def _static(self):
        return super()._static() + (self.max_tree_depth, self.max_tree_depth_warmup)

    def _transition(self, logdensity_fn, warmup):
        depth = self.max_tree_depth
        if warmup and self.max_tree_depth_warmup is not None:
            depth = self.max_tree_depth_warmup
        return nuts_module.build_kernel(logdensity_fn, max_tree_depth=depth)

    def _fields(self, info):
        return {"accept_prob": info.acceptance_rate, "num_steps": info.num_integration_steps,
                "tree_depth": info.num_trajectory_expansions, "diverging": info.is_divergent,
                "turning": info.is_turning, "energy": info.energy,
                "num_nonfinite": info.num_nonfinite}


class HMC(_HamiltonianKernel):
    """Hamiltonian Monte Carlo with a fixed number of steps or trajectory length, for
    :class:`MCMC`.

    Parameters
    ----------
    model, logdensity_fn, potential_fn, step_size, adapt_step_size, adapt_mass_matrix, \
dense_mass, target_accept_prob, inverse_mass_matrix, init_strategy, adapt_per_chain
        As for :class:`NUTS`.
    num_steps : int, optional
        Leapfrog steps per transition. When given, ``trajectory_length`` is ignored.
    trajectory_length : float
        Integration time per transition (default ``2 pi``): ``ceil(trajectory_length /
        step_size)`` steps, at most 1024.

    Raises
    ------
    ValueError, TypeError
        As :class:`NUTS`; also if ``num_steps`` is not a positive int or
        ``trajectory_length`` is not positive.

    References
    ----------
    Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, chapter 5.
    """

    _FIELDS = {"accept_prob": "float", "num_steps": "int", "diverging": "bool",
               "accepted": "bool", "energy": "float", "num_nonfinite": "int"}

    def __init__(self, model=None, logdensity_fn=None, potential_fn=None, step_size=1.0,
                 num_steps=None, trajectory_length=2 * math.pi, adapt_step_size=True,
                 adapt_mass_matrix=True, dense_mass=False, target_accept_prob=0.8,
                 inverse_mass_matrix=None, init_strategy=None, adapt_per_chain=True):
        super().__init__(model, logdensity_fn=logdensity_fn, potential_fn=potential_fn,
                         step_size=step_size, adapt_step_size=adapt_step_size,
                         adapt_mass_matrix=adapt_mass_matrix, dense_mass=dense_mass,
                         target_accept_prob=target_accept_prob,
                         inverse_mass_matrix=inverse_mass_matrix, init_strategy=init_strategy,
                         adapt_per_chain=adapt_per_chain)
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be a positive int or None, got {num_steps!r}")
        if num_steps is None and not (trajectory_length is not None and trajectory_length > 0):
            raise ValueError("trajectory_length must be positive when num_steps is None, got "
                             f"{trajectory_length!r}")
        self.num_steps = num_steps
        self.trajectory_length = None if num_steps is not None else float(trajectory_length)

    def _static(self):
        return super()._static() + (self.num_steps, self.trajectory_length)

    def _transition(self, logdensity_fn, warmup):
        return hmc_module.build_kernel(logdensity_fn, num_integration_steps=self.num_steps,
                                       trajectory_length=self.trajectory_length)

    def _fields(self, info):
        return {"accept_prob": info.acceptance_rate, "num_steps": info.num_integration_steps,
                "diverging": info.is_divergent, "accepted": info.is_accepted,
                "energy": info.energy, "num_nonfinite": info.num_nonfinite}


# --------------------------------------------------------------------------- pytrees
def _path_name(path) -> str:
    if not path:
        return "x"
    name = ""
    for part in path:
        if isinstance(part, (int, np.integer)):
            name += f"[{int(part)}]"
        else:
            name += ("." if name else "") + str(part)
    return name


class _Structure:
    """The pytree structure of one chain's parameters and its raveling to (d,)."""

    def __init__(self, B, tree, sites=False):
        #: True for a model's unconstrained values by latent site name
        self.sites = sites
        leaves, self.treedef = B.tree_flatten(tree)
        if not leaves:
            raise ValueError("init_params has no array leaves")
        self.shapes = [tuple(B.shape(leaf)) for leaf in leaves]
        self.sizes = [int(math.prod(s)) for s in self.shapes]
        self.dim = sum(self.sizes)
        self.leaf_names = [_path_name(p) for p in optree.tree_paths(tree, none_is_leaf=False)]
        self.flat_vector = (len(self.shapes) == 1 and len(self.shapes[0]) == 1
                            and B.is_array(tree))
        self.key = (self.treedef, tuple(self.shapes))

    def coordinate_names(self) -> list:
        names = []
        for name, shape in zip(self.leaf_names, self.shapes, strict=True):
            if not shape:
                names.append(name)
            else:
                names.extend(f"{name}[{','.join(str(i) for i in idx)}]"
                             for idx in np.ndindex(*shape))
        return names

    def describe(self, j) -> str:
        """Words for flat coordinate ``j`` (in error messages)."""
        if not self.sites:
            return f"coordinate {self.coordinate_names()[j]} (flat index {j})"
        start = 0
        for name, shape, size in zip(self.leaf_names, self.shapes, self.sizes, strict=True):
            if j < start + size:
                index = np.unravel_index(j - start, shape) if shape else ()
                where = f" coordinate [{','.join(str(int(i)) for i in index)}]" if shape else ""
                return f"site {name!r}{where} (flat index {j}, unconstrained value)"
            start += size
        raise IndexError(j)

    def ravel(self, B, tree, dtype):
        leaves = B.tree_leaves(tree)
        if [tuple(B.shape(leaf)) for leaf in leaves] != self.shapes:
            raise ValueError("init_params leaves must have shapes "
                             f"{self.shapes}; got {[B.shape(leaf) for leaf in leaves]}")
        return B.concatenate([B.reshape(B.astype(B.asarray(leaf), dtype), (-1,))
                              for leaf in leaves], axis=0)

    def unravel(self, B, flat):
        """Leaves of shape ``lead + shape`` from ``flat`` of shape ``lead + (d,)``."""
        if self.flat_vector:            # params are one (d,) Array: nothing to do
            return flat
        lead = tuple(B.shape(flat))[:-1]
        if len(self.shapes) == 1:
            return B.tree_unflatten(self.treedef, [B.reshape(flat, lead + self.shapes[0])])
        out, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            out.append(B.reshape(flat[..., start:start + size], lead + shape))
            start += size
        return B.tree_unflatten(self.treedef, out)


def _is_batched(B, init_params, num_chains) -> bool:
    """Whether ``init_params`` carries a leading chain axis (see :meth:`MCMC.run`)."""
    leaves = [B.asarray(leaf) for leaf in B.tree_leaves(init_params)]
    single = len(leaves) == 1 and B.is_array(init_params)
    if num_chains == 1:          # only flat positions of shape (1, d) are read as batched
        return single and B.ndim(leaves[0]) == 2 and B.shape(leaves[0])[0] == 1
    if single and B.ndim(leaves[0]) == 1:
        return False
    return all(B.ndim(leaf) >= 1 and B.shape(leaf)[0] == num_chains for leaf in leaves)


# --------------------------------------------------------------------------- models
class _Dynamic:
    """Marks, in the static description of a model's arguments, where an array goes."""

    def __repr__(self):
        return "<array>"


_DYNAMIC = _Dynamic()


def _hashable(leaf):
    try:
        hash(leaf)
    except TypeError:         # unhashable static argument: keyed by identity (kept alive)
        return ("id", id(leaf), leaf.__class__.__name__)
    return leaf


def _split_args(B, args, kwargs):
    """Split a model's ``(args, kwargs)`` into arrays (arguments of the compiled program) and
    the rest (Python scalars, strings, ...: part of the program's cache key).

    Returns ``(arrays, treedef, static, key)``: ``arrays`` the array leaves as backend arrays
    (floating ones in the backend's float dtype), ``static`` the leaves with ``_DYNAMIC``
    where an array goes, ``key`` a hashable description of ``treedef`` and ``static``.
    """
    leaves, treedef = optree.tree_flatten((tuple(args), dict(kwargs)), none_is_leaf=False)
    arrays, static = [], []
    for leaf in leaves:
        if isinstance(leaf, np.ndarray) or B.is_array(leaf):
            arr = B.asarray(leaf)
            if B.is_floating(arr):
                arr = B.astype(arr, B.float_dtype)
            arrays.append(arr)
            static.append(_DYNAMIC)
        else:
            static.append(leaf)
    key = (treedef, tuple(_hashable(leaf) for leaf in static))
    return arrays, treedef, tuple(static), key


def _rebuild(treedef, static, arrays):
    """The model's ``(args, kwargs)`` from the static leaves and the arrays."""
    it = iter(arrays)
    return optree.tree_unflatten(treedef, [next(it) if leaf is _DYNAMIC else leaf
                                           for leaf in static])


def _fixed_model(model, frozen):
    """``model`` with its subsampled plates' indices and its param sites fixed."""
    return substitute(model, data=frozen) if frozen else model


def _model_logdensity(model, treedef, static):
    """``logdensity(params, dyn)``: the model's log density in unconstrained space.

    ``params``: unconstrained values by latent site name; ``dyn = (arrays, frozen)``: the
    array arguments of the model and the fixed plate / param values (traced on JAX).
    """
    def logdensity(params, dyn):
        arrays, frozen = dyn
        args, kwargs = _rebuild(treedef, static, arrays)
        return -potential_energy(_fixed_model(model, frozen), args, kwargs, params)

    return logdensity


def _model_constrain(model, treedef, static):
    """``constrain(params, dyn)``: constrained latent values and deterministic sites."""
    def constrain(params, dyn):
        arrays, frozen = dyn
        args, kwargs = _rebuild(treedef, static, arrays)
        return constrain_fn(_fixed_model(model, frozen), args, kwargs, params,
                            return_deterministic=True)

    return constrain


class _ModelInfo(NamedTuple):
    """What the prototype run of a model found (kept with the post-warmup state)."""

    latent: dict          # name -> (unconstrained shape, constrained shape), in program order
    deterministic: list   # names of the deterministic sites
    frozen: dict          # name -> value of the subsampled plates and param sites


def _inspect_model(B, model, args, kwargs, key):
    """Run ``model`` once under ``seed(key)`` and describe its sites (:class:`_ModelInfo`)."""
    tr = trace(seed(model, key)).get_trace(*args, **kwargs)
    latent, deterministic, frozen = {}, [], {}
    for name, site in tr.items():
        kind = site["type"]
        if kind == "sample" and not site["is_observed"]:
            support = site["fn"].support
            if getattr(support, "is_discrete", False):
                raise NotImplementedError(
                    f"latent site {name!r} is discrete ({type(site['fn']).__name__}); HMC and "
                    "NUTS need continuous latent sites (observe it, or marginalise it out with "
                    "agvi.factor)")
            x = site["value"]
            u = biject_to(support).inverse(x)
            latent[name] = (tuple(B.shape(u)), tuple(B.shape(x)))
        elif kind == "deterministic":
            deterministic.append(name)
        elif kind == "plate" and site["args"][1] < site["args"][0]:
            frozen[name] = site["value"]       # one subsample for the whole run
        elif kind == "param":
            frozen[name] = site["value"]       # a constant of the posterior
    if not latent:
        raise ValueError("the model has no latent sample site: nothing to sample (every "
                         "agvi.sample site is observed)")
    return _ModelInfo(latent, deterministic, frozen)


def _model_init_point(B, model, args, kwargs, info, structure, key, strategy, given, dtype):
    """One chain's flat unconstrained initial point (d,).

    Latent sites in ``given`` (unconstrained values) take those values; the others are drawn
    by ``strategy`` (``init_fn(site, key) -> constrained value``, or ``"zeros"``: unconstrained
    zeros), in program order, with the site's own key ``fold_in(key, i)`` (as NumPyro, during
    one run of the model, so a site's distribution sees its parents' initial values).
    """
    order = {name: i for i, name in enumerate(info.latent)}
    k_seed = B.fold_in(key, len(order))

    def sub(site):
        name = site["name"]
        if site["type"] != "sample" or site["is_observed"] or name not in order:
            return None
        t = biject_to(site["fn"].support)
        if name in given:
            return t(B.astype(B.asarray(given[name]), dtype))
        if strategy == "zeros":
            return t(B.zeros(info.latent[name][0], dtype=dtype))
        return strategy(site, B.fold_in(key, order[name]))

    tr = trace(substitute(seed(model, k_seed), substitute_fn=sub)).get_trace(*args, **kwargs)
    params = {}
    for name, (u_shape, _) in info.latent.items():
        site = tr[name]
        if name in given:         # exactly as given (no round trip through the bijector)
            u = B.asarray(given[name])
        elif strategy == "zeros":
            u = B.zeros(u_shape, dtype=dtype)
        else:
            u = biject_to(site["fn"].support).inverse(B.asarray(site["value"]))
        if tuple(B.shape(u)) != u_shape:
            raise ValueError(f"latent site {name!r} has unconstrained shape {B.shape(u)} here "
                             f"but {u_shape} in the model's first run: HMC and NUTS need "
                             "sites of fixed shapes")
        params[name] = u
    return structure.ravel(B, params, dtype)


def _model_init_params(B, info, init_params, num_chains):
    """``init_params`` of a model checked: ``[given dict of chain c for c in chains]``.

    Each value is unconstrained, of the site's unconstrained shape (one point for all chains)
    or with a leading axis of length ``num_chains`` (one point per chain).
    """
    if init_params is None:
        return [{}] * num_chains
    if not isinstance(init_params, dict):
        raise TypeError("init_params of a model must be a dict {site name: unconstrained "
                        f"value}}, got {type(init_params).__name__}")
    unknown = [name for name in init_params if name not in info.latent]
    if unknown:
        raise ValueError(f"init_params names {unknown}, which are not latent sample sites of "
                         f"the model (latent sites: {list(info.latent)})")
    per_chain = [{} for _ in range(num_chains)]
    for name, value in init_params.items():
        value = B.asarray(value)
        shape = tuple(B.shape(value))
        u_shape = info.latent[name][0]
        if shape == u_shape:
            for c in range(num_chains):
                per_chain[c][name] = value
        elif shape == (num_chains,) + u_shape:
            for c in range(num_chains):
                per_chain[c][name] = value[c]
        else:
            raise ValueError(f"init_params[{name!r}] must have the site's unconstrained shape "
                             f"{u_shape} or ({num_chains},) + {u_shape} (one per chain); got "
                             f"{shape}")
    return per_chain


# --------------------------------------------------------------------------- helpers
def _as_key(B, key):
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return B.key(int(key))
    return key


def _fold_host(B, keys_host, data):
    """Keys ``fold_in(k, data)`` of the host keys ``keys_host`` (n, 2), as NumPy (n, 2)."""
    return np.array([B.key_data(B.fold_in(k, int(data))) for k in keys_host])


def _fold(B, keys_host, data):
    """:func:`_fold_host` as a backend array (n, 2)."""
    return B.asarray(_fold_host(B, keys_host, data))


_PROBE_VALUES = (0.0, 1.0, 0.5, -0.5, 2.0, -2.0)
_PROBE_MAX_DIM = 2000


def _culprit(B, logdensity, x) -> int | None:
    """The first coordinate of ``x`` (numpy, (d,)) whose change alone (to one of a few probe
    values) makes the log density finite, or None."""
    d = x.shape[0]
    if d > _PROBE_MAX_DIM:
        return None
    points = np.repeat(x[None], d * len(_PROBE_VALUES), axis=0)
    rows = np.arange(points.shape[0])
    points[rows, rows // len(_PROBE_VALUES)] = np.tile(_PROBE_VALUES, d)
    try:
        values = B.to_numpy(B.vmap(logdensity)(B.asarray(points)))
    except Exception:      # the probe is a courtesy of the error message: never mask it
        return None
    finite = np.isfinite(values).reshape(d, len(_PROBE_VALUES)).any(axis=1)
    return int(np.argmax(finite)) if finite.any() else None


def _nonfinite_message(B, logdensity, structure, x, value, grad, chain, tries) -> str:
    bad_x = ~np.isfinite(x)
    bad_g = ~np.isfinite(grad)
    if bad_x.any():
        j = int(np.argmax(bad_x))
        what = "the initial value itself is non-finite"
    elif not np.isfinite(value):
        what = f"the log density is non-finite ({value})"
        j = _culprit(B, logdensity, x)
        if j is not None:
            what += " and becomes finite when only this coordinate changes"
        else:
            j = int(np.argmax(bad_g)) if bad_g.any() else int(np.argmax(np.abs(x)))
            what += (" (no single coordinate could be blamed; this one has a non-finite "
                     "gradient)" if bad_g.any() else
                     " (no single coordinate could be blamed; this one is the largest)")
    else:
        j = int(np.argmax(bad_g))
        what = f"the log density is finite ({value:.6g}) but its gradient is non-finite"
    if structure.sites:
        tried = f" after {tries + 1} draws of init_strategy" if tries else ""
        advice = ("Check the model's supports and data, and init_params / init_strategy "
                  "(agvi.infer.initialization).")
    else:
        tried = f" after {tries} uniform(-2, 2) draws" if tries else ""
        advice = ("Check the log density's support and init_params (or pass "
                  "init_strategy='uniform').")
    return (f"no finite initial point for chain {chain}{tried}: {what}: "
            f"{structure.describe(j)} = {float(x[j])!r}, gradient {float(grad[j])!r}. "
            + advice)


# --------------------------------------------------------------------------- compiled pieces
def _flat_logdensity(logdensity_fn, B, structure):
    """The log density of one flat point ``x`` (d,) with the data ``args``,
    ``logdensity_fn(unravel(x), *args)``, as a :class:`CompiledLogDensity` (bind the data with
    ``.bind(args)``)."""
    def flat(x, args):
        return logdensity_fn(structure.unravel(B, x), *args)

    return CompiledLogDensity(flat)


def _build_init(B, kernel, structure, num_chains, extra_fields, logdensity_fn):
    target = _flat_logdensity(logdensity_fn, B, structure)

    def init(position, args):
        return hmc_module.init(position, target.bind(args))

    return init


def _build_warmup_init(B, kernel, structure, num_chains, extra_fields, logdensity_fn):
    target = _flat_logdensity(logdensity_fn, B, structure)

    def warmup_init(keys, state, step_size, inverse_mass_matrix, args):
        ldg = logdensity_and_grad_fn(target.bind(args))
        eps = find_reasonable_step_size(keys, state, None, inverse_mass_matrix, step_size,
                                        logdensity_and_grad=ldg)
        if not kernel.adapt_per_chain:
            eps = B.broadcast_to(B.exp(B.mean(B.log(eps), keepdims=True)), (num_chains,))
        return eps

    return warmup_init


def _adaptation(kernel):
    da = dual_averaging(target_accept_prob=kernel.target_accept_prob)
    welford = welford_covariance() if kernel.dense_mass else welford_variance()
    return da, welford


#: The entries of a chunk's control vector (see :func:`_build_chunk`).
_CONTROL = ("start", "count", "adapt", "slow", "window_end")


def _run_transitions(B, step, carry, start, count, length, template):
    """``count`` transitions ``carry, y = step(carry, t)`` for ``t = start, start + 1, ...``.

    Returns the final carry and the ``y`` stacked on a leading axis: of ``length`` rows on a
    backend that compiles control flow (one ``fori_loop`` whose trip count is an argument, the
    rows past ``count`` left as zeros, so that every chunk is the same program), of ``count``
    rows otherwise (a Python loop). ``template`` is a ``y`` giving the rows' shapes and dtypes.
    """
    if not B.compiles_control_flow:
        ys = []
        for i in range(int(count)):
            carry, y = step(carry, start + i)
            ys.append(y)
        return carry, B.tree_map(lambda *rows: B.stack(rows), *ys)

    def body(i, loop):
        carry, ys = loop
        carry, y = step(carry, start + i)
        return carry, B.tree_map(lambda rows, row: B.dynamic_update_index(rows, i, row), ys, y)

    ys = B.tree_map(lambda a: B.zeros((length,) + tuple(B.shape(a)), dtype=B.dtype_of(a)),
                    template)
    return B.fori_loop(0, count, body, (carry, ys))


def _gather_rows(chunks, rows):
    """A phase's kept outputs: the chunks' outputs ({name: (rows, C, ...)}) concatenated,
    the rows ``rows`` (N,) taken and the chains moved first ({name: (C, N, ...)}); compiled
    once on JAX (one call instead of three operations per field)."""
    B = get_backend()
    return {name: B.moveaxis(B.take(B.concatenate([c[name] for c in chunks], axis=0)
                                    if len(chunks) > 1 else chunks[0][name], rows, axis=0), 0, 1)
            for name in chunks[0]}


def _chunk_plan(total: int, length: int, flags: dict) -> np.ndarray:
    """The chunks of a phase of ``total`` transitions: rows (start, count, adapt, slow,
    window_end) as :data:`_CONTROL`, int64 of shape (num_chunks, 5).

    A chunk has at most ``length`` transitions with the same ``adapt`` and ``slow`` flags, and
    a transition flagged ``window_end`` (per-transition bool arrays in ``flags``) ends its
    chunk, so the mass-matrix update runs once, after a chunk's loop, instead of a branch in
    every transition.
    """
    adapt, slow, end = (np.asarray(flags[name], dtype=bool)
                        for name in ("adapt", "slow", "window_end"))
    cuts = {0, total}
    cuts.update((np.flatnonzero((adapt[1:] != adapt[:-1]) | (slow[1:] != slow[:-1])) + 1).tolist())
    cuts.update((np.flatnonzero(end) + 1).tolist())
    cuts = sorted(cuts)
    rows = []
    for first, stop in zip(cuts[:-1], cuts[1:]):
        for s in range(first, stop, length):
            n = min(length, stop - s)
            rows.append((s, n, adapt[s], slow[s], end[s + n - 1]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(_CONTROL))


def _build_chunk(B, kernel, structure, num_chains, extra_fields, logdensity_fn, length):
    """One chunk of at most ``length`` transitions: ``chunk(carry, control, args) -> (carry,
    ys)``.

    ``control`` (integer, shape (5,)) holds, in the order of :data:`_CONTROL`: ``start`` (the
    index of the chunk's first transition in its phase: transition ``t`` draws from
    ``fold_in(keys[c], t)``), ``count`` (transitions to run), ``adapt`` (warmup: update the step
    size after each transition), ``slow`` (each draw enters the mass-matrix estimate) and
    ``window_end`` (after the last transition, update the mass matrix and re-initialise the
    step size); :func:`_chunk_plan` cuts a phase so that these flags hold for a whole chunk.
    One array, so that a chunk costs one host-to-device transfer. Warmup and sampling share
    this one program, so a NUTS kernel is compiled once per run; the per-transition
    adaptation updates are selected rather than branched on (a branch around them cost 5-10%
    of a small model's transition on JAX), the window's end is one branch per chunk.
    ``ys``: the per-transition outputs, stacked as :func:`_run_transitions` does.
    """
    (da_init, da_update, _), (w_init, w_update, w_final) = _adaptation(kernel)
    groups = num_chains if kernel.adapt_per_chain else 1
    int_dtype, float_dtype, bool_dtype = B.int_dtype, B.float_dtype, B.dtype("bool")
    dtypes = {"float": float_dtype, "int": int_dtype, "bool": bool_dtype}
    want_momentum = "momentum" in extra_fields
    want_grad = "logdensity_grad" in extra_fields
    pooled = not kernel.adapt_per_chain
    compiled = B.compiles_control_flow
    separate_warmup_kernel = (getattr(kernel, "max_tree_depth_warmup", None) is not None
                              and kernel.max_tree_depth_warmup != kernel.max_tree_depth)

    def fold_keys(keys, t):
        if compiled:   # one batched hash (map is a loop under jit)
            return B.vmap(lambda k: B.fold_in(k, t))(keys)
        # eager: host keys, hashed on the host (no framework arrays in between)
        return _fold_host(B, B.key_data(keys), t)

    target = _flat_logdensity(logdensity_fn, B, structure)

    def chunk(carry, control, args):
        start, count = control[0], control[1]
        if compiled:
            adapting, slow, window_end = control[2] != 0, control[3] != 0, control[4] != 0
        else:   # host ints: Python branches
            adapting, slow, window_end = (bool(control[i]) for i in (2, 3, 4))
        logdensity = target.bind(args)
        transition = kernel._transition(logdensity, warmup=False)
        if separate_warmup_kernel:
            warmup_transition = kernel._transition(logdensity, warmup=True)
        ldg = logdensity_and_grad_fn(logdensity)

        def end_window(carry, t):
            state, imm, step_size, da = (carry.state, carry.inverse_mass_matrix,
                                         carry.step_size, carry.dual_averaging)
            new_imm = w_final(carry.welford, default=imm[:1] if pooled else imm)
            if pooled:
                new_imm = B.broadcast_to(new_imm, B.shape(imm))
            welford = w_init(groups, B.shape(state.position)[-1], B.dtype_of(imm))
            if kernel.adapt_step_size:
                keys = B.map(lambda k: B.asarray(B.fold_in(k, 1)), fold_keys(carry.keys, t))
                step_size = find_reasonable_step_size(keys, state, None, new_imm, step_size,
                                                      logdensity_and_grad=ldg)
                if pooled:
                    step_size = B.broadcast_to(
                        B.exp(B.mean(B.log(step_size), keepdims=True)), (num_chains,))
                da = da_init(step_size[:1] if pooled else step_size)
            return carry._replace(welford=welford, inverse_mass_matrix=new_imm,
                                  step_size=step_size, dual_averaging=da)

        def keep_window(carry, t):
            return carry

        def add_draw(welford, position):
            return w_update(welford, position)

        def skip_draw(welford, position):
            return welford

        def adapt_step_size(da, step_size, accept):
            da = da_update(da, B.mean(accept, keepdims=True) if pooled else accept)
            return da, B.broadcast_to(B.exp(da.log_step_size), (num_chains,))

        def step(carry, t):
            keys = fold_keys(carry.keys, t)
            arguments = (keys, carry.state, carry.step_size, carry.inverse_mass_matrix)
            if separate_warmup_kernel:
                state, info = B.cond(adapting, lambda a: warmup_transition(*a),
                                     lambda a: transition(*a), arguments)
            else:
                state, info = transition(*arguments)
            fields = {name: B.astype(value, dtypes[kernel._FIELDS[name]])
                      for name, value in kernel._fields(info).items()}
            da, step_size, welford = carry.dual_averaging, carry.step_size, carry.welford
            if kernel.adapt_step_size:
                if compiled:   # a few scalar operations: cheaper selected than branched on
                    new_da, new_step_size = adapt_step_size(da, step_size, fields["accept_prob"])
                    da = B.tree_map(lambda new, old: B.where(adapting, new, old), new_da, da)
                    step_size = B.where(adapting, new_step_size, step_size)
                elif adapting:
                    da, step_size = adapt_step_size(da, step_size, fields["accept_prob"])
            if kernel.adapt_mass_matrix:
                welford = B.cond(adapting & slow, add_draw, skip_draw, welford, state.position)
            new = _Carry(
                state, step_size, carry.inverse_mass_matrix, da, welford, carry.keys,
                carry.num_divergent + B.astype(fields["diverging"], int_dtype),
                carry.num_steps + B.astype(fields["num_steps"], int_dtype),
                carry.num_nonfinite + B.astype(fields["num_nonfinite"], int_dtype))
            y = dict(fields)
            if want_momentum:
                y["momentum"] = info.momentum
            return new, record(state, carry.step_size, y)

        def record(state, step_size, y):
            out = {"position": state.position, "logdensity": state.logdensity,
                   "step_size": step_size, **y}
            if want_grad:
                out["logdensity_grad"] = state.logdensity_grad
            return out

        template = {name: B.zeros((num_chains,), dtype=dtypes[kind])
                    for name, kind in kernel._FIELDS.items()}
        if want_momentum:
            template["momentum"] = carry.state.position
        template = record(carry.state, carry.step_size, template)
        carry, ys = _run_transitions(B, step, carry, start, count, length, template)
        if kernel.adapt_mass_matrix:
            # the window's last transition is the chunk's last: its keys re-initialise the
            # step size (as Stan's init_stepsize after each metric update)
            carry = B.cond(window_end, end_window, keep_window, carry, start + count - 1)
        return carry, ys

    return chunk


# --------------------------------------------------------------------------- the driver
class MCMC:
    """Run warmup and sampling of an HMC or NUTS kernel for a batch of chains.

    Parameters
    ----------
    kernel : NUTS or HMC
        The kernel with its settings (it keeps the backend active when it was built).
    num_warmup : int
        Warmup (adaptation) transitions per chain, discarded.
    num_samples : int
        Draws kept per chain (after thinning).
    num_chains : int
        Number of chains.
    chain_method : {"vectorized", "sequential"}
        ``"vectorized"``: all chains in one batched computation (positions (C, d));
        ``"sequential"``: one chain after another, each a one-chain run with key
        ``fold_in(key, c)`` (the same draws as ``"vectorized"``, up to rounding; often faster
        on the eager backends, where one chain needs no ``vmap``).
    thinning : int
        Keep every ``thinning``-th draw (``num_samples * thinning`` transitions are run).
    progress_bar : bool
        Show a tqdm bar (only when tqdm is installed and stderr is a terminal or notebook).
    chunk_size : int, optional
        Transitions per compiled call (and per progress-bar update, and the granularity at
        which Ctrl-C keeps the draws). Default: 100 on backends that compile, else 10.

    Raises
    ------
    ValueError
        If a count is negative, ``num_chains`` or ``thinning`` is not positive, or
        ``chain_method`` is unknown.
    TypeError
        If ``kernel`` is not an :class:`NUTS` or :class:`HMC`.

    Notes
    -----
    After :meth:`run`: :meth:`get_samples`, :meth:`get_extra_fields`, :meth:`print_summary`,
    :meth:`to_arviz`, :attr:`last_state` (an :class:`MCMCState` to continue from: set
    ``mcmc.post_warmup_state = mcmc.last_state`` and call :meth:`run` again) and
    :attr:`adapted_params` (the step size and inverse mass matrix reached by warmup, to seed a
    kernel with ``adapt_step_size=False, adapt_mass_matrix=False``).

    References
    ----------
    Phan et al. (2019), arXiv:1912.11554 (NumPyro's ``MCMC``); Stan Reference Manual.
    """

    def __init__(self, kernel, num_warmup, num_samples, num_chains=1,
                 chain_method="vectorized", thinning=1, progress_bar=True, chunk_size=None):
        if not isinstance(kernel, _HamiltonianKernel):
            raise TypeError("kernel must be an agvi.infer.mcmc NUTS or HMC object, got "
                            f"{type(kernel).__name__}")
        for name, value, low in (("num_warmup", num_warmup, 0), ("num_samples", num_samples, 0),
                                 ("num_chains", num_chains, 1), ("thinning", thinning, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if chain_method not in ("vectorized", "sequential"):
            raise ValueError("chain_method must be 'vectorized' or 'sequential', got "
                             f"{chain_method!r}")
        if chain_method == "sequential" and not kernel.adapt_per_chain and num_chains > 1:
            raise ValueError("pooled adaptation (adapt_per_chain=False) needs "
                             "chain_method='vectorized': sequential chains cannot share it")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.kernel = kernel
        self.num_warmup = int(num_warmup)
        self.num_samples = int(num_samples)
        self.num_chains = int(num_chains)
        self.chain_method = chain_method
        self.thinning = int(thinning)
        self.progress_bar = bool(progress_bar)
        self.chunk_size = chunk_size
        self.post_warmup_state = None
        self.last_state = None
        self._structure = None
        self._samples = None
        self._extra = None
        self._stats = None
        # the log density the compiled programs evaluate: logdensity_fn(params, *args), and
        # what besides the kernel and the structure identifies it (see _compiled)
        self._target_fn = None
        self._target_key = None
        # models: the sites found by the warmup's prototype run, the run's traced arguments
        # and the constrained draws (computed on first use)
        self._model_info = None
        self._model_args = None
        self._model_point = None
        self._constrained = None

    # ----------------------------------------------------------------------- public API
    def warmup(self, key, *args, init_params=None, collect_warmup=False, extra_fields=(),
               **kwargs):
        """Run warmup only; the adapted state becomes :attr:`post_warmup_state`.

        A following :meth:`run` skips warmup and samples from there (with ``run``'s key; the
        same key gives the same draws as one ``run`` with warmup).

        Parameters
        ----------
        key : Array or int
            A random key (``B.key(seed)``) or an int seed.
        *args, **kwargs
            The model's arguments, or the extra positional arguments of the log density.
        init_params : pytree or dict, optional
            As for :meth:`run`.
        collect_warmup : bool
            Keep the warmup draws and statistics: :meth:`get_samples` and
            :meth:`get_extra_fields` then return them (``num_warmup`` per chain), e.g. to look
            at the acceptance statistic that dual averaging adapts.
        extra_fields : tuple of str
            As for :meth:`run` (with ``collect_warmup``).
        """
        self._check_extra_fields(extra_fields)
        self._execute(key, args, kwargs, init_params, tuple(extra_fields), do_warmup=True,
                      do_sample=False, collect_warmup=bool(collect_warmup))

    def run(self, key, *args, init_params=None, extra_fields=(), **kwargs):
        """Run warmup (unless :attr:`post_warmup_state` is set) and sampling.

        Parameters
        ----------
        key : Array or int
            A random key (``B.key(seed)``) or an int seed. Chain ``c`` uses
            ``B.fold_in(key, c)`` only.
        *args, **kwargs
            With ``model=``: the model's arguments, as ``model(*args, **kwargs)`` (e.g.
            ``mcmc.run(key, sigma, y=y)``). Array leaves (NumPy or the backend's; floating ones
            cast to the backend's float dtype) are arguments of the compiled program: on JAX a
            new run with arrays of the same shapes does not recompile; other leaves (Python
            numbers, strings) are constants of it (a new value compiles anew). With
            ``logdensity_fn=`` / ``potential_fn=``: extra positional arguments passed to it
            after the parameters (data), as given; keyword arguments are refused.
        init_params : pytree of Arrays, or dict for a model, optional
            ``logdensity_fn`` / ``potential_fn``: the initial point of one chain (broadcast to
            all chains), or with a leading axis of length ``num_chains`` on every leaf (one
            point per chain; a single 1-d Array is always one point; with one chain only a
            single Array of shape (1, d) is read as batched). Required unless continuing from
            :attr:`post_warmup_state`; with ``init_strategy="uniform"`` or ``"zeros"`` only
            its structure is used. ``model``: a dict ``{site name: unconstrained value}``
            (NumPyro's convention: the value of ``biject_to(site support).inv``), each of the
            site's unconstrained shape or with a leading axis of length ``num_chains``; sites
            left out are drawn by the kernel's ``init_strategy``.
        extra_fields : tuple of str
            Per-draw quantities to keep besides the default ones (``accept_prob``,
            ``num_steps``, ``diverging``, ``energy``, ``num_nonfinite``, ``logdensity``,
            ``step_size``, and ``tree_depth``, ``turning`` for NUTS or ``accepted`` for HMC):
            ``"momentum"``, ``"logdensity_grad"`` ((C, d) each) or ``"potential_energy"``.

        Raises
        ------
        ValueError
            If no initial point is available, its shapes do not match, no finite initial
            point is found (the message names the coordinate, or for a model the site and
            its coordinate, its value and whether the log density or its gradient was
            non-finite), or an extra field is unknown.
        TypeError
            If keyword arguments are given to a kernel without ``model``.
        NotImplementedError
            If a model has a discrete latent site.
        """
        self._check_extra_fields(extra_fields)
        self._execute(key, args, kwargs, init_params, tuple(extra_fields),
                      do_warmup=self.post_warmup_state is None, do_sample=True)

    def get_samples(self, group_by_chain: bool = False):
        """The draws.

        Parameters
        ----------
        group_by_chain : bool
            Leaves of shape (num_chains, num_samples, ...) when True, else the chains
            concatenated: (num_chains * num_samples, ...).

        Returns
        -------
        dict or pytree of Arrays (the backend's arrays)
            With ``model=``: ``{site name: constrained values}`` for every latent sample site
            and every deterministic site, in program order. Otherwise the structure of
            ``init_params``.

        Raises
        ------
        RuntimeError
            Before :meth:`run`.
        """
        if self.kernel.model is not None:
            return self._model_samples(group_by_chain)
        flat = self._flat_samples(group_by_chain)
        with use_backend(self.kernel.backend) as B:
            return self._structure.unravel(B, flat)

    def get_extra_fields(self, group_by_chain: bool = False) -> dict:
        """Per-draw statistics: ``{name: Array}`` of shape (C, N, ...) or (C * N, ...).

        See :meth:`run` for the names. ``accept_prob`` is Stan's ``accept_stat__`` (NUTS: the
        mean Metropolis acceptance over the trajectory), ``tree_depth`` counts doublings,
        ``num_steps`` leapfrog steps (gradient evaluations).
        """
        if self._extra is None:
            raise RuntimeError("no draws yet: call run() first")
        B = self.kernel.backend
        out = {}
        for name, value in self._extra.items():
            if not group_by_chain:
                shape = B.shape(value)
                value = B.reshape(value, (shape[0] * shape[1],) + tuple(shape[2:]))
            out[name] = value
        return out

    @property
    def adapted_params(self) -> dict:
        """The step size (C,) and inverse mass matrix ((C, d) or (C, d, d)) after warmup (or of
        the last state when warmup was skipped)."""
        state = self.post_warmup_state if self.post_warmup_state is not None else self.last_state
        if state is None:
            raise RuntimeError("no adapted parameters yet: call warmup() or run() first")
        return {"step_size": state.step_size, "inverse_mass_matrix": state.inverse_mass_matrix}

    def summary(self, prob: float = 0.9) -> dict:
        """:func:`~.diagnostics.summary` of the draws (one row per scalar coordinate)."""
        from .diagnostics import summary
        return summary(self._host_samples(), prob=prob)

    def print_summary(self, prob: float = 0.9) -> None:
        """Print the summary table, the divergences after warmup ("k of N (p%)"), the gradient
        evaluations and the non-finite values met, per chain."""
        print(self._format_summary(prob))

    def _format_summary(self, prob=0.9) -> str:
        lines = [format_summary(self._host_samples(), prob=prob), ""]
        s = self._stats
        transitions = self.num_chains * self._num_transitions
        div = int(s["sample_divergent"].sum())
        pct = 100.0 * div / transitions if transitions else 0.0
        phase = "during" if getattr(self, "_draws_are_warmup", False) else "after"
        lines.append(f"Number of divergences {phase} warmup: {div} of {transitions} "
                     f"({pct:.1f}%)")
        lines.append(f"Gradient evaluations: {int(s['warmup_steps'].sum())} in warmup, "
                     f"{int(s['sample_steps'].sum())} in sampling")
        nonfinite = s["warmup_nonfinite"] + s["sample_nonfinite"]
        if nonfinite.any():
            lines.append("Transitions that met a non-finite log density or gradient, per chain: "
                         f"{nonfinite.tolist()} (warmup {s['warmup_nonfinite'].tolist()}, "
                         f"sampling {s['sample_nonfinite'].tolist()})")
        else:
            lines.append("Non-finite log density or gradient: none met")
        return "\n".join(lines)

    def to_arviz(self):
        """The draws and sample statistics as an ``arviz.InferenceData``.

        Returns
        -------
        arviz.InferenceData
            ``posterior``: one variable per parameter leaf (for a model: per latent and
            deterministic site, constrained), dims (chain, draw, ...); ``sample_stats``:
            ``acceptance_rate``, ``n_steps``, ``diverging``, ``energy``, ``lp``,
            ``step_size`` (and ``tree_depth`` for NUTS).

        Raises
        ------
        ImportError
            If ArviZ is not installed (``pip install arviz``; it is in agvi's ``crosscheck``
            extra).
        """
        try:
            import arviz as az
        except ImportError as exc:
            raise ImportError("MCMC.to_arviz needs ArviZ, which is not installed: "
                              "pip install arviz (or agvi[crosscheck])") from exc
        posterior = self._host_samples()
        B = self.kernel.backend
        stats = {}
        for name, value in self.get_extra_fields(group_by_chain=True).items():
            if name in _ARVIZ_STATS:
                stats[_ARVIZ_STATS[name]] = B.to_numpy(value)
        return az.from_dict(posterior=posterior, sample_stats=stats)

    # ----------------------------------------------------------------------- internals
    def _flat_samples(self, group_by_chain):
        if self._samples is None:
            raise RuntimeError("no draws yet: call run() first")
        B = self.kernel.backend
        flat = self._samples
        if not group_by_chain:
            c, n, d = B.shape(flat)
            flat = B.reshape(flat, (c * n, d))
        return flat

    def _model_samples(self, group_by_chain):
        """A model's constrained draws ``{name: (C, N, ...) or (C * N, ...)}`` (latent and
        deterministic sites), computed once per run from the unconstrained ones."""
        flat = self._flat_samples(True)
        B = self.kernel.backend
        if self._constrained is None:
            with use_backend(B):
                self._constrained = self._constrain_draws(B, flat)
        c, n = B.shape(flat)[:2]
        if group_by_chain:
            return dict(self._constrained)
        return {name: B.reshape(v, (c * n,) + tuple(B.shape(v)[2:]))
                for name, v in self._constrained.items()}

    def _constrain_draws(self, B, flat):
        """Constrained latent values and deterministic sites of the draws ``flat`` (C, N, d):
        the model run once per draw (``B.vmap``; compiled and cached on JAX)."""
        kernel = self.kernel
        treedef, static, dyn = self._model_args
        c, n, d = B.shape(flat)
        key = ("constrain", self._structure.key, self._target_key)
        fn = kernel._cache.get(key)
        if fn is None:
            fn = B.jit(B.vmap(_model_constrain(kernel.model, treedef, static), in_axes=(0, None)))
            kernel._cache[key] = fn
        rows = B.reshape(flat, (c * n, d))
        # blocks of a fixed length where programs compile (padded with zeros, valid
        # unconstrained points), so that another number of draws compiles nothing new
        block = _CONSTRAIN_BLOCK if B.has_jit else max(c * n, 1)
        pieces = []
        for lo in range(0, max(c * n, 1), block):
            part = rows[lo:lo + block]
            size = B.shape(part)[0]
            if size < block:
                part = B.concatenate([part, B.zeros((block - size, d), dtype=B.dtype_of(flat))])
            pieces.append(self._constrain_block(B, fn, part, dyn))
        out = {name: B.concatenate([p[name] for p in pieces]) if len(pieces) > 1
               else pieces[0][name] for name in pieces[0]}
        names = list(self._model_info.latent) + [
            name for name in self._model_info.deterministic if name in out]
        return {name: B.reshape(out[name][:c * n], (c, n) + tuple(B.shape(out[name])[1:]))
                for name in names}

    def _constrain_block(self, B, fn, rows, dyn):
        params = self._structure.unravel(B, rows)
        if B.has_jit:
            return fn(params, dyn)
        try:
            return fn(params, dyn)
        except Exception:      # a model that torch.func.vmap cannot map: loop over the draws
            treedef, static, _ = self._model_args
            one = _model_constrain(self.kernel.model, treedef, static)
            outs = [one(B.tree_map(lambda leaf, i=i: leaf[i], params), dyn)
                    for i in range(B.shape(rows)[0])]
            return {name: B.stack([o[name] for o in outs]) for name in outs[0]}

    def _host_samples(self) -> dict:
        B = self.kernel.backend
        if self.kernel.model is not None:
            return {name: B.to_numpy(v) for name, v in self._model_samples(True).items()}
        flat = B.to_numpy(self._flat_samples(True))
        out, start = {}, 0
        s = self._structure
        for name, shape, size in zip(s.leaf_names, s.shapes, s.sizes, strict=True):
            out[name] = flat[..., start:start + size].reshape(flat.shape[:2] + shape)
            start += size
        return out

    def _chunk(self, B) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return 100 if B.has_jit else 10

    def _check_extra_fields(self, extra_fields):
        kernel = self.kernel
        allowed = ("momentum", "logdensity_grad", "potential_energy")
        for name in extra_fields:
            if name not in allowed and name not in kernel._FIELDS and name not in (
                    "logdensity", "step_size"):
                raise ValueError(f"unknown extra field {name!r}; recorded always: "
                                 f"{sorted(kernel._FIELDS) + ['logdensity', 'step_size']}; "
                                 f"on request: {list(allowed)}")

    def _execute(self, key, args, kwargs, init_params, extra_fields, do_warmup, do_sample,
                 collect_warmup=False):
        kernel = self.kernel
        B = kernel.backend
        # non-finite values are expected (divergences) and counted: no NumPy warnings for them
        with use_backend(B), np.errstate(all="ignore"):
            key = _as_key(B, key)
            start = self.post_warmup_state if not do_warmup else None
            if start is not None and B.shape(start.hmc_state.position)[0] != self.num_chains:
                raise ValueError("post_warmup_state holds "
                                 f"{B.shape(start.hmc_state.position)[0]} chains but "
                                 f"num_chains={self.num_chains}")
            chain_keys = [B.key_data(B.fold_in(key, c)) for c in range(self.num_chains)]
            if kernel.model is not None:
                args, init_flat = self._prepare_model(B, key, chain_keys, args, kwargs,
                                                      init_params, start)
            else:
                if kwargs:
                    raise TypeError(f"keyword arguments {sorted(kwargs)} are for a model "
                                    "(NUTS(model=...)); a logdensity_fn / potential_fn takes "
                                    "positional data arguments only")
                init_flat = self._prepare_logdensity(B, init_params, start)
            if self.chain_method == "vectorized" or self.num_chains == 1:
                groups = [list(range(self.num_chains))]
            else:
                groups = [[c] for c in range(self.num_chains)]
            results = []
            for chains in groups:
                sub_start = None if start is None else B.tree_map(
                    lambda leaf, chains=chains: leaf[chains[0]:chains[-1] + 1], start)
                sub_init = None if init_flat is None else init_flat[chains[0]:chains[-1] + 1]
                res = self._run_chains(B, chains, [chain_keys[c] for c in chains], sub_init,
                                       sub_start, args, extra_fields, do_warmup, do_sample,
                                       collect_warmup)
                results.append(res)
                if res["interrupted"]:     # Ctrl-C: keep what ran, start no further chain
                    break
            self._collect(B, results, do_warmup, do_sample, collect_warmup)

    def _prepare_logdensity(self, B, init_params, start):
        """Set the structure and target of a ``logdensity_fn`` run; the initial points (C, d)
        (None when continuing from ``start``)."""
        kernel = self.kernel
        self._target_fn, self._target_key = kernel.logdensity_fn, None
        batched = False
        if init_params is not None:
            batched = _is_batched(B, init_params, self.num_chains)
            one = (B.tree_map(lambda leaf: B.asarray(leaf)[0], init_params) if batched
                   else init_params)
            self._structure = _Structure(B, one)
        elif start is None:
            raise ValueError("init_params is required with logdensity_fn/potential_fn: it "
                             "gives the structure and the starting point of one chain")
        elif self._structure is None:
            raise ValueError("post_warmup_state is set but the parameter structure is "
                             "unknown: pass init_params")
        if start is not None:
            return None
        dtype = B.float_dtype
        if batched:
            return B.stack([self._structure.ravel(
                B, B.tree_map(lambda leaf, c=c: B.asarray(leaf)[c], init_params), dtype)
                for c in range(self.num_chains)])
        return B.stack([self._structure.ravel(B, init_params, dtype)] * self.num_chains)

    def _prepare_model(self, B, key, chain_keys, args, kwargs, init_params, start):
        """Set the structure and target of a model run; ``(args, init_flat)``: the arguments
        of the compiled programs and the initial points (C, d) (None when continuing)."""
        kernel = self.kernel
        dtype = B.float_dtype
        arrays, treedef, static, static_key = _split_args(B, args, kwargs)
        margs, mkwargs = _rebuild(treedef, static, arrays)
        if start is None:
            # the prototype run: chain 0's key folded with 4 (0-3 are the phases' and the
            # initialisation's), so that it does not depend on the number of chains
            proto_key = B.fold_in(B.fold_in(key, 0), 4)
            info = _inspect_model(B, kernel.model, margs, mkwargs, proto_key)
            self._model_info = info
            self._structure = _Structure(
                B, {name: B.zeros(u_shape, dtype=dtype)
                    for name, (u_shape, _) in info.latent.items()}, sites=True)
        elif self._model_info is None:
            raise ValueError("post_warmup_state is set but the model's sites are unknown: "
                             "run warmup() or run() with this MCMC object first")
        info = self._model_info
        self._target_fn = _model_logdensity(kernel.model, treedef, static)
        self._target_key = ("model", static_key)
        self._model_args = (treedef, static, (arrays, dict(info.frozen)))
        if start is not None:
            return (self._model_args[2],), None
        given = _model_init_params(B, info, init_params, self.num_chains)
        strategy = kernel.init_strategy
        if strategy in (None, "uniform"):
            strategy = init_to_uniform()
        fixed = _fixed_model(kernel.model, info.frozen)
        structure = self._structure

        def point(chain, chain_key, attempt):
            k = B.fold_in(B.fold_in(chain_key, 2), attempt)
            return _model_init_point(B, fixed, margs, mkwargs, info, structure, k, strategy,
                                     given[chain], dtype)

        complete = init_params is not None and set(init_params) == set(info.latent)
        self._model_point = None if complete or strategy == "zeros" else point
        init_flat = B.stack([point(c, chain_keys[c], 0) for c in range(self.num_chains)])
        return (self._model_args[2],), init_flat

    def _collect(self, B, results, do_warmup, do_sample, collect_warmup):
        done = sum(len(r["chains"]) for r in results)
        if done < self.num_chains:
            warnings.warn(f"interrupted: only {done} of {self.num_chains} chains ran; the "
                          "results hold those chains", UserWarning, stacklevel=3)

        def cat(items):
            return items[0] if len(items) == 1 else B.concatenate(items, axis=0)

        state = MCMCState(*[
            (B.tree_map(lambda *leaves: cat(list(leaves)), *[r["state"][i] for r in results])
             if i == 0 else cat([r["state"][i] for r in results])) for i in range(3)])
        self.last_state = state
        self._constrained = None
        if do_warmup and not do_sample:       # as NumPyro: only warmup() sets it
            self.post_warmup_state = state
        if do_warmup:
            # this run's warmup (a run continuing from post_warmup_state keeps the counts of
            # the warmup that made it)
            self._warmup_stats = {k: np.concatenate([r["warmup"][k] for r in results])
                                  for k in results[0]["warmup"]}
        elif getattr(self, "_warmup_stats", None) is None:
            self._warmup_stats = {k: np.zeros(len(state.step_size), dtype=np.int64)
                                  for k in ("divergent", "steps", "nonfinite")}
        if not do_sample and not collect_warmup:
            return
        lengths = [B.shape(r["samples"])[1] for r in results]
        n = min(lengths)
        self._samples = cat([r["samples"][:, :n] for r in results])
        self._extra = {name: cat([r["extra"][name][:, :n] for r in results])
                       for name in results[0]["extra"]}
        self._draws_are_warmup = collect_warmup
        self._num_transitions = n if collect_warmup else n * self.thinning
        w = self._warmup_stats
        self._stats = {
            "warmup_divergent": w["divergent"], "warmup_steps": w["steps"],
            "warmup_nonfinite": w["nonfinite"],
            "sample_divergent": np.concatenate([r["sample"]["divergent"] for r in results]),
            "sample_steps": np.concatenate([r["sample"]["steps"] for r in results]),
            "sample_nonfinite": np.concatenate([r["sample"]["nonfinite"] for r in results]),
        }

    # one batch of chains ----------------------------------------------------------------------
    def _compiled(self, B, kind, num_chains, extra_fields=(), **options):
        """The compiled function of one kind for this structure and batch size (``options``:
        the builder's own, as the chunk's ``length``), cached on the kernel (on JAX a later run
        with arguments of the same shapes reuses the program)."""
        kernel = self.kernel
        structure = self._structure
        key = (kind, num_chains, structure.key, extra_fields, kernel._static(),
               self._target_key, tuple(sorted(options.items())))
        fn = kernel._cache.get(key)
        if fn is None:
            builder = {"init": _build_init, "warmup_init": _build_warmup_init,
                       "chunk": _build_chunk}[kind]
            fn = B.jit(builder(B, kernel, structure, num_chains, extra_fields,
                               self._target_fn, **options))
            kernel._cache[key] = fn
        return fn

    def _drive(self, B, fn, carry, total, args, phase, label, flags, keep_every=None):
        """Run ``fn`` chunk by chunk over ``total`` transitions of one phase.

        Returns ``(carry, outputs, done, interrupted)``: the carry after the last completed
        chunk, the kept per-transition outputs ({name: (C, N, ...)}, every ``keep_every``-th
        transition; None when ``keep_every`` is None or nothing was kept), the number of
        transitions completed, and whether Ctrl-C stopped the loop.
        """
        plan = _chunk_plan(total, self._chunk(B), flags)
        bar = make_progress_bar(total, f"{phase}{label}", self.progress_bar, leave=True,
                                interactive_only=True)
        chunks, rows, offset, done, interrupted = [], [], 0, 0, False
        # on JAX (asynchronous) a chunk is confirmed (its divergences read, which waits for it)
        # only after the next one is dispatched, so the host's work for a chunk overlaps the
        # previous chunk's run instead of adding to it; eager chunks are done when they return
        inflight, ahead = [], 1 if B.compiles_control_flow else 0

        def confirm():
            nonlocal carry, done, offset
            new_carry, ys, start, count = inflight[0]
            divergent = int(B.to_numpy(new_carry.num_divergent).sum())
            inflight.pop(0)
            carry = new_carry
            if keep_every is not None:
                # transitions t with (t + 1) % keep_every == 0 are kept
                chunks.append(ys)
                rows.append(offset + np.arange((-(start + 1)) % keep_every, count, keep_every))
                offset += B.shape(ys["position"])[0]   # length rows on JAX, count on eager
            done += count
            if bar is not None:
                bar.set_postfix(divergences=divergent, refresh=False)
                bar.update(count)

        try:
            try:
                latest = carry
                for control in plan:
                    # eager backends read the control on the host
                    latest, ys = fn(latest, B.asarray(control, dtype=B.int_dtype)
                                    if B.compiles_control_flow else control, args)
                    inflight.append((latest, ys, int(control[0]), int(control[1])))
                    if len(inflight) > ahead:
                        confirm()
                while inflight:
                    confirm()
            except KeyboardInterrupt:   # lands in a wait (JAX) or in a chunk (eager)
                interrupted = True
                warnings.warn(f"interrupted during {phase}: keeping the {done} transitions "
                              "completed so far", UserWarning, stacklevel=4)
        finally:
            if bar is not None:
                bar.close()
        outputs = None
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        if rows.size:
            gather = self.kernel._cache.get("gather")
            if gather is None:
                gather = self.kernel._cache["gather"] = B.jit(_gather_rows)
            outputs = gather(chunks, B.asarray(rows, dtype=B.int_dtype))
        return carry, outputs, done, interrupted

    @staticmethod
    def _assemble(B, outputs, extra_fields):
        """(samples (C, N, d), extra {name: (C, N, ...)}) from a phase's kept outputs (or
        (None, {}) when there are none)."""
        if outputs is None:
            return None, {}
        ys = dict(outputs)
        samples = ys.pop("position")
        if "potential_energy" in extra_fields:
            ys["potential_energy"] = -ys["logdensity"]
        return samples, ys

    def _run_chains(self, B, chains, chain_keys, init_flat, start, args, extra_fields,
                    do_warmup, do_sample, collect_warmup=False):
        kernel = self.kernel
        n = len(chains)
        dtype = B.float_dtype
        label = f" (chain {chains[0]})" if n == 1 and self.num_chains > 1 else ""
        zeros_int = B.zeros((n,), dtype=B.int_dtype)
        (da_init, _, da_final), (w_init, _, _) = _adaptation(self.kernel)
        groups = n if kernel.adapt_per_chain else 1
        interrupted = False
        no_stats = {k: np.zeros(n, dtype=np.int64) for k in ("divergent", "steps", "nonfinite")}
        warmup_stats = no_stats
        fn = self._compiled(B, "chunk", n, extra_fields, length=self._chunk(B))
        if start is None:
            state, init_flat = self._initial_state(B, chains, chain_keys, init_flat, args)
            dim = B.shape(init_flat)[-1]
            step_size = kernel._initial_step_size(chains, self.num_chains, dtype)
            imm = kernel._initial_inverse_mass_matrix(chains, dim, self.num_chains, dtype)
            if do_warmup and self.num_warmup > 0 and (kernel.adapt_step_size
                                                      or kernel.adapt_mass_matrix):
                if kernel.adapt_step_size:
                    warmup_init = self._compiled(B, "warmup_init", n)
                    step_size = warmup_init(_fold(B, chain_keys, 3), state, step_size, imm, args)
                if kernel.adapt_mass_matrix:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")    # warned below, at the user's call
                        windows = windowed_schedule(self.num_warmup)
                    if self.num_warmup < 20:
                        warnings.warn(f"num_warmup={self.num_warmup} < 20: only the step size "
                                      "is adapted (Stan's rule); the mass matrix keeps its "
                                      "initial value", UserWarning, stacklevel=5)
                else:
                    windows = [AdaptationWindow(0, self.num_warmup - 1, False)]
                flags = schedule_arrays(windows, self.num_warmup)
            else:
                flags = {"slow": np.zeros(self.num_warmup, dtype=bool),
                         "window_end": np.zeros(self.num_warmup, dtype=bool)}
            flags["adapt"] = np.ones(self.num_warmup, dtype=bool) & (
                kernel.adapt_step_size or kernel.adapt_mass_matrix)
            carry = _Carry(state, step_size, imm, da_init(step_size[:groups]),
                           w_init(groups, dim, dtype), _fold(B, chain_keys, 0),
                           zeros_int, zeros_int, zeros_int)
            warmup_outputs = None
            if do_warmup and self.num_warmup > 0:
                carry, warmup_outputs, done, interrupted = self._drive(
                    B, fn, carry, self.num_warmup, args, "warmup", label, flags,
                    keep_every=1 if collect_warmup else None)
                if kernel.adapt_step_size and done == self.num_warmup:
                    carry = carry._replace(step_size=B.broadcast_to(
                        da_final(carry.dual_averaging), (n,)))
                warmup_stats = {"divergent": B.to_numpy(carry.num_divergent),
                                "steps": B.to_numpy(carry.num_steps),
                                "nonfinite": B.to_numpy(carry.num_nonfinite)}
            start = MCMCState(carry.state, carry.step_size, carry.inverse_mass_matrix)
        else:
            dim = B.shape(start.hmc_state.position)[-1]
        result = {"chains": chains, "state": start, "warmup": warmup_stats,
                  "interrupted": interrupted, "samples": B.zeros((n, 0, dim), dtype=dtype),
                  "extra": {}, "sample": no_stats}
        if collect_warmup and start is not None and warmup_stats is not no_stats:
            samples, extra = self._assemble(B, warmup_outputs, extra_fields)
            if samples is not None:
                result.update(samples=samples, extra=extra, sample=warmup_stats)
        if not do_sample or interrupted:
            return result
        total = self.num_samples * self.thinning
        imm = start.inverse_mass_matrix
        # the same carry structure as warmup's (one compiled program for both phases)
        carry = _Carry(start.hmc_state, start.step_size, imm, da_init(start.step_size[:groups]),
                       w_init(groups, dim, dtype), _fold(B, chain_keys, 1),
                       zeros_int, zeros_int, zeros_int)
        flags = {name: np.zeros(total, dtype=bool) for name in ("adapt", "slow", "window_end")}
        carry, outputs, done, interrupted = self._drive(B, fn, carry, total, args, "sample",
                                                        label, flags, keep_every=self.thinning)
        result["interrupted"] = interrupted
        result["state"] = MCMCState(carry.state, carry.step_size, carry.inverse_mass_matrix)
        result["sample"] = {"divergent": B.to_numpy(carry.num_divergent),
                            "steps": B.to_numpy(carry.num_steps),
                            "nonfinite": B.to_numpy(carry.num_nonfinite)}
        samples, extra = self._assemble(B, outputs, extra_fields)
        if samples is not None:
            result.update(samples=samples, extra=extra)
        else:
            result.update(samples=B.zeros((n, 0, dim), dtype=dtype), extra={})
        return result

    def _initial_state(self, B, chains, chain_keys, init_flat, args):
        """Initial HMC states of the chains, redrawing where the strategy allows."""
        kernel = self.kernel
        structure = self._structure
        init = self._compiled(B, "init", len(chains))
        dim = B.shape(init_flat)[-1]
        strategy = kernel.init_strategy
        position = init_flat
        model_point = self._model_point if kernel.model is not None else None
        if kernel.model is not None:
            retry = model_point is not None
        else:
            if strategy == "zeros":
                position = B.zeros_like(init_flat)
            retry = strategy == "uniform"
        tries = 0

        def draw(attempt):
            keys = _fold(B, [B.key_data(B.fold_in(k, 2)) for k in chain_keys], attempt)
            return B.map(lambda k: B.uniform(k, (dim,), dtype=B.dtype_of(init_flat),
                                             minval=-_INIT_RADIUS, maxval=_INIT_RADIUS), keys)

        if kernel.model is None and strategy == "uniform":
            position = draw(0)
        state = init(position, args)
        while True:
            ld = B.to_numpy(state.logdensity)
            grad = B.to_numpy(state.logdensity_grad)
            bad = ~(np.isfinite(ld) & np.all(np.isfinite(grad), axis=-1))
            if not bad.any():
                return state, position
            redrawn = None
            if retry and tries < _INIT_TRIES:
                if model_point is None:
                    redrawn = B.where(B.asarray(bad)[:, None], draw(tries + 1), position)
                else:
                    # one model run per chain still without a finite point
                    old = B.to_numpy(position)
                    new = old.copy()
                    for i in np.flatnonzero(bad):
                        new[i] = B.to_numpy(model_point(chains[i], chain_keys[i], tries + 1))
                    # a strategy that draws nothing (init_to_value) gives the same point
                    redrawn = (None if np.array_equal(new, old)
                               else B.asarray(new, dtype=B.dtype_of(init_flat)))
            if redrawn is None:
                c = int(np.argmax(bad))
                logdensity = _flat_logdensity(self._target_fn, B, structure).bind(args)
                raise ValueError(_nonfinite_message(B, logdensity, structure,
                                                    B.to_numpy(position)[c], ld[c], grad[c],
                                                    chains[c], tries))
            tries += 1
            position = redrawn
            state = init(position, args)
