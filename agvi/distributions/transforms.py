"""Bijective transforms with log-det-Jacobians, and :data:`biject_to`, the registry that maps a
constraint to a bijection from unconstrained space onto it.

Every transform keeps the Backend that was active when it was built (``t.B``) and computes with
it. A transform ``t`` maps ``x`` in ``t.domain`` to ``y = t(x)`` in ``t.codomain``;
``t.inverse(y)`` maps back and ``t.inv`` is the inverse as a transform object.
``t.log_abs_det_jacobian(x, y)`` is ``log |det dy/dx|`` with the last ``t.domain.event_dim`` axes
reduced, so its shape is ``x.shape[:x.ndim - t.domain.event_dim]``. Where the codomain has fewer
free coordinates than its embedding (a simplex, a Cholesky factor, a correlation Cholesky
factor), the determinant is that of the Jacobian onto the free coordinates, as in torch and
NumPyro (each class docstring names them).

The vector layouts (the order of the unconstrained coordinates) follow NumPyro, so that an
unconstrained point means the same constrained value here as there.

References
----------
Stan Development Team, *Stan Reference Manual*, "Constraint transforms" (the simplex,
Cholesky-factor and correlation-Cholesky transforms and their Jacobians).
Lewandowski, Kurowicka and Joe (2009), "Generating random correlation matrices based on vines
and extended onion method", J. Multivariate Anal. 100(9) (the partial-correlation parametrisation
behind :class:`CorrCholeskyTransform`).
"""

from __future__ import annotations

import math

import numpy as np

from ..backends import get_backend
from . import constraints
from .constraints import Constraint

__all__ = [
    "AffineTransform", "CholeskyTransform", "ComposeTransform", "ConstraintRegistry",
    "CorrCholeskyTransform", "CorrMatrixCholeskyTransform", "ExpTransform", "IdentityTransform",
    "IndependentTransform", "LowerCholeskyTransform", "OrderedTransform", "PowerTransform",
    "SigmoidTransform", "SoftplusTransform", "StickBreakingTransform", "TanhTransform",
    "Transform", "biject_to", "transform_to",
]

_LOG2 = math.log(2.0)


# -- helpers --------------------------------------------------------------------------------------
def _sum_rightmost(B, x, n):
    """``x`` summed over its last ``n`` axes (``n`` >= 0)."""
    return B.sum(x, axis=tuple(range(-n, 0))) if n > 0 else x


def _param(B, p):
    """A transform parameter: Python numbers stay Python floats (so they keep the dtype of the
    input they meet); anything else becomes a floating Array of ``B``."""
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return float(p)
    a = B.asarray(p)
    return a if B.is_floating(a) else B.astype(a, B.float_dtype)


def _pshape(B, p):
    return () if isinstance(p, float) else B.shape(p)


def _same_param(B, a, b) -> bool:
    """Whether two transform parameters are equal: Python numbers by value, arrays by value
    where they are concrete, and by identity where they are traced."""
    if a is b:
        return True
    try:
        xa, xb = np.asarray(B.to_numpy(B.asarray(a))), np.asarray(B.to_numpy(B.asarray(b)))
    except Exception:  # traced (abstract) arrays have no values to compare
        return False
    return xa.shape == xb.shape and bool(np.all(xa == xb))


def _finfo(B, x):
    return B.finfo(B.dtype_of(x))


def _zeros_col(B, x):
    """Zeros of shape ``x.shape[:-1] + (1,)`` with the dtype and device of ``x`` (also when the
    last axis of ``x`` is empty)."""
    return B.zeros_like(B.sum(x, axis=-1, keepdims=True))


def _tri_size(m, offset, name):
    """The matrix order ``n`` whose triangle (``offset`` 0: with the diagonal, -1: strictly
    below it) holds ``m`` entries.

    Raises
    ------
    ValueError
        If no such ``n`` exists.
    """
    # n (n + 1) / 2 = m  (offset 0)  or  n (n - 1) / 2 = m  (offset -1)
    root = (math.sqrt(1 + 8 * m) - 1) / 2 if offset == 0 else (math.sqrt(1 + 8 * m) + 1) / 2
    n = int(round(root))
    if n * (n + 1 + 2 * offset) // 2 != m:
        what = "n (n + 1) / 2" if offset == 0 else "n (n - 1) / 2"
        raise ValueError(f"{name}: the last axis of the input must have length {what} for "
                         f"some n, got {m}")
    return n


def _tril_flat_index(n, offset):
    """Row-major flat indices (into an n x n matrix) of the triangle below diagonal ``offset``
    (``numpy.tril_indices`` order, as NumPyro's vector layout)."""
    rows, cols = np.tril_indices(n, offset)
    return rows * n + cols


