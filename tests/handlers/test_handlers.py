"""The handlers' semantics, with numbers: condition, substitute, replay, block, scale, mask;
and the per-thread handler stack."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import stats

import agvi.distributions as dist
from agvi import handlers
from agvi.handlers import get_handler_stack, plate, sample


def _rtol(B):
    return 1e-12 if B.precision == "float64" else 1e-5


def model(y=None):
    a = sample("a", dist.Normal(0.0, 1.0))
    b = sample("b", dist.Normal(a, 2.0))
    sample("y", dist.Normal(b, 1.0), obs=y)
    return a, b


def test_condition(B64):
    B = B64
    cond = handlers.condition(model, data={"a": B.asarray(0.3)})
    tr = handlers.trace(handlers.seed(cond, rng_seed=0)).get_trace(B.asarray(1.0))
    assert tr["a"]["is_observed"] and float(tr["a"]["value"]) == pytest.approx(0.3)
    b = float(tr["b"]["value"])
    lp, _ = handlers.log_density(cond, (B.asarray(1.0),), {}, {"b": B.asarray(b)})
    expect = (stats.norm.logpdf(0.3) + stats.norm.logpdf(b, 0.3, 2.0)
              + stats.norm.logpdf(1.0, b, 1.0))
    np.testing.assert_allclose(float(lp), expect, rtol=_rtol(B))
    # condition_fn, and an observed site overridden
    cond = handlers.condition(model, condition_fn=lambda s: 5.0 if s["name"] == "y" else None)
    tr = handlers.trace(handlers.seed(cond, rng_seed=0)).get_trace()
    assert tr["y"]["is_observed"] and tr["y"]["value"] == 5.0
    with pytest.raises(ValueError, match="exactly one"):
        handlers.condition(model)


def test_substitute_keeps_sites_latent(B64):
    B = B64
    sub = handlers.substitute(model, data={"a": B.asarray(0.3), "b": B.asarray(-1.0)})
    tr = handlers.trace(sub).get_trace(B.asarray(1.0))   # no draws needed: no seed
    assert not tr["a"]["is_observed"] and not tr["b"]["is_observed"]
    assert float(tr["b"]["value"]) == -1.0
    tr = handlers.trace(handlers.seed(handlers.substitute(
        model, substitute_fn=lambda s: B.asarray(2.0) if s["name"] == "b" else None),
        rng_seed=0)).get_trace()
    assert float(tr["b"]["value"]) == 2.0 and float(tr["a"]["value"]) != 2.0
    with pytest.raises(ValueError, match="exactly one"):
        handlers.substitute(model, data={}, substitute_fn=lambda s: None)


def test_replay(B64):
    B = B64
    def guide(y=None):
        sample("a", dist.Normal(10.0, 0.1))
        sample("b", dist.Normal(-10.0, 0.1))
    guide_tr = handlers.trace(handlers.seed(guide, rng_seed=1)).get_trace()
    tr = handlers.trace(handlers.seed(handlers.replay(model, trace=guide_tr),
                                      rng_seed=0)).get_trace(B.asarray(0.5))
    for n in ("a", "b"):
        assert tr[n]["value"] is guide_tr[n]["value"]
        assert not tr[n]["is_observed"]
    assert float(tr["y"]["value"]) == 0.5       # observed sites keep their observation
    # the model's own densities are evaluated at the guide's values
    a, b = float(guide_tr["a"]["value"]), float(guide_tr["b"]["value"])
    expect = (stats.norm.logpdf(a) + stats.norm.logpdf(b, a, 2.0)
              + stats.norm.logpdf(0.5, b, 1.0))
    np.testing.assert_allclose(float(tr.log_prob_sum()), expect, rtol=_rtol(B))
    # a site observed in the replayed trace cannot stand in for a latent one
    bad = handlers.trace(handlers.condition(model, data={"a": 1.0, "b": 1.0})).get_trace(1.0)
    with pytest.raises(RuntimeError, match="latent sample site"):
        handlers.seed(handlers.replay(model, trace=bad), rng_seed=0)()
    with pytest.raises(ValueError, match="trace"):
        handlers.replay(model)


def test_replay_plate_shares_the_subsample(np_B):
    def m():
        with plate("data", 100, subsample_size=5) as idx:
            return idx
    tr = handlers.trace(handlers.seed(m, rng_seed=0)).get_trace()
    idx = handlers.seed(handlers.replay(m, trace=tr), rng_seed=7)()
    np.testing.assert_array_equal(idx, tr["data"]["value"])
    assert not np.array_equal(handlers.seed(m, rng_seed=7)(), idx)


def test_block(np_B):
    def run(**kw):
        with handlers.trace() as tr:
            handlers.block(handlers.seed(model, rng_seed=0), **kw)(1.0)
        return list(tr)
    assert run() == []
    assert run(hide=["a"]) == ["b", "y"]
    assert run(expose=["a"]) == ["a"]
    assert run(hide_fn=lambda s: s["is_observed"]) == ["a", "b"]
    assert run(expose_types=["param"]) == []
    # a seed outside the block does not reach hidden sites
    with pytest.raises(RuntimeError, match="block"):
        handlers.seed(handlers.block(model, hide=["a"]), rng_seed=0)(1.0)


def test_scale(B):
    y = B.asarray(1.0)
    params = {"a": B.asarray(0.2), "b": B.asarray(0.4)}
    base = float(handlers.log_density(model, (y,), {}, params)[0])
    lp = handlers.log_density(handlers.scale(model, scale=0.25), (y,), {}, params)[0]
    np.testing.assert_allclose(float(lp), 0.25 * base, rtol=_rtol(B))
    nested = handlers.scale(handlers.scale(model, scale=B.asarray(0.5)), scale=3.0)
    lp, tr = handlers.log_density(nested, (y,), {}, params)
    np.testing.assert_allclose(float(lp), 1.5 * base, rtol=_rtol(B))
    np.testing.assert_allclose(float(tr["a"]["scale"]), 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        handlers.scale(model, scale=-1.0)
    with pytest.raises(TypeError, match="scale"):
        handlers.scale(model, scale="big")


def test_scale_and_plate_subsampling_multiply(np_B):
    def m(y):
        with handlers.scale(scale=0.5), plate("data", 10, subsample_size=2) as idx:
            sample("y", dist.Normal(0.0, 1.0), obs=y[idx])
    y = np.linspace(-1, 1, 10)
    lp, tr = handlers.log_density(handlers.seed(m, rng_seed=0), (y,))
    idx = tr["data"]["value"]
    np.testing.assert_allclose(lp, 0.5 * 5.0 * stats.norm.logpdf(y[idx]).sum(), rtol=1e-12)


def test_mask(B):
    def m(y):
        with plate("data", 4):
            sample("y", dist.Normal(0.0, 1.0), obs=y)
    yv = np.array([0.1, -0.5, 2.0, 1.0])
    y = B.asarray(yv)
    keep = np.array([True, False, True, True])
    lp = handlers.log_density(handlers.mask(m, mask=B.asarray(keep)), (y,))[0]
    np.testing.assert_allclose(float(lp), stats.norm.logpdf(yv[keep]).sum(), rtol=_rtol(B))
    assert float(handlers.log_density(handlers.mask(m, mask=False), (y,))[0]) == 0.0
    np.testing.assert_allclose(float(handlers.log_density(handlers.mask(m, mask=True), (y,))[0]),
                               stats.norm.logpdf(yv).sum(), rtol=_rtol(B))
    # masks combine by logical and
    other = np.array([True, True, False, True])
    both = handlers.mask(handlers.mask(m, mask=B.asarray(keep)), mask=B.asarray(other))
    lp, tr = handlers.log_density(both, (y,))
    np.testing.assert_allclose(float(lp), stats.norm.logpdf(yv[keep & other]).sum(),
                               rtol=_rtol(B))
    with pytest.raises(TypeError, match="boolean"):
        handlers.mask(m, mask=B.asarray([1.0, 0.0, 1.0, 1.0]))


def test_infer_config(np_B):
    cfg = handlers.infer_config(model, config_fn=lambda s: {"seen": s["name"]})
    tr = handlers.trace(handlers.seed(cfg, rng_seed=0)).get_trace(1.0)
    assert tr["a"]["infer"] == {"seen": "a"}


def test_handler_stack_is_per_thread(np_B):
    started, release = threading.Event(), threading.Event()
    seen = {}

    def hold():
        with handlers.trace():
            started.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    started.wait(5)
    seen["main"] = len(get_handler_stack())
    release.set()
    t.join()
    assert seen["main"] == 0

    # several seeded models at once in an executor, each with its own stack and key stream
    seeded = handlers.trace(handlers.seed(model, rng_seed=3))
    expect = seeded.get_trace(1.0)["b"]["value"]

    def job(_):
        import agvi
        with agvi.use_backend(np_B):
            return [seeded.get_trace(1.0)["b"]["value"] for _ in range(20)]

    with ThreadPoolExecutor(4) as ex:
        results = [v for vs in ex.map(job, range(8)) for v in vs]
    assert all(v == expect for v in results)
    assert get_handler_stack() == ()


def test_exception_unwinds_the_stack(np_B):
    def bad():
        sample("a", dist.Normal(0.0, 1.0))
        raise KeyError("boom")
    with pytest.raises(KeyError):
        handlers.trace(handlers.seed(handlers.scale(bad, scale=2.0), rng_seed=0)).get_trace()
    assert get_handler_stack() == ()
