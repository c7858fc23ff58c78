"""Fixtures for the VI tests: every installed backend, float64 only (the closed forms are checked
at round-off; JAX compile time dominates, so one precision keeps the suite fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

import agvi


@pytest.fixture
def B64(backend):
    """The ``backend`` fixture's Backend (float64 instances only), active for the test."""
    with agvi.use_backend(backend):
        yield backend


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    drop = [item for item in items
            if "B64" in getattr(item, "fixturenames", ()) and here in Path(item.path).parents
            and item.callspec.params.get("backend", (None, None))[1] != "float64"]
    if drop:
        dropped = set(map(id, drop))
        items[:] = [item for item in items if id(item) not in dropped]
        config.hook.pytest_deselected(items=drop)
