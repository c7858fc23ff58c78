"""Generalised variational inference for models known only through a loss (simulators).

The generalised posterior of Knoblauch, Jewson and Damoulas (2022) is the solution of

    q* = argmin_{q in Q}  E_{theta ~ q}[loss(theta, data)] + w * D(q || prior),

which is standard VI (the negative ELBO) when ``loss`` is the negative log-likelihood, ``w = 1``
and ``D`` is the Kullback-Leibler divergence. Here ``D = KL`` (analytic when the table in
:mod:`agvi.distributions.kl` has the pair, otherwise Monte Carlo) and ``q`` is a
:mod:`~agvi.infer.posterior_estimators` estimator. The design follows BlackBIRDS
(Quera-Bofarull et al., 2023): the gradient of the expected loss is estimated either

- *pathwise*: ``theta_i = T(eps_i; phi)``; the per-sample Jacobian ``g_i = d loss / d theta``
  at ``theta_i`` is taken in forward or reverse mode (chunked, :meth:`Backend.jacobian`), and
  then chained through the reparameterisation as one vector-Jacobian product of
  ``phi -> (theta_1, ..., theta_n)`` with cotangents ``g_i / n``; or
- by the *score function* (REINFORCE): ``(1/n) sum_i (loss_i - b_i) grad_phi log q(theta_i)``
  with the leave-one-out baseline ``b_i`` (the mean of the other samples' losses), which keeps
  the estimator unbiased and equals the mean baseline scaled by ``n / (n - 1)``. The loss need
  not be differentiable.

Per-sample loss (and Jacobian) evaluations are independent, so they can be submitted to any
:class:`concurrent.futures.Executor` (a thread pool, or Dask / Ray / MPI pools for slow
simulators); the noise is drawn before submission, so an executor run equals the serial run draw
for draw. Samples whose loss or Jacobian is not finite are left out of the estimate, counted and
reported (``n_nonfinite``).

References
----------
Knoblauch, J., Jewson, J. and Damoulas, T. (2022). An optimization-centric view on Bayes' rule:
reviewing and generalizing variational inference. JMLR 23(132), 1-109.
Quera-Bofarull, A., Dyer, J., Calinescu, A., Farmer, J. D. and Wooldridge, M. (2023).
BlackBIRDS: Black-Box Inference foR Differentiable Simulators. JOSS 8(89), 5776.
Williams, R. J. (1992). Simple statistical gradient-following algorithms for connectionist
reinforcement learning. Machine Learning 8, 229-256 (score function).
Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo gradient estimation in
machine learning. JMLR 21(132) (pathwise and score estimators, baselines).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from ..backends import get_backend, use_backend
from .posterior_estimators import PosteriorEstimator
from .progress import progress_bar as make_progress_bar

__all__ = [
    "GVI", "GVIGradient", "LossGradient", "compute_and_differentiate_loss",
    "compute_and_differentiate_loss_score", "compute_loss_and_jacobian_pathwise",
    "compute_regularisation_loss",
]

_METHODS = ("pathwise", "score")
_FORWARD_LOCK = threading.Lock()
_MODES = ("reverse", "forward")


class LossGradient(NamedTuple):
    """The Monte Carlo estimate of ``E_q[loss]`` and of its gradient in the estimator's params.

    Attributes
    ----------
    loss : Array, shape ()
        Mean of the finite per-sample losses (``nan`` when none is finite).
    grads : pytree of Arrays
        The gradient estimate, with the structure and shapes of the estimator's params.
    n_nonfinite : int
        How many samples were left out for a non-finite loss (or Jacobian).
    per_sample_losses : Array, shape (n,)
        Every sample's loss, dropped ones included.
    samples : Array, shape (n, d)
        The draws ``theta_i`` (no gradient).
    jacobians : Array, shape (n, d), or None
        ``d loss / d theta`` at each draw (pathwise only).
    """

    loss: Any
    grads: Any
    n_nonfinite: int
    per_sample_losses: Any
    samples: Any
    jacobians: Any


class GVIGradient(NamedTuple):
    """The generalised-VI objective and its gradient.

    Attributes
    ----------
    total : Array, shape ()
        ``loss + w * regularisation``.
    loss : Array, shape ()
        The estimate of ``E_q[loss(theta, data)]`` over finite samples.
    regularisation : Array, shape ()
        ``KL(q || prior)`` (analytic, or a Monte Carlo estimate).
    grads : pytree of Arrays
        Gradient of ``total`` in the estimator's params.
    n_nonfinite : int
        Samples left out of the loss estimate.
    """

    total: Any
    loss: Any
    regularisation: Any
    grads: Any
    n_nonfinite: int


# ----------------------------------------------------------------------------- helpers
def _as_key(B, key):
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return B.key(int(key))
    if key is None:
        raise ValueError("key must be an int seed or a key Array of shape (2,), got None")
    return key


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_estimator(estimator, B, where):
    if not isinstance(estimator, PosteriorEstimator):
        raise TypeError(f"{where}: posterior_estimator must be an "
                        "agvi.infer.posterior_estimators.PosteriorEstimator (e.g. "
                        f"DiagonalGaussianEstimator), got {type(estimator).__name__}")
    if estimator.B.name != B.name:
        raise ValueError(f"{where}: the posterior estimator was built under the "
                         f"{estimator.B.name!r} backend but the active one is {B.name!r}; build "
                         "everything inside one agvi.use_backend(...) block")


def _prepare_prior(prior, dim, where):
    """The prior as a distribution with event shape (dim,) and no batch shape."""
    from ..distributions import Distribution

    if not isinstance(prior, Distribution):
        raise TypeError(f"{where}: prior must be an agvi Distribution over R^{dim}, got "
                        f"{type(prior).__name__}")
    if tuple(prior.event_shape) == () and tuple(prior.batch_shape) == (dim,):
        prior = prior.to_event(1)
    if tuple(prior.event_shape) != (dim,) or tuple(prior.batch_shape) != ():
        raise ValueError(f"{where}: prior must have event_shape ({dim},) and no batch shape "
                         f"(or batch_shape ({dim},), which is reinterpreted as the event), got "
                         f"batch_shape {prior.batch_shape} and event_shape {prior.event_shape}")
    return prior


def _analytic_kl_available(estimator, prior) -> bool:
    """Whether KL(q || prior) has a registered closed form for this estimator's family."""
    from ..distributions import kl_divergence

    q = estimator.to_distribution()
    if q is None:
        return False
    try:
        with use_backend(estimator.B):
            kl_divergence(q, prior)
    except NotImplementedError:
        return False
    return True


