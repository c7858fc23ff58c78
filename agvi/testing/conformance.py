"""Backend conformance suite: every entry of the Backend contract against NumPy/SciPy oracles.

Each name in :data:`agvi.backends.base.CONTRACT` has at least one check, a function
``check_<name>(B)`` that takes a :class:`~agvi.backends.base.Backend` object and raises
``AssertionError`` when the backend disagrees with an *independent* oracle: NumPy and SciPy values
(``scipy.special``, ``scipy.linalg``, ``numpy.linalg``, ``scipy.stats``), closed-form derivatives,
or central finite differences computed in NumPy float64 from NumPy/SciPy functions. The agvi NumPy
backend is never its own oracle, so the suite checks it too.

Besides values, every check compares the dtype (floating results have :attr:`Backend.float_dtype`)
and the device (results live on :attr:`Backend.device`) of what the backend returns. Where the
backend compiles (:attr:`Backend.has_jit`), control flow, dynamic indexing and callbacks are also
checked inside :meth:`Backend.jit`, where their arguments are traced. There, too, the
value-and-gradient computations of the elementwise, special-function, reduction, linear-algebra
and Jacobian checks run as one compiled program per check rather than eagerly: an eager JAX
operation is compiled once per shape and dtype, and dozens of such compilations per check would
dominate the run; the other checks keep exercising the eager path.

A third-party backend runs the suite with::

    from agvi.testing import run_conformance
    results = run_conformance(MyBackend(precision="float64"))   # raises if a check fails

or inside pytest by parametrising over :data:`CHECKS` (see ``tests/backends/test_conformance.py``).

Tolerances are module constants keyed by precision (see ``VALUE_RTOL`` and its neighbours).
Statistical checks of random draws use fixed keys, so they are deterministic for a given backend;
their thresholds (KS and chi-square p-values above :data:`P_MIN`, moments within
:data:`MC_SIGMAS` Monte Carlo standard errors) make a false alarm on a correct backend rare.

References
----------
Figurnov, Mohamed and Mnih (2018), "Implicit reparameterization gradients", NeurIPS (eq. 6: the
gradient of a gamma draw with respect to its concentration, checked by ``check_gamma_grad``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg as sla
import scipy.special as ssp
import scipy.stats as sst

from agvi.backends.base import (
    BINARY_FUNCTIONS,
    CONTRACT,
    UNARY_FUNCTIONS,
    Backend,
    framework_of,
)

__all__ = [
    "CHECKS", "CapabilityRow", "CheckResult", "CheckSkipped", "ConformanceError",
    "FD_RTOL", "FD_STEP", "GAMMA_GRAD_RTOL", "GRAD_RTOL", "LINALG_RTOL", "MC_SIGMAS", "NUM_DRAWS",
    "P_MIN", "SPECIAL_RTOL", "VALUE_RTOL",
    "capability_markdown", "capability_table", "check_ids", "checks_for", "run_conformance",
]

# --------------------------------------------------------------------------------------------
# Tolerances, by precision. Inputs are rounded to the backend's precision before the oracle sees
# them, so these bound the backend's own arithmetic error, not input rounding.

#: Relative tolerance of plain values (creation, shapes, arithmetic, elementwise functions).
VALUE_RTOL = {"float64": 1e-12, "float32": 2e-6}
#: Relative tolerance of special functions (libraries use different approximations; scipy's are
#: themselves accurate to a few ulp).
SPECIAL_RTOL = {"float64": 1e-10, "float32": 2e-5}
#: Relative tolerance of linear algebra on well-conditioned (condition number < 50) matrices.
LINALG_RTOL = {"float64": 1e-10, "float32": 1e-4}
#: Relative tolerance of autodiff gradients against closed forms.
GRAD_RTOL = {"float64": 1e-10, "float32": 2e-5}
#: Relative tolerance of autodiff gradients against central finite differences in float64 (the
#: finite differences themselves are accurate to about 1e-9 with the step below).
FD_RTOL = {"float64": 1e-6, "float32": 1e-4}
#: Relative step of the central finite differences (truncation ~ step**2, rounding ~ 1e-16/step).
FD_STEP = 1e-5
#: Per-draw gamma reparameterisation gradient against the implicit formula from SciPy.
GAMMA_GRAD_RTOL = {"float64": 1e-5, "float32": 1e-3}
#: Minimum p-value of the Kolmogorov-Smirnov and chi-square tests of random draws.
P_MIN = 1e-4
#: Moments of random draws must lie within this many Monte Carlo standard errors.
MC_SIGMAS = 5.0
#: Number of draws of the statistical checks.
NUM_DRAWS = 20000


class CheckSkipped(Exception):
    """Raised by a check that does not apply to this backend or machine (the message says why)."""


class ConformanceError(AssertionError):
    """Raised by :func:`run_conformance` when checks fail; the message lists every failure."""


# --------------------------------------------------------------------------------------------
# Registry

#: Contract name -> tuple of checks (functions ``check(B)`` raising AssertionError on failure).
CHECKS: dict[str, tuple[Callable[[Backend], None], ...]] = {}


def _register(*names: str):
    """Decorator: register a check under contract ``names`` (and document it if it is not)."""
    def deco(fn):
        for name in names:
            CHECKS[name] = CHECKS.get(name, ()) + (fn,)
        if not fn.__doc__:
            fn.__doc__ = (f"Conformance check of ``Backend.{', '.join(names)}`` against "
                          "NumPy/SciPy."
                          "\n\nParameters\n----------\nB : Backend\n\nRaises\n------\n"
                          "AssertionError\n    On the first disagreement (the message says what).")
        return fn
    return deco


def check_ids(fn: Callable) -> str:
    """Readable id of a check: its function name without the ``check_`` prefix."""
    name = getattr(fn, "__name__", repr(fn))
    return name[len("check_"):] if name.startswith("check_") else name


def checks_for(names=None) -> list:
    """The distinct checks covering ``names`` (contract names or group names), in contract order.

    Parameters
    ----------
    names : iterable of str or None
        Contract entries (``"cholesky"``) or groups (``"random"``); None means all.

    Returns
    -------
    list of callables ``check(B)``.

    Raises
    ------
    ValueError
        If a name is neither a contract entry, a group, nor a registered check name.
    """
    if names is None:
        wanted = list(CHECKS)
    else:
        if isinstance(names, str):
            names = [names]
        wanted = []
        for n in names:
            if n in CONTRACT:
                wanted.extend(CONTRACT[n])
            elif n in CHECKS:
                wanted.append(n)
            else:
                raise ValueError(
                    f"names: {n!r} is neither a contract entry nor a group of the contract "
                    f"(groups: {', '.join(CONTRACT)})")
    seen, out = set(), []
    for n in wanted:
        for fn in CHECKS.get(n, ()):
            if fn not in seen:
                seen.add(fn)
                out.append(fn)
    return out


class CheckResult(NamedTuple):
    """Outcome of one check: ``status`` is "passed", "failed" or "skipped"."""

    check: str
    status: str
    message: str
    seconds: float


def run_conformance(backend: Backend, names=None, *, raise_on_failure: bool = True) -> list:
    """Run the conformance checks on ``backend``.

    Parameters
    ----------
    backend : Backend
        The backend object (with its precision and device) to check.
    names : iterable of str or None
        Contract entries or groups to check (see :func:`checks_for`); None runs everything.
    raise_on_failure : bool
        Raise :class:`ConformanceError` listing every failed check (after running them all).

    Returns
    -------
    list of CheckResult, one per check, in contract order.

    Raises
    ------
    ConformanceError
        If a check failed and ``raise_on_failure``.
    ValueError
        If ``names`` holds an unknown name.
    """
    results = []
    for fn in checks_for(names):
        t0 = time.perf_counter()
        try:
            fn(backend)
        except CheckSkipped as exc:
            status, msg = "skipped", str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not only asserts
            status, msg = "failed", f"{type(exc).__name__}: {exc}"
        else:
            status, msg = "passed", ""
        results.append(CheckResult(check_ids(fn), status, msg, time.perf_counter() - t0))
    failed = [r for r in results if r.status == "failed"]
    if failed and raise_on_failure:
        lines = "\n".join(f"  {r.check}: {r.message.splitlines()[0] if r.message else ''}"
                          for r in failed)
        raise ConformanceError(f"{len(failed)} of {len(results)} conformance checks failed on "
                               f"{backend!r}:\n{lines}")
    return results


class CapabilityRow(NamedTuple):
    """Capability flags of one installed backend (see :class:`agvi.backends.base.Backend`)."""

    backend: str
    has_jit: bool
    has_vmap: bool
    supports_forward_mode: bool
    compiles_control_flow: bool
    has_mutable_arrays: bool
    compiles_pure: bool


def capability_table() -> list:
    """Capability flags of every installed backend, for the documentation.

    Returns
    -------
    list of CapabilityRow, one per backend whose framework is installed and whose module imports.
    """
    from agvi.backends import available_backends, make_backend

    rows = []
    for name in available_backends():
        try:
            B = make_backend(name)
        except ImportError:
            continue
        rows.append(CapabilityRow(name, bool(B.has_jit), bool(B.has_vmap),
                                  bool(B.supports_forward_mode), bool(B.compiles_control_flow),
                                  bool(B.has_mutable_arrays), bool(B.compiles_pure)))
    return rows


def capability_markdown() -> str:
    """:func:`capability_table` as a Markdown table (a string)."""
    head = ("| backend | jit | vmap | forward mode | compiled control flow | mutable arrays "
            "| compiled pure functions |\n|---|---|---|---|---|---|---|")
    mark = {True: "yes", False: "no"}
    body = [f"| {r.backend} | {mark[r.has_jit]} | {mark[r.has_vmap]} | "
            f"{mark[r.supports_forward_mode]} | {mark[r.compiles_control_flow]} | "
            f"{mark[r.has_mutable_arrays]} | {mark[r.compiles_pure]} |"
            for r in capability_table()]
    return "\n".join([head, *body])


# --------------------------------------------------------------------------------------------
# Assertion helpers

def _dtype_name(dt) -> str:
    """Portable dtype name ("float32", "int64", "bool") of a NumPy, torch or JAX dtype."""
    s = str(dt)
    if s.startswith("torch."):
        return s[len("torch."):]
    try:
        return np.dtype(dt).name
    except TypeError:
        return s


def _norm_device(d) -> str:
    d = str(d).lower()
    if d.startswith("cpu"):
        return "cpu"
    return d if ":" in d else d + ":0"


def _check_device(B, x, what):
    if B.device is None:
        return
    got = _norm_device(B.device_of(x))
    if got != _norm_device(B.device):
        raise AssertionError(f"{what}: result on device {got!r}, expected {B.device!r}")


def _rtol(B, table):
    return table[B.precision]


def _expect(B, actual, expected, *, kind="float", rtol=None, atol=None, what="result"):
    """Assert that the backend array ``actual`` matches the NumPy ``expected``.

    ``kind``: "float" (dtype must be float_dtype), "int" (any integer dtype), "int_dtype" (exactly
    int_dtype), "bool", a dtype name, or None (no dtype check). Integer and boolean results are
    compared exactly; floating ones with ``rtol`` (default VALUE_RTOL) and ``atol`` (default 0).
    """
    if not B.is_array(actual):
        raise AssertionError(f"{what}: expected an array of the {B.name!r} backend, got "
                             f"{type(actual).__name__}")
    _check_device(B, actual, what)
    got = np.asarray(B.to_numpy(actual))
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {expected.shape}")
    name = _dtype_name(B.dtype_of(actual))
    if kind == "float":
        want = _dtype_name(B.float_dtype)
        if name != want:
            raise AssertionError(f"{what}: dtype {name}, expected float_dtype {want}")
    elif kind == "int":
        if np.dtype(name).kind not in "iu":
            raise AssertionError(f"{what}: dtype {name}, expected an integer dtype")
    elif kind == "int_dtype":
        want = _dtype_name(B.int_dtype)
        if name != want:
            raise AssertionError(f"{what}: dtype {name}, expected int_dtype {want}")
    elif kind == "bool":
        if name != "bool":
            raise AssertionError(f"{what}: dtype {name}, expected bool")
    elif kind is not None and name != kind:
        raise AssertionError(f"{what}: dtype {name}, expected {kind}")
    if np.dtype(name).kind in "biu" or got.dtype.kind in "biu":
        if not np.array_equal(got, expected):
            raise AssertionError(
                f"{what}: values differ\n got      {got!r}\n expected {expected!r}")
        return
    rtol = _rtol(B, VALUE_RTOL) if rtol is None else rtol
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0.0 if atol is None else atol,
                               equal_nan=True, err_msg=f"{what} ({B!r})")


def _expect_grad(B, actual, expected, *, table=None, what="gradient"):
    """Gradient comparison: relative to the largest expected entry (entries may be ~0)."""
    rtol = _rtol(B, table or FD_RTOL)
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    _expect(B, actual, expected, rtol=rtol, atol=rtol * scale, what=what)


def _require(cond, msg):
    if not cond:
        raise AssertionError(msg)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _pair(B, x):
    """(backend array, float64 NumPy copy) of ``x`` rounded to the backend's precision."""
    x = np.asarray(x, dtype=np.float64).astype(B.precision).astype(np.float64)
    return B.asarray(x), x


def _ints(B, x):
    return B.asarray(np.asarray(x, dtype=np.int64))


def _fd_step(x):
    # relative to |x|, floored so that points near 0 still get a usable step
    return FD_STEP * np.maximum(np.abs(x), 1e-2)


def _fd(fun, args, argnum):
    """Gradient of the scalar NumPy ``fun(*args)`` w.r.t. ``args[argnum]`` by central differences
    with one Richardson extrapolation (error O(h**4)), in float64."""
    args = [np.asarray(a, dtype=np.float64) for a in args]
    x = args[argnum]
    g = np.zeros_like(x)

    def central(i, h):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        ap, am = list(args), list(args)
        ap[argnum], am[argnum] = xp, xm
        return (fun(*ap) - fun(*am)) / (xp[i] - xm[i])

    for i in np.ndindex(x.shape):
        h = float(_fd_step(x[i]))
        g[i] = (4.0 * central(i, h / 2) - central(i, h)) / 3.0
    return g


def _fd_elementwise(fun, x):
    """Derivative of an elementwise NumPy function at every entry of ``x`` (as :func:`_fd`)."""
    def central(h):
        xp, xm = x + h, x - h
        return (fun(xp) - fun(xm)) / (xp - xm)

    h = _fd_step(x)
    return (4.0 * central(h / 2) - central(h)) / 3.0


def _tree_np(B, tree):
    return B.tree_map(lambda a: np.asarray(B.to_numpy(a)), tree)


def _jitted(B, fun, **kw):
    """``B.jit(fun)`` where the backend compiles, else None (the traced variant is skipped)."""
    return B.jit(fun, **kw) if B.has_jit else None


def _fused(B, fun):
    """``fun`` compiled as one program where the backend compiles, else ``fun`` itself.

    A compiling backend (JAX) also compiles every eager operation, once per shape and dtype;
    running the many small computations of a value-and-gradient check as one program costs one
    compilation instead of dozens, and traces the same backend methods.
    """
    return B.jit(fun) if B.has_jit else fun


def _foreign_array(B):
    """A small array of another installed framework than ``B``'s, or raise CheckSkipped."""
    from agvi.backends import available_backends, make_backend

    own = framework_of(B.zeros((1,)))
    for name in available_backends():
        try:
            other = make_backend(name)
            arr = other.zeros((2,))
        except Exception:  # noqa: BLE001 - a broken other backend is not this backend's failure
            continue
        fw = framework_of(arr)
        if fw not in (None, "numpy", own):
            return arr
    raise CheckSkipped("no other array framework is installed to build a foreign array")


# ============================================================================================
# arrays: creation and conversion

@_register("asarray")
def check_asarray(B):
    _expect(B, B.asarray(1.5), np.float64(1.5), what="asarray(python float)")
    _expect(B, B.asarray([[1.0, 2.0], [3.0, 4.5]]), [[1.0, 2.0], [3.0, 4.5]],
            what="asarray(nested list of floats)")
    _expect(B, B.asarray(np.ones(3)), np.ones(3), what="asarray(numpy float64)")
    _expect(B, B.asarray(np.ones(3, np.float32)), np.ones(3), what="asarray(numpy float32)")
    _expect(B, B.asarray(3), np.int64(3), kind="int_dtype", what="asarray(python int)")
    _expect(B, B.asarray([1, -2]), [1, -2], kind="int_dtype", what="asarray(list of ints)")
    _expect(B, B.asarray(np.arange(3)), np.arange(3), kind="int_dtype", what="asarray(np.int64)")
    _expect(B, B.asarray(True), np.bool_(True), kind="bool", what="asarray(python bool)")
    _expect(B, B.asarray(np.array([True, False])), [True, False], kind="bool",
            what="asarray(numpy bool)")
    _expect(B, B.asarray([1, 2], dtype=B.float_dtype), [1.0, 2.0],
            what="asarray(ints, dtype=float)")
    _expect(B, B.asarray(np.array([1.7, -2.2]), dtype=B.dtype("int32")), [1, -2], kind="int32",
            what="asarray(floats, dtype=int32)")
    own = B.zeros((2,), dtype=B.dtype("float32"))
    if framework_of(own) not in (None, "numpy"):
        # this framework's arrays keep their dtype (a NumPy array is "floating input" instead)
        _expect(B, B.asarray(own), np.zeros(2), kind="float32", what="asarray(own float32 array)")
    x = B.asarray([1.0, 2.0])
    _expect(B, B.asarray(x), [1.0, 2.0], what="asarray(own array)")


@_register("asarray")
def check_asarray_foreign(B):
    foreign = _foreign_array(B)
    try:
        B.asarray(foreign)
    except TypeError as exc:
        _require(framework_of(foreign) in str(exc),
                 f"the TypeError should name the foreign framework: {exc}")
        return
    raise AssertionError(f"asarray accepted a {framework_of(foreign)} array; expected TypeError")


@_register("to_numpy")
def check_to_numpy(B):
    x = B.asarray([[1.5, -2.0], [3.0, 4.0]])
    n = B.to_numpy(x)
    _require(isinstance(n, (np.ndarray, np.generic)), f"to_numpy returned {type(n).__name__}")
    np.testing.assert_array_equal(n, [[1.5, -2.0], [3.0, 4.0]])
    _require(_dtype_name(n.dtype) == B.precision, f"to_numpy dtype {n.dtype}, expected "
             f"{B.precision}")
    if isinstance(n, np.ndarray) and n.flags.writeable:
        n[0, 0] = 99.0
        _require(float(B.to_numpy(x)[0, 0]) == 1.5, "to_numpy must return a copy")
    np.testing.assert_array_equal(B.to_numpy(B.asarray([1, 2])), [1, 2])
    np.testing.assert_array_equal(B.to_numpy(B.asarray([True, False])), [True, False])
    _require(float(B.to_numpy(B.sum(x))) == 6.5, "to_numpy of a 0-d array")


