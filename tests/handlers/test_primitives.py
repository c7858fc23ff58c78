"""The primitives (sample, param, deterministic, factor), trace contents and seed."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import stats

import agvi
import agvi.distributions as dist
from agvi import handlers
from agvi.distributions import constraints
from agvi.handlers import deterministic, factor, param, plate, sample


def _model(B):
    def model(y):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        sigma = param("sigma", 1.5, constraint=constraints.positive)
        with plate("data", 4):
            z = sample("z", dist.Normal(mu, 1.0), infer={"note": 1})
            deterministic("shifted", z + 1.0)
            sample("y", dist.Normal(z, sigma), obs=y)
        return mu
    return model


def test_trace_contents_and_shapes(B):
    y = B.asarray(np.arange(4.0))
    tr = handlers.trace(handlers.seed(_model(B), rng_seed=0)).get_trace(y)
    assert isinstance(tr, handlers.Trace)
    assert list(tr) == ["mu", "sigma", "data", "z", "shifted", "y"]
    keys = {"name", "type", "fn", "args", "kwargs", "value", "is_observed", "scale", "mask",
            "cond_indep_stack", "infer", "intermediates"}
    for name, site in tr.items():
        assert keys <= set(site), name
        assert site["name"] == name
    assert [tr[n]["type"] for n in tr] == ["sample", "param", "plate", "sample",
                                           "deterministic", "sample"]
    assert B.shape(tr["mu"]["value"]) == ()
    assert B.shape(tr["z"]["value"]) == (4,)
    assert tr["z"]["fn"].batch_shape == (4,)
    assert tr["y"]["value"] is y and tr["y"]["is_observed"]
    assert not tr["z"]["is_observed"]
    assert tr["z"]["infer"] == {"note": 1}
    assert tr["z"]["intermediates"] == []
    assert tr["z"]["scale"] is None and tr["z"]["mask"] is None
    assert tr["mu"]["cond_indep_stack"] == []
    (frame,) = tr["z"]["cond_indep_stack"]
    assert (frame.name, frame.dim, frame.size, frame.subsample_size) == ("data", -1, 4, 4)
    assert tr["shifted"]["cond_indep_stack"] == [frame]
    assert tr["sigma"]["kwargs"]["constraint"] is constraints.positive
    assert float(tr["sigma"]["value"]) == 1.5
    np.testing.assert_allclose(B.to_numpy(tr["shifted"]["value"]),
                               B.to_numpy(tr["z"]["value"]) + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(B.to_numpy(tr["data"]["value"]), np.arange(4))
    assert tr.stochastic_nodes == ["mu", "z"]
    assert tr.observation_nodes == ["y"]
    assert tr.param_nodes == ["sigma"]
    assert tr.nodes is tr
    assert "z" in tr.format_shapes()


def test_trace_as_context_manager_and_attribute(np_B):
    model = _model(np_B)
    y = np.zeros(4)
    with handlers.seed(rng_seed=1), handlers.trace() as tr:
        model(y)
    assert list(tr) == ["mu", "sigma", "data", "z", "shifted", "y"]
    traced = handlers.trace(handlers.seed(model, rng_seed=1))
    traced(y)
    np.testing.assert_array_equal(traced.trace["z"]["value"], tr["z"]["value"])


def test_duplicate_site_names_raise(np_B):
    def model():
        sample("x", dist.Normal(0.0, 1.0))
        sample("x", dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="unique"):
        handlers.trace(handlers.seed(model, rng_seed=0)).get_trace()


def test_sample_needs_a_key(B64):
    B = B64
    def model():
        return sample("x", dist.Normal(0.0, 1.0))
    with pytest.raises(RuntimeError, match=r"handlers\.seed\(model, rng_seed=0\)"):
        model()
    with pytest.raises(RuntimeError, match="'x'"):
        handlers.trace(model).get_trace()
    x = sample("x", dist.Normal(0.0, 1.0), rng_key=B.key(3))
    assert B.shape(x) == ()
    obs = B.asarray(2.0)
    assert sample("x", dist.Normal(0.0, 1.0), obs=obs) is obs


def test_sample_rejects_non_distribution(np_B):
    with pytest.raises(TypeError, match="must be a distribution"):
        sample("x", 3.0)
    with pytest.raises(TypeError, match="name"):
        sample(1, dist.Normal(0.0, 1.0))


def test_seed_determinism(B):
    def model():
        a = sample("a", dist.Normal(0.0, 1.0))
        b = sample("b", dist.Normal(0.0, 1.0), sample_shape=(3,))
        return a, b

    def run(s):
        a, b = handlers.seed(model, rng_seed=s)()
        return np.concatenate([np.atleast_1d(B.to_numpy(a)), B.to_numpy(b)])

    first = run(0)
    np.testing.assert_array_equal(first, run(0))          # same seed, same numbers
    assert not np.allclose(first, run(1))                 # another seed, other numbers
    assert len(set(np.round(first, 12))) == 4             # sites get different keys
    np.testing.assert_array_equal(first, run(B.key(0)))   # a key works as the seed
    seeded = handlers.seed(model, rng_seed=5)
    np.testing.assert_array_equal(B.to_numpy(seeded()[1]), B.to_numpy(seeded()[1]))
    with handlers.seed(rng_seed=0):                       # one block continues the stream
        a1, _ = model()
        a2, _ = model()
    assert float(a1) == first[0] and float(a2) != float(a1)


def test_seed_argument_errors(np_B):
    with pytest.raises(ValueError, match="rng_seed"):
        handlers.seed(lambda: None)
    with pytest.raises(TypeError, match="rng_seed"):
        handlers.seed(lambda: None, rng_seed="zero")


def test_seed_does_not_draw_for_given_values(np_B):
    def model():
        sample("a", dist.Normal(0.0, 1.0))
        return sample("b", dist.Normal(0.0, 1.0))
    b_free = handlers.seed(handlers.substitute(model, data={"a": 0.0}), rng_seed=0)()
    # `a` has a value, so it takes no key and `b` gets the first one
    with handlers.seed(rng_seed=0):
        first = sample("first", dist.Normal(0.0, 1.0))
    assert float(b_free) == float(first)


def test_rsample_gradient_flows_through_draws(B64):
    B = B64
    def f(loc):
        def model():
            return sample("x", dist.Normal(loc, 2.0))
        return B.sum(handlers.seed(model, rng_seed=0)() * 3.0)
    g = B.grad(f)(B.asarray(0.5))
    np.testing.assert_allclose(float(g), 3.0, rtol=1e-6)


def test_param(B64):
    B = B64
    def model():
        return param("w", B.ones((2,)) * 0.5, constraint=constraints.positive, event_dim=1)
    assert float(B.sum(model())) == 1.0                   # no handler: the init value
    tr = handlers.trace(model).get_trace()
    site = tr["w"]
    assert site["type"] == "param" and site["kwargs"]["event_dim"] == 1
    assert site["kwargs"]["constraint"] is constraints.positive
    tr = handlers.trace(handlers.substitute(model, data={"w": B.asarray([2.0, 3.0])})).get_trace()
    np.testing.assert_allclose(B.to_numpy(tr["w"]["value"]), [2.0, 3.0])


def test_param_callable_init_needs_seed(B64):
    B = B64
    def model():
        return param("w", lambda key: B.normal(key, (3,)))
    with pytest.raises(RuntimeError, match="seed"):
        model()
    with pytest.raises(RuntimeError, match="seed"):
        handlers.trace(model).get_trace()
    w1 = handlers.seed(model, rng_seed=0)()
    w2 = handlers.seed(model, rng_seed=0)()
    assert B.shape(w1) == (3,)
    np.testing.assert_array_equal(B.to_numpy(w1), B.to_numpy(w2))


def test_deterministic(np_B):
    assert deterministic("d", 3.0) == 3.0
    tr = handlers.trace(lambda: deterministic("d", np.ones(2))).get_trace()
    assert tr["d"]["type"] == "deterministic"
    np.testing.assert_array_equal(tr["d"]["value"], np.ones(2))
    tr = handlers.trace(handlers.substitute(lambda: deterministic("d", 1.0),
                                            data={"d": 7.0})).get_trace()
    assert tr["d"]["value"] == 7.0


def test_factor_adds_to_log_density(B):
    def model():
        x = sample("x", dist.Normal(0.0, 1.0))
        factor("penalty", -2.0 * x * x)
        with plate("rows", 3):
            factor("per_row", B.asarray([0.5, 1.0, 1.5]))
            factor("broadcast", B.asarray(0.25))
    lp, tr = handlers.log_density(model, (), {}, {"x": B.asarray(0.7)})
    expect = stats.norm.logpdf(0.7) - 2.0 * 0.49 + 3.0 + 3 * 0.25
    rtol = 1e-12 if B.precision == "float64" else 1e-5
    np.testing.assert_allclose(float(lp), expect, rtol=rtol)
    site = tr["penalty"]
    assert site["is_observed"] and site["infer"] == {"is_auxiliary": True}
    assert isinstance(site["fn"], handlers.Unit)
    assert tr["broadcast"]["fn"].batch_shape == (3,)


def test_prng_key(B64):
    B = B64
    assert handlers.prng_key() is None
    with handlers.seed(rng_seed=0):
        k1 = handlers.prng_key()
        k2 = handlers.prng_key()
    assert B.shape(k1) == (2,)
    assert not np.array_equal(B.key_data(k1), B.key_data(k2))


def test_decorator_form(np_B):
    @handlers.scale(scale=0.5)
    def model():
        sample("x", dist.Normal(0.0, 1.0), obs=1.0)
    lp, _ = handlers.log_density(model)
    np.testing.assert_allclose(float(lp), 0.5 * stats.norm.logpdf(1.0), rtol=1e-12)
    with pytest.raises(TypeError, match="callable"):
        handlers.trace(3)
    with pytest.raises(TypeError, match="wraps no function"):
        handlers.trace()(1, 2)


def test_doctests(np_B, monkeypatch):
    # the top-level re-exports are added by agvi/__init__.py; make the doctests independent of it
    for name in ("sample", "param", "plate", "deterministic", "factor"):
        if not hasattr(agvi, name):
            monkeypatch.setattr(agvi, name, getattr(handlers, name), raising=False)
    if not hasattr(agvi, "handlers"):
        monkeypatch.setattr(agvi, "handlers", handlers, raising=False)
    from agvi.handlers import handlers as handlers_mod
    from agvi.handlers import primitives, util
    for module in (primitives, handlers_mod, util):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