def _regularisation(estimator, prior, params, key, n_samples, analytic):
    """``KL(q_params || prior)``: analytic, or the pathwise Monte Carlo estimate
    ``mean(log q(theta) - log prior(theta))`` over ``n_samples`` draws from ``key``."""
    B = estimator.B
    if analytic:
        from ..distributions import kl_divergence

        return B.reshape(kl_divergence(estimator.to_distribution(params), prior), ())
    theta, log_q = estimator.sample_with(params, key, n_samples)
    return B.mean(log_q - prior.log_prob(theta))


class _SampleEvaluator:
    """Evaluates one sample: ``theta (d,) -> loss ()`` or ``-> (loss (), d loss/d theta (d,))``.

    A picklable callable (for process-based executors: the loss, the data and the backend must
    then pickle too); it activates its backend itself, since executor threads do not inherit
    the caller's :func:`agvi.use_backend` context.
    """

    def __init__(self, B, loss, with_jacobian, diff_mode, chunk_size, jit):
        self.B, self.loss, self.with_jacobian = B, loss, bool(with_jacobian)
        self.diff_mode, self.chunk_size, self.jit = diff_mode, chunk_size, bool(jit)
        self._build()

    def _build(self):
        B, loss = self.B, self.loss

        def value(theta, data):
            out = loss(theta, data)
            if not B.is_array(out):
                out = B.asarray(out)
            if B.size(out) != 1:
                raise ValueError(f"loss(params, data) must return a scalar, got shape "
                                 f"{B.shape(out)}")
            return B.reshape(out, ())

        if self.with_jacobian and self.diff_mode == "reverse":
            # The reverse-mode Jacobian of a scalar is its gradient: one backward pass (chunking
            # has nothing to split), through the backend's fastest gradient path.
            def fn(theta, data):
                out, jac = B.value_and_grad(lambda t: value(t, data))(theta)
                return B.stop_gradient(out), B.reshape(jac, B.shape(theta))
        elif self.with_jacobian:
            def fn(theta, data):
                def f(t):
                    out = value(t, data)
                    return out, out

                jac, out = B.jacobian(f, mode="forward", chunk_size=self.chunk_size,
                                      has_aux=True)(theta)
                return B.stop_gradient(out), B.reshape(jac, B.shape(theta))
        else:
            def fn(theta, data):
                return B.stop_gradient(value(theta, data))

        self._fn = B.jit(fn) if self.jit else fn

    def __call__(self, theta, data):
        with use_backend(self.B):
            if self.with_jacobian and self.diff_mode == "forward":
                # torch's forward-AD levels are process-global, so concurrent JVPs in threads
                # corrupt each other: forward-mode samples run one at a time per process (a
                # process- or cluster-based executor still runs them in parallel).
                with _FORWARD_LOCK:
                    return self._fn(theta, data)
            return self._fn(theta, data)

    def __getstate__(self):
        # Backends hold framework functions (not all picklable): ship a (name, precision,
        # device) spec and rebuild the backend in the worker.
        state = dict(self.__dict__)
        state.pop("_fn", None)
        B = state.pop("B")
        state["_backend_spec"] = (B.name, B.precision, B.device)
        return state

    def __setstate__(self, state):
        from ..backends import make_backend

        name, precision, device = state.pop("_backend_spec")
        self.__dict__.update(state)
        self.B = make_backend(name, precision=precision, device=device)
        self._build()


