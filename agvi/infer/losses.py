"""Functional variational losses on distributions, for users who write their own training loops.

Each loss takes distribution objects and values and returns an Array to *minimise*; the
variational distribution ``q`` comes second, after the prior / model distribution ``p``.
Gradients follow the estimator in each function's name (pathwise, path derivative, score
function); see :mod:`agvi.infer.estimators`.

>>> import agvi.distributions as dist
>>> from agvi.infer.losses import elbo_loss
>>> round(float(elbo_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0)), 4)
0.9189

References
----------
Blei, Kucukelbir and McAuliffe (2017), "Variational inference: a review for statisticians".
Roeder, Wu and Duvenaud (2017), "Sticking the landing".
Liu et al. (2016), "SSD: single shot multibox detector" (hard negative mining).
"""

from __future__ import annotations

from ..backends import get_backend
from .estimators import stop_gradient_distribution, zero_with_grad

__all__ = [
    "analytical_kl_divergence_loss", "elbo_loss", "elbo_path_derivative_loss",
    "elbo_rb_score_function", "elbo_score_function", "hard_negative_mining",
    "negative_log_prob", "negative_log_prob_loss", "vi_loss", "vi_regularization",
]


def _as_value(B, value):
    return value if B.is_array(value) else B.asarray(value)


def elbo_loss(p, q, value):
    """The single-sample negative ELBO term ``log q(value) - log p(value)`` (pathwise).

    Parameters
    ----------
    p : Distribution
        The prior (or model) distribution.
    q : Distribution
        The variational distribution ``value`` was drawn from (with ``rsample``).
    value : Array, shape ``q.batch_shape + q.event_shape``

    Returns
    -------
    Array, shape ``batch_shape`` (broadcast of ``p``'s and ``q``'s)

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> round(float(elbo_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0)), 4)
    0.9189
    """
    B = q.B
    value = _as_value(B, value)
    return q.log_prob(value) - p.log_prob(value)


def elbo_path_derivative_loss(p, q, value):
    """As :func:`elbo_loss`, with ``q``'s parameters cut from ``log q`` (sticking the landing).

    The value is that of :func:`elbo_loss`; the gradient flows into ``q``'s parameters only
    through ``value`` (which must be a reparameterised draw), which drops the zero-mean score
    term and gives zero variance when ``q`` equals the posterior (Roeder et al., 2017).

    Parameters
    ----------
    p, q : Distribution
    value : Array

    Returns
    -------
    Array, shape ``batch_shape``

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> round(float(elbo_path_derivative_loss(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0),
    ...                                       1.0)), 4)
    0.9189
    """
    B = q.B
    value = _as_value(B, value)
    return stop_gradient_distribution(q).log_prob(value) - p.log_prob(value)


def elbo_score_function(p, q, value):
    """:func:`elbo_loss` in value, with the score-function (REINFORCE) gradient.

    ``d/dphi E_q[log q - log p] = E_q[(log q(z) - log p(z)) d/dphi log q(z)]`` for a draw ``z``
    that carries no gradient (a non-reparameterisable ``q``).

    Parameters
    ----------
    p, q : Distribution
    value : Array
        A draw from ``q`` (its gradient, if any, is stopped).

    Returns
    -------
    Array, shape ``batch_shape``

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> round(float(elbo_score_function(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0)), 4)
    0.9189
    """
    B = q.B
    value = B.stop_gradient(_as_value(B, value))
    lq = q.log_prob(value)
    cost = lq - p.log_prob(value)
    return cost + B.stop_gradient(cost) * zero_with_grad(B, lq)


def elbo_rb_score_function(p, q, value):
    """:func:`elbo_loss` in value; score-function gradient with the entropy term analytic.

    Writes ``E_q[log q - log p] = -H[q] - E_q[log p]`` and differentiates ``-H[q]`` exactly
    (``q.entropy()``) and only ``E_q[log p]`` by the score function, a Rao-Blackwellised
    estimator with lower variance than :func:`elbo_score_function`.

    Parameters
    ----------
    p, q : Distribution
        ``q`` must have an analytic ``entropy``.
    value : Array

    Returns
    -------
    Array, shape ``batch_shape``

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> round(float(elbo_rb_score_function(dist.Cauchy(0.0, 1.0), dist.Normal(1.0, 1.0),
    ...                                    1.0)), 4)
    0.9189
    """
    B = q.B
    value = B.stop_gradient(_as_value(B, value))
    lq = q.log_prob(value)
    lp = p.log_prob(value)
    neg_h = -q.entropy()
    return (B.stop_gradient(lq - lp) - B.stop_gradient(lp) * zero_with_grad(B, lq)
            + zero_with_grad(B, neg_h))


