"""Inference algorithms, public as ``agvi.infer`` (as ``numpyro.infer``): variational inference
(ELBOs, SVI, autoguides, functional losses, Predictive) and MCMC (HMC, NUTS, the MCMC driver and
diagnostics; building blocks in :mod:`agvi.infer.mcmc`)."""

from . import autoguide, losses, mcmc
from .autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from .elbo import ELBO, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from .initialization import init_to_median, init_to_sample, init_to_uniform, init_to_value
from .losses import (
    analytical_kl_divergence_loss,
    elbo_loss,
    elbo_path_derivative_loss,
    elbo_rb_score_function,
    elbo_score_function,
    hard_negative_mining,
    negative_log_prob,
    negative_log_prob_loss,
    vi_loss,
    vi_regularization,
)
from .mcmc import (
    HMC,
    MCMC,
    NUTS,
    effective_sample_size,
    mcse,
    print_summary,
    split_gelman_rubin,
    summary,
)
from .predictive import Predictive
from .svi import SVI, SVIRunResult, SVIState

__all__ = [
    "ELBO", "HMC", "MCMC", "NUTS", "SVI", "AutoDelta", "AutoDiagonalNormal",
    "AutoLaplaceApproximation", "AutoLowRankMultivariateNormal", "AutoMultivariateNormal",
    "AutoNormal", "Predictive", "RenyiELBO", "SVIRunResult", "SVIState", "TraceGraph_ELBO",
    "TraceMeanField_ELBO", "Trace_ELBO", "analytical_kl_divergence_loss", "autoguide",
    "effective_sample_size", "elbo_loss", "elbo_path_derivative_loss", "elbo_rb_score_function",
    "elbo_score_function", "hard_negative_mining", "init_to_median", "init_to_sample",
    "init_to_uniform", "init_to_value", "losses", "mcmc", "mcse", "negative_log_prob",
    "negative_log_prob_loss", "print_summary", "split_gelman_rubin", "summary", "vi_loss",
    "vi_regularization",
]

# Generalised VI for simulators (BlackBIRDS-style) and its posterior estimators.
from . import gvi, posterior_estimators  # noqa: E402
from .gvi import (  # noqa: E402
    GVI,
    GVIGradient,
    LossGradient,
    compute_and_differentiate_loss,
    compute_and_differentiate_loss_score,
    compute_loss_and_jacobian_pathwise,
    compute_regularisation_loss,
)
from .posterior_estimators import (  # noqa: E402
    AffineCouplingFlowEstimator,
    DiagonalGaussianEstimator,
    FullRankGaussianEstimator,
    PosteriorEstimator,
)

__all__ += [
    "GVI", "AffineCouplingFlowEstimator", "DiagonalGaussianEstimator", "FullRankGaussianEstimator",
    "GVIGradient", "LossGradient", "PosteriorEstimator", "compute_and_differentiate_loss",
    "compute_and_differentiate_loss_score", "compute_loss_and_jacobian_pathwise",
    "compute_regularisation_loss", "gvi", "posterior_estimators",
]
