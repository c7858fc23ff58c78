"""What the benchmark scripts share: framework set-up, a JAX compile clock, ESS, the machine.

Each benchmark runs in its own process (``benchmarks.run`` starts them one after the other), so
the process-wide settings made here (float64, torch's thread count) touch that process only:
agvi itself never sets them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata

import numpy as np

__all__ = ["CompileClock", "configure", "machine_info", "median", "min_bulk_ess", "write_json"]

#: distributions whose versions are recorded with every result
PACKAGES = ("agvi", "numpy", "scipy", "torch", "jax", "jaxlib", "autograd", "numpyro", "blackjax",
            "pyro-ppl", "optax", "arviz")


def configure(framework: str):
    """Float64 and one torch thread for ``framework``'s process; returns the agvi backend or None.

    Parameters
    ----------
    framework : str
        ``"agvi-numpy"``, ``"agvi-torch"``, ``"agvi-jax"`` (the agvi backend is made active in
        float64) or a peer's name: names containing ``torch`` or ``pyro`` set torch's default
        dtype to float64 and ``torch.set_num_threads(1)`` (tiny tensors: threads only add
        contention, up to 70x slower on a busy 2-core machine); the JAX-based ones
        (``jax``, ``numpyro``, ``blackjax``) enable ``jax_enable_x64``.
    """
    if "torch" in framework or "pyro" in framework:
        import torch

        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)
    if any(name in framework for name in ("jax", "numpyro", "blackjax")):
        import jax

        jax.config.update("jax_enable_x64", True)
    if framework.startswith("agvi-"):
        import agvi

        agvi.set_backend(framework[len("agvi-"):], precision="float64")
        return agvi.get_backend()
    return None


class CompileClock:
    """The wall time JAX spends tracing, lowering and compiling, read between two instants.

    JAX reports every trace, lowering to MLIR and backend compile as a time span
    (``jax.monitoring``); overlapping spans (a jit traced inside another's trace) are merged,
    so the total is wall time in which some compilation was under way.
    """

    _EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
               "/jax/core/compile/jaxpr_to_mlir_module_duration",
               "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        from jax import monitoring

        self.spans: list[tuple[float, float]] = []

        def listener(event, start, end, **kwargs):
            if event in self._EVENTS:
                self.spans.append((start, end))

        monitoring.register_event_time_span_listener(listener)

    def seconds(self, t0: float, t1: float) -> float:
        """Seconds of compilation within ``[t0, t1]`` (``time.time()`` instants)."""
        spans = sorted((max(a, t0), min(b, t1)) for a, b in self.spans if b > t0 and a < t1)
        total, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if cur_b is None or a > cur_b:
                if cur_b is not None:
                    total += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_b is not None:
            total += cur_b - cur_a
        return total


def min_bulk_ess(samples) -> float:
    """The smallest rank-normalised bulk ESS over coordinates.

    Parameters
    ----------
    samples : array_like, shape (chains, draws, d)

    Returns
    -------
    float
        Computed by :func:`agvi.infer.mcmc.diagnostics.effective_sample_size` (which agrees
        with ArviZ's ``ess(method="bulk")``); NaN coordinates are ignored.
    """
    from agvi.infer.mcmc.diagnostics import effective_sample_size

    ess = np.asarray(effective_sample_size(np.asarray(samples, dtype=np.float64)))
    return float(np.nanmin(ess))


def median(values):
    """The median of the finite numbers in ``values`` (None when there are none)."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return statistics.median(vals) if vals else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Cores, CPU model, load average, OS and the versions of Python and the packages."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cores": os.cpu_count(), "usable_cores": usable, "cpu": _cpu_model(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python_executable": sys.executable, "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def write_json(path: str | None, payload: dict) -> None:
    """Write ``payload`` to ``path`` (stdout when None), as JSON with NaN written as null."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.ndarray):
            return clean(x.tolist())
        return x

    text = json.dumps(clean(payload), indent=1)
    if path is None:
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)
