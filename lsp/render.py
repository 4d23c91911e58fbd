"""How a definition reads in a completion prompt: whole when it is short; else its signature
and docstring with the body elided (`...` in Python, `{ ... }` elsewhere); a long class as an
outline of its members' signatures, with Go methods and Rust `impl` blocks written after it; a
member chosen alone inside its class's head, so `self` and the enclosing type stay clear."""

from __future__ import annotations

import re

from lsp.languages import language_for_path
from lsp.symbols import CLASS_KINDS, FUNCTION_KINDS, FileSymbols, Symbol

MAX_OUTLINE_MEMBERS = 40
MAX_MODULE_OUTLINE = 120
"""Top-level definitions listed in a module's outline at most (the budget may cut it shorter)."""
OUTLINE_LINE_CHARS = 160
_SPACE = re.compile(r"\s*\n\s*")
_TRAILING_COMMA = re.compile(r",\s*\n\s*\)")


def render_symbol(sym: Symbol, symbols: FileSymbols | None) -> str:
    """The text a prompt shows for `sym`; `symbols` are those of its file (for class members)."""
    spec = language_for_path(sym.path)
    python = spec is not None and spec.python_docstrings
    placeholder = spec.body_placeholder if spec is not None and not python else ""
    if sym.kind in CLASS_KINDS:
        members = list(symbols.members.get(sym.name, ())) if symbols is not None else []
        within = [sym.start_byte <= m.start_byte < sym.end_byte for m in members]
        inside = [m for m, w in zip(members, within) if w]
        outside = [m for m, w in zip(members, within) if not w][:MAX_OUTLINE_MEMBERS]
        parts = [sym.text or _outline(sym, inside[:MAX_OUTLINE_MEMBERS], python, placeholder)]
        groups: dict[str | None, list[str]] = {}  # Rust impl blocks, Go methods (no container)
        for m in outside:
            groups.setdefault(m.container, []).append(m.signature + (placeholder if m.kind in FUNCTION_KINDS else ""))
        for container, signatures in groups.items():
            if container is None:
                parts += signatures
            else:
                parts.append(f"{container} {{\n" + "\n".join(_indent(s) for s in signatures) + "\n}")
        return "\n".join(parts)
    text = sym.text or sym.summary
    if sym.container is None:
        return text
    if python:
        return f"{sym.container}\n{_indent(text)}"
    return f"{sym.container} {{\n{_indent(text)}\n}}"


def _outline(sym: Symbol, members: list[Symbol], python: bool, placeholder: str) -> str:
    """A long class shown as its head, docstring and its members' signatures."""
    lines = []
    for m in members:
        if python:
            lines.append(_indent(m.signature + ("\n    ..." if m.kind in FUNCTION_KINDS else "")))
        else:
            lines.append(_indent(m.signature + (placeholder if m.kind in FUNCTION_KINDS else "")))
    if python:
        doc = [_indent(sym.docstring)] if sym.docstring else []
        return "\n".join([sym.signature] + doc + (lines or ["    ..."]))
    head = (sym.docstring + "\n" if sym.docstring else "") + sym.signature
    return head + " {\n" + "\n".join(lines) + ("\n" if lines else "") + "}"


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else line for line in text.split("\n"))


def module_outline(symbols: FileSymbols) -> list[str]:
    """A module as lines, one per public top-level definition in file order: its signature on
    one line (decorators dropped), `...` or the language's body placeholder after it."""
    spec = language_for_path(symbols.path)
    python = spec is not None and spec.python_docstrings
    lines = []
    for sym in sorted((s for s in symbols.definitions if s.parent is None), key=lambda s: s.start_byte):
        if sym.kind == "module" or sym.name.startswith("_"):  # private: another file rarely reaches for it
            continue
        head = [line for line in sym.signature.split("\n") if not (python and line.lstrip().startswith("@"))]
        head_text = _TRAILING_COMMA.sub(")", "\n".join(head).strip())  # one parameter per line, comma after the last
        line = _SPACE.sub(" ", head_text).replace("( ", "(").replace(" )", ")")
        if sym.kind in ("variable", "constant") and " = " in line:  # the value is not the outline's business
            line = line.split(" = ", 1)[0] + " = ..."
        if len(line) > OUTLINE_LINE_CHARS:
            line = line[: OUTLINE_LINE_CHARS - 3].rstrip() + "..."
        if python and line.endswith(":"):
            line += " ..."
        elif not python and spec is not None and (sym.kind in FUNCTION_KINDS or sym.kind in CLASS_KINDS):
            line += spec.body_placeholder
        lines.append(line)
        if len(lines) >= MAX_MODULE_OUTLINE:
            break
    return lines
