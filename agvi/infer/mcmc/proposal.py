"""Proposal selection for Hamiltonian trajectories: multinomial, progressive and Metropolis.

All functions work per chain on Arrays with a leading chain axis C and take their randomness as
explicit log-uniform draws ``log_u`` (shape (C,)), so that kernels can be replayed with given
noise (see :func:`agvi.testing.reference_nuts.reference_nuts`).

Within a NUTS subtree the proposal is sampled *progressively uniformly*: leaf ``j`` replaces the
current proposal with probability ``w_j / (w_0 + ... + w_j)``, which leaves leaf ``i`` as the
subtree's proposal with probability ``w_i / sum_j w_j`` (multinomial sampling with weights
``w = exp(-H)``). Between subtrees the sampling is *biased progressive*: the new subtree's proposal
replaces the trajectory's with probability ``min(1, W_new / W_old)``, which favours states far
from the start while keeping the target invariant.

References
----------
Betancourt (2017), "A conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434,
appendix A.3.1 (progressive uniform sampling) and A.3.2 (biased progressive sampling).
Neal (2011), "MCMC using Hamiltonian dynamics", section 5.3.2.1 (Metropolis acceptance).
"""

from __future__ import annotations

from ...backends import get_backend

__all__ = ["metropolis_accept", "progressive_biased_sampling", "progressive_uniform_sampling",
           "select"]


def progressive_uniform_sampling(log_u, log_weight_sum, log_weight):
    """Whether a new state replaces the proposal in progressive uniform (multinomial) sampling.

    Parameters
    ----------
    log_u : Array, shape (C,)
        ``log`` of uniform draws on [0, 1).
    log_weight_sum : Array, shape (C,)
        Log of the summed weights of the states seen so far, the new one included
        (``logaddexp`` of the previous sum and ``log_weight``).
    log_weight : Array, shape (C,)
        Log weight of the new state (``-H`` up to a common constant; ``-inf`` for a state
        that must never be chosen).

    Returns
    -------
    Array, shape (C,), bool
        True where the new state becomes the proposal, with probability
        ``exp(log_weight - log_weight_sum)``: ``log_u + log_weight_sum < log_weight`` (written
        without a difference so that ``-inf`` weights give False, not NaN).

    References
    ----------
    Betancourt (2017), arXiv:1701.02434, appendix A.3.1.
    """
    return log_u + log_weight_sum < log_weight


def progressive_biased_sampling(log_u, log_weight_tree, log_weight_subtree):
    """Whether a new subtree's proposal replaces the trajectory's (biased progressive sampling).

    Parameters
    ----------
    log_u : Array, shape (C,)
        ``log`` of uniform draws on [0, 1).
    log_weight_tree, log_weight_subtree : Array, shape (C,)
        Log summed weights of the old trajectory and of the new subtree.

    Returns
    -------
    Array, shape (C,), bool
        True with probability ``min(1, W_subtree / W_tree)``:
        ``log_u + log_weight_tree < log_weight_subtree``.

    References
    ----------
    Betancourt (2017), arXiv:1701.02434, appendix A.3.2.
    """
    return log_u + log_weight_tree < log_weight_subtree


def metropolis_accept(log_u, log_accept_ratio):
    """Metropolis acceptance: True where ``log_u < log_accept_ratio`` (probability
    ``min(1, exp(log_accept_ratio))``; a NaN ratio is never accepted).

    Parameters
    ----------
    log_u : Array, shape (C,)
    log_accept_ratio : Array, shape (C,), e.g. ``H_initial - H_proposal``.

    Returns
    -------
    Array, shape (C,), bool

    References
    ----------
    Neal (2011), "MCMC using Hamiltonian dynamics", eq. 5.23.
    """
    return log_u < log_accept_ratio


def select(mask, new, old):
    """Per-chain choice between two pytrees of Arrays with a leading chain axis.

    Parameters
    ----------
    mask : Array, shape (C,), bool
    new, old : pytrees of one structure whose leaves have shape (C, ...)

    Returns
    -------
    pytree
        ``new`` where ``mask`` else ``old``, leaf by leaf (the mask broadcast over trailing axes).
    """
    B = get_backend()
    masks = {}

    def pick(a, b):
        nd = B.ndim(a)
        if nd not in masks:
            masks[nd] = mask if nd == 1 else B.reshape(mask, (-1,) + (1,) * (nd - 1))
        return B.where(masks[nd], a, b)

    return B.tree_map(pick, new, old)
