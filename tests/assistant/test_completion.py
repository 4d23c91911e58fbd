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


def test_prefix_window_start_stays_put_while_typing() -> None:
    """The prompt's window into a long file starts at a line start that does not move while the
    user types (so the cached prompt is reused up to the cursor), keeps at most the asked size,
    and moves in steps of whole blocks of lines as the cursor goes down the file."""
    from assistant.completion import window

    lines = [f"line_{i:04d} = {i}\n" for i in range(600)]  # 16 characters each
    text = "".join(lines)
    starts = set()
    for typed in ("", "v", "va", "val", "value = compute("):
        cur = window(Cursor(text + typed, "\n"), prefix_chars=4000)
        assert cur.prefix.endswith(typed) and len(cur.prefix) <= 4000
        assert cur.prefix.startswith("line_")
        starts.add(cur.prefix.split("\n", 1)[0])
    assert len(starts) == 1
    # a line further down moves the start by a whole block of lines, or not at all
    later = window(Cursor(text + "".join(f"more_{i:04d} = {i}\n" for i in range(10)), "\n"), prefix_chars=4000)
    first = later.prefix.split("\n", 1)[0]
    assert first in starts or int(first[5:9]) % 32 == 0
    # a file shorter than the window is kept whole
    assert window(Cursor("a = 1\nb = 2\n", "")).prefix == "a = 1\nb = 2\n"