@_register("is_array")
def check_is_array(B):
    _require(B.is_array(B.zeros((2,))), "is_array(zeros) is False")
    _require(B.is_array(B.asarray([1, 2])), "is_array(int array) is False")
    _require(not B.is_array([1.0, 2.0]), "is_array(list) is True")
    _require(not B.is_array(1.0), "is_array(python float) is True")
    seen = []

    def f(x):
        seen.append(B.is_array(x))
        return B.sum(x * x)

    B.grad(f)(B.asarray([1.0, 2.0]))
    _require(all(seen) and seen, "is_array is False for the argument inside grad")


@_register("zeros")
def check_zeros(B):
    _expect(B, B.zeros((2, 3)), np.zeros((2, 3)), what="zeros((2, 3))")
    _expect(B, B.zeros(()), np.zeros(()), what="zeros(())")
    _expect(B, B.zeros((3,), dtype=B.int_dtype), np.zeros(3, int), kind="int_dtype",
            what="zeros(dtype=int)")


@_register("ones")
def check_ones(B):
    _expect(B, B.ones((2, 1, 3)), np.ones((2, 1, 3)), what="ones")
    _expect(B, B.ones((2,), dtype=B.dtype("bool")), [True, True], kind="bool",
            what="ones(dtype=bool)")


@_register("full")
def check_full(B):
    _expect(B, B.full((2, 2), 2.5), np.full((2, 2), 2.5), what="full float")
    _expect(B, B.full((3,), 7, dtype=B.int_dtype), np.full(3, 7), kind="int_dtype",
            what="full int")


@_register("zeros_like")
def check_zeros_like(B):
    _expect(B, B.zeros_like(B.ones((2, 3))), np.zeros((2, 3)), what="zeros_like float")
    _expect(B, B.zeros_like(B.asarray([1, 2])), [0, 0], kind="int_dtype", what="zeros_like int")


@_register("ones_like")
def check_ones_like(B):
    _expect(B, B.ones_like(B.zeros((3,))), np.ones(3), what="ones_like float")
    _expect(B, B.ones_like(B.asarray([4, 5])), [1, 1], kind="int_dtype", what="ones_like int")


@_register("full_like")
def check_full_like(B):
    _expect(B, B.full_like(B.zeros((2, 2)), 3.5), np.full((2, 2), 3.5), what="full_like float")
    _expect(B, B.full_like(B.asarray([1, 2, 3]), -4), [-4, -4, -4], kind="int_dtype",
            what="full_like int")


@_register("eye")
def check_eye(B):
    _expect(B, B.eye(3), np.eye(3), what="eye(3)")
    _expect(B, B.eye(2, dtype=B.int_dtype), np.eye(2, dtype=int), kind="int_dtype",
            what="eye(int)")


@_register("arange")
def check_arange(B):
    _expect(B, B.arange(5), np.arange(5), kind="int_dtype", what="arange(5)")
    _expect(B, B.arange(2, 9, 3), [2, 5, 8], kind="int_dtype", what="arange(2, 9, 3)")
    _expect(B, B.arange(-3, 0), [-3, -2, -1], kind="int_dtype", what="arange(-3, 0)")
    _expect(B, B.arange(4, dtype=B.float_dtype), [0.0, 1.0, 2.0, 3.0], what="arange(float)")


@_register("linspace")
def check_linspace(B):
    _expect(B, B.linspace(0.0, 1.0, 5), np.linspace(0, 1, 5), what="linspace(0, 1, 5)")
    _expect(B, B.linspace(-2.0, 3.0, 7), np.linspace(-2, 3, 7), atol=_rtol(B, VALUE_RTOL),
            what="linspace(-2, 3, 7)")


# ============================================================================================
# arrays: shapes

def _static_ints(t):
    return isinstance(t, tuple) and all(isinstance(s, int) for s in t)


@_register("shape")
def check_shape(B):
    s = B.shape(B.zeros((2, 3, 1)))
    _require(s == (2, 3, 1) and _static_ints(s), f"shape gave {s!r}, expected (2, 3, 1) of ints")
    _require(B.shape(B.asarray(1.0)) == (), "shape of a 0-d array must be ()")
    if B.has_jit:
        seen = []
        jf = _jitted(B, lambda x: (seen.append(B.shape(x)), B.sum(x))[1])
        jf(B.ones((4, 2)))
        _require(seen and seen[0] == (4, 2) and _static_ints(seen[0]),
                 f"shape inside jit gave {seen!r}, expected static ints (4, 2)")


@_register("ndim")
def check_ndim(B):
    n = B.ndim(B.zeros((2, 3, 1)))
    _require(n == 3 and isinstance(n, int), f"ndim gave {n!r}")
    _require(B.ndim(B.asarray(2.0)) == 0, "ndim of a 0-d array must be 0")


@_register("size")
def check_size(B):
    n = B.size(B.zeros((2, 3, 4)))
    _require(n == 24 and isinstance(n, int), f"size gave {n!r}")
    _require(B.size(B.zeros((0, 3))) == 0, "size of an empty array must be 0")


@_register("reshape")
def check_reshape(B):
    x = np.arange(6.0).reshape(2, 3)
    xb = B.asarray(x)
    _expect(B, B.reshape(xb, (3, 2)), x.reshape(3, 2), what="reshape (3, 2)")
    _expect(B, B.reshape(xb, (-1,)), x.reshape(-1), what="reshape (-1,)")
    _expect(B, B.reshape(xb, (1, -1, 2)), x.reshape(1, -1, 2), what="reshape (1, -1, 2)")


@_register("broadcast_to")
def check_broadcast_to(B):
    x = np.array([1.0, 2.0, 3.0])
    _expect(B, B.broadcast_to(B.asarray(x), (2, 3)), np.broadcast_to(x, (2, 3)))
    _expect(B, B.broadcast_to(B.asarray(x[:, None]), (3, 4)), np.broadcast_to(x[:, None], (3, 4)))
    w = np.arange(24.0).reshape(2, 4, 3)
    g = B.grad(lambda t: B.sum(B.broadcast_to(t, (2, 4, 3)) * B.asarray(w)))(B.asarray(x))
    _expect_grad(B, g, w.sum((0, 1)), table=GRAD_RTOL, what="grad of broadcast_to (new axes)")


@_register("broadcast_shapes")
def check_broadcast_shapes(B):
    s = B.broadcast_shapes((2, 1), (3,))
    _require(s == (2, 3) and _static_ints(s), f"broadcast_shapes gave {s!r}")
    _require(B.broadcast_shapes((), (4,)) == (4,), "broadcast_shapes((), (4,)) != (4,)")
    _require(B.broadcast_shapes((5, 1, 2), (3, 1), (1,)) == (5, 3, 2), "three shapes")
    try:
        B.broadcast_shapes((2,), (3,))
    except ValueError:
        pass
    else:
        raise AssertionError("broadcast_shapes((2,), (3,)) must raise ValueError")


@_register("broadcast_arrays")
def check_broadcast_arrays(B):
    x, y = np.arange(3.0)[:, None], np.arange(4.0)
    out = B.broadcast_arrays(B.asarray(x), B.asarray(y))
    _require(len(out) == 2, "broadcast_arrays must return one array per input")
    ex, ey = np.broadcast_arrays(x, y)
    _expect(B, out[0], ex, what="broadcast_arrays[0]")
    _expect(B, out[1], ey, what="broadcast_arrays[1]")
    w = np.arange(12.0).reshape(3, 4)
    gx, gy = B.grad(lambda a, b: B.sum(B.broadcast_arrays(a, b)[0] * B.asarray(w))
                    + B.sum(B.broadcast_arrays(a, b)[1] * B.asarray(2 * w)),
                    argnums=(0, 1))(B.asarray(x), B.asarray(y))
    _expect_grad(B, gx, w.sum(1, keepdims=True), table=GRAD_RTOL,
                 what="grad of broadcast_arrays[0]")
    _expect_grad(B, gy, 2 * w.sum(0), table=GRAD_RTOL, what="grad of broadcast_arrays[1]")


@_register("expand_dims")
def check_expand_dims(B):
    x = np.arange(6.0).reshape(2, 3)
    _expect(B, B.expand_dims(B.asarray(x), 0), x[None], what="expand_dims 0")
    _expect(B, B.expand_dims(B.asarray(x), -1), x[..., None], what="expand_dims -1")
    _expect(B, B.expand_dims(B.asarray(x), 1), x[:, None], what="expand_dims 1")


@_register("squeeze")
def check_squeeze(B):
    x = np.arange(6.0).reshape(1, 2, 1, 3)
    _expect(B, B.squeeze(B.asarray(x), 0), x[0], what="squeeze 0")
    _expect(B, B.squeeze(B.asarray(x), (0, 2)), x.reshape(2, 3), what="squeeze (0, 2)")
    _expect(B, B.squeeze(B.asarray(x), -2), x[:, :, 0], what="squeeze -2")


@_register("moveaxis")
def check_moveaxis(B):
    x = np.arange(24.0).reshape(2, 3, 4)
    _expect(B, B.moveaxis(B.asarray(x), 0, -1), np.moveaxis(x, 0, -1), what="moveaxis 0->-1")
    _expect(B, B.moveaxis(B.asarray(x), 2, 0), np.moveaxis(x, 2, 0), what="moveaxis 2->0")


@_register("swapaxes")
def check_swapaxes(B):
    x = np.arange(24.0).reshape(2, 3, 4)
    _expect(B, B.swapaxes(B.asarray(x), 0, 2), np.swapaxes(x, 0, 2), what="swapaxes 0 2")


@_register("matrix_transpose")
def check_matrix_transpose(B):
    x = np.arange(24.0).reshape(2, 3, 4)
    _expect(B, B.matrix_transpose(B.asarray(x)), np.swapaxes(x, -1, -2))
    _expect(B, B.matrix_transpose(B.asarray(x[0])), x[0].T, what="2-d")


@_register("concatenate")
def check_concatenate(B):
    a, b = np.arange(6.0).reshape(2, 3), -np.arange(3.0).reshape(1, 3)
    _expect(B, B.concatenate([B.asarray(a), B.asarray(b)], axis=0), np.concatenate([a, b]))
    _expect(B, B.concatenate((B.asarray(a), B.asarray(a)), axis=1),
            np.concatenate([a, a], axis=1), what="tuple input, axis=1")
    _expect(B, B.concatenate([B.asarray([1, 2]), B.asarray([3])]), [1, 2, 3], kind="int_dtype",
            what="ints")


@_register("stack")
def check_stack(B):
    a, b = np.arange(3.0), np.arange(3.0, 6.0)
    _expect(B, B.stack([B.asarray(a), B.asarray(b)]), np.stack([a, b]), what="stack axis 0")
    _expect(B, B.stack((B.asarray(a), B.asarray(b)), axis=-1), np.stack([a, b], -1),
            what="stack axis -1")


@_register("flip")
def check_flip(B):
    x = np.arange(6.0).reshape(2, 3)
    _expect(B, B.flip(B.asarray(x), 0), x[::-1], what="flip 0")
    _expect(B, B.flip(B.asarray(x), -1), x[:, ::-1], what="flip -1")


@_register("tile")
def check_tile(B):
    x = np.arange(6.0).reshape(2, 3)
    _expect(B, B.tile(B.asarray(x), (2, 1)), np.tile(x, (2, 1)), what="tile (2, 1)")
    _expect(B, B.tile(B.asarray(x), (1, 3)), np.tile(x, (1, 3)), what="tile (1, 3)")


@_register("repeat")
def check_repeat(B):
    x = np.arange(6.0).reshape(2, 3)
    _expect(B, B.repeat(B.asarray(x), 2, axis=0), np.repeat(x, 2, axis=0), what="repeat axis 0")
    _expect(B, B.repeat(B.asarray(x), 3, axis=1), np.repeat(x, 3, axis=1), what="repeat axis 1")


@_register("tril")
def check_tril(B):
    x = np.arange(18.0).reshape(2, 3, 3) + 1
    for k in (0, -1, 1):
        _expect(B, B.tril(B.asarray(x), k), np.tril(x, k), what=f"tril k={k}")


@_register("triu")
def check_triu(B):
    x = np.arange(18.0).reshape(2, 3, 3) + 1
    for k in (0, -1, 1):
        _expect(B, B.triu(B.asarray(x), k), np.triu(x, k), what=f"triu k={k}")


@_register("diagonal")
def check_diagonal(B):
    x = np.arange(18.0).reshape(2, 3, 3)
    _expect(B, B.diagonal(B.asarray(x)), np.diagonal(x, 0, -2, -1), what="diagonal")
    _expect(B, B.diagonal(B.asarray(x), 1), np.diagonal(x, 1, -2, -1), what="diagonal offset 1")
    _expect(B, B.diagonal(B.asarray(x), -1), np.diagonal(x, -1, -2, -1),
            what="diagonal offset -1")


@_register("diag_embed")
def check_diag_embed(B):
    x = np.arange(6.0).reshape(2, 3) + 1
    expected = np.zeros((2, 3, 3))
    for i in range(2):
        expected[i] = np.diag(x[i])
    _expect(B, B.diag_embed(B.asarray(x)), expected)
    xb, w = B.asarray(x), np.arange(18.0).reshape(2, 3, 3)
    g = B.grad(lambda t: B.sum(B.diag_embed(t) * B.asarray(w)))(xb)
    _expect_grad(B, g, np.diagonal(w, 0, -2, -1), table=GRAD_RTOL, what="grad of diag_embed")


@_register("where")
def check_where(B):
    rng = _rng(1)
    c = np.array([[True], [False], [True]])
    xb, x = _pair(B, rng.normal(size=(3, 4)))
    yb, y = _pair(B, rng.normal(size=(4,)))
    _expect(B, B.where(B.asarray(c), xb, yb), np.where(c, x, y), what="where (broadcasting)")
    w = rng.normal(size=(3, 4))
    wb, w = _pair(B, w)
    gx, gy = B.grad(lambda a, b: B.sum(B.where(B.asarray(c), a, b) * wb), argnums=(0, 1))(xb, yb)
    _expect_grad(B, gx, np.where(c, w, 0.0), table=GRAD_RTOL, what="grad of where w.r.t. x")
    _expect_grad(B, gy, np.where(c, 0.0, w).sum(0), table=GRAD_RTOL, what="grad of where w.r.t. y")


@_register("take")
def check_take(B):
    x = np.arange(12.0).reshape(3, 4)
    idx = np.array([2, 0, 2])
    _expect(B, B.take(B.asarray(x), _ints(B, idx), axis=1), np.take(x, idx, axis=1),
            what="take axis 1")
    _expect(B, B.take(B.asarray(x), _ints(B, idx), axis=0), np.take(x, idx, axis=0),
            what="take axis 0")
    w = np.arange(9.0).reshape(3, 3)
    g = B.grad(lambda t: B.sum(B.take(t, _ints(B, idx), axis=1) * B.asarray(w)))(B.asarray(x))
    expected = np.zeros((3, 4))
    np.add.at(expected.T, idx, w.T)
    _expect_grad(B, g, expected, table=GRAD_RTOL, what="grad of take (repeated indices)")


@_register("take_along_axis")
def check_take_along_axis(B):
    x = np.array([[3.0, 1.0, 2.0], [0.5, 2.5, -1.0]])
    idx = np.array([[1, 1, 0], [2, 0, 1]])
    _expect(B, B.take_along_axis(B.asarray(x), _ints(B, idx), axis=1),
            np.take_along_axis(x, idx, axis=1), what="take_along_axis axis 1")
    idx0 = np.array([[1, 0, 1]])
    _expect(B, B.take_along_axis(B.asarray(x), _ints(B, idx0), axis=0),
            np.take_along_axis(x, idx0, axis=0), what="take_along_axis axis 0")


@_register("one_hot")
def check_one_hot(B):
    idx = np.array([0, 2, 1, 2])
    _expect(B, B.one_hot(_ints(B, idx), 4), np.eye(4)[idx], what="one_hot")
    _expect(B, B.one_hot(_ints(B, idx.reshape(2, 2)), 3), np.eye(3)[idx.reshape(2, 2)],
            what="one_hot batched")
    _expect(B, B.one_hot(_ints(B, idx), 3, dtype=B.int_dtype), np.eye(3, dtype=int)[idx],
            kind="int_dtype", what="one_hot(dtype=int)")


@_register("cumsum")
def check_cumsum(B):
    xb, x = _pair(B, _rng(2).normal(size=(3, 4)))
    _expect(B, B.cumsum(xb, axis=0), np.cumsum(x, 0), atol=1e-15, what="cumsum axis 0")
    _expect(B, B.cumsum(xb, axis=-1), np.cumsum(x, -1), rtol=_rtol(B, VALUE_RTOL),
            atol=_rtol(B, VALUE_RTOL) * 4, what="cumsum axis -1")
    _expect(B, B.cumsum(B.asarray([1, 2, 3]), axis=0), [1, 3, 6], kind="int", what="cumsum int")


@_register("cumprod")
def check_cumprod(B):
    xb, x = _pair(B, _rng(3).uniform(0.5, 2.0, size=(3, 4)))
    _expect(B, B.cumprod(xb, axis=0), np.cumprod(x, 0), what="cumprod axis 0")
    _expect(B, B.cumprod(xb, axis=1), np.cumprod(x, 1), rtol=4 * _rtol(B, VALUE_RTOL),
            what="cumprod axis 1")


@_register("sort")
def check_sort(B):
    xb, x = _pair(B, _rng(4).normal(size=(3, 5)))
    _expect(B, B.sort(xb), np.sort(x, -1), what="sort axis -1")
    _expect(B, B.sort(xb, axis=0), np.sort(x, 0), what="sort axis 0")


@_register("argsort")
def check_argsort(B):
    x = np.array([3.0, 1.0, 2.0, 1.0, 3.0, 0.0])
    _expect(B, B.argsort(B.asarray(x)), np.argsort(x, kind="stable"), kind="int",
            what="argsort (stable with ties)")
    x2 = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    _expect(B, B.argsort(B.asarray(x2), axis=0), np.argsort(x2, axis=0, kind="stable"),
            kind="int", what="argsort axis 0")