def analytical_kl_divergence_loss(p, q, value=None, backup_loss_fn=None):
    """``KL(q || p)`` from the KL table, or ``backup_loss_fn(p, q, value)`` where it has no rule.

    Parameters
    ----------
    p : Distribution
        The prior.
    q : Distribution
        The variational distribution.
    value : Array or None
        A draw from ``q``, used only by ``backup_loss_fn``.
    backup_loss_fn : callable or None
        ``(p, q, value) -> Array``, e.g. :func:`elbo_loss` (a single-sample estimate of the
        KL); None re-raises.

    Returns
    -------
    Array, shape ``batch_shape``

    Raises
    ------
    NotImplementedError
        If the pair has no analytic rule and no ``backup_loss_fn`` is given.
    ValueError
        If the backup is needed and ``value`` is None.

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> float(analytical_kl_divergence_loss(dist.Normal(0.0, 1.0), dist.Normal(1.0, 1.0), 1.0))
    0.5
    """
    from ..distributions.kl import kl_divergence

    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        if backup_loss_fn is None:
            raise
        if value is None:
            raise ValueError("analytical_kl_divergence_loss: no analytic KL for "
                             f"({type(q).__name__}, {type(p).__name__}); pass `value` (a draw "
                             "from q) for backup_loss_fn") from None
        return backup_loss_fn(p, q, value)


def negative_log_prob_loss(distribution, value):
    """``-distribution.log_prob(value)``.

    Parameters
    ----------
    distribution : Distribution
    value : Array

    Returns
    -------
    Array, shape ``batch_shape``

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> round(float(negative_log_prob_loss(dist.Normal(1.0, 1.0), 0.0)), 4)
    1.4189
    """
    return -distribution.log_prob(_as_value(distribution.B, value))


def negative_log_prob(distributions, values):
    """The summed negative log-likelihood of ``values`` under ``distributions``.

    Parameters
    ----------
    distributions : sequence of Distribution
    values : sequence of Array, one per distribution

    Returns
    -------
    Array, shape ()

    Raises
    ------
    ValueError
        If the sequences differ in length.

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> ds = [dist.Cauchy(2.0, 2.0) for _ in range(5)]
    >>> round(float(negative_log_prob(ds, [1.0, 2.0, 3.0, 4.0, 5.0])), 4)
    11.5075
    """
    distributions, values = list(distributions), list(values)
    if len(distributions) != len(values):
        raise ValueError(f"negative_log_prob: {len(distributions)} distributions but "
                         f"{len(values)} values; give one value per distribution")
    B = get_backend()
    total = B.zeros(())
    for d, v in zip(distributions, values):
        total = total + d.B.sum(negative_log_prob_loss(d, v))
    return total


def vi_regularization(p_dists, q_dists, values, kl_scaling=1.0, div_fn=elbo_loss):
    """The divergence of the variational distributions from the priors, summed and scaled.

    Parameters
    ----------
    p_dists, q_dists : sequence of Distribution
        Priors and variational distributions, pairwise.
    values : sequence of Array
        Draws from the ``q_dists``.
    kl_scaling : float or Array
        Multiplies the sum (KL annealing, beta-VAE, ``1/N`` mini-batch weights).
    div_fn : callable
        ``div_fn(p, q, value) -> Array`` (default :func:`elbo_loss`; e.g.
        :func:`analytical_kl_divergence_loss`).

    Returns
    -------
    Array, shape ()

    Raises
    ------
    ValueError
        If the sequences differ in length.
    """
    p_dists, q_dists, values = list(p_dists), list(q_dists), list(values)
    if not len(p_dists) == len(q_dists) == len(values):
        raise ValueError(f"vi_regularization: got {len(p_dists)} p_dists, {len(q_dists)} "
                         f"q_dists and {len(values)} values; they must pair up")
    B = get_backend()
    total = B.zeros(())
    for p, q, v in zip(p_dists, q_dists, values):
        total = total + B.sum(div_fn(p, q, v))
    return kl_scaling * total


