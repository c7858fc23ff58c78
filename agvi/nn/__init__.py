"""Bayesian neural networks from ordinary ones: :class:`Variationalize` (mean-field Gaussian
posterior over every weight), the weight priors of :mod:`agvi.nn.priors`, the dense layer with
local reparameterisation (:func:`dense`) and :func:`expected_calibration_error`.

Importing this package imports no framework; a ``torch.nn.Module`` is handled by
:mod:`agvi.backends.nn_interop` when one is passed.
"""

from . import priors
from .priors import (
    ConjugateKnownMeanPrior,
    ConjugatePrior,
    GammaPrecisionWeights,
    GaussianPrior,
    MixtureGaussianPrior,
    NormalGammaWeights,
    Prior,
    make_prior,
)
from .variationalize import (
    FitResult,
    GaussianWeight,
    Variationalize,
    dense,
    expected_calibration_error,
)

__all__ = [
    "ConjugateKnownMeanPrior", "ConjugatePrior", "FitResult", "GammaPrecisionWeights",
    "GaussianPrior", "GaussianWeight", "MixtureGaussianPrior", "NormalGammaWeights", "Prior",
    "Variationalize", "dense", "expected_calibration_error", "make_prior", "priors",
]
