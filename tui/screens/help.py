"""The key bindings screen (`?` or F1): every binding the app defines, with its id, its keys and
what it does, grouped by where it applies."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


class HelpScreen(ModalScreen[None]):
    """A table of (where, keys, id, description); any of its own keys closes it."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    def __init__(self, groups: Sequence[tuple[str, Sequence[Binding]]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Key bindings (Esc closes)", id="title")
            yield DataTable(id="bindings", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("where", "keys", "id", "what it does")
        for where, bindings in self.groups:
            for b in bindings:
                keys = ", ".join(self.app.get_key_display(Binding(k.strip(), "")) for k in b.key.split(","))
                table.add_row(where, keys, b.id or "", b.description)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
