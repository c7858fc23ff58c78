"""Fixtures for the cross-backend agreement tests.

Every test compares one backend (the ``other`` fixture: each installed backend but NumPy) with
the NumPy oracle, both in float64 and fed shared noise. The largest relative error seen per
backend is printed at the end of the session ("measured agreement tolerances") and, when the
environment variable ``AGVI_AGREEMENT_REPORT`` names a file, written there as JSON.

Environment (as tests/conftest.py, so that the nox sessions drive both):

- ``AGVI_AGREEMENT_BACKENDS``, else ``AGVI_TEST_BACKENDS``: comma-separated backend names to
  compare with NumPy (default: every installed one); a listed backend that is not installed is
  skipped with a reason.
- ``AGVI_AGREEMENT_DEVICE``, else ``AGVI_TEST_DEVICE``: the device of the compared backends (e.g.
  ``cuda``; the NumPy oracle stays on the CPU); a backend that cannot use it is skipped.
"""

from __future__ import annotations

import json
import os

import pytest

from agvi.backends import available_backends, make_backend
from agvi.testing.agreement import (
    AGREEMENT_ATOL,
    AGREEMENT_RTOL,
    AgreementError,
    assert_agree,
    run_on_all,
)


def _env(*names):
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _compared_backends() -> list:
    env = _env("AGVI_AGREEMENT_BACKENDS", "AGVI_TEST_BACKENDS")
    names = ([n.strip().lower() for n in env.split(",") if n.strip()] if env
             else available_backends())
    return [n for n in names if n not in ("numpy", "autograd")]


OTHER_BACKENDS = _compared_backends()
DEVICE = _env("AGVI_AGREEMENT_DEVICE", "AGVI_TEST_DEVICE")

# backend name -> test id -> (max relative error, passed) (filled by the `agree` fixture)
_LOG: dict[str, dict[str, tuple]] = {}


def _record(backend: str, test: str, err: float, passed: bool) -> None:
    tests = _LOG.setdefault(backend, {})
    old_err, old_passed = tests.get(test, (0.0, True))
    tests[test] = (max(err, old_err), passed and old_passed)


@pytest.fixture(scope="session")
def ref():
    """The NumPy oracle in float64."""
    return make_backend("numpy", precision="float64")


@pytest.fixture(params=OTHER_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(
    reason="only the numpy backend is installed (or selected): nothing to compare it with"))],
    ids=lambda n: n or "none", scope="session")
def other(request):
    """Each installed backend other than NumPy, in float64 (JAX: turns x64 on)."""
    name = request.param
    if name not in available_backends():
        pytest.skip(f"backend {name!r} is not installed here")
    try:
        return make_backend(name, precision="float64", device=DEVICE)
    except ValueError as exc:
        if DEVICE is not None:
            pytest.skip(f"backend {name!r} cannot use device {DEVICE!r} here: {exc}")
        raise


def _test_id(nodename: str, backend: str) -> str:
    """The test id without the backend parameter (so that backends can be compared)."""
    return (nodename.replace(f"[{backend}]", "").replace(f"[{backend}-", "[")
            .replace(f"-{backend}]", "]").replace(f"-{backend}-", "-"))


@pytest.fixture
def agree(ref, other, request):
    """``agree(fn, *args, rtol=, atol=, what=)``: run ``fn(B, *args)`` on NumPy and ``other``
    (each under shared noise), assert agreement, record the error (also when the comparison
    fails), and return the NumPy result (leaves as NumPy arrays)."""
    def check(fn, *args, rtol=AGREEMENT_RTOL, atol=AGREEMENT_ATOL, what=""):
        results = run_on_all(fn, *args, backends=[ref, other])
        errors, passed = {}, False
        try:
            errors = assert_agree(results, rtol=rtol, atol=atol, what=what or request.node.name)
            passed = True
        except AgreementError as exc:
            errors = exc.errors
            raise
        finally:
            for name, err in errors.items():
                _record(name, _test_id(request.node.name, name) + (f" {what}" if what else ""),
                        err, passed)
        return results["numpy"]

    return check


def pytest_terminal_summary(terminalreporter):
    if not _LOG:
        return
    tr = terminalreporter
    tr.write_sep("-", f"agvi agreement with numpy (float64, rtol {AGREEMENT_RTOL:g}, "
                      f"atol {AGREEMENT_ATOL:g})")
    summary = {}
    for backend, tests in sorted(_LOG.items()):
        ok = {t: e for t, (e, p) in tests.items() if p}
        bad = {t: e for t, (e, p) in tests.items() if not p}
        worst = sorted(ok.items(), key=lambda kv: -kv[1])[:5]
        top = max(ok.values(), default=0.0)
        summary[backend] = {"max_relative_error_passing": top, "checks": len(tests),
                            "largest_passing": dict(worst), "failing": bad}
        tr.write_line(f"{backend}: max relative error {top:.3g} over {len(ok)} passing checks; "
                      "largest: " + ", ".join(f"{t} {e:.2g}" for t, e in worst))
        if bad:
            tr.write_line(f"{backend}: {len(bad)} failing checks: "
                          + ", ".join(f"{t} {e:.2g}" for t, e in sorted(bad.items())))
    path = os.environ.get("AGVI_AGREEMENT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"rtol": AGREEMENT_RTOL, "atol": AGREEMENT_ATOL, "backends": summary,
                       "per_check": {b: {t: e for t, (e, _) in ts.items()}
                                     for b, ts in _LOG.items()}},
                      f, indent=1, sort_keys=True)
        tr.write_line(f"agreement report written to {path}")