class _Engine:
    """The pieces of one GVI gradient: sampling, per-sample evaluation, the surrogate whose
    gradient is the estimator, and the regularisation. Compiled once (``jit``) and reused by
    :class:`GVI`; the public functions build a fresh one per call."""

    def __init__(self, B, loss, estimator, prior, *, n_samples, n_samples_regularisation, w,
                 method, diff_mode, chunk_size, executor, jit, where, compile_all=True):
        if not callable(loss):
            raise TypeError(f"{where}: loss must be callable loss(params, data) -> scalar, got "
                            f"{type(loss).__name__}")
        if method not in _METHODS:
            raise ValueError(f"{where}: gradient_estimation_method must be 'pathwise' or "
                             f"'score', got {method!r}")
        if diff_mode not in _MODES:
            raise ValueError(f"{where}: diff_mode must be 'reverse' or 'forward', got "
                             f"{diff_mode!r}")
        if chunk_size is not None:
            _check_positive_int(chunk_size, "jacobian_chunk_size")
        if executor is not None and not hasattr(executor, "submit"):
            raise TypeError(f"{where}: executor must be a concurrent.futures.Executor (with "
                            f"submit), got {type(executor).__name__}")
        _check_estimator(estimator, B, where)
        self.B, self.estimator, self.executor = B, estimator, executor
        self.n = _check_positive_int(n_samples, "n_samples")
        self.n_reg = _check_positive_int(n_samples_regularisation, "n_samples_regularisation")
        self.w = float(w)
        if not math.isfinite(self.w) or self.w < 0:
            raise ValueError(f"{where}: w must be a finite non-negative float, got {w!r}")
        self.method = method
        self.prior = None if prior is None else _prepare_prior(prior, estimator.dim, where)
        self.analytic = (self.prior is not None
                         and _analytic_kl_available(estimator, self.prior))
        self.evaluator = _SampleEvaluator(B, loss, method == "pathwise", diff_mode, chunk_size,
                                          jit)
        # The per-sample evaluator runs n times per call: compile it whenever jit is asked for.
        # The sampler and the gradient run once per call: compiling them pays off only when the
        # engine is reused (GVI), not in a one-off public call.
        jit_ = B.jit if (jit and compile_all) else (lambda f: f)
        n, est = self.n, estimator

        def sample(params, key):
            return B.stop_gradient(est.sample_with(params, key, n)[0])

        def reg(params, key):
            return _regularisation(est, self.prior, params, key, self.n_reg, self.analytic)

        def loss_surrogate(params, key, theta, coeff):
            # Its gradient is the estimator: pathwise sum_i <coeff_i, d theta_i / d phi>
            # (a VJP with cotangents coeff); score sum_i coeff_i grad log q(theta_i).
            if method == "pathwise":
                return B.sum(coeff * est.sample_with(params, key, n)[0])
            return B.sum(coeff * est.log_prob_with(params, theta))

        def total_surrogate(params, key, theta, coeff, key_reg):
            r = reg(params, key_reg)
            return loss_surrogate(params, key, theta, coeff) + self.w * r, r

        self._sample = jit_(sample)
        self._loss_grad = jit_(B.grad(loss_surrogate))
        self._total_grad = jit_(B.grad(total_surrogate, has_aux=True))
        self._reg_value_and_grad = jit_(B.value_and_grad(reg))

    # -- per-sample evaluations -----------------------------------------------------------------
    def evaluate(self, theta, data):
        """Evaluate every row of ``theta`` (n, d), serially or on the executor, in order.

        Returns host (NumPy) arrays: losses (n,), Jacobians (n, d) or None, and the finite mask
        (n,). The per-sample results are gathered on the host: it costs one small transfer
        each, and avoids compiling an n-way stack on JAX.
        """
        B = self.B
        rows = list(theta)
        if self.executor is None:
            results = [self.evaluator(r, data) for r in rows]
        else:
            futures = [self.executor.submit(self.evaluator, r, data) for r in rows]
            results = [f.result() for f in futures]
        if self.method == "pathwise":
            losses = np.array([np.asarray(B.to_numpy(r[0])) for r in results], dtype=float)
            jacs = np.stack([np.asarray(B.to_numpy(r[1])) for r in results]).astype(float)
            finite = np.isfinite(losses) & np.all(np.isfinite(jacs), axis=-1)
        else:
            losses = np.array([np.asarray(B.to_numpy(r)) for r in results], dtype=float)
            jacs = None
            finite = np.isfinite(losses)
        return losses, jacs, finite

    def coefficients(self, losses, jacs, finite):
        """The surrogate's coefficients (an Array: (n, d) pathwise, (n,) score), the loss
        estimate (a float) and the number of dropped samples, from host arrays."""
        n_valid = int(finite.sum())
        safe = np.where(finite, losses, 0.0)
        loss = float(safe.sum() / n_valid) if n_valid else math.nan
        if self.method == "pathwise":
            coeff = np.where(finite[:, None], np.nan_to_num(jacs), 0.0) / max(n_valid, 1)
        else:
            # leave-one-out baseline: l_i - mean_{j != i} l_j = n/(n-1) (l_i - mean)
            centred = (safe - loss) * (n_valid / (n_valid - 1)) if n_valid >= 2 else safe
            coeff = np.where(finite, centred, 0.0) / max(n_valid, 1)
        return self.B.asarray(coeff), loss, self.n - n_valid

    def _as_arrays(self, losses, jacs):
        B = self.B
        return B.asarray(losses), (None if jacs is None else B.asarray(jacs))

    def loss_gradient(self, params, key, data) -> LossGradient:
        B = self.B
        theta = self._sample(params, key)
        losses, jacs, finite = self.evaluate(theta, data)
        coeff, loss, n_bad = self.coefficients(losses, jacs, finite)
        grads = self._loss_grad(params, key, theta, coeff)
        losses, jacs = self._as_arrays(losses, jacs)
        return LossGradient(B.asarray(loss), grads, n_bad, losses, theta, jacs)

    def total_gradient(self, params, key, data) -> GVIGradient:
        B = self.B
        keys = B.split(key, 2)
        k_samples, k_reg = keys[0], keys[1]
        theta = self._sample(params, k_samples)
        losses, jacs, finite = self.evaluate(theta, data)
        coeff, loss, n_bad = self.coefficients(losses, jacs, finite)
        grads, reg = self._total_grad(params, k_samples, theta, coeff, k_reg)
        reg = B.stop_gradient(reg)
        loss = B.asarray(loss)
        return GVIGradient(loss + self.w * reg, loss, reg, grads, n_bad)


