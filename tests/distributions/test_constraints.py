"""Constraints: membership of values inside and outside each set, on every backend and precision.

Each row gives a constraint, a batch of values (the last ``event_dim`` axes form one element)
and the expected membership of each element; the check must return exactly that boolean
array, of the batch shape.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi
from agvi.distributions import constraints as C

NAN = math.nan

# (id, constraint, values, expected membership per element)
ROWS = [
    ("real", C.real, [0.0, -1e10, 3.5, NAN], [True, True, True, False]),
    ("boolean", C.boolean, [0.0, 1.0, 0.5, 2.0, -1.0], [True, True, False, False, False]),
    ("positive", C.positive, [1e-30, 2.0, 0.0, -1.0], [True, True, False, False]),
    ("nonnegative", C.nonnegative, [0.0, 3.0, -1e-30], [True, True, False]),
    ("greater_than", C.greater_than(1.5), [1.6, 100.0, 1.5, 0.0], [True, True, False, False]),
    ("greater_than_eq", C.greater_than_eq(1.5), [1.5, 2.0, 1.49], [True, True, False]),
    ("less_than", C.less_than(-1.0), [-1.1, -50.0, -1.0, 0.0], [True, True, False, False]),
    ("interval", C.interval(-1.0, 2.0), [-1.0, 0.0, 2.0, -1.01, 2.01],
     [True, True, True, False, False]),
    ("interval_array_bounds", C.interval(np.array([0.0, 1.0]), np.array([1.0, 3.0])),
     [[0.5, 2.0], [1.5, 0.5]], [[True, True], [False, False]]),
    ("greater_than_array_bound", C.greater_than(np.array([0.0, 5.0])), [[1.0, 4.0]],
     [[True, False]]),
    ("unit_interval", C.unit_interval, [0.0, 0.5, 1.0, -0.1, 1.1],
     [True, True, True, False, False]),
    ("integer_interval", C.integer_interval(0, 3), [0.0, 3.0, 1.0, 1.5, -1.0, 4.0],
     [True, True, True, False, False, False]),
    ("integer_greater_than", C.integer_greater_than(2), [2.0, 5.0, 1.0, 2.5],
     [True, True, False, False]),
    ("nonnegative_integer", C.nonnegative_integer, [0.0, 7.0, -1.0, 0.5],
     [True, True, False, False]),
    ("positive_integer", C.positive_integer, [1.0, 7.0, 0.0, 1.5], [True, True, False, False]),
    ("dependent", C.dependent, [NAN, -1.0, 1e30], [True, True, True]),
    ("real_vector", C.real_vector, [[1.0, 2.0], [NAN, 0.0]], [True, False]),
    ("positive_vector", C.positive_vector, [[1.0, 2.0, 3.0], [1.0, -1.0, 3.0]], [True, False]),
    ("independent_2", C.independent(C.interval(0.0, 1.0), 2),
     [[[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.3, 1.4]]], [True, False]),
    ("simplex", C.simplex, [[0.2, 0.3, 0.5], [0.5, 0.6, -0.1], [0.2, 0.2, 0.2], [0.0, 0.0, 1.0]],
     [True, False, False, True]),
    ("multinomial", C.multinomial(3), [[1.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.5, 1.5, 0.0],
                                       [4.0, -1.0, 0.0]], [True, False, False, False]),
    ("ordered_vector", C.ordered_vector, [[-1.0, 0.0, 3.0], [0.0, 0.0, 1.0], [2.0, 1.0, 3.0],
                                          [NAN, 1.0, 2.0]], [True, False, False, False]),
    ("lower_cholesky", C.lower_cholesky,
     [[[1.0, 0.0], [0.5, 2.0]], [[1.0, 0.1], [0.5, 2.0]], [[1.0, 0.0], [0.5, -2.0]],
      [[0.0, 0.0], [0.5, 2.0]]], [True, False, False, False]),
    ("corr_cholesky", C.corr_cholesky,
     [[[1.0, 0.0], [0.6, 0.8]], [[1.0, 0.0], [0.6, 0.9]], [[1.0, 0.0], [0.6, -0.8]],
      [[0.8, 0.6], [0.0, 1.0]]], [True, False, False, False]),
    ("positive_definite", C.positive_definite,
     [[[2.0, 0.5], [0.5, 1.0]], [[1.0, 2.0], [2.0, 1.0]], [[2.0, 0.5], [0.4, 1.0]],
      [[1.0, 0.0], [0.0, 0.0]]], [True, False, False, False]),
    ("corr_matrix", C.corr_matrix,
     [[[1.0, 0.3], [0.3, 1.0]], [[2.0, 0.3], [0.3, 1.0]], [[1.0, 1.2], [1.2, 1.0]],
      [[1.0, 0.3], [0.2, 1.0]]], [True, False, False, False]),
]


@pytest.mark.parametrize("name,constraint,values,expected", ROWS, ids=[r[0] for r in ROWS])
def test_check_membership(backend, name, constraint, values, expected):
    B = backend
    with agvi.use_backend(B):
        x = B.asarray(np.asarray(values, dtype=np.float64))
        ok = constraint.check(x, B)
        ok_default = constraint(x)  # __call__, with the active backend
    expected = np.asarray(expected)
    got = np.asarray(B.to_numpy(ok))
    assert got.dtype == np.bool_, f"{name}: check returned {got.dtype}, expected bool"
    assert got.shape == expected.shape == B.shape(x)[:B.ndim(x) - constraint.event_dim]
    np.testing.assert_array_equal(got, expected, err_msg=name)
    np.testing.assert_array_equal(np.asarray(B.to_numpy(ok_default)), expected)


def test_event_dims_and_discreteness():
    assert C.real.event_dim == 0 and C.positive.event_dim == 0
    assert C.real_vector.event_dim == 1 and C.simplex.event_dim == 1
    assert C.ordered_vector.event_dim == 1 and C.multinomial(2).event_dim == 1
    for c in (C.lower_cholesky, C.corr_cholesky, C.positive_definite, C.corr_matrix):
        assert c.event_dim == 2, repr(c)
    assert C.independent(C.simplex, 2).event_dim == 3
    for c in (C.boolean, C.nonnegative_integer, C.positive_integer, C.integer_interval(0, 2),
              C.multinomial(3), C.independent(C.boolean, 1)):
        assert c.is_discrete, repr(c)
    for c in (C.real, C.positive, C.simplex, C.interval(0, 1), C.corr_matrix):
        assert not c.is_discrete, repr(c)


def test_reprs_name_the_set():
    assert repr(C.real) == "real"
    assert repr(C.simplex) == "simplex"
    assert repr(C.positive) == "greater_than(lower_bound=0.0)"
    assert repr(C.interval(0.0, 2.0)) == "interval(lower_bound=0.0, upper_bound=2.0)"
    assert repr(C.independent(C.real, 1)) == "independent(real, 1)"
    assert repr(C.corr_cholesky) == "corr_cholesky"


def test_float32_tolerances(backend):
    """The sum-to-one and unit-norm checks allow rounding of the backend's precision."""
    B = backend
    eps = 1e-7 if B.precision == "float64" else 1e-5
    with agvi.use_backend(B):
        s = B.asarray([[0.2, 0.3, 0.5 + eps]])
        L = B.asarray([[[1.0, 0.0], [0.6, 0.8 + eps]]])
    assert bool(B.to_numpy(C.simplex.check(s, B))[0])
    assert bool(B.to_numpy(C.corr_cholesky.check(L, B))[0])
