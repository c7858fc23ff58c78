"""The generalised U-turn criterion for NUTS, with fixed-size checkpoints for iterative trees.

The trajectory ``z_a, ..., z_b`` (in time order) *turns* when

``v_a . rho <= 0``  or  ``v_b . rho <= 0``,   ``rho = p_a + ... + p_b``,  ``v = M^{-1} p``

(Betancourt 2017, appendix A.4.2, in the form Stan uses). A subtree of ``2**j`` leaves, built
from halves ``I`` (first) and ``F`` (final), is rejected when the criterion holds for

1. the whole subtree,
2. ``I`` extended by the first leaf of ``F``,
3. ``F`` extended by the last leaf of ``I``

(checks 2 and 3 are the extra checks Stan added in 2.26, which catch trajectories whose halves
each turn by less than the whole), recursively for every complete sub-subtree. The same three
checks join the existing trajectory with each new subtree at the top level
(:func:`turning_across`).

Iterative trees (Phan et al. 2019, NumPyro) build a subtree leaf by leaf. With leaves numbered
``n = 0, 1, ...`` within the subtree, the leaf ``n`` (odd) completes the sub-subtrees of sizes
``2, 4, ..., 2**t`` where ``t`` is the number of trailing one bits of ``n``; each starts at an
even leaf ``e``, whose data were saved in checkpoint slot ``popcount(e)``. A slot is overwritten
only after every sub-subtree starting at its leaf is complete, so ``max_tree_depth`` slots per
chain suffice. The slots of the sub-subtrees completed at ``n`` are ``idx_min .. idx_max`` with
``idx_max = popcount(n) - 1`` and ``idx_min = idx_max + 1 - t`` (:func:`checkpoint_indices`); the
midpoint of the sub-subtree starting in slot ``i`` (of size 4 or more) is saved in slot ``i + 1``.

Each slot holds, for its even leaf ``e`` (``S(m)`` is the sum of the momenta of leaves 0..m of
the subtree): ``v_e``, ``v_{e-1}``, ``S(e-1)``, ``S(e-2)``, ``p_e``. Then at leaf ``n`` with
``S = S(n)``:

- check 1, sub-subtree starting at ``e``: ``rho = S - S(e-1)`` with ``v_e`` and ``v_n``;
- check 3, sub-subtree with midpoint ``e``: ``rho = S - S(e-2)`` with ``v_{e-1}`` and ``v_n``;
- check 2, sub-subtree with midpoint ``e`` and first leaf ``s`` (in the slot below, still there
  since that sub-subtree completes only now): ``rho = S(e-1) + p_e - S(s-1)`` with ``v_s`` and
  ``v_e``;

so every check of every completed sub-subtree is one vectorised pass over the slots, and a write
only stores a row (no read of the buffer: in a compiled loop it is then done in place).

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler", JMLR 15, section 3.
Betancourt (2017), "A conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434,
appendix A.4.2.
Phan, Pradhan and Jankowiak (2019), "Composable effects for flexible and accelerated
probabilistic programming in NumPyro", arXiv:1912.11554 (iterative NUTS).
Stan Development Team, Stan 2.26 release notes and ``base_nuts.hpp`` (checks across subtrees).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ...backends import get_backend

__all__ = ["UTurnCheckpoints", "checkpoint_indices", "init_checkpoints", "is_iterative_turning",
           "is_turning", "turning_across", "turning_mask", "write_checkpoint"]

# component indices of a checkpoint row
_V, _V_PREV, _S_PREV, _S_PREV2, _P = range(5)
# (velocity, momentum sum) pairs of the three checks across a join: velocities (old outer, new
# outer, new inner, old inner) x sums (whole, old + new inner leaf, new + old inner leaf)
_ACROSS_PAIRS = np.array([[True, True, False], [True, False, True], [False, True, False],
                          [False, False, True]])


class UTurnCheckpoints(NamedTuple):
    """Fixed-size U-turn checkpoint buffers of an iterative NUTS subtree.

    Attributes
    ----------
    rows : Array, shape (C, K, 5, d)
        Per chain and slot: ``v_e``, ``v_{e-1}``, ``S(e-1)``, ``S(e-2)``, ``p_e`` for the even
        leaf ``e`` last written there (see the module docstring). ``S`` may carry any offset
        that is constant over the subtree (only its differences are used).
    """

    rows: object


def is_turning(velocity_left, velocity_right, momentum_sum):
    """The generalised U-turn criterion.

    Parameters
    ----------
    velocity_left, velocity_right : Array, shape (C, d)
        ``M^{-1} p`` at the two ends of the trajectory.
    momentum_sum : Array, shape (C, d)
        Sum of the momenta over the trajectory, both ends included.

    Returns
    -------
    Array, shape (C,), bool
        True where ``v_left . rho <= 0`` or ``v_right . rho <= 0``.

    References
    ----------
    Betancourt (2017), arXiv:1701.02434, appendix A.4.2.
    """
    B = get_backend()
    left = B.sum(velocity_left * momentum_sum, axis=-1)
    right = B.sum(velocity_right * momentum_sum, axis=-1)
    return B.logical_or(left <= 0, right <= 0)


def turning_across(velocity_old_outer, velocity_old_inner, momentum_old_inner, momentum_sum_old,
                   velocity_new_inner, momentum_new_inner, velocity_new_outer, momentum_sum_new):
    """The U-turn checks when a trajectory is joined with a new subtree built at one of its ends.

    "Inner" ends are the two leaves where the old trajectory and the new subtree meet; "outer"
    ends are the ends of the joined trajectory. All arguments are Arrays of shape (C, d);
    ``momentum_sum_old`` and ``momentum_sum_new`` are the momentum sums of the old trajectory
    and of the new subtree.

    Returns
    -------
    Array, shape (C,), bool
        True where the joined trajectory turns (check 1), or the old trajectory extended by the
        new subtree's inner leaf does (check 2), or the new subtree extended by the old
        trajectory's inner leaf does (check 3).

    References
    ----------
    Betancourt (2017), arXiv:1701.02434, appendix A.4.2; Stan 2.26 ``base_nuts.hpp``.
    """
    B = get_backend()
    velocities = B.stack([velocity_old_outer, velocity_new_outer, velocity_new_inner,
                          velocity_old_inner], axis=1)                              # (C, 4, d)
    sums = B.stack([momentum_sum_old + momentum_sum_new, momentum_sum_old + momentum_new_inner,
                    momentum_sum_new + momentum_old_inner], axis=2)                 # (C, d, 3)
    # products and a sum rather than a matmul: XLA fuses them into one kernel, where a batched
    # (C, 4, d) x (C, d, 3) dot is a library call costing more than the whole check
    dots = B.sum(velocities[:, :, :, None] * sums[:, None], axis=2)                 # (C, 4, 3)
    turned = (dots <= 0) & B.asarray(_ACROSS_PAIRS)
    return B.any(B.reshape(turned, (B.shape(dots)[0], -1)), axis=-1)


def checkpoint_indices(leaf_index):
    """Checkpoint slots of the sub-subtrees that the odd leaf ``leaf_index`` completes.

    Parameters
    ----------
    leaf_index : int or integer Array (scalar)
        Index of the leaf within its subtree (odd).

    Returns
    -------
    (idx_min, idx_max)
        ``idx_max = popcount(n) - 1`` (the slot of the size-2 sub-subtree) and
        ``idx_min = idx_max + 1 - t``, with ``t`` the number of trailing one bits of ``n``
        (``popcount(n ^ (n + 1)) - 1``), the slot of the largest one. Python ints in, Python
        ints out.

    References
    ----------
    Phan et al. (2019), arXiv:1912.11554; NumPyro's ``_leaf_idx_to_ckpt_idxs``.
    """
    B = get_backend()
    idx_max = B.popcount(leaf_index) - 1
    idx_min = idx_max + 2 - B.popcount(leaf_index ^ (leaf_index + 1))
    return idx_min, idx_max


def init_checkpoints(num_chains: int, num_slots: int, dim: int, dtype) -> UTurnCheckpoints:
    """Checkpoint buffers for C chains and K slots: rows (C, K, 5, d) zeros of ``dtype``. They
    need no reset between subtrees: a slot is always written before it is read."""
    B = get_backend()
    return UTurnCheckpoints(B.zeros((num_chains, num_slots, 5, dim), dtype=dtype))


def write_checkpoint(checkpoints, leaf_index, momentum, velocity, velocity_prev, momentum_sum_prev,
                     momentum_prev, slot=None):
    """Save the even leaf ``leaf_index`` in slot ``popcount(leaf_index)``.

    Parameters
    ----------
    checkpoints : UTurnCheckpoints
    leaf_index : int or integer Array (scalar), even
    momentum, velocity : Array, shape (C, d)
        ``p_e`` and ``v_e`` of the leaf.
    velocity_prev, momentum_prev : Array, shape (C, d)
        ``v_{e-1}`` and ``p_{e-1}`` of the previous leaf (unused for ``e = 0``).
    momentum_sum_prev : Array, shape (C, d)
        ``S(e-1)``, the running momentum sum before this leaf.
    slot : int or integer Array (scalar), optional
        Write there instead (a spare slot that no check reads lets a compiled loop write at
        every leaf, odd ones included, rather than branch around the write).

    Returns
    -------
    UTurnCheckpoints
    """
    B = get_backend()
    if slot is None:
        slot = B.popcount(leaf_index)
    row = B.stack([velocity, velocity_prev, momentum_sum_prev, momentum_sum_prev - momentum_prev,
                   momentum], axis=1)
    return UTurnCheckpoints(B.dynamic_update_index(checkpoints.rows, slot, row, axis=1))


def turning_mask(leaf_index, slots, offsets):
    """Which (slot, check) pairs of :func:`is_iterative_turning` the odd leaf ``leaf_index``
    completes.

    Parameters
    ----------
    leaf_index : int or integer Array (scalar), odd
    slots : Array, shape (K, 2), integer
        ``slots[j] = (j, j)``.
    offsets : Array, shape (K, 2), integer
        ``offsets[j] = (0, 1)``.

    Returns
    -------
    Array, shape (K, 2), bool
        Column 0 (check 1 of the sub-subtree starting at the slot): ``idx_min <= j <= idx_max``;
        column 1 (checks 2 and 3 of the sub-subtree with its midpoint at the slot, which has 4
        or more leaves): ``idx_min < j <= idx_max``.
    """
    idx_min, idx_max = checkpoint_indices(leaf_index)
    return (slots >= idx_min + offsets) & (slots <= idx_max)


def is_iterative_turning(checkpoints, velocity, momentum_sum, mask):
    """Whether any sub-subtree completed at an odd leaf turns (checks 1, 2 and 3).

    Parameters
    ----------
    checkpoints : UTurnCheckpoints
    velocity : Array, shape (C, d)
        ``v_n`` of the leaf.
    momentum_sum : Array, shape (C, d)
        ``S(n)``, the running momentum sum including this leaf.
    mask : Array, shape (K, 2), bool
        :func:`turning_mask` of the leaf.

    Returns
    -------
    Array, shape (C,), bool
    """
    B = get_backend()
    rows = checkpoints.rows
    diff = momentum_sum[:, None, None, :] - rows[:, :, _S_PREV:_S_PREV2 + 1]   # (C, K, 2, d)
    own = B.sum(rows[:, :, _V:_V_PREV + 1] * diff, axis=-1)                     # (C, K, 2)
    end = B.sum(velocity[:, None, None, :] * diff, axis=-1)
    # check 2 of the sub-subtree with its midpoint in slot j >= 1 and its first leaf in slot
    # j - 1 (slot 0 is never a midpoint: +inf there)
    below, above = rows[:, :-1], rows[:, 1:]
    rho = above[:, :, _S_PREV] + above[:, :, _P] - below[:, :, _S_PREV]          # (C, K-1, d)
    between = B.minimum(B.sum(below[:, :, _V] * rho, axis=-1),
                        B.sum(above[:, :, _V] * rho, axis=-1))
    between = B.concatenate([B.full_like(between[:, :1], math.inf), between], axis=1)
    # column 0: check 1 (slot = first leaf); column 1: checks 3 and 2 (slot = midpoint)
    crit = B.minimum(own, end)
    crit = B.stack([crit[:, :, 0], B.minimum(crit[:, :, 1], between)], axis=-1)
    return B.any(B.reshape((crit <= 0) & mask, (B.shape(crit)[0], -1)), axis=-1)
