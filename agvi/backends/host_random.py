"""Host-side random keys for the backends without a key-based generator of their own.

A key is a NumPy ``uint32`` array of shape (2,), the same layout as a raw JAX key. ``split`` and
``fold_in`` hash it with :class:`numpy.random.SeedSequence` (a well-mixed, documented hash), and
draws come from a counter-based Philox generator keyed by it, so the same key always gives the
same numbers. The NumPy backend draws with :func:`generator`; the torch backend seeds a
``torch.Generator`` with :func:`seed_int`; :class:`agvi.testing.SharedNoise` uses these functions
to feed every backend identical noise.

References
----------
Salmon et al. (2011), "Parallel random numbers: as easy as 1, 2, 3" (Philox).
O'Neill (2015), PCG / SeedSequence seeding design (as implemented in NumPy).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = [
    "as_key", "batched_hash_ok", "binomial", "fold_in", "fold_in_many", "generator", "key",
    "normal", "permutation", "poisson", "randint", "seed_int", "split", "split_many",
    "standard_gamma", "uniform",
]

_MASK32 = 0xFFFFFFFF


def key(seed: int) -> np.ndarray:
    """Key from a non-negative int ``seed`` (any size): uint32 array of shape (2,).

    Raises
    ------
    ValueError
        If ``seed`` is negative or not an integer.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    if seed < 2**64:
        return np.array([(seed >> 32) & _MASK32, seed & _MASK32], dtype=np.uint32)
    return np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)


def as_key(k) -> np.ndarray:
    """Validate and return ``k`` as a uint32 array of shape (..., 2).

    Raises
    ------
    ValueError
        If ``k`` does not have a last axis of length 2 or holds values outside uint32.
    """
    arr = np.asarray(k)
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ValueError(f"a random key must have shape (2,) (or (..., 2)), got {arr.shape}")
    if arr.dtype != np.uint32:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > _MASK32:
            raise ValueError(f"a random key must hold uint32 values, got dtype {arr.dtype}")
        arr = arr.astype(np.uint32)
    return arr


def split(k, num: int = 2) -> np.ndarray:
    """``num`` independent keys derived from ``k``: uint32 array of shape (num, 2)."""
    k = as_key(k)
    if int(num) < 1:
        raise ValueError(f"num must be a positive int, got {num}")
    ss = np.random.SeedSequence([int(k[0]), int(k[1])], spawn_key=(0x5EED,))
    return ss.generate_state(2 * int(num), dtype=np.uint32).reshape(int(num), 2)


def fold_in(k, data: int) -> np.ndarray:
    """A key derived from ``k`` and the non-negative integer ``data``: shape (2,)."""
    k = as_key(k)
    ss = np.random.SeedSequence([int(k[0]), int(k[1])], spawn_key=(0xF01D, int(data)))
    return ss.generate_state(2, dtype=np.uint32)


def seed_int(k) -> int:
    """The key as one 64-bit integer (for seeding framework generators)."""
    k = as_key(k)
    return (int(k[0]) << 32) | int(k[1])


def generator(k) -> np.random.Generator:
    """A NumPy Philox generator keyed by ``k`` (counter at zero)."""
    return np.random.Generator(np.random.Philox(key=seed_int(k)))


_LOCAL = threading.local()


def _keyed(k) -> np.random.Generator:
    """:func:`generator` without building one: this thread's generator, its Philox state reset
    to key ``k`` and counter zero (the same numbers; building a Philox costs about 7 us, a
    reset under 2 us). Valid until the next call in the thread: draw at once."""
    g = getattr(_LOCAL, "generator", None)
    if g is None:
        g = _LOCAL.generator = np.random.Generator(np.random.Philox(key=0))
    g.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, dtype=np.uint64),
                  "key": np.array([seed_int(k), 0], dtype=np.uint64)},
        "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return g


