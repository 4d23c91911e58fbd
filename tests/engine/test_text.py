"""Streaming text helpers: stop strings across chunk boundaries and incremental UTF-8."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.text import StopMatcher, Utf8Stream


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


@given(
    text=st.text(alphabet="ab\n<|>x", max_size=40),
    stops=st.lists(st.text(alphabet="ab\n<|>", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 60), max_size=10),
)
def test_stop_matcher_equals_cutting_at_the_first_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    """However the text is chunked, the output is the text up to the earliest stop string."""
    m = StopMatcher(stops)
    out = "".join(m.feed(c) for c in _chunks(text, cuts)) + m.flush()
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    assert out == expected
    assert m.stopped == bool(hits)


def test_stop_matcher_holds_back_only_possible_starts() -> None:
    """Text that cannot begin a stop string is released at once; a possible start waits."""
    m = StopMatcher(["<|end|>"])
    assert m.feed("hello <") == "hello "
    assert m.feed("|en") == ""
    assert m.feed("x") == "<|enx"


@given(st.text(max_size=30), st.lists(st.integers(0, 200), max_size=12))
def test_utf8_stream_reassembles_any_split(text: str, cuts: list[int]) -> None:
    """Bytes cut anywhere, even inside a character, decode to the original text with no U+FFFD."""
    data = text.encode("utf-8")
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    s = Utf8Stream()
    out = "".join(s.feed(data[a:b]) for a, b in zip(points, points[1:])) + s.flush()
    assert out == text


def test_utf8_stream_replaces_invalid_bytes() -> None:
    """Invalid bytes become U+FFFD instead of raising."""
    s = Utf8Stream()
    assert s.feed(b"ok\xff") == "ok\ufffd"
    assert s.feed(b"\xe4\xb8") == ""
    assert s.flush() == "\ufffd"
