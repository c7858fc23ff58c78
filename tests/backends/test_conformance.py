"""The backend conformance suite (agvi.testing.conformance) on every installed backend.

One test per (check, backend, precision), e.g. ``test_conformance[numpy-float64-cholesky]``.
"""

from __future__ import annotations

import pytest

from agvi.backends import CONTRACT, make_backend
from agvi.testing import (
    CHECKS,
    CheckSkipped,
    ConformanceError,
    capability_markdown,
    capability_table,
    check_ids,
    checks_for,
    run_conformance,
)

ALL_CHECKS = checks_for()


def test_every_contract_entry_has_a_check():
    names = [name for group in CONTRACT.values() for name in group]
    missing = [name for name in names if not CHECKS.get(name)]
    assert not missing, f"contract entries without a conformance check: {missing}"
    assert len(set(map(check_ids, ALL_CHECKS))) == len(ALL_CHECKS), "check ids must be unique"


@pytest.mark.parametrize("check", ALL_CHECKS, ids=[check_ids(c) for c in ALL_CHECKS])
def test_conformance(backend, check):
    try:
        check(backend)
    except CheckSkipped as exc:
        pytest.skip(str(exc))


def test_run_conformance_reports_and_raises():
    from agvi.backends.numpy_backend import NumpyBackend

    results = run_conformance(make_backend("numpy"), names=["pytrees", "cholesky"])
    assert {r.status for r in results} == {"passed"}
    assert [r.check for r in results][-1] == "cholesky"

    class BrokenCholesky(NumpyBackend):
        def cholesky(self, a):
            return a

    broken = BrokenCholesky()
    results = run_conformance(broken, names=["cholesky"], raise_on_failure=False)
    assert [r.status for r in results] == ["failed"]
    with pytest.raises(ConformanceError, match="cholesky"):
        run_conformance(broken, names=["cholesky", "eye"])
    with pytest.raises(ValueError, match="not_a_name"):
        run_conformance(broken, names=["not_a_name"])


def test_capability_table():
    rows = {row.backend: row for row in capability_table()}
    assert "numpy" in rows
    assert rows["numpy"].has_jit is False and rows["numpy"].has_vmap is False
    assert capability_markdown().startswith("| backend |")
