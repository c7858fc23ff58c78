"""Plates: broadcasting, automatic and explicit dims, nesting, subsampling and its scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import agvi.distributions as dist
from agvi import handlers
from agvi.handlers import param, plate, sample, subsample


def _rtol(B):
    return 1e-12 if B.precision == "float64" else 1e-5


def _trace(fn, *args, seed=0):
    return handlers.trace(handlers.seed(fn, rng_seed=seed)).get_trace(*args)


def test_broadcast_and_auto_dims(B64):
    B = B64
    def m():
        with plate("outer", 3):
            a = sample("a", dist.Normal(0.0, 1.0))
            with plate("inner", 5):
                b = sample("b", dist.Normal(0.0, 1.0))
                d = sample("d", dist.Normal(0.0, 1.0).expand((2,)).to_event(1))
        return a, b, d
    tr = _trace(m)
    frames = [(f.name, f.dim) for f in tr["b"]["cond_indep_stack"]]
    assert frames == [("outer", -1), ("inner", -2)]          # outermost first
    assert B.shape(tr["a"]["value"]) == (3,)
    assert B.shape(tr["b"]["value"]) == (5, 3)
    assert B.shape(tr["d"]["value"]) == (5, 3, 2)
    assert tr["d"]["fn"].batch_shape == (5, 3) and tr["d"]["fn"].event_shape == (2,)
    # values in the plate are independent draws
    b = B.to_numpy(tr["b"]["value"])
    assert len(np.unique(np.round(b, 10))) == 15


def test_explicit_dims(B64):
    B = B64
    def m():
        with plate("x", 4, dim=-2):
            with plate("y", 3):                 # -1 is free, so "y" takes it
                a = sample("a", dist.Normal(0.0, 1.0))
            b = sample("b", dist.Normal(B.zeros((2,)), 1.0))
        return a, b
    tr = _trace(m)
    assert B.shape(tr["a"]["value"]) == (4, 3)
    assert B.shape(tr["b"]["value"]) == (4, 2)     # the distribution's own batch axis stays
    with pytest.raises(ValueError, match="already used"):
        with plate("x", 4, dim=-1):
            plate("y", 3, dim=-1)
    with pytest.raises(ValueError, match="negative"):
        plate("x", 4, dim=0)
    with pytest.raises(ValueError, match="already active"):
        with plate("x", 4):
            plate("x", 4)
    with pytest.raises(ValueError, match="size"):
        plate("x", 0)
    with pytest.raises(ValueError, match="subsample_size"):
        plate("x", 4, subsample_size=5)


def test_batch_mismatch_raises(np_B):
    def m():
        with plate("data", 4):
            sample("a", dist.Normal(np.zeros(3), 1.0))
    with pytest.raises(ValueError, match="does not broadcast with the enclosing plates"):
        _trace(m)


def test_sample_shape_inside_plate(np_B):
    def m():
        with plate("data", 4):
            return sample("a", dist.Normal(0.0, 1.0), sample_shape=(2, 1))
    tr = _trace(m)
    assert tr["a"]["value"].shape == (2, 4)
    assert tr["a"]["fn"].batch_shape == (2, 4) and tr["a"]["kwargs"]["sample_shape"] == ()


def test_observed_in_plate_log_density(B):
    yv = np.array([0.5, -1.0, 2.0])

    def m(y):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        with plate("data", 3):
            sample("y", dist.Normal(mu, 2.0), obs=y)
    lp, tr = handlers.log_density(m, (B.asarray(yv),), {}, {"mu": B.asarray(0.3)})
    expect = stats.norm.logpdf(0.3) + stats.norm.logpdf(yv, 0.3, 2.0).sum()
    np.testing.assert_allclose(float(lp), expect, rtol=_rtol(B))
    assert tr["y"]["fn"].batch_shape == (3,)


def test_subsample_scaling(B):
    N, n = 20, 6
    yv = np.linspace(-2.0, 3.0, N)
    y = B.asarray(yv)

    def m(y):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        with plate("data", N, subsample_size=n) as idx:
            sample("y", dist.Normal(mu, 1.5), obs=y[idx])
        return idx

    seeded = handlers.seed(m, rng_seed=4)
    lp, tr = handlers.log_density(seeded, (y,), {}, {"mu": B.asarray(0.2)})
    idx = B.to_numpy(tr["data"]["value"])
    assert idx.shape == (n,) and len(set(idx.tolist())) == n
    assert idx.min() >= 0 and idx.max() < N
    assert tr["y"]["scale"] == N / n and tr["mu"]["scale"] is None
    expect = stats.norm.logpdf(0.2) + N / n * stats.norm.logpdf(yv[idx], 0.2, 1.5).sum()
    np.testing.assert_allclose(float(lp), expect, rtol=_rtol(B))
    # same seed, same subsample; another seed, another
    np.testing.assert_array_equal(B.to_numpy(seeded(y)), idx)
    assert not np.array_equal(B.to_numpy(handlers.seed(m, rng_seed=5)(y)), idx)
    f = tr["y"]["cond_indep_stack"][0]
    assert (f.size, f.subsample_size) == (N, n)


def test_nested_subsampling_scales_multiply(np_B):
    def m():
        with plate("a", 10, subsample_size=5), plate("b", 6, subsample_size=2):
            sample("z", dist.Normal(0.0, 1.0), obs=np.zeros((2, 5)))
    lp, tr = handlers.log_density(handlers.seed(m, rng_seed=0))
    assert tr["z"]["scale"] == pytest.approx(2.0 * 3.0)
    np.testing.assert_allclose(lp, 6.0 * 10 * stats.norm.logpdf(0.0), rtol=1e-12)


def test_subsample_needs_a_key(np_B):
    with pytest.raises(RuntimeError, match="seed"):
        plate("data", 10, subsample_size=3)
    with plate("data", 10) as idx:            # no subsampling: no key needed
        np.testing.assert_array_equal(idx, np.arange(10))


def test_plate_object_reused_keeps_its_subsample(np_B):
    def m():
        p = plate("data", 50, subsample_size=4)
        with p as i1:
            sample("a", dist.Normal(0.0, 1.0))
        with p as i2:
            sample("b", dist.Normal(0.0, 1.0))
        return i1, i2
    i1, i2 = handlers.seed(m, rng_seed=0)()
    np.testing.assert_array_equal(i1, i2)


def test_subsample_primitive_and_local_params(B64):
    B = B64
    data = B.asarray(np.arange(20.0).reshape(10, 2))

    def m():
        with plate("data", 10, subsample_size=3) as idx:
            batch = subsample(data, event_dim=1)
            local = param("local", B.asarray(np.arange(10.0)), event_dim=0)
            return idx, batch, local
    idx, batch, local = handlers.seed(m, rng_seed=0)()
    i = B.to_numpy(idx)
    np.testing.assert_array_equal(B.to_numpy(batch), np.arange(20.0).reshape(10, 2)[i])
    np.testing.assert_array_equal(B.to_numpy(local), np.arange(10.0)[i])
    assert subsample(data, event_dim=1) is data         # outside plates: unchanged

    def wrong():
        with plate("data", 10, subsample_size=3):
            param("local", B.zeros((7,)), event_dim=0)
    with pytest.raises(ValueError, match="full size"):
        handlers.seed(wrong, rng_seed=0)()
