"""One chat message: the user's words, or the assistant's answer streamed as Markdown (code
blocks highlighted, each with its own copy button: `tui.widgets.code_block`). An answer that
stopped early (Esc, or the app quit or crashed while it streamed) carries a note saying so."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Markdown
from textual.widgets.markdown import MarkdownStream

from tui.widgets.code_block import ChatMarkdown, CodeBlock


class MessageView(Vertical):
    """A message with its role as a border title; `append`/`rewind` stream an answer into it."""

    def __init__(self, role: str, text: str = "", *, note: str = "") -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.note = note
        self.border_title = {"user": "you", "assistant": "assistant"}.get(role, role)
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield ChatMarkdown(self.text, classes="body")
        yield Label(self.note, classes="note")

    def on_mount(self) -> None:
        self.query_one(".note", Label).display = bool(self.note)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    async def append(self, delta: str) -> None:
        """Add streamed text (MarkdownStream batches updates when they come faster than paints)."""
        self.text += delta
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(delta)

    async def rewind(self, text: str) -> None:
        """Replace the whole text (the agent cut a tool call out of the answer)."""
        await self.finish()
        self.text = text
        await self.markdown.update(text)

    async def finish(self, note: str = "") -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if note:
            self.set_note(note)

    def set_note(self, note: str) -> None:
        self.note = note
        label = self.query_one(".note", Label)
        label.update(note)
        label.display = bool(note)

    def code_blocks(self) -> list[CodeBlock]:
        """The message's code blocks as shown (a streaming answer's may lag its text a little)."""
        return list(self.query(CodeBlock))
