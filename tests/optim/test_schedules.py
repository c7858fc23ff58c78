"""Learning-rate schedules' values and the plateau rule on a scripted loss sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optim_helpers import b_grad, b_params

from agvi.optim import (
    SGD,
    ReduceLROnPlateau,
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    linear_warmup,
    piecewise_constant,
    warmup_cosine_decay_schedule,
)

COUNTS = [0, 1, 2, 5, 10, 11, 25, 100]


def values(B, schedule):
    schedule = B.jit(schedule)  # compiles on JAX; the identity elsewhere
    return np.array([float(B.to_numpy(schedule(B.asarray(c, dtype=B.dtype("int32")))))
                     for c in COUNTS])


def _tol(B):
    return dict(rtol=1e-12) if B.precision == "float64" else dict(rtol=1e-5)


def test_schedule_values(backend):
    B = backend
    c = np.array(COUNTS, dtype=float)
    np.testing.assert_allclose(values(B, constant_schedule(0.3, backend=B)), 0.3, **_tol(B))
    np.testing.assert_allclose(values(B, exponential_decay(0.5, 10, 0.1, backend=B)),
                               0.5 * 0.1 ** (c / 10), **_tol(B))
    np.testing.assert_allclose(values(B, exponential_decay(0.5, 10, 0.1, staircase=True,
                                                           backend=B)),
                               0.5 * 0.1 ** np.floor(c / 10), **_tol(B))
    np.testing.assert_allclose(values(B, exponential_decay(0.5, 10, 0.1, end_value=0.01,
                                                           backend=B)),
                               np.maximum(0.5 * 0.1 ** (c / 10), 0.01), **_tol(B))
    np.testing.assert_allclose(values(B, cosine_decay_schedule(2.0, 20, alpha=0.1, backend=B)),
                               2.0 * (0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(c, 20) / 20))
                                      + 0.1), **_tol(B))
    np.testing.assert_allclose(values(B, piecewise_constant(1.0, {10: 0.5, 25: 0.1},
                                                            backend=B)),
                               np.where(c >= 25, 0.05, np.where(c >= 10, 0.5, 1.0)), **_tol(B))
    np.testing.assert_allclose(values(B, linear_warmup(0.0, 1.0, 10, backend=B)),
                               np.minimum(c / 10, 1.0), **_tol(B))
    want = np.where(c < 10, c / 10, 0.5 * (1 + np.cos(np.pi * np.minimum(c - 10, 50) / 50)))
    np.testing.assert_allclose(values(B, warmup_cosine_decay_schedule(0.0, 1.0, 10, 50,
                                                                      backend=B)),
                               want, **_tol(B), atol=1e-15)


def test_schedule_drives_sgd(backend):
    B = backend
    opt = SGD(exponential_decay(0.1, 1, 0.5, backend=B), backend=B)
    params = b_params(B)
    state = opt.init(params)
    x = {k: B.to_numpy(v) for k, v in params.items()}
    from optim_helpers import np_grad
    for t in range(4):
        g = np_grad(x)
        x = {k: x[k] - 0.1 * 0.5 ** t * g[k] for k in x}
        params, state = opt.update(b_grad(B, params), state)
    for k in x:
        np.testing.assert_allclose(B.to_numpy(params[k]), x[k], **_tol(B))


def plateau_reference(losses, lr, factor, patience, threshold, threshold_mode, cooldown, min_lr,
                      eps=1e-8):
    """torch.optim.lr_scheduler.ReduceLROnPlateau (mode "min") in plain Python: the learning
    rate used at each step (the loss of step t acts from step t + 1)."""
    best, bad, cool, used = math.inf, 0, 0, []
    for loss in losses:
        used.append(lr)
        if threshold_mode == "rel":
            better = loss < best * (1 - threshold)
        else:
            better = loss < best - threshold
        if better:
            best, bad = loss, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
    return used


SCRIPT = [5.0, 4.0, 4.0, 3.9999, 4.1, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5,
          2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]


@pytest.mark.parametrize("kw", [
    dict(factor=0.5, patience=2, threshold=1e-3, threshold_mode="rel", cooldown=0, min_lr=0.0),
    dict(factor=0.1, patience=1, threshold=0.5, threshold_mode="abs", cooldown=2, min_lr=2e-3),
], ids=["rel", "abs-cooldown-minlr"])
def test_plateau_scripted(backend, kw):
    B = backend
    lr0 = 0.1
    want = plateau_reference(SCRIPT, lr0, **kw)
    assert len(set(want)) > 2  # the script exercises several reductions
    opt = SGD(ReduceLROnPlateau(lr0, backend=B, **kw), backend=B)
    # With grads of ones each step moves every parameter by -lr: the used rate is visible.
    params = {"w": B.zeros((2,))}
    state = opt.init(params)
    step = B.jit(lambda p, s, v: opt.update({"w": B.ones((2,))}, s, p, value=v))
    used = []
    for loss in SCRIPT:
        before = B.to_numpy(params["w"])
        params, state = step(params, state, B.asarray(loss))
        used.append(float(before[0] - B.to_numpy(params["w"])[0]))
    np.testing.assert_allclose(used, want, rtol=1e-10 if B.precision == "float64" else 1e-5)


def test_plateau_matches_torch_scheduler():
    torch = pytest.importorskip("torch")
    kw = dict(factor=0.5, patience=2, threshold=1e-3, threshold_mode="rel", cooldown=1,
              min_lr=0.01)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kw)
    used = []
    for loss in SCRIPT:
        used.append(opt.param_groups[0]["lr"])
        sched.step(loss)
    assert used == pytest.approx(plateau_reference(SCRIPT, 0.1, **kw), rel=1e-15)


def test_plateau_needs_value(backend):
    opt = SGD(ReduceLROnPlateau(0.1, backend=backend), backend=backend)
    state = opt.init({"w": backend.zeros((2,))})
    with pytest.raises(ValueError, match="value=loss"):
        opt.update({"w": backend.ones((2,))}, state)
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(0.1, factor=2.0, backend=backend)
