"""A plain recursive NUTS transition for one chain in NumPy float64: the oracle for the kernel.

It implements the same algorithm as :func:`agvi.infer.mcmc.nuts.build_kernel` the way Hoffman and
Gelman (2014, Algorithm 3) and Stan write it, by recursion, and takes every random number
explicitly, so that tests can feed it the noise the iterative kernel drew
(:class:`agvi.infer.mcmc.nuts.NUTSNoise`, one chain's rows) and compare the two transition by
transition:

- the trajectory doubles in the directions ``going_right[k]``; a subtree of depth ``j`` is built
  as two subtrees of depth ``j - 1``, each checked for the generalised U-turn (whole subtree,
  first half plus the first leaf of the second, second half plus the last leaf of the first:
  Betancourt 2017, A.4.2, with Stan 2.26's extra checks), and abandoned at the first U-turn or
  divergence;
- within the subtree being added, its leaf ``j`` (counting from 0 within the subtree) becomes
  the subtree's proposal when ``log(u_leaf[j]) + log(sum_i W_i) < log W_j`` over the subtree's
  leaves so far (progressive uniform sampling, ``log W = H0 - H``);
- a valid subtree's proposal replaces the trajectory's when
  ``log(u_subtree[k]) + log W_trajectory < log W_subtree`` (biased progressive sampling), then
  the joined trajectory is checked (whole, and across the two parts);
- a leaf with ``H - H0 > delta_energy_max`` or a non-finite ``H`` is divergent;
- the acceptance statistic is the mean of ``min(1, exp(H0 - H))`` over all leapfrog steps.

Nothing here is vectorised or clever: it is meant to be read against the papers.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithm 3.
Betancourt (2017), "A conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434,
appendix A.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["ReferenceNUTSResult", "reference_nuts"]


class ReferenceNUTSResult(NamedTuple):
    """The outcome of one reference NUTS transition (one chain).

    Attributes
    ----------
    position : numpy.ndarray, shape (d,)
    logdensity : float
    logdensity_grad : numpy.ndarray, shape (d,)
    energy : float
        Hamiltonian of the selected state.
    depth : int
        Doublings performed (a rejected last subtree included).
    num_steps : int
        Leapfrog steps.
    is_turning, is_divergent : bool
    acceptance_rate : float
        Mean of ``min(1, exp(H0 - H))`` over the leapfrog steps.
    num_nonfinite : int
        1 if a non-finite energy ended the trajectory, else 0.
    """

    position: np.ndarray
    logdensity: float
    logdensity_grad: np.ndarray
    energy: float
    depth: int
    num_steps: int
    is_turning: bool
    is_divergent: bool
    acceptance_rate: float
    num_nonfinite: int


class _Leaf(NamedTuple):
    x: np.ndarray
    p: np.ndarray
    logdensity: float
    grad: np.ndarray


def reference_nuts(logdensity_and_grad: Callable, position, step_size: float,
                   inverse_mass_matrix, momentum, going_right, u_subtree, u_leaf, *,
                   max_tree_depth: int = 10, delta_energy_max: float = 1000.0,
                   logdensity=None, logdensity_grad=None) -> ReferenceNUTSResult:
    """One NUTS transition of one chain, by recursion, with all randomness given.

    Parameters
    ----------
    logdensity_and_grad : callable
        ``f(x: ndarray (d,)) -> (float, ndarray (d,))``: log density and its gradient.
    position : array_like, shape (d,)
    step_size : float
    inverse_mass_matrix : array_like, shape (d,) or (d, d)
    momentum : array_like, shape (d,)
        The momentum of the transition.
    going_right : array_like of bool, shape (max_tree_depth,)
        Direction of each doubling.
    u_subtree : array_like, shape (max_tree_depth,)
        Uniforms for the biased progressive sampling after each doubling.
    u_leaf : array_like, shape (2**(max_tree_depth - 1),)
        One uniform per leaf index within a subtree (shared by the subtrees).
    max_tree_depth : int
    delta_energy_max : float
    logdensity, logdensity_grad : optional
        The log density and gradient at ``position`` (computed if omitted).

    Returns
    -------
    ReferenceNUTSResult
    """
    f = logdensity_and_grad
    imm = np.asarray(inverse_mass_matrix, dtype=np.float64)
    dense = imm.ndim == 2
    eps = float(step_size)
    going_right = np.asarray(going_right, dtype=bool)
    log_u_subtree = np.log(np.asarray(u_subtree, dtype=np.float64))
    log_u_leaf = np.log(np.asarray(u_leaf, dtype=np.float64))

    def velocity(p):
        return imm @ p if dense else imm * p

    def kinetic(p, v):
        return 0.5 * float(np.sum(p * v))

    def leapfrog(leaf, step):
        p = leaf.p + 0.5 * step * leaf.grad
        x = leaf.x + step * velocity(p) if dense else leaf.x + (step * imm) * p
        lp, g = f(x)
        p = p + 0.5 * step * np.asarray(g, dtype=np.float64)
        return _Leaf(x, p, float(lp), np.asarray(g, dtype=np.float64))

    def turns(v_a, v_b, rho):
        return not (float(np.sum(v_a * rho)) > 0 and float(np.sum(v_b * rho)) > 0)

    x0 = np.asarray(position, dtype=np.float64)
    if logdensity is None or logdensity_grad is None:
        logdensity, logdensity_grad = f(x0)
    p0 = np.asarray(momentum, dtype=np.float64)
    start = _Leaf(x0, p0, float(logdensity), np.asarray(logdensity_grad, dtype=np.float64))
    energy0 = kinetic(p0, velocity(p0)) - start.logdensity

    # counters and the subtree's running proposal, threaded through the recursion
    ctx = {"steps": 0, "sub_steps": 0, "sum_accept": 0.0, "sub_log_weight": -math.inf,
           "sub_proposal": None, "diverging": False, "nonfinite": False, "turning": False}

    def build(leaf, depth, step):
        """Returns (valid, p_begin, v_begin, p_end, v_end, rho, last_leaf)."""
        if depth == 0:
            new = leapfrog(leaf, step)
            j = ctx["sub_steps"]
            ctx["steps"] += 1
            ctx["sub_steps"] += 1
            v = velocity(new.p)
            energy = kinetic(new.p, v) - new.logdensity
            log_weight = energy0 - energy
            if not log_weight < math.inf:   # NaN or +-inf energy
                log_weight = -math.inf
            ctx["sum_accept"] += math.exp(min(log_weight, 0.0))
            total = np.logaddexp(ctx["sub_log_weight"], log_weight)
            if log_u_leaf[j] + total < log_weight:
                ctx["sub_proposal"] = (new, energy0 - log_weight)
            ctx["sub_log_weight"] = total
            if not log_weight >= -delta_energy_max:
                ctx["diverging"] = True
                ctx["nonfinite"] = log_weight == -math.inf
                return False, None, None, None, None, None, new
            return True, new.p, v, new.p, v, new.p.copy(), new
        ok, p_begin, v_begin, p_init_end, v_init_end, rho_init, last = build(leaf, depth - 1, step)
        if not ok:
            return False, None, None, None, None, None, last
        ok, p_final_begin, v_final_begin, p_end, v_end, rho_final, last = build(
            last, depth - 1, step)
        if not ok:
            return False, None, None, None, None, None, last
        rho = rho_init + rho_final
        if (turns(v_begin, v_end, rho)
                or turns(v_begin, v_final_begin, rho_init + p_final_begin)
                or turns(v_init_end, v_end, rho_final + p_init_end)):
            ctx["turning"] = True
            return False, None, None, None, None, None, last
        return True, p_begin, v_begin, p_end, v_end, rho, last

    left = right = start
    proposal = (start, energy0)
    log_weight = 0.0
    rho = p0.copy()
    depth = 0
    while depth < max_tree_depth:
        go_right = bool(going_right[depth])
        ctx["sub_log_weight"] = -math.inf
        ctx["sub_proposal"] = None
        ctx["sub_steps"] = 0
        ok, p_begin, v_begin, p_end, v_end, rho_sub, last = build(
            right if go_right else left, depth, eps if go_right else -eps)
        depth += 1
        if not ok:
            break
        if log_u_subtree[depth - 1] + log_weight < ctx["sub_log_weight"]:
            proposal = ctx["sub_proposal"]
        log_weight = float(np.logaddexp(log_weight, ctx["sub_log_weight"]))
        old_outer, old_inner = (left, right) if go_right else (right, left)
        v_old_outer, v_old_inner = velocity(old_outer.p), velocity(old_inner.p)
        total = rho + rho_sub
        turning = (turns(v_old_outer, v_end, total)
                   or turns(v_old_outer, v_begin, rho + p_begin)
                   or turns(v_old_inner, v_end, rho_sub + old_inner.p))
        if go_right:
            right = last
        else:
            left = last
        rho = total
        if turning:
            ctx["turning"] = True
            break

    leaf, energy = proposal
    return ReferenceNUTSResult(
        position=leaf.x, logdensity=leaf.logdensity, logdensity_grad=leaf.grad,
        energy=float(energy), depth=depth, num_steps=ctx["steps"],
        is_turning=bool(ctx["turning"]), is_divergent=bool(ctx["diverging"]),
        acceptance_rate=ctx["sum_accept"] / ctx["steps"],
        num_nonfinite=int(ctx["nonfinite"]))
