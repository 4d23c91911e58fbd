"""The Textual app and `make_app`, the one factory the CLI and the tests use.

The app owns what outlives a screen: the settings, the workspace, the sessions store, the
approval rules, the code index builder and the loaded model (`Runtime`). The chat screen does
the rest. The model is the running daemon's when one holds the same file (`use_daemon`, as the
editor does: one copy in memory for both), else loaded in this process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from assistant.approval import ApprovalRules, protected_paths
from assistant.loader import load_shared
from assistant.sandbox import Workspace
from assistant.sessions import SessionStore
from assistant.settings import Settings
from assistant.tools import CodeIndexBuilder
from tui.runtime import Loader, Runtime
from tui.screens.chat import ChatScreen

log = logging.getLogger(__name__)


class AssistantApp(App[None]):
    """The terminal chat about one workspace."""

    TITLE = "assistant"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True)]

    def __init__(self, settings: Settings, *, workspace: Workspace, store: SessionStore, rules: ApprovalRules,
                 loader: Loader, rules_error: str = "", code_index: CodeIndexBuilder | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.workspace = workspace
        self.store = store
        self.rules = rules
        self.loader = loader
        self.rules_error = rules_error
        self.code_index = code_index
        self.runtime: Runtime | None = None
        self.chat: ChatScreen | None = None
        self.sub_title = str(workspace.root)

    def on_mount(self) -> None:
        self.chat = ChatScreen()
        self.push_screen(self.chat)
        if self.rules_error:
            self.notify(f"{self.rules_error}; no command or edit is allowed without asking",
                        severity="warning", timeout=10)

    def set_runtime(self, runtime: Runtime | None) -> None:
        old, self.runtime = self.runtime, runtime
        if old is not None and old is not runtime:
            old.close()

    def on_unmount(self) -> None:
        runtime, self.runtime = self.runtime, None
        chat = self.chat
        if chat is not None and not chat.shut_down():
            with chat.closing_lock:
                if not chat.turn_finished.is_set():  # the worker still uses the model: it closes it
                    chat.close_when_done, runtime = runtime, None
        if runtime is not None:
            runtime.close()
        self.store.close()


def make_app(settings: Settings, *, workspace: str | Path | None = None, loader: Loader = load_shared,
             store: SessionStore | None = None, rules: ApprovalRules | None = None,
             code_index: CodeIndexBuilder | None = None) -> AssistantApp:
    """The app for `workspace` (default: the current directory); `code_index` builds the index
    the `find_symbol` tool reads (the CLI passes lsp's; without one the tool is left out)."""
    ws = Workspace.open(workspace or os.getcwd(), protected_paths())
    rules_error = ""
    if rules is None:
        try:
            rules = ApprovalRules.load()
        except ValueError as e:
            rules_error = str(e)
            rules = ApprovalRules(Path(os.devnull))
    return AssistantApp(settings, workspace=ws, store=store or SessionStore(), rules=rules, loader=loader,
                        rules_error=rules_error, code_index=code_index)
