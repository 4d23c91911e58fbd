"""The extract stage: one file's source in, its `FileSymbols` out; and, for the file being
edited, the references around the cursor with their positions (`references_in`). The language's query (`lsp/queries/<lang>.scm`)
does the matching: `@definition.<kind>` with `@name` (and `@receiver` for a Go method's type or a
C++ out-of-class method's class), `@import`, `@package`, and the `@reference*` captures. Here the
matches become records: nesting decides each definition's parent (definitions inside function
bodies are locals and are dropped), and each definition gets its signature (the head up to the
body), its docstring, its whole text when short, and a summary with the body elided."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tree_sitter import Node, QueryCursor, Tree

from lsp.imports import decode_imports
from lsp.languages import LanguageSpec
from lsp.symbols import CLASS_KINDS, FUNCTION_KINDS, FileSymbols, Import, Reference, Symbol

SHORT_LINES = 15
"""A definition this many lines or fewer is shown whole."""
SHORT_CHARS = 1200
MAX_SIGNATURE_LINES = 6
MAX_DOC_LINES = 10

# Nodes that wrap a definition and belong to its head: decorators, `export`, `template <...>`.
_WRAPPERS = frozenset({"decorated_definition", "export_statement", "template_declaration", "ambient_declaration"})
# Go's `const (...)`, `var (...)`, `type (...)` groups: a lone spec shows with its keyword.
_GO_GROUPS = frozenset({"const_declaration", "var_declaration", "type_declaration"})


@dataclass(frozen=True, slots=True)
class Extraction:
    """The symbols of one source and the syntax tree they came from."""

    symbols: FileSymbols
    tree: Tree


def parse(spec: LanguageSpec, source: bytes) -> Tree:
    """The syntax tree of `source`; tree-sitter recovers from errors, so this never fails."""
    return spec.parser().parse(source)


def reparse(spec: LanguageSpec, old_tree: Tree, old: bytes, new: bytes) -> Tree:
    """The tree of `new`, parsed incrementally from `old`'s tree (an editor's next version of a
    buffer differs by a keystroke or a paste, and re-parsing only around it takes a tenth of
    the time). `old_tree` is left as it was: readers may still hold it."""
    limit = min(len(old), len(new))
    low, high = 0, limit  # the common prefix, by bisection over memcmp-fast slice comparisons
    while low < high:
        mid = (low + high + 1) // 2
        if old[:mid] == new[:mid]:
            low = mid
        else:
            high = mid - 1
    start = low
    low, high = 0, limit - start  # the common suffix, not overlapping the prefix
    while low < high:
        mid = (low + high + 1) // 2
        if old[len(old) - mid:] == new[len(new) - mid:]:
            low = mid
        else:
            high = mid - 1
    old_end, new_end = len(old) - low, len(new) - low
    tree = old_tree.copy()
    tree.edit(start_byte=start, old_end_byte=old_end, new_end_byte=new_end, start_point=_point(old, start),
              old_end_point=_point(old, old_end), new_end_point=_point(new, new_end))
    return spec.parser().parse(new, tree)


def _point(source: bytes, byte: int) -> tuple[int, int]:
    """(row, column in bytes) of a byte offset, as tree-sitter counts them."""
    return source.count(b"\n", 0, byte), byte - (source.rfind(b"\n", 0, byte) + 1)


def extract(path: Path, source: bytes, spec: LanguageSpec, *, tree: Tree | None = None) -> Extraction:
    """Extract the definitions, imports and reference counts of one file."""
    if tree is None:
        tree = parse(spec, source)
    counts: Counter[bytes] = Counter()
    raw_defs: list[tuple[Node, str, Node, Node | None]] = []
    imports: list[Import] = []
    package: str | None = None
    for _, caps in QueryCursor(spec.index_query).matches(tree.root_node):
        ref = caps.get("reference") or caps.get("reference.type")
        if ref is not None:
            node = ref[0]
            counts[source[node.start_byte:node.end_byte]] += 1
            continue
        if "reference.member" in caps:
            node = caps["reference.member"][0]
            if node.type != "identifier":  # identifiers are counted by the plain pattern
                counts[source[node.start_byte:node.end_byte]] += 1
            continue
        if "import" in caps:
            imports.extend(decode_imports(spec.name, caps["import"][0], source))
            continue
        if "package" in caps:
            node = caps["package"][0]
            package = source[node.start_byte:node.end_byte].decode("utf-8", "replace")
            continue
        for capture, nodes in caps.items():
            if capture.startswith("definition."):
                receiver = caps.get("receiver")
                raw_defs.append((nodes[0], capture[11:], caps["name"][0], receiver[0] if receiver else None))
                break
    definitions = _definitions(path, source, spec, raw_defs)
    top: dict[str, list[Symbol]] = {}
    members: dict[str, list[Symbol]] = {}
    for sym in definitions:
        (top.setdefault(sym.name, []) if sym.parent is None else members.setdefault(sym.parent, [])).append(sym)
    symbols = FileSymbols(
        path=path, language=spec.name, definitions=tuple(definitions), imports=tuple(imports),
        references={k.decode("utf-8", "replace"): v for k, v in counts.items()}, package=package,
        size=len(source), digest=hash(source), top_level={k: tuple(v) for k, v in top.items()},
        members={k: tuple(v) for k, v in members.items()},
    )
    return Extraction(symbols, tree)


def references_in(tree: Tree, source: bytes, spec: LanguageSpec, ranges: list[tuple[int, int]]) -> list[Reference]:
    """Every reference within the byte `ranges` of a parsed file, with its line, qualifier
    and kind, in source order; names inside import statements are not uses and are left out."""
    positioned: dict[int, Reference] = {}
    cursor = QueryCursor(spec.query)
    for start, end in _merged(ranges):
        cursor.set_byte_range(start, end)
        import_span = (0, 0)
        for _, caps in cursor.matches(tree.root_node):
            if "import" in caps:
                node = caps["import"][0]
                import_span = (node.start_byte, node.end_byte)
                continue
            first = next(iter(caps.values()))[0]
            if import_span[0] <= first.start_byte < import_span[1] or not start <= first.start_byte < end:
                continue
            ref = caps.get("reference")
            if ref is None:
                _positioned_reference(caps, source, positioned)
            elif first.start_byte not in positioned:
                positioned[first.start_byte] = Reference(_text(first, source), first.start_point[0], first.start_byte)
    return sorted(positioned.values(), key=lambda r: r.byte)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _positioned_reference(caps: dict[str, list[Node]], source: bytes, out: dict[int, Reference]) -> None:
    """Record a call, type or qualified reference at its byte, refining a plain one there."""
    if "reference.member" in caps:
        node, qualifier = caps["reference.member"][0], caps["reference.qualifier"][0]
        qual = source[qualifier.start_byte:qualifier.end_byte].decode("utf-8", "replace")
        if not _is_dotted(qual):
            return
        prior = out.get(node.start_byte)
        kind = prior.kind if prior is not None else "name"
        out[node.start_byte] = Reference(_text(node, source), node.start_point[0], node.start_byte, qual, kind)
        return
    for capture, kind in (("reference.call", "call"), ("reference.type", "type")):
        if capture in caps:
            node = caps[capture][0]
            prior = out.get(node.start_byte)
            known = prior.qualifier if prior is not None else None
            out[node.start_byte] = Reference(_text(node, source), node.start_point[0], node.start_byte, known, kind)


def _is_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.replace("::", ".").split("."))


def _text(node: Node, source: bytes) -> str:
    return source[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _definitions(path: Path, source: bytes, spec: LanguageSpec,
                 raw: list[tuple[Node, str, Node, Node | None]]) -> list[Symbol]:
    """Records for the captured definitions, nested ones given their parent, locals dropped."""
    raw.sort(key=lambda item: (item[0].start_byte, -item[0].end_byte))
    out: list[Symbol] = []
    seen: set[tuple[int, bytes]] = set()
    # Open definitions enclosing the current one: (end byte, kind, name, signature).
    stack: list[tuple[int, str, str, str]] = []
    for node, kind, name_node, receiver in raw:
        key = (node.start_byte, source[name_node.start_byte:name_node.end_byte])
        if key in seen:
            continue
        seen.add(key)
        while stack and stack[-1][0] <= node.start_byte:
            stack.pop()
        parent = container = None
        if stack:
            if stack[-1][1] in FUNCTION_KINDS:
                continue  # a local of a function body: never referenced from another file
            parent, container = stack[-1][2], stack[-1][3]
        if receiver is not None:
            parent = _text(receiver, source).rsplit("::", 1)[-1]
        if kind == "function" and parent is not None:
            kind = "method"
        sym = _symbol(path, source, spec, node, kind, _text(name_node, source), parent, container)
        if kind in CLASS_KINDS or kind in FUNCTION_KINDS:
            stack.append((node.end_byte, kind, sym.name, sym.signature))
        if kind != "impl":  # an impl block only names its members' parent
            out.append(sym)
    return out


def _symbol(path: Path, source: bytes, spec: LanguageSpec, node: Node, kind: str, name: str,
            parent: str | None, container: str | None) -> Symbol:
    outer = node
    while outer.parent is not None and outer.parent.type in _WRAPPERS:
        outer = outer.parent
    keyword = ""
    group = outer.parent
    if group is not None and group.type in _GO_GROUPS:
        if group.named_child_count == 1:
            outer = group
        else:
            keyword = _text(group.children[0], source) + " "
    column = outer.start_point[1]
    body = node.child_by_field_name("body")
    head_end = body.start_byte if body is not None and body.start_byte > outer.start_byte else outer.end_byte
    signature = _clip(keyword + _dedent(source[outer.start_byte:head_end].decode("utf-8", "replace"), column))
    docstring = _python_docstring(body, source) if spec.python_docstrings else _doc_comment(outer, spec, source)
    whole = keyword + _dedent(_text(outer, source), column)
    after = outer.next_sibling
    if after is not None and after.type == ";" and not after.is_named:  # C's `struct s {...};`
        whole += ";"
    text = None
    if outer.end_point[0] - outer.start_point[0] < SHORT_LINES and len(whole) <= SHORT_CHARS:
        text = whole if spec.python_docstrings or docstring is None else f"{docstring}\n{whole}"
    end_line = outer.end_point[0]
    if outer.end_point[1] == 0 and end_line > outer.start_point[0]:
        end_line -= 1  # the node ends with its newline (C macros)
    return Symbol(
        name=name, kind=kind, path=path, signature=signature, docstring=docstring,
        start_byte=outer.start_byte, end_byte=outer.end_byte,
        start_line=outer.start_point[0], end_line=end_line,
        parent=parent, container=container, text=text,
        summary=_summary(spec, signature, docstring, body is not None and head_end < outer.end_byte),
    )


def _summary(spec: LanguageSpec, signature: str, docstring: str | None, has_body: bool) -> str:
    if spec.python_docstrings:
        if not has_body:
            return signature
        doc = f"\n    {docstring}" if docstring else ""
        return f"{signature.rstrip()}{doc}\n    ..."
    head = f"{docstring}\n" if docstring else ""
    return head + signature.rstrip() + (spec.body_placeholder if has_body else "")


def _dedent(text: str, column: int) -> str:
    """Remove the definition's own indentation (its first line was sliced past it)."""
    if column == 0 or "\n" not in text:
        return text.rstrip()
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        stripped = len(line) - len(line.lstrip(" \t"))
        out.append(line[min(column, stripped):])
    return "\n".join(out).rstrip()


