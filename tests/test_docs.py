"""The documentation site: its code runs, its generated tables are right, it builds.

- Every ```` ```python ```` block of the pages under ``docs/`` (the API reference pages aside) runs
  on the NumPy backend in float64, the blocks of one page in order in one namespace, as a reader
  would paste them. A block preceded by the line ``<!-- docs-test: skip ... -->`` is not run (it
  needs torch, JAX, a GPU or a long time; say why after ``skip``).
- The capability flags that ``docs/hooks.py`` reads from the backends' source equal the classes'
  attributes for every installed backend, and the contract table lists every entry of CONTRACT.
- ``mkdocs build --strict`` passes (where mkdocs, mkdocs-material and mkdocstrings are installed:
  the ``docs`` extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import agvi.backends as backends
from agvi.backends.base import CONTRACT

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SKIP_MARK = "<!-- docs-test: skip"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def _load_hooks():
    spec = importlib.util.spec_from_file_location("agvi_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_blocks(text: str) -> list:
    """``(line number, code)`` of every python block not marked to skip."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip().startswith(SKIP_MARK):
            continue
        blocks.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


def _pages() -> list:
    pages = [p for p in sorted(DOCS.rglob("*.md")) if "api" not in p.relative_to(DOCS).parts]
    return [p for p in pages if python_blocks(p.read_text(encoding="utf-8"))]


def test_block_extraction():
    text = ("a\n```python\nx = 1\n```\n<!-- docs-test: skip (needs jax) -->\n```python\n"
            "y = 2\n```\n```bash\nls\n```\n")
    assert python_blocks(text) == [(3, "x = 1\n")]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)                       # snippets that write files write here
    monkeypatch.delenv("AGVI_BACKEND", raising=False)
    # The snippets may register backends and call set_backend: keep the registry, the cache of
    # backend objects and the process default as they were.
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_CACHE", dict(backends._CACHE))
    monkeypatch.setitem(backends._default, "backend", backends.make_backend("numpy", "float64"))
    namespace = {"__name__": "__docs__"}
    for lineno, code in python_blocks(page.read_text(encoding="utf-8")):
        try:
            exec(compile(code, f"{page.relative_to(REPO)}:{lineno}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the python block at {page.relative_to(REPO)}:{lineno} "
                                 f"failed: {type(exc).__name__}: {exc}") from exc


def test_capability_table_matches_backend_classes():
    hooks = _load_hooks()
    static = hooks.static_capabilities()
    assert set(static) == set(backends.known_backends()) & set(hooks.backend_classes())
    checked = 0
    for name, (module, cls) in hooks.backend_classes().items():
        if name not in backends.available_backends():
            continue
        klass = getattr(importlib.import_module(module), cls)
        for flag in hooks.FLAGS:
            assert static[name][flag] == bool(getattr(klass, flag)), (name, flag)
        assert static[name]["install_extra"] == klass.install_extra
        checked += 1
    assert checked >= 1  # the NumPy backend at least
    table = hooks.capability_table_markdown()
    for flag in hooks.FLAGS:
        assert f"| `{flag}` |" in table


def test_contract_table_lists_every_entry():
    hooks = _load_hooks()
    table = hooks.contract_table_markdown()
    for group, names in CONTRACT.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{group}` "))
        assert f"({len(names)})" in row
        for name in names:
            assert f"`{name}`" in row, (group, name)
    page = hooks.on_page_markdown("x\n" + hooks.CONTRACT_MARKER + "\n" + hooks.CAPABILITY_MARKER)
    assert "<!--" not in page


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e .[docs])")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "index.html").exists()