@_register("clip")
def check_clip(B):
    x = np.array([-2.0, -0.5, 0.25, 1.5, 3.0])
    xb = B.asarray(x)
    _expect(B, B.clip(xb, -1.0, 1.0), np.clip(x, -1, 1), what="clip both")
    _expect(B, B.clip(xb, min=0.0), np.clip(x, 0, None), what="clip min only")
    _expect(B, B.clip(xb, max=0.5), np.clip(x, None, 0.5), what="clip max only")
    g = B.grad(lambda t: B.sum(B.clip(t, -1.0, 1.0) * B.asarray([1.0, 2.0, 3.0, 4.0, 5.0])))(xb)
    _expect_grad(B, g, [0.0, 2.0, 3.0, 0.0, 0.0], table=GRAD_RTOL, what="grad of clip")


_TAKE_IDX = np.array([[[3, 0, 0, 1]] * 3] * 2)

#: name -> (backend function, NumPy oracle) of the array operations whose gradients
#: ``check_array_op_gradients`` checks (all on an input of shape (2, 3, 4) with distinct entries).
_GRAD_OPS = {
    "reshape": (lambda B, x: B.reshape(x, (4, 6)), lambda x: x.reshape(4, 6)),
    "expand_dims": (lambda B, x: B.expand_dims(x, 1), lambda x: np.expand_dims(x, 1)),
    "squeeze": (lambda B, x: B.squeeze(B.reshape(x, (2, 1, 3, 4)), 1), lambda x: x),
    "moveaxis": (lambda B, x: B.moveaxis(x, 0, -1), lambda x: np.moveaxis(x, 0, -1)),
    "swapaxes": (lambda B, x: B.swapaxes(x, 0, 2), lambda x: np.swapaxes(x, 0, 2)),
    "matrix_transpose": (lambda B, x: B.matrix_transpose(x), lambda x: np.swapaxes(x, -1, -2)),
    "concatenate": (lambda B, x: B.concatenate([x, x * x], axis=1),
                    lambda x: np.concatenate([x, x * x], axis=1)),
    "stack": (lambda B, x: B.stack([x, x * x], axis=-1), lambda x: np.stack([x, x * x], -1)),
    "flip": (lambda B, x: B.flip(x, 1), lambda x: np.flip(x, 1)),
    "tile": (lambda B, x: B.tile(x, (1, 2, 1)), lambda x: np.tile(x, (1, 2, 1))),
    "repeat": (lambda B, x: B.repeat(x, 2, axis=2), lambda x: np.repeat(x, 2, axis=2)),
    "tril": (lambda B, x: B.tril(x), lambda x: np.tril(x)),
    "triu": (lambda B, x: B.triu(x, 1), lambda x: np.triu(x, 1)),
    "diagonal": (lambda B, x: B.diagonal(x, 1), lambda x: np.diagonal(x, 1, -2, -1)),
    "take_along_axis": (lambda B, x: B.take_along_axis(x, _ints(B, _TAKE_IDX), axis=2),
                        lambda x: np.take_along_axis(x, _TAKE_IDX, axis=2)),
    "cumsum": (lambda B, x: B.cumsum(x, axis=1), lambda x: np.cumsum(x, 1)),
    "cumprod": (lambda B, x: B.cumprod(x, axis=2), lambda x: np.cumprod(x, 2)),
    "sort": (lambda B, x: B.sort(x, axis=-1), lambda x: np.sort(x, -1)),
    "mean": (lambda B, x: B.mean(x, axis=(0, 2)), lambda x: np.mean(x, (0, 2))),
    "var": (lambda B, x: B.var(x, axis=1, ddof=1), lambda x: np.var(x, 1, ddof=1)),
    "einsum": (lambda B, x: B.einsum("ijk,ijk->i", x, x), lambda x: np.einsum("ijk,ijk->i", x, x)),
    "dynamic_slice": (lambda B, x: B.dynamic_slice(x, 1, 2, axis=1), lambda x: x[:, 1:3]),
}


@_register(*_GRAD_OPS)
def check_array_op_gradients(B):
    """Gradients of the shape, indexing, scan and sort operations (against finite differences)."""
    rng = _rng(6)
    x = rng.permutation(24).reshape(2, 3, 4) / 10.0 - 1.1
    # alternate the signs of a row of the sort axis so that sort really permutes
    xb, x = _pair(B, x[..., rng.permutation(4)])
    weights = {n: _pair(B, rng.normal(size=np.shape(f_np(x)))) for n, (_, f_np) in
               _GRAD_OPS.items()}

    def run(t, ws):
        return {n: B.grad(lambda s, n=n: B.sum(_GRAD_OPS[n][0](B, s) * ws[n]))(t)
                for n in _GRAD_OPS}

    grads = _fused(B, run)(xb, {n: w[0] for n, w in weights.items()})
    for n, (_, f_np) in _GRAD_OPS.items():
        w = weights[n][1]
        fd = _fd(lambda t, f_np=f_np, w=w: float(np.sum(f_np(t) * w)), (x,), 0)
        _expect_grad(B, grads[n], fd, what=f"grad of {n}")


# ============================================================================================
# arrays: reductions

_RED_X = np.arange(24.0).reshape(2, 3, 4) / 7.0 - 1.3


def _reduction(B, name, fn_np, *, positive=False, rtol=None):
    x = np.abs(_RED_X) + 0.5 if positive else _RED_X
    xb, x = _pair(B, x)
    f = getattr(B, name)
    cases = [(axis, keepdims) for axis in (None, 0, -1, (0, 2)) for keepdims in (False, True)]
    outs = _fused(B, lambda t: [f(t, axis=a, keepdims=k) for a, k in cases])(xb)
    for (axis, keepdims), out in zip(cases, outs, strict=True):
        _expect(B, out, fn_np(x, axis=axis, keepdims=keepdims),
                rtol=rtol or 4 * _rtol(B, VALUE_RTOL), atol=1e-14,
                what=f"{name}(axis={axis}, keepdims={keepdims})")
    return xb, x


@_register("sum")
def check_sum(B):
    xb, x = _reduction(B, "sum", np.sum)
    _expect(B, B.sum(B.asarray([1, 2, 3])), 6, kind="int", what="sum of ints")
    g = B.grad(lambda t: B.sum(B.sum(t, axis=1) * B.asarray(np.arange(8.0).reshape(2, 4))))(xb)
    _expect_grad(B, g, np.broadcast_to(np.arange(8.0).reshape(2, 1, 4), (2, 3, 4)),
                 table=GRAD_RTOL, what="grad of sum(axis=1)")


@_register("mean")
def check_mean(B):
    _reduction(B, "mean", np.mean)


@_register("prod")
def check_prod(B):
    xb, x = _reduction(B, "prod", np.prod, positive=True, rtol=30 * _rtol(B, VALUE_RTOL))
    v = np.array([0.5, 2.0, 3.0])
    g = B.grad(lambda t: B.prod(t))(B.asarray(v))
    _expect_grad(B, g, [6.0, 1.5, 1.0], table=GRAD_RTOL, what="grad of prod")


@_register("max")
def check_max(B):
    xb, _ = _reduction(B, "max", np.max)
    g = B.grad(lambda t: B.max(t))(B.asarray([1.0, 3.0, 2.0]))
    _expect_grad(B, g, [0.0, 1.0, 0.0], table=GRAD_RTOL, what="grad of max")


@_register("min")
def check_min(B):
    _reduction(B, "min", np.min)
    g = B.grad(lambda t: B.min(t))(B.asarray([1.0, 3.0, 2.0]))
    _expect_grad(B, g, [1.0, 0.0, 0.0], table=GRAD_RTOL, what="grad of min")


@_register("argmax")
def check_argmax(B):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    _expect(B, B.argmax(B.asarray(x)), np.argmax(x, -1), kind="int", what="argmax (ties: first)")
    _expect(B, B.argmax(B.asarray(x), axis=0), np.argmax(x, 0), kind="int", what="argmax axis 0")


@_register("argmin")
def check_argmin(B):
    x = np.array([[1.0, 0.0, 0.0], [2.0, 2.0, 5.0]])
    _expect(B, B.argmin(B.asarray(x)), np.argmin(x, -1), kind="int", what="argmin (ties: first)")
    _expect(B, B.argmin(B.asarray(x), axis=0), np.argmin(x, 0), kind="int", what="argmin axis 0")


@_register("any")
def check_any(B):
    m = np.array([[True, False, False], [False, False, False]])
    mb = B.asarray(m)
    _expect(B, B.any(mb), True, kind="bool", what="any")
    _expect(B, B.any(mb, axis=1), m.any(1), kind="bool", what="any axis 1")
    _expect(B, B.any(mb, axis=0, keepdims=True), m.any(0, keepdims=True), kind="bool",
            what="any keepdims")


@_register("all")
def check_all(B):
    m = np.array([[True, True, False], [True, True, True]])
    mb = B.asarray(m)
    _expect(B, B.all(mb), False, kind="bool", what="all")
    _expect(B, B.all(mb, axis=1), m.all(1), kind="bool", what="all axis 1")
    _expect(B, B.all(mb, axis=0, keepdims=True), m.all(0, keepdims=True), kind="bool",
            what="all keepdims")


@_register("var")
def check_var(B):
    xb, x = _pair(B, _RED_X)
    for axis in (None, 1, (0, 2)):
        for ddof in (0, 1):
            _expect(B, B.var(xb, axis=axis, ddof=ddof), np.var(x, axis=axis, ddof=ddof),
                    rtol=10 * _rtol(B, VALUE_RTOL), what=f"var(axis={axis}, ddof={ddof})")
    _expect(B, B.var(xb, axis=1, keepdims=True), np.var(x, axis=1, keepdims=True),
            rtol=10 * _rtol(B, VALUE_RTOL), what="var keepdims")


@_register("std")
def check_std(B):
    xb, x = _pair(B, _RED_X)
    for axis in (None, -1):
        for ddof in (0, 1):
            _expect(B, B.std(xb, axis=axis, ddof=ddof), np.std(x, axis=axis, ddof=ddof),
                    rtol=10 * _rtol(B, VALUE_RTOL), what=f"std(axis={axis}, ddof={ddof})")
    v = np.array([1.0, 2.0, 4.0])
    g = B.grad(lambda t: B.std(t, ddof=1))(B.asarray(v))
    s = np.std(v, ddof=1)
    _expect_grad(B, g, (v - v.mean()) / (2 * s) * 2 / (len(v) - 1), table=GRAD_RTOL,
                 what="grad of std(ddof=1)")


@_register("norm")
def check_norm(B):
    xb, x = _pair(B, _RED_X)
    _expect(B, B.norm(xb), np.linalg.norm(x, axis=-1), what="norm axis -1")
    _expect(B, B.norm(xb, axis=(1, 2)), np.sqrt((x ** 2).sum((1, 2))), what="norm axis (1, 2)")
    _expect(B, B.norm(xb, axis=0, keepdims=True), np.linalg.norm(x, axis=0, keepdims=True),
            what="norm keepdims")
    v = np.array([3.0, -4.0])
    g = B.grad(lambda t: B.norm(t))(B.asarray(v))
    _expect_grad(B, g, v / 5.0, table=GRAD_RTOL, what="grad of norm")


# ============================================================================================
# arrays: elementwise functions (UNARY_FUNCTIONS and BINARY_FUNCTIONS), one check each

_G = np.array([-2.3, -1.1, -0.4, 0.3, 0.9, 1.7, 2.6])
_P = np.array([0.15, 0.4, 0.9, 1.6, 2.7, 4.2])
_U = np.array([-0.9, -0.55, -0.2, 0.1, 0.45, 0.85])
_SPECIALS = np.array([-np.inf, -1.0, 0.0, np.nan, np.inf, 2.0])
_PREDICATES = ("isfinite", "isnan", "isinf", "logical_not")

#: name -> (NumPy oracle, inputs (on the function's domain), differentiable)
_UNARY_SPECS = {
    "abs": (np.abs, _G, True),
    "negative": (np.negative, _G, True),
    "exp": (np.exp, _G, True),
    "expm1": (np.expm1, np.array([-1.5, -1e-6, 1e-7, 0.3, 2.0]), True),
    "log": (np.log, _P, True),
    "log1p": (np.log1p, np.array([-0.5, -1e-6, 1e-7, 0.3, 2.5]), True),
    "sqrt": (np.sqrt, _P, True),
    "square": (np.square, _G, True),
    "reciprocal": (np.reciprocal, _G, True),
    "sin": (np.sin, _G, True),
    "cos": (np.cos, _G, True),
    "tan": (np.tan, np.array([-1.2, -0.5, 0.1, 0.7, 1.2]), True),
    "tanh": (np.tanh, _G, True),
    "sinh": (np.sinh, _G, True),
    "cosh": (np.cosh, _G, True),
    "arcsin": (np.arcsin, _U, True),
    "arccos": (np.arccos, _U, True),
    "arctan": (np.arctan, _G, True),
    "arcsinh": (np.arcsinh, _G, True),
    "arccosh": (np.arccosh, 1.0 + _P, True),
    "arctanh": (np.arctanh, _U, True),
    "floor": (np.floor, np.concatenate([_G, [-1.0, 2.0]]), False),
    "ceil": (np.ceil, np.concatenate([_G, [-1.0, 2.0]]), False),
    # halves round to even, as numpy.round
    "round": (np.round, np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -1.3, 0.7]), False),
    "sign": (np.sign, np.array([-2.0, 0.0, 3.5]), False),
    "isfinite": (np.isfinite, _SPECIALS, False),
    "isnan": (np.isnan, _SPECIALS, False),
    "isinf": (np.isinf, _SPECIALS, False),
    "logical_not": (np.logical_not, np.array([True, False, True]), False),
}


def _make_unary_check(name):
    oracle, inputs, differentiable = _UNARY_SPECS[name]

    def check(B):
        f = getattr(B, name)
        if inputs.dtype == bool:
            xb, x = B.asarray(inputs), inputs
        else:
            xb, x = _pair(B, inputs)
        kind = "bool" if name in _PREDICATES else "float"
        wb, w = _pair(B, np.linspace(0.5, 1.5, len(x)))

        def run(t, v):
            out = (f(t), f(B.reshape(t, (1, -1))))
            if differentiable:
                out += (B.grad(lambda s: B.sum(f(s) * v))(t),)
            return out

        out = _fused(B, run)(xb, wb)
        with np.errstate(all="ignore"):
            expected = oracle(x)
        _expect(B, out[0], expected, kind=kind, what=name)
        _expect(B, out[1], expected.reshape(1, -1), kind=kind, what=f"{name} on a 2-d array")
        if differentiable:
            _expect_grad(B, out[2], w * _fd_elementwise(oracle, x), what=f"grad of {name}")

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = f"``{name}``: values (and gradient) against ``numpy.{oracle.__name__}``."
    return _register(name)(check)


#: name -> (NumPy oracle, x, y (broadcasting against each other), differentiable)
_BX, _BY = np.array([[-2.3], [-0.4], [0.9], [2.6]]), np.array([-1.7, 0.35, 1.25])
_CX, _CY = np.array([[0.5], [1.0], [2.0]]), np.array([1.0, 2.0, 0.5, 3.0])
_LX, _LY = np.array([[True], [False]]), np.array([True, False, True])
_DX, _DY = np.array([[-2.3], [-1.1], [0.4], [2.6], [5.0]]), np.array([0.7, -1.5, 2.2])
_BINARY_SPECS = {
    "add": (np.add, _BX, _BY, True),
    "subtract": (np.subtract, _BX, _BY, True),
    "multiply": (np.multiply, _BX, _BY, True),
    "divide": (np.divide, _BX, _BY, True),
    "power": (np.power, np.abs(_BX) + 0.1, _BY, True),
    "maximum": (np.maximum, _BX, _BY, True),
    "minimum": (np.minimum, _BX, _BY, True),
    "arctan2": (np.arctan2, _BX, _BY, True),
    "logaddexp": (np.logaddexp, _BX, _BY, True),
    "equal": (np.equal, _CX, _CY, False),
    "not_equal": (np.not_equal, _CX, _CY, False),
    "less": (np.less, _CX, _CY, False),
    "less_equal": (np.less_equal, _CX, _CY, False),
    "greater": (np.greater, _CX, _CY, False),
    "greater_equal": (np.greater_equal, _CX, _CY, False),
    "logical_and": (np.logical_and, _LX, _LY, False),
    "logical_or": (np.logical_or, _LX, _LY, False),
    "floor_divide": (np.floor_divide, _DX, _DY, False),
    "remainder": (np.remainder, _DX, _DY, False),
}
_COMPARISONS = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                "logical_and", "logical_or")


def _make_binary_check(name):
    oracle, x0, y0, differentiable = _BINARY_SPECS[name]

    def check(B):
        f = getattr(B, name)
        if x0.dtype == bool:
            (xb, x), (yb, y) = (B.asarray(x0), x0), (B.asarray(y0), y0)
        else:
            (xb, x), (yb, y) = _pair(B, x0), _pair(B, y0)
        kind = "bool" if name in _COMPARISONS else "float"
        wb, w = _pair(B, np.linspace(0.5, 1.5, x.size * y.size).reshape(
            np.broadcast_shapes(x.shape, y.shape)))

        def run(a, b, v):
            out = (f(a, b),)
            if differentiable:
                out += B.grad(lambda p, q: B.sum(f(p, q) * v), argnums=(0, 1))(a, b)
            return out

        out = _fused(B, run)(xb, yb, wb)
        _expect(B, out[0], oracle(x, y), kind=kind, rtol=2 * _rtol(B, VALUE_RTOL),
                what=f"{name} (broadcasting {x.shape} with {y.shape})")
        if name in ("floor_divide", "remainder"):
            xi, yi = np.array([[-7], [-3], [4], [9]]), np.array([2, -3, 5])
            _expect(B, f(_ints(B, xi), _ints(B, yi)), oracle(xi, yi), kind="int",
                    what=f"{name} of integers")
        if name == "logaddexp":
            big = np.array([1000.0, -np.inf, -np.inf, -1000.0])
            other = np.array([1000.0, -np.inf, 1.0, -1000.5])
            _expect(B, f(B.asarray(big), B.asarray(other)), np.logaddexp(big, other),
                    what="logaddexp at large and infinite arguments")
        if differentiable:
            gx, gy = out[1:]
            loss = lambda a, b: float(np.sum(oracle(a, b) * w))  # noqa: E731
            _expect_grad(B, gx, _fd(loss, (x, y), 0), what=f"grad of {name} w.r.t. x")
            _expect_grad(B, gy, _fd(loss, (x, y), 1), what=f"grad of {name} w.r.t. y")

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = f"``{name}``: values (and gradients) against ``numpy.{oracle.__name__}``."
    return _register(name)(check)


