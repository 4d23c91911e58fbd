"""The prompt: a multi-line input where Enter sends, Shift+Enter or Ctrl+J starts a new line, and
Up/Down on the first/last line walk through what was sent before (the history of the session).

Its keys are priority bindings, so they are seen before the text area turns Enter into a
newline; pasting is the text area's own (a bracketed paste arrives as one edit)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """Where the user writes; posts `PromptInput.Submitted` on Enter."""

    BINDINGS = [
        Binding("enter", "submit", "Send", id="prompt.send", priority=True),
        Binding("shift+enter,ctrl+j", "newline", "New line", id="prompt.newline", priority=True, show=False),
        Binding("up", "history_previous", "Previous message", id="prompt.history_previous", priority=True,
                show=False),
        Binding("down", "history_next", "Next message", id="prompt.history_next", priority=True, show=False),
    ]

    @dataclass
    class Submitted(Message):
        """The user sent `text` (already stripped, never empty)."""

        prompt: PromptInput
        text: str

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore[arg-type]
        self.sent: list[str] = []
        self._position: int | None = None  # index into history while walking it
        self._draft = ""

    def action_submit(self) -> None:
        text = self.text.strip()
        if not text:
            return
        self.post_message(self.Submitted(self, text))
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._position = None
        self.clear()

    def action_newline(self) -> None:
        self.insert("\n")

    def action_history_previous(self) -> None:
        if self.cursor_location[0] > 0 or not self.sent:
            self.action_cursor_up()
            return
        if self._position is None:
            self._draft = self.text
            self._position = len(self.sent)
        self._position = max(0, self._position - 1)
        self._show(self.sent[self._position])

    def action_history_next(self) -> None:
        if self.cursor_location[0] < self.document.line_count - 1 or self._position is None:
            self.action_cursor_down()
            return
        self._position += 1
        if self._position >= len(self.sent):
            self._position = None
            self._show(self._draft)
        else:
            self._show(self.sent[self._position])

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)
