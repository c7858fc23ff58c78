"""A differentiable discrete-time SIR epidemic simulator, for generalised VI.

Fractions of a closed population that are susceptible (``S``), infected (``I``) and recovered
(``R``) evolve in steps of length ``dt`` as a chain-binomial mean-field model (the expected
value of the Reed-Frost / chain-binomial epidemic)::

    new_infections = S_t * (1 - exp(-beta * I_t * dt))
    new_recoveries = I_t * (1 - exp(-gamma * dt))
    S_{t+1} = S_t - new_infections
    I_{t+1} = I_t + new_infections - new_recoveries
    R_{t+1} = R_t + new_recoveries

The exponential form keeps every compartment in [0, 1] for any positive rates (the forward
Euler form ``beta S I dt`` does not), and the map is smooth in ``(log beta, log gamma)``, so
the simulator has pathwise and forward-mode derivatives on every backend. The loop is a
:meth:`Backend.scan` (compiled on JAX).

The parameters are unconstrained, ``params = (log beta, log gamma)``; a Gaussian prior over them
is a log-normal prior over the rates. :func:`sir_loss` is a Gaussian negative log-likelihood of
observed (I, R) curves, and :data:`SPEC` registers the model (with synthetic data) as
``agvi.models.get_model("sir")``.

References
----------
Kermack, W. O. and McKendrick, A. G. (1927). A contribution to the mathematical theory of
epidemics. Proc. R. Soc. Lond. A 115, 700-721.
Abbey, H. (1952). An examination of the Reed-Frost theory of epidemics. Human Biology 24(3)
(the chain-binomial form ``1 - exp(-beta I dt)``).
Quera-Bofarull, A. et al. (2023). BlackBIRDS: Black-Box Inference foR Differentiable
Simulators. JOSS 8(89), 5776 (the SIR example of generalised VI for simulators).
"""

from __future__ import annotations

import math

import numpy as np

from ..backends import get_backend
from . import ModelSpec

__all__ = ["N_STEPS", "PRIOR_LOC", "PRIOR_SCALE", "SPEC", "TRUE_PARAMS", "load_data",
           "sir_loss", "sir_prior", "sir_prior_model", "simulate_sir"]

#: The parameters of the synthetic data set: (log beta, log gamma) = (log 0.5, log 0.1).
TRUE_PARAMS = (math.log(0.5), math.log(0.1))
#: Mean and standard deviation of the default Gaussian prior on (log beta, log gamma).
PRIOR_LOC = (math.log(0.3), math.log(0.2))
PRIOR_SCALE = (0.5, 0.5)
#: Length of the synthetic series (days).
N_STEPS = 50


