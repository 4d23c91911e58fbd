"""Fixtures for the TUI tests: an isolated home, a small workspace, and an app factory that runs
the real app over a scripted model (or a real one), with its own sessions database."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from assistant.approval import ApprovalRules
from assistant.sessions import SessionStore
from assistant.settings import load_settings
from assistant.tools import CodeIndexBuilder
from tests.tui.scripted import Reply, ScriptedBackend, ScriptedModel
from tui.app import AssistantApp, make_app
from tui.runtime import Loader


@pytest.fixture(autouse=True)
def isolated_home(user_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings, rules and data dirs resolve into the test's temporary home, never the real one."""
    for key, value in user_dirs.items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("ASSISTANT_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "calc.py").write_text(
        '"""A tiny calculator."""\n\n\ndef add(a, b):\n    return a + b\n\n\n'
        "def sub(a, b):\n    return a - b\n\n\n"
        "def mul(a, b):\n    return a * b\n\n\n"
        "def div(a, b):\n    return a / b\n"
    )
    return root


AppFactory = Callable[..., tuple[AssistantApp, ScriptedBackend]]


@pytest.fixture
def make_scripted_app(workspace: Path, tmp_path: Path) -> AppFactory:
    """Build the app over a scripted model; the same `db` path reopens the same sessions."""

    def make(replies: Sequence[Reply | str] = (), *, db: Path | None = None, loader: Loader | None = None,
             code_index: CodeIndexBuilder | None = None, **settings: Any):
        """`loader` loads any model other than the settings' first one (which is the scripted one)."""
        backend = ScriptedBackend(replies)
        store = SessionStore(db or tmp_path / "sessions.sqlite3")
        rules = ApprovalRules(tmp_path / "approvals.toml")
        first = load_settings(**settings)

        def load(s: Any) -> Any:
            return ScriptedModel(backend) if loader is None or s.model == first.model else loader(s)

        app = make_app(first, workspace=workspace, loader=load, store=store, rules=rules, code_index=code_index)
        return app, backend

    return make