# ----------------------------------------------------------------------------- public functions
def compute_regularisation_loss(posterior_estimator, prior, n_samples: int = 10000, *,
                                key=None, params=None):
    """``KL(q || prior)`` of a posterior estimator, analytic where the KL table has the pair.

    Parameters
    ----------
    posterior_estimator : PosteriorEstimator
        ``q`` over ``R^d``.
    prior : Distribution
        Event shape ``(d,)`` (or batch shape ``(d,)``, reinterpreted as the event).
    n_samples : int
        Draws of the Monte Carlo estimate ``mean(log q(theta) - log prior(theta))``, used when
        no closed form is registered (flows, non-Gaussian priors).
    key : int, Array of shape (2,), or None
        Random key of the Monte Carlo estimate (unused by the analytic form).
    params : pytree of Arrays or None
        The estimator's params (default its current :attr:`~PosteriorEstimator.params`); the
        result is differentiable in them (pathwise for the Monte Carlo form).

    Returns
    -------
    Array, shape ()
        In nats.

    Raises
    ------
    TypeError
        If ``posterior_estimator`` or ``prior`` has the wrong type.
    ValueError
        If the shapes do not match, ``n_samples`` is not a positive int, or the Monte Carlo form
        is needed and ``key`` is None.

    References
    ----------
    Knoblauch, Jewson and Damoulas (2022), section 2 (the divergence term of the generalised
    posterior).
    """
    B = posterior_estimator.B if isinstance(posterior_estimator, PosteriorEstimator) \
        else get_backend()
    with use_backend(B):
        _check_estimator(posterior_estimator, B, "compute_regularisation_loss")
        prior = _prepare_prior(prior, posterior_estimator.dim, "compute_regularisation_loss")
        n_samples = _check_positive_int(n_samples, "n_samples")
        analytic = _analytic_kl_available(posterior_estimator, prior)
        if not analytic and key is None:
            raise ValueError("compute_regularisation_loss: no analytic KL is registered for "
                             f"{type(posterior_estimator).__name__} against "
                             f"{type(prior).__name__}; pass key= for the Monte Carlo estimate")
        key = None if analytic else _as_key(B, key)
        params = posterior_estimator.params if params is None else params
        return _regularisation(posterior_estimator, prior, params, key, n_samples, analytic)


def compute_loss_and_jacobian_pathwise(loss, posterior_estimator, data, key, n_samples: int = 5,
                                       *, params=None, diff_mode: str = "reverse",
                                       jacobian_chunk_size: int | None = None, executor=None,
                                       jit: bool = True) -> LossGradient:
    """Pathwise (reparameterisation) estimate of ``E_q[loss]`` and its gradient.

    Draws ``theta_i = T(eps_i; phi)`` (``i = 1..n``), evaluates ``loss(theta_i, data)`` and its
    Jacobian ``g_i = d loss / d theta`` at each draw (one forward/reverse-mode
    :meth:`Backend.jacobian` per sample, chunked), drops samples whose loss or Jacobian is not
    finite, and chains the rest through the reparameterisation: the gradient is the VJP of
    ``phi -> (theta_1..theta_n)`` with cotangents ``g_i / n_valid``.

    Parameters
    ----------
    loss : callable
        ``loss(theta, data) -> scalar`` with ``theta`` an Array of shape (d,); differentiable
        in ``theta`` on the active backend.
    posterior_estimator : PosteriorEstimator
    data : pytree of Arrays, or any object the loss accepts (a pytree of Arrays under
        ``jit``).
    key : int or Array, shape (2,)
    n_samples : int
    params : pytree of Arrays or None
        Estimator params (default its current ones).
    diff_mode : {"reverse", "forward"}
        How the per-sample Jacobian of the loss is taken: reverse mode costs one backward pass;
        forward mode ``d`` JVPs (pushed ``jacobian_chunk_size`` at a time), and differentiates
        through code reverse mode cannot (e.g. ``while_loop`` on JAX).
    jacobian_chunk_size : int or None
        Basis vectors per vectorised JVP/VJP (None: all at once).
    executor : concurrent.futures.Executor or None
        Where the per-sample evaluations run (None: serially, in this thread). Results are
        identical either way. Forward-mode evaluations run one at a time within a process
        (torch's forward-AD state is process-global); process-based executors parallelise them.
    jit : bool
        Compile the per-sample function where the backend compiles (JAX; a no-op elsewhere).
        The loss must then be traceable (``B.cond`` / ``B.scan`` rather than Python branches on
        values); pass False otherwise. It is compiled afresh on every call; :class:`GVI`
        compiles it (and the sampler, the gradient and the optimiser step) once.

    Returns
    -------
    LossGradient
        ``samples`` and ``jacobians`` have shape (n, d), ``per_sample_losses`` (n,).

    Raises
    ------
    TypeError
        If ``loss`` is not callable, the estimator or executor has the wrong type.
    ValueError
        For an unknown ``diff_mode``, a non-positive ``n_samples`` or chunk size, or a loss
        that does not return a scalar.

    References
    ----------
    Quera-Bofarull et al. (2023), BlackBIRDS (per-sample Jacobians chained through the
    reparameterisation); Kingma and Welling (2014), "Auto-encoding variational Bayes".
    """
    B = get_backend()
    with use_backend(B):
        eng = _Engine(B, loss, posterior_estimator, None, n_samples=n_samples,
                      n_samples_regularisation=1, w=0.0, method="pathwise", diff_mode=diff_mode,
                      chunk_size=jacobian_chunk_size, executor=executor, jit=jit,
                      where="compute_loss_and_jacobian_pathwise", compile_all=False)
        params = posterior_estimator.params if params is None else params
        return eng.loss_gradient(params, _as_key(B, key), data)