def simulate_sir(params, n_steps: int, *, initial_infected: float = 0.01, dt: float = 1.0,
                 key=None, observation_noise: float = 0.0):
    """Simulate the discrete-time SIR model.

    Parameters
    ----------
    params : Array, shape (..., 2)
        ``(log beta, log gamma)``: log infection rate (per unit time, per infected fraction)
        and log recovery rate (per unit time). Leading axes simulate independent epidemics.
    n_steps : int
        Number of steps (the length of the returned series).
    initial_infected : float in (0, 1)
        ``I_0``; ``S_0 = 1 - I_0`` and ``R_0 = 0``.
    dt : float, > 0
        Step length.
    key : Array of shape (2,) or None
        With ``observation_noise > 0``: the key of the Gaussian observation noise.
    observation_noise : float, >= 0
        Standard deviation of additive Gaussian noise on the returned fractions (0: the
        deterministic trajectory, differentiable in ``params``).

    Returns
    -------
    Array, shape (..., n_steps, 2)
        The infected and recovered fractions ``(I_t, R_t)`` after steps ``t = 1..n_steps``.

    Raises
    ------
    ValueError
        If ``params`` does not end in an axis of length 2, ``n_steps`` is not a positive int,
        ``initial_infected`` is outside (0, 1), ``dt`` is not positive, or noise is requested
        without a key.
    """
    B = get_backend()
    if not B.is_array(params):
        params = B.asarray(params)
    shape = B.shape(params)
    if len(shape) < 1 or shape[-1] != 2:
        raise ValueError(f"simulate_sir: params must have shape (..., 2) = (log beta, log gamma),"
                         f" got shape {shape}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"simulate_sir: n_steps must be a positive int, got {n_steps!r}")
    if not 0.0 < initial_infected < 1.0:
        raise ValueError(f"simulate_sir: initial_infected must be in (0, 1), got "
                         f"{initial_infected!r}")
    if not dt > 0:
        raise ValueError(f"simulate_sir: dt must be positive, got {dt!r}")
    if observation_noise < 0:
        raise ValueError(f"simulate_sir: observation_noise must be >= 0, got "
                         f"{observation_noise!r}")
    if observation_noise > 0 and key is None:
        raise ValueError("simulate_sir: observation_noise > 0 needs a key")
    beta, gamma = B.exp(params[..., 0]), B.exp(params[..., 1])
    p_recover = -B.expm1(-gamma * dt)
    zero = B.zeros_like(beta)
    init = (zero + (1.0 - initial_infected), zero + initial_infected, zero)

    def step(carry, _):
        s, i, r = carry
        new_inf = -s * B.expm1(-beta * i * dt)
        new_rec = i * p_recover
        s, i, r = s - new_inf, i + new_inf - new_rec, r + new_rec
        return (s, i, r), (i, r)

    _, (infected, recovered) = B.scan(step, init, None, length=int(n_steps))
    # (n_steps, ...) twice -> (..., n_steps, 2); one stack at the end is cheaper than one per step
    out = B.moveaxis(B.stack([infected, recovered], axis=-1), 0, -2)
    if observation_noise > 0:
        out = out + observation_noise * B.normal(key, B.shape(out), dtype=B.dtype_of(out))
    return out


def sir_loss(params, data, *, sigma: float = 0.01, initial_infected: float = 0.01,
             dt: float = 1.0):
    """Gaussian negative log-likelihood (up to a constant) of observed SIR curves.

    ``0.5 * sum((simulate_sir(params) - data)^2) / sigma^2``: the mean squared error scaled by
    ``n / (2 sigma^2)``, so that with ``w = 1`` generalised VI is standard VI under additive
    Gaussian observation noise of standard deviation ``sigma``. Use :func:`functools.partial`
    to change the keyword settings of a loss passed to :class:`agvi.infer.GVI`.

    Parameters
    ----------
    params : Array, shape (2,)
        ``(log beta, log gamma)``.
    data : Array, shape (T, 2)
        Observed ``(I_t, R_t)`` for ``t = 1..T``.
    sigma : float, > 0
        Observation noise standard deviation (fractions of the population).
    initial_infected, dt : float
        As :func:`simulate_sir`.

    Returns
    -------
    Array, shape ()

    Raises
    ------
    ValueError
        If ``data`` is not of shape (T, 2) or ``sigma`` is not positive.
    """
    B = get_backend()
    if not B.is_array(data):
        data = B.asarray(data)
    shape = B.shape(data)
    if len(shape) != 2 or shape[1] != 2:
        raise ValueError(f"sir_loss: data must have shape (T, 2) (infected, recovered), got "
                         f"{shape}")
    if not sigma > 0:
        raise ValueError(f"sir_loss: sigma must be positive, got {sigma!r}")
    sim = simulate_sir(params, shape[0], initial_infected=initial_infected, dt=dt)
    diff = sim - data
    return 0.5 * B.sum(diff * diff) / sigma**2


def sir_prior(loc=PRIOR_LOC, scale=PRIOR_SCALE):
    """The default prior on ``(log beta, log gamma)``: independent Normals (event shape (2,)),
    built under the active backend."""
    from ..distributions import Normal

    B = get_backend()
    return Normal(B.asarray(np.asarray(loc, dtype=float)),
                  B.asarray(np.asarray(scale, dtype=float))).to_event(1)


def sir_prior_model():
    """The prior as an agvi model: one sample site ``"theta"`` of shape (2,)."""
    from ..handlers import sample

    return sample("theta", sir_prior())


def load_data(n_steps: int = N_STEPS, noise: float = 0.005, seed: int = 0):
    """Synthetic observations: the SIR curves at :data:`TRUE_PARAMS` plus Gaussian noise.

    Parameters
    ----------
    n_steps : int
    noise : float
        Standard deviation of the noise (drawn with NumPy's ``default_rng(seed)``, so the data
        are the same on every backend).
    seed : int

    Returns
    -------
    (args, kwargs)
        ``args = (data,)`` with ``data`` a NumPy array of shape (n_steps, 2); ``kwargs`` empty.
    """
    from ..backends import use_backend

    with use_backend("numpy", precision="float64") as B:
        clean = np.asarray(B.to_numpy(simulate_sir(np.asarray(TRUE_PARAMS), n_steps)))
    rng = np.random.default_rng(seed)
    return (clean + noise * rng.standard_normal(clean.shape),), {}


SPEC = ModelSpec(
    name="sir",
    model=sir_prior_model,
    load_data=load_data,
    description="SIR epidemic simulator calibrated with a loss (generalised VI)",
    methods=("gvi",),
    defaults={"num_steps": 500, "learning_rate": 0.05, "n_samples_per_epoch": 5},
    source="synthetic: simulate_sir at TRUE_PARAMS, N_STEPS days, noise sd 0.005, seed 0",
    reference={"theta[0]": {"mean": TRUE_PARAMS[0]}, "theta[1]": {"mean": TRUE_PARAMS[1]}},
    loss=sir_loss,
    extra={"prior": sir_prior, "dim": 2, "true_params": TRUE_PARAMS, "simulator": simulate_sir},
)
