"""Griffe extension for the documentation build: numpydoc/reST docstrings read as Markdown.

agvi's docstrings are numpydoc, written with reST habits that mkdocstrings would print verbatim.
Once the object tree is built, this extension rewrites in every docstring:

- Sphinx cross-reference roles (``:class:`Backend```, ``:func:`~agvi.random.split```) into
  Markdown cross-references (``[Backend][agvi.backends.base.Backend]``) when the target is a
  public object that the API reference renders, and into inline code otherwise (``~`` shows only
  the last name, as in Sphinx); ``:math:`...``` into inline code;
- doctest blocks (``>>>`` lines and their output) outside an ``Examples`` section into fenced
  ``pycon`` code blocks (Markdown would read them as nested block quotes);
- reST simple tables (``====  ====`` borders) into Markdown tables;
- a paragraph ending in ``::`` (a reST literal block follows) into one ending in ``:`` (the
  indented block is then a Markdown code block);
- attributes documented by a ``#:`` comment get that comment as their docstring.

It also keeps numpydoc types with a comma (``Array, shape (C, d)``) as written.
Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_roles.py]``); not part of the site.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|data|mod|obj|exc|const|math):`([^`]+)`")
_BACKEND_CLASSES = {"agvi.backends.numpy_backend.NumpyBackend",
                    "agvi.backends.torch_backend.TorchBackend",
                    "agvi.backends.jax_backend.JaxBackend"}
_XREF_ROLES = {"class", "func", "meth", "attr", "data", "mod", "obj", "exc", "const"}


def _lookup(collection, path: str):
    """The object at ``path`` (following aliases), or None."""
    try:
        obj = collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _target(obj, collection, name: str):
    """Full path of ``name`` seen from ``obj`` (module, class, function), or None."""
    name = name.lstrip(".")
    candidates = [name]
    head, _, rest = name.partition(".")
    scope = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            resolved = None
        if resolved:
            candidates.append(resolved + ("." + rest if rest else ""))
            break
        scope = scope.parent
    # Bare method/attribute names in a class docstring (``:meth:`jit```).
    cls = obj if obj.is_class else (obj.parent if obj.parent is not None and obj.parent.is_class
                                    else None)
    if cls is not None:
        candidates.append(f"{cls.path}.{name}")
    for path in candidates:
        found = _lookup(collection, path)
        if found is None or not found.path.startswith("agvi.") or any(
                part.startswith("_") for part in found.path.split(".")):
            continue
        # The framework backends' methods are not rendered one by one: their semantics are the
        # contract's, so link the Backend method of that name.
        parent = found.parent
        if (parent is not None and parent.is_class and parent.path in _BACKEND_CLASSES):
            base = _lookup(collection, f"agvi.backends.base.Backend.{found.name}")
            found = base if base is not None else parent
        # Only documented objects are rendered: link the nearest documented owner.
        while found is not None and not found.docstring:
            found = found.parent
        return found.path if found is not None else None
    return None


def _comment_docstring(attr) -> str | None:
    """The ``#:`` comment lines just above an attribute (Sphinx autodoc's convention)."""
    module = attr.module
    lines = getattr(module, "lines", None)
    if not lines or not attr.lineno:
        return None
    found = []
    i = attr.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.append(lines[i].strip()[2:].strip())
        i -= 1
    return " ".join(reversed(found)) or None