# --- many keys at once -----------------------------------------------------------------
# NumPy's SeedSequence hash (numpy/random/bit_generator.pyx: mix_entropy, generate_state) for
# a whole stack of keys at once: split and fold_in are SeedSequence([k0, k1], spawn_key=...) of
# each key, and hashing 16 keys in one pass costs a third of 16 SeedSequence calls. The hash
# constants do not depend on the data, so each hashmix step is one vectorised xor-multiply-
# shift. Checked against split/fold_in on first use (batched_hash_ok).
_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R = 0xCA01F9DD, 0x4973F715
_U16 = np.uint32(16)
_SS_OTHERS = [[d for d in range(4) if d != s] for s in range(4)]
_SS_PLANS: dict = {}
_SS_STATE: dict = {}


def _ss_consts(start, mult, n):
    """The (xor, multiply) constants of ``n`` successive hashmix steps, uint32 arrays (n,)."""
    xs, ms, h = [], [], start
    for _ in range(n):
        xs.append(h)
        h = (h * mult) & _MASK32
        ms.append(h)
    return np.array(xs, dtype=np.uint32), np.array(ms, dtype=np.uint32)


def _ss_plan(spawn_words: tuple):
    """Constants of mix_entropy for a two-word entropy padded to the pool (4 words) and the
    spawn key's words (fixed: their hashes are folded into per-word constants)."""
    plan = _SS_PLANS.get(spawn_words)
    if plan is None:
        xa, ma = _ss_consts(_SS_INIT_A, _SS_MULT_A, 16 + 4 * len(spawn_words))
        spawn = []
        for j, w in enumerate(spawn_words):
            c = []
            for dst in range(4):
                v = ((w ^ int(xa[16 + 4 * j + dst])) * int(ma[16 + 4 * j + dst])) & _MASK32
                c.append(((v ^ (v >> 16)) * _SS_MIX_R) & _MASK32)  # MIX_R * hashmix(w)
            spawn.append(np.array(c, dtype=np.uint32))
        plan = _SS_PLANS[spawn_words] = (xa[:4], ma[:4], xa[4:16].reshape(4, 3),
                                         ma[4:16].reshape(4, 3), spawn)
    return plan


def _seedsequence_states(keys: np.ndarray, spawn_words: tuple, n_words: int) -> np.ndarray:
    """``SeedSequence([k0, k1], spawn_key).generate_state(n_words)`` of each key, (n, n_words)
    uint32 (``spawn_words``: the spawn key as uint32 words)."""
    x0, m0, xm, mm, spawn = _ss_plan(spawn_words)
    mix_l, mix_r = np.uint32(_SS_MIX_L), np.uint32(_SS_MIX_R)
    mixer = np.zeros((keys.shape[0], 4), dtype=np.uint32)  # uint32 arithmetic wraps mod 2**32
    mixer[:, :2] = keys
    mixer ^= x0
    mixer *= m0
    mixer ^= mixer >> _U16
    for src in range(4):  # mixer[dst] = mix(mixer[dst], hashmix(mixer[src])) for dst != src
        h = mixer[:, src, None] ^ xm[src]
        h *= mm[src]
        h ^= h >> _U16
        dst = _SS_OTHERS[src]
        r = mixer[:, dst] * mix_l
        r -= h * mix_r
        r ^= r >> _U16
        mixer[:, dst] = r
    for c in spawn:
        mixer *= mix_l
        mixer -= c
        mixer ^= mixer >> _U16
    xb, mb = _ss_consts(_SS_INIT_B, _SS_MULT_B, n_words)
    out = mixer[:, np.arange(n_words) % 4] ^ xb
    out *= mb
    out ^= out >> _U16
    return out


def _uint32_words(n: int) -> tuple:
    """The uint32 words of a non-negative int, as SeedSequence coerces it.

    Raises
    ------
    ValueError
        If ``n`` is negative (as SeedSequence does).
    """
    if n < 0:
        raise ValueError(f"fold_in: data must be a non-negative int, got {n}")
    words = [] if n else [0]
    while n > 0:
        words.append(n & _MASK32)
        n >>= 32
    return tuple(words)


def split_many(keys, num: int) -> np.ndarray:
    """:func:`split` of each key of ``keys`` (n, 2) uint32 at once: uint32 (n, num, 2)."""
    states = _seedsequence_states(keys, (0x5EED,), 2 * num)  # split's spawn key
    return states.reshape(keys.shape[0], num, 2)


