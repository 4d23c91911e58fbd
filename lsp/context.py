"""The completion context: the definitions from other files that the code around the cursor
depends on, ranked and cut to a token budget. `build_context` runs the pipeline's stages on the
editor's text: extract (parse the buffer, find the enclosing function and class, collect the
names used there and in the lines near the cursor), resolve (through the buffer's own imports,
then wildcard imports and includes, then the package's other files, then a definition unique in
the workspace), rank (import kind, distance from the cursor, use count, how recently the
defining file was edited), fit the budget, and return the kept snippets in a stable order (by
path, then position) so that successive requests render the same prompt prefix and the engine's
KV prefix cache keeps hitting. The next line often reaches for a name the code so far does not
use (`nodes.Or` where the function used only `nodes.Const`), so the context also shows what the
file imports: an outline (one line per public top-level definition) of each workspace module it
imports, in a fixed share of the budget and cut to it, and, after the definitions the cursor's
code uses, the definitions it imports by name and does not use there yet. The outlines depend
on the file's imports only, not on the cursor, and come first in the prompt, so they stay put
while the user moves around the file. `render_files` turns a context into the (path, text) pairs that a
FIM prompt puts before the current file."""

from __future__ import annotations

import builtins
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tree_sitter import Node

from lsp.extract import extract, references_in
from lsp.index import CodeIndex
from lsp.languages import LanguageSpec, language_for_path
from lsp.render import module_outline, render_symbol
from lsp.resolve import (
    binding_target, find_definitions, member_definitions, module_files, package_files, submodule_files,
)
from lsp.symbols import CLASS_KINDS, FileSymbols, Import, Reference, Symbol

WINDOW_BEFORE = 40
"""Lines above the cursor whose names count even outside the enclosing function."""
WINDOW_AFTER = 10
MAX_CANDIDATES = 64
"""Candidates past this many (by score) are dropped without counting their tokens."""
WILDCARD_FILES = 64
"""How many files wildcard imports and includes may pull in, transitively."""
RECENCY_SECONDS = 900.0

_PY_BUILTINS = frozenset(dir(builtins))
_BASE = {"import": 1.0, "module": 1.0, "member": 0.9, "wildcard": 0.8, "package": 0.7, "workspace": 0.4,
         "outline": 0.3, "imported": 0.25}
OUTLINE_FILES = 4
"""A module import that stands for more files (a Go package, a directory) outlines this many."""
OUTLINE_SHARE = 0.4
"""The part of the context budget the outlines of imported modules may take (what they leave
goes to the definitions)."""
OUTLINE_MIN_TOKENS = 24
"""An outline is cut to the budget left, unless less than this would remain of it."""


@dataclass(frozen=True, slots=True)
class Snippet:
    """One definition as the prompt shows it."""

    path: Path
    text: str
    score: float
    reason: str
    start_byte: int = 0
    tokens: int = 0
    """What it cost against the budget (its text, plus its file's header if it opened one)."""
    outline: bool = False
    """A module's outline, one definition per line: the budget may keep only some of its lines."""


@dataclass(frozen=True)
class Context:
    """The snippets kept, in stable order (path, then position), and those that did not fit."""

    snippets: list[Snippet]
    dropped: list[Snippet]
    root: Path
    tokens: int = 0
    scope: str | None = field(default=None)
    """The name of the function (or class) enclosing the cursor, if any."""


@dataclass(slots=True)
class _Use:
    """How a name is used around the cursor."""

    count: int = 0
    distance: int = 1 << 30
    kind: str = "name"


