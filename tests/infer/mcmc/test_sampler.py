"""The MCMC driver and the friendly NUTS / HMC kernels.

Oracles: closed-form Gaussian moments (within 5 Monte Carlo standard errors); exact identities
of the driver (chain 0 of a 4-chain run is a 1-chain run with the same key; warmup then run is
one run; thinning keeps every k-th draw of the unthinned run; sequential chains are the
vectorized ones; potential_fn is logdensity_fn negated); on JAX, a count of traces (a second
run with new data of the same shape compiles nothing).
"""

from __future__ import annotations

import io
import math
import os
import sys

import numpy as np
import pytest

import agvi
from agvi.backends import make_backend
from agvi.infer.mcmc import HMC, MCMC, NUTS, MCMCState

SD = np.array([1.0, 2.0, 0.5])


@pytest.fixture
def NP():
    """The NumPy backend, for tests of driver logic that no backend changes."""
    wanted = os.environ.get("AGVI_TEST_BACKENDS", "").strip()
    if wanted and "numpy" not in wanted.lower():
        pytest.skip("AGVI_TEST_BACKENDS leaves numpy out (driver logic runs there)")
    with agvi.use_backend("numpy", precision="float64") as backend:
        yield backend


_KERNELS: dict = {}   # one kernel object per (backend, name): compiled programs are reused


def gaussian_kernel(B, cls=NUTS, **kwargs):
    key = (B.name, B.precision, cls.__name__, tuple(sorted(kwargs.items())))
    if key not in _KERNELS:
        sd = B.asarray(SD)
        _KERNELS[key] = cls(logdensity_fn=lambda x: -0.5 * B.sum((x / sd) ** 2), **kwargs)
    return _KERNELS[key]


def within(samples, mean, var, k=5.0):
    """Check the means and variances of (C, N, d) draws against the truth within k MCSE."""
    from agvi.infer.mcmc.diagnostics import effective_sample_size, mcse
    x = np.asarray(samples)
    m = x.mean(axis=(0, 1))
    assert np.all(np.abs(m - mean) < k * mcse(x)), (m, mean, mcse(x))
    sq = (x - mean) ** 2
    assert np.all(np.abs(sq.mean(axis=(0, 1)) - var) < k * mcse(sq)), (sq.mean((0, 1)), var)
    assert np.all(effective_sample_size(x) > 100)


# ------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("cls", [NUTS, HMC])
def test_gaussian_moments(B, cls):
    # (a trajectory length near pi or 2 pi resonates with a whitened Gaussian: avoid it)
    kwargs = {} if cls is NUTS else {"trajectory_length": 1.3}
    # sequential chains: one-chain runs are the fast path of the eager backends (the batched
    # path is checked against them exactly below)
    mcmc = MCMC(gaussian_kernel(B, cls, **kwargs), num_warmup=300, num_samples=400,
                num_chains=2, chain_method="sequential", progress_bar=False)
    mcmc.run(B.key(1), init_params=B.zeros(3))
    draws = B.to_numpy(mcmc.get_samples(group_by_chain=True))
    assert draws.shape == (2, 400, 3)
    within(draws, 0.0, SD ** 2)
    imm = B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"])
    assert imm.shape == (2, 3)
    np.testing.assert_allclose(imm, np.broadcast_to(SD ** 2, (2, 3)), rtol=0.5)


def test_dense_mass_matrix_on_a_correlated_gaussian(B):
    cov = np.array([[1.0, 0.9], [0.9, 1.0]]) * np.outer([1.0, 3.0], [1.0, 3.0])
    prec = B.asarray(np.linalg.inv(cov))
    kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum(x * (prec @ x)), dense_mass=True)
    mcmc = MCMC(kernel, num_warmup=250, num_samples=300, progress_bar=False)
    mcmc.run(B.key(2), init_params=B.zeros(2))
    imm = B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"])
    assert imm.shape == (1, 2, 2)
    # the last slow window holds 100 strongly correlated draws: compare loosely, but the
    # correlation must be there
    assert np.all(np.abs(np.log(np.diag(imm[0]) / np.diag(cov))) < 0.8)
    assert imm[0, 0, 1] / np.sqrt(imm[0, 0, 0] * imm[0, 1, 1]) > 0.7
    draws = B.to_numpy(mcmc.get_samples(group_by_chain=True))
    within(draws, 0.0, np.diag(cov))


