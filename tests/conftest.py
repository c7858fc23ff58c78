"""Shared pytest fixtures.

``backend`` runs a test once per installed backend and precision (ids such as
``numpy-float64``). Two environment variables narrow or move the run (the nox sessions use them):

- ``AGVI_TEST_BACKENDS``: a comma-separated list of backend names (e.g. ``numpy,jax``); a listed
  backend whose framework is not installed is skipped with a reason.
- ``AGVI_TEST_DEVICE``: the device every backend is built with (e.g. ``cuda``); a backend that
  cannot use it here (NumPy, or no GPU present) is skipped with a reason.

JAX compiles every eager operation once per shape and dtype, and the suite's JAX runs are
dominated by those compilations. Unless ``JAX_COMPILATION_CACHE_DIR`` is already set (or
``AGVI_TEST_JAX_CACHE=0``), the session points JAX's persistent compilation cache at pytest's
cache directory (``.pytest_cache/d/jax-compilation-cache``), which makes a repeated run several
times faster. It is a test-session setting only: importing agvi never touches it.
"""

from __future__ import annotations

import os

import pytest

import agvi
from agvi.backends import _canonical, available_backends, make_backend

# One intra-op thread per test process: the tensors here are tiny, and with pytest-xdist
# running a process per core, framework thread pools oversubscribe the cores (torch slowed
# down a hundredfold on 2 cores). Set before any framework is imported (they import lazily).
os.environ.setdefault("OMP_NUM_THREADS", "1")

PRECISIONS = ("float32", "float64")


def pytest_configure(config):
    # JAX reads these variables when it is first imported, which happens later (lazily, when a
    # JAX backend is first built); -p no:cacheprovider leaves no cache directory, hence no cache.
    cache = getattr(config, "cache", None)
    if (cache is None or "JAX_COMPILATION_CACHE_DIR" in os.environ
            or os.environ.get("AGVI_TEST_JAX_CACHE", "1") == "0"):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def _requested_backends() -> list:
    env = os.environ.get("AGVI_TEST_BACKENDS", "").strip()
    if env:
        return [name.strip().lower() for name in env.split(",") if name.strip()]
    return available_backends()


def _backend_params() -> list:
    return [pytest.param((name, precision), id=f"{name}-{precision}")
            for name in _requested_backends() for precision in PRECISIONS]


@pytest.fixture(scope="session", params=_backend_params())
def backend(request):
    """A Backend object for one (name, precision) pair, on ``AGVI_TEST_DEVICE`` if set."""
    name, precision = request.param
    canonical = _canonical(name)  # an unknown name is an error, not a skip
    if canonical not in available_backends():
        pytest.skip(f"backend {name!r} is not installed here (AGVI_TEST_BACKENDS lists it)")
    device = os.environ.get("AGVI_TEST_DEVICE") or None
    try:
        return make_backend(name, precision=precision, device=device)
    except ValueError as exc:
        if device is not None:
            pytest.skip(f"backend {name!r} cannot use device {device!r} here: {exc}")
        raise


@pytest.fixture
def B(backend):
    """The ``backend`` fixture's Backend, made active for the test."""
    with agvi.use_backend(backend):
        yield backend


@pytest.fixture
def B64(backend):
    """As ``B``, at float64 only: for closed forms checked at round-off and semantics that do
    not depend on the precision (the float32 instances are deselected below; this also keeps
    JAX's per-shape compilation, which dominates these tests' time, to one precision)."""
    with agvi.use_backend(backend):
        yield backend


@pytest.fixture
def np_B():
    """The NumPy backend in float64, active for the test (for backend-independent semantics)."""
    with agvi.use_backend("numpy", precision="float64") as b:
        yield b


def pytest_collection_modifyitems(config, items):
    drop = [item for item in items
            if "B64" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")
            and item.callspec.params.get("backend", (None, None))[1] != "float64"]
    if drop:
        dropped = set(map(id, drop))
        items[:] = [item for item in items if id(item) not in dropped]
        config.hook.pytest_deselected(items=drop)
