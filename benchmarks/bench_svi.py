"""Mean-field SVI of the logistic regression with one framework: ``python -m benchmarks.bench_svi``.

Settings (the project's benchmark definitions): the seed-0 logistic regression (N = 1000,
D = 25), a mean-field Normal guide (AutoNormal: initial scale 0.1), Adam with learning rate 0.01,
``--steps`` 5000, ``--particles`` 1 or 16 (vectorised), float64.

Protocol, in one process: a cold run (on JAX it compiles), then ``--repeats`` runs with seeds
1, 2, ... through the framework's one-call API where it has one (``svi.run``), else its step loop.
Steps per second exclude JAX compilation (read from ``jax.monitoring``; agvi's ``svi.run`` caches
its compiled loop, NumPyro's recompiles each call) and are also given with it. Final ELBO: minus
the mean loss of the last 10% of steps (at most 100). Error: the guide's posterior mean
(``median``, the loc of the Normal guide) against the posterior mean of a long NUTS run
(``--reference``, see :func:`make_reference`), as max and RMS absolute error.

Frameworks: ``agvi-numpy``, ``agvi-torch``, ``agvi-jax`` (``SVI(model, AutoNormal(model),
Adam(0.01), Trace_ELBO(num_particles))``, ``svi.run``); ``numpyro`` (the same with NumPyro,
``svi.run``); ``jax-hand`` (a hand-written mean-field ELBO with ``optax.adam`` in one jitted
``lax.scan``); ``pyro`` (``Trace_ELBO``) and ``pyro-jit`` (``JitTrace_ELBO``), a Python loop of
``svi.step``; ``torch-hand`` (a hand-written mean-field ELBO with ``torch.optim.Adam``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from . import tasks
from ._common import CompileClock, configure, median, write_json

FRAMEWORKS = ("agvi-numpy", "agvi-torch", "agvi-jax", "numpyro", "jax-hand", "pyro", "pyro-jit",
              "torch-hand")
LR = 0.01
INIT_SCALE = 0.1


def _final_elbo(losses) -> float:
    losses = np.asarray(losses, dtype=np.float64)
    k = max(1, min(100, len(losses) // 10))
    return float(-np.mean(losses[-k:]))


# --------------------------------------------------------------------------- runners
# run(seed) -> {"t": wall seconds, "w0", "w1": time.time() instants, "losses", "mean"}
def _agvi(framework, particles, steps):
    B = configure(framework)
    from agvi.infer import SVI, AutoNormal, Trace_ELBO
    from agvi.optim import Adam

    model = tasks.svi_model("agvi")
    guide = AutoNormal(model, init_scale=INIT_SCALE)
    svi = SVI(model, guide, Adam(LR), Trace_ELBO(num_particles=particles))
    X, y = (B.asarray(a) for a in tasks.logistic_data())

    def run(seed):
        w0, t0 = time.time(), time.perf_counter()
        res = svi.run(B.key(seed), steps, X, y, progress_bar=False)
        losses = np.asarray(B.to_numpy(res.losses))
        t1, w1 = time.perf_counter(), time.time()
        mean = np.asarray(B.to_numpy(guide.median(res.params)["w"]))
        return {"t": t1 - t0, "w0": w0, "w1": w1, "losses": losses, "mean": mean}

    return run, B.has_jit


def _numpyro(framework, particles, steps):
    configure(framework)
    import jax
    import jax.numpy as jnp
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_median
    from numpyro.optim import Adam

    model = tasks.svi_model("numpyro")
    guide = AutoNormal(model, init_loc_fn=init_to_median, init_scale=INIT_SCALE)
    svi = SVI(model, guide, Adam(LR), Trace_ELBO(num_particles=particles,
                                                  vectorize_particles=True))
    X, y = (jnp.asarray(a) for a in tasks.logistic_data())

    def run(seed):
        w0, t0 = time.time(), time.perf_counter()
        res = svi.run(jax.random.PRNGKey(seed), steps, X, y, progress_bar=False)
        losses = np.asarray(res.losses)
        t1, w1 = time.perf_counter(), time.time()
        mean = np.asarray(guide.median(res.params)["w"])
        return {"t": t1 - t0, "w0": w0, "w1": w1, "losses": losses, "mean": mean}

    return run, True


def _jax_hand(framework, particles, steps):
    configure("jax")
    import jax
    import jax.numpy as jnp
    import optax

    X, y = (jnp.asarray(a) for a in tasks.logistic_data())
    d = X.shape[1]
    opt = optax.adam(LR)
    c = tasks.HALF_LOG_2PI

    def loss(params, key):
        loc, log_scale = params
        eps = jax.random.normal(key, (particles, d))
        w = loc + jnp.exp(log_scale) * eps
        logits = w @ X.T
        log_lik = jnp.sum(y * logits - jax.nn.softplus(logits), axis=-1)
        log_prior = jnp.sum(-0.5 * w * w - c, axis=-1)
        log_q = jnp.sum(-0.5 * eps * eps - log_scale - c, axis=-1)
        return -jnp.mean(log_lik + log_prior - log_q)

    @jax.jit
    def fit(key):
        params = (jnp.zeros(d), jnp.full(d, math.log(INIT_SCALE)))

        def step(carry, k):
            params, state = carry
            value, g = jax.value_and_grad(loss)(params, k)
            updates, state = opt.update(g, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, steps))
        return params, losses

    def run(seed):
        w0, t0 = time.time(), time.perf_counter()
        params, losses = fit(jax.random.PRNGKey(seed))
        losses = np.asarray(losses)
        t1, w1 = time.perf_counter(), time.time()
        return {"t": t1 - t0, "w0": w0, "w1": w1, "losses": losses,
                "mean": np.asarray(params[0])}

    return run, True


def _pyro(framework, particles, steps):
    configure(framework)
    import pyro
    import torch
    from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.optim import Adam

    X, y = (torch.as_tensor(a) for a in tasks.logistic_data())
    model = tasks.svi_model("pyro")
    elbo_class = JitTrace_ELBO if framework == "pyro-jit" else Trace_ELBO

    def run(seed):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoNormal(model, init_scale=INIT_SCALE)
        svi = SVI(model, guide, Adam({"lr": LR}),
                  elbo_class(num_particles=particles, vectorize_particles=True,
                             max_plate_nesting=1))
        losses = np.empty(steps)
        w0, t0 = time.time(), time.perf_counter()
        for i in range(steps):
            losses[i] = svi.step(X, y)
            if i == 0:
                t_first = time.perf_counter() - t0
        t1, w1 = time.perf_counter(), time.time()
        mean = guide.median()["w"].detach().numpy()
        out = {"t": t1 - t0, "w0": w0, "w1": w1, "losses": losses, "mean": mean}
        if framework == "pyro-jit":
            # JitTrace_ELBO traces (compiles) during its first step: count that step as
            # compilation, replaced by the mean time of the other steps
            out["compile_s"] = max(0.0, t_first - (out["t"] - t_first) / max(steps - 1, 1))
        return out

    return run, False


def _torch_hand(framework, particles, steps):
    configure("torch")
    import torch
    import torch.nn.functional as F

    X, y = (torch.as_tensor(a) for a in tasks.logistic_data())
    d = X.shape[1]
    Xt = X.T.contiguous()
    c = tasks.HALF_LOG_2PI

    def run(seed):
        torch.manual_seed(seed)
        loc = torch.zeros(d, requires_grad=True)
        log_scale = torch.full((d,), math.log(INIT_SCALE), requires_grad=True)
        opt = torch.optim.Adam([loc, log_scale], lr=LR)
        losses = []
        w0, t0 = time.time(), time.perf_counter()
        for _ in range(steps):
            eps = torch.randn(particles, d)
            w = loc + torch.exp(log_scale) * eps
            logits = w @ Xt
            log_lik = torch.sum(y * logits - F.softplus(logits), dim=-1)
            log_prior = torch.sum(-0.5 * w * w - c, dim=-1)
            log_q = torch.sum(-0.5 * eps * eps - log_scale - c, dim=-1)
            loss = -torch.mean(log_lik + log_prior - log_q)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        losses = torch.stack(losses).numpy()
        t1, w1 = time.perf_counter(), time.time()
        return {"t": t1 - t0, "w0": w0, "w1": w1, "losses": losses,
                "mean": loc.detach().numpy().copy()}

    return run, False


BUILDERS = {"agvi-numpy": _agvi, "agvi-torch": _agvi, "agvi-jax": _agvi, "numpyro": _numpyro,
            "jax-hand": _jax_hand, "pyro": _pyro, "pyro-jit": _pyro, "torch-hand": _torch_hand}


# --------------------------------------------------------------------------- the reference
def make_reference(path: str, num_chains: int = 4, num_warmup: int = 1000,
                   num_samples: int = 5000) -> dict:
    """The posterior mean of the logistic regression from a long NumPyro NUTS run, to ``path``.

    NumPyro is the oracle here because it is independent of agvi. The JSON holds ``mean`` (D,),
    ``mcse`` (D,) and the settings.
    """
    configure("numpyro")
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    from agvi.infer.mcmc.diagnostics import mcse

    f = tasks.logdensity("logistic", "numpyro")
    X, y = (jnp.asarray(a) for a in tasks.logistic_data())
    d = X.shape[1]
    mcmc = MCMC(NUTS(potential_fn=lambda w: -f(w, X, y)), num_warmup=num_warmup,
                num_samples=num_samples, num_chains=num_chains, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(2024), init_params=jnp.zeros((num_chains, d)))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    ref = {"mean": draws.mean(axis=(0, 1)).tolist(), "mcse": np.asarray(mcse(draws)).tolist(),
           "sd": draws.std(axis=(0, 1)).tolist(),
           "settings": {"sampler": "numpyro NUTS (potential_fn)", "num_chains": num_chains,
                        "num_warmup": num_warmup, "num_samples": num_samples, "seed": 2024}}
    write_json(path, ref)
    return ref


# --------------------------------------------------------------------------- the benchmark
def bench(framework: str, particles: int = 1, steps: int = 5000, repeats: int = 3,
          reference: str | None = None) -> dict:
    """Benchmark SVI of ``framework`` (see the module docstring).

    Returns
    -------
    dict
        ``cold`` and ``runs`` (per run: seconds, compile seconds, steps/s with and without
        compilation, final ELBO, errors of the posterior mean) and ``median`` over ``runs``.

    Raises
    ------
    ValueError
        If ``framework`` is unknown.
    """
    if framework not in BUILDERS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    run, compiles = BUILDERS[framework](framework, particles, steps)
    clock = CompileClock() if compiles else None
    ref = None
    if reference is not None:
        with open(reference) as f:
            ref = np.asarray(json.load(f)["mean"])

    def measure(seed):
        r = run(seed)
        comp = clock.seconds(r["w0"], r["w1"]) if clock is not None else r.get("compile_s", 0.0)
        out = {"wall_s": r["t"], "compile_s": comp,
               "steps_per_s": steps / max(r["t"] - comp, 1e-12),
               "steps_per_s_incl_compile": steps / r["t"],
               "final_elbo": _final_elbo(r["losses"])}
        if ref is not None:
            err = np.asarray(r["mean"], dtype=np.float64) - ref
            out["mean_err_max"] = float(np.max(np.abs(err)))
            out["mean_err_rms"] = float(np.sqrt(np.mean(err * err)))
        return out

    cold = measure(0)
    runs = [measure(seed) for seed in range(1, repeats + 1)]
    return {"framework": framework, "particles": particles, "steps": steps, "repeats": repeats,
            "cold": cold, "runs": runs,
            "median": {k: median([r[k] for r in runs]) for k in runs[0]}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=FRAMEWORKS)
    p.add_argument("--particles", type=int, default=1)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference", default=None,
                   help="JSON with the NUTS posterior mean (see --make-reference)")
    p.add_argument("--make-reference", default=None, metavar="PATH",
                   help="compute the reference posterior mean with NumPyro NUTS into PATH")
    p.add_argument("--reference-samples", type=int, default=5000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.make_reference:
        write_json(a.out, make_reference(a.make_reference, num_samples=a.reference_samples))
        return
    if a.framework is None:
        p.error("--framework is required")
    write_json(a.out, bench(a.framework, a.particles, a.steps, a.repeats, a.reference))


if __name__ == "__main__":
    main()
