"""The plain records the index is made of: a `Symbol` (one definition, with the text a prompt
shows for it), an `Import` (one name bound in a file by an import-like statement, in the same
shape for every language), a `Reference` (one use of a name at a position, kept only for the
file being edited), and `FileSymbols` (everything extracted from one file). All are frozen, so
readers on other threads can hold them while the index swaps in newer ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLASS_KINDS = frozenset({"class", "interface", "type", "impl"})
"""Kinds whose members name them as their parent (and get listed in their outline)."""
FUNCTION_KINDS = frozenset({"function", "method"})


@dataclass(frozen=True, slots=True)
class Symbol:
    """One definition in one file."""

    name: str
    kind: str
    """function, method, class, interface, type, variable, constant, field, macro or module."""
    path: Path
    signature: str
    """The definition's head up to its body (decorators and `export` included), dedented."""
    docstring: str | None
    """The Python docstring or the comment block right before the definition, as written."""
    start_byte: int
    end_byte: int
    start_line: int
    """0-based, like tree-sitter and LSP."""
    end_line: int
    parent: str | None = None
    """The enclosing class (or Go receiver, Rust impl type) name; None at the top level."""
    container: str | None = None
    """The enclosing class's signature, to show a member inside it."""
    text: str | None = None
    """The whole definition, dedented, when it is short enough to show whole."""
    summary: str = ""
    """Signature and docstring with the body elided: what a prompt shows of a long definition."""


@dataclass(frozen=True, slots=True)
class Import:
    """One binding made by an import-like statement.

    `module` is the module as written (`pkg.sub`, `./x`, `fmt`, `crate::a`, `com.acme`,
    `geo.h`); `name` the member bound from it, or None when the module itself is bound; `alias`
    the local name ("" when nothing is bound, as for `#include`, `import './side-effect'`, and
    wildcards, which bring in every name of the module)."""

    module: str
    name: str | None
    alias: str
    line: int
    level: int = 0
    """Python's leading dots in a relative import."""
    wildcard: bool = False
    kind: str = "import"
    """import, mod (Rust `mod x;`), include (C `"x.h"`), system (C `<x.h>`), static (Java)."""


@dataclass(frozen=True, slots=True)
class Reference:
    """One use of a name in the file being edited."""

    name: str
    line: int
    byte: int
    qualifier: str | None = None
    """`os.path` in `os.path.join`, `geo` in `geo::area`: what the name was reached through."""
    kind: str = "name"
    """name, call or type."""


@dataclass(frozen=True, slots=True)
class FileSymbols:
    """What the index knows of one file."""

    path: Path
    language: str
    definitions: tuple[Symbol, ...]
    imports: tuple[Import, ...]
    references: Mapping[str, int]
    """How often each name is used in the file."""
    package: str | None = None
    """The Go package or Java package the file declares."""
    size: int = 0
    digest: int = 0
    """`hash()` of the source bytes: tells whether a buffer's text is the one indexed."""
    mtime: float = 0.0
    edited_at: float | None = None
    """Wall-clock time of the last `update_file` (an edit), None for files only read from disk."""
    from_buffer: bool = False
    """The symbols come from an editor's buffer, which wins over the disk until released."""
    top_level: Mapping[str, tuple[Symbol, ...]] = field(default_factory=dict)
    """Definitions without a parent, by name."""
    members: Mapping[str, tuple[Symbol, ...]] = field(default_factory=dict)
    """Definitions by parent name, for class outlines."""
