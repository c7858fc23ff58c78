"""Gradient-estimator building blocks shared by the ELBOs and the functional losses.

Every helper returns a *surrogate*: an Array whose value is the quantity of interest and whose
gradient (by any backend's reverse or forward mode) is the chosen estimator of that quantity's
gradient. They only use :meth:`~agvi.backends.base.Backend.stop_gradient`, so they work
unchanged on NumPy+autograd, PyTorch and JAX, under ``jit`` and ``vmap``.

- pathwise (reparameterisation): the plain value; gradients flow through the draw.
- score function (REINFORCE): :func:`score_function_surrogate`.
- path derivative / sticking the landing: :func:`stop_gradient_distribution` rebuilds ``q``
  with its parameters cut from the graph, so ``log q(z)`` differentiates through ``z`` only.

References
----------
Williams (1992), "Simple statistical gradient-following algorithms" (score function).
Kingma and Welling (2014), "Auto-encoding variational Bayes" (pathwise).
Roeder, Wu and Duvenaud (2017), "Sticking the landing: simple, lower-variance gradient
estimators for variational inference", eq. 8 (path derivative).
"""

from __future__ import annotations

from ..backends import get_backend

__all__ = ["score_function_surrogate", "stop_gradient_distribution", "zero_with_grad"]


def zero_with_grad(B, x):
    """``x - stop_gradient(x)``: zero in value, the gradient of ``x`` in derivative.

    Parameters
    ----------
    B : Backend
    x : Array, any shape

    Returns
    -------
    Array, shape of ``x``, all zeros.
    """
    return x - B.stop_gradient(x)


def score_function_surrogate(cost, log_q, B=None):
    """Value ``0``, gradient ``cost * grad(log_q)`` with ``cost`` held constant.

    Parameters
    ----------
    cost : Array, shape broadcastable with ``log_q``
        The (per-sample) cost whose expectation is differentiated; no gradient flows into it.
    log_q : Array
        ``log q(z)`` of the non-reparameterised draw ``z`` (gradient wrt the guide parameters).
    B : Backend or None
        Default: the active backend.

    Returns
    -------
    Array, the broadcast shape, all zeros in value.

    Notes
    -----
    Adding this to a pathwise surrogate of ``E_q[cost]`` gives an unbiased gradient of the
    expectation with respect to the parameters of a distribution that has no ``rsample``
    (Williams, 1992).
    """
    B = get_backend() if B is None else B
    return B.stop_gradient(cost) * zero_with_grad(B, log_q)


def stop_gradient_distribution(d):
    """A copy of the distribution ``d`` whose parameters carry no gradient.

    Parameters
    ----------
    d : Distribution
        A family with ``arg_constraints`` naming its constructor arguments (every agvi family),
        or an ``Independent`` / expanded / transformed wrapper of one.

    Returns
    -------
    Distribution with the same law, batch and event shapes.

    Raises
    ------
    NotImplementedError
        If ``d``'s parameters cannot be recovered from its attributes.

    Notes
    -----
    Used for the path-derivative (sticking-the-landing) estimator: ``log q_sg(z(eps, phi))``
    differentiates only through the draw ``z`` (Roeder et al., 2017, eq. 8).
    """
    from ..distributions.distribution import ExpandedDistribution, Independent
    from ..distributions.transformed import TransformedDistribution

    B = d.B
    if isinstance(d, Independent):
        return Independent(stop_gradient_distribution(d.base_dist),
                           d.reinterpreted_batch_ndims)
    if isinstance(d, ExpandedDistribution):
        return stop_gradient_distribution(d.base_dist).expand(d.batch_shape)
    if isinstance(d, TransformedDistribution):
        return TransformedDistribution(stop_gradient_distribution(d.base_dist), d.transforms)
    names = list(getattr(d, "arg_constraints", {}))
    if not names or not all(hasattr(d, n) for n in names):
        raise NotImplementedError(
            f"stop_gradient_distribution: cannot rebuild {type(d).__name__} from its "
            "arg_constraints; use the plain (non path-derivative) estimator for this site")
    kwargs = {n: (B.stop_gradient(getattr(d, n)) if B.is_array(getattr(d, n))
                  else getattr(d, n)) for n in names}
    if type(d).__name__ == "Delta":  # its event_dim is a constructor argument too
        kwargs["event_dim"] = d.event_dim
    out = type(d)(**kwargs)
    if tuple(out.batch_shape) != tuple(d.batch_shape):
        out = out.expand(d.batch_shape)
    return out
