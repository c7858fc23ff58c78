"""The threefry2x32 key implementation of the JAX backend, with the hash written out unrolled.

JAX lowers its threefry hash on CPU as a rolled ``while`` loop of five iterations (to keep the
compile time of programs with thousands of draws down). Inside a compiled sampler every draw then
pays five loop iterations of XLA dispatch: a NUTS transition's momentum and uniforms cost about
3 us of a 25-35 us transition on a CPU, nearly all of it loop overhead. Written as straight-line
``uint32`` arithmetic, the hash fuses into one elementwise kernel (0.3 us).

:data:`THREEFRY_UNROLLED` is a JAX PRNG implementation (``jax.extend.random.define_prng_impl``)
that computes exactly what ``jax.random``'s ``"threefry2x32"`` computes with
``jax_threefry_partitionable`` on (JAX's default): the same ``split``, ``fold_in`` and random
bits for the same raw key, so every ``jax.random`` sampler gives the same numbers with either.
It does not read that flag: agvi's numbers do not depend on a global JAX setting. On GPUs it is
the lowering JAX itself uses by default there. It is not registered with JAX: defining it
changes no JAX setting or default.

References
----------
Salmon, Moraes, Dror and Shaw (2011), "Parallel random numbers: as easy as 1, 2, 3", SC'11
(Threefry-2x32, 20 rounds, rotation constants of table 4).
JAX, ``jax/_src/random/threefry2x32.py`` (key layout, counters, fold-in and split schemes).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl, threefry_prng_impl

__all__ = ["THREEFRY_UNROLLED", "threefry_fold_in", "threefry_hash", "threefry_split"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry_hash(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) of the counter pairs ``(x1, x2)`` under the key ``(k1, k2)``.

    Parameters
    ----------
    k1, k2 : uint32 Array, shape ()
        The key's two words.
    x1, x2 : uint32 Array, any shape (the same)
        The counters' two words.

    Returns
    -------
    (uint32 Array, uint32 Array)
        The two words of the hash, each of ``x1``'s shape.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):          # 5 x 4 rounds, key injection after each group of 4
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _counters(shape):
    """The high and low words of ``arange(prod(shape)).reshape(shape)`` as uint64."""
    size = math.prod(shape)
    if size >= 2**32:
        raise NotImplementedError(f"at most 2**32 - 1 random words per key, asked for {shape}")
    low = lax.iota(np.uint32, size).reshape(shape)
    return jnp.zeros(shape, np.uint32), low


# jitted so that eager calls (outside any trace) run one cached program instead of dozens of
# dispatched uint32 operations; inline: under an outer jit they are part of its program
@partial(jax.jit, static_argnums=1, inline=True)
def threefry_split(key, shape):
    """Keys derived from the raw key ``key`` (uint32 (2,)): uint32 Array of shape
    ``(*shape, 2)``, equal to ``jax.random.split`` with a partitionable threefry key."""
    return jnp.stack(threefry_hash(key[0], key[1], *_counters(shape)), axis=len(shape))


@partial(jax.jit, inline=True)
def threefry_fold_in(key, data):
    """The raw key ``key`` (uint32 (2,)) folded with the uint32 scalar ``data``: uint32 Array
    of shape (2,), equal to ``jax.random.fold_in``."""
    data = jnp.asarray(data, dtype=np.uint32)
    bits = threefry_hash(key[0], key[1], jnp.zeros((1,), np.uint32), data[None])
    return jnp.concatenate(bits)


def _random_bits(key, bit_width, shape):
    if bit_width not in (8, 16, 32, 64):
        raise TypeError(f"bit_width must be 8, 16, 32 or 64, got {bit_width}")
    return _bits(key, bit_width, tuple(shape))


@partial(jax.jit, static_argnums=(1, 2), inline=True)
def _bits(key, bit_width, shape):
    high, low = threefry_hash(key[0], key[1], *_counters(shape))
    if bit_width == 64:
        return (high.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)
    bits = high ^ low
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


THREEFRY_UNROLLED = define_prng_impl(
    key_shape=(2,), seed=threefry_prng_impl.seed, split=threefry_split, random_bits=_random_bits,
    fold_in=threefry_fold_in, name="agvi_threefry2x32", tag="afry")
