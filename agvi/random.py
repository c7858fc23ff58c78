"""Explicit random keys on the active backend (no global random state anywhere in agvi).

A key is a ``uint32`` array of shape (2,) of the active backend (NumPy for the numpy and torch
backends, a raw ``jax.random`` key on JAX). Split a key before every independent use:

>>> import agvi.random as rnd
>>> k = rnd.key(0)
>>> k1, k2 = rnd.split(k)
>>> rnd.fold_in(k, 3).shape
(2,)
"""

from __future__ import annotations

import secrets

import numpy as np

from .backends import get_backend

__all__ = ["fold_in", "key", "sanitize_seed", "split"]


def key(seed: int):
    """A random key from the non-negative int ``seed``.

    Returns
    -------
    Array, shape (2,), uint32, of the active backend.

    Raises
    ------
    ValueError
        If ``seed`` is negative or not an int.
    """
    return get_backend().key(seed)


def split(key, num: int = 2):
    """``num`` independent keys from ``key``: Array of shape (num, 2), uint32.

    Raises
    ------
    ValueError
        If ``num`` is not a positive int or ``key`` does not have shape (2,).
    """
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    return get_backend().split(sanitize_seed(key), int(num))


def fold_in(key, data: int):
    """A new key from ``key`` and the non-negative integer ``data`` (e.g. a step or chain
    index): Array of shape (2,), uint32."""
    return get_backend().fold_in(sanitize_seed(key), int(data))


def sanitize_seed(seed_or_key):
    """Turn an int seed, an existing key, or None into a key of the active backend.

    Parameters
    ----------
    seed_or_key : int, Array of shape (2,), or None
        ``None`` draws fresh entropy from the operating system (not reproducible).

    Returns
    -------
    Array, shape (2,), uint32.

    Raises
    ------
    ValueError
        If an array does not have shape (2,) or an int is negative.
    TypeError
        For any other type.
    """
    B = get_backend()
    if seed_or_key is None:
        return B.key(secrets.randbits(63))
    if isinstance(seed_or_key, (bool, np.bool_)):
        raise TypeError("a seed must be an int or a key array, got a bool")
    if isinstance(seed_or_key, (int, np.integer)):
        return B.key(int(seed_or_key))
    shape = tuple(getattr(seed_or_key, "shape", ()))
    if shape != (2,):
        if hasattr(seed_or_key, "shape"):
            raise ValueError(f"a key must have shape (2,), got {shape}")
        raise TypeError(f"expected an int seed or a key array, got {type(seed_or_key).__name__}")
    return seed_or_key