def _vec_to_tril(B, v, n, offset):
    """Place the vector ``v`` (..., m) in the triangle ``offset`` of an (..., n, n) matrix of
    zeros, row by row (a gather: differentiable on every backend)."""
    m = B.shape(v)[-1]
    gather = np.full(n * n, m, dtype=np.int64)  # index m is an appended zero
    gather[_tril_flat_index(n, offset)] = np.arange(m)
    ext = B.concatenate([v, _zeros_col(B, v)], axis=-1)
    return B.reshape(B.take(ext, gather, axis=-1), B.shape(v)[:-1] + (n, n))


def _tril_to_vec(B, y, offset):
    """The triangle ``offset`` of (..., n, n) as a vector (..., m), row by row."""
    n = B.shape(y)[-1]
    flat = B.reshape(y, B.shape(y)[:-2] + (n * n,))
    return B.take(flat, _tril_flat_index(n, offset), axis=-1)


def _reverse(B, x):
    """``x`` reversed along its last axis (a gather: autograd has no VJP for ``flip``, and
    torch cannot slice with a negative step)."""
    n = B.shape(x)[-1]
    return B.take(x, np.arange(n - 1, -1, -1), axis=-1)


def _rev_cumsum(B, x):
    """``out[..., i] = sum(x[..., i:])`` along the last axis: the tail sums, accurate where
    ``1 - cumsum`` would cancel."""
    return _reverse(B, B.cumsum(_reverse(B, x), -1))


def _diag(B, y):
    """The diagonal (..., n) of (..., n, n), as a gather (differentiable on every backend;
    autograd cannot differentiate ``diagonal`` over the last two axes)."""
    n = B.shape(y)[-1]
    flat = B.reshape(y, B.shape(y)[:-2] + (n * n,))
    return B.take(flat, np.arange(n) * (n + 1), axis=-1)


def _log1m_tanh_sq(B, x):
    """``log(1 - tanh(x)**2) = 2 (log 2 - x - softplus(-2 x))``, stable for large ``|x|``."""
    return 2.0 * (_LOG2 - x - B.softplus(-2.0 * x))


# -- base classes ---------------------------------------------------------------------------------
class Transform:
    """Base class of bijections ``y = t(x)`` between two constrained sets.

    Attributes
    ----------
    B : Backend
        The backend active when the transform was built; all computation uses it.
    domain, codomain : Constraint
        The sets of ``x`` and ``y``; their ``event_dim`` says how many trailing axes form one
        element.
    bijective : bool
        Whether ``inverse`` is an exact inverse on the whole codomain.

    Notes
    -----
    Subclasses implement ``_forward``, ``_inverse`` and ``log_abs_det_jacobian``, and set
    ``domain``, ``codomain``, ``sign`` (monotone scalar transforms) and ``forward_shape`` /
    ``inverse_shape`` (shape-changing transforms).
    """

    domain: Constraint = constraints.real
    codomain: Constraint = constraints.real
    bijective = True

    def __init__(self):
        self.B = get_backend()
        self._inv = None

    # application ----------------------------------------------------------------------------
    def _array(self, x):
        return x if self.B.is_array(x) else self.B.asarray(x)

    def __call__(self, x):
        """``y = t(x)``.

        Parameters
        ----------
        x : Array, shape ``batch + event_in`` (event rank ``domain.event_dim``)

        Returns
        -------
        Array, shape ``forward_shape(x.shape)``.
        """
        return self._forward(self._array(x))

    def inverse(self, y):
        """``x = t^{-1}(y)``.

        Parameters
        ----------
        y : Array, shape ``batch + event_out`` (event rank ``codomain.event_dim``)

        Returns
        -------
        Array, shape ``inverse_shape(y.shape)``.
        """
        return self._inverse(self._array(y))

    def _forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement the forward map")

    def _inverse(self, y):
        raise NotImplementedError(f"{type(self).__name__} does not implement its inverse")

    @property
    def inv(self) -> Transform:
        """The inverse as a :class:`Transform` (``t.inv(y) == t.inverse(y)``; ``t.inv.inv is
        t``)."""
        if self._inv is None:
            self._inv = _InverseTransform(self)
        return self._inv

    def log_abs_det_jacobian(self, x, y):
        """``log |det dy/dx|``.

        Parameters
        ----------
        x : Array, shape ``batch + event_in``
        y : Array, ``t(x)``

        Returns
        -------
        Array, shape ``batch`` (the last ``domain.event_dim`` axes of ``x`` reduced).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement "
                                  "log_abs_det_jacobian")

    @property
    def sign(self):
        """+1 or -1 (a float, or an Array for array parameters): whether the scalar transform
        increases or decreases.

        Raises
        ------
        NotImplementedError
            If the transform is not a monotone scalar map.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a monotone scalar transform "
                                  "and has no sign")

    # shapes ---------------------------------------------------------------------------------
    def forward_shape(self, shape) -> tuple:
        """Shape of ``t(x)`` for ``x`` of shape ``shape`` (a tuple of ints)."""
        return tuple(shape)

    def inverse_shape(self, shape) -> tuple:
        """Shape of ``t.inverse(y)`` for ``y`` of shape ``shape``."""
        return tuple(shape)

    # equality --------------------------------------------------------------------------------
    def __eq__(self, other):
        """Transforms are equal when they are the same map: one type and equal parameters
        (parameter-free transforms of one type are always equal)."""
        if self is other:
            return True
        if type(self) is not type(other):
            return False
        return self._same_params(other)

    def __hash__(self):
        return hash(type(self))

    def _same_params(self, other) -> bool:
        return True

    def __repr__(self):
        return f"{type(self).__name__}()"


