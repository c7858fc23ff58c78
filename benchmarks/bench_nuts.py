"""NUTS on one target with one framework, in this process: ``python -m benchmarks.bench_nuts``.

Settings (the project's benchmark definitions): ``--warmup`` 1000 and ``--samples`` 1000 draws,
diagonal mass matrix with Stan's windowed adaptation, target acceptance 0.8, maximum tree depth
10, every chain starting at zeros, float64.

Protocol, in one process: a *cold* run first (what a user sees the first time: on JAX it
compiles), then ``--repeats`` runs with seeds 1, 2, ... Each repeat runs warmup and sampling
separately through the framework's own API, to time the sampling phase alone (minus any JAX
compilation inside it, read from ``jax.monitoring``); where the framework's one-call API differs
from that split (agvi-JAX and NumPyro: ``mcmc.run`` on the same ``MCMC`` object), the repeat also
re-runs that one call, and its wall time gives the *re-run* ESS per wall second. Medians over
the repeats are reported.

Metrics: minimum bulk ESS over coordinates, ESS per second of sampling, ESS per wall second of a
re-run, ESS per 1000 gradient evaluations (sampling), gradient evaluations in warmup and
sampling (summed over chains), compile time (JAX: the cold run's compilation), step size,
divergences, and microseconds per gradient (sampling time over sampling gradients per chain).

Frameworks: ``agvi-numpy``, ``agvi-torch``, ``agvi-jax`` (agvi's ``MCMC``/``NUTS`` on a
log density written with agvi distributions), ``numpyro`` (``MCMC(NUTS(potential_fn=...))``),
``blackjax`` (``window_adaptation`` + ``nuts`` in jitted ``lax.scan`` loops, 1 chain) and
``pyro`` (``MCMC(NUTS(potential_fn=...))``, 1 chain).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import tasks
from ._common import CompileClock, configure, median, min_bulk_ess, write_json

FRAMEWORKS = ("agvi-numpy", "agvi-torch", "agvi-jax", "numpyro", "blackjax", "pyro")


# --------------------------------------------------------------------------- runners
class _Runner:
    """``run(seed)`` -> dict of one warmup + sampling; ``plain_run(seed)`` -> (wall, samples)."""

    has_plain_run = False
    clock = None

    def _compile(self, t0, t1):
        return self.clock.seconds(t0, t1) if self.clock is not None else 0.0

    def _jax_target(self, framework, task, lib):
        """Set up a JAX-based peer: float64, the compile clock; the log density of one point with
        the data closed over (as the peers' users write it)."""
        configure(framework)
        import jax
        import jax.numpy as jnp

        self.clock = CompileClock()
        self.jax = jax
        f = tasks.logdensity(task, lib)
        args = tuple(jnp.asarray(a) for a in tasks.data(task))
        return lambda z: f(z, *args)

    def _result(self, samples, walls, times, grads_warmup, grads_sample, step_size, divergences):
        """One run's record from the ``time.time()`` / ``perf_counter()`` instants at the start,
        the end of warmup and the end of sampling."""
        (w0, w1, w2), (t0, t1, t2) = walls, times
        return {"samples": samples, "t_warmup": t1 - t0, "t_sample": t2 - t1,
                "t_total": t2 - t0, "compile_warmup": self._compile(w0, w1),
                "compile_sample": self._compile(w1, w2), "grads_warmup": int(grads_warmup),
                "grads_sample": int(grads_sample),
                "step_size": np.atleast_1d(np.asarray(step_size, dtype=float)).tolist(),
                "divergences": int(divergences)}


class AgviRunner(_Runner):
    def __init__(self, framework, task, chains, warmup, samples):
        from agvi.infer import MCMC, NUTS

        self.B = B = configure(framework)
        if B.has_jit:
            self.clock = CompileClock()
            self.has_plain_run = True
        self.d = tasks.DIMS[task]
        self.args = tuple(B.asarray(a) for a in tasks.data(task))
        kernel = NUTS(logdensity_fn=tasks.logdensity(task, "agvi"), target_accept_prob=0.8,
                      max_tree_depth=10, dense_mass=False)
        self.mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                         progress_bar=False)
        self.init = B.zeros((self.d,))

    def _samples(self):
        return np.asarray(self.B.to_numpy(self.mcmc.get_samples(group_by_chain=True)))

    def run(self, seed):
        B, mcmc = self.B, self.mcmc
        mcmc.post_warmup_state = None
        key = B.key(seed)
        w0, t0 = time.time(), time.perf_counter()
        mcmc.warmup(key, *self.args, init_params=self.init)
        w1, t1 = time.time(), time.perf_counter()
        mcmc.run(key, *self.args)
        samples = self._samples()
        w2, t2 = time.time(), time.perf_counter()
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = mcmc._stats    # warmup gradient counts: printed by print_summary, no accessor
        out = self._result(samples, (w0, w1, w2), (t0, t1, t2), np.sum(stats["warmup_steps"]),
                           np.sum(B.to_numpy(extra["num_steps"])),
                           B.to_numpy(mcmc.adapted_params["step_size"]),
                           np.sum(B.to_numpy(extra["diverging"])))
        mcmc.post_warmup_state = None
        return out

    def plain_run(self, seed):
        mcmc = self.mcmc
        mcmc.post_warmup_state = None
        w0, t0 = time.time(), time.perf_counter()
        mcmc.run(self.B.key(seed), *self.args, init_params=self.init)
        samples = self._samples()
        w1, t1 = time.time(), time.perf_counter()
        return {"t_total": t1 - t0, "compile": self._compile(w0, w1), "samples": samples}