def build_context(index: CodeIndex, path: Path | str, text: str, offset: int, *, max_tokens: int,
                  count_tokens: Callable[[str], int], now: float | None = None) -> Context:
    """The definitions from other files that the code at character `offset` of `text` (the
    editor's buffer of `path`) depends on, cut to `max_tokens` as counted by `count_tokens`."""
    path = index.normalize(path)
    spec = language_for_path(path)
    if spec is None or max_tokens <= 0:
        return Context([], [], index.root)
    now = time.time() if now is None else now
    offset = max(0, min(offset, len(text)))
    source = text.encode("utf-8", "surrogatepass")
    cursor_byte = len(text[:offset].encode("utf-8", "surrogatepass"))
    cursor_line = text.count("\n", 0, offset)
    held = index.buffer(path)  # the editor's text, parsed when the index took it
    if held is not None and held[0].digest == hash(source):
        symbols, tree = held
    else:
        extraction = extract(path, source, spec)
        symbols, tree = extraction.symbols, extraction.tree
    # Where the code around the cursor ends: typing at the end of a body, the cursor sits past
    # the function's last node, yet belongs to it.
    anchor = len(source[:cursor_byte].rstrip())
    ranges, scope = _scope_ranges(tree.root_node, spec, anchor)
    window = _line_window(source, cursor_byte)
    references = references_in(tree, source, spec, ranges + [window])
    uses = _uses(references, ranges, cursor_line)
    resolver = _Resolver(index, path, spec, symbols)
    candidates = resolver.resolve(uses)
    imported, modules = resolver.imported(uses)
    # The outlines first, in a share of the budget that does not depend on the cursor, so that
    # they read the same wherever it is in the file; the definitions get the rest.
    outlines, cut, outline_tokens = _fit(index, _outlines(index, modules, now), int(max_tokens * OUTLINE_SHARE),
                                         count_tokens)
    scored = _rank(index, candidates + imported, now)
    kept, dropped, used = _fit(index, scored, max_tokens - outline_tokens, count_tokens)
    return Context(outlines + kept, cut + dropped, index.root, outline_tokens + used, scope)


def render_files(context: Context) -> list[tuple[str, str]]:
    """(path relative to the workspace, text) for each file with kept snippets: first the
    outlines of imported modules (as stub files, `nodes.pyi` for Python), which stay the same
    wherever the cursor is in the file, then the definitions, in the context's stable order:
    the context files of a FIM prompt. Moving the cursor to another function changes only the
    second part, so the KV of the outlines is reused."""
    files: dict[tuple[bool, str], list[str]] = {}
    for snippet in sorted(context.snippets, key=lambda s: not s.outline):  # stable: path order within each
        files.setdefault((snippet.outline, _entry_name(context.root, snippet)), []).append(snippet.text)
    return [(rel, "\n\n".join(texts) + "\n") for (_, rel), texts in files.items()]


def _entry_name(root: Path, snippet: Snippet) -> str:
    rel = _relative(root, snippet.path)
    return rel + "i" if snippet.outline and rel.endswith(".py") else rel


# ---- extract: where the cursor is and which names are used there ---------------------------

def _scope_ranges(root: Node, spec: LanguageSpec, cursor_byte: int) -> tuple[list[tuple[int, int]], str | None]:
    """Byte ranges whose references count: the enclosing function, and the head of the
    enclosing class (its bases)."""
    node = root.descendant_for_byte_range(max(0, cursor_byte - 1), cursor_byte)
    function = klass = None
    while node is not None:
        if function is None and node.type in spec.function_types:
            function = node
        elif klass is None and node.type in spec.class_types:
            klass = node
        node = node.parent
    ranges = []
    scope = None
    if function is not None:
        ranges.append((function.start_byte, function.end_byte))
        scope = _node_name(function)
    if klass is not None:
        body = klass.child_by_field_name("body")
        ranges.append((klass.start_byte, body.start_byte if body is not None else klass.end_byte))
        scope = scope or _node_name(klass)
    return ranges, scope


def _line_window(source: bytes, cursor_byte: int) -> tuple[int, int]:
    """The bytes of the lines from WINDOW_BEFORE above the cursor's to WINDOW_AFTER below."""
    start = cursor_byte
    for _ in range(WINDOW_BEFORE + 1):
        newline = source.rfind(b"\n", 0, start)
        if newline < 0:
            start = 0
            break
        start = newline
    else:
        start += 1
    end = cursor_byte
    for _ in range(WINDOW_AFTER + 1):
        newline = source.find(b"\n", end)
        if newline < 0:
            end = len(source)
            break
        end = newline + 1
    return start, end


