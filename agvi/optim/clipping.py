"""Gradient clipping, by global norm and by value, as gradient transformations.

Chain them in front of an optimiser: ``chain(clip_by_global_norm(1.0), Adam(1e-3))``, or wrap
one: ``Optimizer(chain(clip_by_value(5.0), Adam(1e-3)))``.
"""

from __future__ import annotations

from .base import EmptyState, GradientTransformation, resolve_backend

__all__ = ["clip_by_global_norm", "clip_by_value", "global_norm"]


def global_norm(tree, backend=None):
    """The Euclidean norm of all leaves of ``tree`` together (a 0-d Array)."""
    B = resolve_backend(backend)
    leaves = B.tree_leaves(tree)
    total = sum(B.sum(g * g) for g in leaves[1:]) + B.sum(leaves[0] * leaves[0])
    return B.sqrt(total)


def clip_by_global_norm(max_norm: float, backend=None) -> GradientTransformation:
    """Rescale all gradients together so that their global norm is at most ``max_norm``.

    ``g * max_norm / max(norm, max_norm)`` with ``norm`` the Euclidean norm of every leaf
    together (Pascanu et al., 2013, Algorithm 1).

    Raises
    ------
    ValueError
        If ``max_norm`` is not positive.

    References
    ----------
    Pascanu, R., Mikolov, T. and Bengio, Y. (2013). On the difficulty of training recurrent
    neural networks. ICML.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    B = resolve_backend(backend)

    def update(grads, state, params, value):
        norm = global_norm(grads, B)
        factor = max_norm / B.maximum(norm, norm * 0.0 + max_norm)
        return B.tree_map(lambda g: g * B.astype(factor, B.dtype_of(g)), grads), state

    return GradientTransformation(lambda params: EmptyState(), update, B,
                                  name=f"clip_by_global_norm({max_norm})")


def clip_by_value(max_abs: float, backend=None) -> GradientTransformation:
    """Clip every gradient element to ``[-max_abs, max_abs]``.

    Raises
    ------
    ValueError
        If ``max_abs`` is not positive.
    """
    if not max_abs > 0:
        raise ValueError(f"max_abs must be positive, got {max_abs!r}")
    B = resolve_backend(backend)
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda g, s, p, v: (B.tree_map(lambda x: B.clip(x, -max_abs, max_abs), g), s), B,
        name=f"clip_by_value({max_abs})")