class NumPyroRunner(_Runner):
    has_plain_run = True

    def __init__(self, framework, task, chains, warmup, samples):
        logdensity = self._jax_target(framework, task, "numpyro")
        import jax.numpy as jnp
        from numpyro.infer import MCMC, NUTS

        def potential(z):
            return -logdensity(z)

        def kernel():
            return NUTS(potential_fn=potential, target_accept_prob=0.8, max_tree_depth=10,
                        dense_mass=False, adapt_step_size=True, adapt_mass_matrix=True)

        # two MCMC objects and kernels: NumPyro 0.22 fails in warmup() after a run() with
        # vectorised chains; plain_run uses its own, re-run on every call as a user would
        self.mcmc, self.mcmc_plain = (
            MCMC(kernel(), num_warmup=warmup, num_samples=samples, num_chains=chains,
                 chain_method="vectorized", progress_bar=False) for _ in range(2))
        d = tasks.DIMS[task]
        self.init = jnp.zeros((chains, d) if chains > 1 else (d,))
        self.chains = chains


    def run(self, seed):
        jax, mcmc = self.jax, self.mcmc
        mcmc.post_warmup_state = None
        key = jax.random.PRNGKey(seed)
        w0, t0 = time.time(), time.perf_counter()
        mcmc.warmup(key, init_params=self.init, extra_fields=("num_steps",),
                    collect_warmup=True)
        grads_warmup = int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))
        w1, t1 = time.time(), time.perf_counter()
        # after warmup() NumPyro wants one key per chain for vectorised chains
        run_key = jax.random.split(key, self.chains) if self.chains > 1 else key
        mcmc.run(run_key, extra_fields=("num_steps", "diverging"))
        samples = np.asarray(mcmc.get_samples(group_by_chain=True))
        w2, t2 = time.time(), time.perf_counter()
        extra = mcmc.get_extra_fields(group_by_chain=True)
        out = self._result(samples, (w0, w1, w2), (t0, t1, t2), grads_warmup,
                           np.sum(np.asarray(extra["num_steps"])),
                           np.asarray(mcmc.last_state.adapt_state.step_size),
                           np.sum(np.asarray(extra["diverging"])))
        mcmc.post_warmup_state = None
        return out

    def plain_run(self, seed):
        mcmc = self.mcmc_plain
        w0, t0 = time.time(), time.perf_counter()
        mcmc.run(self.jax.random.PRNGKey(seed), init_params=self.init)
        samples = np.asarray(mcmc.get_samples(group_by_chain=True))
        w1, t1 = time.time(), time.perf_counter()
        return {"t_total": t1 - t0, "compile": self._compile(w0, w1), "samples": samples}


