"""Interop: optax transformations on JAX and ``torch.optim`` classes on torch.

Both import their framework inside the function, so importing :mod:`agvi.optim` imports neither.
"""

from __future__ import annotations

from ..optim.base import GradientTransformation, Optimizer, OptimizerState, resolve_backend

__all__ = ["TorchOptimizer", "from_optax", "from_torch_optim"]


def from_optax(transformation, backend=None) -> Optimizer:
    """An agvi optimiser from an ``optax.GradientTransformation`` (JAX backend).

    The result is pure and compiles with ``B.jit``. A transformation that takes extra arguments
    (``optax.GradientTransformationExtraArgs``, e.g. ``optax.contrib.reduce_on_plateau``) gets
    the loss as ``value=``.

    Parameters
    ----------
    transformation : optax.GradientTransformation
    backend : Backend or None

    Returns
    -------
    Optimizer

    Raises
    ------
    ImportError
        If optax is not installed.
    TypeError
        If ``transformation`` has no ``init``/``update``.
    """
    try:
        import optax
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("from_optax needs optax: `pip install optax`") from exc
    if not (hasattr(transformation, "init") and hasattr(transformation, "update")):
        raise TypeError("transformation must be an optax.GradientTransformation, got "
                        f"{type(transformation).__name__}")
    extra = isinstance(transformation, optax.GradientTransformationExtraArgs)

    def update(grads, state, params, value):
        if extra and value is not None:
            return transformation.update(grads, state, params, value=value)
        return transformation.update(grads, state, params)

    return Optimizer(GradientTransformation(transformation.init, update, backend,
                                            name="optax"))


class _TorchHandle:
    """Holds the torch leaves and the ``torch.optim.Optimizer`` (an opaque, stateful leaf)."""

    def __init__(self, leaves, treedef, optimizer):
        self.leaves, self.treedef, self.optimizer = leaves, treedef, optimizer


class TorchOptimizer(Optimizer):
    """A ``torch.optim`` optimiser behind the agvi interface (see :func:`from_torch_optim`).

    Stateful: the torch optimiser keeps its moments inside itself, so ``update`` mutates the
    state it is given (reusing an old state continues from the newest one), it does not compile,
    and it cannot be wrapped by :func:`~agvi.optim.EMA`, :func:`~agvi.optim.skip_nonfinite`,
    chained or partitioned.
    """

    def __init__(self, optim_class, backend=None, **kwargs):
        self.optim_class, self.kwargs = optim_class, kwargs
        self.backend = resolve_backend(backend)
        self.transformation = None

    def init(self, params) -> OptimizerState:
        """Copy ``params`` (a pytree of torch tensors) into leaves owned by a new torch optimiser.

        Raises
        ------
        TypeError
            If a leaf is not a torch tensor.
        """
        import torch

        B = self.backend
        leaves, treedef = B.tree_flatten(params)
        bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
        if bad:
            raise TypeError(f"from_torch_optim needs torch tensors as parameters, got {bad}")
        owned = [torch.nn.Parameter(x.detach().clone()) for x in leaves]
        handle = _TorchHandle(owned, treedef, self.optim_class(owned, **self.kwargs))
        return OptimizerState(params, handle)

    def update(self, grads, opt_state, params=None, *, value=None):
        """Set ``.grad`` of the owned leaves to ``grads`` and call ``step()``.

        Returns
        -------
        (new_params, new_opt_state); ``new_params`` are detached copies of the owned leaves.
        """
        import torch

        h = opt_state.inner
        B = self.backend
        with torch.no_grad():
            if params is not None:
                for p, x in zip(h.leaves, B.tree_leaves(params)):
                    p.copy_(x)
            for p, g in zip(h.leaves, B.tree_leaves(grads)):
                p.grad = g.detach().clone().to(p.dtype)
        h.optimizer.step()
        new_params = B.tree_unflatten(h.treedef, [p.detach().clone() for p in h.leaves])
        return new_params, OptimizerState(new_params, h)

    def __repr__(self):
        return f"TorchOptimizer({self.optim_class.__name__}, {self.kwargs!r})"


def from_torch_optim(optim_class, backend=None, **kwargs) -> TorchOptimizer:
    """An agvi optimiser running a ``torch.optim`` class (torch backend).

    Parameters
    ----------
    optim_class : type
        A ``torch.optim.Optimizer`` subclass such as ``torch.optim.Adam`` (closure-based ones
        such as LBFGS are not supported).
    backend : Backend or None
    **kwargs
        Passed to ``optim_class`` (``lr=...``, ...).

    Returns
    -------
    TorchOptimizer
        Stateful and not compiled: see :class:`TorchOptimizer`.

    Raises
    ------
    TypeError
        If ``optim_class`` is not a ``torch.optim.Optimizer`` subclass.
    """
    import torch

    if not (isinstance(optim_class, type) and issubclass(optim_class, torch.optim.Optimizer)):
        raise TypeError("optim_class must be a torch.optim.Optimizer subclass such as "
                        f"torch.optim.Adam, got {optim_class!r}")
    return TorchOptimizer(optim_class, backend, **kwargs)
