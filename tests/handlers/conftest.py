"""Fixtures for the effect-handler tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import agvi


@pytest.fixture
def B(backend):
    """The ``backend`` fixture's Backend, made active for the test."""
    with agvi.use_backend(backend):
        yield backend


@pytest.fixture
def np_B():
    """The NumPy backend in float64, active for the test (for backend-independent semantics)."""
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b



@pytest.fixture
def B64(backend):
    """As ``B``, at float64 only: for semantics that do not depend on the precision (the float32
    instances are deselected below; this keeps JAX's per-shape compilation, which dominates
    these tests' time, to one precision)."""
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