class _InverseTransform(Transform):
    """The inverse of a transform: ``t.inv`` (domain and codomain exchanged)."""

    def __init__(self, base: Transform):
        self.B = base.B
        self._inv = base
        self.base = base

    @property
    def domain(self):
        return self.base.codomain

    @property
    def codomain(self):
        return self.base.domain

    @property
    def bijective(self):
        return self.base.bijective

    @property
    def sign(self):
        return self.base.sign

    def _forward(self, x):
        return self.base._inverse(x)

    def _inverse(self, y):
        return self.base._forward(y)

    def log_abs_det_jacobian(self, x, y):
        return -self.base.log_abs_det_jacobian(y, x)

    def forward_shape(self, shape):
        return self.base.inverse_shape(shape)

    def inverse_shape(self, shape):
        return self.base.forward_shape(shape)

    def _same_params(self, other):
        return self.base == other.base

    def __repr__(self):
        return f"{self.base!r}.inv"


class IdentityTransform(Transform):
    """``y = x`` on the reals (log-det 0). Use :class:`IndependentTransform` for vectors."""

    def _forward(self, x):
        return x

    def _inverse(self, y):
        return y

    def log_abs_det_jacobian(self, x, y):
        return self.B.zeros_like(x)

    @property
    def sign(self):
        return 1.0


class ComposeTransform(Transform):
    """The transforms ``parts`` applied in order: ``t(x) = parts[-1](...parts[0](x))``.

    Parameters
    ----------
    parts : sequence of Transform
        Applied first to last; the inverse applies their inverses last to first. An empty
        sequence is the identity.

    Raises
    ------
    TypeError
        If an entry of ``parts`` is not a :class:`Transform`.

    Notes
    -----
    The event rank of the composition is the largest any part needs, tracked through the parts
    (a part with a scalar domain after a vector-valued one acts elementwise on the vector, and
    its log-det is summed over the vector axis), as in ``torch.distributions.ComposeTransform``.
    """

    def __init__(self, parts):
        super().__init__()
        parts = list(parts)
        for i, p in enumerate(parts):
            if not isinstance(p, Transform):
                raise TypeError(f"ComposeTransform: parts[{i}] must be a Transform, got "
                                f"{type(p).__name__}")
        self.parts = parts

    @property
    def domain(self):
        if not self.parts:
            return constraints.real
        dom = self.parts[0].domain
        # the event rank needed at the input, propagated back from the output
        event_dim = self.parts[-1].codomain.event_dim
        for p in reversed(self.parts):
            event_dim += p.domain.event_dim - p.codomain.event_dim
            event_dim = max(event_dim, p.domain.event_dim)
        extra = event_dim - dom.event_dim
        return constraints.independent(dom, extra) if extra > 0 else dom

    @property
    def codomain(self):
        if not self.parts:
            return constraints.real
        cod = self.parts[-1].codomain
        event_dim = self.parts[0].domain.event_dim
        for p in self.parts:
            event_dim += p.codomain.event_dim - p.domain.event_dim
            event_dim = max(event_dim, p.codomain.event_dim)
        extra = event_dim - cod.event_dim
        return constraints.independent(cod, extra) if extra > 0 else cod

    @property
    def bijective(self):
        return all(p.bijective for p in self.parts)

    @property
    def sign(self):
        s = 1.0
        for p in self.parts:
            s = s * p.sign
        return s

    def _forward(self, x):
        for p in self.parts:
            x = p._forward(x)
        return x

    def _inverse(self, y):
        for p in reversed(self.parts):
            y = p._inverse(y)
        return y

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        if not self.parts:
            return B.zeros_like(x)
        xs = [x]
        for p in self.parts[:-1]:
            xs.append(p._forward(xs[-1]))
        xs.append(y)
        event_dim = self.domain.event_dim
        total = 0.0
        for p, xi, yi in zip(self.parts, xs[:-1], xs[1:]):
            total = total + _sum_rightmost(B, p.log_abs_det_jacobian(xi, yi),
                                           event_dim - p.domain.event_dim)
            event_dim += p.codomain.event_dim - p.domain.event_dim
        return total

    def forward_shape(self, shape):
        for p in self.parts:
            shape = p.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape):
        for p in reversed(self.parts):
            shape = p.inverse_shape(shape)
        return tuple(shape)

    def _same_params(self, other):
        return len(self.parts) == len(other.parts) and all(
            a == b for a, b in zip(self.parts, other.parts))

    def __repr__(self):
        return f"ComposeTransform([{', '.join(repr(p) for p in self.parts)}])"


