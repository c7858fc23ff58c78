"""The No-U-Turn Sampler: iterative, batched over chains, compiled whole on JAX.

One transition draws a momentum and grows a trajectory by doubling: at depth ``k`` it builds,
in a random direction, a subtree of ``2**k`` leapfrog steps from the end of the trajectory,
until the trajectory makes a U-turn, a step diverges, or ``max_tree_depth`` doublings are done.

- Trees are built **iteratively** (no recursion): an outer ``while_loop`` over doublings and an
  inner ``while_loop`` over the leaves of the subtree, with the U-turn checks of every completed
  sub-subtree done from fixed-size checkpoint buffers of shape (C, max_tree_depth, ...) indexed
  by bit tricks (:mod:`.termination`; Phan et al. 2019, as NumPyro's iterative ``build_tree``).
- **Multinomial sampling**: within a subtree the proposal is sampled progressively uniformly
  with weights ``exp(-H)``; between subtrees by biased progressive sampling (:mod:`.proposal`;
  Betancourt 2017, A.3).
- **Generalised U-turn** (Betancourt 2017, A.4.2) across the whole trajectory, every sub-subtree,
  and across neighbouring subtrees (the extra checks of Stan 2.26).
- **Divergence**: a leaf whose energy exceeds the initial energy by more than
  ``delta_energy_max``, or is non-finite, ends the trajectory; its subtree is rejected (so the
  chain never moves to a non-finite state) and the transition is flagged divergent.
- **Acceptance statistic** (for dual averaging): the mean over all leapfrog steps of the
  transition, rejected subtrees included, of ``min(1, exp(H0 - H))`` (Stan's ``accept_stat__``).
- **Batched chains** with per-chain masks (TFP's design): tree depth and leaf index are shared,
  every chain has its own directions, draws and termination; a chain whose trajectory ended stops
  changing (its arrays are selected with ``B.where``) while others go on; the loops run while
  any chain is active. Chain ``i`` of a C-chain run equals a one-chain run with chain ``i``'s key.

The loop bodies are pure and fixed-shape, so ``B.jit(kernel)`` compiles a whole transition on
JAX; on torch and NumPy the same code runs as Python loops, with the loop counters as Python
ints. One exception, for speed: on an eager backend (``compiles_control_flow`` False) with the
default integrator, each chain runs the same algorithm written with Python control flow, Python
floats for its scalars (energies, log weights, counters), host NumPy vectors and the U-turn
checkpoints in a Python list, as a generator; the chains advance in lock step and the gradients
of all chains still growing are evaluated in one batched call per leapfrog step. Eager
frameworks pay 1-5 us of dispatch per array operation, and the batched, masked step needs about
a hundred of them; the host step needs about a dozen NumPy operations. It consumes the same
noise and gives the same results up to rounding (the tests check both paths against the
recursive reference).

Random numbers (:func:`draw_noise`): per chain and transition, from the chain's key, a standard
normal vector for the momentum and ``2 * max_tree_depth + 2**(max_tree_depth - 1)`` uniforms:
the direction of each doubling (right when ``u < 1/2``), the biased-progressive uniform of each
doubling, and one uniform per leaf index within a subtree for the progressive sampling within
subtrees (shared by the subtrees; see :class:`NUTSNoise`). The chain's key is split in three:
the momentum, the directions with the between-subtree uniforms and the first 32 leaf uniforms,
and the other leaf uniforms, which a compiled kernel draws only when a subtree has more than 32
leaves (drawing all 512 of depth 10 every transition cost more than the rest of its random
numbers). Passing the same numbers to :func:`agvi.testing.reference_nuts.reference_nuts` (a
recursive implementation) reproduces the transition.

References
----------
Hoffman and Gelman (2014), "The No-U-Turn Sampler: adaptively setting path lengths in
Hamiltonian Monte Carlo", JMLR 15, Algorithm 3 (recursive tree building).
Betancourt (2017), "A conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434,
appendix A (multinomial sampling, generalised U-turn).
Phan, Pradhan and Jankowiak (2019), "Composable effects for flexible and accelerated
probabilistic programming in NumPyro", arXiv:1912.11554 (iterative NUTS).
Stan Development Team, Stan Reference Manual, "Hamiltonian Monte Carlo" (``accept_stat__``,
tree depth, divergences) and Stan 2.26 ``base_nuts.hpp`` (checks across subtrees).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ...backends import get_backend
from .hmc import HMCState, _per_chain, init
from .integrators import (
    BoundLogDensity,
    IntegratorState,
    logdensity_and_grad_fn,
    velocity_verlet,
)
from .metrics import gaussian_euclidean
from .proposal import progressive_biased_sampling, progressive_uniform_sampling, select
from .termination import (
    init_checkpoints,
    is_iterative_turning,
    turning_across,
    turning_mask,
    write_checkpoint,
)

__all__ = ["NUTSInfo", "NUTSNoise", "build_kernel", "draw_noise", "init", "noise_size"]

_MAX_TREE_DEPTH_LIMIT = 20


class NUTSInfo(NamedTuple):
    """What one NUTS transition did, per chain.

    Attributes
    ----------
    momentum : Array, shape (C, d)
        The momentum drawn at the start of the transition.
    is_divergent : Array, shape (C,), bool
        A leaf's energy exceeded the initial energy by more than ``delta_energy_max`` or was
        non-finite.
    is_turning : Array, shape (C,), bool
        The trajectory ended on a U-turn (of the whole trajectory or of a subtree).
    energy : Array, shape (C,)
        Hamiltonian of the selected state (Stan's ``energy__``).
    num_trajectory_expansions : Array, shape (C,), int
        Doublings performed: the tree depth, counting a last subtree that was rejected (as
        NumPyro and BlackJAX do; Stan's ``treedepth__`` omits that one).
    num_integration_steps : Array, shape (C,), int
        Leapfrog steps (gradient evaluations), rejected subtrees included.
    acceptance_rate : Array, shape (C,)
        Mean over those steps of ``min(1, exp(H0 - H))`` (Stan's ``accept_stat__``), the
        statistic that dual averaging adapts.
    num_nonfinite : Array, shape (C,), int
        1 where a non-finite log density or gradient ended the trajectory, else 0.
    """

    momentum: object
    is_divergent: object
    is_turning: object
    energy: object
    num_trajectory_expansions: object
    num_integration_steps: object
    acceptance_rate: object
    num_nonfinite: object


class NUTSNoise(NamedTuple):
    """The random numbers of one NUTS transition (drawn by :func:`draw_noise`).

    Attributes
    ----------
    momentum : Array, shape (C, d)
        ``N(0, M)`` momenta.
    going_right : Array, shape (C, D), bool
        Direction of each doubling (D = ``max_tree_depth``).
    u_subtree : Array, shape (C, D)
        Uniforms on [0, 1) for the biased progressive sampling after each doubling.
    u_leaf : Array, shape (C, 2**(D-1))
        Uniforms on [0, 1) for the progressive sampling within subtrees: leaf ``n`` of every
        subtree (counting from 0 within the subtree) uses ``u_leaf[:, n]``. Sharing them between
        subtrees correlates the subtrees' proposals but not the law of the sample: which
        subtree's proposal is kept depends only on ``u_subtree`` and the weights, and each
        subtree's proposal has the right law on its own.
    """

    momentum: object
    going_right: object
    u_subtree: object
    u_leaf: object


def noise_size(max_tree_depth: int) -> int:
    """Number of uniforms drawn per chain and transition: ``2 * D + 2**(D-1)``."""
    return 2 * max_tree_depth + 2 ** (max_tree_depth - 1)


# Leaf uniforms drawn with every transition; the other 2**(D-1) - 32 come from a key of their
# own and a compiled kernel draws them only when a subtree has more than 32 leaves (a tree of
# depth 7 or more). Drawing all 512 of depth 10 every time is 16 times the hashing of the
# 32 (and, on eager backends, 512 host uniforms per chain and transition).
_LEAF_HEAD = 32


def _leaf_split(max_tree_depth: int) -> tuple[int, int]:
    """(head, tail): leaf uniforms drawn with the transition and drawn on demand."""
    num_leaves = 2 ** (max_tree_depth - 1)
    head = min(num_leaves, _LEAF_HEAD)
    return head, num_leaves - head


def _draw_one(B, keys3, dim, dtype, max_tree_depth):
    """One chain's draws from ``keys3 = B.split(key, 3)`` of its key: a standard normal (dim,)
    and the ``2 * D + head`` uniforms drawn with every transition (``keys3[2]`` is the
    tail's, :func:`_tail_one`)."""
    head, _ = _leaf_split(max_tree_depth)
    return (B.normal(keys3[0], (dim,), dtype=dtype),
            B.uniform(keys3[1], (2 * max_tree_depth + head,), dtype=dtype))


def _tail_one(B, keys3, dtype, max_tree_depth):
    """One chain's ``tail`` leaf uniforms, from ``keys3 = B.split(key, 3)`` of its key."""
    return B.uniform(keys3[2], (_leaf_split(max_tree_depth)[1],), dtype=dtype)


def _per_chain_draw(B, draw, keys):
    """``draw(key)`` for every chain's key, stacked on a leading axis (no map for one chain:
    cheaper on eager backends)."""
    if B.shape(keys)[0] == 1:
        return B.tree_map(lambda a: a[None], draw(keys[0]))
    return B.map(draw, keys)


def draw_noise(keys, position, metric, max_tree_depth: int) -> NUTSNoise:
    """Draw the random numbers of one transition, each chain from its own key.

    Parameters
    ----------
    keys : Array, shape (C, 2)
        One key per chain; key ``c`` is split in three: one for the momentum (a standard normal
        (d,) draw mapped by ``metric.momentum_from_normal``), one for the directions, the
        between-subtree uniforms and the first ``min(32, 2**(D-1))`` leaf uniforms, one for
        the other leaf uniforms (which a compiled kernel draws only when a subtree needs them).
    position : Array, shape (C, d)
        Gives the dimension and dtype.
    metric : EuclideanMetric
    max_tree_depth : int

    Returns
    -------
    NUTSNoise
    """
    B = get_backend()
    dtype = B.dtype_of(position)
    depth = max_tree_depth
    dim = B.shape(position)[-1]
    z, u = _per_chain_draw(B, lambda key: _draw_one(B, B.split(key, 3), dim, dtype, depth), keys)
    u_leaf = u[:, 2 * depth:]
    if _leaf_split(depth)[1]:
        tail = _per_chain_draw(B, lambda key: _tail_one(B, B.split(key, 3), dtype, depth), keys)
        u_leaf = B.concatenate([u_leaf, tail], axis=1)
    return NUTSNoise(metric.momentum_from_normal(z), u[:, :depth] < 0.5, u[:, depth:2 * depth],
                     u_leaf)


class _Proposal(NamedTuple):
    position: object         # (C, d)
    energy: object           # (C,)
    logdensity: object       # (C,)
    logdensity_grad: object  # (C, d)


class _Trajectory(NamedTuple):
    depth_index: object      # doublings done so far (shared; a Python int on eager backends)
    left: IntegratorState    # leftmost and rightmost leaves
    right: IntegratorState
    proposal: _Proposal
    log_weight: object       # log sum of exp(H0 - H) over the trajectory
    momentum_sum: object     # running sum of momenta: the trajectory's while it grows
    checkpoints: object      # U-turn checkpoints (reused by every subtree)
    leaf_tail: object        # leaf uniforms beyond the head (drawn when first needed)
    stop_log_weight: object  # log weight of the leaf where the chain stopped
    active: object           # still growing
    turning: object
    diverging: object
    depth: object
    num_steps: object
    sum_accept: object
    num_nonfinite: object


class _Subtree(NamedTuple):
    leaf_index: object       # shared; a Python int on eager backends
    current: IntegratorState  # the last leaf (the last finite one for stopped chains)
    velocity: object
    log_weight: object
    proposal: _Proposal
    momentum_sum: object
    checkpoints: object
    active: object
    stop_log_weight: object
    num_steps: object
    sum_accept: object


def _picker(B, num_chains):
    """``pick(mask, new, old)``: per-chain choice between pytrees of (C, ...) Arrays. With one
    chain it is a ``cond`` on the single flag (a Python branch on eager backends: no array
    work at all), otherwise ``where`` leaf by leaf."""
    if num_chains == 1:
        def first(a, b):
            return a

        def second(a, b):
            return b

        def pick(mask, new, old):
            return B.cond(mask[0], first, second, new, old)
    else:
        def pick(mask, new, old):
            return select(mask, new, old)
    return pick


def build_kernel(logdensity_fn: Callable, *, max_tree_depth: int = 10,
                 delta_energy_max: float = 1000.0,
                 integrator: Callable = velocity_verlet) -> Callable:
    """A NUTS transition kernel batched over chains.

    Parameters
    ----------
    logdensity_fn : callable
        ``logdensity_fn(x: (d,)) -> scalar``, the log density up to a constant, written with the
        active backend's operations.
    max_tree_depth : int
        Maximum number of doublings D (at most ``2**D - 1`` leapfrog steps per transition);
        between 1 and 20. Each transition draws ``2 * D + 2**(D-1)`` uniforms per chain.
    delta_energy_max : float
        Energy error (``H - H0``) above which a leaf is divergent (Stan: 1000).
    integrator : callable
        ``integrator(logdensity_and_grad, metric) -> Integrator`` (default velocity Verlet).

    Returns
    -------
    callable
        ``kernel(keys, state, step_size, inverse_mass_matrix, noise=None) -> (HMCState,
        NUTSInfo)`` with ``keys`` (C, 2), ``state`` an :class:`~.hmc.HMCState` of C chains,
        ``step_size`` (C,), ``inverse_mass_matrix`` (C, d) or (C, d, d); ``noise`` (a
        :class:`NUTSNoise`) replaces the draws from ``keys`` (for tests). The kernel is pure
        and fixed-shape: ``B.jit(kernel)`` compiles a whole transition on JAX.

    Raises
    ------
    ValueError
        If ``max_tree_depth`` is not an int in [1, 20] or ``delta_energy_max`` is not positive.

    References
    ----------
    Hoffman and Gelman (2014), JMLR 15, Algorithm 3; Betancourt (2017), arXiv:1701.02434,
    appendix A; Phan et al. (2019), arXiv:1912.11554.
    """
    if (not isinstance(max_tree_depth, int) or isinstance(max_tree_depth, bool)
            or not 1 <= max_tree_depth <= _MAX_TREE_DEPTH_LIMIT):
        raise ValueError(f"max_tree_depth must be an int between 1 and {_MAX_TREE_DEPTH_LIMIT}, "
                         f"got {max_tree_depth!r}")
    if not delta_energy_max > 0:
        raise ValueError(f"delta_energy_max must be positive, got {delta_energy_max!r}")
    B = get_backend()
    value_and_grad = logdensity_and_grad_fn(logdensity_fn)
    # eager backends run each chain with Python control flow on host NumPy vectors, gradients
    # batched over chains (same algorithm, noise and results; see _eager_chains)
    eager = not B.compiles_control_flow and integrator is velocity_verlet
    if not eager:
        host_value_and_grad = None
    elif isinstance(logdensity_fn, BoundLogDensity):
        host_value_and_grad = logdensity_fn.host_value_and_grad
    else:
        value_and_grad_one = B.value_and_grad(logdensity_fn)

        def host_value_and_grad(x):
            return B.host_function(value_and_grad_one if x.ndim == 1 else value_and_grad, x)
    max_depth = max_tree_depth
    neg_inf, inf = -math.inf, math.inf
    bool_dtype = B.dtype("bool")

    def kernel(keys, state, step_size, inverse_mass_matrix, noise=None):
        position = state.position
        num_chains, dim = B.shape(position)
        dtype = B.dtype_of(position)
        step_size = _per_chain(B, step_size, num_chains, dtype)
        if eager:
            return _eager_chains(B, host_value_and_grad, keys, state, step_size,
                                 inverse_mass_matrix, noise, max_depth, delta_energy_max)
        batched = num_chains > 1
        pick = _picker(B, num_chains)
        metric = gaussian_euclidean(inverse_mass_matrix)
        head, tail = _leaf_split(max_depth)
        if noise is None:   # draw_noise's numbers, the leaf tail drawn when first needed
            z, u = _per_chain_draw(
                B, lambda key: _draw_one(B, B.split(key, 3), dim, dtype, max_depth), keys)
            noise = NUTSNoise(metric.momentum_from_normal(z), u[:, :max_depth] < 0.5,
                              u[:, max_depth:2 * max_depth], u[:, 2 * max_depth:])
            leaf_tail = B.zeros((num_chains, tail), dtype=dtype)
            tail_pending = tail > 0
        else:
            leaf_tail = noise.u_leaf[:, head:]
            tail_pending = False
        # the subtree of the doubling that first needs the tail (2**k > head leaves)
        tail_depth = head.bit_length()

        def draw_tail(leaf_tail):
            return _per_chain_draw(
                B, lambda key: _tail_one(B, B.split(key, 3), dtype, max_depth), keys)

        def keep_tail(leaf_tail):
            return leaf_tail

        velocity_fn, kinetic_energy = metric.velocity, metric.kinetic_energy
        step = integrator(value_and_grad, metric)
        coefficients_right, coefficients_left = step.prepare(step_size), step.prepare(-step_size)
        momentum0 = noise.momentum
        energy0 = kinetic_energy(momentum0) - state.logdensity
        log_u_subtree = B.log(noise.u_subtree)
        u_head = noise.u_leaf[:, :head]

        def leaf_uniform(n, leaf_tail):
            if not tail:
                return u_head[:, n]
            return B.where(n < head, u_head[:, B.minimum(n, head - 1)],
                           leaf_tail[:, B.maximum(n - head, 0)])
        going_right = noise.going_right
        # one spare checkpoint slot (index max_depth) that odd leaves write and no check reads:
        # every leaf writes (in place), only the check is a branch. Branching around the write
        # made XLA copy the whole (C, K, 5, d) buffer twice per leaf (40 kB at d = 100).
        num_slots = max_depth + 1
        slots = B.reshape(B.repeat(B.arange(num_slots), 2, axis=0), (num_slots, 2))
        offsets = B.reshape(B.tile(B.arange(2), (num_slots,)), (num_slots, 2))
        all_true = B.ones((num_chains,), dtype=bool_dtype)
        no_weight = B.full((num_chains,), neg_inf, dtype=dtype)
        zeros_int = B.zeros((num_chains,), dtype=B.int_dtype)
        false = B.zeros((num_chains,), dtype=bool_dtype)
        start = IntegratorState(position, momentum0, state.logdensity, state.logdensity_grad)
        trajectory = _Trajectory(
            depth_index=0, left=start, right=start,
            proposal=_Proposal(position, energy0, state.logdensity, state.logdensity_grad),
            log_weight=B.zeros((num_chains,), dtype=dtype), momentum_sum=momentum0,
            checkpoints=init_checkpoints(num_chains, num_slots, dim, dtype), leaf_tail=leaf_tail,
            stop_log_weight=B.zeros((num_chains,), dtype=dtype), active=all_true,
            turning=false, diverging=false, depth=zeros_int, num_steps=zeros_int,
            sum_accept=B.zeros((num_chains,), dtype=dtype), num_nonfinite=zeros_int)

        def check_leaf(ckpt, n, velocity, momentum_sum):
            mask = turning_mask(n, slots, offsets)
            return ~is_iterative_turning(ckpt, velocity, momentum_sum, mask)

        def skip_check(ckpt, n, velocity, momentum_sum):
            return all_true

        def outer_cond(t):
            return B.any(t.active) & (t.depth_index < max_depth)

        def outer_body(t):
            k = t.depth_index
            right = going_right[:, k]
            begin = pick(right, t.right, t.left)
            coefficients = pick(right, coefficients_right, coefficients_left)
            num_leaves = 1 << k
            leaf_tail = t.leaf_tail
            if tail_pending:
                leaf_tail = B.cond(k == tail_depth, draw_tail, keep_tail, leaf_tail)

            def inner_cond(s):
                return B.any(s.active) & (s.leaf_index < num_leaves)

            def inner_body(s):
                n = s.leaf_index
                leaf = step.apply(s.current, coefficients)
                velocity = velocity_fn(leaf.momentum)
                energy = kinetic_energy(leaf.momentum, velocity) - leaf.logdensity
                log_weight = energy0 - energy
                # non-finite energies (NaN, +-inf) get weight 0 and are divergent
                log_weight = B.where(log_weight < inf, log_weight, neg_inf)
                accept = B.exp(B.clip(log_weight, max=0.0))
                if batched:
                    active = s.active
                    num_steps = s.num_steps + active
                    sum_accept = s.sum_accept + B.where(active, accept, 0.0)
                    stop_log_weight = B.where(active, log_weight, s.stop_log_weight)
                else:   # the only chain is active while the loop runs
                    num_steps = s.num_steps + 1
                    sum_accept = s.sum_accept + accept
                    stop_log_weight = log_weight
                subtree_log_weight = B.logaddexp(s.log_weight, log_weight)
                take = progressive_uniform_sampling(B.log(leaf_uniform(n, leaf_tail)),
                                                    subtree_log_weight, log_weight)
                proposal = pick(take, _Proposal(leaf.position, energy, leaf.logdensity,
                                                leaf.logdensity_grad), s.proposal)
                momentum_sum = s.momentum_sum + leaf.momentum
                odd = n % 2
                popcount = B.popcount(n)
                ckpt = write_checkpoint(s.checkpoints, n, leaf.momentum, velocity, s.velocity,
                                        s.momentum_sum, s.current.momentum,
                                        slot=popcount + odd * (max_depth - popcount))
                no_turn = B.cond(odd == 1, check_leaf, skip_check, ckpt, n, velocity,
                                 momentum_sum)
                still = (log_weight >= -delta_energy_max) & no_turn
                if batched:
                    still = still & s.active
                    # chains that stopped keep their last finite leaf: nothing non-finite is
                    # integrated from, and their results are masked out anyway
                    current = select(still, leaf, s.current)
                    velocity = B.where(still[:, None], velocity, s.velocity)
                else:
                    current = leaf   # the loop ends as soon as the only chain stops
                return _Subtree(n + 1, current, velocity, subtree_log_weight, proposal,
                                momentum_sum, ckpt, still, stop_log_weight, num_steps, sum_accept)

            sub = B.while_loop(inner_cond, inner_body, _Subtree(
                leaf_index=0, current=begin, velocity=begin.momentum,   # (placeholder, unused)
                log_weight=no_weight, proposal=t.proposal, momentum_sum=t.momentum_sum,
                checkpoints=t.checkpoints, active=t.active, stop_log_weight=t.stop_log_weight,
                num_steps=t.num_steps, sum_accept=t.sum_accept))

            complete = sub.active            # built all its leaves without turn or divergence
            stopped = t.active & ~complete if batched else ~complete
            diverged = stopped & (sub.stop_log_weight < -delta_energy_max)
            # biased progressive sampling between the trajectory and the new subtree
            take = complete & progressive_biased_sampling(log_u_subtree[:, k], t.log_weight,
                                                          sub.log_weight)
            proposal = pick(take, sub.proposal, t.proposal)
            # U-turn across the join: begin is the old inner end, the other end the old outer
            old_outer = B.where(right[:, None], t.left.momentum, t.right.momentum)
            first_row = sub.checkpoints.rows[:, 0]    # slot 0 holds the subtree's first leaf
            across = turning_across(
                velocity_fn(old_outer), velocity_fn(begin.momentum), begin.momentum,
                t.momentum_sum, first_row[:, 0], first_row[:, 4], sub.velocity,
                sub.momentum_sum - t.momentum_sum)
            return _Trajectory(
                depth_index=k + 1,
                left=pick(complete & ~right, sub.current, t.left),
                right=pick(complete & right, sub.current, t.right),
                proposal=proposal,
                log_weight=B.where(complete, B.logaddexp(t.log_weight, sub.log_weight),
                                   t.log_weight),
                momentum_sum=sub.momentum_sum,   # the joined trajectory's, where it goes on
                checkpoints=sub.checkpoints, leaf_tail=leaf_tail,
                stop_log_weight=sub.stop_log_weight,
                active=complete & ~across,
                turning=t.turning | (stopped & ~diverged) | (complete & across),
                diverging=t.diverging | diverged,
                depth=t.depth + t.active if batched else t.depth + 1,
                num_steps=sub.num_steps, sum_accept=sub.sum_accept,
                num_nonfinite=t.num_nonfinite + (stopped & (sub.stop_log_weight == neg_inf)))

        t = B.while_loop(outer_cond, outer_body, trajectory)
        proposal = t.proposal
        new_state = HMCState(proposal.position, proposal.logdensity, proposal.logdensity_grad)
        info = NUTSInfo(
            momentum=momentum0, is_divergent=t.diverging, is_turning=t.turning,
            energy=proposal.energy, num_trajectory_expansions=t.depth,
            num_integration_steps=t.num_steps,
            acceptance_rate=t.sum_accept / B.astype(t.num_steps, dtype),
            num_nonfinite=t.num_nonfinite)
        return new_state, info

    return kernel


# --------------------------------------------------------------------------------------------
# One chain on an eager backend
# --------------------------------------------------------------------------------------------
def _logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) of Python floats (NumPy's formula)."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a == b:
        return a + math.log(2.0)
    diff = a - b
    if diff > 0:
        return a + math.log1p(math.exp(-diff))
    return b + math.log1p(math.exp(diff))


class _Row(NamedTuple):
    """A U-turn checkpoint of the even leaf e (see :mod:`.termination`)."""

    velocity: object         # v_e
    velocity_prev: object    # v_{e-1}
    sum_prev: object         # S(e-1)
    sum_prev2: object        # S(e-2)


def _one_chain(position, logdensity, grad, momentum, going_right, u_subtree, u_leaf, eps, imm,
               max_depth, delta_energy_max):
    """One chain's NUTS transition on the host, as a generator.

    The algorithm of :func:`build_kernel` for one chain, with Python control flow, Python
    floats for the scalars and NumPy vectors of shape (d,). It yields every position whose log
    density and gradient it needs and is sent back ``(logdensity: float, grad: (d,))``, so
    that :func:`_eager_chains` can evaluate all chains' gradients in one batched call. Returns
    ``(position, logdensity, grad, energy, info)`` with ``info`` the per-chain NUTSInfo fields
    as Python scalars.
    """
    inf = math.inf
    if imm.ndim == 2:
        def velocity(p):
            return imm.dot(p)
    else:
        def velocity(p):
            return imm * p
    step = (-eps, eps)
    half = (0.5 * -eps, 0.5 * eps)
    log = math.log

    def log_u(u):
        return log(u) if u > 0 else -inf

    v0 = velocity(momentum)
    energy0 = 0.5 * float(momentum.dot(v0)) - logdensity
    # ends: (position, momentum, grad, velocity); index 0 left, 1 right
    ends = [(position, momentum, grad, v0)] * 2
    proposal = (position, logdensity, grad, energy0)
    log_weight = 0.0
    momentum_sum = momentum
    rows = [None] * max_depth
    between = [inf] * max_depth
    depth = num_steps = num_nonfinite = 0
    sum_accept = 0.0
    turning = diverging = False
    while depth < max_depth:
        k = depth
        right = going_right[k]
        x, p, g, v = ends[right]
        h, e = half[right], step[right]
        sum_before = momentum_sum
        sub_log_weight, sub_proposal = -inf, None
        first = None
        stop = None      # None, "turn" or "diverge"
        for n in range(1 << k):
            p_prev, v_prev = p, v
            p = p + h * g
            x = x + e * velocity(p)
            ld, g = yield x
            p = p + h * g
            v = velocity(p)
            energy = 0.5 * float(p.dot(v)) - ld
            lw = energy0 - energy
            if not lw < inf:        # NaN or +-inf energy: weight 0, divergent
                lw = -inf
            num_steps += 1
            sum_accept += math.exp(min(lw, 0.0))
            total = _logaddexp(sub_log_weight, lw)
            if log_u(u_leaf[n]) + total < lw:
                sub_proposal = (x, ld, g, energy)
            sub_log_weight = total
            new_sum = momentum_sum + p
            if not lw >= -delta_energy_max:
                stop = "diverge"
                num_nonfinite = int(lw == -inf)
                break
            if n % 2 == 0:
                slot = n.bit_count()
                if n == 0:
                    first = (p, v)
                    rows[0] = _Row(v, None, momentum_sum, None)
                else:   # check 2 of the sub-subtree whose midpoint is this leaf
                    start = rows[slot - 1]
                    rho = new_sum - start.sum_prev
                    between[slot] = min(float(start.velocity.dot(rho)), float(v.dot(rho)))
                    rows[slot] = _Row(v, v_prev, momentum_sum, momentum_sum - p_prev)
            else:
                # the sub-subtrees completed here start at slots idx_min..idx_max
                idx_max = n.bit_count() - 1
                idx_min = idx_max + 2 - (n ^ (n + 1)).bit_count()
                for i in range(idx_max, idx_min - 1, -1):
                    row = rows[i]
                    rho = new_sum - row.sum_prev
                    if not (row.velocity.dot(rho) > 0 and v.dot(rho) > 0):
                        stop = "turn"
                        break
                    if i > idx_min:   # the slot is the midpoint of a size >= 4 sub-subtree
                        rho = new_sum - row.sum_prev2
                        if not (between[i] > 0 and row.velocity_prev.dot(rho) > 0
                                and v.dot(rho) > 0):
                            stop = "turn"
                            break
                if stop:
                    break
            momentum_sum = new_sum
        depth += 1
        if stop == "diverge":
            diverging = True
            break
        if stop == "turn":
            turning = True
            break
        # biased progressive sampling, then the U-turn checks across the join
        if log_u(u_subtree[k]) + log_weight < sub_log_weight:
            proposal = sub_proposal
        log_weight = _logaddexp(log_weight, sub_log_weight)
        _, p_inner, _, v_inner = ends[right]          # old trajectory, inner end
        v_outer = ends[1 - right][3]                  # old trajectory, outer end
        ends[right] = (x, p, g, v)
        sum_new = momentum_sum - sum_before
        # the three checks across the join (as turning_across): each sum against its pair of
        # velocities, (old outer, new outer), (old outer, new inner), (new outer, old inner)
        whole = sum_before + sum_new
        with_new_inner = sum_before + first[0]
        with_old_inner = sum_new + p_inner
        if not (v_outer.dot(whole) > 0 and v.dot(whole) > 0
                and v_outer.dot(with_new_inner) > 0 and first[1].dot(with_new_inner) > 0
                and v.dot(with_old_inner) > 0 and v_inner.dot(with_old_inner) > 0):
            turning = True
            break
    x, ld, g, energy = proposal
    return x, ld, g, energy, (diverging, turning, depth, num_steps, sum_accept / num_steps,
                              num_nonfinite)


class _LeafUniforms:
    """One chain's leaf uniforms on the eager path: the head drawn with the transition, the
    tail (leaves 32 and up, from the chain's third key) drawn on first use, as the compiled
    kernel does; indexed like the list of all ``2**(D-1)``."""

    __slots__ = ("head", "num_head", "draw_tail", "tail")

    def __init__(self, head, draw_tail):
        self.head, self.num_head, self.draw_tail, self.tail = head, len(head), draw_tail, None

    def __getitem__(self, n):
        if n < self.num_head:
            return self.head[n]
        if self.tail is None:
            self.tail = self.draw_tail()
        return self.tail[n - self.num_head]


def _host_noise(B, keys, dim, dtype, imm, max_depth):
    """:func:`draw_noise`'s numbers drawn chain by chain (no ``map``), for the eager path, as
    host values: ``(momentum (C, d), uniforms (C, 2D + head), leaf uniforms)``, the last a
    :class:`_LeafUniforms` per chain (the leaf uniforms beyond the head are drawn when first
    needed). The momentum is ``metric.momentum_from_normal`` of
    :func:`~.metrics.gaussian_euclidean` computed on the host inverse mass matrix ``imm``
    (C, d) or (C, d, d)."""
    host = B.to_numpy
    head = 2 * max_depth + _leaf_split(max_depth)[0]
    z, u, leaves = [], [], []
    for c in range(B.shape(keys)[0]):
        keys3 = B.split(keys[c], 3)   # once: a split costs as much as a draw on the host
        z_c, u_c = _draw_one(B, keys3, dim, dtype, max_depth)
        z.append(host(z_c))
        u.append(host(u_c))
        leaves.append(_LeafUniforms(
            u[-1][2 * max_depth:head].tolist(),
            lambda keys3=keys3: host(_tail_one(B, keys3, dtype, max_depth)).tolist()))
    z = np.array(z)   # np.array: a third of np.stack's cost for a few vectors
    u = np.array(u)
    if imm.ndim == 2:
        return z / np.sqrt(imm), u, leaves
    # dense: p = L^{-T} z with M^{-1} = L L^T, as the metric draws it
    chol = np.linalg.cholesky(imm)
    return np.linalg.solve(np.swapaxes(chol, -1, -2), z[..., None])[..., 0], u, leaves


def _eager_chains(B, host_value_and_grad, keys, state, step_size, inverse_mass_matrix, noise,
                  max_depth, delta_energy_max):
    """The NUTS transition of :func:`build_kernel` on an eager backend, C chains.

    Each chain runs :func:`_one_chain` (the same algorithm, consuming the same noise in the same
    way as the batched kernel) on host NumPy vectors; the chains advance in lock step, and the
    positions of the chains still growing their trajectories are evaluated in one batched
    ``value_and_grad`` call per leapfrog step. Eager frameworks pay 1-5 us of dispatch per array
    operation and the masked batched step needs about a hundred of them; here a step costs one
    framework call plus about a dozen NumPy operations on (d,) vectors per chain. Results equal
    the batched kernel's up to rounding (dot products are summed in another order).
    """
    num_chains, dim = B.shape(state.position)
    dtype = B.dtype_of(state.position)
    host = B.to_numpy
    imm = host(inverse_mass_matrix)
    if noise is None:   # the draws of draw_noise, chain by chain from its own key
        momentum_host, u, u_leaf = _host_noise(B, keys, dim, dtype, imm, max_depth)
        going_right = u[:, :max_depth] < 0.5
        u_subtree = u[:, max_depth:2 * max_depth]
    else:
        momentum_host = host(noise.momentum)
        going_right = host(noise.going_right)
        u_subtree, u_leaf = host(noise.u_subtree), host(noise.u_leaf).tolist()
    eps = host(step_size).tolist()
    position, logdensity = host(state.position), host(state.logdensity).tolist()
    grad = host(state.logdensity_grad)
    chains = {c: _one_chain(position[c], logdensity[c], grad[c], momentum_host[c],
                            going_right[c].tolist(), u_subtree[c].tolist(), u_leaf[c],
                            eps[c], imm[c], max_depth, delta_energy_max)
              for c in range(num_chains)}
    results = [None] * num_chains
    requests = {}
    for c, chain in chains.items():
        requests[c] = next(chain)
    calls = {}   # number of chains evaluated together -> host value-and-gradient function
    while requests:
        if len(requests) == 1:   # no stacking, no vmap: the cheapest call on eager frameworks
            (c, x), = requests.items()
            call = calls.get(0) or calls.setdefault(0, host_value_and_grad(x))
            ld, g = call(x)
            try:
                requests[c] = chains[c].send((float(ld), g))
            except StopIteration as done:
                results[c] = done.value
                del requests[c]
            continue
        order = list(requests)
        xs = np.array([requests[c] for c in order])
        call = calls.get(len(order)) or calls.setdefault(len(order), host_value_and_grad(xs))
        ld, g = call(xs)
        ld = ld.tolist()
        for row, c in enumerate(order):
            try:
                requests[c] = chains[c].send((ld[row], g[row]))
            except StopIteration as done:
                results[c] = done.value
                del requests[c]
    x, ld, g, energy, info = zip(*results)
    diverging, turning, depth, num_steps, accept, nonfinite = zip(*info)
    # four conversions in all (each costs a few microseconds on an eager framework)
    vectors = B.asarray(np.array([x, g, momentum_host]), dtype=dtype)
    floats = B.asarray(np.array([ld, energy, accept]), dtype=dtype)               # (3, C)
    ints = B.asarray(np.array([depth, num_steps, nonfinite]), dtype=B.int_dtype)  # (3, C)
    flags = B.asarray(np.array([diverging, turning]), dtype=B.dtype("bool"))      # (2, C)
    new_state = HMCState(vectors[0], floats[0], vectors[1])
    info = NUTSInfo(
        momentum=vectors[2], is_divergent=flags[0], is_turning=flags[1], energy=floats[1],
        num_trajectory_expansions=ints[0], num_integration_steps=ints[1],
        acceptance_rate=floats[2], num_nonfinite=ints[2])
    return new_state, info