def _node_name(node: Node) -> str | None:
    """A definition node's name; C declares it inside nested declarators."""
    current: Node | None = node
    while current is not None:
        name = current.child_by_field_name("name")
        if name is not None and name.text is not None:
            return name.text.decode("utf-8", "replace")
        current = current.child_by_field_name("declarator")
        if current is not None and current.type in ("identifier", "field_identifier") and current.text:
            return current.text.decode("utf-8", "replace")
    return None


def _uses(references: list[Reference], ranges: list[tuple[int, int]],
          cursor_line: int) -> dict[tuple[str | None, str], _Use]:
    """(qualifier, name) -> how it is used, over the references in scope or near the cursor."""
    uses: dict[tuple[str | None, str], _Use] = {}
    low, high = cursor_line - WINDOW_BEFORE, cursor_line + WINDOW_AFTER
    for ref in references:
        if not (low <= ref.line <= high or any(a <= ref.byte < b for a, b in ranges)):
            continue
        use = uses.setdefault((ref.qualifier, ref.name), _Use())
        use.count += 1
        use.distance = min(use.distance, abs(ref.line - cursor_line))
        if ref.kind != "name":
            use.kind = ref.kind
    return uses


# ---- resolve: from names to definitions in other files -------------------------------------

@dataclass(slots=True)
class _Candidate:
    symbol: Symbol
    how: str
    name: str
    use: _Use
    via: str = ""


class _Resolver:
    """Resolves the names used at the cursor through one buffer's imports, memoizing what each
    import binds for the length of one request."""

    def __init__(self, index: CodeIndex, path: Path, spec: LanguageSpec, mine: FileSymbols) -> None:
        self.index, self.path, self.spec, self.mine = index, path, spec, mine
        self.aliases: dict[str, Import] = {imp.alias: imp for imp in mine.imports if imp.alias}
        self.targets: dict[str, tuple[list[Symbol], list[Path]]] = {}
        self._wildcard: list[Path] | None = None
        self._package: list[Path] | None = None

    def resolve(self, uses: dict[tuple[str | None, str], _Use]) -> list[_Candidate]:
        out: list[_Candidate] = []
        for (qualifier, name), use in uses.items():
            if qualifier is None:
                out += self._plain(name, use)
            else:
                out += self._qualified(qualifier, name, use)
        return [c for c in out if c.symbol.path != self.path]

    def imported(self, uses: dict[tuple[str | None, str], _Use]) -> tuple[list[_Candidate], list[tuple[Path, str]]]:
        """What the file imports beyond the names used at the cursor: the definitions it imports
        by name and does not use there, and the files of the workspace modules it imports
        (each with the name the file imports it as, for the reason)."""
        used = {(qualifier or name).split(".")[0] for qualifier, name in uses}
        out: list[_Candidate] = []
        modules: list[tuple[Path, str]] = []
        for alias, imp in self.aliases.items():
            symbols, files = self._target(alias)
            for file in files[:OUTLINE_FILES]:
                if file != self.path and all(file != f for f, _ in modules):
                    modules.append((file, alias))
            if alias not in used:
                out += [_Candidate(s, "imported", alias, _Use(), imp.module) for s in symbols if s.path != self.path]
        return out, modules

    def _target(self, alias: str) -> tuple[list[Symbol], list[Path]]:
        if alias not in self.targets:
            self.targets[alias] = binding_target(self.index, self.path, self.aliases[alias])
        return self.targets[alias]

    def _plain(self, name: str, use: _Use) -> list[_Candidate]:
        if name in self.mine.top_level:
            return []  # defined in this very file, which the prompt shows anyway
        if name in self.aliases:
            symbols, _ = self._target(name)
            return [_Candidate(s, "import", name, use, self.aliases[name].module) for s in symbols]
        found = [s for f in self._wildcard_files() for s in self._top(f, name)]
        if found:
            return [_Candidate(s, "wildcard", name, use) for s in found]
        if self._package is None:
            self._package = package_files(self.index, self.path)
        found = [s for f in self._package for s in self._top(f, name)]
        if found:
            return [_Candidate(s, "package", name, use) for s in found]
        if use.kind == "name" and not name[:1].isupper():
            return []  # most likely a local variable: only calls and types go workspace-wide
        if self.spec.python_docstrings and name in _PY_BUILTINS:
            return []  # print(), len(): never the workspace's own
        found = [s for s in self.index.definitions(name) if s.parent is None and s.path != self.path]
        if found and len({s.path for s in found}) == 1:
            return [_Candidate(s, "workspace", name, use) for s in found]
        return []

    def _qualified(self, qualifier: str, name: str, use: _Use) -> list[_Candidate]:
        alias = qualifier
        rest: list[str] = []
        while alias not in self.aliases and "." in alias:  # import pkg, then pkg.sub.f
            alias, _, last = alias.rpartition(".")
            rest.insert(0, last)
        if alias in self.aliases:
            symbols, files = self._target(alias)
            for part in rest:
                symbols, files = self._descend(symbols, files, part)
            via = self.aliases[alias].module
            if files:
                return [_Candidate(s, "module", name, use, via) for s in find_definitions(self.index, files, name)]
            return [_Candidate(s, "member", name, use, via) for s in member_definitions(self.index, symbols, name)]
        if self.spec.qualifier_members_are_names:  # geo::add: a namespace, not a module
            return self._plain(name, use)
        return []

    def _descend(self, symbols: list[Symbol], files: list[Path], part: str) -> tuple[list[Symbol], list[Path]]:
        if symbols:
            return member_definitions(self.index, symbols, part), []
        found = find_definitions(self.index, files, part)
        if found:
            return found, []
        return [], submodule_files(self.index, files, part)

    def _wildcard_files(self) -> list[Path]:
        """Files whose every name is visible here: wildcard imports and includes, transitively."""
        if self._wildcard is None:
            seen: list[Path] = []
            queue = [(self.path, imp) for imp in self.mine.imports if imp.wildcard]
            while queue and len(seen) < WILDCARD_FILES:
                file, imp = queue.pop(0)
                for target in module_files(self.index, file, imp):
                    if target in seen or target == self.path:
                        continue
                    seen.append(target)
                    symbols = self.index.file_symbols(target)
                    if symbols is not None:
                        queue += [(target, i) for i in symbols.imports if i.wildcard]
            self._wildcard = seen
        return self._wildcard

    def _top(self, path: Path, name: str) -> tuple[Symbol, ...]:
        symbols = self.index.file_symbols(path)
        return symbols.top_level.get(name, ()) if symbols is not None else ()


