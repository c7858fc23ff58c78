"""Compiled training loops on JAX, and interop with optax and torch.optim."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from optim_helpers import X0, C, D, b_grad, b_params

from agvi.backends import available_backends, make_backend
from agvi.optim import (
    EMA,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    ReduceLROnPlateau,
    RMSprop,
    chain,
    clip_by_global_norm,
    ema_params,
    from_optax,
    from_torch_optim,
    skip_nonfinite,
)

needs_jax = pytest.mark.skipif("jax" not in available_backends(), reason="jax is not installed")
needs_torch = pytest.mark.skipif("torch" not in available_backends(),
                                 reason="torch is not installed")


def _loss(B, p):
    return sum(B.sum(0.5 * B.asarray(C[k]) * p[k] ** 2 - B.asarray(D[k]) * p[k]) for k in p)


@needs_jax
def test_jit_scan_matches_eager_loop():
    B = make_backend("jax", precision="float64")
    opt = skip_nonfinite(EMA(chain(clip_by_global_norm(3.0, backend=B),
                                   Adam(ReduceLROnPlateau(0.05, patience=5, backend=B),
                                        backend=B)), 0.9))
    value_and_grad = B.value_and_grad(lambda p: _loss(B, p))

    def step(state, _):
        loss, g = value_and_grad(state.params)
        _, state = opt.update(g, state, value=loss)
        return state, loss

    state0 = opt.init(b_params(B))
    compiled = B.jit(lambda s: B.scan(step, s, None, length=200))
    final, losses = compiled(state0)
    eager = state0
    eager_losses = []
    for _ in range(200):
        eager, loss = step(eager, None)
        eager_losses.append(float(loss))
    for k in X0:
        np.testing.assert_allclose(np.asarray(final.params[k]), np.asarray(eager.params[k]),
                                   rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(losses), eager_losses, rtol=1e-12)
    for a, b in zip(B.tree_leaves(final), B.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    ema = ema_params(final, B)
    np.testing.assert_allclose(np.asarray(ema["a"]), D["a"] / C["a"], atol=5e-2)


@needs_jax
def test_from_optax_matches_agvi_adam():
    optax = pytest.importorskip("optax", reason="optax is not installed")
    B = make_backend("jax", precision="float64")
    ours, theirs = Adam(0.05, backend=B), from_optax(optax.adam(0.05), backend=B)
    p1 = p2 = b_params(B)
    s1, s2 = ours.init(p1), theirs.init(p2)
    step = B.jit(lambda o, p, s: o.update(b_grad(B, p), s), static_argnums=0)
    for _ in range(10):
        p1, s1 = step(ours, p1, s1)
        p2, s2 = step(theirs, p2, s2)
    for k in X0:
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad"])
def test_from_torch_optim_matches_agvi(name):
    import torch

    B = make_backend("torch", precision="float64")
    kwargs, ours = {
        "Adam": (dict(lr=0.05), Adam(0.05, backend=B)),
        "AdamW": (dict(lr=0.05, weight_decay=0.1),
                  AdamW(0.05, weight_decay=0.1, backend=B)),
        "SGD": (dict(lr=0.05, momentum=0.9, nesterov=True),
                SGD(0.05, momentum=0.9, nesterov=True, backend=B)),
        "RMSprop": (dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.5, centered=True),
                    RMSprop(0.01, 0.9, 1e-6, momentum=0.5, centered=True, backend=B)),
        "Adagrad": (dict(lr=0.3, initial_accumulator_value=0.1, eps=1e-10),
                    Adagrad(0.3, initial_accumulator_value=0.1, eps=1e-10, backend=B)),
    }[name]
    theirs = from_torch_optim(getattr(torch.optim, name), backend=B, **kwargs)
    p1 = p2 = b_params(B)
    s1, s2 = ours.init(p1), theirs.init(p2)
    for _ in range(6):
        p1, s1 = ours.update(b_grad(B, p1), s1)
        p2, s2 = theirs.update(b_grad(B, p2), s2)
    for k in X0:
        np.testing.assert_allclose(p1[k].numpy(), p2[k].numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="torch.optim.Optimizer subclass"):
        from_torch_optim(Adam)
    with pytest.raises(TypeError, match="cannot be wrapped"):
        EMA(theirs)


def test_import_does_not_load_frameworks():
    import subprocess

    code = ("import sys, agvi.optim; "
            "print(sorted(m for m in ('torch', 'jax', 'optax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@needs_jax
def test_from_optax_passes_the_loss():
    optax = pytest.importorskip("optax", reason="optax is not installed")
    B = make_backend("jax", precision="float64")
    tx = optax.chain(optax.sgd(1.0), optax.contrib.reduce_on_plateau(factor=0.5, patience=1))
    opt = from_optax(tx, backend=B)
    params = {"w": B.zeros((2,))}
    state = opt.init(params)
    step = B.jit(lambda p, s, v: opt.update({"w": B.ones((2,))}, s, p, value=v))
    moves = []
    for _ in range(8):  # a constant loss: the scale must drop below 1
        before = np.asarray(params["w"])
        params, state = step(params, state, B.asarray(1.0))
        moves.append(float(before[0] - np.asarray(params["w"])[0]))
    assert moves[0] == pytest.approx(1.0) and moves[-1] < 1.0


@needs_torch
def test_params_of_another_framework_are_refused():
    import torch

    opt = Adam(0.1, backend=make_backend("numpy"))
    with pytest.raises(TypeError, match="backend"):
        opt.init({"w": torch.zeros(2)})
    state = opt.init({"w": 1.5})  # Python floats and NumPy arrays are converted
    assert isinstance(state.params["w"], np.ndarray)