def _top_level_comma(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            return True
    return False


def _keep_numpydoc_types() -> None:
    """Keep numpydoc types such as ``Array, shape (C, d)`` as written.

    Griffe parses a docstring type that happens to be valid Python as an expression, which turns
    ``Array, shape (C, d)`` into the tuple ``(Array, shape(C, d))``. Types with a top-level comma
    are left as text. Private Griffe API: if it moves, types render as Griffe renders them.
    """
    try:
        from griffe._internal.docstrings import numpy as numpy_parser
    except ImportError:
        return
    original = getattr(numpy_parser, "parse_docstring_annotation", None)
    if original is None or getattr(original, "_agvi_wrapped", False):
        return

    def parse(annotation, docstring, *args, **kwargs):
        if _top_level_comma(annotation):
            return annotation
        return original(annotation, docstring, *args, **kwargs)

    parse._agvi_wrapped = True
    numpy_parser.parse_docstring_annotation = parse


_keep_numpydoc_types()


_SECTION_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_TABLE_BORDER = re.compile(r"^(\s*)=+(\s+=+)+\s*$")


def _table_rows(lines, spans):
    rows = []
    for line in lines:
        if not line.strip():
            continue
        cells = [line[a:b].strip() if b else line[a:].strip() for a, b in spans]
        if rows and not cells[0]:  # a continuation line
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return rows


def _table_row(indent: str, cells) -> str:
    """A Markdown table row; pipes outside code spans are escaped."""
    def escape(cell):
        parts = re.split(r"(`+[^`]*`+)", cell)
        return "".join(p if k % 2 else p.replace("|", "\\|") for k, p in enumerate(parts))

    return indent + "| " + " | ".join(escape(c) for c in cells) + " |"


def _simple_tables(text: str) -> str:
    """reST simple tables (``===  ===`` borders) as Markdown tables."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        match = _TABLE_BORDER.match(lines[i])
        ends = [j for j in range(i + 1, len(lines)) if _TABLE_BORDER.match(lines[j])]
        if not match or not ends:
            out.append(lines[i])
            i += 1
            continue
        indent, border = match.group(1), lines[i]
        starts = [m.start() for m in re.finditer(r"=+", border)]
        spans = list(zip(starts, starts[1:] + [None]))
        # border, header, border, rows, border when a third border closes the block
        if len(ends) >= 2 and all(lines[k].strip() for k in range(ends[0] + 1, ends[1])):
            header = _table_rows(lines[i + 1:ends[0]], spans)[0]
            body, last = _table_rows(lines[ends[0] + 1:ends[1]], spans), ends[1]
        else:
            header = [""] * len(spans)
            body, last = _table_rows(lines[i + 1:ends[0]], spans), ends[0]
        out += [_table_row(indent, header), indent + "|" + " --- |" * len(spans),
                *[_table_row(indent, r) for r in body]]
        i = last + 1
    return "\n".join(out)


def _fence_doctests(text: str) -> str:
    """Fence the doctest blocks that are not in an ``Examples`` section; turn ``::`` into ``:``."""
    lines = text.split("\n")
    out, section, in_fence, i = [], None, False, 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif (not in_fence and i + 1 < len(lines) and stripped
              and _SECTION_UNDERLINE.match(lines[i + 1])):
            section = stripped.lower()
        if not in_fence and section != "examples" and stripped.startswith(">>>"):
            indent = line[:len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent)
                             else lines[i].strip())
                i += 1
            out += [f"{indent}```pycon", *[indent + b for b in block], f"{indent}```"]
            continue
        if not in_fence and stripped.endswith("::") and not stripped.startswith(".."):
            line = line[:line.rstrip().rfind("::")] + (":" if stripped != "::" else "")
        out.append(line)
        i += 1
    return "\n".join(out)


class NumpydocMarkdown(griffe.Extension):
    """Rewrite reST constructs in every docstring into Markdown (see the module docstring)."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.is_attribute and obj.docstring is None:
            text = _comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        # The loaded package itself gets no on_object event.
        self.on_object(obj=pkg, loader=loader)

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.is_alias or obj.docstring is None or getattr(obj, "_agvi_markdown", False):
            return
        obj._agvi_markdown = True
        collection = loader.modules_collection

        def replace(match):
            role, text = match.group(1), match.group(2).strip()
            if role == "math":
                return f"`{text}`"
            if "<" in text and text.endswith(">"):  # :class:`label <target>`
                label, _, target = text[:-1].partition("<")
                label, target = label.strip(), target.strip()
            else:
                short = text.startswith("~")
                target = text.lstrip("~")
                label = target.rsplit(".", 1)[-1] if short else target
            if role in ("func", "meth") and not label.endswith(")"):
                label += "()"
            path = _target(obj, collection, target) if role in _XREF_ROLES else None
            return f"[`{label}`][{path}]" if path else f"`{label}`"

        value = _ROLE.sub(replace, obj.docstring.value)
        if ">>>" in value or "::" in value:
            value = _fence_doctests(value)
        if "==" in value:
            value = _simple_tables(value)
        obj.docstring.value = value