# ---- rank and fit -------------------------------------------------------------------------

def _rank(index: CodeIndex, candidates: list[_Candidate], now: float) -> list[Snippet]:
    """One scored snippet per definition (its best use wins), members of classes shown whole
    folded into their class."""
    best: dict[tuple[Path, int], tuple[float, _Candidate]] = {}
    for cand in candidates:
        sym = cand.symbol
        symbols = index.file_symbols(sym.path)
        edited = symbols.edited_at if symbols is not None else None
        proximity = 1.0 / (1.0 + cand.use.distance / 10.0)
        usage = min(1.0, math.log2(1 + cand.use.count) / 4.0)
        recency = math.exp(-max(0.0, now - edited) / RECENCY_SECONDS) if edited else 0.0
        score = round(_BASE[cand.how] * (1.0 + proximity + 0.5 * usage) + 0.5 * recency, 4)
        key = (sym.path, sym.start_byte)
        if key not in best or score > best[key][0]:
            best[key] = (score, cand)
    classes = {(c.symbol.path, c.symbol.name): key for key, (_, c) in best.items() if c.symbol.kind in CLASS_KINDS}
    for key, (score, cand) in list(best.items()):
        owner = classes.get((cand.symbol.path, cand.symbol.parent or ""))
        if owner is not None and owner != key and owner in best:  # its class's snippet shows it
            del best[key]
            if score > best[owner][0]:
                best[owner] = (score, best[owner][1])
    out = []
    for (path, start), (score, cand) in best.items():
        sym = cand.symbol
        reason = f"{sym.kind} {cand.name} ({cand.how}{' ' + cand.via if cand.via else ''}): " + (
            f"used {cand.use.count}x, {cand.use.distance} lines from the cursor" if cand.use.count else "not used here yet")
        out.append(Snippet(path, render_symbol(sym, index.file_symbols(path)), score, reason, start))
    return out


