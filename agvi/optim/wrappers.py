"""Wrappers: different optimisers for different parameters, parameter averaging, and skipping
non-finite steps.
"""

from __future__ import annotations

import fnmatch
from typing import Any, NamedTuple

import optree

from .base import (
    GradientTransformation,
    Optimizer,
    OptimizerState,
    as_transformation,
    resolve_backend,
)

__all__ = ["EMA", "EMAState", "SkipNonfiniteState", "ema_params", "leaf_names",
           "multi_transform", "partition", "skip_nonfinite"]


def leaf_names(tree) -> list:
    """The names of the leaves of ``tree`` in flattening order: the path of dict keys, sequence
    indices and NamedTuple fields joined by ``"/"`` (a flat dict's leaves are named by their
    keys)."""
    paths, _, _ = optree.tree_flatten_with_path(tree, none_is_leaf=False)
    return ["/".join(str(k) for k in path) for path in paths]


def _labels_from_keys(keys, names):
    labels = []
    for name in names:
        for key in keys:
            if (callable(key) and key(name)) or (isinstance(key, str) and (
                    key == name or fnmatch.fnmatchcase(name, key))):
                labels.append(key)
                break
        else:
            raise ValueError(f"parameter {name!r} matches no key of `transforms` (keys: "
                             f"{list(keys)!r}); add a key for it, e.g. '*' as a catch-all")
    return labels


def multi_transform(transforms: dict, param_labels=None, backend=None) -> Optimizer:
    """Use a different optimiser for each group of parameters (optax's ``multi_transform``).

    Parameters
    ----------
    transforms : dict {label: Optimizer or GradientTransformation}
        The optimiser of each group; each sees only its group's leaves (as a list).
    param_labels : pytree of labels, callable or None
        A pytree with the parameters' structure whose leaves are keys of ``transforms``, or a
        callable ``param_labels(params) -> such a pytree``. ``None`` matches each leaf's name
        (:func:`leaf_names`) against the keys in order: a string key matches the name exactly or
        as an ``fnmatch`` pattern (``"enc*"``), a callable key is a predicate ``key(name) ->
        bool``; the first match wins.
    backend : Backend or None

    Returns
    -------
    Optimizer
        Its inner state is a dict {label: state of that group's optimiser} (a callable key
        is stored under ``"#i"``, ``i`` its position in ``transforms``).

    Raises
    ------
    ValueError
        If a leaf has a label that is not a key of ``transforms`` or matches no key.
    """
    txs = {k: as_transformation(v) for k, v in transforms.items()}
    B = resolve_backend(backend)

    def labels_of(tree):
        if param_labels is None:
            return _labels_from_keys(list(txs), leaf_names(tree))
        tree_labels = param_labels(tree) if callable(param_labels) else param_labels
        labels = optree.tree_leaves(tree_labels, none_is_leaf=False)
        bad = [lab for lab in labels if lab not in txs]
        if bad:
            raise ValueError(f"param_labels uses labels {bad!r} that are not keys of "
                             f"`transforms` ({list(txs)!r})")
        return labels

    # State keys: the labels when they are strings, "#i" for callable keys.
    skeys = {k: (k if isinstance(k, str) else f"#{i}") for i, k in enumerate(txs)}

    def groups(labels, leaves):
        return {k: [x for lab, x in zip(labels, leaves) if lab == k] for k in txs}

    def init(params):
        labels = labels_of(params)
        by = groups(labels, B.tree_leaves(params))
        return {skeys[k]: txs[k].init(by[k]) for k in txs}

    def update(grads, state, params, value):
        labels = labels_of(params if params is not None else grads)
        leaves, treedef = B.tree_flatten(grads)
        g_by = groups(labels, leaves)
        p_by = groups(labels, B.tree_leaves(params)) if params is not None else {k: None
                                                                                  for k in txs}
        new_state, u_by = {}, {}
        for k in txs:
            u_by[k], new_state[skeys[k]] = txs[k].update(g_by[k], state[skeys[k]], p_by[k],
                                                         value=value)
        iters = {k: iter(u) for k, u in u_by.items()}
        return B.tree_unflatten(treedef, [next(iters[lab]) for lab in labels]), new_state

    return Optimizer(GradientTransformation(init, update, B, name="multi_transform"))


def partition(param_labels, optimizers: dict, backend=None) -> Optimizer:
    """``multi_transform(optimizers, param_labels)`` with the labelling first."""
    return multi_transform(optimizers, param_labels, backend)


class EMAState(NamedTuple):
    """State of :func:`EMA`.

    Attributes
    ----------
    inner : the wrapped optimiser's transformation state.
    count : int32 0-d Array, steps averaged.
    ema : pytree like the parameters, the (biased, zero-started) moving average.
    decay : 0-d Array, the decay.
    """

    inner: Any
    count: Any
    ema: Any
    decay: Any