class IndependentTransform(Transform):
    """``base_transform`` with its ``reinterpreted_batch_ndims`` rightmost batch axes treated as
    event axes: the log-det is summed over them.

    Parameters
    ----------
    base_transform : Transform
    reinterpreted_batch_ndims : int (>= 0)

    Raises
    ------
    ValueError
        If ``reinterpreted_batch_ndims`` is negative.
    """

    def __init__(self, base_transform: Transform, reinterpreted_batch_ndims: int):
        n = int(reinterpreted_batch_ndims)
        if n < 0:
            raise ValueError("IndependentTransform: reinterpreted_batch_ndims must be >= 0, got "
                             f"{reinterpreted_batch_ndims}")
        super().__init__()
        self.B = base_transform.B
        self.base_transform = base_transform
        self.reinterpreted_batch_ndims = n

    @property
    def domain(self):
        return constraints.independent(self.base_transform.domain, self.reinterpreted_batch_ndims)

    @property
    def codomain(self):
        return constraints.independent(self.base_transform.codomain,
                                       self.reinterpreted_batch_ndims)

    @property
    def bijective(self):
        return self.base_transform.bijective

    @property
    def sign(self):
        return self.base_transform.sign

    def _forward(self, x):
        return self.base_transform._forward(x)

    def _inverse(self, y):
        return self.base_transform._inverse(y)

    def log_abs_det_jacobian(self, x, y):
        return _sum_rightmost(self.B, self.base_transform.log_abs_det_jacobian(x, y),
                              self.reinterpreted_batch_ndims)

    def forward_shape(self, shape):
        return self.base_transform.forward_shape(shape)

    def inverse_shape(self, shape):
        return self.base_transform.inverse_shape(shape)

    def _same_params(self, other):
        return (self.reinterpreted_batch_ndims == other.reinterpreted_batch_ndims
                and self.base_transform == other.base_transform)

    def __repr__(self):
        return f"IndependentTransform({self.base_transform!r}, {self.reinterpreted_batch_ndims})"


# -- elementwise transforms -----------------------------------------------------------------------
class ExpTransform(Transform):
    """``y = exp(x)``: reals -> positive reals; log-det ``x``."""

    codomain = constraints.positive

    def _forward(self, x):
        return self.B.exp(x)

    def _inverse(self, y):
        return self.B.log(y)

    def log_abs_det_jacobian(self, x, y):
        return x

    @property
    def sign(self):
        return 1.0


class SoftplusTransform(Transform):
    """``y = log(1 + exp(x))``: reals -> positive reals.

    The inverse is ``y + log(-expm1(-y))`` and the log-det ``-softplus(-x)`` (= log sigmoid(x)),
    both stable for large and small ``y`` and ``x``.
    """

    codomain = constraints.positive

    def _forward(self, x):
        return self.B.softplus(x)

    def _inverse(self, y):
        return y + self.B.log(-self.B.expm1(-y))

    def log_abs_det_jacobian(self, x, y):
        return -self.B.softplus(-x)

    @property
    def sign(self):
        return 1.0


class SigmoidTransform(Transform):
    """``y = 1 / (1 + exp(-x))``: reals -> unit interval.

    The output is clipped to ``[tiny, 1 - eps]`` of its dtype so that the inverse
    ``logit(y)`` stays finite (as torch and NumPyro do). The log-det
    ``-softplus(-x) - softplus(x)`` is computed from ``x``, so it is accurate in both tails.
    """

    codomain = constraints.unit_interval

    def _forward(self, x):
        fi = _finfo(self.B, x)
        return self.B.clip(self.B.expit(x), fi.tiny, 1.0 - fi.eps)

    def _inverse(self, y):
        return self.B.logit(y)

    def log_abs_det_jacobian(self, x, y):
        return -self.B.softplus(-x) - self.B.softplus(x)

    @property
    def sign(self):
        return 1.0


class TanhTransform(Transform):
    """``y = tanh(x)``: reals -> (-1, 1).

    The inverse clips ``y`` to ``[-1 + eps, 1 - eps]`` before ``arctanh`` (a rounded
    ``tanh`` can reach +-1). The log-det is ``2 (log 2 - x - softplus(-2 x))``, stable for
    large ``|x|``.
    """

    codomain = constraints.interval(-1.0, 1.0)

    def _forward(self, x):
        return self.B.tanh(x)

    def _inverse(self, y):
        eps = _finfo(self.B, y).eps
        return self.B.arctanh(self.B.clip(y, -1.0 + eps, 1.0 - eps))

    def log_abs_det_jacobian(self, x, y):
        return _log1m_tanh_sq(self.B, x)

    @property
    def sign(self):
        return 1.0


