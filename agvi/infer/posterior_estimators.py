"""Posterior estimators for generalised variational inference (:class:`agvi.infer.GVI`).

A posterior estimator is a reparameterised family ``q_phi`` over a parameter vector
``theta in R^d``, written once against the Backend. Its trainable parameters ``phi`` are a
pytree of Arrays held in :attr:`PosteriorEstimator.params`; every computation is also available
as a pure function of an explicit ``params`` pytree (:meth:`~PosteriorEstimator.sample_with`,
:meth:`~PosteriorEstimator.log_prob_with`), which is what the GVI gradient estimators
differentiate (``theta = T(eps; phi)`` with ``eps`` drawn from a key, independent of ``phi``).

- :class:`DiagonalGaussianEstimator`: ``N(loc, diag(scale^2))``.
- :class:`FullRankGaussianEstimator`: ``N(loc, L L^T)`` with a Cholesky factor ``L``.
- :class:`AffineCouplingFlowEstimator`: a RealNVP normalising flow (Dinh et al., 2017).

Every estimator has ``sample(key, n) -> (theta, log_prob)`` with ``theta`` of shape ``(n, d)``
and ``log_prob`` of shape ``(n,)``, and ``log_prob(theta)``.

References
----------
Dinh, L., Sohl-Dickstein, J. and Bengio, S. (2017). Density estimation using Real NVP. ICLR.
Rezende, D. J. and Mohamed, S. (2015). Variational inference with normalizing flows. ICML.
Quera-Bofarull, A. et al. (2023). BlackBIRDS: Black-Box Inference foR Differentiable
Simulators. Journal of Open Source Software 8(89), 5776.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends import get_backend, use_backend

__all__ = [
    "AffineCouplingFlowEstimator", "DiagonalGaussianEstimator", "FullRankGaussianEstimator",
    "PosteriorEstimator",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _as_key(B, key):
    """``key`` as a key of ``B`` (an int is a seed)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return B.key(int(key))
    return key


def _vector(B, value, dim, name):
    """``value`` (a scalar or an array of shape (dim,)) as a float Array of shape (dim,)."""
    arr = np.asarray(B.to_numpy(value) if B.is_array(value) else value, dtype=float)
    if arr.ndim == 0:
        arr = np.full((dim,), float(arr))
    if arr.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have shape ({dim},), got shape {arr.shape}")
    return B.asarray(arr)


def _check_dim(dim):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int (the number of simulator parameters), "
                         f"got {dim!r}")
    return int(dim)


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of draws) must be a positive int, got {n!r}")
    return int(n)


def _std_normal_log_prob(B, z):
    """``log N(z; 0, I)`` summed over the last axis: shape (..., d) -> (...)."""
    d = B.shape(z)[-1]
    return -0.5 * B.sum(z * z, axis=-1) - 0.5 * d * _LOG_2PI


