"""Chat sessions in SQLite, in the user data dir: each session's messages, saved as they stream.

A message is a row from the moment its first token arrives; while it streams, its text is
rewritten a few times a second and `complete` stays 0, so quitting or a crash mid-answer keeps
what was said (and shows it as interrupted). Messages keep the chat-template shape (role,
content, and for tool use `tool_calls`, `tool_call_id`, `name`) so a session is resent as it
was. One connection is shared by the UI thread and the inference worker, behind a lock; WAL
mode lets a second app on the same file read while this one writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    workspace TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    complete INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, id);
"""
_EXTRA_KEYS = ("tool_calls", "tool_call_id", "name", "status")


class SessionError(Exception):
    """The sessions database cannot be read or written."""


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("assistant")) / "sessions.sqlite3"


@dataclass(frozen=True)
class Session:
    id: int
    title: str
    workspace: str
    created: float
    updated: float


@dataclass(frozen=True)
class StoredMessage:
    """One saved message: the chat message it holds, and whether it finished streaming."""

    id: int
    session_id: int
    message: dict[str, Any]
    complete: bool


class SessionStore:
    """The sessions database; every method commits before it returns."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise SessionError(f"the sessions database {self.path} cannot be opened: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                self._db.commit()
            except sqlite3.DatabaseError as e:
                raise SessionError(f"the sessions database {self.path}: {e}") from None
            return cur

    # --- sessions -------------------------------------------------------------------------------

    def create(self, workspace: str, title: str = "New chat") -> Session:
        now = time.time()
        cur = self._run("INSERT INTO sessions (title, workspace, created, updated) VALUES (?, ?, ?, ?)",
                        (title, workspace, now, now))
        return Session(int(cur.lastrowid or 0), title, workspace, now, now)

    def sessions(self, workspace: str) -> list[Session]:
        """The workspace's sessions, most recently used first."""
        rows = self._run("SELECT id, title, workspace, created, updated FROM sessions WHERE workspace = ? "
                         "ORDER BY updated DESC, id DESC", (workspace,)).fetchall()
        return [Session(*row) for row in rows]

    def get(self, session_id: int) -> Session | None:
        row = self._run("SELECT id, title, workspace, created, updated FROM sessions WHERE id = ?",
                        (session_id,)).fetchone()
        return Session(*row) if row else None

    def rename(self, session_id: int, title: str) -> None:
        self._run("UPDATE sessions SET title = ? WHERE id = ?", (title.strip() or "Untitled", session_id))

    def delete(self, session_id: int) -> None:
        self._run("DELETE FROM sessions WHERE id = ?", (session_id,))

    def touch(self, session_id: int) -> None:
        self._run("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    # --- messages -------------------------------------------------------------------------------

    def add(self, session_id: int, message: dict[str, Any], *, complete: bool = True) -> int:
        """Save a message (complete=False while it streams); returns its id."""
        extra = json.dumps({k: message[k] for k in _EXTRA_KEYS if k in message})
        cur = self._run("INSERT INTO messages (session_id, role, content, extra, complete, created) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (session_id, message["role"], message.get("content") or "", extra, int(complete), time.time()))
        self.touch(session_id)
        return int(cur.lastrowid or 0)

    def update(self, message_id: int, message: dict[str, Any], *, complete: bool) -> None:
        extra = json.dumps({k: message[k] for k in _EXTRA_KEYS if k in message})
        self._run("UPDATE messages SET content = ?, extra = ?, complete = ? WHERE id = ?",
                  (message.get("content") or "", extra, int(complete), message_id))

    def delete_from(self, session_id: int, message_id: int) -> None:
        """Forget the message and every later one (regenerate, edit and resend)."""
        self._run("DELETE FROM messages WHERE session_id = ? AND id >= ?", (session_id, message_id))

    def messages(self, session_id: int) -> list[StoredMessage]:
        rows = self._run("SELECT id, session_id, role, content, extra, complete FROM messages "
                         "WHERE session_id = ? ORDER BY id", (session_id,)).fetchall()
        out = []
        for mid, sid, role, content, extra, complete in rows:
            message: dict[str, Any] = {"role": role, "content": content}
            try:
                message.update(json.loads(extra))
            except json.JSONDecodeError as e:
                message["status"] = f"unreadable details: {e.msg}"
            out.append(StoredMessage(mid, sid, message, bool(complete)))
        return out
