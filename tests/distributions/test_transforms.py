"""Transforms, ``biject_to`` and ``TransformedDistribution`` on every backend and precision.

- Round trips ``x -> y -> x`` on random inputs (hypothesis-drawn seeds), ``y`` in the codomain,
  ``forward_shape`` / ``inverse_shape`` against the real shapes.
- ``log_abs_det_jacobian`` against ``log|det J|`` of the Jacobian from the backend's own
  ``B.jacobian``, restricted to the free coordinates where the codomain is a manifold (the first
  K-1 simplex entries, the lower triangle of a Cholesky factor or of a positive-definite matrix,
  the strict lower triangle of a correlation Cholesky factor or correlation matrix).
- ``biject_to`` on every continuous constraint lands in it; discrete ones raise.
- ``TransformedDistribution``: Normal + Exp against ``scipy.stats.lognorm``; Normal + [Sigmoid,
  Affine] against a hand-computed density; decreasing chains (cdf / icdf); vector events;
  broadcasting; validation; pathwise gradients.

Tolerances: float64 round trips rtol 1e-10 (atol 1e-10 for entries near 0), float64 log-dets
1e-9 (both sides exact to rounding); float32 2e-4 relative / 2e-4 absolute (a few ulps of the
largest intermediate, amplified by at most ~20 near the ends of (0, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import agvi
import agvi.distributions as dist
from agvi.distributions import constraints
from agvi.distributions.transformed import TransformedDistribution
from agvi.distributions.transforms import (
    AffineTransform,
    CholeskyTransform,
    ComposeTransform,
    CorrCholeskyTransform,
    CorrMatrixCholeskyTransform,
    ExpTransform,
    IdentityTransform,
    IndependentTransform,
    LowerCholeskyTransform,
    OrderedTransform,
    PowerTransform,
    SigmoidTransform,
    SoftplusTransform,
    StickBreakingTransform,
    TanhTransform,
    Transform,
    biject_to,
    transform_to,
)

ROUNDTRIP_TOL = {"float64": (1e-10, 1e-10), "float32": (2e-4, 2e-4)}
LADJ_TOL = {"float64": (1e-9, 1e-9), "float32": (2e-4, 2e-4)}
FD_STEP = 1e-6  # central differences of the log-det (float64 only)
SEEDS = settings(max_examples=3, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _np(B, x):
    return np.asarray(B.to_numpy(x), dtype=np.float64)


def _all(B, ok) -> bool:
    return bool(np.all(B.to_numpy(ok)))


def _close(B, actual, expected, tol, what=""):
    rtol, atol = tol[B.precision]
    np.testing.assert_allclose(_np(B, actual), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------------------- triangle helpers (test side)
def _tril_take(B, y, offset):
    """The triangle ``offset`` of (..., n, n) as (..., m), row-major (numpy.tril_indices)."""
    n = B.shape(y)[-1]
    rows, cols = np.tril_indices(n, offset)
    return B.take(B.reshape(y, B.shape(y)[:-2] + (n * n,)), rows * n + cols, axis=-1)


def _tril_place(B, v, n, offset):
    """Inverse of :func:`_tril_take`: (..., m) into the triangle of (..., n, n) zeros."""
    m = B.shape(v)[-1]
    rows, cols = np.tril_indices(n, offset)
    gather = np.full(n * n, m)
    gather[rows * n + cols] = np.arange(m)
    ext = B.concatenate([v, B.zeros_like(B.sum(v, axis=-1, keepdims=True))], axis=-1)
    return B.reshape(B.take(ext, gather, axis=-1), B.shape(v)[:-1] + (n, n))


def _sym_from_tril(B, v, n):
    """Symmetric matrix from its lower triangle (diagonal included)."""
    low = _tril_place(B, v, n, 0)
    return low + B.matrix_transpose(low) - low * B.eye(n, dtype=B.dtype_of(v))


def _corr_from_strict(B, v, n):
    """Symmetric unit-diagonal matrix from its strict lower triangle."""
    low = _tril_place(B, v, n, -1)
    return low + B.matrix_transpose(low) + B.eye(n, dtype=B.dtype_of(v))


def _corr_chol_from_strict(B, v, n):
    """Lower-triangular matrix with unit-norm rows from its strict lower triangle."""
    low = _tril_place(B, v, n, -1)
    diag = B.sqrt(1.0 - B.sum(low * low, axis=-1))
    return low + B.diag_embed(diag)


def _simplex_from_head(B, v):
    return B.concatenate([v, 1.0 - B.sum(v, axis=-1, keepdims=True)], axis=-1)


# ---------------------------------------------------------------------------------- cases
def _normal(scale=1.0):
    return lambda B, rng, shape: B.asarray(scale * rng.normal(size=shape))


def _positive(B, rng, shape):
    return B.asarray(np.exp(rng.normal(size=shape)))


def _unit(B, rng, shape):
    return B.asarray(sp.expit(1.5 * rng.normal(size=shape)))


def _pd(n):
    def draw(B, rng, shape):
        a = rng.normal(size=shape[:-2] + (n, n))
        return B.asarray(a @ np.swapaxes(a, -1, -2) + n * np.eye(n))
    return draw


def _corr(n):
    def draw(B, rng, shape):
        a = rng.normal(size=shape[:-2] + (n, n))
        s = a @ np.swapaxes(a, -1, -2) + n * np.eye(n)
        d = np.sqrt(np.diagonal(s, axis1=-2, axis2=-1))
        return B.asarray(s / d[..., :, None] / d[..., None, :])
    return draw


def _pushed(make_fwd, m, out_rank=1):
    """Points of a codomain: ``make_fwd()`` applied to standard normals of event size m (the
    codomain has ``out_rank`` event axes)."""
    return lambda B, rng, shape: make_fwd()(
        B.asarray(rng.normal(size=shape[:len(shape) - out_rank] + (m,))))


@dataclass
class Case:
    """One transform under test.

    ``x(B, rng, shape)`` draws inputs of ``shape = batch + event`` in the domain. For the
    Jacobian, ``free_in``/``embed_in`` map inputs to and from their free coordinates and
    ``free_out`` picks the free coordinates of the output (identity when None). ``scalar``
    transforms act elementwise on a vector of ``event`` scalars.
    """

    id: str
    make: Callable[[], Transform]
    event: tuple
    x: Callable = _normal()
    scalar: bool = False
    free_out: Callable | None = None
    free_in: Callable | None = None
    embed_in: Callable | None = None


def _ab_affine():
    B = agvi.get_backend()
    return AffineTransform(B.asarray([0.5, -1.0, 2.0, 0.0]), B.asarray([2.0, -0.5, 3.0, -1.5]))


CASES = [
    Case("exp", ExpTransform, (4,), scalar=True),
    Case("softplus", SoftplusTransform, (4,), _normal(3.0), scalar=True),
    Case("sigmoid", SigmoidTransform, (4,), _normal(2.0), scalar=True),
    Case("tanh", TanhTransform, (4,), _normal(1.5), scalar=True),
    Case("identity", IdentityTransform, (4,), scalar=True),
    Case("affine", lambda: AffineTransform(0.5, -2.0), (4,), scalar=True),
    Case("affine_array", _ab_affine, (4,), scalar=True),
    Case("affine_event1", lambda: AffineTransform(
        agvi.get_backend().asarray([1.0, 2.0, 3.0]),
        agvi.get_backend().asarray([0.5, -2.0, 4.0]), event_dim=1), (3,)),
    Case("power", lambda: PowerTransform(2.5), (4,), _positive, scalar=True),
    Case("power_negative", lambda: PowerTransform(-0.7), (4,), _positive, scalar=True),
    Case("compose_exp_affine",
         lambda: ComposeTransform([ExpTransform(), AffineTransform(1.0, 3.0)]), (4,), scalar=True),
    Case("exp_inv", lambda: ExpTransform().inv, (4,), _positive, scalar=True),
    Case("sigmoid_inv", lambda: SigmoidTransform().inv, (4,), _unit, scalar=True),
    Case("interval_array", lambda: biject_to(constraints.interval(np.array([-1.0, 0.0, 2.0, 5.0]),
                                                                 np.array([1.0, 0.5, 7.0, 6.0]))),
         (4,), scalar=True),
    Case("independent_exp", lambda: IndependentTransform(ExpTransform(), 1), (4,)),
    Case("ordered", OrderedTransform, (4,)),
    Case("stick_breaking", StickBreakingTransform, (3,), _normal(2.0),
         free_out=lambda B, y: y[..., :-1]),
    Case("stick_breaking_inv", lambda: StickBreakingTransform().inv, (4,),
         _pushed(StickBreakingTransform, 3), free_in=lambda B, x: x[..., :-1],
         embed_in=_simplex_from_head),
    Case("lower_cholesky", LowerCholeskyTransform, (6,),
         free_out=lambda B, y: _tril_take(B, y, 0)),
    Case("lower_cholesky_inv", lambda: LowerCholeskyTransform().inv, (3, 3),
         _pushed(LowerCholeskyTransform, 6, 2), free_in=lambda B, x: _tril_take(B, x, 0),
         embed_in=lambda B, v: _tril_place(B, v, 3, 0)),
    Case("corr_cholesky", CorrCholeskyTransform, (6,),
         free_out=lambda B, y: _tril_take(B, y, -1)),
    Case("corr_cholesky_n2", CorrCholeskyTransform, (1,),
         free_out=lambda B, y: _tril_take(B, y, -1)),
    Case("corr_cholesky_inv", lambda: CorrCholeskyTransform().inv, (4, 4),
         _pushed(CorrCholeskyTransform, 6, 2), free_in=lambda B, x: _tril_take(B, x, -1),
         embed_in=lambda B, v: _corr_chol_from_strict(B, v, 4)),
    Case("cholesky", CholeskyTransform, (3, 3), _pd(3),
         free_out=lambda B, y: _tril_take(B, y, 0), free_in=lambda B, x: _tril_take(B, x, 0),
         embed_in=lambda B, v: _sym_from_tril(B, v, 3)),
    Case("corr_matrix_cholesky", CorrMatrixCholeskyTransform, (3, 3), _corr(3),
         free_out=lambda B, y: _tril_take(B, y, -1), free_in=lambda B, x: _tril_take(B, x, -1),
         embed_in=lambda B, v: _corr_from_strict(B, v, 3)),
    Case("biject_positive_definite", lambda: biject_to(constraints.positive_definite), (6,),
         free_out=lambda B, y: _tril_take(B, y, 0)),
    Case("biject_corr_matrix", lambda: biject_to(constraints.corr_matrix), (3,),
         free_out=lambda B, y: _tril_take(B, y, -1)),
]
CASE_IDS = [c.id for c in CASES]


def _ladj_shape(t, x_shape):
    return tuple(x_shape[:len(x_shape) - t.domain.event_dim])


_COMPILED: dict = {}


def _compiled(B, key, fn):
    """``B.jit(fn)``, cached per backend and ``key``: on JAX one compiled program per case is
    far cheaper than compiling every eager op (and hypothesis reruns reuse it); on NumPy and
    torch ``jit`` is the identity, so those backends run the same code eagerly."""
    full = (B.name, B.precision, key)
    if full not in _COMPILED:
        _COMPILED[full] = B.jit(fn)
    return _COMPILED[full]


NB = 3  # batch size of the inputs of every case


def _analyse(B, case, x):
    """Everything the case tests need about ``x`` (shape (NB,) + event), in one program:
    forward and inverse images, log-dets, membership, and the Jacobian onto the free
    coordinates (compiled once per backend and case by :func:`_compiled`)."""
    def run(x):
        t = case.make()
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        v = case.free_in(B, x) if case.free_in else x

        def g(v):
            y = t(case.embed_in(B, v) if case.embed_in else v)
            out = case.free_out(B, y) if case.free_out else y
            # the batch elements are independent: summing them keeps each block of J
            return B.reshape(B.sum(out, axis=0), (-1,))

        def total_ladj(x):
            # the 0 * sum(x) term keeps constant log-dets (identity, affine) on the torch
            # backend's tape: its grad raises for an output that does not depend on the input
            return B.sum(t.log_abs_det_jacobian(x, t(x))) + 0.0 * B.sum(x)

        # central differences of the summed log-det, all coordinates at once (an extra
        # leading batch axis of perturbed inputs)
        size = int(np.prod(B.shape(x)))
        basis = B.asarray(np.eye(size).reshape((size,) + B.shape(x)), dtype=B.dtype_of(x))
        h = FD_STEP
        batch_axes = tuple(range(1, 1 + B.ndim(x) - t.domain.event_dim))

        def ladj_of(z):
            return B.sum(t.log_abs_det_jacobian(z, t(z)), axis=batch_axes)

        out = {"y": y, "x_back": t.inv(y), "x_inverse": t.inverse(y), "ladj": ladj,
               "inv_ladj": t.inv.log_abs_det_jacobian(y, x), "jac": B.jacobian(g)(v),
               "in_domain": t.domain.check(x, B), "in_codomain": t.codomain.check(y, B)}
        if B.precision == "float64":  # differences are too coarse to test in float32
            fd = (ladj_of(x + h * basis) - ladj_of(x - h * basis)) / (2 * h)
            out["ladj_grad"] = B.grad(total_ladj)(x)
            out["ladj_grad_fd"] = B.reshape(fd, B.shape(x))
        return out

    return _compiled(B, ("analyse", case.id), run)(x)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@SEEDS
@given(seed=hst.integers(0, 2**31 - 1))
def test_round_trip_codomain_and_shapes(backend, case, seed):
    B = backend
    with agvi.use_backend(B):
        t = case.make()
        x = case.x(B, np.random.default_rng(seed), (NB,) + case.event)
        out = _analyse(B, case, x)
    y, ladj = out["y"], out["ladj"]
    assert t.B is B
    assert _all(B, out["in_domain"]), f"{case.id}: test input outside the domain"
    assert _all(B, out["in_codomain"]), f"{case.id}: y outside the codomain {t.codomain}"
    _close(B, out["x_back"], _np(B, x), ROUNDTRIP_TOL, f"{case.id}: inverse(forward(x)) != x")
    _close(B, out["x_inverse"], _np(B, out["x_back"]), ROUNDTRIP_TOL,
           f"{case.id}: t.inverse != t.inv")
    _close(B, out["inv_ladj"], -_np(B, ladj), LADJ_TOL, f"{case.id}: inverse log-det")
    assert B.shape(y) == t.forward_shape(B.shape(x))
    assert t.inverse_shape(B.shape(y)) == B.shape(x)
    assert B.shape(ladj) == _ladj_shape(t, B.shape(x))
    assert B.dtype_of(y) == B.float_dtype and B.dtype_of(ladj) == B.float_dtype
    assert np.all(np.isfinite(_np(B, ladj)))
    assert t.inv.inv is t
    assert t.inv.domain.event_dim == t.codomain.event_dim
    assert t.inv.codomain.event_dim == t.domain.event_dim


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_log_abs_det_jacobian_matches_autodiff(backend, case):
    B = backend
    with agvi.use_backend(B):
        x = case.x(B, np.random.default_rng(sum(map(ord, case.id))), (NB,) + case.event)
        out = _analyse(B, case, x)
    jac, ladj = _np(B, out["jac"]), _np(B, out["ladj"])
    jac = jac.reshape((jac.shape[0], NB, -1))
    rtol, atol = LADJ_TOL[B.precision]
    for b in range(NB):
        jb = jac[:, b, :]
        if case.scalar:
            expected = np.log(np.abs(np.diagonal(jb)))
            np.testing.assert_allclose(jb - np.diag(np.diagonal(jb)), 0.0, atol=1e-6)
        else:
            assert jb.shape[0] == jb.shape[1], f"{case.id}: free coordinates not square"
            sign, expected = np.linalg.slogdet(jb)
            assert sign != 0
        np.testing.assert_allclose(ladj[b], expected, rtol=rtol, atol=atol * max(1, jb.shape[0]),
                                   err_msg=f"{case.id}: batch element {b}")
    if case.embed_in is None and B.precision == "float64":
        # the log-det is differentiable (VI differentiates it): gradient vs central differences
        np.testing.assert_allclose(_np(B, out["ladj_grad"]), _np(B, out["ladj_grad_fd"]),
                                   rtol=1e-6, atol=1e-6, err_msg=f"{case.id}: d(ladj)/dx")


def test_transforms_eager_equals_jit(backend):
    """The helpers trace under ``B.jit`` (no Python control flow on values) and agree with
    eager evaluation (on JAX the case tests above run compiled)."""
    B = backend
    for case in [c for c in CASES if c.id in ("stick_breaking", "corr_cholesky")]:
        with agvi.use_backend(B):
            t = case.make()
            x = case.x(B, np.random.default_rng(3), (NB,) + case.event)
            y = t(x)
            eager = (y, t.inv(y), t.log_abs_det_jacobian(x, y))
            compiled = _analyse(B, case, x)
        for a, key in zip(eager, ("y", "x_back", "ladj")):
            _close(B, compiled[key], _np(B, a), LADJ_TOL, case.id)


# ------------------------------------------------------------------------ numerical edges
def test_elementwise_log_dets_stable_in_the_tails(backend):
    B = backend
    xs = np.array([-40.0, -15.0, 0.0, 15.0, 40.0])
    with agvi.use_backend(B):
        x = B.asarray(xs)
        sig = SigmoidTransform()
        tanh = TanhTransform()
        soft = SoftplusTransform()
        got = {
            "sigmoid": sig.log_abs_det_jacobian(x, sig(x)),
            "tanh": tanh.log_abs_det_jacobian(x, tanh(x)),
            "softplus": soft.log_abs_det_jacobian(x, soft(x)),
        }
    expected = {
        "sigmoid": -np.abs(xs) - 2 * np.log1p(np.exp(-np.abs(xs))),
        "tanh": 2 * (np.log(2) - np.abs(xs) - np.log1p(np.exp(-2 * np.abs(xs)))),
        "softplus": -np.logaddexp(0.0, -xs),
    }
    for name, value in got.items():
        np.testing.assert_allclose(_np(B, value), expected[name], rtol=1e-6, err_msg=name)


def test_softplus_inverse_accurate_for_small_and_large_y(backend):
    B = backend
    tiny = 1e-30 if B.precision == "float64" else 1e-20
    with agvi.use_backend(B):
        x = SoftplusTransform().inverse(B.asarray([tiny, 1e-3, 1.0, 50.0]))
    expected = np.log(np.expm1(np.array([tiny, 1e-3, 1.0, 50.0])))
    np.testing.assert_allclose(_np(B, x), expected, rtol=1e-6)


def test_stick_breaking_far_tail_stays_on_the_simplex(backend):
    B = backend
    with agvi.use_backend(B):
        t = StickBreakingTransform()
        x = B.asarray([[40.0, 40.0, 40.0], [-40.0, -40.0, -40.0], [0.0, 0.0, 0.0]])
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
    assert _all(B, constraints.simplex.check(y, B))
    np.testing.assert_allclose(_np(B, y)[2], 0.25, rtol=1e-6)  # x = 0 -> uniform
    assert np.all(np.isfinite(_np(B, ladj)))


def test_layouts_match_numpyro(backend):
    """The vector layouts are NumPyro's: strict lower triangle row by row, then the log diagonal
    (LowerCholesky); tanh of the partial correlations row by row (CorrCholesky)."""
    B = backend
    with agvi.use_backend(B):
        L = LowerCholeskyTransform()(B.asarray([1.0, 2.0, 3.0, 0.0, 0.0, 0.0]))
        C = CorrCholeskyTransform()(B.asarray([0.5, 0.0, 0.0]))
        zero = B.zeros((3,))
        C0 = CorrCholeskyTransform()(zero)
        ladj0 = CorrCholeskyTransform().log_abs_det_jacobian(zero, C0)
    np.testing.assert_allclose(_np(B, C0), np.eye(3), atol=1e-7)  # x = 0: the identity
    np.testing.assert_allclose(_np(B, ladj0), 0.0, atol=1e-6)
    np.testing.assert_allclose(_np(B, L), [[1, 0, 0], [1, 1, 0], [2, 3, 1]], atol=1e-7)
    r = math.tanh(0.5)
    np.testing.assert_allclose(_np(B, C), [[1, 0, 0], [r, math.sqrt(1 - r * r), 0], [0, 0, 1]],
                               atol=1e-6)


# --------------------------------------------------------------------- structure and errors
def test_compose_applies_in_order_and_inverts_in_reverse(backend):
    B = backend
    with agvi.use_backend(B):
        t = ComposeTransform([ExpTransform(), AffineTransform(1.0, 2.0)])
        x = B.asarray([-1.0, 0.0, 0.7])
        y = t(x)
        x_back = t.inv(y)
        ladj = t.log_abs_det_jacobian(x, y)
    xs = _np(B, x)
    np.testing.assert_allclose(_np(B, y), 1.0 + 2.0 * np.exp(xs), rtol=1e-6)
    np.testing.assert_allclose(_np(B, x_back), xs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(B, ladj), xs + np.log(2.0), rtol=1e-6)
    # the other order is a different map
    with agvi.use_backend(B):
        other = ComposeTransform([AffineTransform(1.0, 2.0), ExpTransform()])
        assert not np.allclose(_np(B, other(x)), _np(B, y))
    assert t.sign == 1.0
    with agvi.use_backend(B):
        assert ComposeTransform([ExpTransform(), AffineTransform(0.0, -3.0)]).sign == -1.0
        empty = ComposeTransform([])
        np.testing.assert_allclose(_np(B, empty(x)), xs)


def test_compose_event_dims(backend):
    """A scalar transform after a vector one acts elementwise; its log-det is summed."""
    B = backend
    with agvi.use_backend(B):
        t = ComposeTransform([StickBreakingTransform(), AffineTransform(0.0, 2.0)])
        x = B.asarray(np.random.default_rng(0).normal(size=(5, 3)))
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        base = StickBreakingTransform().log_abs_det_jacobian(x, y / 2.0)
    assert t.domain.event_dim == 1 and t.codomain.event_dim == 1
    assert B.shape(ladj) == (5,)
    np.testing.assert_allclose(_np(B, ladj), _np(B, base) + 4 * math.log(2.0), rtol=1e-5)


def test_signs_and_inverse_object(backend):
    B = backend
    with agvi.use_backend(B):
        assert ExpTransform().sign == 1.0 and TanhTransform().sign == 1.0
        assert AffineTransform(0.0, -2.0).sign == -1.0
        assert PowerTransform(-1.5).sign == -1.0
        s = AffineTransform(0.0, B.asarray([1.0, -2.0])).sign
        np.testing.assert_array_equal(_np(B, s), [1.0, -1.0])
        t = ExpTransform()
        assert t.inv is t.inv and t.inv.inv is t
        assert t.inv.sign == 1.0
        with pytest.raises(NotImplementedError, match="sign"):
            _ = StickBreakingTransform().sign
        y = B.asarray([0.5, 2.0])
        _close(B, t.inv(y), np.log([0.5, 2.0]), ROUNDTRIP_TOL)
        assert "ExpTransform" in repr(t.inv)


def test_shape_functions(backend):
    with agvi.use_backend(backend):
        assert StickBreakingTransform().forward_shape((2, 3)) == (2, 4)
        assert StickBreakingTransform().inverse_shape((2, 4)) == (2, 3)
        assert LowerCholeskyTransform().forward_shape((5, 6)) == (5, 3, 3)
        assert LowerCholeskyTransform().inverse_shape((5, 3, 3)) == (5, 6)
        assert CorrCholeskyTransform().forward_shape((6,)) == (4, 4)
        assert CorrCholeskyTransform().inverse_shape((4, 4)) == (6,)
        t = AffineTransform(backend.zeros((3, 1)), 1.0)
        assert t.forward_shape((2,)) == (3, 2)
        x = backend.zeros((2,))
        assert backend.shape(t.log_abs_det_jacobian(x, t(x))) == (3, 2)
        with pytest.raises(ValueError, match="LowerCholeskyTransform.*n \\(n \\+ 1\\) / 2"):
            LowerCholeskyTransform()(backend.zeros((4,)))
        with pytest.raises(ValueError, match="CorrCholeskyTransform.*n \\(n - 1\\) / 2"):
            CorrCholeskyTransform().forward_shape((5,))


def test_bad_arguments_raise_named_errors(backend):
    with agvi.use_backend(backend):
        with pytest.raises(ValueError, match="scale must be nonzero"):
            AffineTransform(0.0, 0.0)
        with pytest.raises(ValueError, match="event_dim"):
            AffineTransform(0.0, 1.0, event_dim=-1)
        with pytest.raises(ValueError, match="exponent must be nonzero"):
            PowerTransform(0)
        with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
            IndependentTransform(ExpTransform(), -1)
        with pytest.raises(TypeError, match="parts\\[1\\]"):
            ComposeTransform([ExpTransform(), "exp"])


def test_independent_transform_sums_log_det(backend):
    B = backend
    with agvi.use_backend(B):
        t = IndependentTransform(ExpTransform(), 2)
        x = B.asarray(np.arange(24.0).reshape(2, 3, 4) / 10)
        ladj = t.log_abs_det_jacobian(x, t(x))
    assert t.domain.event_dim == 2 and t.codomain.event_dim == 2
    np.testing.assert_allclose(_np(B, ladj), _np(B, x).sum(axis=(-1, -2)), rtol=1e-6)


# ------------------------------------------------------------------------------- biject_to
BIJECT_CASES = [
    (constraints.real, ()),
    (constraints.positive, ()),
    (constraints.nonnegative, ()),
    (constraints.greater_than(2.5), ()),
    (constraints.greater_than_eq(-1.0), ()),
    (constraints.less_than(3.0), ()),
    (constraints.interval(-2.0, 5.0), ()),
    (constraints.unit_interval, ()),
    (constraints.interval(np.array([0.0, -1.0, 3.0]), np.array([1.0, 4.0, 3.5])), ()),
    (constraints.real_vector, (4,)),
    (constraints.positive_vector, (4,)),
    (constraints.independent(constraints.interval(0.0, 2.0), 2), (2, 3)),
    (constraints.simplex, (4,)),
    (constraints.ordered_vector, (5,)),
    (constraints.lower_cholesky, (3, 3)),
    (constraints.corr_cholesky, (4, 4)),
    (constraints.positive_definite, (3, 3)),
    (constraints.corr_matrix, (3, 3)),
]


@pytest.mark.parametrize("constraint,event", BIJECT_CASES, ids=[repr(c) for c, _ in BIJECT_CASES])
def test_biject_to_lands_in_the_constraint(backend, constraint, event):
    B = backend
    target = (2, 3) + event
    with agvi.use_backend(B):
        t = biject_to(constraint)
        x = B.asarray(np.random.default_rng(1).normal(size=t.inverse_shape(target)))

        def run(x):
            t = biject_to(constraint)
            y = t(x)
            return y, t.log_abs_det_jacobian(x, y), t.inv(y), constraint.check(y, B)

        y, ladj, x_back, inside = _compiled(B, ("biject", repr(constraint)), run)(x)
    assert t.B is B
    assert t.codomain.event_dim == constraint.event_dim
    assert B.shape(y) == target
    assert _all(B, inside), f"biject_to({constraint!r}) left the set"
    assert B.shape(ladj) == target[:len(target) - constraint.event_dim]
    _close(B, x_back, _np(B, x), ROUNDTRIP_TOL)
    assert transform_to(constraint).codomain.event_dim == constraint.event_dim


def test_biject_to_structure():
    B = agvi.get_backend()
    assert isinstance(biject_to(constraints.real), IdentityTransform)
    assert isinstance(biject_to(constraints.positive), ExpTransform)
    t = biject_to(constraints.greater_than(1.0))
    assert isinstance(t, ComposeTransform)
    assert [type(p) for p in t.parts] == [ExpTransform, AffineTransform]
    t = biject_to(constraints.less_than(1.0))
    assert t.parts[1].scale == -1.0
    t = biject_to(constraints.interval(-1.0, 3.0))
    assert [type(p) for p in t.parts] == [SigmoidTransform, AffineTransform]
    assert (t.parts[1].loc, t.parts[1].scale) == (-1.0, 4.0)
    assert isinstance(biject_to(constraints.unit_interval), SigmoidTransform)
    assert isinstance(biject_to(constraints.simplex), StickBreakingTransform)
    assert isinstance(biject_to(constraints.ordered_vector), OrderedTransform)
    assert isinstance(biject_to(constraints.lower_cholesky), LowerCholeskyTransform)
    assert isinstance(biject_to(constraints.corr_cholesky), CorrCholeskyTransform)
    rv = biject_to(constraints.real_vector)
    assert isinstance(rv, IndependentTransform) and rv.domain.event_dim == 1
    assert isinstance(rv.base_transform, IdentityTransform)
    np.testing.assert_allclose(B.to_numpy(rv.log_abs_det_jacobian(B.zeros((2, 3)),
                                                                  B.zeros((2, 3)))), 0.0)


@pytest.mark.parametrize("constraint", [
    constraints.boolean, constraints.nonnegative_integer, constraints.positive_integer,
    constraints.integer_interval(0, 3), constraints.multinomial(4), constraints.dependent,
], ids=repr)
def test_biject_to_unknown_constraint_raises(constraint):
    with pytest.raises(NotImplementedError, match=repr(constraint).split("(")[0]):
        biject_to(constraint)


def test_biject_to_register():
    class _Half(constraints.Constraint):
        def _check(self, B, x):
            return x > 0.5

    with pytest.raises(NotImplementedError, match="_Half"):
        biject_to(_Half())

    @biject_to.register(_Half)
    def _factory(constraint):
        return ComposeTransform([ExpTransform(), AffineTransform(0.5, 1.0)])

    assert isinstance(biject_to(_Half()), ComposeTransform)
    # an instance registration wins over the class one, for that object only
    special = _Half()
    biject_to.register(special, lambda c: ExpTransform())
    assert isinstance(biject_to(special), ExpTransform)
    assert isinstance(biject_to(_Half()), ComposeTransform)
    with pytest.raises(TypeError, match="Constraint"):
        biject_to.register("positive", lambda c: ExpTransform())
    with pytest.raises(TypeError, match="expected a Constraint"):
        biject_to("positive")


# ------------------------------------------------------------------- TransformedDistribution
# The array work of each test runs in one B.jit program (one compile on JAX instead of one per
# eager op; plain calls on NumPy and torch).
def test_lognormal_matches_scipy(backend):
    B = backend
    loc = np.array([0.3, -1.0, 1.5])
    scale = np.array([0.5, 1.2, 0.8])
    values = np.array([[0.2, 1.0, 3.5], [2.0, 0.05, 7.0]])
    q = np.array([[0.1, 0.5, 0.9]])

    def run(values, q):
        d = TransformedDistribution(dist.Normal(loc, scale), ExpTransform())
        return d.log_prob(values), d.cdf(values), d.icdf(q)

    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(loc, scale), ExpTransform())
        lp, cdf, icdf = B.jit(run)(B.asarray(values), B.asarray(q))
    ref = st.lognorm(scale, scale=np.exp(loc))
    tol = {"float64": (1e-10, 1e-10), "float32": (2e-5, 2e-5)}
    assert d.batch_shape == (3,) and d.event_shape == ()
    assert d.has_rsample and d.support is constraints.positive
    _close(B, lp, ref.logpdf(values), tol)
    _close(B, cdf, ref.cdf(values), tol)
    _close(B, icdf, ref.ppf(q), {"float64": (1e-9, 1e-9), "float32": (1e-4, 1e-5)})
    with pytest.raises(NotImplementedError):
        _ = d.mean
    with pytest.raises(NotImplementedError):
        _ = d.variance
    with pytest.raises(NotImplementedError):
        d.entropy()


def test_lognormal_draws(backend):
    B = backend

    def run(key):
        d = TransformedDistribution(dist.Normal(0.3, 0.6), [ExpTransform()])
        return d.sample(key, (2000,)), d.rsample(key, (2,))

    with agvi.use_backend(B):
        x, xr = B.jit(run)(B.key(0))
    assert B.shape(x) == (2000,) and B.shape(xr) == (2,)
    assert B.dtype_of(x) == B.float_dtype
    xs = _np(B, x)
    assert xs.min() > 0
    assert st.kstest(xs, st.lognorm(0.6, scale=np.exp(0.3)).cdf).pvalue > 1e-4


def test_sigmoid_affine_matches_hand_density(backend):
    B = backend
    a, b, mu, sigma = -1.0, 3.0, 0.4, 1.3
    ys = np.array([-0.9, 0.0, 1.0, 2.5, 2.99])
    q = np.array([0.2, 0.7])

    def run(ys, q):
        d = TransformedDistribution(dist.Normal(mu, sigma),
                                    [SigmoidTransform(), AffineTransform(a, b - a)])
        return d.log_prob(ys), d.cdf(ys), d.icdf(q), d.support.check(ys, B)

    with agvi.use_backend(B):
        lp, cdf, icdf, inside = B.jit(run)(B.asarray(ys), B.asarray(q))
    u = (ys - a) / (b - a)
    z = sp.logit(u)
    expected = st.norm(mu, sigma).logpdf(z) - np.log(b - a) - np.log(u) - np.log1p(-u)
    tol = {"float64": (1e-10, 1e-10), "float32": (5e-4, 5e-4)}
    _close(B, lp, expected, tol)
    _close(B, cdf, st.norm(mu, sigma).cdf(z), tol)
    _close(B, icdf, a + (b - a) * sp.expit(st.norm(mu, sigma).ppf(q)), tol)
    assert _all(B, inside)


def test_decreasing_chain_cdf(backend):
    """Normal(0, 1) through y = 1 - 2 x is Normal(1, 2): cdf and icdf flip correctly."""
    B = backend
    ys = np.array([-3.0, 0.0, 1.0, 4.0])
    q = np.array([0.1, 0.5, 0.8])

    def run(ys, q):
        d = TransformedDistribution(dist.Normal(0.0, 1.0), AffineTransform(1.0, -2.0))
        darr = TransformedDistribution(dist.Normal(0.0, 1.0),
                                       AffineTransform(0.0, B.asarray([2.0, -2.0])))
        return d.log_prob(ys), d.cdf(ys), d.icdf(q), darr.cdf(ys[2:3])

    with agvi.use_backend(B):
        lp, cdf, icdf, cdf_arr = B.jit(run)(B.asarray(ys), B.asarray(q))
    ref = st.norm(1.0, 2.0)
    tol = {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-5)}
    _close(B, lp, ref.logpdf(ys), tol)
    _close(B, cdf, ref.cdf(ys), tol)
    _close(B, icdf, ref.ppf(q), tol)
    _close(B, cdf_arr, [st.norm(0, 2).cdf(1.0), st.norm(0, 2).cdf(1.0)], tol)
    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(B.zeros((3,)), 1.0), StickBreakingTransform())
        with pytest.raises(NotImplementedError, match="scalar"):
            d.cdf(B.asarray([0.2, 0.3, 0.1, 0.4]))


def test_vector_event_log_prob(backend):
    B = backend
    loc = np.array([0.1, -0.3, 0.5])

    def run(key):
        base = dist.Normal(loc, 1.0)
        d = TransformedDistribution(base, StickBreakingTransform())
        y = d.sample(key, (5,))
        t = StickBreakingTransform()
        x = t.inv(y)
        expected = B.sum(base.log_prob(x), axis=-1) - t.log_abs_det_jacobian(x, y)
        # a batch of simplex distributions
        d2 = TransformedDistribution(dist.Normal(B.zeros((2, 3)), 1.0).to_event(1),
                                     StickBreakingTransform())
        return y, d.log_prob(y), expected, d2.log_prob(d2.sample(key, (7,)))

    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(loc, 1.0), StickBreakingTransform())
        d2 = TransformedDistribution(dist.Normal(B.zeros((2, 3)), 1.0).to_event(1),
                                     StickBreakingTransform())
        y, lp, expected, lp2 = B.jit(run)(B.key(1))
    assert d.batch_shape == () and d.event_shape == (4,)
    assert d.support is constraints.simplex
    assert d2.batch_shape == (2,) and d2.event_shape == (4,)
    assert B.shape(y) == (5, 4) and B.shape(lp) == (5,) and B.shape(lp2) == (7, 2)
    _close(B, lp, _np(B, expected), LADJ_TOL)


def test_matrix_event_log_prob(backend):
    """Normal on R^6 through the positive-definite bijection: a density on 3x3 PD matrices."""
    B = backend

    def run(key):
        d = TransformedDistribution(dist.Normal(B.zeros((6,)), 1.0),
                                    biject_to(constraints.positive_definite))
        y = d.sample(key, (4,))
        return y, d.log_prob(y), constraints.positive_definite.check(y, B)

    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(B.zeros((6,)), 1.0),
                                    biject_to(constraints.positive_definite))
        y, lp, inside = B.jit(run)(B.key(3))
    assert d.batch_shape == () and d.event_shape == (3, 3)
    assert B.shape(y) == (4, 3, 3) and B.shape(lp) == (4,)
    assert _all(B, inside)
    assert np.all(np.isfinite(_np(B, lp)))


def test_transform_parameters_broadcast_the_base(backend):
    B = backend
    loc = np.array([[0.0], [1.0], [2.0]])

    def run(key):
        d = TransformedDistribution(dist.Normal(B.zeros((2,)), 1.0), AffineTransform(loc, 2.0))
        x = d.sample(key, (4,))
        return x, d.log_prob(x)

    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(B.zeros((2,)), 1.0), AffineTransform(loc, 2.0))
        x, lp = B.jit(run)(B.key(0))
    assert d.batch_shape == (3, 2)
    assert B.shape(x) == (4, 3, 2) and B.shape(lp) == (4, 3, 2)
    _close(B, lp, st.norm(loc, 2.0).logpdf(_np(B, x)), {"float64": (1e-10, 1e-10),
                                                      "float32": (1e-5, 1e-5)})


def test_pathwise_gradient(backend):
    """d/dloc E[exp(loc + Z)] = exp(loc + 1/2) pathwise (fixed draws)."""
    B = backend
    with agvi.use_backend(B):
        key = B.key(0)

        def mean_draw(loc):
            d = TransformedDistribution(dist.Normal(loc, 1.0), ExpTransform())
            return B.mean(d.rsample(key, (4000,)))

        val, grad = B.jit(B.value_and_grad(mean_draw))(B.asarray(0.2))
    # for y = exp(loc + z), dy/dloc = y: the gradient equals the value draw for draw
    np.testing.assert_allclose(_np(B, grad), _np(B, val), rtol=1e-5)
    assert abs(float(_np(B, val)) - math.exp(0.7)) < 5 * math.sqrt(
        (math.exp(1) - 1) * math.exp(1.4) / 4000)


def test_validation_and_type_errors(backend):
    B = backend
    with agvi.use_backend(B):
        d = TransformedDistribution(dist.Normal(0.0, 1.0), ExpTransform(), validate_args=True)
        with pytest.raises(ValueError, match="support"):
            d.log_prob(-1.0)
        with pytest.raises(TypeError, match="transforms"):
            TransformedDistribution(dist.Normal(0.0, 1.0), "exp")
        with pytest.raises(TypeError, match="transforms\\[1\\]"):
            TransformedDistribution(dist.Normal(0.0, 1.0), [ExpTransform(), 3])
        with pytest.raises(ValueError, match="at least 1 axes"):
            TransformedDistribution(dist.Normal(0.0, 1.0), StickBreakingTransform())
    others = [n for n in agvi.backends.available_backends() if n != B.name]
    if others:
        with agvi.use_backend(others[0]):
            t = ExpTransform()
        with agvi.use_backend(B):
            with pytest.raises(ValueError, match="backend"):
                TransformedDistribution(dist.Normal(0.0, 1.0), t)


def test_transform_equality(backend):
    B = backend
    with agvi.use_backend(B):
        assert ExpTransform() == ExpTransform() and ExpTransform() != SigmoidTransform()
        assert ExpTransform().inv == ExpTransform().inv != ExpTransform()
        assert AffineTransform(1.0, 2.0) == AffineTransform(1.0, 2.0)
        assert AffineTransform(1.0, 2.0) != AffineTransform(1.0, 3.0)
        assert AffineTransform(B.asarray([1.0, 2.0]), 2.0) == AffineTransform(
            B.asarray([1.0, 2.0]), 2.0)
        assert AffineTransform(1.0, 2.0) != AffineTransform(1.0, 2.0, event_dim=1)
        assert PowerTransform(2.0) == PowerTransform(2.0) != PowerTransform(3.0)
        assert biject_to(constraints.interval(0.0, 2.0)) == biject_to(constraints.interval(0, 2))
        assert biject_to(constraints.real_vector) == biject_to(constraints.real_vector)
        assert biject_to(constraints.positive_definite) == biject_to(
            constraints.positive_definite)
        assert len({ExpTransform(), ExpTransform(), TanhTransform()}) == 2
