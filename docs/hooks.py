"""MkDocs hooks: tables generated from ``agvi.backends`` when the site is built.

A page asks for a table with a marker line, replaced by :func:`on_page_markdown`:

- ``<!-- agvi:contract-table -->``: the groups of :data:`agvi.backends.base.CONTRACT`, with their
  entries.
- ``<!-- agvi:capability-table -->``: the capability flags of every registered backend.

The capability flags are read from the backend classes' source (``ast``), not by importing the
backend modules, so the table lists every registered backend even where its framework is not
installed (the ``docs`` environment has neither torch nor JAX). ``tests/test_docs.py`` checks that
this reading equals the classes' attributes for every installed backend.

Loaded by ``mkdocs.yml`` (``hooks: [docs/hooks.py]``); not part of the site.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

CONTRACT_MARKER = "<!-- agvi:contract-table -->"
CAPABILITY_MARKER = "<!-- agvi:capability-table -->"

#: Class attributes of ``Backend`` that are capability flags, and what "yes" means for each.
FLAGS = {
    "has_jit": "`jit` compiles (otherwise it returns the function unchanged)",
    "has_vmap": "`vmap` is a native vectorising transform (otherwise a Python loop and stack)",
    "supports_forward_mode": "`jvp` is native forward mode (otherwise exact, by two reverse "
                             "passes)",
    "compiles_control_flow": "`cond` / `while_loop` / `scan` are traced into a compiled program",
    "has_mutable_arrays": "`assign_` writes in place (borch-style steps mutate parameters)",
    "compiles_pure": "`compile_pure` compiles a pure function (JAX: `jit`; torch: a traced "
                     "graph per input signature)",
}

_GROUP_TEXT = {
    "arrays": "creation, shapes, indexing, reductions, elementwise math, linear algebra, "
              "functional updates, bit operations",
    "dtype_device": "the precision's float dtype, casts, machine limits, devices",
    "random": "explicit keys and draws (see `agvi.random`)",
    "special": "special functions, differentiable on every backend",
    "autodiff": "reverse and forward mode, Jacobians with chunking, custom VJPs",
    "control_flow": "JAX-style structured control flow (compiled on JAX, Python loops "
                    "elsewhere)",
    "transforms": "compilation, vectorisation, host callbacks",
    "pytrees": "nested containers of arrays (via optree)",
}


def _agvi_backends_dir() -> Path:
    spec = importlib.util.find_spec("agvi.backends")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("agvi is not importable: install it (pip install -e .) to build the docs")
    return Path(list(spec.submodule_search_locations)[0])


def _class_constants(path: Path, class_name: str) -> dict:
    """The ``name = <literal>`` assignments in the body of ``class_name`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            out = {}
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and isinstance(stmt.targets[0], ast.Name)):
                    try:
                        out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                    except ValueError:
                        continue
            return out
    raise LookupError(f"class {class_name} not found in {path}")


def backend_classes() -> dict:
    """Registered backend name -> ``(module, class name)``, from the registry in agvi.backends."""
    import agvi.backends as backends

    out = {}
    for name in backends.known_backends():
        factory = backends.backend_info(name).factory  # "module:Class" for the built-ins
        if isinstance(factory, str):
            module, cls = factory.split(":")
            out[name] = (module, cls)
    return out


def static_capabilities() -> dict:
    """Backend name -> {flag: bool}, read from the source of ``base.py`` and each backend class.

    Only direct subclasses of ``Backend`` whose flags are literal class attributes are handled,
    which is how the built-in backends are written.
    """
    root = _agvi_backends_dir()
    defaults = _class_constants(root / "base.py", "Backend")
    table = {}
    for name, (module, cls) in backend_classes().items():
        if not module.startswith("agvi.backends."):
            continue
        own = _class_constants(root / (module.rsplit(".", 1)[1] + ".py"), cls)
        table[name] = {flag: bool(own.get(flag, defaults[flag])) for flag in FLAGS}
        table[name]["install_extra"] = own.get("install_extra", defaults.get("install_extra"))
    return table


def capability_table_markdown() -> str:
    """The capability flags of every registered backend as a Markdown table."""
    caps = static_capabilities()
    names = list(caps)
    mark = {True: "yes", False: "no"}
    lines = ["| flag | " + " | ".join(f"`{n}`" for n in names) + " | meaning of yes |",
             "| --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for flag, meaning in FLAGS.items():
        cells = " | ".join(mark[caps[n][flag]] for n in names)
        lines.append(f"| `{flag}` | {cells} | {meaning} |")
    extras = " | ".join(f"`agvi[{caps[n]['install_extra']}]`" if caps[n]["install_extra"]
                        else "-" for n in names)
    lines.append(f"| install | {extras} | the pip extra that installs the framework |")
    return "\n".join(lines)


def contract_table_markdown() -> str:
    """The groups of ``CONTRACT`` with their entries as a Markdown table."""
    from agvi.backends.base import CONTRACT

    lines = ["| group | entries | what |", "| --- | --- | --- |"]
    for group, names in CONTRACT.items():
        entries = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| `{group}` ({len(names)}) | {entries} | {_GROUP_TEXT.get(group, '')} |")
    total = sum(len(v) for v in CONTRACT.values())
    lines.append(f"\n{len(CONTRACT)} groups, {total} entries in all.")
    return "\n".join(lines)


def on_page_markdown(markdown, page=None, config=None, files=None, **kwargs):
    """Replace the table markers in a page with the generated tables."""
    if CONTRACT_MARKER in markdown:
        markdown = markdown.replace(CONTRACT_MARKER, contract_table_markdown())
    if CAPABILITY_MARKER in markdown:
        markdown = markdown.replace(CAPABILITY_MARKER, capability_table_markdown())
    return markdown
