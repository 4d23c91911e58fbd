"""The completer's typed-through cache: typing what the ghost text shows needs no new generation."""

from __future__ import annotations

from pathlib import Path

from lsp.completer import Request, _Shown


def _req(text: str, offset: int, path: str = "/w/a.py") -> Request:
    return Request(uri="file://" + path, path=Path(path), version=1, text=text, offset=offset)


def test_typing_the_suggestion_returns_its_rest() -> None:
    """After typing the start of the shown suggestion, the rest of it is the answer."""
    shown = _Shown(Path("/w/a.py"), "x = fo", "\n", "o(1, 2)")
    assert shown.continued(_req("x = foo\n", 7)) == "(1, 2)"
    assert shown.continued(_req("x = foo(\n", 8)) == "1, 2)"
    assert shown.continued(_req("x = foo(1\n", 9)) == ", 2)"


def test_diverging_or_moving_asks_the_model_again() -> None:
    """Typing something else, another file, a changed suffix or a finished suggestion gives no cached answer."""
    shown = _Shown(Path("/w/a.py"), "x = fo", "\n", "o(1, 2)")
    assert shown.continued(_req("x = fox\n", 7)) is None
    assert shown.continued(_req("x = foo(\n", 7, "/w/b.py")) is None
    assert shown.continued(_req("x = foo(\ny = 2\n", 7)) is None
    assert shown.continued(_req("x = foo(1, 2)\n", 13)) is None
    assert shown.continued(_req("x = f\n", 5)) is None
