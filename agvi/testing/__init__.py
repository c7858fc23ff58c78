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

from .agreement import (
    AGREEMENT_ATOL,
    AGREEMENT_RTOL,
    AgreementError,
    assert_agree,
    installed_backends,
    max_relative_error,
    run_on_all,
    to_host,
)
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
from .reference_nuts import ReferenceNUTSResult, reference_nuts
from .shared_noise import SharedNoise, is_shared_noise

__all__ = [
    "AGREEMENT_ATOL", "AGREEMENT_RTOL", "AgreementError", "ReferenceNUTSResult", "SharedNoise",
    "assert_agree",
    "installed_backends", "is_shared_noise", "max_relative_error", "reference_nuts", "run_on_all",
    "to_host",
    "CHECKS", "CapabilityRow", "CheckResult", "CheckSkipped", "ConformanceError",
    "capability_markdown", "capability_table", "check_ids", "checks_for", "run_conformance",
]