for _name in UNARY_FUNCTIONS:
    _make_unary_check(_name)
for _name in BINARY_FUNCTIONS:
    _make_binary_check(_name)


# ============================================================================================
# arrays: linear algebra

def _spd(rng, n, batch=()):
    m = rng.normal(size=batch + (n, n))
    return m @ np.swapaxes(m, -1, -2) + n * np.eye(n)


def _triangular(rng, n, lower, batch=()):
    m = 0.5 * rng.normal(size=batch + (n, n)) + np.diag(2.0 + rng.uniform(size=n))
    return np.tril(m) if lower else np.triu(m)


def _spd_from(B, params, n):
    """Backend SPD matrix M M^T + n I from a flat parameter vector (for gradient checks)."""
    m = B.reshape(params, (n, n))
    return B.matmul(m, B.matrix_transpose(m)) + n * B.eye(n)


def _spd_from_np(params, n):
    m = params.reshape(n, n)
    return m @ m.T + n * np.eye(n)


@_register("matmul")
def check_matmul(B):
    rng = _rng(10)
    (ab, a), (bb, b) = _pair(B, rng.normal(size=(2, 3, 4))), _pair(B, rng.normal(size=(4, 5)))
    _expect(B, B.matmul(ab, bb), a @ b, rtol=_rtol(B, LINALG_RTOL), what="matmul broadcasting")
    cb, c = _pair(B, rng.normal(size=(2, 4, 2)))
    _expect(B, B.matmul(ab, cb), a @ c, rtol=_rtol(B, LINALG_RTOL), what="matmul batched")
    wb, w = _pair(B, rng.normal(size=(3, 5)))
    ga, gb = B.grad(lambda p, q: B.sum(B.matmul(p, q) * wb), argnums=(0, 1))(ab[0], bb)
    _expect_grad(B, ga, w @ b.T, table=LINALG_RTOL, what="grad of matmul w.r.t. a")
    _expect_grad(B, gb, a[0].T @ w, table=LINALG_RTOL, what="grad of matmul w.r.t. b")


@_register("einsum")
def check_einsum(B):
    rng = _rng(11)
    (ab, a), (bb, b) = _pair(B, rng.normal(size=(3, 4))), _pair(B, rng.normal(size=(4, 2)))
    tol = _rtol(B, LINALG_RTOL)
    _expect(B, B.einsum("ij,jk->ik", ab, bb), a @ b, rtol=tol, what="einsum ij,jk->ik")
    cb, c = _pair(B, rng.normal(size=(2, 3, 3)))
    _expect(B, B.einsum("bii->b", cb), np.einsum("bii->b", c), rtol=tol, what="einsum trace")
    vb, v = _pair(B, rng.normal(size=(2, 3)))
    _expect(B, B.einsum("bij,bj->bi", cb, vb), np.einsum("bij,bj->bi", c, v), rtol=tol,
            what="einsum batched matvec")


@_register("cholesky")
def check_cholesky(B):
    rng = _rng(12)
    ab, a = _pair(B, _spd(rng, 3, (2,)))
    _expect(B, B.cholesky(ab), np.linalg.cholesky(a), rtol=_rtol(B, LINALG_RTOL),
            atol=_rtol(B, LINALG_RTOL), what="cholesky (batched)")
    pb, p = _pair(B, rng.normal(size=9))
    wb, w = _pair(B, np.tril(rng.normal(size=(3, 3))))
    g = _fused(B, B.grad(lambda t, u: B.sum(B.cholesky(_spd_from(B, t, 3)) * u)))(pb, wb)
    fd = _fd(lambda q: float(np.sum(np.linalg.cholesky(_spd_from_np(q, 3)) * w)), (p,), 0)
    _expect_grad(B, g, fd, what="grad of cholesky")


@_register("solve_triangular")
def check_solve_triangular(B):
    rng = _rng(13)
    tol = _rtol(B, LINALG_RTOL)
    cases = [(batch, lower, trans) for batch in ((), (2,)) for lower in (True, False)
             for trans in (False, True)]
    mats = [(_pair(B, _triangular(rng, 3, lower, batch)), _pair(B, rng.normal(size=batch + (3, 2))))
            for batch, lower, _ in cases]
    ab, a = _pair(B, _triangular(rng, 3, True))
    bb, b = _pair(B, rng.normal(size=(3, 2)))
    wb, w = _pair(B, rng.normal(size=(3, 2)))

    def run(ms, p0, q0, u):
        outs = [B.solve_triangular(p, q, lower=lower, trans=trans)
                for (p, q), (_, lower, trans) in zip(ms, cases, strict=True)]
        g = B.grad(lambda p, q: B.sum(B.solve_triangular(B.tril(p), q, lower=True) * u),
                   argnums=(0, 1))(p0, q0)
        return outs, g

    outs, (ga, gb) = _fused(B, run)([(p, q) for (p, _), (q, _) in mats], ab, bb, wb)
    for ((_, an), (_, bn)), (batch, lower, trans), out in zip(mats, cases, outs, strict=True):
        expected = np.empty(batch + (3, 2))
        for i in np.ndindex(batch):
            expected[i] = sla.solve_triangular(an[i], bn[i], lower=lower, trans=int(trans))
        _expect(B, out, expected, rtol=tol, atol=tol,
                what=f"solve_triangular(batch={batch}, lower={lower}, trans={trans})")

    def loss_np(a_, b_):
        return float(np.sum(sla.solve_triangular(np.tril(a_), b_, lower=True) * w))

    _expect_grad(B, ga, _fd(loss_np, (a, b), 0), what="grad of solve_triangular w.r.t. a")
    _expect_grad(B, gb, _fd(loss_np, (a, b), 1), what="grad of solve_triangular w.r.t. b")


@_register("cho_solve")
def check_cho_solve(B):
    rng = _rng(14)
    lb, low = _pair(B, np.linalg.cholesky(_spd(rng, 3, (2,))))
    bb, b = _pair(B, rng.normal(size=(2, 3, 2)))
    expected = np.linalg.solve(low @ np.swapaxes(low, -1, -2), b)
    _expect(B, B.cho_solve(lb, bb), expected, rtol=_rtol(B, LINALG_RTOL),
            atol=_rtol(B, LINALG_RTOL), what="cho_solve (batched)")
    wb, w = _pair(B, rng.normal(size=(3, 2)))
    gl, gb = _fused(B, B.grad(lambda p, q, u: B.sum(B.cho_solve(B.tril(p), q) * u),
                              argnums=(0, 1)))(lb[0], bb[0], wb)

    def loss(p, q):
        p = np.tril(p)
        return float(np.sum(np.linalg.solve(p @ p.T, q) * w))

    _expect_grad(B, gl, _fd(loss, (low[0], b[0]), 0), what="grad of cho_solve w.r.t. chol")
    _expect_grad(B, gb, _fd(loss, (low[0], b[0]), 1), what="grad of cho_solve w.r.t. b")


@_register("solve")
def check_solve(B):
    rng = _rng(15)
    ab, a = _pair(B, rng.normal(size=(2, 3, 3)) + 3 * np.eye(3))
    bb, b = _pair(B, rng.normal(size=(2, 3, 2)))
    tol = _rtol(B, LINALG_RTOL)
    _expect(B, B.solve(ab, bb), np.linalg.solve(a, b), rtol=tol, atol=tol, what="solve batched")
    wb, w = _pair(B, rng.normal(size=(3, 2)))
    loss = lambda p, q: float(np.sum(np.linalg.solve(p, q) * w))  # noqa: E731
    ga, gb = _fused(B, B.grad(lambda p, q, u: B.sum(B.solve(p, q) * u), argnums=(0, 1)))(
        ab[0], bb[0], wb)
    _expect_grad(B, ga, _fd(loss, (a[0], b[0]), 0), what="grad of solve w.r.t. a")
    _expect_grad(B, gb, _fd(loss, (a[0], b[0]), 1), what="grad of solve w.r.t. b")


@_register("inv")
def check_inv(B):
    rng = _rng(16)
    ab, a = _pair(B, rng.normal(size=(2, 3, 3)) + 3 * np.eye(3))
    tol = _rtol(B, LINALG_RTOL)
    _expect(B, B.inv(ab), np.linalg.inv(a), rtol=tol, atol=tol, what="inv batched")
    wb, w = _pair(B, rng.normal(size=(3, 3)))
    g = _fused(B, B.grad(lambda p, u: B.sum(B.inv(p) * u)))(ab[0], wb)
    _expect_grad(B, g, _fd(lambda p: float(np.sum(np.linalg.inv(p) * w)), (a[0],), 0),
                 what="grad of inv")


@_register("slogdet")
def check_slogdet(B):
    rng = _rng(17)
    a = rng.normal(size=(3, 3, 3)) + 2 * np.eye(3)
    a[1, 0] *= -1.0  # flips the sign of one determinant
    ab, a = _pair(B, a)
    sign, logdet = B.slogdet(ab)
    es, el = np.linalg.slogdet(a)
    _require(np.all(es != 0), "test matrices must be non-singular")
    _expect(B, sign, es, rtol=_rtol(B, LINALG_RTOL), what="slogdet sign")
    _expect(B, logdet, el, rtol=_rtol(B, LINALG_RTOL), atol=_rtol(B, LINALG_RTOL),
            what="slogdet logdet")
    g = _fused(B, B.grad(lambda p: B.slogdet(p)[1]))(ab[0])
    _expect_grad(B, g, _fd(lambda p: float(np.linalg.slogdet(p)[1]), (a[0],), 0),
                 what="grad of slogdet")


@_register("eigh")
def check_eigh(B):
    rng = _rng(18)
    ab, a = _pair(B, _spd(rng, 4, (2,)))
    tol = _rtol(B, LINALG_RTOL)
    w, v = B.eigh(ab)
    ew, ev = np.linalg.eigh(a)
    _expect(B, w, ew, rtol=tol, atol=tol * np.abs(ew).max(), what="eigh eigenvalues")
    vn = np.asarray(B.to_numpy(v))
    _expect(B, v, vn, what="eigh eigenvectors (dtype, device)")
    # eigenvectors are unique up to sign (the eigenvalues are distinct)
    signs = np.sign(np.sum(vn * ev, axis=-2, keepdims=True))
    np.testing.assert_allclose(vn * signs, ev, rtol=0, atol=100 * tol,
                               err_msg="eigh eigenvectors differ (up to sign) from numpy's")
    pb, p = _pair(B, rng.normal(size=9))
    cb, c = _pair(B, np.array([1.0, -2.0, 0.5]))
    g = _fused(B, B.grad(lambda t, u: B.sum(B.eigh(_spd_from(B, t, 3))[0] * u)))(pb, cb)
    fd = _fd(lambda q: float(np.sum(np.linalg.eigh(_spd_from_np(q, 3))[0] * c)), (p,), 0)
    _expect_grad(B, g, fd, what="grad of eigh eigenvalues")


# ============================================================================================
# arrays: functional updates and dynamic indexing

_UPD_X = np.arange(12.0).reshape(3, 4) / 4.0


def _np_update(x, index, value, add):
    out = x.copy()
    if add:
        np.add.at(out, index, value)
    else:
        out[index] = value
    return out


def _update_cases(B):
    """(backend index, numpy index, value shape) triples: int, slice, int array, tuples."""
    return [
        (1, 1, (4,)),
        (slice(1, 3), slice(1, 3), ()),
        (_ints(B, [0, 2]), np.array([0, 2]), (2, 4)),
        ((1, 2), (1, 2), ()),
        ((slice(None), 1), (slice(None), 1), (3,)),
    ]


def _check_update(B, name, add):
    f = getattr(B, name)
    rng = _rng(20)
    xb, x = _pair(B, _UPD_X)
    for bidx, nidx, vshape in _update_cases(B):
        vb, v = _pair(B, rng.normal(size=vshape))
        out = f(xb, bidx, vb)
        _expect(B, out, _np_update(x, nidx, v, add), what=f"{name}(index={nidx!r})")
        _expect(B, xb, x, what=f"{name} must not modify its input")
    # repeated indices: index_add accumulates; index_update writes one of them
    if add:
        vb, v = _pair(B, rng.normal(size=(3, 4)))
        _expect(B, f(xb, _ints(B, [0, 0, 2]), vb), _np_update(x, np.array([0, 0, 2]), v, True),
                what=f"{name} with repeated indices")
    wb, w = _pair(B, rng.normal(size=(3, 4)))
    cases = _update_cases(B)
    vals = [_pair(B, rng.normal(size=vshape))[0] for _, _, vshape in cases]

    def grads(a, vs, u):
        return [B.grad(lambda p, q, i=bidx: B.sum(f(p, i, q) * u), argnums=(0, 1))(a, v)
                for (bidx, _, _), v in zip(cases, vs, strict=True)]

    for (_, nidx, vshape), (gx, gv) in zip(cases, _fused(B, grads)(xb, vals, wb), strict=True):
        ex = w.copy() if add else _np_update(w, nidx, 0.0, False)
        ev = np.broadcast_to(w[nidx], np.shape(w[nidx])).copy()
        if vshape == ():
            ev = np.sum(ev)
        _expect_grad(B, gx, ex, table=GRAD_RTOL, what=f"grad of {name}(index={nidx!r}) w.r.t. x")
        _expect_grad(B, gv, ev, table=GRAD_RTOL,
                     what=f"grad of {name}(index={nidx!r}) w.r.t. value")


@_register("index_update")
def check_index_update(B):
    _check_update(B, "index_update", add=False)


@_register("index_add")
def check_index_add(B):
    _check_update(B, "index_add", add=True)


@_register("dynamic_slice")
def check_dynamic_slice(B):
    x = np.arange(18.0).reshape(6, 3)
    xb = B.asarray(x)
    for start, expect_start in ((2, 2), (5, 3), (0, 0), (-1, 0)):
        _expect(B, B.dynamic_slice(xb, start, 3), x[expect_start:expect_start + 3],
                what=f"dynamic_slice(start={start}) (clamped to {expect_start})")
        _expect(B, B.dynamic_slice(xb, _ints(B, start), 3), x[expect_start:expect_start + 3],
                what=f"dynamic_slice(start=array({start}))")
    _expect(B, B.dynamic_slice(xb, 1, 2, axis=1), x[:, 1:3], what="dynamic_slice axis 1")
    jf = _jitted(B, lambda a, s: B.dynamic_slice(a, s, 3))
    if jf is not None:
        for start, expect_start in ((2, 2), (5, 3)):
            _expect(B, jf(xb, _ints(B, start)), x[expect_start:expect_start + 3],
                    what=f"dynamic_slice under jit with a traced start={start}")


@_register("dynamic_index")
def check_dynamic_index(B):
    x = np.arange(12.0).reshape(3, 4)
    xb = B.asarray(x)
    _expect(B, B.dynamic_index(xb, 2), x[2], what="dynamic_index(2)")
    _expect(B, B.dynamic_index(xb, _ints(B, 1)), x[1], what="dynamic_index(array(1))")
    _expect(B, B.dynamic_index(xb, _ints(B, 3), axis=1), x[:, 3], what="dynamic_index axis 1")
    jf = _jitted(B, lambda a, i: B.dynamic_index(a, i, axis=1))
    if jf is not None:
        _expect(B, jf(xb, _ints(B, 2)), x[:, 2], what="dynamic_index under jit (traced index)")
    g = B.grad(lambda a: B.sum(B.dynamic_index(a, 1) * B.asarray([1.0, 2.0, 3.0, 4.0])))(xb)
    _expect_grad(B, g, np.outer([0, 1, 0], [1, 2, 3, 4]), table=GRAD_RTOL,
                 what="grad of dynamic_index")


@_register("dynamic_update_index")
def check_dynamic_update_index(B):
    x = np.arange(12.0).reshape(3, 4)
    xb = B.asarray(x)
    v0, v1 = -np.arange(4.0), -np.arange(3.0) - 10
    e0, e1 = x.copy(), x.copy()
    e0[1] = v0
    e1[:, 2] = v1
    _expect(B, B.dynamic_update_index(xb, 1, B.asarray(v0)), e0, what="dynamic_update_index")
    _expect(B, B.dynamic_update_index(xb, _ints(B, 2), B.asarray(v1), axis=1), e1,
            what="dynamic_update_index axis 1 (array index)")
    _expect(B, xb, x, what="dynamic_update_index must not modify its input")
    jf = _jitted(B, lambda a, i, v: B.dynamic_update_index(a, i, v, axis=1))
    if jf is not None:
        _expect(B, jf(xb, _ints(B, 2), B.asarray(v1)), e1,
                what="dynamic_update_index under jit (traced index)")
    w = np.arange(12.0).reshape(3, 4)
    gx, gv = B.grad(lambda a, v: B.sum(B.dynamic_update_index(a, 1, v) * B.asarray(w)),
                    argnums=(0, 1))(xb, B.asarray(v0))
    ex = w.copy()
    ex[1] = 0.0
    _expect_grad(B, gx, ex, table=GRAD_RTOL, what="grad of dynamic_update_index w.r.t. x")
    _expect_grad(B, gv, w[1], table=GRAD_RTOL, what="grad of dynamic_update_index w.r.t. value")


# ============================================================================================
# arrays: bit operations

_BITS = np.array([0, 1, 5, 12, 255, 1023, 2**20 + 7, 2**31 - 1])
_BITS_Y = np.array([3, 6, 4, 10, 15, 512, 2**20, 2**30 + 1])
_SMALL = np.array([0, 1, 5, 12, 255, 1023, 2**20 + 7, 3])


def _bit_check(B, name, oracle, x, y, scalar=None):
    f = getattr(B, name)
    _expect(B, f(_ints(B, x), _ints(B, y)), oracle(x, y), kind="int", what=f"{name}(array, array)")
    if scalar is not None:
        _expect(B, f(_ints(B, x), scalar), oracle(x, scalar), kind="int",
                what=f"{name}(array, python int)")


@_register("bitwise_and")
def check_bitwise_and(B):
    _bit_check(B, "bitwise_and", np.bitwise_and, _BITS, _BITS_Y, 0x55555555)


@_register("bitwise_or")
def check_bitwise_or(B):
    _bit_check(B, "bitwise_or", np.bitwise_or, _BITS, _BITS_Y, 0x0F0F0F0F)