def compute_and_differentiate_loss_score(loss, posterior_estimator, data, key,
                                         n_samples: int = 5, *, params=None, executor=None,
                                         jit: bool = True) -> LossGradient:
    """Score-function (REINFORCE) estimate of ``E_q[loss]`` and its gradient.

    ``grad = (1 / n_valid) sum_i (loss_i - b_i) grad_phi log q_phi(theta_i)`` over the samples
    with a finite loss, ``theta_i`` drawn without gradient and ``b_i`` the leave-one-out
    baseline (the mean loss of the other valid samples; none when only one is valid). The
    baseline lowers the variance and keeps the estimate unbiased; it equals the mean baseline
    times ``n_valid / (n_valid - 1)``.

    Parameters
    ----------
    loss : callable
        ``loss(theta, data) -> scalar``, ``theta`` of shape (d,); need not be differentiable.
    posterior_estimator : PosteriorEstimator
    data : any
    key : int or Array, shape (2,)
    n_samples : int
    params : pytree of Arrays or None
    executor : concurrent.futures.Executor or None
    jit : bool

    Returns
    -------
    LossGradient
        ``jacobians`` is None.

    Raises
    ------
    TypeError, ValueError
        As :func:`compute_loss_and_jacobian_pathwise`.

    References
    ----------
    Williams (1992); Mohamed, Rosca, Figurnov and Mnih (2020), section 4 (score function with
    baselines); Quera-Bofarull et al. (2023), BlackBIRDS.
    """
    B = get_backend()
    with use_backend(B):
        eng = _Engine(B, loss, posterior_estimator, None, n_samples=n_samples,
                      n_samples_regularisation=1, w=0.0, method="score", diff_mode="reverse",
                      chunk_size=None, executor=executor, jit=jit,
                      where="compute_and_differentiate_loss_score", compile_all=False)
        params = posterior_estimator.params if params is None else params
        return eng.loss_gradient(params, _as_key(B, key), data)


def compute_and_differentiate_loss(loss, posterior_estimator, prior, data, key, *,
                                   params=None, n_samples: int = 5,
                                   n_samples_regularisation: int = 10000, w: float = 1.0,
                                   gradient_estimation_method: str = "pathwise",
                                   diff_mode: str = "reverse",
                                   jacobian_chunk_size: int | None = None, executor=None,
                                   jit: bool = True) -> GVIGradient:
    """The generalised-VI objective ``E_q[loss] + w KL(q || prior)`` and its gradient.

    ``key`` is split into a key for the loss samples and one for the (Monte Carlo)
    regularisation; the loss part is estimated as in :func:`compute_loss_and_jacobian_pathwise`
    or :func:`compute_and_differentiate_loss_score`, the regularisation as in
    :func:`compute_regularisation_loss` (its gradient pathwise), and both gradients come from
    one differentiation of a surrogate.

    Parameters
    ----------
    loss, posterior_estimator, data, key, params, executor, jit
        As :func:`compute_loss_and_jacobian_pathwise`.
    prior : Distribution
        Event shape ``(d,)``.
    n_samples : int
        Samples of the loss estimate.
    n_samples_regularisation : int
        Samples of the Monte Carlo KL (when no analytic form is registered).
    w : float, >= 0
        Weight of the divergence.
    gradient_estimation_method : {"pathwise", "score"}
    diff_mode : {"reverse", "forward"}
    jacobian_chunk_size : int or None

    Returns
    -------
    GVIGradient

    Raises
    ------
    TypeError, ValueError
        For arguments of the wrong type or value (the message names the argument).

    References
    ----------
    Knoblauch, Jewson and Damoulas (2022), eq. (7) (the generalised variational objective);
    Quera-Bofarull et al. (2023), BlackBIRDS.
    """
    B = get_backend()
    with use_backend(B):
        eng = _Engine(B, loss, posterior_estimator, prior, n_samples=n_samples,
                      n_samples_regularisation=n_samples_regularisation, w=w,
                      method=gradient_estimation_method, diff_mode=diff_mode,
                      chunk_size=jacobian_chunk_size, executor=executor, jit=jit,
                      where="compute_and_differentiate_loss", compile_all=False)
        params = posterior_estimator.params if params is None else params
        return eng.total_gradient(params, _as_key(B, key), data)


