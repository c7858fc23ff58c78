"""Stochastic variational inference: pure ``init`` / ``update`` / ``run`` over an ``SVIState``.

Parameters live in unconstrained space inside the optimiser state; each ``param`` site's
constraint is applied with ``biject_to(constraint)`` before the values are substituted into
the model and the guide (:meth:`SVI.get_params` returns the constrained values).

Backends: gradients come from ``B.value_and_grad`` (reverse mode) or ``B.jacobian(...,
mode="forward")`` on every backend. Where the backend compiles (``B.has_jit``, JAX) ``update``
is jitted once per SVI object and ``run`` compiles a ``B.scan`` over a chunk of steps (so the
progress bar moves between chunks); the compiled functions are cached on the SVI object, so a
second ``run`` with the same chunk length does not recompile. Elsewhere ``run`` is a Python loop;
on torch (``B.compiles_pure``) its step is traced into a graph on its second call
(``B.compile_pure``, the key entering as an int64 tensor so that the graph records the draws),
so, as under ``jax.jit``, Python side effects of the model, guide and loss happen only while
tracing; a step that cannot be traced runs eagerly, and ``set_backend("torch", trace=False)``
runs every step eagerly.

References
----------
Hoffman, Blei, Wang and Paisley (2013), "Stochastic variational inference", JMLR 14.
The interface follows NumPyro's ``numpyro.infer.svi.SVI``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backends import get_backend, use_backend
from ..distributions.transforms import biject_to
from ..handlers.handlers import replay, seed, substitute, trace
from .progress import progress_bar as make_progress_bar

__all__ = ["SVI", "SVIRunResult", "SVIState"]


def _array_key_step(B, step):
    """``step(state, args, kwargs)`` with the host key of ``state`` passed as an int64 Array
    (which every random primitive accepts, and a traced graph takes as an input) and given
    back as a host key."""
    def call(state, args, kwargs):
        key = state.rng_key
        if isinstance(key, np.ndarray):
            state = state._replace(rng_key=B.asarray(key.astype(np.int64), dtype=B.int_dtype))
        state, loss = step(state, args, kwargs)
        if B.is_array(state.rng_key):
            state = state._replace(rng_key=B.to_numpy(state.rng_key).astype(np.uint32))
        return state, loss

    return call


class SVIState(NamedTuple):
    """The state of :class:`SVI`.

    Attributes
    ----------
    optim_state : pytree
        The optimiser's state; it holds the *unconstrained* parameters.
    mutable_state : pytree or None
        State carried by the objective between steps, for a loss with ``loss_with_state`` and
        ``init_state`` methods (e.g. :class:`~agvi.infer.elbo.TraceGraph_ELBO`'s
        decaying-average baselines); None otherwise.
    rng_key : Array, shape (2,)
        The key for the next step.
    num_skipped : Array, shape (), int
        How many :meth:`SVI.stable_update` steps were skipped for a non-finite loss or gradient.
    """

    optim_state: Any
    mutable_state: Any
    rng_key: Any
    num_skipped: Any


class SVIRunResult(NamedTuple):
    """The result of :meth:`SVI.run`.

    Attributes
    ----------
    params : dict
        The final constrained parameters by name.
    state : SVIState
        The final state (pass it as ``init_state`` to continue).
    losses : Array, shape (num_steps,)
        The loss before each step.
    """

    params: dict
    state: SVIState
    losses: Any


def _as_optimizer(optim):
    if hasattr(optim, "get_params") and hasattr(optim, "init") and hasattr(optim, "update"):
        return optim
    if hasattr(optim, "init") and hasattr(optim, "update"):
        # a gradient transformation (updates are additive): wrap it into an Optimizer
        from ..optim.base import Optimizer
        return Optimizer(optim)
    raise TypeError(f"SVI: `optim` must be an agvi.optim optimiser (init / update / get_params) "
                    f"or a gradient transformation, got {type(optim).__name__}")


class SVI:
    """Stochastic variational inference.

    Parameters
    ----------
    model : callable
        The model (a plain function with :func:`agvi.sample` sites).
    guide : callable
        The variational family (a function with :func:`agvi.param` and sample sites, or an
        autoguide from :mod:`agvi.infer.autoguide`).
    optim : Optimizer
        An :mod:`agvi.optim` optimiser (``init(params)``, ``update(grads, state, params,
        value=loss) -> (new_params, new_state)``, ``get_params(state)``) or a gradient
        transformation (wrapped into one).
    loss : callable
        ``loss(key, params, model, guide, *args, **kwargs) -> scalar`` to minimise, e.g.
        ``Trace_ELBO()`` (any callable with this signature is a custom objective).
    **static_kwargs
        Keyword arguments passed to the model and guide on every call; they are closed over
        (static under ``jit``), so Python values such as sizes may go here. Positional and
        keyword arguments of ``update`` / ``run`` are traced on JAX (new Array values do not
        recompile, but Python ints that set shapes must be static kwargs).

    Raises
    ------
    TypeError
        If ``optim`` is not an optimiser or ``loss`` is not callable.

    Notes
    -----
    The SVI keeps the backend that was active when it was built (every method runs under it).
    """

    def __init__(self, model, guide, optim, loss, **static_kwargs):
        if not callable(loss):
            raise TypeError(f"SVI: `loss` must be callable loss(key, params, model, guide, "
                            f"*args, **kwargs), got {type(loss).__name__}")
        self.model = model
        self.guide = guide
        self.optim = _as_optimizer(optim)
        self.loss = loss
        self.static_kwargs = static_kwargs
        self.B = get_backend()
        self._transforms = None
        self._jit_cache = {}

    # -- parameters ------------------------------------------------------------------------
    def _constrain(self, params_u):
        return {n: (self._transforms[n](u) if n in self._transforms else u)
                for n, u in params_u.items()}

    def init(self, key, *args, init_params=None, **kwargs):
        """Trace the guide and the model once, collect their ``param`` sites and init the optimiser.

        Parameters
        ----------
        key : Array, shape (2,) or int
        *args, **kwargs
            The model's and guide's arguments.
        init_params : dict or None
            Constrained initial values overriding the ``param`` sites' own.

        Returns
        -------
        SVIState

        Raises
        ------
        ValueError
            If neither the model nor the guide has a ``param`` site.
        """
        from ..random import sanitize_seed

        with use_backend(self.B):
            B = self.B
            kwargs = {**self.static_kwargs, **kwargs}
            key = sanitize_seed(key)
            keys = B.split(key, 3)
            key, k_guide, k_model = keys[0], keys[1], keys[2]
            data = {} if init_params is None else dict(init_params)
            guide_tr = trace(substitute(seed(self.guide, k_guide), data=data)).get_trace(
                *args, **kwargs)
            model_tr = trace(replay(substitute(seed(self.model, k_model), data=data),
                                    trace=guide_tr)).get_trace(*args, **kwargs)
            params, transforms = {}, {}
            for tr in (model_tr, guide_tr):
                for name, site in tr.items():
                    if site["type"] != "param" or name in params:
                        continue
                    value = site["value"]
                    if not B.is_array(value):
                        value = B.asarray(value)
                    if not B.is_floating(value):
                        value = B.astype(value, B.float_dtype)
                    t = biject_to(site["kwargs"]["constraint"])
                    transforms[name] = t
                    params[name] = t.inverse(value)
            if not params:
                raise ValueError("SVI.init: neither the model nor the guide has an agvi.param "
                                 "site; there is nothing to optimise")
            self._transforms = transforms
            optim_state = self.optim.init(params)
            loss_state = None
            if _is_stateful(self.loss):
                loss_state = self.loss.init_state(k_guide, self._constrain(params), self.model,
                                                  self.guide, *args, **kwargs)
            return SVIState(optim_state, loss_state, key, B.asarray(0, dtype=B.int_dtype))

    def get_params(self, state: SVIState) -> dict:
        """The constrained parameters held in ``state``, a dict ``name -> Array``."""
        with use_backend(self.B):
            return self._constrain(self.optim.get_params(state.optim_state))

    # -- one step --------------------------------------------------------------------------
    def _loss_and_grads(self, key, params_u, loss_state, args, kwargs, forward_mode):
        """``(loss, grads, new_loss_state)``; the state passes through a stateless loss."""
        B = self.B

        kwargs = {**self.static_kwargs, **kwargs}  # closed over: static under jit
        stateful = _is_stateful(self.loss)

        def f(u):
            p = self._constrain(u)
            if stateful:
                return self.loss.loss_with_state(key, p, loss_state, self.model, self.guide,
                                                 *args, **kwargs)
            return self.loss(key, p, self.model, self.guide, *args, **kwargs), loss_state

        if not forward_mode:
            (loss, new_state), grads = B.value_and_grad(f, has_aux=True)(params_u)
            return loss, grads, new_state
        flat, unravel = B.ravel_pytree(params_u)
        g, _ = B.jacobian(lambda v: f(unravel(v)), mode="forward", has_aux=True)(flat)
        loss, new_state = f(params_u)
        return loss, unravel(B.reshape(g, B.shape(flat))), new_state

    def _step(self, state, args, kwargs, stable=False, forward_mode=False):
        B = self.B
        keys = B.split(state.rng_key, 2)
        rng_key, sub = keys[0], keys[1]
        params_u = self.optim.get_params(state.optim_state)
        loss, grads, new_loss_state = self._loss_and_grads(sub, params_u, state.mutable_state,
                                                           args, kwargs, forward_mode)
        new_params, new_opt = self.optim.update(grads, state.optim_state, params_u, value=loss)
        skipped = state.num_skipped
        if stable:
            finite = B.all(B.isfinite(loss))
            for g in B.tree_leaves(grads):
                finite = finite & B.all(B.isfinite(g))

            def keep(new, old):
                if B.is_array(new) and B.is_array(old):
                    return B.where(finite, new, old)
                return new

            new_opt = B.tree_map(keep, new_opt, state.optim_state)
            new_loss_state = B.tree_map(keep, new_loss_state, state.mutable_state)
            skipped = skipped + B.astype(B.logical_not(finite), B.dtype_of(skipped))
        loss = B.stop_gradient(loss)
        return SVIState(new_opt, new_loss_state, rng_key, skipped), loss

    def _compiled_step(self, stable, forward_mode):
        """The step, compiled: ``B.jit`` on JAX; on torch a traced graph (``B.compile_pure``),
        the key entering as an int64 array so that the graph records its draws."""
        k = ("step", stable, forward_mode)
        if k not in self._jit_cache:
            B = self.B

            def step(s, a, kw):
                return self._step(s, a, kw, stable, forward_mode)

            if B.has_jit:
                fn = B.jit(step)
            elif B.compiles_pure:
                fn = _array_key_step(B, B.compile_pure(step))
            else:
                fn = step
            self._jit_cache[k] = fn
        return self._jit_cache[k]

    def _check_init(self):
        if self._transforms is None:
            raise RuntimeError("SVI: call svi.init(key, *args) first (or pass init_state= to "
                               "run); the parameter constraints are read there")

    def update(self, state: SVIState, *args, forward_mode_differentiation: bool = False,
               **kwargs):
        """One optimisation step.

        Parameters
        ----------
        state : SVIState
        *args, **kwargs
            The model's and guide's arguments (Arrays are traced on JAX: new values do not
            recompile).
        forward_mode_differentiation : bool
            Take the gradient with forward mode (``B.jacobian(mode="forward")``), e.g. for
            models with ``while_loop``s that reverse mode cannot differentiate.

        Returns
        -------
        (SVIState, loss)
            ``loss`` is an Array of shape (), the objective at the parameters before the step.
        """
        self._check_init()
        with use_backend(self.B):
            fn = self._compiled_step(False, bool(forward_mode_differentiation))
            return fn(state, args, kwargs)

    def stable_update(self, state: SVIState, *args, forward_mode_differentiation: bool = False,
                      **kwargs):
        """As :meth:`update`, but a non-finite loss or gradient leaves the parameters and the
        optimiser state unchanged and adds one to ``state.num_skipped`` (the key still
        advances, so the next step draws new noise).

        Returns
        -------
        (SVIState, loss)
        """
        self._check_init()
        with use_backend(self.B):
            fn = self._compiled_step(True, bool(forward_mode_differentiation))
            return fn(state, args, kwargs)

    def evaluate(self, state: SVIState, *args, **kwargs):
        """The objective at the current parameters, with a key derived from ``state`` (which is
        not advanced). Returns an Array of shape ()."""
        self._check_init()
        with use_backend(self.B):
            B = self.B
            sub = B.split(state.rng_key, 2)[1]
            params = self.get_params(state)
            kwargs = {**self.static_kwargs, **kwargs}
            if _is_stateful(self.loss):
                loss = self.loss.loss_with_state(sub, params, state.mutable_state, self.model,
                                                 self.guide, *args, **kwargs)[0]
            else:
                loss = self.loss(sub, params, self.model, self.guide, *args, **kwargs)
            return B.stop_gradient(loss)

    # -- the loop --------------------------------------------------------------------------
    def _compiled_chunk(self, length, stable, forward_mode):
        k = ("chunk", length, stable, forward_mode)
        if k not in self._jit_cache:
            B = self.B

            def chunk(state, args, kwargs):
                return B.scan(lambda s, _: self._step(s, args, kwargs, stable, forward_mode),
                              state, None, length=length)

            self._jit_cache[k] = B.jit(chunk)
        return self._jit_cache[k]

    def run(self, key, num_steps: int, *args, progress_bar: bool = True,
            stable_update: bool = False, init_state: SVIState | None = None,
            forward_mode_differentiation: bool = False, init_params=None,
            num_chunks: int = 20, **kwargs) -> SVIRunResult:
        """Run ``num_steps`` optimisation steps.

        Parameters
        ----------
        key : Array, shape (2,) or int
            Used by :meth:`init` when ``init_state`` is None.
        num_steps : int
            Positive.
        *args, **kwargs
            The model's and guide's arguments.
        progress_bar : bool
            Show a ``tqdm`` bar with the running loss (if tqdm is installed).
        stable_update : bool
            Use :meth:`stable_update` steps.
        init_state : SVIState or None
            Continue from this state (e.g. a previous run's ``state``); ``key`` is then unused.
        forward_mode_differentiation : bool
        init_params : dict or None
            Passed to :meth:`init`.
        num_chunks : int
            With ``progress_bar`` on a compiling backend: the loop is compiled in chunks of
            ``num_steps // num_chunks`` steps (the bar moves once per chunk).

        Returns
        -------
        SVIRunResult
            ``losses`` has shape (num_steps,).

        Raises
        ------
        ValueError
            If ``num_steps`` is not a positive int.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or num_steps < 1:
            raise ValueError(f"SVI.run: num_steps must be a positive int, got {num_steps!r}")
        num_steps = int(num_steps)
        B = self.B
        with use_backend(B):
            if init_state is None:
                state = self.init(key, *args, init_params=init_params, **kwargs)
            else:
                self._check_init_from(init_state, args, kwargs, key)
                state = init_state
            kw = kwargs
            bar = make_progress_bar(num_steps, "SVI", progress_bar)
            losses = []
            fwd = bool(forward_mode_differentiation)
            if B.has_jit:
                chunk_len = max(1, num_steps // num_chunks) if progress_bar else num_steps
                done = 0
                while done < num_steps:
                    n = min(chunk_len, num_steps - done)
                    state, ls = self._compiled_chunk(n, stable_update, fwd)(state, args, kw)
                    losses.append(ls)
                    done += n
                    if bar is not None:
                        bar.update(n)
                        bar.set_postfix(loss=f"{float(ls[-1]):.4g}")
                all_losses = B.concatenate(losses, axis=0)
            else:
                every = max(1, num_steps // num_chunks)
                step = self._compiled_step(bool(stable_update), fwd)
                for i in range(num_steps):
                    state, loss = step(state, args, kw)
                    losses.append(loss)
                    if bar is not None:
                        bar.update(1)
                        if (i + 1) % every == 0:
                            bar.set_postfix(loss=f"{float(loss):.4g}")
                all_losses = B.stack(losses, axis=0)
            if bar is not None:
                bar.close()
            return SVIRunResult(self.get_params(state), state, all_losses)

    def _check_init_from(self, state, args, kwargs, key):
        if self._transforms is None:
            # a state restored into a fresh SVI object: read the constraints from a trace
            self.init(B_key(self.B, key), *args, **kwargs)

    # -- saving ----------------------------------------------------------------------------
    def state_to_host(self, state: SVIState) -> SVIState:
        """``state`` with every Array converted to NumPy (picklable, backend-free)."""
        B = self.B
        return B.tree_map(lambda x: np.array(B.to_numpy(x)) if B.is_array(x) or
                          isinstance(x, np.ndarray) else x, state)

    def state_from_host(self, host_state: SVIState) -> SVIState:
        """The inverse of :meth:`state_to_host`: NumPy leaves back to this SVI's backend
        (keys stay in the backend's own key type)."""
        B = self.B
        with use_backend(B):
            native_key = B.key(0)
            key = host_state.rng_key
            if not isinstance(native_key, np.ndarray):
                key = B.asarray(key, dtype=B.dtype_of(native_key))
            conv = B.tree_map(lambda x: B.asarray(x, dtype=B.dtype(str(x.dtype)))
                              if isinstance(x, np.ndarray) else x,
                              host_state._replace(rng_key=None))
            return conv._replace(rng_key=key)


def _is_stateful(loss) -> bool:
    """Whether ``loss`` carries state between steps (``init_state`` and ``loss_with_state``)."""
    return callable(getattr(loss, "loss_with_state", None)) and \
        callable(getattr(loss, "init_state", None))


def B_key(B, key):
    """``key`` as a key of ``B`` (an int seed is accepted; None gives seed 0)."""
    if key is None:
        return B.key(0)
    return key
