"""The syntax tree decides between a one-line and a block completion."""

from __future__ import annotations

import pytest

from lsp.blocks import opens_block


@pytest.mark.parametrize(
    ("path", "prefix", "block"),
    [
        ("a.py", "def f(x):\n    ", True),
        ("a.py", "class A:\n    def g(self):\n        ", True),
        ("a.py", "x = 1\n", False),
        ("a.py", 's = "a:"\n', False),
        ("a.py", "# note:\n", False),
        ("a.py", "x = y[1:\n", False),
        ("a.py", "def f(x):\n    return x", False),
        ("a.js", "function f() {\n  ", True),
        ("a.go", "func f() {\n\t", True),
        ("a.rs", "fn main() {\n    ", True),
        ("a.c", "int main(void) {\n    ", True),
    ],
)
def test_block_after_an_opener_only(path: str, prefix: str, block: bool) -> None:
    """A body opener right before an empty cursor line means a block; strings, comments and slices don't."""
    assert opens_block(path, prefix) is block


def test_unknown_language_defers_to_text_rules() -> None:
    """A file without a grammar gets None, so the plain-text rule decides."""
    assert opens_block("notes.txt", "x:\n") is None
