"""The status bar: model and backend, decode speed, context used of the window, and state
(loading, thinking, waiting for approval)."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class StatusBar(Static):
    """One line at the bottom of the chat."""

    model: reactive[str] = reactive("no model")
    backend: reactive[str] = reactive("")
    note: reactive[str] = reactive("")
    speed: reactive[float] = reactive(0.0)
    used: reactive[int] = reactive(0)
    window: reactive[int] = reactive(0)
    state: reactive[str] = reactive("")

    def render(self) -> str:
        parts = [self.model + (f" ({self.backend})" if self.backend else "")]
        parts.append(f"{self.speed:.1f} tok/s" if self.speed else "– tok/s")
        parts.append(f"ctx {self.used}/{self.window}" if self.window else "ctx –")
        parts += [p for p in (self.note, self.state) if p]
        return " │ ".join(parts)
