"""The iterative U-turn checks (checkpoint buffers) against the three checks of every completed
sub-subtree evaluated directly from the leaves' momenta (Betancourt 2017, A.4.2; Stan 2.26)."""

import numpy as np

from agvi.infer.mcmc.termination import (
    init_checkpoints,
    is_iterative_turning,
    turning_mask,
    write_checkpoint,
)

DEPTH = 6   # subtrees of 32 leaves: sub-subtrees of every size up to 32


def _turns(p, v, a, b):
    """The generalised criterion on leaves a..b (inclusive): (C,) bool."""
    rho = p[:, a:b + 1].sum(axis=1)
    return (np.sum(v[:, a] * rho, axis=-1) <= 0) | (np.sum(v[:, b] * rho, axis=-1) <= 0)


def _direct(p, v, n):
    """Checks 1, 2 and 3 of every sub-subtree that the odd leaf n completes, from the leaves."""
    turned = np.zeros(p.shape[0], dtype=bool)
    size = 2
    while n + 1 >= size and (n + 1) % size == 0:
        a, mid = n + 1 - size, n + 1 - size // 2
        turned |= _turns(p, v, a, n)
        if size >= 4:
            turned |= _turns(p, v, a, mid) | _turns(p, v, mid - 1, n)
        size *= 2
    return turned


def _walks(num_chains=64, dim=2):
    """Momenta (C, 2**(DEPTH-1), dim) of random walks with a drift, and their velocities under
    a random diagonal metric: in 2 dimensions they turn often."""
    rng = np.random.default_rng(0)
    drift = rng.normal(size=(num_chains, 1, dim))
    p = drift + 0.8 * rng.normal(size=(num_chains, 2 ** (DEPTH - 1), dim))
    return p, p * rng.uniform(0.5, 2.0, size=(num_chains, 1, dim))


def test_iterative_checks_equal_the_direct_checks(B):
    """Random walks of momenta in 2 dimensions turn often, so every check decides some leaves;
    each odd leaf's result must equal the direct evaluation (with a spare slot, as the
    compiled kernel writes odd leaves there)."""
    p, v = _walks()
    num_chains, num_leaves, dim = p.shape
    num_slots = DEPTH + 1
    slots = B.asarray(np.repeat(np.arange(num_slots), 2).reshape(num_slots, 2))
    offsets = B.asarray(np.tile(np.arange(2), num_slots).reshape(num_slots, 2))
    ckpt = init_checkpoints(num_chains, num_slots, dim, B.float_dtype)
    running = np.cumsum(p, axis=1) + 3.0        # sums may carry a constant offset
    decided = {True: 0, False: 0}
    for n in range(num_leaves):
        pn, vn = B.asarray(p[:, n]), B.asarray(v[:, n])
        before = B.asarray(running[:, n - 1] if n else np.full((num_chains, dim), 3.0))
        if n % 2 == 0:
            previous = n - 1 if n else 0
            ckpt = write_checkpoint(ckpt, n, pn, vn, B.asarray(v[:, previous]), before,
                                    B.asarray(p[:, previous]))
            continue
        # an odd leaf writes the spare slot, which must not change any check
        ckpt = write_checkpoint(ckpt, n, pn, vn, vn, before, pn, slot=DEPTH)
        got = B.to_numpy(is_iterative_turning(ckpt, vn, B.asarray(running[:, n]),
                                              turning_mask(n, slots, offsets)))
        expected = _direct(p, v, n)
        np.testing.assert_array_equal(got, expected, err_msg=f"leaf {n}")
        for value in expected:
            decided[bool(value)] += 1
    assert decided[True] > 100 and decided[False] > 100, decided


def test_extra_checks_decide_cases_the_whole_subtree_check_misses():
    """The check pairs of Stan 2.26 matter: on these walks some leaves turn by check 2 or 3
    only (so the test above would catch a kernel that dropped them)."""
    p, v = _walks()
    num_chains, num_leaves, _ = p.shape
    only_extra = 0
    for n in range(3, num_leaves, 2):
        whole = np.zeros(num_chains, dtype=bool)
        size = 2
        while (n + 1) % size == 0:
            whole |= _turns(p, v, n + 1 - size, n)
            size *= 2
        only_extra += int(np.sum(_direct(p, v, n) & ~whole))
    assert only_extra > 10, only_extra
