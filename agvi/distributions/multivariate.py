"""Multivariate continuous distributions, written once on the Backend.

:class:`MultivariateNormal` (covariance, precision or Cholesky parametrisation),
:class:`LowRankMultivariateNormal` (covariance ``W W^T + diag(D)``, all work in O(d k^2)),
:class:`Dirichlet` and :class:`LKJCholesky` (Cholesky factors of random correlation matrices).
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from ..backends import get_backend
from . import constraints
from .distribution import Distribution

__all__ = ["Dirichlet", "LKJCholesky", "LowRankMultivariateNormal", "MultivariateNormal"]

_LOG_2PI = math.log(2 * math.pi)


# -- helpers --------------------------------------------------------------------------------------
def _floating(B, x):
    """``x`` as a floating Array of ``B`` (integer input becomes ``B.float_dtype``)."""
    x = B.asarray(x)
    return x if B.is_floating(x) else B.astype(x, B.float_dtype)


def _tri_solve_vec(B, L, x):
    """``L^{-1} x`` for a batch of vectors.

    Parameters
    ----------
    L : Array, shape (..., n, n), lower triangular.
    x : Array, shape (..., n); its batch shape broadcasts with that of ``L``.

    Returns
    -------
    Array, shape ``broadcast(x.shape[:-1], L.shape[:-2]) + (n,)``.

    Notes
    -----
    The axes of ``x`` to the left of ``L``'s batch axes (sample axes) are folded into the
    right-hand-side columns, so ``L`` is factorised once per batch element, not once per draw.
    """
    n = B.shape(x)[-1]
    lb = B.shape(L)[:-2]
    full = B.broadcast_shapes(B.shape(x)[:-1], lb)
    x = B.broadcast_to(x, full + (n,))
    lead, tail = full[:len(full) - len(lb)], full[len(full) - len(lb):]
    if tail != lb:
        L = B.broadcast_to(L, tail + (n, n))
    cols = int(math.prod(lead))
    rhs = B.moveaxis(B.reshape(x, (cols,) + tail + (n,)), 0, -1)  # tail + (n, cols)
    z = B.solve_triangular(L, rhs, lower=True)
    return B.reshape(B.moveaxis(z, -1, 0), full + (n,))


def _matvec(B, A, v):
    """``A v`` with batch broadcasting: A (..., m, n), v (..., n) -> (..., m)."""
    return B.squeeze(B.matmul(A, B.expand_dims(v, -1)), -1)


def _eye_like(B, L):
    n = B.shape(L)[-1]
    return B.broadcast_to(B.eye(n, dtype=B.dtype_of(L)), B.shape(L))


def _cholesky(B, matrix, owner, name):
    """Cholesky factor of ``matrix``; a failed factorisation becomes a ValueError naming it.

    NumPy and torch raise on a matrix that is not positive definite; JAX returns NaNs instead
    (validate with ``validate_args=True`` to catch that case).
    """
    try:
        return B.cholesky(matrix)
    except (ValueError, RuntimeError, ArithmeticError) as err:
        raise ValueError(
            f"{owner}: parameter `{name}` must be symmetric positive definite, but its "
            f"Cholesky factorisation failed ({err})") from err


def _mvn_shapes(B, loc, matrix, name, owner):
    """Check and broadcast ``loc`` (..., d) against a (..., d, d) matrix; returns
    ``(loc, matrix, batch_shape, d)`` with ``loc`` broadcast to ``batch_shape + (d,)``."""
    mshape = B.shape(matrix)
    if len(mshape) < 2 or mshape[-1] != mshape[-2]:
        raise ValueError(f"{owner}: `{name}` must have shape (..., d, d), got {mshape}")
    d = mshape[-1]
    if B.ndim(loc) == 0:
        loc = B.broadcast_to(loc, (d,))
    lshape = B.shape(loc)
    if lshape[-1] not in (1, d):
        raise ValueError(f"{owner}: `loc` must have shape (..., {d}) to match `{name}` of "
                         f"shape {mshape}, got {lshape}")
    try:
        batch = B.broadcast_shapes(lshape[:-1], mshape[:-2])
    except ValueError:
        raise ValueError(f"{owner}: batch shapes of `loc` {lshape[:-1]} and `{name}` "
                         f"{mshape[:-2]} do not broadcast") from None
    return B.broadcast_to(loc, batch + (d,)), matrix, batch, d


# -- MultivariateNormal ---------------------------------------------------------------------------
class MultivariateNormal(Distribution):
    """Multivariate normal distribution.

    Exactly one of ``covariance_matrix``, ``precision_matrix`` and ``scale_tril`` is given; the
    other two are computed on first access. The batch shape is the broadcast of ``loc.shape[:-1]``
    and the matrix's ``shape[:-2]``; the event shape is ``(d,)``.

    Parameters
    ----------
    loc : Array, shape (..., d)
        Mean vector (a scalar is broadcast to ``(d,)``).
    covariance_matrix : Array, shape (..., d, d), optional
        Symmetric positive-definite covariance.
    precision_matrix : Array, shape (..., d, d), optional
        Symmetric positive-definite inverse covariance.
    scale_tril : Array, shape (..., d, d), optional
        Lower-triangular Cholesky factor ``L`` of the covariance (positive diagonal),
        ``covariance = L L^T``.

    Raises
    ------
    ValueError
        If not exactly one matrix is given, if shapes do not match or broadcast, if the
        Cholesky factorisation fails (NumPy and torch; the message names the matrix), or, under
        validation, if the given matrix breaks its constraint (positive definite, or lower
        Cholesky for ``scale_tril``).

    Notes
    -----
    Everything is computed through ``L = scale_tril``: ``log_prob`` by one triangular solve,
    ``log p(x) = -||L^{-1}(x - loc)||^2 / 2 - sum(log diag L) - d log(2 pi) / 2``, and ``rsample``
    as ``loc + L eps`` with ``eps`` standard normal (pathwise gradient). From a precision matrix
    ``P``, ``L`` is obtained without forming ``P^{-1}``: with ``J`` the reversal permutation,
    ``chol(J P J) = J U J`` gives ``P = U U^T`` (``U`` upper triangular) and ``L = U^{-T}``.
    """

    arg_constraints = {"loc": constraints.real_vector,
                       "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite,
                       "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc=0.0, covariance_matrix=None, precision_matrix=None, scale_tril=None,
                 *, validate_args=None):
        self.B = B = get_backend()
        given = [(n, m) for n, m in (("covariance_matrix", covariance_matrix),
                                     ("precision_matrix", precision_matrix),
                                     ("scale_tril", scale_tril)) if m is not None]
        if len(given) != 1:
            raise ValueError(
                "MultivariateNormal: give exactly one of `covariance_matrix`, "
                f"`precision_matrix` or `scale_tril`, got {[n for n, _ in given] or 'none'}")
        ((name, matrix),) = given
        loc, matrix = _floating(B, loc), _floating(B, matrix)
        self.loc, matrix, batch_shape, d = _mvn_shapes(B, loc, matrix, name,
                                                       "MultivariateNormal")
        self._given = name
        # Only the given matrix is validated (the others are derived from it).
        self.arg_constraints = {"loc": constraints.real_vector,
                                name: type(self).arg_constraints[name]}
        self.__dict__[name] = B.broadcast_to(matrix, batch_shape + (d, d))  # cached_property slot
        super().__init__(batch_shape, (d,), validate_args=validate_args)
        # _L keeps the matrix's own batch shape: one factorisation per distinct matrix.
        if name == "scale_tril":
            self._L = matrix
        elif name == "covariance_matrix":
            self._L = _cholesky(B, matrix, "MultivariateNormal", name)
        else:
            self._L = self._precision_to_scale_tril(matrix)

    def _precision_to_scale_tril(self, P):
        B = self.B
        flipped = B.flip(B.flip(P, -1), -2)
        Lf = _cholesky(B, flipped, "MultivariateNormal", "precision_matrix")
        # L_inv = (J Lf J)^T is lower triangular with P = L_inv^T L_inv, so cov = L L^T with
        # L = L_inv^{-1}.
        L_inv = B.matrix_transpose(B.flip(B.flip(Lf, -1), -2))
        return B.solve_triangular(L_inv, _eye_like(B, L_inv), lower=True)

    # lazy parametrisations ----------------------------------------------------------------------
    @cached_property
    def scale_tril(self):
        """Lower Cholesky factor of the covariance, shape ``batch_shape + (d, d)``."""
        return self.B.broadcast_to(self._L, self.batch_shape + self.event_shape * 2)

    @cached_property
    def covariance_matrix(self):
        """Covariance ``L L^T``, shape ``batch_shape + (d, d)``."""
        B = self.B
        cov = B.matmul(self._L, B.matrix_transpose(self._L))
        return B.broadcast_to(cov, self.batch_shape + self.event_shape * 2)

    @cached_property
    def precision_matrix(self):
        """Precision (inverse covariance) ``L^{-T} L^{-1}``, shape ``batch_shape + (d, d)``."""
        B = self.B
        L_inv = B.solve_triangular(self._L, _eye_like(B, self._L), lower=True)
        prec = B.matmul(B.matrix_transpose(L_inv), L_inv)
        return B.broadcast_to(prec, self.batch_shape + self.event_shape * 2)

    # sampling and densities ---------------------------------------------------------------------
    def rsample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return self.B.multivariate_normal(self._key(key), self.loc, self._L, shape)

    def _half_log_det(self):
        return self.B.sum(self.B.log(self.B.diagonal(self._L)), axis=-1)

    def log_prob(self, value):
        value = self._value(value)
        B = self.B
        z = _tri_solve_vec(B, self._L, value - self.loc)
        d = self.event_shape[0]
        return -0.5 * (d * _LOG_2PI + B.sum(z * z, axis=-1)) - self._half_log_det()

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        B = self.B
        return B.broadcast_to(B.sum(self._L * self._L, axis=-1),
                              self.batch_shape + self.event_shape)

    def entropy(self):
        d = self.event_shape[0]
        h = 0.5 * d * (1.0 + _LOG_2PI) + self._half_log_det()
        return self.B.broadcast_to(h, self.batch_shape)


# -- LowRankMultivariateNormal --------------------------------------------------------------------
class LowRankMultivariateNormal(Distribution):
    """Multivariate normal with covariance ``W W^T + diag(D)`` (low-rank plus diagonal).

    Parameters
    ----------
    loc : Array, shape (..., d)
        Mean vector.
    cov_factor : Array, shape (..., d, k)
        The factor ``W``; ``k`` is usually much smaller than ``d``.
    cov_diag : Array, shape (..., d)
        The diagonal ``D`` (> 0). The batch shape is the broadcast of ``loc.shape[:-1]``,
        ``cov_factor.shape[:-2]`` and ``cov_diag.shape[:-1]``; the event shape is ``(d,)``.

    Raises
    ------
    ValueError
        If the shapes do not match or broadcast, or, under validation, if ``cov_diag`` is not
        positive.

    Notes
    -----
    ``log_prob`` and ``entropy`` cost O(d k^2 + k^3) per batch element: with the ``k x k``
    capacitance matrix ``C = I + W^T D^{-1} W`` and its Cholesky factor ``L_C``, the Woodbury
    identity gives ``x^T S^{-1} x = x^T D^{-1} x - ||L_C^{-1} W^T D^{-1} x||^2`` and the matrix
    determinant lemma ``log det S = 2 sum(log diag L_C) + sum(log D)``. ``rsample`` is
    ``loc + W eps_k + sqrt(D) eps_d`` (pathwise). ``covariance_matrix``, ``scale_tril`` and
    ``precision_matrix`` form ``d x d`` matrices on request.

    References
    ----------
    Woodbury, M. A. (1950), "Inverting modified matrices"; Harville, D. A. (1997), "Matrix
    Algebra From a Statistician's Perspective", Thm. 18.1.1 (matrix determinant lemma).
    """

    arg_constraints = {"loc": constraints.real_vector,
                       "cov_factor": constraints.independent(constraints.real, 2),
                       "cov_diag": constraints.positive_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, cov_factor, cov_diag, *, validate_args=None):
        self.B = B = get_backend()
        owner = "LowRankMultivariateNormal"
        loc, W, D = _floating(B, loc), _floating(B, cov_factor), _floating(B, cov_diag)
        if B.ndim(W) < 2:
            raise ValueError(f"{owner}: `cov_factor` must have shape (..., d, k), got "
                             f"{B.shape(W)}")
        d, k = B.shape(W)[-2:]
        if B.ndim(loc) == 0:
            loc = B.broadcast_to(loc, (d,))
        if B.ndim(D) == 0:
            D = B.broadcast_to(D, (d,))
        if B.shape(loc)[-1] not in (1, d) or B.shape(D)[-1] not in (1, d):
            raise ValueError(f"{owner}: `loc` {B.shape(loc)} and `cov_diag` {B.shape(D)} must "
                             f"end in d={d}, the rows of `cov_factor` {B.shape(W)}")
        try:
            wd_batch = B.broadcast_shapes(B.shape(W)[:-2], B.shape(D)[:-1])
            batch_shape = B.broadcast_shapes(B.shape(loc)[:-1], wd_batch)
        except ValueError:
            raise ValueError(f"{owner}: batch shapes of `loc` {B.shape(loc)[:-1]}, `cov_factor` "
                             f"{B.shape(W)[:-2]} and `cov_diag` {B.shape(D)[:-1]} do not "
                             "broadcast") from None
        # W and D broadcast only against each other: the capacitance is factorised once per
        # distinct (W, D), whatever the batch shape of loc.
        self._W = B.broadcast_to(W, wd_batch + (d, k))
        self._D = B.broadcast_to(D, wd_batch + (d,))
        self.loc = B.broadcast_to(loc, batch_shape + (d,))
        self.cov_factor = B.broadcast_to(W, batch_shape + (d, k))
        self.cov_diag = B.broadcast_to(D, batch_shape + (d,))
        super().__init__(batch_shape, (d,), validate_args=validate_args)
        Wt_Dinv = B.matrix_transpose(self._W / B.expand_dims(self._D, -1))  # (..., k, d)
        capacitance = B.matmul(Wt_Dinv, self._W) + B.eye(k, dtype=B.dtype_of(self._W))
        self._Wt_Dinv = Wt_Dinv
        self._capacitance_tril = _cholesky(B, capacitance, owner, "cov_diag")

    def _log_det(self):
        B = self.B
        return (2.0 * B.sum(B.log(B.diagonal(self._capacitance_tril)), axis=-1)
                + B.sum(B.log(self._D), axis=-1))

    def rsample(self, key, sample_shape=()):
        B = self.B
        keys = B.split(self._key(key), 2)
        shape = tuple(sample_shape) + self.batch_shape
        k = B.shape(self._W)[-1]
        dtype = B.dtype_of(self.loc)
        eps_k = B.normal(keys[0], shape + (k,), dtype=dtype)
        eps_d = B.normal(keys[1], shape + self.event_shape, dtype=dtype)
        return self.loc + _matvec(B, self._W, eps_k) + B.sqrt(self._D) * eps_d

    def log_prob(self, value):
        value = self._value(value)
        B = self.B
        diff = value - self.loc
        m_diag = B.sum(diff * diff / self._D, axis=-1)
        z = _tri_solve_vec(B, self._capacitance_tril, _matvec(B, self._Wt_Dinv, diff))
        maha = m_diag - B.sum(z * z, axis=-1)
        d = self.event_shape[0]
        return -0.5 * (d * _LOG_2PI + self._log_det() + maha)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        B = self.B
        return B.broadcast_to(B.sum(self._W * self._W, axis=-1) + self._D,
                              self.batch_shape + self.event_shape)

    def entropy(self):
        d = self.event_shape[0]
        h = 0.5 * (d * (1.0 + _LOG_2PI) + self._log_det())
        return self.B.broadcast_to(h, self.batch_shape)

    @cached_property
    def covariance_matrix(self):
        """``W W^T + diag(D)``, shape ``batch_shape + (d, d)`` (O(d^2 k))."""
        B = self.B
        cov = B.matmul(self._W, B.matrix_transpose(self._W)) + B.diag_embed(self._D)
        return B.broadcast_to(cov, self.batch_shape + self.event_shape * 2)

    @cached_property
    def scale_tril(self):
        """Lower Cholesky factor of the covariance, shape ``batch_shape + (d, d)`` (O(d^3))."""
        return self.B.cholesky(self.covariance_matrix)

    @cached_property
    def precision_matrix(self):
        """Inverse covariance by Woodbury, ``D^{-1} - D^{-1} W C^{-1} W^T D^{-1}``, shape
        ``batch_shape + (d, d)`` (O(d^2 k))."""
        B = self.B
        A = B.solve_triangular(self._capacitance_tril, self._Wt_Dinv, lower=True)  # (..., k, d)
        prec = B.diag_embed(1.0 / self._D) - B.matmul(B.matrix_transpose(A), A)
        return B.broadcast_to(prec, self.batch_shape + self.event_shape * 2)


# -- Dirichlet ------------------------------------------------------------------------------------
class Dirichlet(Distribution):
    """Dirichlet distribution on the probability simplex.

    Parameters
    ----------
    concentration : Array, shape (..., K)
        Concentrations ``alpha`` (> 0). Batch shape ``concentration.shape[:-1]``, event shape
        ``(K,)``.

    Raises
    ------
    ValueError
        If ``concentration`` is a scalar, or, under validation, if it is not positive.

    Notes
    -----
    ``rsample`` normalises independent Gamma(alpha_i, 1) draws (:meth:`Backend.dirichlet`); the
    gradient to ``alpha`` flows through the implicitly reparameterised gamma draws. Draws are
    clipped to ``[tiny, 1 - eps]`` so that ``log_prob`` of a draw stays finite for small ``alpha``.

    References
    ----------
    Figurnov, M., Mohamed, S. and Mnih, A. (2018), "Implicit Reparameterization Gradients",
    NeurIPS (eq. 6 and section 3.3).
    """

    arg_constraints = {"concentration": constraints.independent(constraints.positive, 1)}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, concentration, *, validate_args=None):
        self.B = B = get_backend()
        self.concentration = _floating(B, concentration)
        if B.ndim(self.concentration) < 1:
            raise ValueError("Dirichlet: `concentration` must have shape (..., K) with K >= 1, "
                             f"got a scalar {B.to_numpy(self.concentration)!r}")
        shape = B.shape(self.concentration)
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        B = self.B
        x = B.dirichlet(self._key(key), self.concentration, tuple(sample_shape) + self.batch_shape)
        info = B.finfo(B.dtype_of(x))
        return B.clip(x, info.tiny, 1.0 - info.eps)

    def _log_beta(self):
        B = self.B
        a = self.concentration
        return B.sum(B.gammaln(a), axis=-1) - B.gammaln(B.sum(a, axis=-1))

    def log_prob(self, value):
        value = self._value(value)
        B = self.B
        return B.sum(B.xlogy(self.concentration - 1.0, value), axis=-1) - self._log_beta()

    @property
    def mean(self):
        a = self.concentration
        return a / self.B.sum(a, axis=-1, keepdims=True)

    @property
    def variance(self):
        a = self.concentration
        a0 = self.B.sum(a, axis=-1, keepdims=True)
        return a * (a0 - a) / (a0 * a0 * (a0 + 1.0))

    def entropy(self):
        B = self.B
        a = self.concentration
        K = self.event_shape[0]
        a0 = B.sum(a, axis=-1)
        return (self._log_beta() + (a0 - K) * B.digamma(a0)
                - B.sum((a - 1.0) * B.digamma(a), axis=-1))


# -- LKJCholesky ----------------------------------------------------------------------------------
class LKJCholesky(Distribution):
    """LKJ distribution over Cholesky factors ``L`` of correlation matrices ``C = L L^T``.

    The correlation matrix has density ``c_d(eta)^{-1} det(C)^(eta - 1)``; ``log_prob`` is the
    density of ``L`` with respect to Lebesgue measure on its ``d (d - 1) / 2`` strictly-lower
    entries.

    Parameters
    ----------
    dimension : int
        Size ``d`` of the matrices (>= 2).
    concentration : float or Array
        ``eta`` (> 0); its shape is the batch shape. ``eta = 1`` is uniform over correlation
        matrices; larger values concentrate near the identity.
    sample_method : {"onion", "cvine"}
        The onion method (LKJ 2009, section 3.2) or the C-vine method (section 2.4).

    Raises
    ------
    ValueError
        If ``dimension`` is not an int >= 2, ``sample_method`` is unknown, or, under
        validation, ``concentration`` is not positive.

    Notes
    -----
    With ``C = L L^T``, ``det C = prod L_ii^2`` and the map from the strictly-lower entries of
    ``L`` to those of ``C`` has Jacobian ``prod_{i=2}^d L_ii^(d - i)``, so
    ``log p(L) = sum_{i=2}^d (2 eta - 2 + d - i) log L_ii - log c_d(eta)`` with
    ``log c_d(eta) = (d - 1)/2 log(pi) + log Gamma_{d-1}(alpha - 1/2) - (d - 1) log Gamma(alpha)``,
    ``alpha = eta + (d - 1)/2`` and ``Gamma_p`` the multivariate gamma function (LKJ 2009,
    first proof on p. 1999; the same normaliser as NumPyro's ``LKJCholesky``). Each
    off-diagonal correlation is marginally ``2 Beta(b, b) - 1`` with ``b = eta + (d - 2)/2``
    (mean 0, variance ``1 / (2 eta + d - 1)``). Draws are not reparameterised.

    References
    ----------
    Lewandowski, D., Kurowicka, D. and Joe, H. (2009), "Generating random correlation matrices
    based on vines and extended onion method", J. Multivariate Analysis 100(9), 1989-2001.
    """

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.corr_cholesky
    has_rsample = False

    def __init__(self, dimension, concentration=1.0, sample_method="onion", *,
                 validate_args=None):
        if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) \
                or dimension < 2:
            raise ValueError(f"LKJCholesky: `dimension` must be an int >= 2, got {dimension!r}")
        if sample_method not in ("onion", "cvine"):
            raise ValueError("LKJCholesky: `sample_method` must be 'onion' or 'cvine', got "
                             f"{sample_method!r}")
        self.B = B = get_backend()
        self.dimension = int(dimension)
        self.sample_method = sample_method
        self.concentration = _floating(B, concentration)
        super().__init__(B.shape(self.concentration), (self.dimension,) * 2,
                         validate_args=validate_args)

    def _const(self, values):
        return self.B.asarray(np.asarray(values, dtype=float), dtype=self.B.dtype_of(
            self.concentration))

    def log_prob(self, value):
        value = self._value(value)
        B, d = self.B, self.dimension
        eta = self.concentration
        # order_i = 2 eta - 2 + d - i for the 1-based diagonal index i = 2..d
        order = 2.0 * B.expand_dims(eta, -1) + self._const(d - 2 - np.arange(2, d + 1))
        unnormalised = B.sum(order * B.log(B.diagonal(value)[..., 1:]), axis=-1)
        alpha = eta + 0.5 * (d - 1)
        log_norm = (0.5 * (d - 1) * math.log(math.pi) + B.multigammaln(alpha - 0.5, d - 1)
                    - (d - 1) * B.gammaln(alpha))
        return unnormalised - log_norm

    def sample(self, key, sample_shape=()):
        B, d = self.B, self.dimension
        shape = tuple(sample_shape) + self.batch_shape
        eta = B.stop_gradient(self.concentration)
        marginal = B.expand_dims(eta + 0.5 * (d - 2), -1)  # beta parameter of the first row
        offset = self._const(0.5 * np.arange(d - 1))
        key = self._key(key)
        if self.sample_method == "onion":
            k_beta, k_normal = B.split(key, 2)
            # Row i+1 of L holds w = sqrt(y) u: u uniform on the sphere in R^{i+1},
            # y ~ Beta((i+1)/2, b - i/2) (LKJ 2009, section 3.2).
            b = marginal - offset
            # both Beta parameters get one shape: JAX compiles its gamma sampler per shape
            y = B.beta(k_beta, B.broadcast_to(offset + 0.5, B.shape(b)), b, shape + (d - 1,))
            z = B.tril(B.normal(k_normal, shape + (d - 1, d - 1), dtype=B.dtype_of(eta)))
            u = z / B.norm(z, axis=-1, keepdims=True)
            w = B.expand_dims(B.sqrt(y), -1) * u
        else:
            # Partial correlations of column j are 2 Beta(b - j/2, b - j/2) - 1 (LKJ 2009,
            # section 2.4); signed stick-breaking turns each row into a unit vector.
            conc = B.broadcast_to(B.expand_dims(marginal - offset, -2),
                                  shape + (d - 1, d - 1))
            partial = B.tril(2.0 * B.beta(key, conc, conc, shape + (d - 1, d - 1)) - 1.0)
            remaining = B.cumprod(B.sqrt(B.clip(1.0 - partial * partial, 0.0, None)), axis=-1)
            ones = B.ones(shape + (d - 1, 1), dtype=B.dtype_of(eta))
            w = partial * B.concatenate([ones, remaining[..., :-1]], axis=-1)
        return self._assemble(w, shape)

    def _assemble(self, w, shape):
        """Place the (d-1)x(d-1) lower block ``w`` below the first row and complete each row
        to unit norm with a positive diagonal."""
        B, d = self.B, self.dimension
        dtype = B.dtype_of(w)
        off = B.concatenate([B.zeros(shape + (1, d - 1), dtype=dtype), w], axis=-2)
        off = B.concatenate([off, B.zeros(shape + (d, 1), dtype=dtype)], axis=-1)
        # Round-off can push a row's squared norm to (or a hair above) one, e.g. a float32
        # Beta draw of exactly 1; keep the diagonal positive so the draw stays in the support.
        tiny = B.finfo(dtype).tiny
        diag = B.sqrt(B.clip(1.0 - B.sum(off * off, axis=-1), tiny, None))
        return B.stop_gradient(off + B.diag_embed(diag))
