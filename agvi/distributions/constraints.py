"""Constraints: the sets that parameters and samples live in.

A constraint is a stateless object; ``constraint.check(value, B)`` returns a boolean Array of the
value's batch shape (the last ``event_dim`` axes are reduced), computed with the Backend ``B``
(default: the active one). :func:`agvi.distributions.transforms.biject_to` maps each constraint
to a bijection from unconstrained space.
"""

from __future__ import annotations

from ..backends import get_backend

__all__ = [
    "Constraint", "boolean", "corr_cholesky", "corr_matrix", "dependent", "greater_than",
    "greater_than_eq", "independent", "integer_greater_than", "integer_interval", "interval",
    "less_than", "lower_cholesky", "nonnegative", "nonnegative_integer", "ordered_vector",
    "positive", "positive_definite", "positive_integer", "positive_vector", "real",
    "real_vector", "simplex", "unit_interval", "multinomial",
]


class Constraint:
    """Base class: a set of values, with ``event_dim`` trailing axes checked jointly.

    Attributes
    ----------
    event_dim : int
        Number of rightmost axes that form one element of the set (0 for scalars, 1 for a
        simplex, 2 for a Cholesky factor).
    is_discrete : bool
        Whether the set is countable.
    """

    event_dim = 0
    is_discrete = False

    def check(self, value, B=None):
        """Boolean Array, shape ``value.shape[:ndim - event_dim]``: membership of each element."""
        B = B or get_backend()
        return self._check(B, value)

    def _check(self, B, value):
        raise NotImplementedError(f"{type(self).__name__} does not implement check")

    def __call__(self, value, B=None):
        return self.check(value, B)

    def __repr__(self):
        return type(self).__name__.lstrip("_").lower()


def _bound(B, b):
    """A bound as an operand of ``B``: Python numbers as they are, arrays (e.g. NumPy bounds
    checked on the torch backend) converted to ``B``'s arrays."""
    return b if isinstance(b, (int, float)) else B.asarray(b)


class _Real(Constraint):
    def _check(self, B, x):
        return x == x  # False exactly for nan

    def __repr__(self):
        return "real"


class _Dependent(Constraint):
    """A placeholder for parameters whose valid set depends on other parameters (not checked)."""

    def _check(self, B, x):
        return B.ones_like(x) > 0

    def __repr__(self):
        return "dependent"


class _Boolean(Constraint):
    is_discrete = True

    def _check(self, B, x):
        return (x == 0) | (x == 1)

    def __repr__(self):
        return "boolean"


class greater_than(Constraint):
    """x > lower_bound."""

    def __init__(self, lower_bound):
        self.lower_bound = lower_bound

    def _check(self, B, x):
        return x > _bound(B, self.lower_bound)

    def __repr__(self):
        return f"greater_than(lower_bound={self.lower_bound})"


class greater_than_eq(greater_than):
    """x >= lower_bound."""

    def _check(self, B, x):
        return x >= _bound(B, self.lower_bound)

    def __repr__(self):
        return f"greater_than_eq(lower_bound={self.lower_bound})"


class less_than(Constraint):
    """x < upper_bound."""

    def __init__(self, upper_bound):
        self.upper_bound = upper_bound

    def _check(self, B, x):
        return x < _bound(B, self.upper_bound)

    def __repr__(self):
        return f"less_than(upper_bound={self.upper_bound})"


class interval(Constraint):
    """lower_bound <= x <= upper_bound (closed, as torch and NumPyro check it)."""

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def _check(self, B, x):
        return (x >= _bound(B, self.lower_bound)) & (x <= _bound(B, self.upper_bound))

    def __repr__(self):
        return f"interval(lower_bound={self.lower_bound}, upper_bound={self.upper_bound})"


class integer_interval(Constraint):
    """Integers in [lower_bound, upper_bound]."""

    is_discrete = True

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def _check(self, B, x):
        return ((x == B.floor(x)) & (x >= _bound(B, self.lower_bound))
                & (x <= _bound(B, self.upper_bound)))

    def __repr__(self):
        return f"integer_interval(lower_bound={self.lower_bound}, upper_bound={self.upper_bound})"


