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

import numpy as np

__all__ = ["as_key", "fold_in", "generator", "key", "seed_int", "split"]

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
