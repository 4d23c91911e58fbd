"""The model picker: bundled models, the names in the settings, or a path to a GGUF file.
Dismisses with the chosen name or path; the chat loads it in a worker."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from assistant.settings import Settings
from models import catalog


class ModelPicker(ModalScreen[str | None]):
    """Choose the model the chat runs."""

    CSS_PATH = "models.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="models.cancel")]

    def __init__(self, settings: Settings, current: str) -> None:
        super().__init__()
        self.settings = settings
        self.current = current

    def compose(self) -> ComposeResult:
        options = []
        for m in catalog.BUNDLED:
            status = catalog.status(m, self.settings.cache_dir)
            mark = "● " if m.name == self.current else "  "
            options.append(Option(f"{mark}{m.name}  {m.title}  [{status}]", id=m.name))
        for name, path in self.settings.models.items():
            mark = "● " if name == self.current else "  "
            options.append(Option(f"{mark}{name}  {path}", id=name))
        with Vertical(id="dialog"):
            yield Label("Choose a model (Enter), or type a .gguf path below")
            yield OptionList(*options, id="choices")
            yield Input(placeholder="/path/to/model.gguf", id="path")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    @on(Input.Submitted)
    def _path(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip()).expanduser()
        if not path.is_file():
            self.notify(f"{path}: no such file", severity="error")
            return
        self.dismiss(str(path))

    def action_cancel(self) -> None:
        self.dismiss(None)
