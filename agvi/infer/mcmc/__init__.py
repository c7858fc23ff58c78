"""Markov chain Monte Carlo on every backend: HMC and NUTS kernels batched over chains.

Kernels follow BlackJAX's split: :mod:`.integrators` (leapfrog), :mod:`.metrics` (Gaussian
Euclidean kinetic energies), :mod:`.proposal` (multinomial, progressive and Metropolis
selection), :mod:`.termination` (generalised U-turn with iterative checkpoints), and the
transition kernels :mod:`.hmc` and :mod:`.nuts`, each with ``init`` / ``build_kernel``. Positions
have shape (C, d): one row per chain.
"""

from . import hmc, integrators, metrics, nuts, proposal, termination
from .hmc import HMCInfo, HMCNoise, HMCState
from .integrators import Integrator, IntegratorState, logdensity_and_grad_fn, velocity_verlet
from .metrics import EuclideanMetric, gaussian_euclidean
from .nuts import NUTSInfo, NUTSNoise

__all__ = [
    "EuclideanMetric", "HMCInfo", "HMCNoise", "HMCState", "Integrator", "IntegratorState",
    "NUTSInfo", "NUTSNoise", "gaussian_euclidean", "hmc", "integrators", "logdensity_and_grad_fn",
    "metrics", "nuts", "proposal", "termination", "velocity_verlet",
]

# The driver, adaptation, diagnostics and borch-style steps (part B).
from . import adaptation, borch, diagnostics, sampler  # noqa: E402
from .diagnostics import (  # noqa: E402
    effective_sample_size,
    mcse,
    print_summary,
    split_gelman_rubin,
    summary,
)
from .sampler import HMC, MCMC, NUTS, MCMCState  # noqa: E402

__all__ += [
    "HMC", "MCMC", "MCMCState", "NUTS", "adaptation", "borch", "diagnostics",
    "effective_sample_size", "mcse", "print_summary", "sampler", "split_gelman_rubin", "summary",
]