class PosteriorEstimator:
    """Base class: a reparameterised distribution over ``theta in R^d`` with trainable params.

    Parameters
    ----------
    dim : int
        ``d``, the number of simulator parameters.
    backend : Backend or None
        The backend its arrays belong to (default: the active one when it is built).

    Attributes
    ----------
    params : pytree of Arrays
        The trainable parameters ``phi``; :class:`~agvi.infer.GVI` replaces it after every step.
    dim : int
    B : Backend

    Notes
    -----
    Subclasses implement :meth:`init_params`, :meth:`sample_with` and :meth:`log_prob_with`,
    and :meth:`to_distribution` where the family is an agvi distribution (so that
    ``KL(q || prior)`` can be taken from the analytic table).

    Raises
    ------
    ValueError
        If ``dim`` is not a positive int.
    """

    def __init__(self, dim: int, backend=None):
        self.dim = _check_dim(dim)
        self.B = get_backend() if backend is None else backend
        self.params = None

    # -- pure functions of explicit params ----------------------------------------------------
    def sample_with(self, params, key, n: int):
        """``n`` reparameterised draws and their log densities under ``q_params``.

        Parameters
        ----------
        params : pytree of Arrays
            The structure of :attr:`params`.
        key : Array, shape (2,), or int
            Random key; the base noise depends on ``key`` only, so the draws are differentiable
            in ``params`` (the pathwise / reparameterisation gradient).
        n : int
            Number of draws.

        Returns
        -------
        theta : Array, shape (n, d)
        log_prob : Array, shape (n,)
            ``log q_params(theta)`` in nats.
        """
        raise NotImplementedError

    def log_prob_with(self, params, theta):
        """``log q_params(theta)``.

        Parameters
        ----------
        params : pytree of Arrays
        theta : Array, shape (..., d)

        Returns
        -------
        Array, shape (...)
        """
        raise NotImplementedError

    def to_distribution(self, params=None):
        """The agvi Distribution equal to ``q_params`` (event shape ``(d,)``), or None when
        the family is not one (flows); ``params`` defaults to :attr:`params`."""
        return None

    # -- stateful conveniences ----------------------------------------------------------------
    def sample(self, key, n: int):
        """``(theta, log_prob)`` with shapes (n, d) and (n,) under the current :attr:`params`
        (see :meth:`sample_with`)."""
        with use_backend(self.B):
            return self.sample_with(self.params, _as_key(self.B, key), _check_n(n))

    def log_prob(self, theta):
        """``log q(theta)`` under the current :attr:`params`: shape (..., d) -> (...)."""
        with use_backend(self.B):
            B = self.B
            theta = theta if B.is_array(theta) else B.asarray(theta)
            return self.log_prob_with(self.params, theta)

    def __call__(self, key, n: int):
        """Same as :meth:`sample`."""
        return self.sample(key, n)

    # -- checkpoints --------------------------------------------------------------------------
    def params_to_host(self, params=None) -> dict:
        """The parameters as a flat dict ``"leaf_<i>" -> numpy array`` (flattening order)."""
        B = self.B
        leaves = B.tree_leaves(self.params if params is None else params)
        return {f"leaf_{i}": np.array(B.to_numpy(leaf)) for i, leaf in enumerate(leaves)}

    def save(self, path, params=None) -> None:
        """Write the parameters (default :attr:`params`) to ``path`` as a NumPy ``.npz`` file.

        Parameters
        ----------
        path : str or os.PathLike
            The file; NumPy appends ``.npz`` if it has no such suffix.
        """
        np.savez(path, **self.params_to_host(params))

    def load(self, path):
        """Read parameters written by :meth:`save` into :attr:`params` (and return them).

        Raises
        ------
        ValueError
            If the file's leaves do not match this estimator's parameter structure and shapes.
        """
        B = self.B
        leaves, treedef = B.tree_flatten(self.params)
        with np.load(path) as f:
            if len(f.files) != len(leaves):
                raise ValueError(f"{path}: holds {len(f.files)} arrays, but this estimator has "
                                 f"{len(leaves)} parameter leaves")
            new = []
            for i, leaf in enumerate(leaves):
                arr = f[f"leaf_{i}"]
                if tuple(arr.shape) != tuple(B.shape(leaf)):
                    raise ValueError(f"{path}: leaf {i} has shape {arr.shape}, expected "
                                     f"{B.shape(leaf)}")
                new.append(B.asarray(arr, dtype=B.dtype_of(leaf)))
        self.params = B.tree_unflatten(treedef, new)
        return self.params

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"


class DiagonalGaussianEstimator(PosteriorEstimator):
    """Mean-field Gaussian ``q = N(loc, diag(scale^2))``.

    Parameters
    ----------
    dim : int
    loc : float or array of shape (d,)
        Initial mean.
    scale : float or array of shape (d,), > 0
        Initial standard deviations.
    backend : Backend or None

    Notes
    -----
    ``params = {"loc": (d,), "log_scale": (d,)}``; draws are ``loc + exp(log_scale) * eps``
    with ``eps ~ N(0, I)``.

    Raises
    ------
    ValueError
        If ``dim`` is not a positive int, ``scale`` is not positive, or a shape is wrong.

    References
    ----------
    Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR (the
    reparameterisation ``loc + scale * eps``).
    """

    def __init__(self, dim: int, loc=0.0, scale=1.0, backend=None):
        super().__init__(dim, backend)
        with use_backend(self.B):
            self.params = self.init_params(loc, scale)

    def init_params(self, loc=0.0, scale=1.0):
        """The parameter pytree for a given mean and standard deviation (shapes (d,))."""
        B = self.B
        scale = _vector(B, scale, self.dim, "scale")
        if not bool(np.all(B.to_numpy(scale) > 0)):
            raise ValueError("scale must be positive")
        return {"loc": _vector(B, loc, self.dim, "loc"), "log_scale": B.log(scale)}

    def sample_with(self, params, key, n):
        B = self.B
        loc, log_scale = params["loc"], params["log_scale"]
        eps = B.normal(key, (n, self.dim), dtype=B.dtype_of(loc))
        theta = loc + B.exp(log_scale) * eps
        return theta, _std_normal_log_prob(B, eps) - B.sum(log_scale)

    def log_prob_with(self, params, theta):
        B = self.B
        z = (theta - params["loc"]) * B.exp(-params["log_scale"])
        return _std_normal_log_prob(B, z) - B.sum(params["log_scale"])

    def to_distribution(self, params=None):
        from ..distributions import Normal

        p = self.params if params is None else params
        with use_backend(self.B):
            return Normal(p["loc"], self.B.exp(p["log_scale"])).to_event(1)


