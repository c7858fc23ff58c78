"""Fixtures for the effect-handler tests."""

from __future__ import annotations

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