class BlackJAXRunner(_Runner):
    def __init__(self, framework, task, chains, warmup, samples):
        if chains != 1:
            raise ValueError("the BlackJAX benchmark runs 1 chain")
        logdensity = self._jax_target(framework, task, "jax")
        import blackjax
        import jax
        import jax.numpy as jnp

        adaptation = blackjax.window_adaptation(blackjax.nuts, logdensity,
                                                is_mass_matrix_diagonal=True,
                                                target_acceptance_rate=0.8)

        @jax.jit
        def run_warmup(key, x0):
            (state, params), info = adaptation.run(key, x0, num_steps=warmup)
            return state, params, jnp.sum(info.info.num_integration_steps)

        @jax.jit
        def run_sample(key, state, step_size, inverse_mass_matrix):
            step = blackjax.nuts(logdensity, step_size, inverse_mass_matrix,
                                 max_num_doublings=10).step

            def one(state, k):
                state, info = step(k, state)
                return state, (state.position, info.num_integration_steps, info.is_divergent)

            _, (pos, n, div) = jax.lax.scan(one, state, jax.random.split(key, samples))
            return pos, jnp.sum(n), jnp.sum(div)

        self.run_warmup, self.run_sample = run_warmup, run_sample
        self.init = jnp.zeros(tasks.DIMS[task])

    def run(self, seed):
        jax = self.jax
        k_warm, k_sample = jax.random.split(jax.random.PRNGKey(seed))
        w0, t0 = time.time(), time.perf_counter()
        state, params, grads_warmup = self.run_warmup(k_warm, self.init)
        grads_warmup = int(grads_warmup)
        w1, t1 = time.time(), time.perf_counter()
        pos, grads_sample, div = self.run_sample(k_sample, state, params["step_size"],
                                                 params["inverse_mass_matrix"])
        samples = np.asarray(pos)[None]
        w2, t2 = time.time(), time.perf_counter()
        return self._result(samples, (w0, w1, w2), (t0, t1, t2), grads_warmup, grads_sample,
                            params["step_size"], div)


class PyroRunner(_Runner):
    def __init__(self, framework, task, chains, warmup, samples):
        if chains != 1:
            raise ValueError("the Pyro benchmark runs 1 chain (its chains run in processes)")
        configure(framework)
        import torch

        self.torch = torch
        self.f = tasks.logdensity(task, "pyro")
        self.args = tuple(torch.as_tensor(a) for a in tasks.data(task))
        self.d, self.warmup, self.samples = tasks.DIMS[task], warmup, samples

    def run(self, seed):
        import pyro
        from pyro.infer import MCMC, NUTS

        torch, f, args = self.torch, self.f, self.args
        pyro.set_rng_seed(seed)
        calls = [0]

        def potential(params):
            calls[0] += 1          # one call per gradient (Pyro's potential_grad)
            return -f(params["z"], *args)

        mark = {}

        def hook(kernel, samples, stage, i):
            if stage == "Warmup":   # the last warmup hook marks the end of warmup
                mark["t"], mark["w"], mark["g"] = time.perf_counter(), time.time(), calls[0]

        kernel = NUTS(potential_fn=potential, target_accept_prob=0.8, max_tree_depth=10,
                      full_mass=False, adapt_step_size=True, adapt_mass_matrix=True)
        mcmc = MCMC(kernel, num_samples=self.samples, warmup_steps=self.warmup,
                    initial_params={"z": torch.zeros(self.d)}, disable_progbar=True,
                    hook_fn=hook)
        w0, t0 = time.time(), time.perf_counter()
        mcmc.run()
        samples = mcmc.get_samples(group_by_chain=True)["z"].detach().numpy()
        w2, t2 = time.time(), time.perf_counter()
        div = mcmc.diagnostics().get("divergences", {})
        n_div = sum(len(v) for v in div.values()) if isinstance(div, dict) else 0
        return self._result(samples, (w0, mark.get("w", w0), w2), (t0, mark.get("t", t0), t2),
                            mark.get("g", 0), calls[0] - mark.get("g", 0), kernel.step_size,
                            n_div)


