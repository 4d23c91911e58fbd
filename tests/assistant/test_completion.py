"""Where a completion stops: one line inside code, a block after an opener, no repeated suffix."""

from __future__ import annotations

import pytest

from assistant.completion import Cursor, complete, split_at, trim_overlap, wants_block
from engine.backend import GenerationEvent


def _events(*chunks: str):
    for c in chunks:
        yield GenerationEvent(text=c, token=0)
    yield GenerationEvent(finish_reason="length")


def test_split_at_is_one_based_and_clamps_columns() -> None:
    """LINE:COL are 1-based; a column past the line's end means its end."""
    cur = split_at("ab\ncd\n", 2, 2)
    assert (cur.prefix, cur.suffix) == ("ab\nc", "d\n")
    assert split_at("ab\ncd", 1, 99).prefix == "ab"
    with pytest.raises(ValueError, match="line 5 is outside the file"):
        split_at("a\n", 5, 1)


def test_block_wanted_after_an_opener_or_on_an_empty_line() -> None:
    """A block is wanted after 'def f():' or on a blank line, not in the middle of code."""
    assert wants_block(Cursor("def f():\n    ", ""))
    assert wants_block(Cursor("x = 1\n", "\n"))
    assert not wants_block(Cursor("x = foo(", ")\n"))
    assert not wants_block(Cursor("x = fo", "\n"))


def test_single_line_stops_at_the_newline() -> None:
    """Inside a line, the completion ends at the first newline and stops consuming tokens."""
    consumed = []

    def gen():
        for c in ["o(1, 2)", "\nprint", "(x)\n", "never"]:
            consumed.append(c)
            yield GenerationEvent(text=c)

    out = complete(gen(), Cursor("x = fo", "\n"))
    assert out.text == "o(1, 2)"
    assert consumed == ["o(1, 2)", "\nprint"]


def test_block_ends_at_dedent() -> None:
    """A block completion keeps the body and stops at the first line that dedents past the cursor."""
    cur = Cursor("def f(x):\n", "")
    out = complete(_events("    y = x + 1\n", "    return y\n", "\ndef g():\n", "    pass\n"), cur)
    assert out.text == "    y = x + 1\n    return y"


def test_never_repeats_the_text_after_the_cursor() -> None:
    """When the model writes what already follows the cursor, that part is dropped."""
    assert trim_overlap("a, b)", ")") == "a, b"
    assert trim_overlap("a, b):", "):") == "a, b"
    assert trim_overlap("hello", "") == "hello"
    out = complete(_events("1, 2)\n"), Cursor("foo(", ")\n"))
    assert out.text == "1, 2"
