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
    "as_key", "binomial", "fold_in", "generator", "key", "normal", "permutation", "poisson",
    "randint", "seed_int", "split", "standard_gamma", "uniform",
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
