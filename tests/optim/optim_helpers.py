"""Shared helpers for the optimiser tests: a separable quadratic and a NumPy step runner."""

from __future__ import annotations

import numpy as np

RNG = np.random.default_rng(0)
# f(x) = sum 0.5 * c * x^2 - d * x over two leaves; gradient c * x - d.
C = {"a": np.array([1.0, 2.0, 0.5]), "b": np.array([[3.0, 0.25], [1.5, 1.0]])}
D = {"a": np.array([0.3, -1.0, 2.0]), "b": np.array([[1.0, -0.5], [0.0, 2.0]])}
X0 = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[0.2, 0.4], [-1.0, 3.0]])}


def np_grad(x):
    return {k: C[k] * x[k] - D[k] for k in x}


def b_grad(B, x):
    return {k: B.asarray(C[k]) * x[k] - B.asarray(D[k]) for k in x}


def b_params(B, tree=X0):
    return {k: B.asarray(v) for k, v in tree.items()}


def run(B, opt, steps, params=None, values=None, jit=True):
    """Run ``steps`` updates of ``opt`` on the quadratic; return the list of NumPy params
    (with ``jit``, each step is compiled with ``B.jit``, which is the identity off JAX)."""
    params = b_params(B) if params is None else params
    state = opt.init(params)

    def step(p, s, v):
        return opt.update(b_grad(B, p), s, value=v)

    step = B.jit(step) if jit else step
    out = []
    for t in range(steps):
        value = None if values is None else values[t]
        params, state = step(params, state, value)
        out.append({k: B.to_numpy(v) for k, v in params.items()})
    return out, state


def tol(B):
    return dict(rtol=1e-12, atol=1e-14) if B.precision == "float64" else dict(rtol=2e-5,
                                                                                atol=1e-6)


def assert_trajectories(B, got, want):
    for g, w in zip(got, want):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], **tol(B))
