"""Testing tools for agvi and for third-party backends.

:mod:`agvi.testing.conformance` checks a :class:`~agvi.backends.base.Backend` object against
NumPy/SciPy oracles, one or more checks per entry of :data:`agvi.backends.base.CONTRACT`:

>>> from agvi.backends import make_backend
>>> from agvi.testing import run_conformance
>>> results = run_conformance(make_backend("numpy"), names=["cholesky", "pytrees"])
>>> sorted({r.status for r in results})
['passed']

Importing this package imports no array framework; the checks use only the Backend they are
given (and SciPy).
"""

from .conformance import (
    CHECKS,
    CapabilityRow,
    CheckResult,
    CheckSkipped,
    ConformanceError,
    capability_markdown,
    capability_table,
    check_ids,
    checks_for,
    run_conformance,
)

__all__ = [
    "CHECKS", "CapabilityRow", "CheckResult", "CheckSkipped", "ConformanceError",
    "capability_markdown", "capability_table", "check_ids", "checks_for", "run_conformance",
]