@_register("bitwise_xor")
def check_bitwise_xor(B):
    _bit_check(B, "bitwise_xor", np.bitwise_xor, _BITS, _BITS_Y, 0x33333333)


@_register("left_shift")
def check_left_shift(B):
    _bit_check(B, "left_shift", np.left_shift, _SMALL, np.array([1, 2, 3, 4, 5, 6, 7, 28]), 3)


@_register("right_shift")
def check_right_shift(B):
    _bit_check(B, "right_shift", np.right_shift, _BITS, np.array([1, 2, 1, 3, 4, 5, 20, 30]), 2)


@_register("popcount")
def check_popcount(B):
    values = np.array([0, 1, 2, 3, 7, 8, 255, 256, 1023, 2**20 + 7, 2**31 - 1, 0x55555555])
    expected = np.array([int(v).bit_count() for v in values])
    _expect(B, B.popcount(_ints(B, values)), expected, kind="int", what="popcount")
    jf = _jitted(B, B.popcount)
    if jf is not None:
        _expect(B, jf(_ints(B, values)), expected, kind="int", what="popcount under jit")


# ============================================================================================
# dtype and device

def _dtype_names_here(B):
    """Dtype names this backend can hold at its precision (64-bit only under float64)."""
    names = ["float32", "int32", "uint32", "bool", B.precision, _dtype_name(B.int_dtype)]
    if B.precision == "float64":
        names += ["int64"]
    return list(dict.fromkeys(names))


@_register("float_dtype")
def check_float_dtype(B):
    _require(_dtype_name(B.float_dtype) == B.precision,
             f"float_dtype is {B.float_dtype}, expected {B.precision}")
    for x in (B.zeros((2,)), B.asarray(1.0), B.linspace(0.0, 1.0, 3), B.normal(B.key(0), (2,))):
        _require(_dtype_name(B.dtype_of(x)) == B.precision,
                 f"a created float array has dtype {B.dtype_of(x)}, expected {B.precision}")


@_register("int_dtype")
def check_int_dtype(B):
    name = _dtype_name(B.int_dtype)
    _require(name in ("int32", "int64"), f"int_dtype is {name}, expected int32 or int64")
    _require(_dtype_name(B.dtype_of(B.arange(3))) == name, "arange must give int_dtype")
    _require(_dtype_name(B.dtype_of(B.asarray(2))) == name, "asarray(int) must give int_dtype")


@_register("dtype")
def check_dtype(B):
    for name in _dtype_names_here(B):
        dt = B.dtype(name)
        _require(_dtype_name(dt) == name, f"dtype({name!r}) is {dt}")
        x = B.zeros((2,), dtype=dt)
        _require(_dtype_name(B.dtype_of(x)) == name, f"zeros(dtype=dtype({name!r})) has dtype "
                 f"{B.dtype_of(x)}")
        _check_device(B, x, f"zeros(dtype={name})")


@_register("dtype_of")
def check_dtype_of(B):
    _require(_dtype_name(B.dtype_of(B.zeros((1,)))) == B.precision, "dtype_of float array")
    _require(_dtype_name(B.dtype_of(B.asarray([True]))) == "bool", "dtype_of bool array")
    _require(_dtype_name(B.dtype_of(B.asarray([1], dtype=B.dtype("int32")))) == "int32",
             "dtype_of int32 array")


@_register("astype")
def check_astype(B):
    x = np.array([-1.7, -0.2, 0.6, 2.9])
    xb = B.asarray(x)
    _expect(B, B.astype(xb, B.dtype("int32")), x.astype(np.int32), kind="int32",
            what="astype float -> int32 (truncates)")
    _expect(B, B.astype(xb, B.dtype("float32")), x.astype(np.float32), kind="float32",
            rtol=0, what="astype -> float32")
    _expect(B, B.astype(B.asarray([True, False]), B.float_dtype), [1.0, 0.0],
            what="astype bool -> float")
    _expect(B, B.astype(B.asarray([0, 3]), B.dtype("bool")), [False, True], kind="bool",
            what="astype int -> bool")
    # differentiable between floating dtypes
    g = B.grad(lambda t: B.sum(B.astype(B.astype(t, B.dtype("float32")), B.float_dtype) ** 2))(xb)
    _expect_grad(B, g, 2 * x.astype(np.float32).astype(np.float64), table={"float64": 1e-6,
                 "float32": 1e-6}, what="grad through astype float32 and back")


@_register("finfo")
def check_finfo(B):
    for dt, np_dt in ((None, np.dtype(B.precision)), (B.dtype("float32"), np.dtype(np.float32)),
                      (B.float_dtype, np.dtype(B.precision))):
        fi, ref = B.finfo(dt), np.finfo(np_dt)
        for field in ("eps", "tiny", "max", "min", "bits"):
            got, want = getattr(fi, field), getattr(ref, field)
            _require(got == want, f"finfo({dt}).{field} = {got!r}, numpy.finfo says {want!r}")


@_register("is_floating")
def check_is_floating(B):
    _require(B.is_floating(B.zeros((2,))), "is_floating(float_dtype array) is False")
    _require(B.is_floating(B.zeros((2,), dtype=B.dtype("float32"))), "is_floating(float32)")
    _require(not B.is_floating(B.arange(3)), "is_floating(int array) is True")
    _require(not B.is_floating(B.asarray([True])), "is_floating(bool array) is True")


def _devices(B):
    devs = B.available_devices()
    _require(isinstance(devs, list) and devs and all(isinstance(d, str) for d in devs),
             f"available_devices must be a non-empty list of str, got {devs!r}")
    return [_norm_device(d) for d in devs]


@_register("device_of")
def check_device_of(B):
    for x in (B.zeros((2,)), B.arange(2), B.asarray([True])):
        d = B.device_of(x)
        _require(isinstance(d, str), f"device_of must return a str, got {type(d).__name__}")
        _require(_norm_device(d) in _devices(B), f"device_of gave {d!r}, not in "
                 f"available_devices() = {B.available_devices()!r}")
        _check_device(B, x, "a created array")


@_register("to_device")
def check_to_device(B):
    x = B.asarray([1.0, 2.0])
    here = B.device_of(x)
    y = B.to_device(x, here)
    _expect(B, y, [1.0, 2.0], what="to_device(its own device)")
    _require(_norm_device(B.device_of(y)) == _norm_device(here), "to_device changed the device")
    if "cpu" in _devices(B):
        z = B.to_device(x, "cpu")
        _require(_norm_device(B.device_of(z)) == "cpu", "to_device(x, 'cpu') is not on the CPU")
        np.testing.assert_array_equal(B.to_numpy(z), [1.0, 2.0])


@_register("available_devices")
def check_available_devices(B):
    devs = _devices(B)
    _require("cpu" in devs, f"available_devices() should list the CPU, got {devs!r}")
    if B.device is not None:
        _require(_norm_device(B.device) in devs, f"the backend's device {B.device!r} is not in "
                 f"available_devices() = {devs!r}")


# ============================================================================================
# random: keys

def _kd(B, k):
    return np.asarray(B.key_data(k))


def _host(B, x):
    return np.asarray(B.to_numpy(x)).astype(np.float64)


