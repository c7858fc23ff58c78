"""The MCMC tests run in float64 only: ``B`` is the shared ``B64`` fixture (the float32
instances are deselected, not skipped)."""

import pytest


@pytest.fixture
def B(B64):
    """The active float64 backend (see ``B64`` in tests/conftest.py)."""
    return B64
