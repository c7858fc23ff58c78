"""Gradient-estimator building blocks shared by the ELBOs and the functional losses.

Every helper returns a *surrogate*: an Array whose value is the quantity of interest and whose
gradient (by any backend's reverse or forward mode) is the chosen estimator of that quantity's
gradient. They only use :meth:`~agvi.backends.base.Backend.stop_gradient`, so they work
unchanged on NumPy+autograd, PyTorch and JAX, under ``jit`` and ``vmap``.

- pathwise (reparameterisation): the plain value; gradients flow through the draw.
- score function (REINFORCE): :func:`score_function_surrogate`.
- path derivative / sticking the landing: :func:`stop_gradient_distribution` rebuilds ``q``
  with its parameters cut from the graph, so ``log q(z)`` differentiates through ``z`` only.
- baselines (control variates of the score function): :func:`leave_one_out_baseline` (stateless,
  over several draws), :func:`decaying_average` (a running mean kept by the caller) and
  :func:`baseline_regression_loss` (fits a learned baseline to the cost).

References
----------
Williams (1992), "Simple statistical gradient-following algorithms" (score function).
Kingma and Welling (2014), "Auto-encoding variational Bayes" (pathwise).
Roeder, Wu and Duvenaud (2017), "Sticking the landing: simple, lower-variance gradient
estimators for variational inference", eq. 8 (path derivative).
Mnih and Gregor (2014), "Neural variational inference and learning in belief networks",
section 3.1 (learned and running-average baselines).
Kool, van Hoof and Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!",
ICLR workshop DeepRLStructPred, eq. 8 (leave-one-out baseline).
"""

from __future__ import annotations

from ..backends import get_backend

__all__ = ["baseline_regression_loss", "decaying_average", "leave_one_out_baseline",
           "score_function_surrogate", "stop_gradient_distribution", "zero_with_grad"]


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


def score_function_surrogate(cost, log_q, B=None, baseline=None):
    """Value ``0``, gradient ``(cost - baseline) * grad(log_q)`` with both held constant.

    Parameters
    ----------
    cost : Array, shape broadcastable with ``log_q``
        The (per-sample) cost whose expectation is differentiated; no gradient flows into it.
    log_q : Array
        ``log q(z)`` of the non-reparameterised draw ``z`` (gradient wrt the guide parameters).
    B : Backend or None
        Default: the active backend.
    baseline : Array, float or None
        A control variate subtracted from ``cost`` (no gradient flows into it). It must not
        depend on the draw ``z`` (it may depend on anything upstream of it, or on other,
        independent draws), which keeps the estimator unbiased.

    Returns
    -------
    Array, the broadcast shape, all zeros in value.

    Notes
    -----
    Adding this to a pathwise surrogate of ``E_q[cost]`` gives an unbiased gradient of the
    expectation with respect to the parameters of a distribution that has no ``rsample``
    (Williams, 1992): ``E_q[b grad log q(z)] = b grad 1 = 0`` for any ``b`` independent of ``z``.
    """
    B = get_backend() if B is None else B
    if baseline is not None:
        cost = cost - baseline
    return B.stop_gradient(cost) * zero_with_grad(B, log_q)


def leave_one_out_baseline(costs, axis=0, B=None):
    """For each of ``n`` independent draws, the mean cost of the other ``n - 1`` draws.

    Parameters
    ----------
    costs : Array, shape ``(..., n, ...)``
        Per-draw costs, the draws along ``axis`` (``n >= 2``).
    axis : int
        The axis of the draws.
    B : Backend or None
        Default: the active backend.

    Returns
    -------
    Array, shape of ``costs``, with no gradient
        ``b_i = (sum_j c_j - c_i) / (n - 1)``.

    Raises
    ------
    ValueError
        If ``costs`` has fewer than two draws along ``axis``.

    Notes
    -----
    ``b_i`` is a function of the other draws only, so it is independent of draw ``i`` and
    ``(c_i - b_i) grad log q(z_i)`` stays unbiased; it needs no state and no learned
    parameters. Averaged over the draws the estimator equals
    ``1/(n-1) sum_i (c_i - mean(c)) grad log q(z_i)`` (Kool et al., 2019, eq. 8).
    """
    B = get_backend() if B is None else B
    n = B.shape(costs)[axis]
    if n < 2:
        raise ValueError(f"leave_one_out_baseline: `costs` needs at least 2 draws along axis "
                         f"{axis}, got shape {tuple(B.shape(costs))}")
    costs = B.stop_gradient(costs)
    return (B.sum(costs, axis=axis, keepdims=True) - costs) / (n - 1)


def decaying_average(average, value, beta, B=None):
    """One step of an exponential moving average: ``beta * average + (1 - beta) * value``.

    Parameters
    ----------
    average : Array
        The running average so far (initially zeros, as in Pyro).
    value : Array, shape broadcastable to ``average``
        The new observation (e.g. this step's mean cost); its gradient is stopped.
    beta : float
        Decay in ``[0, 1)``; larger means a longer memory.
    B : Backend or None
        Default: the active backend.

    Returns
    -------
    Array, shape of ``average``, with no gradient.
    """
    B = get_backend() if B is None else B
    return B.stop_gradient(beta * average + (1.0 - beta) * value)


def baseline_regression_loss(cost, baseline, B=None):
    """Value ``0``, gradient that of ``sum((cost - baseline)**2)`` with ``cost`` held constant.

    Parameters
    ----------
    cost : Array
        The score-function cost the baseline should predict; no gradient flows into it.
    baseline : Array, shape broadcastable with ``cost``
        A learned baseline (e.g. a network's output); its parameters receive the gradient.
    B : Backend or None
        Default: the active backend.

    Returns
    -------
    Array, shape (), zero in value.

    Notes
    -----
    Adding this to a loss trains the baseline by least squares towards ``E[cost | inputs]``
    (Mnih and Gregor, 2014) without changing the loss value that is reported. Its gradient
    reaches every parameter ``baseline`` depends on: keep the baseline's parameters separate
    from the guide's, or the guide's gradient is biased.
    """
    B = get_backend() if B is None else B
    return zero_with_grad(B, B.sum((B.stop_gradient(cost) - baseline) ** 2))


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
