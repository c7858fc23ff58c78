"""Each optimiser's first steps against a NumPy transcription of its published update rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optim_helpers import X0, assert_trajectories, b_params, np_grad, run

from agvi.optim import SGD, Adagrad, Adam, AdamW, ClippedAdam, RMSprop

STEPS = 6


def reference(step_fn, init_state, steps=STEPS):
    """Iterate ``x, s = step_fn(x, g, s, t)`` (t from 1) leaf by leaf on the quadratic."""
    x = {k: v.copy() for k, v in X0.items()}
    s = {k: init_state(v) for k, v in x.items()}
    out = []
    for t in range(1, steps + 1):
        g = np_grad(x)
        for k in x:
            x[k], s[k] = step_fn(x[k], g[k], s[k], t)
        out.append({k: v.copy() for k, v in x.items()})
    return out


def test_sgd_plain(backend):
    got, _ = run(backend, SGD(0.1, backend=backend), STEPS)
    want = reference(lambda x, g, s, t: (x - 0.1 * g, s), lambda v: None)
    assert_trajectories(backend, got, want)


def test_sgd_momentum_sutskever(backend):
    # Sutskever et al. (2013) eq. (1)-(2): v = mu v - eps g(theta); theta = theta + v.
    mu, eps = 0.9, 0.05

    def step(x, g, v, t):
        v = mu * v - eps * g
        return x + v, v

    got, _ = run(backend, SGD(eps, momentum=mu, backend=backend), STEPS)
    assert_trajectories(backend, got, reference(step, np.zeros_like))


def test_sgd_nesterov_sutskever(backend):
    # Sutskever et al. (2013) eq. (3)-(4): v = mu v - eps g(theta + mu v); theta = theta + v.
    # agvi tracks the look-ahead point phi = theta + mu v, where the gradient is taken.
    mu, eps = 0.9, 0.05
    theta = {k: v.copy() for k, v in X0.items()}
    vel = {k: np.zeros_like(v) for k, v in X0.items()}
    want = []
    for _ in range(STEPS):
        g = np_grad({k: theta[k] + mu * vel[k] for k in theta})
        for k in theta:
            vel[k] = mu * vel[k] - eps * g[k]
            theta[k] = theta[k] + vel[k]
        want.append({k: theta[k] + mu * vel[k] for k in theta})
    got, _ = run(backend, SGD(eps, momentum=mu, nesterov=True, backend=backend), STEPS)
    assert_trajectories(backend, got, want)


def _adam_ref(alpha, b1, b2, eps, lam=0.0):
    # Kingma & Ba (2015) Algorithm 1; with lam, Loshchilov & Hutter (2019) Algorithm 2 (eta_t=1).
    def step(x, g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return x - (alpha * mhat / (np.sqrt(vhat) + eps) + lam * x), (m, v)
    return step


def test_adam_kingma_ba(backend):
    got, state = run(backend, Adam(0.05, b1=0.8, b2=0.95, eps=1e-3, backend=backend), STEPS)
    want = reference(_adam_ref(0.05, 0.8, 0.95, 1e-3),
                     lambda v: (np.zeros_like(v), np.zeros_like(v)))
    assert_trajectories(backend, got, want)
    assert int(backend.to_numpy(state.inner[0].count)) == STEPS


def test_adamw_loshchilov_hutter(backend):
    lr, wd = 0.05, 0.1
    got, _ = run(backend, AdamW(lr, eps=1e-3, weight_decay=wd, backend=backend), STEPS)
    want = reference(_adam_ref(lr, 0.9, 0.999, 1e-3, lam=lr * wd),
                     lambda v: (np.zeros_like(v), np.zeros_like(v)))
    assert_trajectories(backend, got, want)


def test_clipped_adam_pyro_rule(backend):
    lr, b1, b2, eps, clip, lrd, wd = 0.05, 0.9, 0.99, 1e-3, 0.7, 0.95, 0.01

    def step(x, g, s, t):
        m, v = s
        g = np.clip(g, -clip, clip) + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * lrd ** t
        return x - lr_t * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps), (m, v)

    opt = ClippedAdam(lr, b1, b2, eps, clip_norm=clip, lrd=lrd, weight_decay=wd, backend=backend)
    got, _ = run(backend, opt, STEPS)
    assert_trajectories(backend, got, reference(step, lambda v: (np.zeros_like(v),
                                                                 np.zeros_like(v))))


@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.5)])
def test_rmsprop(backend, centered, momentum):
    lr, alpha, eps = 0.01, 0.9, 1e-6

    def step(x, g, s, t):
        v, gm, buf = s
        v = alpha * v + (1 - alpha) * g * g
        gm = alpha * gm + (1 - alpha) * g
        denom = np.sqrt(v - gm * gm if centered else v) + eps
        buf = momentum * buf + g / denom
        return x - lr * (buf if momentum else g / denom), (v, gm, buf)

    opt = RMSprop(lr, alpha, eps, momentum=momentum, centered=centered, backend=backend)
    got, _ = run(backend, opt, STEPS)
    want = reference(step, lambda v: (np.zeros_like(v),) * 3)
    assert_trajectories(backend, got, want)


def test_adagrad_duchi(backend):
    lr, eps, acc0 = 0.3, 1e-10, 0.1

    def step(x, g, acc, t):
        acc = acc + g * g
        return x - lr * g / (np.sqrt(acc) + eps), acc

    got, _ = run(backend, Adagrad(lr, initial_accumulator_value=acc0, eps=eps, backend=backend),
                 STEPS)
    assert_trajectories(backend, got, reference(step, lambda v: np.full_like(v, acc0)))


@pytest.mark.parametrize("make", [
    lambda B: Adam(0.05, backend=B), lambda B: SGD(0.1, momentum=0.5, nesterov=True, backend=B),
    lambda B: RMSprop(0.01, backend=B), lambda B: Adagrad(0.5, backend=B),
    lambda B: AdamW(0.05, weight_decay=0.0, backend=B),
], ids=["adam", "nesterov", "rmsprop", "adagrad", "adamw"])
def test_converges_on_quadratic(backend, make):
    from optim_helpers import C, D
    out, _ = run(backend, make(backend), 600, jit=True)
    for k in C:
        np.testing.assert_allclose(out[-1][k], D[k] / C[k], atol=2e-2)


def test_dtype_and_structure_preserved(backend):
    opt = Adam(0.1, backend=backend)
    params = {"x": b_params(backend)["a"], "nested": (b_params(backend)["b"],)}
    state = opt.init(params)
    grads = backend.tree_map(backend.ones_like, params)
    new, state = opt.update(grads, state)
    assert backend.tree_structure(new) == backend.tree_structure(params)
    for p, q in zip(backend.tree_leaves(new), backend.tree_leaves(params)):
        assert backend.dtype_of(p) == backend.dtype_of(q) == backend.float_dtype
    assert opt.get_params(state) is new


def test_errors(backend):
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, nesterov=True, backend=backend)
    with pytest.raises(TypeError, match="step_size"):
        Adam("fast", backend=backend)
    with pytest.raises(ValueError, match="clip_norm"):
        ClippedAdam(clip_norm=0.0, backend=backend)
