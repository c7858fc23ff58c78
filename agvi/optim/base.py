"""The two layers of :mod:`agvi.optim`: gradient transformations and optimisers.

A :class:`GradientTransformation` is a pair of pure functions after optax (Babuschkin et al.,
2020): ``init(params) -> state`` and ``update(grads, state, params=None, *, value=None) ->
(updates, state)``, where ``updates`` are *additive* (``new_params = params + updates``) and
``value`` is the loss at ``params`` (read only by loss-aware pieces such as
:class:`~agvi.optim.schedules.ReduceLROnPlateau` and :func:`~agvi.optim.wrappers.skip_nonfinite`).
Transformations compose with :func:`chain`.

An :class:`Optimizer` wraps one transformation in the NumPyro-style interface that SVI uses: its
state is an :class:`OptimizerState` holding the current parameters, and
``update(grads, opt_state) -> (new_params, new_opt_state)`` applies the updates.

Every state is a NamedTuple (or dict) of Arrays, step counters included (int32 Arrays), so an
update compiles inside ``B.jit`` and runs in ``B.scan`` on JAX.

Backend: a transformation keeps the backend that was active when it was built (or the one passed
as ``backend=``) for its whole life, as every agvi object does (DESIGN.md section 2). Build the
optimiser inside the same ``agvi.use_backend`` block as the model and the SVI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..backends import Backend, get_backend

__all__ = ["EmptyState", "GradientTransformation", "Optimizer", "OptimizerState",
           "apply_updates", "as_transformation", "chain"]


class EmptyState(NamedTuple):
    """State of a transformation that keeps none (a pytree without leaves)."""


class OptimizerState(NamedTuple):
    """State of an :class:`Optimizer`.

    Attributes
    ----------
    params : pytree of Arrays
        The current parameters.
    inner : pytree
        The state of the optimiser's :class:`GradientTransformation`.
    """

    params: Any
    inner: Any


def resolve_backend(backend) -> Backend:
    """``backend`` if it is a Backend, else the active one (:func:`agvi.get_backend`)."""
    if backend is None:
        return get_backend()
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be an agvi Backend or None, got {type(backend).__name__}")
    return backend


class GradientTransformation:
    """A pure, composable gradient transformation (optax's ``GradientTransformation``).

    Parameters
    ----------
    init : callable
        ``init(params) -> state``; ``params`` a pytree of Arrays, ``state`` a pytree of Arrays.
    update : callable
        ``update(grads, state, params, value) -> (updates, state)``; ``grads`` and ``updates``
        have the structure and shapes of ``params``; ``params`` and ``value`` (a scalar loss)
        may be None when the transformation does not read them.
    backend : Backend or None
        The backend its arrays belong to (default: the active backend when it is built).
    name : str
        Shown by ``repr``.
    """

    def __init__(self, init: Callable, update: Callable, backend=None, name: str = "transform"):
        self._init = init
        self._update = update
        self.backend = resolve_backend(backend)
        self.name = name

    def init(self, params):
        """The initial state for ``params`` (a pytree of Arrays)."""
        return self._init(params)

    def update(self, grads, state, params=None, *, value=None):
        """Transform ``grads`` into additive ``updates``.

        Parameters
        ----------
        grads : pytree of Arrays, the structure and shapes of ``params``
        state : pytree, from :meth:`init` or a previous :meth:`update`
        params : pytree of Arrays or None
            The current parameters (needed by weight decay and parameter averaging).
        value : scalar Array or float or None
            The loss at ``params`` (needed by loss-aware transformations).

        Returns
        -------
        (updates, new_state)
        """
        return self._update(grads, state, params, value)

    def __repr__(self):
        return f"GradientTransformation({self.name})"


def as_transformation(obj) -> GradientTransformation:
    """The :class:`GradientTransformation` behind ``obj`` (an Optimizer or a transformation).

    Raises
    ------
    TypeError
        If ``obj`` is neither (for example a stateful ``from_torch_optim`` optimiser, which
        cannot be wrapped or chained).
    """
    if isinstance(obj, GradientTransformation):
        return obj
    tx = getattr(obj, "transformation", None)
    if isinstance(tx, GradientTransformation):
        return tx
    raise TypeError(
        f"expected an agvi.optim Optimizer or GradientTransformation, got {type(obj).__name__}"
        " (stateful torch.optim adapters cannot be wrapped, chained or partitioned)")


def chain(*transforms, backend=None) -> GradientTransformation:
    """Apply transformations one after another (the updates of one are the grads of the next).

    Parameters
    ----------
    *transforms : GradientTransformation or Optimizer
    backend : Backend or None

    Returns
    -------
    GradientTransformation
        Its state is a tuple with one state per transformation.
    """
    txs = tuple(as_transformation(t) for t in transforms)

    def init(params):
        return tuple(t.init(params) for t in txs)

    def update(grads, state, params, value):
        new_state = []
        for t, s in zip(txs, state):
            grads, s = t.update(grads, s, params, value=value)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update, backend or (txs[0].backend if txs else None),
                                  name="chain(" + ", ".join(t.name for t in txs) + ")")


def apply_updates(params, updates, backend=None):
    """``params + updates`` leafwise, each result in the dtype of its parameter.

    Parameters
    ----------
    params, updates : pytrees of Arrays of one structure and shapes

    Returns
    -------
    pytree of Arrays
    """
    B = resolve_backend(backend)
    return B.tree_map(lambda p, u: p + B.astype(u, B.dtype_of(p)), params, updates)


class Optimizer:
    """A functional optimiser over pytrees of parameters (NumPyro's interface).

    Parameters
    ----------
    transformation : GradientTransformation
        Maps gradients to additive updates (learning rate and sign included).

    Notes
    -----
    ``init(params) -> opt_state``; ``update(grads, opt_state, params=None, *, value=None) ->
    (new_params, new_opt_state)``; ``get_params(opt_state) -> params``. Everything is a pure
    function of Arrays, so an update compiles with ``B.jit``.

    Examples
    --------
    >>> import numpy as np
    >>> from agvi.optim import SGD
    >>> opt = SGD(0.1)
    >>> state = opt.init({"x": np.array([1.0, 2.0])})
    >>> params, state = opt.update({"x": np.array([1.0, 1.0])}, state)
    >>> params["x"]
    array([0.9, 1.9])
    """

    def __init__(self, transformation: GradientTransformation):
        self.transformation = as_transformation(transformation)
        self.backend = self.transformation.backend

    def init(self, params) -> OptimizerState:
        """The initial :class:`OptimizerState` for ``params``.

        Parameters
        ----------
        params : pytree of floating Arrays
            Leaves that are not arrays of this optimiser's backend (Python floats, NumPy arrays)
            are converted with ``B.asarray``.

        Raises
        ------
        TypeError
            If a leaf is an array of another framework: the optimiser was built under another
            backend (build it inside the same ``agvi.use_backend`` block, or pass ``backend=``).
        """
        B = self.backend

        def convert(x):
            if B.is_array(x):
                return x
            try:
                return B.asarray(x)
            except TypeError as exc:
                raise TypeError(
                    f"params leaf of type {type(x).__name__} does not belong to this optimiser's "
                    f"backend {B!r}; build the optimiser under the parameters' backend "
                    "(agvi.use_backend) or pass backend=") from exc

        params = B.tree_map(convert, params)
        return OptimizerState(params, self.transformation.init(params))

    def update(self, grads, opt_state: OptimizerState, params=None, *, value=None):
        """One optimisation step.

        Parameters
        ----------
        grads : pytree of Arrays, structure and shapes of the parameters
            Gradients of the loss (to be minimised) at ``params``.
        opt_state : OptimizerState
        params : pytree of Arrays or None
            The parameters the gradients were taken at (default ``opt_state.params``).
        value : scalar Array or float or None
            The loss at ``params``; required by :class:`~agvi.optim.ReduceLROnPlateau` step sizes.

        Returns
        -------
        (new_params, new_opt_state)
        """
        if params is None:
            params = opt_state.params
        updates, inner = self.transformation.update(grads, opt_state.inner, params, value=value)
        new_params = apply_updates(params, updates, self.backend)
        return new_params, OptimizerState(new_params, inner)

    def stable_update(self, grads, opt_state: OptimizerState, params=None, *, value=None):
        """:meth:`update`, except that a step with a non-finite gradient (or ``value``) leaves
        the parameters and the state unchanged; the state keeps its structure, so ``update`` and
        ``stable_update`` can be mixed (SVI's ``stable_update`` counts the skips itself).

        Returns
        -------
        (new_params, new_opt_state, is_finite)
            ``is_finite`` is a 0-d boolean Array: whether the step was taken.
        """
        B = self.backend
        if params is None:
            params = opt_state.params
        leaves = B.tree_leaves(grads)
        ok = B.all(B.isfinite(leaves[0]))
        for g in leaves[1:]:
            ok = B.logical_and(ok, B.all(B.isfinite(g)))
        if value is not None:
            ok = B.logical_and(ok, B.all(B.isfinite(B.asarray(value))))
        # Zeros in place of bad gradients keep the discarded branch free of inf - inf warnings.
        safe = B.tree_map(lambda g: B.where(ok, g, B.zeros_like(g)), grads)
        new_params, new_state = self.update(safe, opt_state, params, value=value)
        new_state = B.tree_map(lambda n, o: B.where(ok, n, o), new_state,
                               OptimizerState(params, opt_state.inner))
        return new_state.params, new_state, ok

    def get_params(self, opt_state: OptimizerState):
        """The current parameters held in ``opt_state``."""
        return opt_state.params

    def ema_params(self, opt_state: OptimizerState):
        """The bias-corrected moving average of the parameters kept by an
        :func:`~agvi.optim.EMA` inside this optimiser (see :func:`agvi.optim.ema_params`)."""
        from .wrappers import ema_params

        return ema_params(opt_state, self.backend)

    def __repr__(self):
        return f"{type(self).__name__}({self.transformation.name})"
