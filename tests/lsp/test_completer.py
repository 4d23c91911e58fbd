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


def test_context_is_kept_while_typing_on_one_line(workspace) -> None:
    """Keystrokes on one line keep the dependency context (so the prompt's start, and the model's
    KV cache for it, stay the same); another line, or a change to a file it depends on, builds it
    again, and the change shows."""
    from lsp.completer import Completer
    from tests.lsp.conftest import count_words

    index = workspace({
        "b.py": "def helper(value):\n    return value * 2\n",
        "a.py": "from b import helper\n\n\ndef run(x):\n    y = helper(x)\n    \n",
    })
    completer = Completer(index)
    completer.count_tokens = count_words  # type: ignore[method-assign]  # no model needed to count
    a = index.root / "a.py"
    base = a.read_text()
    cursor = base.index("    \n") + 4
    try:
        seen = []
        for typed in ("", "r", "re", "ret", "return y"):
            text = base[:cursor] + typed + base[cursor:]
            ctx = completer.context_for(_req(text, cursor + len(typed), str(a)))
            seen.append(ctx)
        assert all(c is seen[0] for c in seen) and "def helper" in seen[0].snippets[0].text
        # the line above: built again
        other = completer.context_for(_req(base, base.index("y = helper"), str(a)))
        assert other is not seen[0]
        # the dependency changes on disk (the watcher's update): built again, with the change
        index.update_file(index.root / "b.py", "def helper(value, scale=3):\n    return value * scale\n")
        again = completer.context_for(_req(base, base.index("y = helper"), str(a)))
        assert again is not other and "scale=3" in again.snippets[0].text
    finally:
        completer.close()