def _clip(signature: str) -> str:
    lines = signature.rstrip().split("\n")
    if len(lines) > MAX_SIGNATURE_LINES:
        return "\n".join(lines[:MAX_SIGNATURE_LINES]) + " ..."
    return "\n".join(lines)


def _python_docstring(body: Node | None, source: bytes) -> str | None:
    if body is None or body.named_child_count == 0:
        return None
    first = body.named_children[0]
    if first.type != "expression_statement" or first.named_child_count != 1:
        return None
    string = first.named_children[0]
    if string.type != "string":
        return None
    doc = _dedent(_text(string, source), string.start_point[1])
    lines = doc.split("\n")
    if len(lines) > MAX_DOC_LINES:
        # Keep the opening paragraph and close the literal with the same quotes.
        cut = next((i for i, line in enumerate(lines[1:MAX_DOC_LINES], 1) if not line.strip()), MAX_DOC_LINES - 1)
        quote = '"""' if doc.lstrip("rRbBuUfF").startswith('"""') else "'''"
        doc = "\n".join(lines[:cut] + [quote])
    return doc


def _doc_comment(outer: Node, spec: LanguageSpec, source: bytes) -> str | None:
    """The block of comments that ends on the line right before the definition."""
    parts: list[Node] = []
    row = outer.start_point[0]
    previous = outer.prev_named_sibling
    while previous is not None and previous.type in spec.comment_types and previous.end_point[0] >= row - 1:
        parts.append(previous)
        row = previous.start_point[0]
        previous = previous.prev_named_sibling
    if not parts:
        return None
    parts.reverse()
    doc = source[parts[0].start_byte:parts[-1].end_byte].decode("utf-8", "replace")
    doc = _dedent(doc, parts[0].start_point[1])
    lines = doc.split("\n")
    return "\n".join(lines[-MAX_DOC_LINES:])
