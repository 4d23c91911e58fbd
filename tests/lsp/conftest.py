"""Fixtures for the code index tests: workspaces written file by file into `tmp_path`, a
token counter that needs no model, and the context at a cursor marked in a file's text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lsp.context import Context, build_context
from lsp.index import CodeIndex

CURSOR = "<|>"


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` (relative path -> text or bytes) under `root`, cursor markers removed."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace(CURSOR, ""), encoding="utf-8")
    return root


def _context_at(index: CodeIndex, files: dict[str, str | bytes], rel: str, *, max_tokens: int = 2000) -> Context:
    marked = files[rel]
    assert isinstance(marked, str) and CURSOR in marked, f"{rel} has no cursor marker"
    offset = marked.index(CURSOR)
    return build_context(index, rel, marked.replace(CURSOR, ""), offset, max_tokens=max_tokens,
                         count_tokens=count_words)


@pytest.fixture
def context_at() -> Callable[..., Context]:
    """`context_at(index, files, rel, max_tokens=...)`: the context for the cursor marked with
    `<|>` in `files[rel]`, as an editor would ask for it."""
    return _context_at


@pytest.fixture
def workspace(tmp_path: Path) -> Callable[[dict[str, str | bytes]], CodeIndex]:
    """Write a workspace and return its built index."""
    def make(files: dict[str, str | bytes]) -> CodeIndex:
        write_tree(tmp_path / "ws", files)
        index = CodeIndex(tmp_path / "ws")
        index.build()
        return index

    return make