_OUTLINES: dict[tuple[Path, int, float], list[str]] = {}
_OUTLINES_KEPT = 256
_outlines_lock = threading.Lock()


def _module_outline(symbols: FileSymbols) -> list[str]:
    """`module_outline`, kept for the file's version (its digest): the same modules are
    outlined for every request in a file."""
    key = (symbols.path, symbols.digest, symbols.mtime)
    with _outlines_lock:
        lines = _OUTLINES.get(key)
    if lines is None:
        lines = module_outline(symbols)
        with _outlines_lock:
            if len(_OUTLINES) >= _OUTLINES_KEPT:
                _OUTLINES.pop(next(iter(_OUTLINES)))
            _OUTLINES[key] = lines
    return lines


def _outlines(index: CodeIndex, modules: list[tuple[Path, str]], now: float) -> list[Snippet]:
    """One snippet per imported module: its outline, before its definitions in the file."""
    out = []
    for path, module in modules:
        symbols = index.file_symbols(path)
        lines = _module_outline(symbols) if symbols is not None else []
        if not lines:
            continue
        edited = symbols.edited_at
        recency = math.exp(-max(0.0, now - edited) / RECENCY_SECONDS) if edited else 0.0
        out.append(Snippet(path, "\n".join(lines), round(_BASE["outline"] + 0.5 * recency, 4),
                           f"outline ({len(lines)} definitions): imported as {module}", -1,
                           outline=True))
    return out


def _fit(index: CodeIndex, snippets: list[Snippet], max_tokens: int,
         count_tokens: Callable[[str], int]) -> tuple[list[Snippet], list[Snippet], int]:
    """Keep the best snippets that fit the budget (a file's header costs once, with its first
    snippet; an outline is a file of its own), cutting an outline to what is left rather than
    dropping it; return them in stable order, the rest by score."""
    ranked = sorted(snippets, key=lambda s: (-s.score, _relative(index.root, s.path), s.start_byte))
    kept: list[Snippet] = []
    dropped: list[Snippet] = []
    opened: set[str] = set()
    used = 0
    for i, snip in enumerate(ranked):
        if i >= MAX_CANDIDATES:
            dropped.append(snip)
            continue
        entry = _entry_name(index.root, snip)
        header = 0 if entry in opened else count_tokens(entry + "\n") + 1
        body = count_tokens(snip.text) + 1  # the blank line between snippets
        if snip.outline and used + header + body > max_tokens:
            cut = _cut_outline(snip.text, max_tokens - used - header - 1, count_tokens)
            if cut:
                lines = cut.count("\n") + 1
                snip = replace(snip, text=cut, reason=snip.reason.replace(" (", f" ({lines} of ", 1))
                body = count_tokens(cut) + 1
        snip = replace(snip, tokens=header + body)
        if used + snip.tokens <= max_tokens:
            kept.append(snip)
            opened.add(entry)
            used += snip.tokens
        else:
            dropped.append(snip)
    kept.sort(key=lambda s: (_relative(index.root, s.path), s.start_byte))
    return kept, dropped, used


def _cut_outline(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The lines of an outline that fit `budget` tokens, taken in file order (a line too long
    for what is left is skipped, a shorter one after it may fit); "" when fewer than
    OUTLINE_MIN_TOKENS would. Lines are priced by their share of the whole text's tokens, then
    the cut is counted and, if the estimate was short, trimmed: two or three counts, not one
    per line (a tokenizer call each)."""
    lines = text.split("\n")
    per_char = count_tokens(text) / max(1, len(text))
    kept: list[str] = []
    used = 0.0
    for line in lines:
        cost = (len(line) + 1) * per_char
        if used + cost <= budget:
            kept.append(line)
            used += cost
    while kept:
        cut = "\n".join(kept)
        actual = count_tokens(cut)
        if actual <= budget:
            return cut if actual >= OUTLINE_MIN_TOKENS else ""
        over = actual - budget
        while kept and over > 0:  # drop lines from the end by their estimated cost
            over -= (len(kept.pop()) + 1) * per_char
    return ""


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
