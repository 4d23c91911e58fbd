"""The sessions sidebar: the workspace's chats, most recent first; choosing one posts
`SessionList.Chosen`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Label, ListItem, ListView

from assistant.sessions import Session


class SessionItem(ListItem):
    def __init__(self, session: Session) -> None:
        super().__init__(Label(session.title, markup=False))
        self.session = session


class SessionList(ListView):
    """One row per session; the current one is highlighted."""

    BINDINGS = [
        Binding("delete", "screen.delete_session", "Delete chat", id="sessions.delete"),
        Binding("f2", "screen.rename_session", "Rename chat", id="sessions.rename"),
    ]

    @dataclass
    class Chosen(Message):
        session_id: int

    def show(self, sessions: Sequence[Session], current: int | None) -> None:
        self.clear()
        self.extend(SessionItem(s) for s in sessions)
        index = next((i for i, s in enumerate(sessions) if s.id == current), None)
        if index is not None:
            self.call_after_refresh(setattr, self, "index", index)

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, SessionItem):
            self.post_message(self.Chosen(event.item.session.id))

    @property
    def highlighted_session(self) -> Session | None:
        item = self.highlighted_child
        return item.session if isinstance(item, SessionItem) else None