class AffineTransform(Transform):
    """``y = loc + scale * x``.

    Parameters
    ----------
    loc : float or Array
        Shift, broadcastable with ``x``.
    scale : float or Array
        Nonzero scale, broadcastable with ``x``.
    event_dim : int
        Number of trailing axes forming one event (the log-det is summed over them).

    Raises
    ------
    ValueError
        If ``scale`` is the Python number 0, or ``event_dim`` is negative.
    """

    def __init__(self, loc, scale, event_dim: int = 0):
        super().__init__()
        if isinstance(scale, (int, float)) and scale == 0:
            raise ValueError("AffineTransform: scale must be nonzero, got 0")
        if int(event_dim) < 0:
            raise ValueError(f"AffineTransform: event_dim must be >= 0, got {event_dim}")
        self.loc = _param(self.B, loc)
        self.scale = _param(self.B, scale)
        self.event_dim = int(event_dim)

    @property
    def domain(self):
        return constraints.independent(constraints.real, self.event_dim) if self.event_dim \
            else constraints.real

    codomain = domain

    @property
    def sign(self):
        if isinstance(self.scale, float):
            return math.copysign(1.0, self.scale)
        return self.B.sign(self.scale)

    def _forward(self, x):
        return self.loc + self.scale * x

    def _inverse(self, y):
        return (y - self.loc) / self.scale

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        # y carries the broadcast shape of x, loc and scale
        if isinstance(self.scale, float):
            ladj = B.full_like(y, math.log(abs(self.scale)))
        else:
            ladj = B.log(B.abs(self.scale)) * B.ones_like(y)
        return _sum_rightmost(B, ladj, self.event_dim)

    def forward_shape(self, shape):
        return self.B.broadcast_shapes(tuple(shape), _pshape(self.B, self.loc),
                                       _pshape(self.B, self.scale))

    inverse_shape = forward_shape

    def _same_params(self, other):
        return (self.event_dim == other.event_dim and _same_param(self.B, self.loc, other.loc)
                and _same_param(self.B, self.scale, other.scale))

    def __repr__(self):
        return f"AffineTransform(loc={self.loc!r}, scale={self.scale!r}, " \
               f"event_dim={self.event_dim})"


class PowerTransform(Transform):
    """``y = x ** exponent`` on the positive reals.

    Parameters
    ----------
    exponent : float or Array
        Nonzero exponent, broadcastable with ``x``.

    Raises
    ------
    ValueError
        If ``exponent`` is the Python number 0.

    Notes
    -----
    The log-det ``log|exponent| + (exponent - 1) log x`` is computed from ``x`` (no overflow of
    ``y / x``).
    """

    domain = constraints.positive
    codomain = constraints.positive

    def __init__(self, exponent):
        super().__init__()
        if isinstance(exponent, (int, float)) and exponent == 0:
            raise ValueError("PowerTransform: exponent must be nonzero, got 0")
        self.exponent = _param(self.B, exponent)

    def _forward(self, x):
        return self.B.power(x, self.exponent) if not isinstance(self.exponent, float) \
            else x ** self.exponent

    def _inverse(self, y):
        inv = 1.0 / self.exponent
        return self.B.power(y, inv) if not isinstance(inv, float) else y ** inv

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        if isinstance(self.exponent, float):
            return math.log(abs(self.exponent)) + (self.exponent - 1.0) * B.log(x)
        return B.log(B.abs(self.exponent)) + (self.exponent - 1.0) * B.log(x)

    @property
    def sign(self):
        if isinstance(self.exponent, float):
            return math.copysign(1.0, self.exponent)
        return self.B.sign(self.exponent)

    def forward_shape(self, shape):
        return self.B.broadcast_shapes(tuple(shape), _pshape(self.B, self.exponent))

    inverse_shape = forward_shape

    def _same_params(self, other):
        return _same_param(self.B, self.exponent, other.exponent)

    def __repr__(self):
        return f"PowerTransform(exponent={self.exponent!r})"


# -- vector and matrix transforms -----------------------------------------------------------------
class OrderedTransform(Transform):
    """Reals^K -> strictly increasing vectors: ``y_0 = x_0``, ``y_i = y_{i-1} + exp(x_i)``.

    Log-det ``sum(x[..., 1:])``. Shapes: (..., K) -> (..., K).
    """

    domain = constraints.real_vector
    codomain = constraints.ordered_vector

    def _forward(self, x):
        B = self.B
        return B.cumsum(B.concatenate([x[..., :1], B.exp(x[..., 1:])], axis=-1), -1)

    def _inverse(self, y):
        B = self.B
        return B.concatenate([y[..., :1], B.log(y[..., 1:] - y[..., :-1])], axis=-1)

    def log_abs_det_jacobian(self, x, y):
        return self.B.sum(x[..., 1:], axis=-1)