class integer_greater_than(Constraint):
    """Integers >= lower_bound."""

    is_discrete = True

    def __init__(self, lower_bound):
        self.lower_bound = lower_bound

    def _check(self, B, x):
        return (x == B.floor(x)) & (x >= _bound(B, self.lower_bound))

    def __repr__(self):
        return f"integer_greater_than(lower_bound={self.lower_bound})"


class independent(Constraint):
    """``base_constraint`` with ``reinterpreted_batch_ndims`` more axes checked jointly."""

    def __init__(self, base_constraint, reinterpreted_batch_ndims: int):
        self.base_constraint = base_constraint
        self.reinterpreted_batch_ndims = int(reinterpreted_batch_ndims)
        self.event_dim = base_constraint.event_dim + self.reinterpreted_batch_ndims
        self.is_discrete = base_constraint.is_discrete

    def _check(self, B, x):
        ok = self.base_constraint.check(x, B)
        n = self.reinterpreted_batch_ndims
        return B.all(ok, axis=tuple(range(-n, 0))) if n else ok

    def __repr__(self):
        return f"independent({self.base_constraint!r}, {self.reinterpreted_batch_ndims})"


class _Simplex(Constraint):
    event_dim = 1

    def _check(self, B, x):
        tol = 1e-6 if B.precision == "float64" else 1e-4
        return B.all(x >= 0, axis=-1) & (B.abs(B.sum(x, axis=-1) - 1) < tol)

    def __repr__(self):
        return "simplex"


class multinomial(Constraint):
    """Non-negative integer vectors summing to ``upper_bound`` (the total count)."""

    is_discrete = True
    event_dim = 1

    def __init__(self, upper_bound):
        self.upper_bound = upper_bound

    def _check(self, B, x):
        return (B.all((x >= 0) & (x == B.floor(x)), axis=-1)
                & (B.sum(x, axis=-1) == self.upper_bound))

    def __repr__(self):
        return f"multinomial(upper_bound={self.upper_bound})"


class _OrderedVector(Constraint):
    event_dim = 1

    def _check(self, B, x):
        return B.all(x[..., 1:] > x[..., :-1], axis=-1) & B.all(x == x, axis=-1)

    def __repr__(self):
        return "ordered_vector"


class _LowerCholesky(Constraint):
    event_dim = 2

    def _check(self, B, x):
        lower = B.all(B.all(B.tril(x) == x, axis=-1), axis=-1)
        return lower & B.all(B.diagonal(x) > 0, axis=-1)

    def __repr__(self):
        return "lower_cholesky"


class _CorrCholesky(Constraint):
    event_dim = 2

    def _check(self, B, x):
        tol = 1e-6 if B.precision == "float64" else 1e-4
        rows = B.abs(B.norm(x, axis=-1) - 1) < tol
        return _LowerCholesky()._check(B, x) & B.all(rows, axis=-1)

    def __repr__(self):
        return "corr_cholesky"


class _PositiveDefinite(Constraint):
    event_dim = 2

    def _check(self, B, x):
        tol = 1e-6 if B.precision == "float64" else 1e-4
        sym = B.all(B.all(B.abs(x - B.matrix_transpose(x)) < tol, axis=-1), axis=-1)
        eig = B.eigh((x + B.matrix_transpose(x)) / 2)[0]
        return sym & B.all(eig > 0, axis=-1)

    def __repr__(self):
        return "positive_definite"


class _CorrMatrix(_PositiveDefinite):
    def _check(self, B, x):
        tol = 1e-6 if B.precision == "float64" else 1e-4
        unit = B.all(B.abs(B.diagonal(x) - 1) < tol, axis=-1)
        return super()._check(B, x) & unit

    def __repr__(self):
        return "corr_matrix"


real = _Real()
dependent = _Dependent()
boolean = _Boolean()
positive = greater_than(0.0)
nonnegative = greater_than_eq(0.0)
unit_interval = interval(0.0, 1.0)
nonnegative_integer = integer_greater_than(0)
positive_integer = integer_greater_than(1)
real_vector = independent(real, 1)
positive_vector = independent(positive, 1)
simplex = _Simplex()
ordered_vector = _OrderedVector()
lower_cholesky = _LowerCholesky()
corr_cholesky = _CorrCholesky()
positive_definite = _PositiveDefinite()
corr_matrix = _CorrMatrix()