class FullRankGaussianEstimator(PosteriorEstimator):
    """Gaussian with a full covariance, ``q = N(loc, L L^T)``.

    Parameters
    ----------
    dim : int
    loc : float or array of shape (d,)
        Initial mean.
    scale : float or array of shape (d,), > 0
        Initial standard deviations (a diagonal ``L``); ignored if ``scale_tril`` is given.
    scale_tril : array of shape (d, d) or None
        Initial lower Cholesky factor (positive diagonal).
    backend : Backend or None

    Notes
    -----
    ``params = {"loc": (d,), "tril": (d, d)}``: ``L = tril(tril, -1) + diag(exp(diag(tril)))``
    (the entries above the diagonal are unused), so every value of ``params`` is a valid
    factor. Draws are ``loc + L eps``.

    Raises
    ------
    ValueError
        If ``dim`` is not a positive int, a shape is wrong, or the initial factor has a
        non-positive diagonal.

    References
    ----------
    Titsias, M. and Lazaro-Gredilla, M. (2014). Doubly stochastic variational Bayes for
    non-conjugate inference. ICML (full-rank Gaussian ``loc + L eps`` with pathwise gradients).
    """

    def __init__(self, dim: int, loc=0.0, scale=1.0, scale_tril=None, backend=None):
        super().__init__(dim, backend)
        with use_backend(self.B):
            self.params = self.init_params(loc, scale, scale_tril)

    def init_params(self, loc=0.0, scale=1.0, scale_tril=None):
        """The parameter pytree for a given mean and Cholesky factor."""
        B, d = self.B, self.dim
        if scale_tril is None:
            L = np.diag(np.asarray(B.to_numpy(_vector(B, scale, d, "scale"))))
        else:
            L = np.asarray(B.to_numpy(scale_tril) if B.is_array(scale_tril) else scale_tril,
                           dtype=float)
            if L.shape != (d, d):
                raise ValueError(f"scale_tril must have shape ({d}, {d}), got {L.shape}")
        diag = np.diag(L)
        if not np.all(diag > 0):
            raise ValueError("the initial Cholesky factor must have a positive diagonal "
                             f"(scale or scale_tril), got diagonal {diag}")
        raw = np.tril(L, -1) + np.diag(np.log(diag))
        return {"loc": _vector(B, loc, d, "loc"), "tril": B.asarray(raw)}

    def _masks(self, like):
        B, d = self.B, self.dim
        eye = np.eye(d)
        return (B.asarray(np.tril(np.ones((d, d)), -1), dtype=B.dtype_of(like)),
                B.asarray(eye, dtype=B.dtype_of(like)))

    def scale_tril(self, params=None):
        """The Cholesky factor ``L``, shape (d, d), of ``params`` (default :attr:`params`)."""
        B = self.B
        raw = (self.params if params is None else params)["tril"]
        # Elementwise masks rather than tril / diag_embed: the same values and gradients, and
        # far cheaper for small d (torch's tril kernel alone costs milliseconds on a busy CPU).
        lower, eye = self._masks(raw)
        return raw * lower + eye * B.exp(raw * eye)

    def sample_with(self, params, key, n):
        B = self.B
        loc, raw = params["loc"], params["tril"]
        L = self.scale_tril(params)
        eps = B.normal(key, (n, self.dim), dtype=B.dtype_of(loc))
        theta = loc + B.matmul(eps, B.matrix_transpose(L))
        log_det = B.sum(raw * self._masks(raw)[1])  # sum(log diag L)
        return theta, _std_normal_log_prob(B, eps) - log_det

    def log_prob_with(self, params, theta):
        return self.to_distribution(params).log_prob(theta)

    def to_distribution(self, params=None):
        from ..distributions import MultivariateNormal

        p = self.params if params is None else params
        with use_backend(self.B):
            return MultivariateNormal(p["loc"], scale_tril=self.scale_tril(p))