@_register("key")
def check_key(B):
    d = _kd(B, B.key(0))
    _require(d.shape == (2,) and d.dtype == np.uint32,
             f"key_data(key(0)) has shape {d.shape} and dtype {d.dtype}; expected (2,) uint32")
    _require(np.array_equal(d, _kd(B, B.key(0))), "key(0) is not deterministic")
    _require(not np.array_equal(d, _kd(B, B.key(1))), "key(0) and key(1) are equal")
    _require(_kd(B, B.key(2**40 + 3)).shape == (2,), "key of a large seed")
    a, b = B.normal(B.key(7), (5,)), B.normal(B.key(7), (5,))
    _require(np.array_equal(B.to_numpy(a), B.to_numpy(b)), "same key gave different draws")
    try:
        B.key(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("key(-1) must raise ValueError (seeds are non-negative ints)")


@_register("split")
def check_split(B):
    k = B.key(3)
    ks = B.split(k, 3)
    d = _kd(B, ks)
    _require(d.shape == (3, 2) and d.dtype == np.uint32, f"split(key, 3) key_data shape "
             f"{d.shape}, dtype {d.dtype}; expected (3, 2) uint32")
    _require(len({tuple(r) for r in d}) == 3, "split gave repeated keys")
    _require(not any(np.array_equal(r, _kd(B, k)) for r in d), "split returned its parent")
    _require(np.array_equal(d, _kd(B, B.split(B.key(3), 3))), "split is not deterministic")
    _require(_kd(B, B.split(k)).shape == (2, 2), "split(key) must give 2 keys")
    a, b = _host(B, B.normal(ks[0], (4,))), _host(B, B.normal(ks[1], (4,)))
    _require(not np.array_equal(a, b), "draws from two split children are equal")
    c = _host(B, B.normal(k, (4,)))
    _require(not np.array_equal(a, c), "draws from a child equal its parent's")


@_register("fold_in")
def check_fold_in(B):
    k = B.key(5)
    k0, k1 = B.fold_in(k, 0), B.fold_in(k, 1)
    d0, d1 = _kd(B, k0), _kd(B, k1)
    _require(d0.shape == (2,) and d0.dtype == np.uint32, f"fold_in key_data {d0.shape} {d0.dtype}")
    _require(not np.array_equal(d0, d1), "fold_in(k, 0) equals fold_in(k, 1)")
    _require(not np.array_equal(d0, _kd(B, k)), "fold_in(k, 0) equals k")
    _require(np.array_equal(d1, _kd(B, B.fold_in(B.key(5), 1))), "fold_in is not deterministic")
    a, b = _host(B, B.uniform(k0, (4,))), _host(B, B.uniform(k1, (4,)))
    _require(not np.array_equal(a, b), "draws from fold_in(k, 0) and fold_in(k, 1) are equal")
    _require(_kd(B, B.fold_in(k, 10**6)).shape == (2,), "fold_in with a large integer")


@_register("key_data")
def check_key_data(B):
    for k, shape in ((B.key(9), (2,)), (B.split(B.key(9), 4), (4, 2)),
                     (B.fold_in(B.key(9), 2), (2,))):
        d = B.key_data(k)
        _require(isinstance(d, np.ndarray) and d.dtype == np.uint32 and d.shape == shape,
                 f"key_data gave {type(d).__name__} {getattr(d, 'dtype', '')} "
                 f"{getattr(d, 'shape', '')}; expected a numpy uint32 array of shape {shape}")


# ============================================================================================
# random: draws

def _check_draw(B, draw, shape, kind="float", what="draw"):
    """Shape, dtype, device and key determinism of ``draw(key)``."""
    a = draw(B.key(42))
    host = np.asarray(B.to_numpy(a))
    _require(host.shape == tuple(shape), f"{what}: shape {host.shape}, expected {tuple(shape)}")
    _expect(B, a, host, kind=kind, what=what)
    _require(np.array_equal(host, np.asarray(B.to_numpy(draw(B.key(42))))),
             f"{what}: the same key gave different draws")
    if host.size >= 8 and kind != "bool":
        _require(not np.array_equal(host, np.asarray(B.to_numpy(draw(B.key(43))))),
                 f"{what}: different keys gave the same draws")
    return host


def _ks(x, dist, args=(), what="draws"):
    p = sst.kstest(np.asarray(x, np.float64).ravel(), dist, args=args).pvalue
    _require(p > P_MIN, f"{what}: Kolmogorov-Smirnov test against {dist}{args} has p = {p:.2e}")


def _mean_within(x, mean, sd, what):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    err = np.abs(x.mean(0) - mean)
    bound = MC_SIGMAS * np.asarray(sd) / math.sqrt(n)
    _require(np.all(err < bound), f"{what}: sample mean {x.mean(0)} differs from {mean} by more "
             f"than {MC_SIGMAS} standard errors ({bound})")


def _chisq(samples, support, pmf, what):
    """Chi-square test of integer ``samples`` against ``pmf`` on ``support`` (the rest lumped)."""
    samples = np.asarray(samples).ravel()
    n = samples.size
    support, pmf = np.asarray(support), np.asarray(pmf, np.float64)
    keep = n * pmf >= 5
    obs = [np.sum(samples == k) for k in support[keep]]
    exp = list(n * pmf[keep])
    rest_obs = n - sum(obs)
    rest_exp = n - sum(exp)
    if rest_exp > 1e-6 * n or rest_obs:
        obs.append(rest_obs)
        exp.append(max(rest_exp, 1e-12))
    p = sst.chisquare(obs, exp).pvalue
    _require(p > P_MIN, f"{what}: chi-square test of the frequencies has p = {p:.2e} "
             f"(observed {obs}, expected {np.round(exp, 1).tolist()})")


# Each draw configuration (function, parameter shapes, result shape, dtype) is a separate
# compilation on JAX, so every check below uses as few configurations as it can, and checks share
# them (gamma, beta and dirichlet all draw gamma(alpha (3,), shape (n, 3))).
_N4 = (NUM_DRAWS // 4, 4)
_ALPHA3 = np.array([0.4, 1.0, 2.5])


@_register("normal")
def check_normal(B):
    x = _host(B, _check_draw(B, lambda k: B.normal(k, _N4), _N4, what="normal")).ravel()
    _ks(x, "norm", what="normal")
    _mean_within(x, 0.0, 1.0, "normal mean")
    _mean_within((x - x.mean()) ** 2, 1.0, math.sqrt(2.0), "normal variance")
    _check_draw(B, lambda k: B.normal(k), (), what="normal(())")
    _check_draw(B, lambda k: B.normal(k, _N4, dtype=B.dtype("float32")), _N4, kind="float32",
                what="normal(dtype=float32)")


@_register("uniform")
def check_uniform(B):
    _check_draw(B, lambda k: B.uniform(k, _N4), _N4, what="uniform")
    u = _host(B, B.uniform(B.key(2), _N4))
    _require(u.min() >= 0.0 and u.max() < 1.0, "uniform draws outside [0, 1)")
    _ks(u, "uniform", what="uniform")
    x = _host(B, B.uniform(B.key(3), _N4, minval=-2.0, maxval=3.0))
    _require(x.min() >= -2.0 and x.max() < 3.0, "uniform(minval=-2, maxval=3) outside the range")
    _ks(x, "uniform", (-2.0, 5.0), what="uniform(-2, 3)")
    _check_draw(B, lambda k: B.uniform(k, _N4, dtype=B.dtype("float32")), _N4, kind="float32",
                what="uniform(dtype=float32)")


@_register("gamma")
def check_gamma(B):
    shape = (NUM_DRAWS, 3)
    x = _host(B, _check_draw(B, lambda k: B.gamma(k, B.asarray(_ALPHA3), shape), shape,
                             what="gamma(alpha (3,), shape (n, 3))"))
    _require(np.all(x >= 0), "gamma gave negative draws")
    for j, a in enumerate(_ALPHA3):
        _ks(x[:, j], "gamma", (a,), what=f"gamma({a})")
    _mean_within(x, _ALPHA3, np.sqrt(_ALPHA3), "gamma means (broadcast alpha)")
    _check_draw(B, lambda k: B.gamma(k, B.asarray(2.0), (2, 3)), (2, 3),
                what="gamma(scalar alpha, shape (2, 3))")
    _check_draw(B, lambda k: B.gamma(k, B.asarray(_ALPHA3)), (3,),
                what="gamma (default shape alpha's)")


@_register("gamma")
def check_gamma_grad(B):
    n = NUM_DRAWS
    alpha = B.asarray(_ALPHA3)
    # one VJP of draws of shape (n, 3) from alpha (3,): the cotangent picks which draws' pathwise
    # derivatives dz/dalpha are summed (over the broadcast axis) into the gradient of alpha
    z, pull = B.vjp(lambda a: B.gamma(B.key(31), a, (n, 3)), alpha)
    z = _host(B, z)
    (total,) = pull(B.ones_like(B.asarray(z)))
    _expect(B, total, _host(B, total), what="gamma reparameterised gradient (dtype, device)")
    total = _host(B, total)
    # the implicit reparameterisation dz/da = -(dP/da)(a, z) / p(z; a), from SciPy
    h = 1e-6 * _ALPHA3
    dpda = (ssp.gammainc(_ALPHA3 + h, z) - ssp.gammainc(_ALPHA3 - h, z)) / (2 * h)
    with np.errstate(all="ignore"):
        implicit = -dpda / sst.gamma.pdf(z, _ALPHA3)
    # unbiased pathwise gradient: d/dalpha E[z] = d/dalpha alpha = 1
    se = np.nanstd(implicit, axis=0, ddof=1) / math.sqrt(n)
    _require(np.all(np.abs(total / n - 1.0) < MC_SIGMAS * se),
             f"gamma({_ALPHA3.tolist()}): mean pathwise gradients {(total / n).tolist()}, expected "
             f"1 (+- {(MC_SIGMAS * se).tolist()})")
    # against the formula, away from the tails where dP/da and p(z) are both tiny
    cdf = ssp.gammainc(_ALPHA3, z)
    mask = (cdf > 1e-3) & (cdf < 1 - 1e-3)
    (summed,) = pull(B.asarray(mask.astype(np.float64)))
    np.testing.assert_allclose(_host(B, summed), np.where(mask, implicit, 0.0).sum(0),
                               rtol=_rtol(B, GAMMA_GRAD_RTOL),
                               err_msg="gamma: summed per-draw gradients differ from the implicit "
                               "reparameterisation formula (Figurnov et al. 2018)")
    for i in np.flatnonzero(mask.all(1))[:4]:
        onehot = np.zeros((n, 3))
        onehot[i] = 1.0
        (g,) = pull(B.asarray(onehot))
        np.testing.assert_allclose(_host(B, g), implicit[i], rtol=_rtol(B, GAMMA_GRAD_RTOL),
                                   err_msg=f"gamma: pathwise gradient of draw {i} differs from "
                                   "the implicit reparameterisation formula")


@_register("poisson")
def check_poisson(B):
    rate = np.array([0.5, 3.5, 30.0])
    shape = (NUM_DRAWS, 3)
    x = _host(B, _check_draw(B, lambda k: B.poisson(k, B.asarray(rate), shape), shape,
                             what="poisson(rate (3,), shape (n, 3))"))
    _require(np.array_equal(x, np.round(x)) and x.min() >= 0, "poisson draws are not counts")
    support = np.arange(40)
    _chisq(x[:, 1], support, sst.poisson.pmf(support, 3.5), "poisson(3.5)")
    _mean_within(x, rate, np.sqrt(rate), "poisson means (broadcast rate)")
    _check_draw(B, lambda k: B.poisson(k, B.asarray(rate)), (3,), what="poisson (default shape)")


@_register("binomial")
def check_binomial(B):
    n, p = np.array([5.0, 10.0, 20.0]), np.array([0.2, 0.3, 0.7])
    shape = (NUM_DRAWS, 3)
    x = _host(B, _check_draw(B, lambda k: B.binomial(k, B.asarray(n), B.asarray(p), shape), shape,
                             what="binomial(shape (n, 3))"))
    _require(np.array_equal(x, np.round(x)) and x.min() >= 0 and np.all(x <= n),
             "binomial draws outside {0, ..., total_count}")
    support = np.arange(11)
    _chisq(x[:, 1], support, sst.binom.pmf(support, 10, 0.3), "binomial(10, 0.3)")
    _mean_within(x, n * p, np.sqrt(n * p * (1 - p)), "binomial means (broadcast)")
    _check_draw(B, lambda k: B.binomial(k, B.asarray(n), B.asarray(p[:2, None])), (2, 3),
                what="binomial (default shape: parameters broadcast)")


@_register("randint")
def check_randint(B):
    x = _check_draw(B, lambda k: B.randint(k, _N4, -3, 5), _N4, kind="int_dtype", what="randint")
    _require(x.min() >= -3 and x.max() < 5, f"randint(-3, 5) outside [-3, 5): {x.min()}, {x.max()}")
    _chisq(x, np.arange(-3, 5), np.full(8, 1 / 8), "randint(-3, 5)")


@_register("permutation")
def check_permutation(B):
    p = _check_draw(B, lambda k: B.permutation(k, 10), (10,), kind="int", what="permutation")
    _require(np.array_equal(np.sort(p), np.arange(10)), f"permutation(10) gave {p}")
    # the position of element 0 is uniform over 300 keys
    base = B.key(61)
    pos = [int(np.flatnonzero(np.asarray(B.to_numpy(B.permutation(B.fold_in(base, i), 10)))
                              == 0)[0]) for i in range(300)]
    _chisq(np.array(pos), np.arange(10), np.full(10, 0.1), "position of 0 in permutation(10)")


@_register("exponential")
def check_exponential(B):
    x = _host(B, _check_draw(B, lambda k: B.exponential(k, _N4), _N4, what="exponential"))
    _require(x.min() >= 0, "exponential gave negative draws")
    _ks(x, "expon", what="exponential")
    _check_draw(B, lambda k: B.exponential(k, _N4, dtype=B.dtype("float32")), _N4,
                kind="float32", what="exponential(dtype=float32)")


@_register("gumbel")
def check_gumbel(B):
    x = _host(B, _check_draw(B, lambda k: B.gumbel(k, _N4), _N4, what="gumbel"))
    _require(np.all(np.isfinite(x)), "gumbel gave non-finite draws")
    _ks(x, "gumbel_r", what="gumbel")


@_register("bernoulli")
def check_bernoulli(B):
    probs = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    shape = (NUM_DRAWS, 5)
    x = _check_draw(B, lambda k: B.bernoulli(k, B.asarray(probs), shape), shape, kind="bool",
                    what="bernoulli(p (5,), shape (n, 5))")
    _mean_within(x[:, 1:4].astype(float), probs[1:4], np.sqrt(probs * (1 - probs))[1:4],
                 "bernoulli frequencies")
    _require(not np.any(x[:, 0]) and np.all(x[:, 4]), "bernoulli(0) or bernoulli(1) misbehaved")
    _check_draw(B, lambda k: B.bernoulli(k, B.asarray(probs)), (5,), kind="bool",
                what="bernoulli (default shape)")


@_register("categorical")
def check_categorical(B):
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    logits = np.log(probs) + 1.7
    x = _check_draw(B, lambda k: B.categorical(k, B.asarray(logits), shape=(NUM_DRAWS,)),
                    (NUM_DRAWS,), kind="int", what="categorical")
    _chisq(x, np.arange(4), probs, "categorical")
    batch = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    _check_draw(B, lambda k: B.categorical(k, B.asarray(batch)), (2,), kind="int",
                what="categorical(batched logits)")
    cols = np.asarray(B.to_numpy(B.categorical(B.key(91), B.asarray(batch.T), axis=0,
                                               shape=(NUM_DRAWS, 2))))
    _require(cols.shape == (NUM_DRAWS, 2), f"categorical(axis=0) shape {cols.shape}")
    for j in range(2):
        _chisq(cols[:, j], np.arange(4), np.exp(batch[j]), f"categorical(axis=0) column {j}")


@_register("beta")
def check_beta(B):
    a, b = _ALPHA3 + 0.5, np.full(3, 3.5)
    shape = (NUM_DRAWS, 3)
    x = _host(B, _check_draw(B, lambda k: B.beta(k, B.asarray(a), B.asarray(b), shape), shape,
                             what="beta(a (3,), b (3,), shape (n, 3))"))
    _require(x.min() >= 0 and x.max() <= 1, "beta draws outside [0, 1]")
    for j in range(3):
        _ks(x[:, j], "beta", (a[j], b[j]), what=f"beta({a[j]}, {b[j]})")
    _check_draw(B, lambda k: B.beta(k, B.asarray(a), B.asarray(b)), (3,),
                what="beta (default shape)")


@_register("dirichlet")
def check_dirichlet(B):
    alpha = _ALPHA3 + 1.0
    _check_draw(B, lambda k: B.dirichlet(k, B.asarray(alpha)), (3,), what="dirichlet")
    _check_draw(B, lambda k: B.dirichlet(k, B.asarray(np.stack([alpha, alpha[::-1]]))), (2, 3),
                what="dirichlet(batched alpha)")
    x = _host(B, B.dirichlet(B.key(110), B.asarray(alpha), (NUM_DRAWS,)))
    _require(x.shape == (NUM_DRAWS, 3), f"dirichlet(shape=(n,)) gave shape {x.shape}")
    np.testing.assert_allclose(x.sum(-1), 1.0, rtol=10 * _rtol(B, VALUE_RTOL),
                               err_msg="dirichlet draws must sum to 1")
    a0 = alpha.sum()
    mean = alpha / a0
    var = mean * (1 - mean) / (a0 + 1)
    _mean_within(x, mean, np.sqrt(var), "dirichlet means")
    _ks(x[:, 0], "beta", (alpha[0], a0 - alpha[0]), what="dirichlet first coordinate")


@_register("multivariate_normal")
def check_multivariate_normal(B):
    mean = np.array([1.0, -2.0, 0.5])
    cov = _spd(_rng(120), 3) / 3
    chol = np.linalg.cholesky(cov)
    (mb, mean), (lb, chol) = _pair(B, mean), _pair(B, chol)
    cov = chol @ chol.T
    _check_draw(B, lambda k: B.multivariate_normal(k, mb, lb), (3,), what="multivariate_normal")
    _check_draw(B, lambda k: B.multivariate_normal(k, B.stack([mb, mb]), lb), (2, 3),
                what="multivariate_normal(batched mean)")
    x = _host(B, B.multivariate_normal(B.key(121), mb, lb, (NUM_DRAWS,)))
    _require(x.shape == (NUM_DRAWS, 3), f"multivariate_normal shape {x.shape}")
    sd = np.sqrt(np.diag(cov))
    _mean_within(x, mean, sd, "multivariate_normal mean")
    c = x - mean
    for i in range(3):
        for j in range(3):
            prod = c[:, i] * c[:, j]
            _mean_within(prod, cov[i, j], np.sqrt(cov[i, i] * cov[j, j] + cov[i, j] ** 2),
                         f"multivariate_normal covariance [{i}, {j}]")


# ============================================================================================
# special functions

def _special(B, name, oracle, args, argnums=(0,), *, rtol=None, what=None, call=None):
    """Values against ``oracle(*args)`` and gradients (w.r.t. ``argnums``) against central
    finite differences of the oracle."""
    what = what or name
    call = call or getattr(B, name)
    pairs = [_pair(B, a) for a in args]
    bargs, nargs = [p[0] for p in pairs], [p[1] for p in pairs]
    expected = oracle(*nargs)
    wb, w = _pair(B, np.linspace(0.5, 1.5, np.size(expected)).reshape(np.shape(expected)))

    def run(v, *a):
        out = (call(*a),)
        if argnums:
            out += B.grad(lambda *c: B.sum(call(*c) * v), argnums=tuple(argnums))(*a)
        return out

    out = _fused(B, run)(wb, *bargs)
    _expect(B, out[0], expected, rtol=rtol or _rtol(B, SPECIAL_RTOL), what=what)
    for g, i in zip(out[1:], argnums, strict=True):
        fd = _fd(lambda *a: float(np.sum(oracle(*a) * w)), nargs, i)
        _expect_grad(B, g, fd, what=f"grad of {what} w.r.t. argument {i}")


_SPECIAL_SPECS = {
    # name: (oracle, args, argnums of the gradient check)
    "gammaln": (ssp.gammaln, (np.array([-2.5, 0.1, 0.5, 1.3, 3.2, 9.7, 25.0]),), (0,)),
    "digamma": (ssp.digamma, (np.array([0.1, 0.5, 1.3, 4.0, 12.0]),), (0,)),
    "betaln": (ssp.betaln, (np.array([[0.3], [1.5], [6.0]]), np.array([0.7, 2.0, 9.5])), (0, 1)),
    "erf": (ssp.erf, (np.array([-2.5, -0.7, 0.0, 0.3, 1.2, 3.1]),), (0,)),
    "erfc": (ssp.erfc, (np.array([-2.5, -0.7, 0.0, 0.3, 1.2, 4.0]),), (0,)),
    "erfinv": (ssp.erfinv, (np.array([-0.95, -0.3, 0.1, 0.5, 0.99]),), (0,)),
    "ndtr": (ssp.ndtr, (np.array([-6.0, -1.5, 0.0, 0.8, 3.0]),), (0,)),
    "ndtri": (ssp.ndtri, (np.array([0.001, 0.2, 0.55, 0.77, 0.999]),), (0,)),
    # far into the lower tail, where log(ndtr(x)) underflows
    "log_ndtr": (ssp.log_ndtr, (np.array([-40.0, -20.0, -5.0, -1.0, 0.0, 2.0]),), (0,)),
    "expit": (ssp.expit, (np.array([-50.0, -3.0, 0.0, 2.0, 40.0]),), (0,)),
    "logit": (ssp.logit, (np.array([0.001, 0.2, 0.5, 0.9, 0.999]),), (0,)),
    "softplus": (lambda x: np.logaddexp(x, 0.0),
                 (np.array([-800.0, -50.0, -3.0, 0.0, 2.0, 40.0, 800.0]),), (0,)),
    "log_expit": (ssp.log_expit, (np.array([-800.0, -50.0, -3.0, 0.0, 2.0, 40.0, 800.0]),),
                  (0,)),
    "i0e": (ssp.i0e, (np.array([-10.0, -2.0, -0.5, 0.3, 1.5, 7.0, 30.0]),), (0,)),
    "i1e": (ssp.i1e, (np.array([-10.0, -2.0, -0.5, 0.0, 0.3, 1.5, 7.0, 30.0]),), (0,)),
    # differentiable in x only
    "gammainc": (ssp.gammainc, (np.array([[0.5], [1.5], [4.0]]),
                                np.array([0.1, 0.8, 2.0, 5.0, 11.0])), (1,)),
    "gammaincc": (ssp.gammaincc, (np.array([[0.5], [1.5], [4.0]]),
                                  np.array([0.1, 0.8, 2.0, 5.0, 11.0])), (1,)),
}


def _make_special_check(name):
    oracle, args, argnums = _SPECIAL_SPECS[name]

    def check(B):
        _special(B, name, oracle, args, argnums)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = f"``{name}``: values and gradients against ``scipy.special``."
    return _register(name)(check)


for _name in _SPECIAL_SPECS:
    _make_special_check(_name)


@_register("polygamma")
def check_polygamma(B):
    x = np.array([0.3, 1.5, 4.0, 10.0])
    for n in (0, 1, 2, 3):
        _special(B, "polygamma", lambda t, n=n: ssp.polygamma(n, t), (x,), (0,) if n < 3 else (),
                 call=lambda t, n=n: B.polygamma(n, t), what=f"polygamma({n}, x)")


@_register("multigammaln")
def check_multigammaln(B):
    a = np.array([1.6, 2.5, 7.3])
    for d in (1, 3):
        _special(B, "multigammaln", lambda t, d=d: ssp.multigammaln(t, d), (a,), (0,),
                 call=lambda t, d=d: B.multigammaln(t, d), what=f"multigammaln(a, {d})")


def _check_xlogy_like(B, name, oracle, log_fn, x, y, y_edge):
    """Value (0 where x == 0), gradient w.r.t. y (0 where x == 0) and w.r.t. x (log_fn(y),
    also at x == 0) of ``xlogy``/``xlog1py``; ``y_edge`` is where log_fn(y) = -inf."""
    f = getattr(B, name)
    (xb, x), (yb, y) = _pair(B, x), _pair(B, y)
    ok = y != y_edge
    (xo, _), (yo, _) = _pair(B, x[ok]), _pair(B, y[ok])

    def run(a, b, a_ok, b_ok):
        return (f(a, b), B.grad(lambda q: B.sum(f(a, q)))(b),
                B.grad(lambda p: B.sum(f(p, b_ok)))(a_ok))

    val, gy, gx = _fused(B, run)(xb, yb, xo, yo)
    _expect(B, val, oracle(x, y), rtol=_rtol(B, SPECIAL_RTOL), what=f"{name} (0 where x == 0)")
    dy = np.where(x == 0, 0.0, x / np.where(x == 0, 1.0, y - y_edge))
    _expect_grad(B, gy, dy, table=GRAD_RTOL, what=f"grad of {name} w.r.t. y (0 where x == 0)")
    _expect_grad(B, gx, log_fn(y[ok]), table=GRAD_RTOL,
                 what=f"grad of {name} w.r.t. x (including x == 0)")


@_register("xlogy")
def check_xlogy(B):
    _check_xlogy_like(B, "xlogy", ssp.xlogy, np.log, np.array([0.0, 0.0, 1.5, 2.0, -0.7]),
                      np.array([0.0, 2.0, 0.5, 3.0, 1.2]), 0.0)
    _special(B, "xlogy", ssp.xlogy, (np.array([[0.5], [2.0]]), np.array([0.3, 1.7, 4.0])),
             (0, 1), what="xlogy (broadcasting)")


@_register("xlog1py")
def check_xlog1py(B):
    _check_xlogy_like(B, "xlog1py", ssp.xlog1py, np.log1p, np.array([0.0, 0.0, 1.5, 2.0, -0.7]),
                      np.array([-1.0, 2.0, -0.5, 3.0, 0.2]), -1.0)
    _special(B, "xlog1py", ssp.xlog1py, (np.array([[0.5], [2.0]]), np.array([-0.3, 1.7, 4.0])),
             (0, 1), what="xlog1py (broadcasting)")


_LSE_X = np.array([[0.5, -1.2, 2.0, 0.1], [1000.0, 1000.5, 999.0, 998.0],
                   [-np.inf, 0.3, -0.4, 1.1]])


@_register("logsumexp")
def check_logsumexp(B):
    xb, x = _pair(B, _LSE_X)
    wb, w = _pair(B, np.array([0.5, 1.0, 2.0]))
    tol = _rtol(B, SPECIAL_RTOL)
    cases = [(axis, keepdims) for axis in (1, -1, (0, 1), None) for keepdims in (False, True)]

    def run(t, u):
        return ([B.logsumexp(t, axis=a, keepdims=k) for a, k in cases],
                B.grad(lambda q: B.sum(B.logsumexp(q, axis=1) * u))(t))

    outs, g = _fused(B, run)(xb, wb)
    for (axis, keepdims), out in zip(cases, outs, strict=True):
        _expect(B, out, ssp.logsumexp(x, axis=axis, keepdims=keepdims), rtol=tol,
                what=f"logsumexp(axis={axis}, keepdims={keepdims})")
    _expect(B, B.logsumexp(B.asarray([-np.inf, -np.inf])), -np.inf,
            what="logsumexp of all -inf is -inf")
    _expect_grad(B, g, w[:, None] * ssp.softmax(x, axis=1), table=SPECIAL_RTOL,
                 what="grad of logsumexp (softmax; 0 at -inf)")


@_register("softmax")
def check_softmax(B):
    xb, x = _pair(B, _LSE_X)
    tol = _rtol(B, SPECIAL_RTOL)
    _expect(B, B.softmax(xb), ssp.softmax(x, axis=-1), rtol=tol, atol=1e-300, what="softmax")
    _expect(B, B.softmax(xb[:2], axis=0), ssp.softmax(x[:2], axis=0), rtol=tol,
            what="softmax axis 0")
    _special(B, "softmax", lambda t: ssp.softmax(t, axis=-1),
             (np.array([[0.5, -1.2, 2.0], [0.3, 0.3, -2.0]]),), (0,))


@_register("log_softmax")
def check_log_softmax(B):
    xb, x = _pair(B, _LSE_X)
    tol = _rtol(B, SPECIAL_RTOL)
    _expect(B, B.log_softmax(xb), ssp.log_softmax(x, axis=-1), rtol=tol, what="log_softmax")
    _expect(B, B.log_softmax(xb[:2], axis=0), ssp.log_softmax(x[:2], axis=0), rtol=tol,
            what="log_softmax axis 0")
    _special(B, "log_softmax", lambda t: ssp.log_softmax(t, axis=-1),
             (np.array([[0.5, -1.2, 2.0], [10.0, 10.3, 8.0]]),), (0,))


# ============================================================================================
# autodiff

class _Pair(NamedTuple):
    """A NamedTuple pytree node for the pytree checks."""

    loc: Any
    scale: Any


def _jac_fun(B, x):
    """R^4 -> R^3 test function."""
    return B.stack([x[0] * x[1], B.sin(x[2]) + x[3] * x[3], B.exp(x[0]) * x[3]])


def _jac_closed(x):
    return np.array([[x[1], x[0], 0.0, 0.0],
                     [0.0, 0.0, np.cos(x[2]), 2 * x[3]],
                     [np.exp(x[0]) * x[3], 0.0, 0.0, np.exp(x[0])]])


def _two_arg_fun(B, x, y):
    """(R^2, R^2) -> R^3 test function."""
    return B.stack([x[0] * y[0], B.sin(x[1]) + y[1], x[0] * x[1] * y[0]])


def _two_arg_jac(x, y):
    jx = np.array([[y[0], 0.0], [0.0, np.cos(x[1])], [x[1] * y[0], x[0] * y[0]]])
    jy = np.array([[x[0], 0.0], [0.0, 1.0], [x[0] * x[1], 0.0]])
    return jx, jy


def _check_structure(got, expected_type, what):
    _require(type(got) is expected_type, f"{what}: got a {type(got).__name__}, expected a "
             f"{expected_type.__name__} (the argument's structure)")


@_register("grad")
def check_grad(B):
    xb, x = _pair(B, [0.3, -1.2, 2.0])
    yb, y = _pair(B, [0.5, 1.5, -0.7])
    g = B.grad(lambda t: B.sum(B.sin(t) * t * t))(xb)
    _expect_grad(B, g, np.cos(x) * x * x + 2 * x * np.sin(x), table=GRAD_RTOL, what="grad")
    f2 = lambda a, b: B.sum(a * a * b) + B.sum(B.exp(b))  # noqa: E731
    _expect_grad(B, B.grad(f2, argnums=1)(xb, yb), x * x + np.exp(y), table=GRAD_RTOL,
                 what="grad(argnums=1)")
    gs = B.grad(f2, argnums=(0, 1))(xb, yb)
    _check_structure(gs, tuple, "grad(argnums=(0, 1))")
    _expect_grad(B, gs[0], 2 * x * y, table=GRAD_RTOL, what="grad(argnums=(0, 1))[0]")
    _expect_grad(B, gs[1], x * x + np.exp(y), table=GRAD_RTOL, what="grad(argnums=(0, 1))[1]")
    mb, m = _pair(B, [[0.2, -0.4], [1.1, 0.7]])
    gd = B.grad(lambda p: B.sum(p["a"] * p["a"]) + B.sum(B.sin(p["b"])))({"a": xb, "b": mb})
    _require(isinstance(gd, dict) and set(gd) == {"a", "b"}, f"grad of a dict argument gave {gd}")
    _expect_grad(B, gd["a"], 2 * x, table=GRAD_RTOL, what="grad of dict['a']")
    _expect_grad(B, gd["b"], np.cos(m), table=GRAD_RTOL, what="grad of dict['b']")
    gp = B.grad(lambda p: B.sum(p.loc * p.scale * p.scale))(_Pair(xb, yb))
    _check_structure(gp, _Pair, "grad of a NamedTuple argument")
    _expect_grad(B, gp.loc, y * y, table=GRAD_RTOL, what="grad of NamedTuple.loc")
    _expect_grad(B, gp.scale, 2 * x * y, table=GRAD_RTOL, what="grad of NamedTuple.scale")
    g, aux = B.grad(lambda t: (B.sum(t * t), {"double": 2.0 * t}), has_aux=True)(xb)
    _expect_grad(B, g, 2 * x, table=GRAD_RTOL, what="grad(has_aux=True)")
    _expect(B, aux["double"], 2 * x, what="aux of grad(has_aux=True)")
    _expect_grad(B, B.grad(lambda t: t * t * t)(B.asarray(2.0)), np.float64(12.0),
                 table=GRAD_RTOL, what="grad of a 0-d argument")


@_register("value_and_grad")
def check_value_and_grad(B):
    xb, x = _pair(B, [0.3, -1.2, 2.0])
    yb, y = _pair(B, [0.5, 1.5, -0.7])
    v, g = B.value_and_grad(lambda t: B.sum(B.sin(t) * t * t))(xb)
    _expect(B, v, np.sum(np.sin(x) * x * x), rtol=_rtol(B, GRAD_RTOL), what="value")
    _expect_grad(B, g, np.cos(x) * x * x + 2 * x * np.sin(x), table=GRAD_RTOL, what="gradient")
    v, (gx, gy) = B.value_and_grad(lambda a, b: B.sum(a * b * b), argnums=(0, 1))(xb, yb)
    _expect(B, v, np.sum(x * y * y), rtol=_rtol(B, GRAD_RTOL), what="value (argnums tuple)")
    _expect_grad(B, gx, y * y, table=GRAD_RTOL, what="gradient[0] (argnums tuple)")
    _expect_grad(B, gy, 2 * x * y, table=GRAD_RTOL, what="gradient[1] (argnums tuple)")
    (v, aux), g = B.value_and_grad(lambda p: (B.sum(p.loc * p.scale), p.loc + 1.0),
                                   has_aux=True)(_Pair(xb, yb))
    _expect(B, v, np.sum(x * y), rtol=_rtol(B, GRAD_RTOL), what="value (has_aux)")
    _expect(B, aux, x + 1.0, what="aux (has_aux)")
    _check_structure(g, _Pair, "value_and_grad of a NamedTuple argument")
    _expect_grad(B, g.loc, y, table=GRAD_RTOL, what="gradient .loc (has_aux)")
    _expect_grad(B, g.scale, x, table=GRAD_RTOL, what="gradient .scale (has_aux)")


@_register("vjp")
def check_vjp(B):
    (xb, x), (yb, y) = _pair(B, [0.4, -1.1]), _pair(B, [1.3, 0.6])
    cb, c = _pair(B, [1.0, -2.0, 0.5])
    jx, jy = _two_arg_jac(x, y)
    out, pull = B.vjp(lambda a, b: _two_arg_fun(B, a, b), xb, yb)
    _expect(B, out, [x[0] * y[0], np.sin(x[1]) + y[1], x[0] * x[1] * y[0]], what="vjp output")
    cts = pull(cb)
    _require(isinstance(cts, tuple) and len(cts) == 2, "vjp_fn must return one cotangent per "
             f"primal (a tuple), got {type(cts).__name__}")
    _expect_grad(B, cts[0], c @ jx, table=GRAD_RTOL, what="vjp cotangent[0]")
    _expect_grad(B, cts[1], c @ jy, table=GRAD_RTOL, what="vjp cotangent[1]")
    out, pull, aux = B.vjp(lambda a: (_two_arg_fun(B, a, yb), {"n": B.sum(a)}), xb, has_aux=True)
    _expect(B, aux["n"], np.sum(x), what="vjp aux")
    (ct,) = pull(cb)
    _expect_grad(B, ct, c @ jx, table=GRAD_RTOL, what="vjp cotangent (has_aux)")
    # pytree output and pytree input
    out, pull = B.vjp(lambda p: {"u": p["a"] * p["b"], "v": B.sum(p["a"])}, {"a": xb, "b": yb})
    _expect(B, out["u"], x * y, what="vjp dict output")
    ub, u = _pair(B, [2.0, -1.0])
    (ct,) = pull({"u": ub, "v": B.asarray(3.0)})
    _require(isinstance(ct, dict) and set(ct) == {"a", "b"}, f"vjp cotangent of a dict: {ct}")
    _expect_grad(B, ct["a"], u * y + 3.0, table=GRAD_RTOL, what="vjp dict cotangent['a']")
    _expect_grad(B, ct["b"], u * x, table=GRAD_RTOL, what="vjp dict cotangent['b']")


@_register("jvp")
def check_jvp(B):
    (xb, x), (yb, y) = _pair(B, [0.4, -1.1]), _pair(B, [1.3, 0.6])
    (vxb, vx), (vyb, vy) = _pair(B, [1.0, -0.5]), _pair(B, [0.25, 2.0])
    jx, jy = _two_arg_jac(x, y)
    out, tan = B.jvp(lambda a, b: _two_arg_fun(B, a, b), (xb, yb), (vxb, vyb))
    _expect(B, out, [x[0] * y[0], np.sin(x[1]) + y[1], x[0] * x[1] * y[0]], what="jvp output")
    _expect_grad(B, tan, jx @ vx + jy @ vy, table=GRAD_RTOL, what="jvp tangent")
    zb, z = _pair(B, [0.3, -0.8, 1.2, 0.5])
    wb, w = _pair(B, [1.0, 2.0, -1.0, 0.5])
    out, tan = B.jvp(lambda t: _jac_fun(B, t), (zb,), (wb,))
    _expect_grad(B, tan, _jac_closed(z) @ w, table=GRAD_RTOL, what="jvp of R^4 -> R^3")
    out, tan = B.jvp(lambda t: B.sum(t * t), (zb,), (wb,))
    _expect_grad(B, tan, np.float64(2 * z @ w), table=GRAD_RTOL, what="jvp of a scalar function")


@_register("jacobian")
def check_jacobian(B):
    zb, z = _pair(B, [0.3, -0.8, 1.2, 0.5])
    (xb, x), (yb, y) = _pair(B, [0.4, -1.1]), _pair(B, [1.3, 0.6])
    (mb, _), (cb, c) = _pair(B, [[0.5, -1.0], [2.0, 0.3]]), _pair(B, [1.5, -0.5])
    expected = _jac_closed(z)
    ex, ey = _two_arg_jac(x, y)
    modes, chunks = ("reverse", "forward"), (None, 1, 2, 3)

    def run(zz, xx, yy, mm, cc):
        out = {}
        for mode in modes:
            out[mode] = (
                [B.jacobian(lambda t: _jac_fun(B, t), mode=mode, chunk_size=k)(zz) for k in chunks],
                B.jacobian(lambda a, b: _two_arg_fun(B, a, b), argnums=(0, 1), mode=mode)(xx, yy),
                B.jacobian(lambda t: (_jac_fun(B, t), B.sum(t)), mode=mode, has_aux=True)(zz),
                B.jacobian(lambda t: B.matmul(t, cc), mode=mode, chunk_size=3)(mm))
        return out

    res = _fused(B, run)(zb, xb, yb, mb, cb)
    for mode in modes:
        jacs, (jx, jy), (jac, aux), jm = res[mode]
        for chunk, jac_k in zip(chunks, jacs, strict=True):
            _expect_grad(B, jac_k, expected, table=GRAD_RTOL,
                         what=f"jacobian(mode={mode!r}, chunk_size={chunk}) of R^4 -> R^3")
        _expect_grad(B, jx, ex, table=GRAD_RTOL, what=f"jacobian(argnums=(0, 1), {mode})[0]")
        _expect_grad(B, jy, ey, table=GRAD_RTOL, what=f"jacobian(argnums=(0, 1), {mode})[1]")
        _expect_grad(B, jac, expected, table=GRAD_RTOL, what=f"jacobian(has_aux, {mode})")
        _expect(B, aux, np.sum(z), rtol=_rtol(B, GRAD_RTOL), what=f"jacobian aux ({mode})")
        _expect_grad(B, jm, np.einsum("ij,k->ijk", np.eye(2), c), table=GRAD_RTOL,
                     what=f"jacobian of a matrix argument ({mode}): out_shape + in_shape")
    # and once eagerly, where the chunks are computed one by one
    jac = B.jacobian(lambda t: _jac_fun(B, t), mode="forward", chunk_size=3)(zb)
    _expect_grad(B, jac, expected, table=GRAD_RTOL, what="jacobian(forward, chunk_size=3) eager")
    for bad in ({"mode": "sideways"}, {"chunk_size": 0}):
        try:
            B.jacobian(lambda t: _jac_fun(B, t), **bad)(zb)
        except ValueError:
            continue
        raise AssertionError(f"jacobian({bad}) must raise ValueError")


@_register("hessian")
def check_hessian(B):
    xb, x = _pair(B, [0.7, -1.3, 0.4])
    h = B.hessian(lambda t: B.sum(t * t * t) + t[0] * t[1] * t[2])(xb)
    expected = np.diag(6 * x) + np.array([[0, x[2], x[1]], [x[2], 0, x[0]], [x[1], x[0], 0]])
    _expect_grad(B, h, expected, table=GRAD_RTOL, what="hessian")
    yb, y = _pair(B, [0.5, 2.0, -1.0])
    h1 = B.hessian(lambda a, b: B.sum(a * b * b * b), argnums=1)(xb, yb)
    _expect_grad(B, h1, np.diag(6 * x * y), table=GRAD_RTOL, what="hessian(argnums=1)")


@_register("hvp")
def check_hvp(B):
    (xb, x), (yb, y) = _pair(B, [0.7, -1.3, 0.4]), _pair(B, [0.5, 2.0, -1.0])
    (vxb, vx), (vyb, vy) = _pair(B, [1.0, 0.5, -2.0]), _pair(B, [0.3, -1.0, 1.5])
    out = B.hvp(lambda a, b: B.sum(a * a * b) + B.sum(b * b * b), (xb, yb), (vxb, vyb))
    _require(isinstance(out, tuple) and len(out) == 2, "hvp must return one array per argument")
    _expect_grad(B, out[0], 2 * y * vx + 2 * x * vy, table=GRAD_RTOL, what="hvp[0]")
    _expect_grad(B, out[1], 2 * x * vx + 6 * y * vy, table=GRAD_RTOL, what="hvp[1]")


@_register("stop_gradient")
def check_stop_gradient(B):
    xb, x = _pair(B, [0.3, -1.2, 2.0])
    _expect(B, B.stop_gradient(xb), x, what="stop_gradient value")
    g = B.grad(lambda t: B.sum(B.stop_gradient(t) * t))(xb)
    _expect_grad(B, g, x, table=GRAD_RTOL, what="grad of sum(stop_gradient(x) * x)")
    g = B.grad(lambda t: B.sum(B.stop_gradient(t * t)) + B.sum(t))(xb)
    _expect_grad(B, g, np.ones(3), table=GRAD_RTOL, what="no gradient through stop_gradient")


@_register("custom_vjp")
def check_custom_vjp(B):
    # a deliberately "wrong" backward pass (3x instead of 2x) shows that it is the one used
    sq = B.custom_vjp(lambda t: t * t, lambda t: (t * t, (t,)), lambda res, g: (3.0 * g * res[0],))
    xb, x = _pair(B, [0.3, -1.2, 2.0])
    _expect(B, sq(xb), x * x, what="custom_vjp value")
    _expect_grad(B, B.grad(lambda t: B.sum(sq(t)))(xb), 3 * x, table=GRAD_RTOL,
                 what="grad through custom_vjp uses bwd")
    _expect_grad(B, B.grad(lambda t: B.sum(B.sin(sq(t))))(xb), np.cos(x * x) * 3 * x,
                 table=GRAD_RTOL, what="grad through custom_vjp inside a chain")
    mul = B.custom_vjp(lambda a, b: a * b, lambda a, b: (a * b, (a, b)),
                       lambda res, g: (2.0 * g * res[1], 5.0 * g * res[0]))
    yb, y = _pair(B, [0.5, 1.5, -0.7])
    v, (ga, gb) = B.value_and_grad(lambda a, b: B.sum(mul(a, b)), argnums=(0, 1))(xb, yb)
    _expect(B, v, np.sum(x * y), rtol=_rtol(B, GRAD_RTOL), what="two-argument custom_vjp value")
    _expect_grad(B, ga, 2 * y, table=GRAD_RTOL, what="two-argument custom_vjp grad[0]")
    _expect_grad(B, gb, 5 * x, table=GRAD_RTOL, what="two-argument custom_vjp grad[1]")
    mb, m = _pair(B, np.arange(12.0).reshape(4, 3) / 5 - 1)
    per_row = B.vmap(B.grad(lambda t: B.sum(sq(t))))(mb)
    _expect_grad(B, per_row, 3 * m, table=GRAD_RTOL, what="vmap of grad through custom_vjp")
    if B.has_jit:
        jg = B.jit(B.grad(lambda t: B.sum(sq(t))))
        _expect_grad(B, jg(xb), 3 * x, table=GRAD_RTOL, what="jit of grad through custom_vjp")


# ============================================================================================
# control flow (each also traced under jit where the backend compiles)

@_register("cond")
def check_cond(B):
    (xb, x), (yb, y) = _pair(B, [1.0, 2.0]), _pair(B, [0.5, -1.0])
    tf, ff = (lambda a, b: a + b), (lambda a, b: a - b)
    for pred, truth in ((True, True), (False, False), (B.asarray(True), True),
                        (B.asarray(False), False), (B.sum(xb) > 0, True)):
        _expect(B, B.cond(pred, tf, ff, xb, yb), x + y if truth else x - y,
                what=f"cond(pred={truth})")
    out = B.cond(B.asarray(False), lambda a: {"s": B.sum(a), "d": 2.0 * a},
                 lambda a: {"s": B.sum(a) * 0.0, "d": a}, xb)
    _expect(B, out["s"], 0.0, what="cond pytree output['s']")
    _expect(B, out["d"], x, what="cond pytree output['d']")
    g = B.grad(lambda a: B.sum(B.cond(B.sum(a) > 0, B.sin, B.cos, a)))(xb)
    _expect_grad(B, g, np.cos(x), table=GRAD_RTOL, what="grad through cond")
    jf = _jitted(B, lambda a, b: B.cond(B.sum(a) > B.sum(b), tf, ff, a, b))
    if jf is not None:
        _expect(B, jf(xb, yb), x + y, what="cond under jit (traced pred, true)")
        _expect(B, jf(yb, xb), y - x, what="cond under jit (traced pred, false)")


@_register("switch")
def check_switch(B):
    xb, x = _pair(B, [1.5, -2.0])
    branches = [lambda a: a + 1.0, lambda a: a * 2.0, lambda a: -a]
    results = [x + 1.0, x * 2.0, -x]
    for idx, which in ((0, 0), (1, 1), (2, 2), (-1, 0), (7, 2)):
        _expect(B, B.switch(idx, branches, xb), results[which], what=f"switch(index={idx})")
        _expect(B, B.switch(_ints(B, idx), branches, xb), results[which],
                what=f"switch(index=array({idx})) (clamped to {which})")
    jf = _jitted(B, lambda i, a: B.switch(i, branches, a))
    if jf is not None:
        for idx, which in ((1, 1), (-3, 0), (9, 2)):
            _expect(B, jf(_ints(B, idx), xb), results[which],
                    what=f"switch under jit (traced index {idx}, clamped to {which})")


def _while_parts(B):
    return (lambda s: s[0] < 5), (lambda s: (s[0] + 1, s[1] * 2.0))


@_register("while_loop")
def check_while_loop(B):
    xb, x = _pair(B, [0.5, -1.5])
    cond, body = _while_parts(B)
    i, v = B.while_loop(cond, body, (B.asarray(0), xb))
    _expect(B, i, 5, kind="int", what="while_loop counter")
    _expect(B, v, x * 32.0, what="while_loop value")
    i, v = B.while_loop(cond, body, (B.asarray(7), xb))
    _expect(B, v, x, what="while_loop with no iteration")
    out = B.while_loop(lambda s: B.sum(B.abs(s["v"])) < 100.0,
                       lambda s: {"v": s["v"] * 3.0, "n": s["n"] + 1}, {"v": xb, "n": B.asarray(0)})
    _expect(B, out["n"], 4, kind="int", what="while_loop with a dict state (data-dependent)")
    _expect(B, out["v"], x * 81.0, what="while_loop dict state value")
    jf = _jitted(B, lambda a: B.while_loop(cond, body, (B.asarray(0), a)))
    if jf is not None:
        i, v = jf(xb)
        _expect(B, i, 5, kind="int", what="while_loop under jit counter")
        _expect(B, v, x * 32.0, what="while_loop under jit value")


@_register("fori_loop")
def check_fori_loop(B):
    xb, x = _pair(B, [0.5, -1.5])
    tb, t = _pair(B, np.arange(14.0).reshape(7, 2) / 3.0)
    out = B.fori_loop(2, 6, lambda i, v: v + i * xb, B.zeros_like(xb))
    _expect(B, out, 14.0 * x, what="fori_loop(2, 6) using the loop index as a number")
    out = B.fori_loop(1, 4, lambda i, v: v + B.dynamic_index(tb, i), B.zeros_like(xb))
    _expect(B, out, t[1:4].sum(0), what="fori_loop using the loop index to index")
    _expect(B, B.fori_loop(3, 3, lambda i, v: v + 1.0, xb), x, what="fori_loop with no iteration")
    g = B.grad(lambda a: B.sum(B.fori_loop(0, 3, lambda i, v: v * a, B.ones_like(a))))(xb)
    _expect_grad(B, g, 3 * x * x, table=GRAD_RTOL, what="grad through fori_loop")
    jf = _jitted(B, lambda a, tab: B.fori_loop(
        1, 4, lambda i, v: v + B.dynamic_index(tab, i) * a, B.zeros_like(a)))
    if jf is not None:
        _expect(B, jf(xb, tb), t[1:4].sum(0) * x, what="fori_loop under jit")


def _scan_body(B):
    def f(c, x):
        return c + x["a"], (c, x["b"] * c)
    return f


def _scan_oracle(c, a, b, reverse=False):
    n = len(a)
    ys0, ys1 = np.zeros(n), np.zeros_like(b)
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        ys0[i], ys1[i] = c, b[i] * c
        c = c + a[i]
    return c, ys0, ys1


@_register("scan")
def check_scan(B):
    ab, a = _pair(B, [0.5, -1.0, 2.0, 0.25, 1.5])
    bb, b = _pair(B, np.arange(10.0).reshape(5, 2))
    cb, c = _pair(B, 0.75)
    f = _scan_body(B)
    for reverse in (False, True):
        carry, (y0, y1) = B.scan(f, cb, {"a": ab, "b": bb}, reverse=reverse)
        ec, e0, e1 = _scan_oracle(c, a, b, reverse)
        _expect(B, carry, ec, what=f"scan carry (reverse={reverse})")
        _expect(B, y0, e0, what=f"scan ys[0] (reverse={reverse})")
        _expect(B, y1, e1, what=f"scan ys[1] (reverse={reverse})")
    carry, ys = B.scan(lambda s, _: (s * 2.0, s), cb, None, length=4)
    _expect(B, carry, c * 16.0, what="scan(xs=None, length=4) carry")
    _expect(B, ys, c * np.array([1.0, 2.0, 4.0, 8.0]), what="scan(xs=None, length=4) ys")
    g = B.grad(lambda s: B.scan(lambda k, x: (k * x, k), s, ab)[0])(cb)
    _expect_grad(B, g, np.prod(a), table=GRAD_RTOL, what="grad through scan")
    jf = _jitted(B, lambda s, xs: B.scan(f, s, xs, reverse=True))
    if jf is not None:
        carry, (y0, y1) = jf(cb, {"a": ab, "b": bb})
        ec, e0, e1 = _scan_oracle(c, a, b, True)
        _expect(B, carry, ec, what="scan under jit carry")
        _expect(B, y1, e1, what="scan under jit ys")


@_register("map")
def check_map(B):
    (ab, a), (bb, b) = _pair(B, [0.5, -1.0, 2.0]), _pair(B, np.arange(6.0).reshape(3, 2))
    fn = lambda x: x["a"] * 2.0 + B.sum(x["b"])  # noqa: E731
    _expect(B, B.map(fn, {"a": ab, "b": bb}), a * 2 + b.sum(1), what="map over a dict")
    out = B.map(lambda x: (x, x * x), ab)
    _expect(B, out[1], a * a, what="map with a tuple output")
    jf = _jitted(B, lambda xs: B.map(fn, xs))
    if jf is not None:
        _expect(B, jf({"a": ab, "b": bb}), a * 2 + b.sum(1), what="map under jit")


# ============================================================================================
# transforms

@_register("jit")
def check_jit(B):
    (xb, x), (yb, y) = _pair(B, [0.3, -1.2, 2.0]), _pair(B, [0.5, 1.5, -0.7])
    jf = B.jit(lambda a, b: B.sin(a) * b + 1.0)
    for _ in range(2):
        _expect(B, jf(xb, yb), np.sin(x) * y + 1.0, rtol=2 * _rtol(B, VALUE_RTOL),
                what="jit values")
    mb, m = _pair(B, np.arange(6.0))
    jr = B.jit(lambda a, n: B.sum(B.reshape(a, (n, -1)), axis=1), static_argnums=(1,))
    _expect(B, jr(mb, 2), m.reshape(2, -1).sum(1), what="jit(static_argnums=(1,))")
    _expect(B, jr(mb, 3), m.reshape(3, -1).sum(1), what="jit(static_argnums=(1,)), new static")
    jn = B.jit(lambda a, n=1: B.sum(B.reshape(a, (n, -1)), axis=1), static_argnames=("n",))
    _expect(B, jn(mb, n=3), m.reshape(3, -1).sum(1), what="jit(static_argnames=('n',))")
    jt = B.jit(lambda p: {"s": p.loc + p.scale, "d": p.loc * 2.0})
    out = jt(_Pair(xb, yb))
    _expect(B, out["s"], x + y, what="jit with pytree input and output")


@_register("compile_pure")
def check_compile_pure(B):
    (xb, x), (yb, y) = _pair(B, [0.3, -1.2, 2.0]), _pair(B, [0.5, 1.5, -0.7])

    def density(a, data):   # a value and gradient with the data as an input, as samplers use
        return B.sum(B.log1p(B.exp(a * data["y"])) - 0.5 * a * a * data["s"])

    vg = B.compile_pure(B.value_and_grad(density))
    for scale in (1.0, 2.0, 1.0):   # new data of the same shape must not reuse frozen values
        v, g = vg(xb, {"y": yb, "s": B.asarray(scale)})
        _expect(B, v, np.sum(np.log1p(np.exp(x * y)) - 0.5 * scale * x * x),
                rtol=4 * _rtol(B, VALUE_RTOL), what="compile_pure value")
        _expect_grad(B, g, y / (1 + np.exp(-x * y)) - scale * x, table=GRAD_RTOL,
                     what="compile_pure gradient")
    jr = B.compile_pure(lambda a, n: B.sum(B.reshape(a, (n, -1)), axis=1))
    mb, m = _pair(B, np.arange(6.0))
    _expect(B, jr(mb, 2), m.reshape(2, -1).sum(1), what="compile_pure, a static int")
    if not B.compiles_control_flow:   # eager frameworks run untraceable functions as they are
        branchy = B.compile_pure(lambda a: a * 2.0 if float(B.sum(a)) > 0 else a * -3.0)
        _expect(B, branchy(xb), x * 2.0, what="compile_pure with Python control flow")
        _expect(B, branchy(-xb), x * 3.0, what="compile_pure with Python control flow, other "
                "branch")
        k = B.key(0)
        drawn = B.compile_pure(lambda a: a + B.normal(k, (3,)))
        _expect(B, drawn(xb) - drawn(xb), np.zeros(3), what="compile_pure with a random draw")


@_register("host_function")
def check_host_function(B):
    (_, x), (yb, y) = _pair(B, [0.3, -1.2, 2.0]), _pair(B, [0.5, 1.5, -0.7])

    def density(a, data, scale):
        return B.sum(B.log1p(B.exp(a * data["y"])) - 0.5 * scale * a * a)

    host_x = x.astype(B.precision)
    read_only = host_x.copy()
    read_only.flags.writeable = False
    points = (host_x, -host_x, read_only, 0.5 * host_x)
    # made before the first call (torch: eager, then traced, then the graph run directly)
    fresh = B.host_function(B.compile_pure(B.value_and_grad(density)), host_x, {"y": yb}, 2.0)
    vg = B.compile_pure(B.value_and_grad(density))
    for _ in range(2):
        vg(B.asarray(host_x), {"y": yb}, 2.0)
    warm = B.host_function(vg, host_x, {"y": yb}, 2.0)   # made after the trace
    for call, point in [(fresh, p) for p in points] + [(warm, p) for p in points]:
        p = point.astype(np.float64)
        leaves = call(point)
        _require(len(leaves) == 2 and all(isinstance(leaf, (np.ndarray, np.generic))
                                          for leaf in leaves),
                 f"host_function must return a list of NumPy leaves, got {leaves!r}")
        value, grad = leaves
        _require(np.shape(value) == () and np.shape(grad) == (3,),
                 f"host_function leaves of shapes () and (3,), got {np.shape(value)}, "
                 f"{np.shape(grad)}")
        want = np.sum(np.log1p(np.exp(p * y)) - p * p)
        _require(np.allclose(float(value), want, rtol=4 * _rtol(B, VALUE_RTOL), atol=0),
                 f"host_function value {float(value)!r}, expected {want!r}")
        want = y / (1 + np.exp(-p * y)) - 2.0 * p
        _require(np.allclose(np.asarray(grad, np.float64), want,
                             rtol=4 * _rtol(B, GRAD_RTOL), atol=0),
                 f"host_function gradient {grad!r}, expected {want!r}")
    plain = B.host_function(lambda a: (a * 2.0, B.sum(a)), host_x)   # not compiled, no args
    twice, total = plain(host_x)
    _require(np.allclose(np.asarray(twice, np.float64), 2 * x) and np.isclose(float(total),
                                                                              x.sum()),
             "host_function of a plain function")


@_register("vmap")
def check_vmap(B):
    rng = _rng(30)
    (mb, m), (wb, w) = _pair(B, rng.normal(size=(5, 3))), _pair(B, rng.normal(size=(3,)))
    f = lambda a, b: B.sum(a * b)  # noqa: E731
    _expect(B, B.vmap(f, in_axes=(0, None))(mb, wb), m @ w, rtol=4 * _rtol(B, VALUE_RTOL),
            what="vmap(in_axes=(0, None))")
    _expect(B, B.vmap(f, in_axes=(1, None))(B.matrix_transpose(mb), wb), m @ w,
            rtol=4 * _rtol(B, VALUE_RTOL), what="vmap(in_axes=(1, None))")
    _expect(B, B.vmap(f)(mb, mb), (m * m).sum(1), rtol=4 * _rtol(B, VALUE_RTOL),
            what="vmap(in_axes=0)")
    out = B.vmap(lambda a: a * 2.0 + wb, out_axes=1)(mb)
    _expect(B, out, (m * 2 + w).T, what="vmap(out_axes=1)")
    vb, v = _pair(B, rng.normal(size=(5,)))
    out = B.vmap(lambda d: (B.sum(d["a"]) * d["b"], d["a"] * d["b"]))({"a": mb, "b": vb})
    _expect(B, out[0], m.sum(1) * v, rtol=4 * _rtol(B, VALUE_RTOL),
            what="vmap over a dict argument, output[0]")
    _expect(B, out[1], m * v[:, None], what="vmap over a dict argument, output[1]")
    g = B.vmap(B.grad(lambda a: B.sum(B.sin(a) * wb)))(mb)
    _expect_grad(B, g, np.cos(m) * w, table=GRAD_RTOL, what="vmap of grad (per-row gradients)")


@_register("pure_callback")
def check_pure_callback(B):
    xb, x = _pair(B, [0.5, 1.5, 4.0])
    seen = []

    def host(a):
        seen.append(type(a))
        return ssp.gammaln(np.asarray(a, np.float64))

    out = B.pure_callback(host, ((3,), B.precision), xb)
    _expect(B, out, ssp.gammaln(x), rtol=_rtol(B, SPECIAL_RTOL), what="pure_callback")
    _require(all(issubclass(t, np.ndarray) for t in seen),
             f"pure_callback must pass NumPy arrays to the host function, got {seen}")

    def two(a):
        return np.sort(a), np.int32(np.argmax(a))

    s, i = B.pure_callback(two, (((3,), B.precision), ((), "int32")), -xb)
    _expect(B, s, np.sort(-x), what="pure_callback pytree result[0]")
    _expect(B, i, 0, kind="int32", what="pure_callback pytree result[1] (int32)")
    jf = _jitted(B, lambda a: B.pure_callback(host, ((3,), B.precision), a * 2.0) + 1.0)
    if jf is not None:
        _expect(B, jf(xb), ssp.gammaln(2 * x) + 1.0, rtol=_rtol(B, SPECIAL_RTOL),
                what="pure_callback under jit")


# ============================================================================================
# pytrees

def _sample_tree(B):
    a0, a1, b0 = B.asarray([1.0, 2.0]), B.asarray(3.0), B.asarray([[4.0]])
    loc, scale = B.asarray([5.0]), B.asarray([6.0, 7.0])
    tree = {"b": (b0, None, _Pair(loc, scale)), "a": [a0, a1]}
    return tree, [a0, a1, b0, loc, scale]


def _same_tree(B, got, want, what):
    _require(type(got) is type(want), f"{what}: {type(got).__name__} != {type(want).__name__}")
    if want is None:
        return
    if isinstance(want, dict):
        _require(set(got) == set(want), f"{what}: keys {set(got)} != {set(want)}")
        for k in want:
            _same_tree(B, got[k], want[k], f"{what}[{k!r}]")
    elif isinstance(want, (tuple, list)):
        _require(len(got) == len(want), f"{what}: length {len(got)} != {len(want)}")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_tree(B, g, w, f"{what}[{i}]")
    else:
        np.testing.assert_array_equal(B.to_numpy(got), B.to_numpy(want), err_msg=what)


@_register("tree_flatten")
def check_tree_flatten(B):
    tree, order = _sample_tree(B)
    leaves, treedef = B.tree_flatten(tree)
    _require(len(leaves) == len(order) and all(a is b for a, b in zip(leaves, order, strict=True)),
             "tree_flatten: leaves must be the arrays in key-sorted, depth-first order with None "
             f"dropped; got {[B.to_numpy(x).tolist() for x in leaves]}")
    leaves, _ = B.tree_flatten(_Pair(B.asarray(1.0), None))
    _require(len(leaves) == 1, "tree_flatten: None must be an empty subtree, not a leaf")


@_register("tree_unflatten")
def check_tree_unflatten(B):
    tree, _ = _sample_tree(B)
    leaves, treedef = B.tree_flatten(tree)
    _same_tree(B, B.tree_unflatten(treedef, leaves), tree, "tree_unflatten(tree_flatten(t))")
    doubled = B.tree_unflatten(treedef, [2.0 * x for x in leaves])
    _expect(B, doubled["b"][2].scale, [12.0, 14.0], what="tree_unflatten with new leaves")
    _require(doubled["b"][1] is None, "tree_unflatten must restore None")


@_register("tree_map")
def check_tree_map(B):
    tree, _ = _sample_tree(B)
    out = B.tree_map(lambda a, b: a + 2.0 * b, tree, tree)
    _expect(B, out["a"][0], [3.0, 6.0], what="tree_map over two trees")
    _expect(B, out["b"][2].loc, [15.0], what="tree_map keeps NamedTuples")
    _require(isinstance(out["b"][2], _Pair) and out["b"][1] is None and isinstance(out["a"], list),
             "tree_map must keep the structure (NamedTuple, None, list)")


@_register("tree_leaves")
def check_tree_leaves(B):
    tree, order = _sample_tree(B)
    leaves = B.tree_leaves(tree)
    _require(len(leaves) == len(order) and all(a is b for a, b in zip(leaves, order, strict=True)),
             "tree_leaves must list the leaves in key-sorted, depth-first order")
    _require(B.tree_leaves(None) == [], "tree_leaves(None) must be empty")


@_register("tree_structure")
def check_tree_structure(B):
    tree, _ = _sample_tree(B)
    other = B.tree_map(lambda a: a * 0.0, tree)
    _require(B.tree_structure(tree) == B.tree_structure(other),
             "tree_structure of two trees of one structure differ")
    _require(B.tree_structure(tree) != B.tree_structure({"a": tree["a"]}),
             "tree_structure of different structures compare equal")
    rebuilt = B.tree_unflatten(B.tree_structure(tree), B.tree_leaves(other))
    _same_tree(B, rebuilt, other, "tree_unflatten(tree_structure(t), leaves)")


@_register("ravel_pytree")
def check_ravel_pytree(B):
    (wb, w), (bb, b) = _pair(B, np.arange(6.0).reshape(2, 3)), _pair(B, [-1.0, -2.0, -3.0])
    sb = B.asarray(0.5)
    tree = {"w": wb, "b": bb, "p": _Pair(sb, bb)}
    flat, unravel = B.ravel_pytree(tree)
    expected = np.concatenate([b, [0.5], b, w.ravel()])  # keys sorted: "b", "p", "w"
    _expect(B, flat, expected, what="ravel_pytree order (key-sorted, raveled in C order)")
    back = unravel(flat)
    _same_tree(B, back, tree, "unravel(ravel_pytree(t))")
    _expect(B, back["p"].loc, 0.5, what="unravel restores 0-d leaves")
    back2 = unravel(2.0 * flat)
    _expect(B, back2["w"], 2 * w, what="unravel of a new vector")
    g = B.grad(lambda v: B.sum(unravel(v)["w"] * unravel(v)["p"].loc))(flat)
    _expect_grad(B, g, np.concatenate([np.zeros(3), [w.sum()], np.zeros(3), 0.5 * np.ones(6)]),
                 table=GRAD_RTOL, what="grad through unravel")


# --------------------------------------------------------------------------------------------
# Order CHECKS as the contract lists its names (then anything registered beyond it).
_ORDER = [n for group in CONTRACT.values() for n in group]
CHECKS = {**{n: CHECKS[n] for n in _ORDER if n in CHECKS},
          **{n: fns for n, fns in CHECKS.items() if n not in _ORDER}}
del _name