class StickBreakingTransform(Transform):
    """Reals^(K-1) -> the probability simplex in R^K, by stick breaking.

    ``z_i = sigmoid(x_i - log(K - 1 - i))`` is the fraction of the remaining stick given to
    component ``i`` (the shift maps ``x = 0`` to the uniform vector), ``y_i = z_i prod_{j<i}
    (1 - z_j)`` and ``y_{K-1}`` is the remainder. Computed in log space, so no component
    underflows through ``1 - z`` rounding to 0.

    Notes
    -----
    The log-det is that of the Jacobian onto the free coordinates ``y[..., :K-1]`` (it is
    triangular): ``sum_i log y_i + log(1 - z_i)``. The inverse divides by tail sums
    ``sum_{j>i} y_j`` rather than ``1 - cumsum(y)``, which cancels when the stick is nearly used
    up. Shapes: (..., K-1) -> (..., K).

    References
    ----------
    Stan Reference Manual, "Unit simplex" transform.
    """

    domain = constraints.real_vector
    codomain = constraints.simplex

    def _offset(self, x):
        m = self.B.shape(x)[-1]
        return self.B.asarray(np.log(np.arange(m, 0, -1, dtype=np.float64)),
                              dtype=self.B.dtype_of(x))

    def _log_parts(self, x):
        B = self.B
        xs = x - self._offset(x)
        log_z = B.log_expit(xs)
        log_1mz = -B.softplus(xs)
        zero = _zeros_col(B, x)
        # log of the stick left before component i, i = 0..K-1
        log_left = B.concatenate([zero, B.cumsum(log_1mz, -1)], axis=-1)
        return log_z, log_1mz, log_left

    def _forward(self, x):
        B = self.B
        log_z, _, log_left = self._log_parts(x)
        return B.exp(B.concatenate([log_z, _zeros_col(B, x)], axis=-1) + log_left)

    def _inverse(self, y):
        B = self.B
        tiny = _finfo(B, y).tiny
        tail = B.clip(_rev_cumsum(B, y[..., 1:]), tiny, None)
        head = B.clip(y[..., :-1], tiny, None)
        x = B.log(head) - B.log(tail)
        return x + self._offset(x)

    def log_abs_det_jacobian(self, x, y):
        log_z, log_1mz, log_left = self._log_parts(x)
        return self.B.sum(log_z + log_left[..., :-1] + log_1mz, axis=-1)

    def forward_shape(self, shape):
        shape = tuple(shape)
        if not shape:
            raise ValueError("StickBreakingTransform: the input needs a vector axis")
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        shape = tuple(shape)
        if not shape or shape[-1] < 1:
            raise ValueError("StickBreakingTransform: the simplex input needs a non-empty "
                             f"vector axis, got shape {shape}")
        return shape[:-1] + (shape[-1] - 1,)


