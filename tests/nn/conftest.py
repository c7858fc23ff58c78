"""Fixtures for the agvi.nn tests: torch kept to one thread while a test runs (``B64``, every
installed backend at float64, comes from tests/conftest.py)."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture
def torch_one_thread(request):
    """Run torch on one thread during the test (a torch-backend instance, or a test not
    parametrised by backend), then restore the setting.

    The networks here are tiny; with several test processes on a small machine, torch's
    intra-op threads oversubscribe the cores and a 128x64 matmul slows down a hundredfold.
    """
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("backend", ("torch",))[0] if callspec else "torch"
    if name != "torch" or importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
