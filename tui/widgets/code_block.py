"""A fenced code block in a chat message: highlighted (Textual's `MarkdownFence`), with a copy
button on its first line, and focusable, so Tab reaches each block and Enter or `c` copies it.

`ChatMarkdown` is Textual's Markdown widget with this block in place of the plain fence (its
`BLOCKS` table is the hook); blocks rebuilt while an answer streams keep working, since the
widget copies the code it is given, not the text on screen. Copying goes through
`App.copy_to_clipboard` (OSC 52 in a terminal)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, Markdown
from textual.widgets.markdown import MarkdownFence


class CodeBlock(MarkdownFence):
    """One code block; `copy` puts its code (without the fence lines) on the clipboard."""

    can_focus = True
    BINDINGS = [Binding("enter,c", "copy", "Copy code", id="code.copy")]
    DEFAULT_CSS = """
    CodeBlock > .copy-row {
        dock: top;
        width: 1fr;
        height: 1;
        padding: 0 1;
        align-horizontal: right;
    }
    CodeBlock .copy {
        width: auto;
        color: $text-muted;
    }
    CodeBlock .copy:hover {
        color: $accent;
        text-style: bold;
    }
    CodeBlock > #code-content {
        padding: 0 2 1 2;
    }
    CodeBlock:focus {
        background: $accent 12%;
    }
    CodeBlock:focus .copy {
        color: $accent;
    }
    """

    @dataclass
    class Copied(Message):
        """The block's code went to the clipboard."""

        block: CodeBlock
        code: str

    def compose(self) -> ComposeResult:
        with Horizontal(classes="copy-row"):
            yield Label("[copy]", classes="copy", markup=False)
        yield from super().compose()

    def on_click(self, event: events.Click) -> None:
        if event.widget is not None and event.widget.has_class("copy"):
            event.stop()
            self.action_copy()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.code)
        self.post_message(self.Copied(self, self.code))


class ChatMarkdown(Markdown):
    """Markdown whose code blocks are `CodeBlock`s."""

    BLOCKS = {**Markdown.BLOCKS, "fence": CodeBlock, "code_block": CodeBlock}
