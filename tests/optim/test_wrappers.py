"""Clipping, chaining, multi_transform routing, EMA and skip_nonfinite."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optim_helpers import b_params, tol

from agvi.optim import (
    EMA,
    SGD,
    Adam,
    Optimizer,
    chain,
    clip_by_global_norm,
    clip_by_value,
    ema_params,
    global_norm,
    leaf_names,
    multi_transform,
    partition,
    skip_nonfinite,
)


def _np(B, tree):
    return {k: B.to_numpy(v) for k, v in tree.items()}


def test_clip_by_global_norm_numbers(backend):
    B = backend
    grads = {"a": B.asarray([3.0, 0.0]), "b": B.asarray([[0.0, 4.0]])}  # global norm 5
    assert float(B.to_numpy(global_norm(grads, B))) == pytest.approx(5.0)
    tx = clip_by_global_norm(2.0, backend=B)
    out, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(B.to_numpy(out["a"]), [1.2, 0.0], **tol(B))
    np.testing.assert_allclose(B.to_numpy(out["b"]), [[0.0, 1.6]], **tol(B))
    out, _ = clip_by_global_norm(10.0, backend=B).update(grads, ())
    np.testing.assert_allclose(B.to_numpy(out["a"]), [3.0, 0.0], **tol(B))
    zero = {"a": B.zeros((2,))}
    out, _ = tx.update(zero, ())
    assert np.all(B.to_numpy(out["a"]) == 0.0)


def test_clip_by_value_numbers_and_chain(backend):
    B = backend
    grads = {"a": B.asarray([-3.0, 0.5, 2.0])}
    tx = clip_by_value(1.0, backend=B)
    out, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(B.to_numpy(out["a"]), [-1.0, 0.5, 1.0], **tol(B))
    opt = Optimizer(chain(clip_by_value(1.0, backend=B), SGD(0.1, backend=B)))
    params = {"a": B.zeros((3,))}
    params, _ = opt.update(grads, opt.init(params))
    np.testing.assert_allclose(B.to_numpy(params["a"]), [0.1, -0.05, -0.1], **tol(B))
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(-1.0, backend=B)


def test_multi_transform_routing(backend):
    B = backend
    params = {"enc_w": B.ones((2,)), "enc_b": B.ones(()), "dec_w": B.ones((3,))}
    grads = B.tree_map(B.ones_like, params)
    opt = multi_transform({"enc*": SGD(0.1, backend=B),
                           (lambda name: name.startswith("dec")): SGD(1.0, backend=B)},
                          backend=B)
    state = opt.init(params)
    new, state = B.jit(opt.update)(grads, state)
    got = _np(B, new)
    np.testing.assert_allclose(got["enc_w"], [0.9, 0.9], **tol(B))
    np.testing.assert_allclose(got["enc_b"], 0.9, **tol(B))
    np.testing.assert_allclose(got["dec_w"], [0.0, 0.0, 0.0], **tol(B))
    # Labels as a function of the params; each group keeps its own optimiser state.
    opt2 = partition(lambda p: {k: ("adam" if k.startswith("enc") else "sgd") for k in p},
                     {"adam": Adam(0.1, backend=B), "sgd": SGD(0.5, backend=B)}, backend=B)
    state = opt2.init(params)
    assert set(state.inner) == {"adam", "sgd"}
    assert len(state.inner["adam"][0].mu) == 2
    new, state = opt2.update(grads, state)
    np.testing.assert_allclose(_np(B, new)["dec_w"], [0.5] * 3, **tol(B))
    np.testing.assert_allclose(_np(B, new)["enc_w"], [1 - 0.1 / (1 + 1e-8)] * 2, **tol(B))
    with pytest.raises(ValueError, match="matches no key"):
        multi_transform({"enc*": SGD(0.1, backend=B)}, backend=B).init(params)


def test_leaf_names():
    assert leaf_names({"a": 1, "b": {"c": 2, "d": (3, 4)}}) == ["a", "b/c", "b/d/0", "b/d/1"]


def test_ema_numbers(backend):
    B = backend
    decay, lr = 0.5, 0.1
    opt = EMA(SGD(lr, backend=B), decay)
    params = {"w": B.asarray([1.0, 2.0])}
    state = opt.init(params)
    np.testing.assert_allclose(B.to_numpy(ema_params(state, B)["w"]), [1.0, 2.0])
    w, ema, history = np.array([1.0, 2.0]), np.zeros(2), []
    g = np.array([1.0, -1.0])
    for t in range(1, 5):
        params, state = opt.update({"w": B.asarray(g)}, state)
        w = w - lr * g
        ema = decay * ema + (1 - decay) * w
        history.append(ema / (1 - decay ** t))
        np.testing.assert_allclose(B.to_numpy(params["w"]), w, **tol(B))
        np.testing.assert_allclose(B.to_numpy(opt.ema_params(state)["w"]), history[-1],
                                   **tol(B))
    # Bias-corrected average of a linear path w_t = w_0 - t lr g at decay 0.5, t = 4.
    weights = np.array([(1 - decay) * decay ** (4 - s) for s in range(1, 5)]) / (1 - decay ** 4)
    path = np.array([[1.0, 2.0] - s * lr * g for s in range(1, 5)])
    np.testing.assert_allclose(history[-1], weights @ path, rtol=1e-12)
    with pytest.raises(ValueError, match="no EMA"):
        ema_params(SGD(0.1, backend=B).init(params), B)


def test_skip_nonfinite_counts(backend):
    B = backend
    opt = skip_nonfinite(Adam(0.1, backend=B))
    params = {"a": B.asarray([1.0, 2.0]), "b": B.asarray(3.0)}
    state = opt.init(params)
    good = {"a": B.asarray([1.0, 1.0]), "b": B.asarray(1.0)}
    bad = {"a": B.asarray([math.nan, 1.0]), "b": B.asarray(1.0)}
    inf = {"a": B.asarray([1.0, 1.0]), "b": B.asarray(math.inf)}
    step = B.jit(lambda g, s, v: opt.update(g, s, value=v))
    p1, s1 = step(good, state, B.asarray(1.0))
    p2, s2 = step(bad, s1, B.asarray(1.0))
    p3, s3 = step(inf, s2, B.asarray(1.0))
    p4, s4 = step(good, s3, B.asarray(math.nan))
    for p in (p2, p3, p4):
        for k in p:
            np.testing.assert_array_equal(B.to_numpy(p[k]), B.to_numpy(p1[k]))
    for a, b in zip(B.tree_leaves(s4.inner.inner), B.tree_leaves(s1.inner.inner)):
        np.testing.assert_array_equal(B.to_numpy(a), B.to_numpy(b))
    assert int(B.to_numpy(s4.inner.num_skipped)) == 3
    p5, s5 = step(good, s4, B.asarray(0.5))
    assert int(B.to_numpy(s5.inner.num_skipped)) == 3
    assert int(B.to_numpy(s5.inner.inner[0].count)) == 2
    assert not np.allclose(B.to_numpy(p5["a"]), B.to_numpy(p1["a"]))


def test_wrappers_compose(backend):
    B = backend
    opt = skip_nonfinite(EMA(chain(clip_by_global_norm(1.0, backend=B), Adam(0.1, backend=B)),
                             0.9))
    params = b_params(B)
    state = opt.init(params)
    grads = B.tree_map(B.ones_like, params)
    new, state = opt.update(grads, state)
    ema = ema_params(state, B)
    for k in params:  # after one step the debiased average is the new params
        np.testing.assert_allclose(B.to_numpy(ema[k]), B.to_numpy(new[k]), **tol(B))


def test_stable_update_keeps_structure(backend):
    B = backend
    opt = Adam(0.1, backend=B)
    params = {"a": B.asarray([1.0, 2.0])}
    state = opt.init(params)
    p1, s1, ok1 = opt.stable_update({"a": B.asarray([1.0, 1.0])}, state, value=B.asarray(2.0))
    p2, s2, ok2 = opt.stable_update({"a": B.asarray([math.inf, 1.0])}, s1)
    p3, s3, ok3 = opt.stable_update({"a": B.asarray([1.0, 1.0])}, s2, value=B.asarray(math.nan))
    assert bool(B.to_numpy(ok1)) and not bool(B.to_numpy(ok2)) and not bool(B.to_numpy(ok3))
    assert B.tree_structure(s3) == B.tree_structure(state)
    for a, b in zip(B.tree_leaves(s3), B.tree_leaves(s1)):
        np.testing.assert_array_equal(B.to_numpy(a), B.to_numpy(b))
    np.testing.assert_array_equal(B.to_numpy(p3["a"]), B.to_numpy(p1["a"]))
    p4, s4 = opt.update({"a": B.asarray([1.0, 1.0])}, s3)
    assert int(B.to_numpy(s4.inner[0].count)) == 2