# ----------------------------------------------------------------------------- the trainer
def _scheduler_transformation(scheduler, B):
    """A transformation multiplying the updates by the scheduler's current value."""
    from ..optim import GradientTransformation, ReduceLROnPlateau, scale_by_schedule

    if isinstance(scheduler, ReduceLROnPlateau):
        def init(params):
            return scheduler.init_state()

        def update(grads, state, params, value):
            updates = B.tree_map(lambda g: B.astype(state.lr, B.dtype_of(g)) * g, grads)
            return updates, scheduler.next_state(state, value)

        return GradientTransformation(init, update, B, name="plateau_factor")
    if callable(scheduler):
        return scale_by_schedule(scheduler, B)
    raise TypeError("scheduler must be an agvi.optim schedule (a callable of the step count) or "
                    f"an agvi.optim.ReduceLROnPlateau, got {type(scheduler).__name__}")


def _build_optimizer(optimizer, scheduler, clip_norm, B):
    from ..optim import Adam, GradientTransformation, Optimizer, chain, clip_by_global_norm

    if optimizer is None:
        optimizer = Adam(1e-3, backend=B)
    elif isinstance(optimizer, GradientTransformation):
        optimizer = Optimizer(optimizer)
    elif not all(hasattr(optimizer, a) for a in ("init", "update", "get_params")):
        raise TypeError("optimizer must be an agvi.optim optimiser (init / update / get_params) "
                        f"or a GradientTransformation, got {type(optimizer).__name__}")
    clip = clip_norm is not None and math.isfinite(clip_norm)
    if clip and not clip_norm > 0:
        raise ValueError(f"gradient_clipping_norm must be positive (or inf for none), got "
                         f"{clip_norm!r}")
    if not clip and scheduler is None:
        return optimizer
    tx = getattr(optimizer, "transformation", None)
    if not isinstance(tx, GradientTransformation):
        raise TypeError("gradient_clipping_norm and scheduler need an agvi.optim optimiser "
                        f"(chainable); {type(optimizer).__name__} is not")
    parts = ([clip_by_global_norm(clip_norm, B)] if clip else []) + [tx]
    if scheduler is not None:
        parts.append(_scheduler_transformation(scheduler, B))
    return Optimizer(chain(*parts, backend=B))