RUNNERS = {"agvi-numpy": AgviRunner, "agvi-torch": AgviRunner, "agvi-jax": AgviRunner,
           "numpyro": NumPyroRunner, "blackjax": BlackJAXRunner, "pyro": PyroRunner}


# --------------------------------------------------------------------------- metrics
def _metrics(run: dict, chains: int) -> dict:
    ess = min_bulk_ess(run["samples"])
    sample_s = max(run["t_sample"] - run["compile_sample"], 1e-12)
    per_chain_grads = run["grads_sample"] / chains
    return {
        "min_bulk_ess": ess,
        "ess_per_s_sampling": ess / sample_s,
        "ess_per_1000_grads": 1000.0 * ess / max(run["grads_sample"], 1),
        "us_per_grad": 1e6 * sample_s / max(per_chain_grads, 1),
        "sample_s": sample_s,
        "warmup_s": run["t_warmup"] - run["compile_warmup"],
        "wall_s": run["t_total"],
        "compile_s": run["compile_warmup"] + run["compile_sample"],
        "grads_warmup": run["grads_warmup"],
        "grads_sample": run["grads_sample"],
        "step_size": float(np.mean(run["step_size"])),
        "divergences": run["divergences"],
    }


def bench(framework: str, task: str, chains: int = 1, warmup: int = 1000,
          samples: int = 1000, repeats: int = 3) -> dict:
    """Benchmark NUTS of ``framework`` on ``task`` (see the module docstring).

    Returns
    -------
    dict
        ``cold`` (the first run: wall time, compile time, ESS), ``runs`` (one metrics dict per
        repeat), ``median`` (medians of the repeats' metrics), ``rerun`` (per repeat: wall time
        of the one-call re-run and its ESS per wall second) and the settings.

    Raises
    ------
    ValueError
        If ``framework`` or ``task`` is unknown.
    """
    if framework not in RUNNERS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    runner = RUNNERS[framework](framework, task, chains, warmup, samples)
    # the cold run: the one-call API where there is one, else warmup + sampling
    if runner.has_plain_run:
        first = runner.plain_run(0)
        cold = {"wall_s": first["t_total"], "compile_s": first["compile"],
                "min_bulk_ess": min_bulk_ess(first["samples"])}
    else:
        first = runner.run(0)
        cold = {"wall_s": first["t_total"],
                "compile_s": first["compile_warmup"] + first["compile_sample"],
                "min_bulk_ess": min_bulk_ess(first["samples"])}
    cold["ess_per_wall_s"] = cold["min_bulk_ess"] / cold["wall_s"]
    runs, reruns = [], []
    for seed in range(1, repeats + 1):
        m = _metrics(runner.run(seed), chains)
        runs.append(m)
        if runner.has_plain_run:
            p = runner.plain_run(seed)
            ess = min_bulk_ess(p["samples"])
            reruns.append({"wall_s": p["t_total"], "compile_s": p["compile"],
                           "min_bulk_ess": ess, "ess_per_wall_s": ess / p["t_total"]})
        else:
            reruns.append({"wall_s": m["wall_s"], "compile_s": m["compile_s"],
                           "min_bulk_ess": m["min_bulk_ess"],
                           "ess_per_wall_s": m["min_bulk_ess"] / m["wall_s"]})
    med = {k: median([r[k] for r in runs]) for k in runs[0]}
    med.update({f"rerun_{k}": median([r[k] for r in reruns]) for k in reruns[0]})
    return {"framework": framework, "task": task, "chains": chains, "warmup": warmup,
            "samples": samples, "repeats": repeats, "cold": cold, "runs": runs,
            "reruns": reruns, "median": med}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", required=True, choices=FRAMEWORKS)
    p.add_argument("--task", required=True, choices=tasks.TASKS)
    p.add_argument("--chains", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the JSON result here (default: stdout)")
    a = p.parse_args(argv)
    write_json(a.out, bench(a.framework, a.task, a.chains, a.warmup, a.samples, a.repeats))


if __name__ == "__main__":
    main()