def EMA(optimizer, decay: float = 0.999, backend=None) -> Optimizer:
    """Keep an exponential moving average of the parameters (mean-teacher weight smoothing).

    After every step ``ema = decay * ema + (1 - decay) * new_params`` (started at zero); the
    optimisation itself is unchanged. Read the bias-corrected average
    ``ema / (1 - decay ** count)`` with :func:`ema_params`.

    Parameters
    ----------
    optimizer : Optimizer or GradientTransformation
    decay : float in [0, 1)
    backend : Backend or None

    Returns
    -------
    Optimizer

    Raises
    ------
    ValueError
        If ``decay`` is outside [0, 1).

    References
    ----------
    Tarvainen, A. and Valpola, H. (2017). Mean teachers are better role models. NeurIPS.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    tx = as_transformation(optimizer)
    B = resolve_backend(backend) if backend is not None else tx.backend

    def init(params):
        return EMAState(tx.init(params), B.zeros((), B.dtype("int32")),
                        B.tree_map(B.zeros_like, params), B.asarray(decay))

    def update(grads, state, params, value):
        if params is None:
            raise ValueError("EMA needs params: call update(grads, state, params)")
        updates, inner = tx.update(grads, state.inner, params, value=value)
        ema = B.tree_map(lambda e, p, u: decay * e + (1.0 - decay) * (p + u),
                         state.ema, params, updates)
        return updates, EMAState(inner, state.count + 1, ema, state.decay)

    return Optimizer(GradientTransformation(init, update, B, name=f"ema({tx.name})"))


def ema_params(opt_state: OptimizerState, backend=None):
    """The bias-corrected moving average of the parameters held in ``opt_state``.

    Parameters
    ----------
    opt_state : OptimizerState
        The state of an optimiser that contains an :func:`EMA` (possibly nested in other
        wrappers).

    Returns
    -------
    pytree of Arrays like the parameters (the parameters themselves before the first step).

    Raises
    ------
    ValueError
        If ``opt_state`` holds no EMA state.
    """
    B = resolve_backend(backend)
    found = [s for s in optree.tree_leaves(opt_state.inner, none_is_leaf=False,
                                           is_leaf=lambda x: isinstance(x, EMAState))
             if isinstance(s, EMAState)]
    if not found:
        raise ValueError("opt_state holds no EMA state; wrap the optimiser with agvi.optim.EMA")
    s = found[0]

    def corrected(e, p):
        t = B.astype(s.count, B.dtype_of(e))
        d = B.astype(s.decay, B.dtype_of(e))
        denom = B.where(s.count > 0, 1.0 - d ** t, t * 0.0 + 1.0)
        return B.where(s.count > 0, e / denom, p)

    return B.tree_map(corrected, s.ema, opt_state.params)


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`: the wrapped state and the number of skipped steps."""

    inner: Any
    num_skipped: Any


def skip_nonfinite(optimizer, backend=None) -> Optimizer:
    """Skip any step whose gradients (or loss ``value``) are not all finite.

    A skipped step leaves the parameters and the wrapped state unchanged and adds one to
    ``num_skipped``; it is selected with ``B.where``, so it compiles.

    Parameters
    ----------
    optimizer : Optimizer or GradientTransformation
    backend : Backend or None

    Returns
    -------
    Optimizer
        Its inner state is a :class:`SkipNonfiniteState`.
    """
    tx = as_transformation(optimizer)
    B = resolve_backend(backend) if backend is not None else tx.backend

    def init(params):
        return SkipNonfiniteState(tx.init(params), B.zeros((), B.dtype("int32")))

    def update(grads, state, params, value):
        leaves = B.tree_leaves(grads)
        ok = B.all(B.isfinite(leaves[0]))
        for g in leaves[1:]:
            ok = B.logical_and(ok, B.all(B.isfinite(g)))
        if value is not None:
            ok = B.logical_and(ok, B.all(B.isfinite(B.asarray(value))))
        # Zeros in place of bad gradients keep the discarded branch free of inf - inf warnings.
        safe = B.tree_map(lambda g: B.where(ok, g, B.zeros_like(g)), grads)
        updates, inner = tx.update(safe, state.inner, params, value=value)
        updates = B.tree_map(lambda u: B.where(ok, u, B.zeros_like(u)), updates)
        inner = B.tree_map(lambda new, old: B.where(ok, new, old), inner, state.inner)
        skipped = B.where(ok, state.num_skipped, state.num_skipped + 1)
        return updates, SkipNonfiniteState(inner, skipped)

    return Optimizer(GradientTransformation(init, update, B, name=f"skip_nonfinite({tx.name})"))
