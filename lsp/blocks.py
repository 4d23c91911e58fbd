"""Whether the cursor opens a block, read from the syntax tree.

A completion is a whole block when the cursor sits on an empty line right after the token that
opens a body (Python's `:` ending a `def`/`if`/`for`… header, a `{` of a function, class or
control statement, Ruby-style `do`/`then`), and a single line otherwise. The tree tells a block
`:` from a slice or a type annotation and a body `{` from a dict or an object literal only in
part (both open something worth several lines), and it keeps tokens inside strings and comments
out of the decision, which the plain-text rule cannot.
"""

from __future__ import annotations

from pathlib import Path

from tree_sitter import Node

from lsp.languages import language_for_path

_OPENING_TOKENS = frozenset({":", "{", "do", "then", "=>", "->", "("})
_NOT_A_BODY = frozenset({"slice", "subscript", "pair", "dictionary", "type", "lambda", "keyword_argument"})


def _last_leaf_before(node: Node, byte: int) -> Node | None:
    """The last token with text that ends at or before `byte` (zero-width MISSING/empty nodes skipped)."""
    for child in reversed(node.children):
        if child.start_byte >= byte or child.end_byte == child.start_byte:
            continue
        if not child.child_count:
            return child if child.end_byte <= byte else None
        found = _last_leaf_before(child, byte)
        if found is not None:
            return found
    return None


def opens_block(path: Path | str, prefix: str) -> bool | None:
    """True when `prefix` ends on an empty line after a body-opening token; None without a grammar."""
    spec = language_for_path(path)
    if spec is None:
        return None
    line = prefix.rsplit("\n", 1)[-1]
    if line.strip() or "\n" not in prefix:
        return False  # code on the cursor's line: complete the line
    source = prefix.encode("utf-8")
    tree = spec.parser().parse(source)
    leaf = _last_leaf_before(tree.root_node, len(source))
    if leaf is None or leaf.type in spec.comment_types or leaf.parent is None:
        return False
    if leaf.type not in _OPENING_TOKENS:
        return False
    return leaf.parent.type not in _NOT_A_BODY