class AffineCouplingFlowEstimator(PosteriorEstimator):
    """A RealNVP normalising flow: affine coupling layers on a standard normal base.

    ``theta = loc + exp(log_scale) * (f_K o ... o f_1)(z)`` with ``z ~ N(0, I)`` and each
    coupling layer, for a fixed binary mask ``m`` (alternating checkerboard masks),

    ``f(y) = m * y + (1 - m) * (y * exp(s(m * y)) + t(m * y))``,

    where ``(s, t)`` come from a one-hidden-layer tanh network of ``m * y`` and
    ``s = c * tanh(s_raw / c)`` is softly clamped to ``(-c, c)`` for stability. The
    log-determinant of a layer is ``sum((1 - m) * s)``; the inverse is closed-form, so both
    ``sample`` and ``log_prob`` cost one pass.

    Parameters
    ----------
    dim : int
    n_layers : int, >= 1
        Number of coupling layers (use an even number so every coordinate is transformed).
    hidden : int, >= 1
        Width of each conditioner's hidden layer.
    loc, scale : float or array of shape (d,)
        The initial flow is exactly ``N(loc, diag(scale^2))``: the conditioners' output
        layers start at zero (identity couplings).
    key : int or Array, shape (2,)
        Seeds the conditioners' first-layer weights (``N(0, 1/d)``).
    clamp : float, > 0
        The bound ``c`` on the log-scales of the couplings.
    backend : Backend or None

    Notes
    -----
    ``params = {"loc": (d,), "log_scale": (d,), "layers": [{"w1": (d, hidden), "b1":
    (hidden,), "w2": (hidden, 2 d), "b2": (2 d,)}, ...]}``. No analytic KL exists for a flow:
    :func:`agvi.infer.gvi.compute_regularisation_loss` uses Monte Carlo.

    Raises
    ------
    ValueError
        If ``dim``, ``n_layers`` or ``hidden`` is not a positive int, or ``clamp`` is not
        positive.

    References
    ----------
    Dinh, L., Sohl-Dickstein, J. and Bengio, S. (2017). Density estimation using Real NVP.
    ICLR (eqs. 6-9: affine coupling, its Jacobian and masked form).
    """

    def __init__(self, dim: int, n_layers: int = 4, hidden: int = 16, loc=0.0, scale=1.0,
                 key=0, clamp: float = 3.0, backend=None):
        super().__init__(dim, backend)
        for name, v in (("n_layers", n_layers), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not clamp > 0:
            raise ValueError(f"clamp must be positive, got {clamp!r}")
        self.n_layers, self.hidden, self.clamp = int(n_layers), int(hidden), float(clamp)
        self._masks_np = [np.array([(i + k) % 2 for i in range(self.dim)], dtype=float)
                          for k in range(self.n_layers)]
        with use_backend(self.B):
            self.params = self.init_params(loc, scale, key)

    def init_params(self, loc=0.0, scale=1.0, key=0):
        """The parameter pytree of an identity flow around ``N(loc, diag(scale^2))``."""
        B, d, h = self.B, self.dim, self.hidden
        scale = _vector(B, scale, d, "scale")
        if not bool(np.all(B.to_numpy(scale) > 0)):
            raise ValueError("scale must be positive")
        keys = B.split(_as_key(B, key), self.n_layers)
        layers = [{"w1": B.normal(keys[k], (d, h)) / math.sqrt(d), "b1": B.zeros((h,)),
                   "w2": B.zeros((h, 2 * d)), "b2": B.zeros((2 * d,))}
                  for k in range(self.n_layers)]
        return {"loc": _vector(B, loc, d, "loc"), "log_scale": B.log(scale), "layers": layers}

    def _masks(self, like):
        B = self.B
        return [B.asarray(m, dtype=B.dtype_of(like)) for m in self._masks_np]

    def _shift_log_scale(self, layer, masked):
        B, d = self.B, self.dim
        hidden = B.tanh(B.matmul(masked, layer["w1"]) + layer["b1"])
        out = B.matmul(hidden, layer["w2"]) + layer["b2"]
        s = self.clamp * B.tanh(out[..., :d] / self.clamp)
        return s, out[..., d:]

    def sample_with(self, params, key, n):
        B = self.B
        loc, log_scale = params["loc"], params["log_scale"]
        z = B.normal(key, (n, self.dim), dtype=B.dtype_of(loc))
        log_q = _std_normal_log_prob(B, z)
        y = z
        for layer, m in zip(params["layers"], self._masks(loc)):
            s, t = self._shift_log_scale(layer, m * y)
            y = m * y + (1.0 - m) * (y * B.exp(s) + t)
            log_q = log_q - B.sum((1.0 - m) * s, axis=-1)
        theta = loc + B.exp(log_scale) * y
        return theta, log_q - B.sum(log_scale)

    def log_prob_with(self, params, theta):
        B = self.B
        loc, log_scale = params["loc"], params["log_scale"]
        y = (theta - loc) * B.exp(-log_scale)
        log_det = B.sum(log_scale) + B.zeros(B.shape(y)[:-1], dtype=B.dtype_of(y))
        for layer, m in reversed(list(zip(params["layers"], self._masks(loc)))):
            s, t = self._shift_log_scale(layer, m * y)
            y = m * y + (1.0 - m) * (y - t) * B.exp(-s)
            log_det = log_det + B.sum((1.0 - m) * s, axis=-1)
        return _std_normal_log_prob(B, y) - log_det

    def __repr__(self):
        return (f"AffineCouplingFlowEstimator(dim={self.dim}, n_layers={self.n_layers}, "
                f"hidden={self.hidden})")
