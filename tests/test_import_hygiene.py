"""Import hygiene (DESIGN.md sections 2 and 8), each check in a fresh interpreter:

- ``import agvi`` (and ``agvi.random``, ``agvi.testing``, the default backend, a key) imports no
  framework besides NumPy/autograd;
- choosing a backend changes no framework global: torch's default dtype and thread count stay
  as they were; JAX's x64 flag stays off unless ``precision="float64"`` is asked for (documented:
  then it is turned on, process-wide);
- with torch and JAX "not installed" (imports blocked), ``available_backends`` omits them and
  selecting them raises an ImportError naming the pip extra; unknown names raise ValueError.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("torch", "jax", "jaxlib")
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_JAX = importlib.util.find_spec("jax") is not None


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object on its last line."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AGVI_BACKEND", "JAX_ENABLE_X64", "OMP_NUM_THREADS")}
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_agvi_imports_no_framework():
    out = run_python(f"""
        import json, sys
        import agvi, agvi.random
        import agvi.testing, agvi.testing.shared_noise, agvi.testing.agreement
        B = agvi.get_backend()
        k = agvi.random.key(0)
        k1, k2 = agvi.random.split(k)
        x = B.normal(k1, (3,))
        names = agvi.backends.available_backends()
        print(json.dumps({{"backend": B.name, "precision": B.precision,
                          "key": [int(v) for v in k], "key_type": type(k).__module__,
                          "loaded": sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)}}))
    """)
    assert out["backend"] == "numpy" and out["precision"] == "float64"
    assert out["key"] == [0, 0] and out["key_type"] == "numpy"
    assert out["loaded"] == [], f"importing agvi imported {out['loaded']}"


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_backend_changes_no_torch_global():
    out = run_python("""
        import json, sys
        import torch
        dtype, threads = str(torch.get_default_dtype()), torch.get_num_threads()
        import agvi
        seen = {}
        for precision in (None, "float64", "float32"):
            B = agvi.set_backend("torch", precision=precision)
            x = B.normal(B.key(0), (3,)) + B.zeros((3,))
            B.grad(lambda v: B.sum(B.exp(v)))(x)
            seen[str(precision)] = [str(torch.get_default_dtype()), torch.get_num_threads(),
                                    str(x.dtype)]
        print(json.dumps({"before": [dtype, threads], "seen": seen,
                          "jax_loaded": "jax" in sys.modules}))
    """)
    before = out["before"]
    assert before[0] == "torch.float32"
    for precision, (dtype, threads, _) in out["seen"].items():
        assert [dtype, threads] == before, f"set_backend('torch', precision={precision}) " \
            f"changed torch's globals from {before} to {[dtype, threads]}"
    assert out["seen"]["float64"][2] == "torch.float64"
    assert out["seen"]["None"][2] == "torch.float32"
    assert not out["jax_loaded"]


@pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed")
def test_jax_backend_x64_only_when_float64_is_asked_for():
    out = run_python("""
        import json, sys
        import agvi
        B = agvi.set_backend("jax")
        x = B.normal(B.key(0), (3,))
        import jax
        default = [bool(jax.config.jax_enable_x64), B.precision, str(x.dtype)]
        B32 = agvi.set_backend("jax", precision="float32")
        after32 = bool(jax.config.jax_enable_x64)
        B64 = agvi.set_backend("jax", precision="float64")
        y = B64.normal(B64.key(0), (3,))
        after64 = [bool(jax.config.jax_enable_x64), str(y.dtype)]
        print(json.dumps({"default": default, "after32": after32, "after64": after64,
                          "torch_loaded": "torch" in sys.modules}))
    """)
    assert out["default"] == [False, "float32", "float32"], out
    assert out["after32"] is False
    # documented: precision="float64" turns on jax_enable_x64 for the whole process
    assert out["after64"] == [True, "float64"]
    assert not out["torch_loaded"]


BLOCK_FRAMEWORKS = """
import importlib.abc, importlib.util, sys

BLOCKED = ("torch", "jax", "jaxlib")
assert not any(m in sys.modules for m in BLOCKED)


def _blocked(name):
    return name.split(".")[0] in BLOCKED


class _NotInstalled(importlib.abc.MetaPathFinder):
    # Pretend torch and jax are not installed: importing them fails as for a missing package.
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if _blocked(name) else _find_spec(name, package))
"""


def test_missing_frameworks_are_reported_with_the_pip_extra():
    out = run_python(BLOCK_FRAMEWORKS + """
import json
import agvi
from agvi.testing.agreement import installed_backends

errors = {}
for name in ("jax", "torch", "pytorch", "nope"):
    try:
        agvi.set_backend(name)
    except Exception as e:
        errors[name] = [type(e).__name__, str(e)]
try:
    with agvi.use_backend("jax"):
        pass
except ImportError as e:
    errors["use_backend"] = [type(e).__name__, str(e)]
B = agvi.get_backend()
print(json.dumps({"available": agvi.backends.available_backends(),
                  "known": agvi.backends.known_backends(), "errors": errors,
                  "default": B.name, "installed": [b.name for b in installed_backends()],
                  "loaded": sorted(m for m in BLOCKED if m in sys.modules)}))
""")
    assert out["available"] == ["numpy"]
    assert out["installed"] == ["numpy"]
    assert out["default"] == "numpy"
    assert out["loaded"] == []
    errs = out["errors"]
    assert errs["jax"][0] in ("ImportError", "ModuleNotFoundError")
    assert "pip install agvi[jax]" in errs["jax"][1]
    assert "pip install agvi[torch]" in errs["torch"][1]
    assert "pip install agvi[torch]" in errs["pytorch"][1]
    assert "pip install agvi[jax]" in errs["use_backend"][1]
    assert errs["nope"][0] == "ValueError"
    for known in ("numpy", "torch", "jax"):
        assert known in errs["nope"][1], errs["nope"][1]


def test_unknown_backend_name_lists_known_names():
    import agvi

    with pytest.raises(ValueError, match="unknown backend 'nope'.*numpy.*torch.*jax"):
        agvi.set_backend("nope")
    with pytest.raises(TypeError, match="backend name must be a string"):
        agvi.set_backend(3)


def test_backend_info_reads_the_registry_without_importing():
    from agvi.backends import backend_info

    info = backend_info("pytorch")
    assert info.factory == "agvi.backends.torch_backend:TorchBackend"
    assert info.requires == ("torch",) and info.extra == "torch"
    assert backend_info("numpy").requires == ("numpy", "autograd")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        backend_info("nope")


def test_backend_options_are_checked_by_name():
    from agvi.backends import make_backend

    with pytest.raises(ValueError, match="'numpy' backend takes no option trace"):
        make_backend("numpy", trace=False)
