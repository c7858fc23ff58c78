"""One-gradient floors: ``python -m benchmarks.floor --framework torch``.

The time of one value-and-gradient of each target's log density alone, in microseconds: what a
sampler or optimiser cannot go below. A sampler's time per gradient divided by its framework's
floor is its overhead factor.

Frameworks and variants:

- ``jax`` (plain ``jax.numpy``): ``loop`` (inside a compiled ``fori_loop``, the bound for
  compiled samplers) and ``dispatch`` (one jitted call from Python, blocking on the result);
- ``torch`` (plain torch, eager autograd, one thread): ``grad`` (``torch.autograd.grad``) and
  ``leapfrog`` (a whole eager leapfrog step: the position and momentum updates around it);
- ``autograd`` (plain ``autograd.numpy``): ``grad`` and ``leapfrog``;
- ``numpy-hand``: the closed-form gradient written in NumPy (no autodiff at all);
- ``agvi-numpy``, ``agvi-torch``, ``agvi-jax``: ``B.value_and_grad`` of the log density written
  with agvi distributions (eager, or ``B.jit``-ed per dispatch on JAX): separates the cost of
  agvi's distributions from that of its samplers.

Each variant is timed in blocks of calls after a warm-up; the median and the minimum over blocks
of the time per call are reported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import tasks
from ._common import configure, write_json

FRAMEWORKS = ("jax", "torch", "autograd", "numpy-hand", "agvi-numpy", "agvi-torch", "agvi-jax")


def _time(call, target_s: float, blocks: int) -> dict:
    """Median and minimum microseconds per ``call()`` over ``blocks`` blocks of calls."""
    call()
    t0 = time.perf_counter()
    call()
    one = max(time.perf_counter() - t0, 1e-7)
    per_block = max(1, int(target_s / blocks / one))
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            call()
        times.append((time.perf_counter() - t0) / per_block * 1e6)
    return {"us_median": float(np.median(times)), "us_min": float(np.min(times)),
            "calls": per_block * blocks}


def _hand_value_and_grad(task):
    """Closed-form value and gradient in NumPy: ``vg(z, *data) -> (value, grad)``."""
    f = tasks.logdensity(task, "autograd")   # autograd.numpy on ndarrays is plain NumPy
    if task == "eight_schools":
        def vg(z, y, sigma):
            mu, log_tau, tt = z[0], z[1], z[2:]
            tau = np.exp(log_tau)
            r = (y - mu - tau * tt) / sigma
            rs = r / sigma
            g = np.empty_like(z)
            g[0] = -mu / 25.0 + rs.sum()
            u = (tau / 5.0) ** 2
            g[1] = -2.0 * u / (1.0 + u) + 1.0 + tau * np.dot(rs, tt)
            g[2:] = -tt + tau * rs
            return f(z, y, sigma), g
    elif task == "logistic":
        def vg(w, X, y):
            logits = X @ w
            value = (-0.5 * w @ w - w.shape[0] * tasks.HALF_LOG_2PI
                     + np.sum(y * logits - np.logaddexp(0.0, logits)))
            return value, X.T @ (y - 1.0 / (1.0 + np.exp(-logits))) - w
    else:
        def vg(x, sd):
            return f(x, sd), -x / (sd * sd)
    return vg


def floors(framework: str, task: str, target_s: float = 2.0, blocks: int = 7) -> dict:
    """Microseconds per value-and-gradient of ``task``'s log density in ``framework``.

    Returns
    -------
    dict
        ``{variant: {"us_median", "us_min", "calls"}}``.

    Raises
    ------
    ValueError
        If ``framework`` is unknown.
    """
    d = tasks.DIMS[task]
    z0 = np.random.default_rng(1).normal(size=d) * 0.1
    out = {}
    if framework == "jax":
        configure("jax")
        import jax
        import jax.numpy as jnp

        f = tasks.logdensity(task, "jax")
        args = tuple(jnp.asarray(a) for a in tasks.data(task))
        vg = jax.value_and_grad(f)
        n_loop = 2000

        @jax.jit
        def loop(x, args):
            def body(i, carry):
                x, acc = carry
                v, g = vg(x, *args)
                return x + 1e-9 * g, acc + v     # the result depends on every gradient
            return jax.lax.fori_loop(0, n_loop, body, (x, 0.0))

        x = jnp.asarray(z0)
        jax.block_until_ready(loop(x, args))
        res = _time(lambda: jax.block_until_ready(loop(x, args)), target_s, blocks)
        out["loop"] = {k: (v / n_loop if k.startswith("us") else v * n_loop)
                       for k, v in res.items()}
        jvg = jax.jit(vg)
        out["dispatch"] = _time(lambda: jax.block_until_ready(jvg(x, *args)), target_s, blocks)
    elif framework == "torch":
        configure("torch")
        import torch

        f = tasks.logdensity(task, "torch")
        args = tuple(torch.as_tensor(a) for a in tasks.data(task))
        x0 = torch.as_tensor(z0)

        def grad(x):
            x = x.detach().requires_grad_(True)
            v = f(x, *args)
            (g,) = torch.autograd.grad(v, x)
            return v.detach(), g

        out["grad"] = _time(lambda: grad(x0), target_s, blocks)
        state = {"x": x0.clone(), "p": torch.zeros(d), "g": grad(x0)[1]}
        eps = 1e-3

        def leapfrog():
            p = state["p"] + 0.5 * eps * state["g"]
            x = state["x"] + eps * p
            _, g = grad(x)
            state.update(x=x, p=p + 0.5 * eps * g, g=g)

        out["leapfrog"] = _time(leapfrog, target_s, blocks)
    elif framework == "autograd":
        import autograd

        f = tasks.logdensity(task, "autograd")
        args = tasks.data(task)
        vg = autograd.value_and_grad(f)
        out["grad"] = _time(lambda: vg(z0, *args), target_s, blocks)
        state = {"x": z0.copy(), "p": np.zeros(d), "g": vg(z0, *args)[1]}
        eps = 1e-3

        def leapfrog():
            p = state["p"] + 0.5 * eps * state["g"]
            x = state["x"] + eps * p
            _, g = vg(x, *args)
            state.update(x=x, p=p + 0.5 * eps * g, g=g)

        out["leapfrog"] = _time(leapfrog, target_s, blocks)
    elif framework == "numpy-hand":
        vg = _hand_value_and_grad(task)
        args = tasks.data(task)
        out["grad"] = _time(lambda: vg(z0, *args), target_s, blocks)
    elif framework.startswith("agvi-"):
        B = configure(framework)
        f = tasks.logdensity(task, "agvi")
        args = tuple(B.asarray(a) for a in tasks.data(task))
        vg = B.value_and_grad(lambda z: f(z, *args))
        x = B.asarray(z0)
        if B.has_jit:
            import jax

            jvg = B.jit(vg)
            out["dispatch"] = _time(lambda: jax.block_until_ready(jvg(x)), target_s, blocks)
        else:
            out["grad"] = _time(lambda: vg(x), target_s, blocks)
    else:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", required=True, choices=FRAMEWORKS)
    p.add_argument("--tasks", default=",".join(tasks.TASKS))
    p.add_argument("--target-s", type=float, default=2.0,
                   help="seconds of timing per variant and task")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    result = {"framework": a.framework,
              "floors": {t: floors(a.framework, t, a.target_s, a.blocks)
                         for t in a.tasks.split(",")}}
    write_json(a.out, result)


if __name__ == "__main__":
    main()
