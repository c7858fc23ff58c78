"""Helpers for cross-backend agreement tests: run one computation on every installed backend, fed
identical noise, and compare each result to the NumPy oracle.

>>> import numpy as np
>>> from agvi.testing.agreement import run_on_all, assert_agree
>>> results = run_on_all(lambda B, x: B.exp(x), np.array([0.0, 1.0]), backends=["numpy"])
>>> assert_agree(results)
{}

In float64 every backend should agree with NumPy to round-off: :data:`AGREEMENT_RTOL`
(``1e-10``, DESIGN.md section 8) is the default tolerance; integer and boolean results (discrete
outcomes such as accept decisions, tree depths and argmaxes) must be equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import optree

from ..backends import available_backends, make_backend, use_backend
from ..backends.base import Backend, framework_of
from .shared_noise import SharedNoise

__all__ = ["AGREEMENT_ATOL", "AGREEMENT_RTOL", "AgreementError", "assert_agree",
           "installed_backends", "max_relative_error", "run_on_all", "to_host"]

#: Default relative tolerance of agreement with the NumPy oracle in float64.
AGREEMENT_RTOL = 1e-10
#: Default absolute tolerance (for entries that are zero up to round-off).
AGREEMENT_ATOL = 1e-12
#: Name of the reference backend.
REFERENCE = "numpy"


class AgreementError(AssertionError):
    """A backend's result differs from the reference beyond the tolerance.

    Attributes
    ----------
    errors : dict
        Backend name -> the maximum relative error observed (as :func:`assert_agree` returns),
        so that a caller can still record the measurement of a failing comparison.
    """

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.errors = dict(errors or {})


def installed_backends(precision: str = "float64", device: str | None = None,
                       names=None) -> list[Backend]:
    """Backend objects for every installed framework, the NumPy backend first.

    Parameters
    ----------
    precision : {"float32", "float64"}
        Precision of every backend (``"float64"`` turns on JAX's x64 flag process-wide).
    device : str or None
        Device of the torch and JAX backends (the NumPy backend always runs on the CPU).
    names : sequence of str or None
        Restrict to these backend names (default: :func:`agvi.backends.available_backends`).

    Returns
    -------
    list of Backend
        Plain backends (wrap them with :func:`~agvi.testing.shared_noise.SharedNoise` to share
        noise).

    Raises
    ------
    ImportError
        If a named backend's framework is not installed.
    ValueError
        If a name is unknown or a device is missing.
    """
    names = list(available_backends() if names is None else names)
    names.sort(key=lambda n: n != REFERENCE)  # stable: NumPy first, the others in order
    return [make_backend(n, precision=precision,
                         device=None if n == REFERENCE else device) for n in names]


def to_host(tree, backend: Backend | None = None):
    """Every array leaf of ``tree`` as a NumPy array (Python scalars too).

    Parameters
    ----------
    tree : pytree of Arrays of one backend (torch tensors, JAX arrays, NumPy arrays) or scalars
    backend : Backend or None
        Converts the leaves (its :meth:`~agvi.backends.base.Backend.to_numpy` detaches from
        autograd and moves to the host); default: a backend of the leaf's framework.
    """
    def conv(leaf):
        if isinstance(leaf, (np.ndarray, np.generic)):
            return np.asarray(leaf)
        fw = framework_of(leaf)
        if fw is None:  # Python scalars, lists
            return np.asarray(leaf)
        if backend is not None and fw == backend.name:
            return np.asarray(backend.to_numpy(leaf))
        return np.asarray(make_backend(fw).to_numpy(leaf))

    return optree.tree_map(conv, tree, none_is_leaf=False)


def run_on_all(fn: Callable, *args, backends=None, precision: str = "float64",
               device: str | None = None, shared_noise: bool = True) -> dict:
    """Run ``fn(B, *args)`` on every backend under ``use_backend(SharedNoise(B))``.

    Parameters
    ----------
    fn : callable
        ``fn(B, *args) -> pytree of Arrays``; ``B`` is the (shared-noise) backend, also active
        through :func:`agvi.get_backend` during the call.
    *args : pytrees of NumPy arrays or Python scalars
        Converted leaf by leaf with ``B.asarray`` before the call (floating leaves become
        ``B.float_dtype``), so each backend gets its own arrays.
    backends : sequence of Backend or str, or None
        Default :func:`installed_backends` ``(precision, device)``.
    precision, device : as :func:`installed_backends`
    shared_noise : bool
        Wrap each backend with :func:`~agvi.testing.shared_noise.SharedNoise` (default). With
        ``False`` each backend draws with its own generator.

    Returns
    -------
    dict
        Backend name -> the result with every leaf converted to a NumPy array (so it can be
        compared with :func:`assert_agree`), in the order of ``backends``.
    """
    if backends is None:
        backends = installed_backends(precision, device)
    out = {}
    for b in backends:
        if isinstance(b, str):
            b = make_backend(b, precision=precision,
                             device=None if b == REFERENCE else device)
        B = SharedNoise(b) if shared_noise else b
        with use_backend(B):
            conv = [optree.tree_map(B.asarray, a, none_is_leaf=False) for a in args]
            res = fn(B, *conv)
            out[b.name] = to_host(res, B)
    return out


def _path_str(path) -> str:
    return "".join(f"[{p!r}]" for p in path) or "<root>"


def max_relative_error(actual, reference, atol: float = AGREEMENT_ATOL,
                       rtol: float = AGREEMENT_RTOL) -> float:
    """Largest ``|a - r| / max(|r|, atol / rtol)`` over the entries of two float arrays.

    The check ``|a - r| <= atol + rtol |r|`` passes exactly when this is at most ``rtol``
    (up to a factor of 2); entries where both are NaN, or equal infinities, count as equal.

    Parameters
    ----------
    actual, reference : array_like of one shape

    Returns
    -------
    float
        ``inf`` when a NaN or infinity is not matched.
    """
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.size == 0:
        return 0.0
    same = (a == r) | (np.isnan(a) & np.isnan(r))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - r) / np.maximum(np.abs(r), atol / rtol)
    err = np.where(same, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    return float(np.max(err))


def assert_agree(results_by_backend: Mapping, rtol: float = AGREEMENT_RTOL,
                 atol: float = AGREEMENT_ATOL, reference: str = REFERENCE,
                 what: str = "") -> dict:
    """Assert that every backend's result equals the reference backend's to ``rtol``/``atol``.

    Parameters
    ----------
    results_by_backend : mapping
        Backend name (or Backend object) -> pytree of arrays, as :func:`run_on_all` returns.
        Leaves are converted with the backend's ``to_numpy``. Must hold the reference.
    rtol, atol : float
        Floating leaves must satisfy ``|x - ref| <= atol + rtol |ref|`` elementwise; integer and
        boolean leaves must be equal; shapes must be equal (dtypes may differ: JAX without x64
        gives int32 where NumPy gives int64).
    reference : str
        Name of the reference backend (default ``"numpy"``).
    what : str
        Label used in the failure message.

    Returns
    -------
    dict
        Backend name -> the maximum relative error observed over all floating leaves (see
        :func:`max_relative_error`), the reference excluded.

    Raises
    ------
    AgreementError
        Naming the backend, the leaf path, the shapes or the maximum relative and absolute error
        and where it occurs.
    KeyError
        If the reference backend's result is missing.
    """
    by_name = {}
    for k, v in results_by_backend.items():
        if isinstance(k, Backend):
            by_name[k.name] = to_host(v, k)
        else:
            by_name[str(k)] = to_host(v)
    if reference not in by_name:
        raise KeyError(f"results_by_backend has no result for the reference backend "
                       f"{reference!r}; got {list(by_name)}")
    ref_paths, ref_leaves, ref_def = optree.tree_flatten_with_path(by_name[reference],
                                                                   none_is_leaf=False)
    label = f" [{what}]" if what else ""
    errors, failures = {}, []
    for name, res in by_name.items():
        if name == reference:
            continue
        paths, leaves, treedef = optree.tree_flatten_with_path(res, none_is_leaf=False)
        if paths != ref_paths:
            raise AgreementError(
                f"{name} vs {reference}{label}: result structures differ:\n  {name}: {treedef}\n"
                f"  {reference}: {ref_def}", errors)
        worst = 0.0
        for path, x, r in zip(paths, leaves, ref_leaves, strict=True):
            x, r = np.asarray(x), np.asarray(r)
            where = f"{name} vs {reference}{label}, leaf {_path_str(path)}"
            if x.shape != r.shape:
                failures.append(f"{where}: shape {x.shape} != {r.shape}")
                continue
            if r.dtype.kind in "biu" or x.dtype.kind in "biu":
                if not np.array_equal(x, r):
                    bad = np.argwhere(x != r)
                    first = tuple(int(j) for j in bad[0]) if r.ndim else ()
                    failures.append(
                        f"{where}: discrete values differ at {len(bad) if r.ndim else 1} of "
                        f"{r.size} entries, first at index {first}: {x[first]!r} != {r[first]!r}")
                continue
            err = max_relative_error(x, r, atol=atol, rtol=rtol)
            worst = max(worst, err)
            if not np.allclose(x, r, rtol=rtol, atol=atol, equal_nan=True):
                diff = np.abs(x.astype(np.float64) - r.astype(np.float64))
                diff = np.where(np.isnan(diff), np.inf, diff)
                i = np.unravel_index(int(np.argmax(diff)), diff.shape) if r.ndim else ()
                i = tuple(int(j) for j in i)
                failures.append(
                    f"{where}: max relative error {err:.3g} > rtol {rtol:g} (atol {atol:g}); "
                    f"max abs error {float(np.max(diff)):.3g} at index {i} "
                    f"({x[i]!r} vs {r[i]!r})")
        errors[name] = worst
    if failures:
        raise AgreementError("\n".join(failures), errors)
    return errors