class LowerCholeskyTransform(Transform):
    """Reals^(n(n+1)/2) -> lower-triangular matrices with positive diagonal.

    Layout (as NumPyro): the first ``n(n-1)/2`` entries fill the strictly lower triangle row by
    row; the last ``n`` are the logs of the diagonal. Log-det (onto the lower-triangular
    entries, diagonal included) ``sum(x[..., -n:])``. Shapes: (..., n(n+1)/2) -> (..., n, n).
    """

    domain = constraints.real_vector
    codomain = constraints.lower_cholesky

    def _forward(self, x):
        B = self.B
        n = _tri_size(B.shape(x)[-1], 0, type(self).__name__)
        m = n * (n - 1) // 2
        strict = _vec_to_tril(B, x[..., :m], n, -1)
        return strict + B.diag_embed(B.exp(x[..., m:]))

    def _inverse(self, y):
        B = self.B
        return B.concatenate([_tril_to_vec(B, y, -1), B.log(_diag(B, y))], axis=-1)

    def log_abs_det_jacobian(self, x, y):
        m = self.B.shape(x)[-1]
        n = _tri_size(m, 0, type(self).__name__)
        return self.B.sum(x[..., m - n:], axis=-1)

    def forward_shape(self, shape):
        shape = tuple(shape)
        n = _tri_size(shape[-1], 0, type(self).__name__)
        return shape[:-1] + (n, n)

    def inverse_shape(self, shape):
        shape = tuple(shape)
        n = shape[-1]
        return shape[:-2] + (n * (n + 1) // 2,)


class CorrCholeskyTransform(Transform):
    """Reals^(n(n-1)/2) -> Cholesky factors of correlation matrices (unit-norm rows).

    ``r = tanh(x)`` are partial correlations, placed row by row in the strictly lower triangle
    (NumPyro's layout); row ``i`` of the factor is built by stick breaking on the unit sphere:
    ``y_ij = r_ij sqrt(prod_{k<j} (1 - r_ik^2))`` for ``j < i`` and ``y_ii =
    sqrt(prod_{k<i} (1 - r_ik^2))``. Products are summed in log space from ``x``.

    Notes
    -----
    The log-det is that of the Jacobian onto the strictly lower entries (the diagonal is
    determined by them): ``sum_{i>j} [log(1 - r_ij^2) + 0.5 log prod_{k<j} (1 - r_ik^2)]``.
    The inverse divides by ``sqrt(sum_{k>=j} y_ik^2)`` (tail sums; no cancellation).
    Shapes: (..., n(n-1)/2) -> (..., n, n).

    References
    ----------
    Lewandowski, Kurowicka and Joe (2009), section 3.2; Stan Reference Manual, "Cholesky factors
    of correlation matrices".
    """

    domain = constraints.real_vector
    codomain = constraints.corr_cholesky

    def _parts(self, x):
        B = self.B
        n = _tri_size(B.shape(x)[-1], -1, type(self).__name__)
        eps = _finfo(B, x).eps
        # clipping keeps every diagonal entry >= ~sqrt(eps) (as torch and NumPyro)
        r = B.clip(B.tanh(x), -1.0 + eps, 1.0 - eps)
        log1m_r2 = B.clip(_log1m_tanh_sq(B, x), math.log(2.0 * eps), None)
        lmat = _vec_to_tril(B, log1m_r2, n, -1)
        excl = B.cumsum(lmat, -1) - lmat  # sum_{k<j} log(1 - r_ik^2)
        return n, r, log1m_r2, excl

    def _forward(self, x):
        B = self.B
        n, r, _, excl = self._parts(x)
        rmat = _vec_to_tril(B, r, n, -1) + B.eye(n, dtype=B.dtype_of(x))
        return rmat * B.exp(0.5 * excl)

    def _inverse(self, y):
        B = self.B
        fi = _finfo(B, y)
        tail = _rev_cumsum(B, y * y)  # sum_{k>=j} y_ik^2 = prod_{k<j} (1 - r_ik^2)
        denom = B.sqrt(B.clip(_tril_to_vec(B, tail, -1), fi.tiny, None))
        r = B.clip(_tril_to_vec(B, y, -1) / denom, -1.0 + fi.eps, 1.0 - fi.eps)
        return B.arctanh(r)

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        _, _, log1m_r2, excl = self._parts(x)
        return B.sum(log1m_r2, axis=-1) + 0.5 * B.sum(_tril_to_vec(B, excl, -1), axis=-1)

    def forward_shape(self, shape):
        shape = tuple(shape)
        n = _tri_size(shape[-1], -1, type(self).__name__)
        return shape[:-1] + (n, n)

    def inverse_shape(self, shape):
        shape = tuple(shape)
        n = shape[-1]
        return shape[:-2] + (n * (n - 1) // 2,)


class CholeskyTransform(Transform):
    """Positive-definite matrices -> their lower Cholesky factors, ``y = cholesky(x)``.

    Its inverse ``L -> L L^T`` (``CholeskyTransform().inv``) is how :data:`biject_to` reaches
    ``positive_definite``. Log-det (onto the lower-triangular entries of both sides)
    ``-(n log 2 + sum_i (n - i) log y_ii)``, i = 0..n-1.

    References
    ----------
    Edelman, "Jacobians of matrix transforms" (MIT 18.325 notes), the Cholesky factorisation.
    """

    domain = constraints.positive_definite
    codomain = constraints.lower_cholesky

    def _forward(self, x):
        return self.B.cholesky(x)

    def _inverse(self, y):
        return self.B.matmul(y, self.B.matrix_transpose(y))

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        n = B.shape(y)[-1]
        w = B.asarray(np.arange(n, 0, -1, dtype=np.float64), dtype=B.dtype_of(y))
        return -(n * _LOG2 + B.sum(w * B.log(_diag(B, y)), axis=-1))


class CorrMatrixCholeskyTransform(Transform):
    """Correlation matrices -> their Cholesky factors, ``y = cholesky(x)``.

    Its inverse ``L -> L L^T`` is how :data:`biject_to` reaches ``corr_matrix``. Log-det (onto
    the strictly lower entries of both sides) ``-sum_i (n - 1 - i) log y_ii``, i = 0..n-1.
    """

    domain = constraints.corr_matrix
    codomain = constraints.corr_cholesky

    def _forward(self, x):
        return self.B.cholesky(x)

    def _inverse(self, y):
        return self.B.matmul(y, self.B.matrix_transpose(y))

    def log_abs_det_jacobian(self, x, y):
        B = self.B
        n = B.shape(y)[-1]
        w = B.asarray(np.arange(n - 1, -1, -1, dtype=np.float64), dtype=B.dtype_of(y))
        return -B.sum(w * B.log(_diag(B, y)), axis=-1)


# -- biject_to ------------------------------------------------------------------------------------
class ConstraintRegistry:
    """Maps constraints to factories of transforms from unconstrained space onto them.

    Lookup first tries a factory registered for the very constraint object, then one registered
    for its class or the nearest ancestor class (method resolution order).
    """

    def __init__(self):
        self._by_instance = {}
        self._by_type = {}

    def register(self, constraint, factory=None):
        """Register ``factory(constraint) -> Transform`` for a constraint class or instance.

        Usable as a decorator: ``@biject_to.register(MyConstraint)``. A later registration for
        the same key replaces the earlier one.

        Parameters
        ----------
        constraint : Constraint subclass or Constraint instance
        factory : callable or None

        Returns
        -------
        ``factory`` (or the decorator when ``factory`` is None).

        Raises
        ------
        TypeError
            If ``constraint`` is neither a Constraint subclass nor a Constraint instance.
        """
        if factory is None:
            return lambda f: self.register(constraint, f)
        if isinstance(constraint, type) and issubclass(constraint, Constraint):
            self._by_type[constraint] = factory
        elif isinstance(constraint, Constraint):
            # keep the object alive with its factory, so its id cannot be reused
            self._by_instance[id(constraint)] = (constraint, factory)
        else:
            raise TypeError("register: constraint must be a Constraint subclass or instance, "
                            f"got {constraint!r}")
        return factory

    def __call__(self, constraint) -> Transform:
        """A bijective :class:`Transform` whose codomain is ``constraint``, built under the
        active backend.

        Raises
        ------
        TypeError
            If ``constraint`` is not a Constraint.
        NotImplementedError
            If no factory is registered for it (discrete constraints, ``dependent``).
        """
        if not isinstance(constraint, Constraint):
            raise TypeError(f"biject_to: expected a Constraint, got {constraint!r}")
        entry = self._by_instance.get(id(constraint))
        if entry is not None and entry[0] is constraint:
            return entry[1](constraint)
        for cls in type(constraint).__mro__:
            if cls in self._by_type:
                return self._by_type[cls](constraint)
        raise NotImplementedError(
            f"biject_to: no bijection is registered for the constraint {constraint!r} "
            f"({type(constraint).__name__}); register one with "
            "agvi.distributions.biject_to.register(constraint, factory)")


biject_to = ConstraintRegistry()
#: The same registry as :data:`biject_to` (every registered transform is bijective).
transform_to = biject_to


def _is_zero(v):
    return isinstance(v, (int, float)) and v == 0


def _is_one(v):
    return isinstance(v, (int, float)) and v == 1


@biject_to.register(type(constraints.real))
def _biject_real(constraint):
    return IdentityTransform()


@biject_to.register(constraints.greater_than)
def _biject_greater_than(constraint):
    lb = constraint.lower_bound
    if _is_zero(lb):
        return ExpTransform()
    return ComposeTransform([ExpTransform(), AffineTransform(lb, 1.0)])


@biject_to.register(constraints.less_than)
def _biject_less_than(constraint):
    return ComposeTransform([ExpTransform(), AffineTransform(constraint.upper_bound, -1.0)])


@biject_to.register(constraints.interval)
def _biject_interval(constraint):
    lo, hi = constraint.lower_bound, constraint.upper_bound
    if _is_zero(lo) and _is_one(hi):
        return SigmoidTransform()
    B = get_backend()
    lo_a, hi_a = _param(B, lo), _param(B, hi)
    return ComposeTransform([SigmoidTransform(), AffineTransform(lo_a, hi_a - lo_a)])


@biject_to.register(constraints.independent)
def _biject_independent(constraint):
    base = biject_to(constraint.base_constraint)
    return IndependentTransform(base, constraint.reinterpreted_batch_ndims)


@biject_to.register(type(constraints.simplex))
def _biject_simplex(constraint):
    return StickBreakingTransform()


@biject_to.register(type(constraints.ordered_vector))
def _biject_ordered(constraint):
    return OrderedTransform()


@biject_to.register(type(constraints.lower_cholesky))
def _biject_lower_cholesky(constraint):
    return LowerCholeskyTransform()


@biject_to.register(type(constraints.corr_cholesky))
def _biject_corr_cholesky(constraint):
    return CorrCholeskyTransform()


@biject_to.register(type(constraints.positive_definite))
def _biject_positive_definite(constraint):
    return ComposeTransform([LowerCholeskyTransform(), CholeskyTransform().inv])


@biject_to.register(type(constraints.corr_matrix))
def _biject_corr_matrix(constraint):
    return ComposeTransform([CorrCholeskyTransform(), CorrMatrixCholeskyTransform().inv])