def vi_loss(p_dists, q_dists, values, observed, kl_scaling=1.0, div_fn=elbo_loss):
    """The negative ELBO of a model given as lists of distributions.

    Each entry is either observed (its term is ``-p.log_prob(value)``) or latent (its term is
    ``kl_scaling * div_fn(p, q, value)``, ``q`` the variational distribution).

    Parameters
    ----------
    p_dists : sequence of Distribution
        Priors (latent entries) and likelihoods (observed entries).
    q_dists : sequence of Distribution or None
        Variational distributions (None or anything for observed entries).
    values : sequence of Array
        Draws from ``q`` (latent) or the data (observed).
    observed : sequence of bool, or None
        Which entries are observed (None: none are).
    kl_scaling : float or Array
    div_fn : callable

    Returns
    -------
    Array, shape ()

    Raises
    ------
    ValueError
        If the sequences differ in length.

    Examples
    --------
    >>> import agvi.distributions as dist
    >>> ps = [dist.Cauchy(0.0, 1.0) for _ in range(5)]
    >>> qs = [dist.Normal(0.0, 1.0) for _ in range(5)]
    >>> round(float(vi_loss(ps, qs, [0.0, 1.0, 2.0, 3.0, 4.0], [False] * 5, kl_scaling=1)), 4)
    -6.4327
    """
    p_dists, q_dists, values = list(p_dists), list(q_dists), list(values)
    observed = [False] * len(p_dists) if observed is None else list(observed)
    if not len(p_dists) == len(q_dists) == len(values) == len(observed):
        raise ValueError(f"vi_loss: got {len(p_dists)} p_dists, {len(q_dists)} q_dists, "
                         f"{len(values)} values and {len(observed)} observed flags; they must "
                         "pair up")
    B = get_backend()
    nll = B.zeros(())
    reg = B.zeros(())
    for p, q, v, obs in zip(p_dists, q_dists, values, observed):
        if obs:
            nll = nll + B.sum(negative_log_prob_loss(p, v))
        else:
            reg = reg + B.sum(div_fn(p, q, v))
    return nll + kl_scaling * reg


def hard_negative_mining(losses, labels, neg_pos_ratio: float = 3.0):
    """Select all positives and the hardest negatives (SSD-style), per row.

    Parameters
    ----------
    losses : Array, shape (N, M)
        Per-example losses (e.g. classification losses of M anchors in each of N images).
    labels : Array, shape (N, M)
        Positive where ``labels > 0``; the rest are negatives.
    neg_pos_ratio : float
        At most ``neg_pos_ratio`` times as many negatives as positives are kept per row.

    Returns
    -------
    Array of bool, shape (N, M)
        True for the positives and for the ``floor(neg_pos_ratio * num_pos)`` negatives with the
        largest losses in each row.

    Examples
    --------
    >>> import numpy as np
    >>> m = hard_negative_mining(np.array([[0.1, 0.9, 0.5, 0.3]]), np.array([[1, 0, 0, 0]]), 2)
    >>> m.tolist()
    [[True, True, True, False]]
    """
    B = get_backend()
    losses = _as_value(B, losses)
    labels = _as_value(B, labels)
    pos = labels > 0
    num_pos = B.sum(B.astype(pos, B.int_dtype), axis=-1, keepdims=True)
    num_neg = B.astype(B.floor(B.astype(num_pos, B.float_dtype) * neg_pos_ratio), B.int_dtype)
    neg_losses = B.where(pos, B.full_like(B.astype(losses, B.float_dtype), -float("inf")),
                         B.astype(losses, B.float_dtype))
    order = B.argsort(-neg_losses, axis=-1)
    rank = B.argsort(order, axis=-1)
    return pos | (rank < num_neg)
