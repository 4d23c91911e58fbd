"""Snapshot tests of the main screens at 80×24 (and the sidebar at 110×30), over the scripted model.

Run `pytest tests/tui/test_snapshots.py --snapshot-update` after a deliberate change to the look,
and review the SVGs under `__snapshots__/` (docs/tui.md shows one of them)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.approval import ApprovalRules
from assistant.cli import code_index_builder
from assistant.sessions import SessionStore
from assistant.settings import load_settings
from tests.tui.scripted import Reply, ScriptedBackend, ScriptedModel, tool_call, wait_for
from tui.app import make_app
from tui.widgets.prompt import PromptInput

CALC = ('"""A tiny calculator."""\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n'
        "def div(a, b):\n    return a / b\n")


@pytest.fixture
def snapshot_workspace() -> Path:
    """A workspace at a fixed path: the system prompt names it, and its length shows in the status bar."""
    root = Path(tempfile.gettempdir()) / "assistant-snapshot-workspace"
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    (root / "src" / "calc.py").write_text(CALC)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def scripted_app(replies, workspace: Path, tmp_path: Path):
    """The app as the CLI makes it (with the code index, so the prompt and its size are the same), over a script."""
    backend = ScriptedBackend(replies)
    return make_app(load_settings(), workspace=workspace, loader=lambda s: ScriptedModel(backend),
                    store=SessionStore(tmp_path / "s.sqlite3"), rules=ApprovalRules(tmp_path / "r.toml"),
                    code_index=code_index_builder())


def asking(text: str):
    async def run_before(pilot) -> None:
        app = pilot.app
        await wait_for(pilot, lambda: app.runtime is not None)
        app.screen.query_one(PromptInput).cursor_blink = False  # a blinking cursor makes two pictures
        app.screen.query_one(PromptInput).load_text(text)
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.screen_stack[1].busy or len(app.screen_stack) > 2)
        await pilot.pause(0.3)

    return run_before


ANSWER = ("`add` returns the sum of its two arguments:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
          "It works for any values that support `+`.")


def test_chat_screen(snap_compare, snapshot_workspace: Path, tmp_path: Path) -> None:
    """The chat at 80×24: a question, a collapsed read_file call, and a streamed Markdown answer."""
    app = scripted_app([tool_call("read_file", path="src/calc.py"), ANSWER], snapshot_workspace, tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=asking("What does add do in src/calc.py?"))


def test_command_approval(snap_compare, snapshot_workspace: Path, tmp_path: Path) -> None:
    """The approval dialog for a command shows its argv, one argument per line."""
    app = scripted_app([tool_call("run_command", command="pytest -q tests/test_calc.py -k 'add or div'")],
                       snapshot_workspace, tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=asking("Run the calculator tests"))


def test_edit_approval(snap_compare, snapshot_workspace: Path, tmp_path: Path) -> None:
    """The approval dialog for an edit shows each hunk with its own checkbox."""
    old = CALC[CALC.index("def add"):]
    new = old.replace("return a + b", "return a + b  # sum").replace("return a / b", "return a // b")
    app = scripted_app([tool_call("apply_edit", path="src/calc.py", old=old, new=new)], snapshot_workspace, tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=asking("Make div an integer division"))


def test_help_screen(snap_compare, snapshot_workspace: Path, tmp_path: Path) -> None:
    """F1 lists the key bindings with their ids."""
    app = scripted_app([], snapshot_workspace, tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), press=["f1"])


def test_sessions_sidebar(snap_compare, snapshot_workspace: Path, tmp_path: Path) -> None:
    """At 110 columns the sessions sidebar shows beside the chat."""
    app = scripted_app([Reply("Hello! Ask me about the code in this directory.")], snapshot_workspace, tmp_path)
    assert snap_compare(app, terminal_size=(110, 30), run_before=asking("Hello"))