def fold_in_many(keys, data: int) -> np.ndarray:
    """:func:`fold_in` of each key of ``keys`` (n, 2) uint32 at once: uint32 (n, 2).

    Raises
    ------
    ValueError
        If ``data`` is negative.
    """
    return _seedsequence_states(keys, (0xF01D,) + _uint32_words(int(data)), 2)  # fold_in's


def batched_hash_ok() -> bool:
    """Whether :func:`split_many` and :func:`fold_in_many` reproduce :func:`split` and
    :func:`fold_in` (checked once; callers loop over the keys otherwise)."""
    ok = _SS_STATE.get("ok")
    if ok is None:
        keys = np.array([[0, 0], [0xFFFFFFFF, 1], [12345, 0x9E3779B9]], dtype=np.uint32)
        ok = _SS_STATE["ok"] = bool(
            np.array_equal(split_many(keys, 3), [split(k, 3) for k in keys])
            and np.array_equal(fold_in_many(keys, 2**33 + 7),
                               [fold_in(k, 2**33 + 7) for k in keys]))
    return ok



# --- draws -----------------------------------------------------------------------------------
# The one host implementation of every primitive draw: the NumPy backend, the torch backend on
# the CPU and agvi.testing.SharedNoise all call these, so their numbers are identical.
def normal(k, shape, dtype=np.float64) -> np.ndarray:
    """Standard normal draws of ``shape`` in ``dtype`` (drawn in float64, then rounded)."""
    return np.asarray(_keyed(k).standard_normal(tuple(shape)), dtype=dtype)


def uniform(k, shape, dtype=np.float64, minval=0.0, maxval=1.0) -> np.ndarray:
    """Uniform draws on [minval, maxval) of ``shape`` in ``dtype``.

    Drawn in float64 and rounded; a value that rounds up to ``maxval`` (about one in 2**25
    draws in float32) is moved to the largest ``dtype`` value below it, so that derived draws
    such as ``-log1p(-u)`` stay finite.
    """
    u = _keyed(k).random(tuple(shape))
    if minval == 0.0 and maxval == 1.0 and np.dtype(dtype) == np.float64:
        return np.asarray(u)   # what the general case computes, bit for bit (u < 1)
    out = np.asarray(minval + (maxval - minval) * u, dtype=dtype)
    hi = np.asarray(maxval, dtype=dtype)
    below = np.nextafter(hi, np.asarray(minval, dtype=dtype))
    return np.where(out < hi, out, below).astype(dtype, copy=False)


def standard_gamma(k, alpha, shape, dtype=np.float64) -> np.ndarray:
    """Gamma(alpha, 1) draws of ``shape`` (``alpha`` broadcast to it) in ``dtype``."""
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), tuple(shape))
    return np.asarray(_keyed(k).standard_gamma(a), dtype=dtype)


def poisson(k, rate, shape, dtype=np.float64) -> np.ndarray:
    """Poisson draws of ``shape`` (``rate`` broadcast to it) as ``dtype`` values."""
    r = np.broadcast_to(np.asarray(rate, dtype=np.float64), tuple(shape))
    return np.asarray(_keyed(k).poisson(r), dtype=dtype)


def binomial(k, total_count, probs, shape, dtype=np.float64) -> np.ndarray:
    """Binomial draws of ``shape`` (parameters broadcast to it) as ``dtype`` values."""
    n = np.broadcast_to(np.asarray(total_count), tuple(shape)).astype(np.int64)
    p = np.broadcast_to(np.asarray(probs, dtype=np.float64), tuple(shape))
    return np.asarray(_keyed(k).binomial(n, p), dtype=dtype)


def randint(k, shape, minval: int, maxval: int, dtype=np.int64) -> np.ndarray:
    """Uniform integers in [minval, maxval) of ``shape``."""
    return _keyed(k).integers(int(minval), int(maxval), size=tuple(shape),
                                 dtype=np.int64).astype(dtype, copy=False)


def permutation(k, n: int, dtype=np.int64) -> np.ndarray:
    """A random permutation of ``range(n)``."""
    return _keyed(k).permutation(int(n)).astype(dtype, copy=False)
