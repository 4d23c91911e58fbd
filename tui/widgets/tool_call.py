"""A tool call in the chat: collapsed to its name and arguments, expanding to its result.

The title carries the state: waiting for the user, running, done, failed or rejected. Results
are shown as plain text (diffs with diff highlighting), never as Markdown: a file's content is
data, not formatting."""

from __future__ import annotations

import json
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual.widgets import Collapsible, Static

_MARKS = {"waiting": "?", "running": "…", "done": "✓", "failed": "✗", "rejected": "⊘"}
_ARGS_SHOWN = 60


def summarize_arguments(arguments: dict[str, Any]) -> str:
    """`path=src/a.py, start_line=3` cut to fit one title line."""
    parts = []
    for key, value in arguments.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        shown = shown.replace("\n", "⏎")
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= _ARGS_SHOWN else text[: _ARGS_SHOWN - 1] + "…"


class ToolCallView(Collapsible):
    """One call and, once it ran, its result."""

    def __init__(self, name: str, arguments: dict[str, Any], *, state: str = "running", result: str = "") -> None:
        self.name_ = name
        self.arguments = arguments
        self.state = state
        self.result = result
        super().__init__(Static(self._body(), classes="tool-result"), title=self._heading(), collapsed=True,
                         classes=f"tool-call {state}")

    def _heading(self) -> str:
        return f"{_MARKS.get(self.state, '')} {self.name_}({summarize_arguments(self.arguments)})"

    def _body(self) -> Text | Syntax:
        args = json.dumps(self.arguments, indent=2, ensure_ascii=False)
        if not self.result:
            return Text(f"arguments: {args}", style="dim")
        if self.result.lstrip().startswith(("--- ", "@@ ")):
            return Syntax(self.result, "diff", theme="ansi_dark", word_wrap=True)
        return Text(self.result)

    def set_state(self, state: str, result: str | None = None) -> None:
        self.remove_class(self.state)
        self.state = state
        self.add_class(state)
        if result is not None:
            self.result = result
        self.title = self._heading()
        self.query_one(".tool-result", Static).update(self._body())