class GVI:
    """Generalised variational inference trainer (BlackBIRDS' ``Calibrator`` surface).

    Minimises ``E_{theta ~ q}[loss(theta, data)] + w * KL(q || prior)`` over the parameters of
    ``posterior_estimator`` by stochastic gradients (one step per "epoch", each with
    ``n_samples_per_epoch`` loss samples).

    Parameters
    ----------
    loss : callable
        ``loss(theta, data) -> scalar``; ``theta`` is an Array of shape (d,). Pathwise gradients
        need it differentiable in ``theta`` on the active backend; with ``jit`` (default) it must
        also be traceable on JAX (use ``B.scan`` / ``B.cond`` rather than Python branches on
        values).
    prior : Distribution
        Event shape ``(d,)`` (or batch shape ``(d,)``).
    posterior_estimator : PosteriorEstimator
        Trained in place: its ``params`` are replaced after every step.
    w : float, >= 0
        Weight of the divergence (1 with a negative log-likelihood loss: standard VI).
    initialize_estimator_to_prior : bool
        Call :meth:`initialize_estimator` at the start of the first :meth:`run`.
    initialization_lr : float
        Adam step size of :meth:`initialize_estimator`.
    gradient_clipping_norm : float
        Clip the gradient's global norm (``math.inf``: no clipping), with
        :func:`agvi.optim.clip_by_global_norm` chained before the optimiser.
    optimizer : agvi.optim Optimizer or GradientTransformation or None
        Default ``Adam(1e-3)``.
    scheduler : schedule, ReduceLROnPlateau or None
        A factor multiplying the optimiser's step: a callable of the step count (e.g.
        ``agvi.optim.exponential_decay(1.0, 100, 0.5)``) or a
        :class:`~agvi.optim.ReduceLROnPlateau` (build it with ``init_lr=1.0``), which reads the
        total loss of each step, as ``torch.optim.lr_scheduler`` multiplies the optimiser's lr.
    n_samples_per_epoch : int
        Loss samples per step.
    n_samples_regularisation : int
        Samples of the Monte Carlo KL (when no analytic form is registered).
    diff_mode : {"reverse", "forward"}
        Mode of the per-sample Jacobian of the loss (pathwise only).
    gradient_estimation_method : {"pathwise", "score"}
    jacobian_chunk_size : int or None
        Basis vectors per vectorised JVP/VJP of the per-sample Jacobian.
    device : str or None
        Move the estimator's params and the data's Arrays there (build the prior under
        ``agvi.use_backend(..., device=...)`` too).
    progress_bar : bool
        A ``tqdm`` bar over epochs.
    progress_info : bool
        Show loss, regularisation, best, stall (epochs since the best) and non-finite counts on
        the bar.
    log_tensorboard : bool
        Write the scalars ``loss/total``, ``loss/loss``, ``loss/regularisation`` and
        ``n_nonfinite`` each epoch with ``tensorboardX`` (imported only then).
    tensorboard_log_dir : str or None
        The log directory (default tensorboardX's ``runs/...``).
    save_path : str or None
        A directory; ``best_estimator.npz`` (on every improvement) and ``last_estimator.npz``
        (every epoch) are written there with :meth:`PosteriorEstimator.save`.
    executor : concurrent.futures.Executor or None
        Per-sample loss and Jacobian evaluations are submitted to it (a thread pool, or a
        Dask / Ray / MPI executor whose workers can unpickle the loss, the data and the
        backend). Results equal the serial run draw for draw. Within one process, forward-mode
        evaluations run one at a time (torch's forward-AD state is process-global); on the
        NumPy backend, thread pools are safe for losses that do not nest derivatives
        (autograd's trace counter is global).
    key : int or Array, shape (2,)
        Seed of the trainer's random stream.
    jit : bool
        Compile the per-sample loss/Jacobian, the sampler, the gradient and the optimiser step
        where the backend compiles (JAX); set False for losses that cannot be traced.

    Attributes
    ----------
    history : list of dict
        One record per epoch: ``epoch``, ``total``, ``loss``, ``regularisation`` (floats) and
        ``n_nonfinite`` (int).
    best_params, best_loss
        The params with the lowest total loss seen by :meth:`run`, and that loss.

    Raises
    ------
    TypeError
        If ``loss`` is not callable, or the estimator, prior, optimiser, scheduler or executor
        has the wrong type.
    ValueError
        For out-of-range values (the message names the argument).
    ImportError
        If ``log_tensorboard`` is set and tensorboardX is not installed.

    References
    ----------
    Knoblauch, J., Jewson, J. and Damoulas, T. (2022). An optimization-centric view on Bayes'
    rule. JMLR 23(132).
    Quera-Bofarull, A. et al. (2023). BlackBIRDS: Black-Box Inference foR Differentiable
    Simulators. JOSS 8(89), 5776.
    """

    def __init__(self, loss, prior, posterior_estimator, *, w: float = 1.0,
                 initialize_estimator_to_prior: bool = False, initialization_lr: float = 1e-3,
                 gradient_clipping_norm: float = math.inf, optimizer=None, scheduler=None,
                 n_samples_per_epoch: int = 10, n_samples_regularisation: int = 10000,
                 diff_mode: str = "reverse", gradient_estimation_method: str = "pathwise",
                 jacobian_chunk_size: int | None = None, device: str | None = None,
                 progress_bar: bool = True, progress_info: bool = True,
                 log_tensorboard: bool = False, tensorboard_log_dir: str | None = None,
                 save_path: str | None = None, executor=None, key=0, jit: bool = True):
        B = posterior_estimator.B if isinstance(posterior_estimator, PosteriorEstimator) \
            else get_backend()
        self.B = B
        with use_backend(B):
            if prior is None:
                raise TypeError("GVI: prior must be an agvi Distribution, got None")
            self._engine = _Engine(
                B, loss, posterior_estimator, prior, n_samples=n_samples_per_epoch,
                n_samples_regularisation=n_samples_regularisation, w=w,
                method=gradient_estimation_method, diff_mode=diff_mode,
                chunk_size=jacobian_chunk_size, executor=executor, jit=jit, where="GVI")
            self.loss, self.prior = loss, self._engine.prior
            self.posterior_estimator = posterior_estimator
            self.w = self._engine.w
            self.initialize_estimator_to_prior = bool(initialize_estimator_to_prior)
            if not initialization_lr > 0:
                raise ValueError(f"GVI: initialization_lr must be positive, got "
                                 f"{initialization_lr!r}")
            self.initialization_lr = float(initialization_lr)
            self.optimizer = _build_optimizer(optimizer, scheduler, gradient_clipping_norm, B)
            self.n_samples_per_epoch = self._engine.n
            self.n_samples_regularisation = self._engine.n_reg
            self.diff_mode, self.gradient_estimation_method = diff_mode, gradient_estimation_method
            self.jacobian_chunk_size, self.device = jacobian_chunk_size, device
            self.progress_bar, self.progress_info = bool(progress_bar), bool(progress_info)
            self.save_path, self.executor, self.jit = save_path, executor, bool(jit)
            self._writer = None
            if log_tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                except ImportError as exc:
                    raise ImportError("GVI(log_tensorboard=True) needs tensorboardX: pip install "
                                      "tensorboardX (or pass log_tensorboard=False)") from exc
                self._writer = SummaryWriter(logdir=tensorboard_log_dir)
            if save_path is not None:
                os.makedirs(save_path, exist_ok=True)
            if device is not None:
                posterior_estimator.params = B.tree_map(lambda x: B.to_device(x, device),
                                                        posterior_estimator.params)
            from ..random import sanitize_seed

            self._key = sanitize_seed(key)
            self._opt_state = self.optimizer.init(posterior_estimator.params)
            self._update = (B.jit if jit else (lambda f: f))(
                lambda g, s, v: self.optimizer.update(g, s, value=v))
            self.history: list = []
            self.best_params = posterior_estimator.params
            self.best_loss = math.inf
            self.epoch = 0
            self._initialized = False

    # -- state ----------------------------------------------------------------------------------
    @property
    def params(self):
        """The estimator's current params (a pytree of Arrays)."""
        return self.posterior_estimator.params

    def _set_params(self, params):
        self.posterior_estimator.params = params
        state = self._opt_state
        if hasattr(state, "_replace") and hasattr(state, "params"):
            self._opt_state = state._replace(params=params)

    def _data(self, data):
        if self.device is None:
            return data
        B = self.B
        return B.tree_map(lambda x: B.to_device(x, self.device) if B.is_array(x) else x, data)

    def _next_key(self):
        keys = self.B.split(self._key, 2)
        self._key = keys[0]
        return keys[1]

    # -- fitting to the prior ---------------------------------------------------------------------
    def initialize_estimator(self, max_epochs_without_improvement: int = 50, atol: float = 1e-2,
                             max_epochs: int = 100_000) -> list:
        """Fit the estimator to the prior: minimise ``KL(q || prior)`` with
        ``Adam(initialization_lr)``.

        Stops when the KL is below ``atol``, when it has not improved for
        ``max_epochs_without_improvement`` epochs, or after ``max_epochs``; the optimiser of
        the main run is then restarted from the fitted params.

        Parameters
        ----------
        max_epochs_without_improvement : int
        atol : float
            Target KL in nats (a Monte Carlo estimate for flows: it can be noisy and negative).
        max_epochs : int

        Returns
        -------
        list of float
            The KL at each epoch.

        Raises
        ------
        ValueError
            If an argument is not positive.
        """
        from ..optim import Adam

        _check_positive_int(max_epochs_without_improvement, "max_epochs_without_improvement")
        _check_positive_int(max_epochs, "max_epochs")
        if not atol > 0:
            raise ValueError(f"atol must be positive, got {atol!r}")
        B = self.B
        with use_backend(B):
            opt = Adam(self.initialization_lr, backend=B)
            params = self.params
            state = opt.init(params)
            step = (B.jit if self.jit else (lambda f: f))(
                lambda p, s, k: _init_step(self._engine, opt, p, s, k))
            best, stall, kls = math.inf, 0, []
            for _ in range(max_epochs):
                kl, params, state = step(params, state, self._next_key())
                kl = float(kl)
                kls.append(kl)
                if kl < best:
                    best, stall = kl, 0
                else:
                    stall += 1
                if kl < atol or stall >= max_epochs_without_improvement:
                    break
            self.posterior_estimator.params = params
            self._opt_state = self.optimizer.init(params)
            self._initialized = True
            return kls

    # -- training ---------------------------------------------------------------------------------
    def step(self, data) -> dict:
        """One optimisation step on ``n_samples_per_epoch`` fresh samples.

        Parameters
        ----------
        data : any
            Passed to ``loss(theta, data)`` (a pytree of Arrays under ``jit``).

        Returns
        -------
        dict
            ``epoch``, ``total``, ``loss``, ``regularisation`` (floats, before the step) and
            ``n_nonfinite`` (int); also appended to :attr:`history`.
        """
        B = self.B
        with use_backend(B):
            params = self.params
            est = self._engine.total_gradient(params, self._next_key(), self._data(data))
            new_params, self._opt_state = self._update(est.grads, self._opt_state, est.total)
            self.posterior_estimator.params = new_params
            record = {"epoch": self.epoch, "total": float(est.total), "loss": float(est.loss),
                      "regularisation": float(est.regularisation),
                      "n_nonfinite": int(est.n_nonfinite)}
            self._step_params = params  # the params the record was measured at
            self.history.append(record)
            self.epoch += 1
            return record

    def run(self, data, n_epochs: int, max_epochs_without_improvement: int = 20,
            restore_best: bool = False) -> list:
        """Train for up to ``n_epochs`` steps with early stopping.

        Parameters
        ----------
        data : any
            Passed to the loss.
        n_epochs : int
        max_epochs_without_improvement : int
            Stop when the total loss has not improved on its best for this many epochs.
        restore_best : bool
            Leave the estimator at the params of the best epoch (default: at the last ones;
            both are kept, in :attr:`best_params` and the checkpoints). The best epoch is the
            lowest Monte Carlo *estimate* of the objective, which favours lucky draws, so the
            last params of a converged run are usually the better answer.

        Returns
        -------
        list of dict
            :attr:`history` (every epoch of every run so far).

        Raises
        ------
        ValueError
            If ``n_epochs`` or ``max_epochs_without_improvement`` is not a positive int.
        """
        n_epochs = _check_positive_int(n_epochs, "n_epochs")
        patience = _check_positive_int(max_epochs_without_improvement,
                                       "max_epochs_without_improvement")
        if self.initialize_estimator_to_prior and not self._initialized:
            self.initialize_estimator()
        bar = make_progress_bar(n_epochs, "GVI", self.progress_bar)
        stall = 0
        try:
            for _ in range(n_epochs):
                rec = self.step(data)
                if rec["total"] < self.best_loss:
                    self.best_loss, self.best_params, stall = rec["total"], self._step_params, 0
                    if self.save_path is not None:
                        self.posterior_estimator.save(
                            os.path.join(self.save_path, "best_estimator.npz"), self.best_params)
                else:
                    stall += 1
                if self.save_path is not None:
                    self.posterior_estimator.save(
                        os.path.join(self.save_path, "last_estimator.npz"))
                if self._writer is not None:
                    for tag, k in (("loss/total", "total"), ("loss/loss", "loss"),
                                   ("loss/regularisation", "regularisation"),
                                   ("n_nonfinite", "n_nonfinite")):
                        self._writer.add_scalar(tag, rec[k], rec["epoch"])
                if bar is not None:
                    bar.update(1)
                    if self.progress_info:
                        bar.set_postfix(loss=f"{rec['loss']:.4g}",
                                        reg=f"{rec['regularisation']:.4g}",
                                        best=f"{self.best_loss:.4g}", stall=stall,
                                        nonfinite=rec["n_nonfinite"])
                if stall >= patience:
                    break
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.flush()
        if restore_best and self.best_loss < math.inf:
            self._set_params(self.best_params)
        return self.history


def _init_step(engine, opt, params, state, key):
    kl, grads = engine._reg_value_and_grad(params, key)
    new_params, state = opt.update(grads, state, params, value=kl)
    return kl, new_params, state