# ------------------------------------------------------------------------------ identities
def test_chain_zero_of_four_is_a_one_chain_run(B):
    kernel = gaussian_kernel(B)
    runs = {}
    for c in (4, 1):
        mcmc = MCMC(kernel, num_warmup=30, num_samples=20, num_chains=c, progress_bar=False)
        mcmc.run(B.key(7), init_params=B.zeros(3))
        runs[c] = (B.to_numpy(mcmc.get_samples(group_by_chain=True)),
                   B.to_numpy(mcmc.adapted_params["step_size"]))
    np.testing.assert_allclose(runs[4][0][0], runs[1][0][0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(runs[4][1][0], runs[1][1][0], rtol=1e-9)
    assert not np.allclose(runs[4][0][0], runs[4][0][1])     # chains differ


def test_warmup_then_run_is_one_run_and_runs_continue(B):
    kernel = gaussian_kernel(B)
    one = MCMC(kernel, num_warmup=40, num_samples=20, progress_bar=False)
    one.run(B.key(3), init_params=B.zeros(3))
    two = MCMC(kernel, num_warmup=40, num_samples=20, progress_bar=False)
    two.warmup(B.key(3), init_params=B.zeros(3))
    assert isinstance(two.post_warmup_state, MCMCState)
    two.run(B.key(3))                                   # skips warmup
    np.testing.assert_array_equal(B.to_numpy(two.get_samples()), B.to_numpy(one.get_samples()))
    # continue from the last state with a new key: the chain goes on from where it was
    two.post_warmup_state = two.last_state
    two.run(B.key(4))
    assert B.shape(two.get_samples(group_by_chain=True)) == (1, 20, 3)
    np.testing.assert_array_equal(B.to_numpy(two.adapted_params["step_size"]),
                                  B.to_numpy(one.adapted_params["step_size"]))


def test_adapted_parameters_seed_a_run_without_adaptation(NP):
    B = NP
    kernel = gaussian_kernel(B)
    mcmc = MCMC(kernel, num_warmup=60, num_samples=10, num_chains=2, progress_bar=False)
    mcmc.run(B.key(5), init_params=B.zeros(3))
    params = mcmc.adapted_params
    sd = B.asarray(SD)
    fixed = NUTS(logdensity_fn=lambda x: -0.5 * B.sum((x / sd) ** 2), adapt_step_size=False,
                 adapt_mass_matrix=False, step_size=params["step_size"],
                 inverse_mass_matrix=params["inverse_mass_matrix"])
    again = MCMC(fixed, num_warmup=5, num_samples=10, num_chains=2, progress_bar=False)
    again.run(B.key(6), init_params=B.zeros(3))
    steps = B.to_numpy(again.get_extra_fields(group_by_chain=True)["step_size"])
    np.testing.assert_array_equal(steps, np.broadcast_to(
        B.to_numpy(params["step_size"])[:, None], (2, 10)))
    np.testing.assert_array_equal(B.to_numpy(again.adapted_params["inverse_mass_matrix"]),
                                  B.to_numpy(params["inverse_mass_matrix"]))


def test_pytree_parameters_extra_fields_and_thinning(B):
    def logdensity(p):
        return -0.5 * B.sum(p["a"] ** 2) - 0.5 * (p["b"] - 1.0) ** 2

    kernel = _KERNELS.setdefault((B.name, "tree"), NUTS(logdensity_fn=logdensity))
    init = {"a": B.zeros((2, 2)), "b": B.asarray(0.0)}
    full = MCMC(kernel, num_warmup=20, num_samples=12, num_chains=2, progress_bar=False)
    full.run(B.key(8), init_params=init,
             extra_fields=("momentum", "logdensity_grad", "potential_energy"))
    samples = full.get_samples(group_by_chain=True)
    assert B.shape(samples["a"]) == (2, 12, 2, 2) and B.shape(samples["b"]) == (2, 12)
    assert B.shape(full.get_samples()["a"]) == (24, 2, 2)
    extra = full.get_extra_fields(group_by_chain=True)
    for name in ("accept_prob", "num_steps", "tree_depth", "diverging", "energy",
                 "num_nonfinite", "logdensity", "step_size", "turning"):
        assert B.shape(extra[name]) == (2, 12), name
    assert B.shape(extra["momentum"]) == (2, 12, 5)
    # the logdensity and its gradient are those of the draws
    flat = np.concatenate([B.to_numpy(samples["a"]).reshape(2, 12, 4),
                           B.to_numpy(samples["b"])[..., None]], axis=-1)
    ld = -0.5 * (flat[..., :4] ** 2).sum(-1) - 0.5 * (flat[..., 4] - 1.0) ** 2
    np.testing.assert_allclose(B.to_numpy(extra["logdensity"]), ld, rtol=1e-12)
    np.testing.assert_allclose(B.to_numpy(extra["potential_energy"]), -ld, rtol=1e-12)
    grad = -flat + np.array([0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(B.to_numpy(extra["logdensity_grad"]), grad, rtol=1e-12,
                               atol=1e-12)
    thinned = MCMC(kernel, num_warmup=20, num_samples=6, num_chains=2, thinning=2,
                   progress_bar=False)
    thinned.run(B.key(8), init_params=init,
                extra_fields=("momentum", "logdensity_grad", "potential_energy"))
    np.testing.assert_array_equal(B.to_numpy(thinned.get_samples(True)["b"]),
                                  B.to_numpy(samples["b"])[:, 1::2])
    with pytest.raises(ValueError, match="unknown extra field"):
        full.run(B.key(0), init_params=init, extra_fields=("nope",))


def test_warmup_tree_depth_and_hmc_steps(NP):
    B = NP
    sd = B.asarray(SD)
    kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum((x / sd) ** 2), max_tree_depth=3,
                  max_tree_depth_warmup=1, step_size=0.05, adapt_step_size=False)
    mcmc = MCMC(kernel, num_warmup=30, num_samples=30, progress_bar=False)
    mcmc.warmup(B.key(0), init_params=B.zeros(3), collect_warmup=True)
    assert B.to_numpy(mcmc.get_extra_fields()["tree_depth"]).max() == 1
    mcmc.run(B.key(0))
    depth = B.to_numpy(mcmc.get_extra_fields()["tree_depth"])
    assert depth.max() == 3    # a tiny step size: every tree grows to the maximum
    hmc_kernel = HMC(logdensity_fn=lambda x: -0.5 * B.sum((x / sd) ** 2), num_steps=6)
    mcmc = MCMC(hmc_kernel, num_warmup=30, num_samples=10, progress_bar=False)
    mcmc.run(B.key(1), init_params=B.zeros(3))
    np.testing.assert_array_equal(B.to_numpy(mcmc.get_extra_fields()["num_steps"]), 6)


def test_sequential_chains_equal_vectorized(NP):
    B = NP
    kernel = gaussian_kernel(B)
    out = {}
    for method in ("vectorized", "sequential"):
        mcmc = MCMC(kernel, num_warmup=30, num_samples=15, num_chains=3, chain_method=method,
                    progress_bar=False)
        mcmc.run(B.key(9), init_params=B.zeros(3))
        out[method] = B.to_numpy(mcmc.get_samples(group_by_chain=True))
    np.testing.assert_allclose(out["sequential"], out["vectorized"], rtol=1e-8, atol=1e-8)


def test_potential_fn_is_the_negated_logdensity(NP):
    B = NP
    sd = B.asarray(SD)
    runs = []
    for kernel in (HMC(logdensity_fn=lambda x: -0.5 * B.sum((x / sd) ** 2), num_steps=4),
                   HMC(potential_fn=lambda x: 0.5 * B.sum((x / sd) ** 2), num_steps=4)):
        mcmc = MCMC(kernel, num_warmup=20, num_samples=10, progress_bar=False)
        mcmc.run(B.key(1), init_params=B.zeros(3))
        runs.append(B.to_numpy(mcmc.get_samples()))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_init_params_per_chain_and_pooled_adaptation(NP):
    B = NP
    kernel = NUTS(logdensity_fn=lambda x: -0.5 * B.sum((x / B.asarray(SD)) ** 2),
                  adapt_per_chain=False)
    init = B.asarray(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    mcmc = MCMC(kernel, num_warmup=150, num_samples=10, num_chains=2, progress_bar=False)
    mcmc.warmup(B.key(2), init_params=init, collect_warmup=True)
    first = B.to_numpy(mcmc.get_samples(group_by_chain=True))[:, 0]
    assert np.abs(first[1] - [1.0, 2.0, 3.0]).max() < 10 and first.shape == (2, 3)
    step = B.to_numpy(mcmc.adapted_params["step_size"])
    imm = B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"])
    assert step[0] == step[1] and np.array_equal(imm[0], imm[1])
    with pytest.raises(ValueError, match="pooled"):
        MCMC(kernel, num_warmup=1, num_samples=1, num_chains=2, chain_method="sequential")


# ------------------------------------------------------------------------------ errors
def test_constructor_errors():
    with pytest.raises(ValueError, match="exactly one of model"):
        NUTS()
    with pytest.raises(ValueError, match="got model and logdensity_fn"):
        NUTS(model=lambda: None, logdensity_fn=abs)
    with pytest.raises(TypeError, match="model must be callable"):
        NUTS(model=3)
    with pytest.raises(ValueError, match="need model="):
        NUTS(logdensity_fn=abs, init_strategy=lambda site, key: 0.0)
    with pytest.raises(ValueError, match="init_strategy of a model"):
        NUTS(model=lambda: None, init_strategy="median")
    with pytest.raises(ValueError, match="exactly one"):
        HMC(logdensity_fn=abs, potential_fn=abs)
    with pytest.raises(ValueError, match="max_tree_depth"):
        NUTS(logdensity_fn=abs, max_tree_depth=0)
    with pytest.raises(ValueError, match="num_steps"):
        HMC(logdensity_fn=abs, num_steps=0)
    with pytest.raises(ValueError, match="init_strategy"):
        NUTS(logdensity_fn=abs, init_strategy="median")
    with pytest.raises(TypeError, match="kernel"):
        MCMC(object(), num_warmup=1, num_samples=1)
    with pytest.raises(ValueError, match="num_chains"):
        MCMC(NUTS(logdensity_fn=abs), num_warmup=1, num_samples=1, num_chains=0)
    with pytest.raises(ValueError, match="chain_method"):
        MCMC(NUTS(logdensity_fn=abs), num_warmup=1, num_samples=1, chain_method="parallel")
    B = agvi.get_backend()
    ld = lambda x: -B.sum(x ** 2)   # noqa: E731
    with pytest.raises(ValueError, match=r"step_size .* \(num_chains,\) = \(2,\)"):
        MCMC(NUTS(logdensity_fn=ld, step_size=np.ones(3)), num_warmup=1, num_samples=1,
             num_chains=2).run(0, init_params=np.zeros(2))
    with pytest.raises(ValueError, match=r"inverse_mass_matrix .* \(2, 2\) or \(2, 2, 2\)"):
        MCMC(NUTS(logdensity_fn=ld, dense_mass=True, inverse_mass_matrix=np.ones(2)),
             num_warmup=1, num_samples=1, num_chains=2).run(0, init_params=np.zeros(2))


def test_nonfinite_initial_point_names_the_coordinate(NP):
    B = NP

    def logdensity(p):    # log(b) needs b > 0
        return -0.5 * B.sum(p["a"] ** 2) + B.sum(B.log(p["b"])) - B.sum(p["b"])

    init = {"a": B.zeros(2), "b": B.asarray([1.0, -1.0, 2.0])}
    mcmc = MCMC(NUTS(logdensity_fn=logdensity), num_warmup=5, num_samples=5,
                progress_bar=False)
    with pytest.raises(ValueError, match=r"chain 0: the log density is non-finite \(nan\) and "
                       r"becomes finite when only this coordinate changes: coordinate b\[1\] "
                       r"\(flat index 3\) = -1\.0"):
        mcmc.run(B.key(0), init_params=init)
    with pytest.raises(ValueError, match="init_params is required"):
        MCMC(NUTS(logdensity_fn=logdensity), num_warmup=5, num_samples=5).run(B.key(0))
    # a finite log density with a non-finite gradient at the start
    kernel = NUTS(logdensity_fn=lambda x: -B.sum(B.sqrt(B.abs(x))))
    with pytest.raises(ValueError, match=r"gradient is non-finite.*x\[0\]"):
        MCMC(kernel, num_warmup=5, num_samples=5).run(B.key(0), init_params=B.zeros(2))


def test_uniform_init_strategy_retries_until_finite(NP):
    B = NP
    # finite only where every coordinate exceeds 1: a uniform(-2, 2) draw lands there with
    # probability 1/16 (two coordinates), so retries are needed
    def logdensity(x):
        return B.where(B.all(x > 1.0), -0.5 * B.sum((x - 1.5) ** 2), -math.inf)

    kernel = NUTS(logdensity_fn=logdensity, init_strategy="uniform")
    mcmc = MCMC(kernel, num_warmup=20, num_samples=5, num_chains=3, progress_bar=False)
    mcmc.run(B.key(1), init_params=B.zeros(2))
    assert np.all(B.to_numpy(mcmc.get_samples()) > 1.0)
    never = NUTS(logdensity_fn=lambda x: B.sum(x) - math.inf, init_strategy="uniform")
    with pytest.raises(ValueError, match="after 100 uniform"):
        MCMC(never, num_warmup=1, num_samples=1).run(B.key(0), init_params=B.zeros(2))


# ------------------------------------------------------------------------------ reporting
def test_divergences_and_nonfinite_values_are_counted_and_reported(NP, capsys):
    B = NP

    def funnel_with_hole(x):   # Neal's funnel, NaN beyond |z| > 4
        v, z = x[0], x[1:]
        lp = -v ** 2 / 18.0 - 0.5 * B.sum(z ** 2) * B.exp(-v) - 0.5 * (B.size(z)) * v
        return B.where(B.all(B.abs(z) < 4.0), lp, math.nan)

    kernel = NUTS(logdensity_fn=funnel_with_hole, step_size=1.5, adapt_step_size=False)
    mcmc = MCMC(kernel, num_warmup=20, num_samples=60, num_chains=2, progress_bar=False)
    mcmc.run(B.key(3), init_params=B.asarray([0.0, 0.5, -0.5]))
    extra = mcmc.get_extra_fields()
    divergent = int(B.to_numpy(extra["diverging"]).sum())
    assert divergent > 0
    assert int(B.to_numpy(extra["num_nonfinite"]).sum()) > 0
    mcmc.print_summary()
    out = capsys.readouterr().out
    assert f"Number of divergences after warmup: {divergent} of 120 (" in out
    assert "Gradient evaluations:" in out
    assert "non-finite log density or gradient, per chain" in out
    assert "x[2]" in out and "ess_bulk" in out
    assert np.all(np.isfinite(B.to_numpy(mcmc.get_samples())))


def test_gradient_evaluations_of_warmup_and_sampling_are_reported(NP, capsys):
    B = NP
    kernel = gaussian_kernel(B)
    # the oracle: the per-transition step counts of the same warmup, collected
    collected = MCMC(kernel, num_warmup=40, num_samples=30, num_chains=2, progress_bar=False)
    collected.warmup(B.key(5), init_params=B.zeros(3), collect_warmup=True)
    warmup_steps = int(B.to_numpy(collected.get_extra_fields()["num_steps"]).sum())
    assert warmup_steps > 0
    mcmc = MCMC(kernel, num_warmup=40, num_samples=30, num_chains=2, progress_bar=False)
    mcmc.run(B.key(5), init_params=B.zeros(3))
    sample_steps = int(B.to_numpy(mcmc.get_extra_fields()["num_steps"]).sum())
    assert sample_steps > 0
    expected = f"Gradient evaluations: {warmup_steps} in warmup, {sample_steps} in sampling"
    mcmc.print_summary()
    assert expected in capsys.readouterr().out
    # warmup() then run(): the same counts (the run continues from the post-warmup state)
    collected.run(B.key(5))
    collected.print_summary()
    assert expected in capsys.readouterr().out
    # a second run with warmup reports its own warmup
    mcmc.run(B.key(6), init_params=B.zeros(3))
    other = MCMC(kernel, num_warmup=40, num_samples=30, num_chains=2, progress_bar=False)
    other.warmup(B.key(6), init_params=B.zeros(3), collect_warmup=True)
    mcmc.print_summary()
    steps = int(B.to_numpy(other.get_extra_fields()["num_steps"]).sum())
    assert f"Gradient evaluations: {steps} in warmup, " in capsys.readouterr().out


def test_to_arviz(NP, monkeypatch):
    B = NP
    kernel = NUTS(logdensity_fn=lambda p: -0.5 * B.sum(p["mu"] ** 2))
    mcmc = MCMC(kernel, num_warmup=20, num_samples=10, num_chains=2, progress_bar=False)
    mcmc.run(B.key(0), init_params={"mu": B.zeros(3)})
    try:
        import arviz  # noqa: F401
    except ImportError:
        pass
    else:
        idata = mcmc.to_arviz()
        assert idata.posterior["mu"].shape == (2, 10, 3)
        assert "diverging" in idata.sample_stats
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        mcmc.to_arviz()


def test_ctrl_c_keeps_the_completed_chunks(NP, monkeypatch):
    B = NP
    compiled = MCMC._compiled

    def interrupting(self, B_, kind, num_chains, extra_fields=(), **options):
        fn = compiled(self, B_, kind, num_chains, extra_fields, **options)
        if kind != "chunk":
            return fn
        calls = {"sampling": 0}

        def chunk(carry, control, args):
            calls["sampling"] += int(control[2]) == 0    # not adapting: a sampling chunk
            if calls["sampling"] == 3:     # after 2 sampling chunks of 10 transitions: ^C
                raise KeyboardInterrupt
            return fn(carry, control, args)
        return chunk

    monkeypatch.setattr(MCMC, "_compiled", interrupting)
    mcmc = MCMC(gaussian_kernel(B), num_warmup=20, num_samples=50, num_chains=2,
                progress_bar=False, chunk_size=10)
    with pytest.warns(UserWarning, match="interrupted during sample"):
        mcmc.run(B.key(0), init_params=B.zeros(3))
    assert B.shape(mcmc.get_samples(group_by_chain=True)) == (2, 20, 3)
    assert B.shape(mcmc.get_extra_fields(group_by_chain=True)["accept_prob"]) == (2, 20)


def test_chunking_does_not_change_the_draws(B):
    """Chunks only group transitions: chunk sizes that cut the warmup windows and the thinned
    draws at different places give the same draws, step sizes and mass matrix (transition
    t of a phase always draws from fold_in(key, t))."""
    runs = []
    for chunk_size in (7, 100):
        mcmc = MCMC(gaussian_kernel(B), num_warmup=60, num_samples=20, num_chains=2,
                    thinning=3, progress_bar=False, chunk_size=chunk_size)
        mcmc.run(B.key(4), init_params=B.zeros(3))
        runs.append((B.to_numpy(mcmc.get_samples(group_by_chain=True)),
                     B.to_numpy(mcmc.get_extra_fields(group_by_chain=True)["step_size"]),
                     B.to_numpy(mcmc.adapted_params["inverse_mass_matrix"])))
    assert runs[0][0].shape == (2, 20, 3)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_chunk_plan_cuts_at_window_ends():
    """Chunks hold at most ``length`` transitions with the same adapt and slow flags, and a
    window's last transition is its chunk's last."""
    from agvi.infer.mcmc.adaptation import schedule_arrays, windowed_schedule
    from agvi.infer.mcmc.sampler import _chunk_plan
    flags = schedule_arrays(windowed_schedule(1000), 1000)
    flags["adapt"] = np.ones(1000, dtype=bool)
    plan = _chunk_plan(1000, 100, flags)
    starts, counts = plan[:, 0], plan[:, 1]
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    assert counts.sum() == 1000 and counts.max() <= 100
    # Stan's windows for 1000: 75 fast, slow 25, 50, 100, 200, 500, then 50 fast
    np.testing.assert_array_equal(starts[plan[:, 4] == 1] + counts[plan[:, 4] == 1],
                                  [100, 150, 250, 450, 950])
    for start, count, adapt, slow, _ in plan:
        assert adapt == 1 and (flags["slow"][start:start + count] == slow).all()
    sampling = {name: np.zeros(250, dtype=bool) for name in ("adapt", "slow", "window_end")}
    np.testing.assert_array_equal(_chunk_plan(250, 100, sampling)[:, :2],
                                  [[0, 100], [100, 100], [200, 50]])
    assert _chunk_plan(0, 100, sampling).shape == (0, 5)


def test_get_samples_before_run_raises():
    mcmc = MCMC(NUTS(logdensity_fn=abs), num_warmup=1, num_samples=1)
    with pytest.raises(RuntimeError, match="run"):
        mcmc.get_samples()
    with pytest.raises(RuntimeError, match="run"):
        _ = mcmc.adapted_params


# ------------------------------------------------------------------------------ compilation
def test_second_run_with_new_data_does_not_recompile():
    if "jax" not in agvi.backends.available_backends():
        pytest.skip("jax is not installed")
    wanted = os.environ.get("AGVI_TEST_BACKENDS", "").strip()
    if wanted and "jax" not in wanted.lower():
        pytest.skip("AGVI_TEST_BACKENDS leaves jax out")
    B = make_backend("jax", precision="float64", device=os.environ.get("AGVI_TEST_DEVICE") or None)
    traces = {"n": 0}

    def logdensity(x, scale):
        traces["n"] += 1                   # runs only while JAX traces
        return -0.5 * B.sum((x / scale) ** 2)

    with agvi.use_backend(B):
        kernel = NUTS(logdensity_fn=logdensity)
        mcmc = MCMC(kernel, num_warmup=30, num_samples=30, num_chains=2, progress_bar=False)
        mcmc.run(B.key(0), B.asarray(SD), init_params=B.zeros(3))
        first = traces["n"]
        assert first > 0
        mcmc.run(B.key(1), B.asarray(2 * SD), init_params=B.zeros(3))
        other = MCMC(kernel, num_warmup=50, num_samples=70, num_chains=2, progress_bar=False)
        other.run(B.key(2), B.asarray(3 * SD), init_params=B.ones(3))
        assert traces["n"] == first, "a second run with data of the same shape recompiled"
        draws = B.to_numpy(other.get_samples())
        assert draws.shape == (140, 3) and np.all(np.isfinite(draws))


def test_progress_bar_only_on_a_terminal(NP, monkeypatch):
    mcmc = MCMC(gaussian_kernel(NP), num_warmup=20, num_samples=20, progress_bar=True,
                chunk_size=10)
    quiet = io.StringIO()                       # not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", quiet)
    mcmc.run(0, init_params=NP.zeros(3))
    assert quiet.getvalue() == ""
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    mcmc.run(0, init_params=NP.zeros(3))
    text = terminal.getvalue()
    assert "warmup" in text and "sample" in text and "20/20" in text
    off = MCMC(gaussian_kernel(NP), num_warmup=20, num_samples=20, progress_bar=False)
    terminal.truncate(0)
    terminal.seek(0)
    off.run(0, init_params=NP.zeros(3))
    assert terminal.getvalue() == ""
