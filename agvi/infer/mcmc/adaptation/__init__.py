"""Warmup adaptation for HMC and NUTS: step size and mass matrix, batched over chains.

- :mod:`.dual_averaging`: the step size by dual averaging (Hoffman and Gelman 2014, Alg. 6);
- :mod:`.step_size`: a first step size by doubling or halving (Hoffman and Gelman 2014, Alg. 4);
- :mod:`.welford`: streaming variance / covariance estimates with Stan's regularisation;
- :mod:`.windows`: Stan's windowed schedule (fast initial buffer, doubling slow windows, fast
  terminal buffer), built in Python.

The estimators are pure ``(init, update, final)`` triples over NamedTuple states, so that the
warmup loop of :class:`agvi.infer.mcmc.sampler.MCMC` compiles whole on JAX.
"""

from .dual_averaging import DualAveragingState, dual_averaging
from .step_size import find_reasonable_step_size
from .welford import WelfordState, welford_covariance, welford_variance
from .windows import AdaptationWindow, schedule_arrays, windowed_schedule

__all__ = [
    "AdaptationWindow", "DualAveragingState", "WelfordState", "dual_averaging",
    "find_reasonable_step_size", "schedule_arrays", "welford_covariance", "welford_variance",
    "windowed_schedule",
]
