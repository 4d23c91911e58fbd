"""The chat screen: sessions sidebar, the conversation, the prompt and the status bar.

The model may run on the daemon (tui.app): when that daemon goes away, the next message (or
the end of the turn it broke) loads the model again, in this process unless another daemon
holds it, and the message waits for it like one sent while loading.

A turn runs in a thread worker (`_run_turn`): the agent streams events, which reach the screen
through `call_from_thread` tagged with the turn's number, and events of a turn that is no longer
current (stopped, regenerated, another session opened) are dropped. Each event is saved as it
arrives: the answer is a row from its first token, rewritten every few hundred milliseconds, so
quitting or a crash mid-answer keeps what was said. Approval requests block the worker on a
future that only the approval dialog (the user) resolves."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label

from assistant.agent import AnswerDone, AnswerStarted, Event, Notice, Rewind, TextDelta, ToolFinished, ToolStarted
from assistant.approval import Approval, ApprovalRequest
from assistant.loader import daemon_gone, runs_on
from assistant.sessions import SessionError
from engine.backend import EngineError
from models.catalog import ModelError
from models.gguf import GGUFError
from models.templates import TemplateError
from tui.runtime import build_runtime
from tui.screens.approval import ApprovalScreen
from tui.screens.dialogs import ConfirmScreen, RenameScreen
from tui.screens.help import HelpScreen
from tui.screens.models import ModelPicker
from tui.widgets.code_block import CodeBlock
from tui.widgets.message import MessageView
from tui.widgets.prompt import PromptInput
from tui.widgets.session_list import SessionList
from tui.widgets.status_bar import StatusBar
from tui.widgets.tool_call import ToolCallView

log = logging.getLogger(__name__)

SAVE_EVERY_S = 0.25
_PERSON_ERRORS = (EngineError, TemplateError, ModelError, GGUFError, SessionError, OSError)


class ChatScreen(Screen[None]):
    """One workspace's conversations with the model."""

    CSS_PATH = "chat.tcss"
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate", show=False),
        Binding("ctrl+l", "edit_last", "Edit last message", id="chat.edit_last", show=False),
        Binding("ctrl+n", "new_session", "New chat", id="chat.new_session"),
        Binding("f2", "rename_session", "Rename chat", id="chat.rename_session", show=False),
        Binding("f8", "delete_session", "Delete chat", id="chat.delete_session", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Chats", id="chat.toggle_sidebar"),
        Binding("ctrl+o", "pick_model", "Model", id="chat.pick_model"),
        Binding("ctrl+t", "copy_code", "Copy code", id="chat.copy_code", show=False),
        Binding("f1,question_mark", "help", "Keys", id="chat.help"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.session_id: int | None = None
        self.history: list[dict[str, Any]] = []  # the session's messages, in chat-template shape
        self.message_ids: list[int] = []  # their rows in the store, in the same order
        self.generation = 0  # the current turn's number; events of older turns are dropped
        self.cancel = threading.Event()
        self.turn_finished = threading.Event()
        self.turn_finished.set()
        self.closing = False
        self.close_when_done: Any = None  # a runtime the running turn closes when it ends
        self.closing_lock = threading.Lock()
        self.busy = False
        self.pending: str | None = None  # a message sent while the model was loading
        self._answer_view: MessageView | None = None
        self._answer_id: int | None = None
        self._answer_saved_at = 0.0
        self._tool_views: dict[str, ToolCallView] = {}
        self._approval_future: Future[Approval] | None = None

    @property
    def store(self):  # noqa: ANN201 - the app's SessionStore
        return self.app.store  # type: ignore[attr-defined]

    # --- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield SessionList(id="sessions")
            with Vertical(id="chat"):
                yield VerticalScroll(id="log")
                yield PromptInput(id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sessions").border_title = "chats"
        self.query_one(PromptInput).focus()
        if self.app.size.width < 100:
            self.query_one("#sessions").display = False
        sessions = self.store.sessions(self._workspace_key)
        if sessions:
            self.open_session(sessions[0].id)
        else:
            self.action_new_session()
        self.load(self.app.settings)  # type: ignore[attr-defined]

    @property
    def _workspace_key(self) -> str:
        return str(self.app.workspace.root)  # type: ignore[attr-defined]

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def log_view(self) -> VerticalScroll:
        return self.query_one("#log", VerticalScroll)

    # --- the model --------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="load")
    def load(self, settings: Any) -> None:
        """Load the model in the background; the chat is usable (messages wait) meanwhile."""
        app = cast(Any, self.app)
        self._post(self._set_state, f"loading {settings.model}…")
        try:
            runtime = build_runtime(settings, app.workspace, app.rules, app.loader, app.code_index)
        except _PERSON_ERRORS as e:
            log.info("model load failed: %s", e)
            self._post(self._load_failed, str(e))
            return
        self._post(self._loaded, settings, runtime)

    def _loaded(self, settings: Any, runtime: Any) -> None:
        app = cast(Any, self.app)
        app.settings = settings
        app.set_runtime(runtime)
        summary = runtime.model.backend.summary
        name = str(settings.model)
        self.status.model = Path(name).stem if name.endswith(".gguf") else name
        self.status.backend = runs_on(runtime.model)
        self.status.note = "" if runtime.note == "tools" else runtime.note
        self.status.window = summary.n_ctx
        self._set_state("")
        if self.pending is not None:  # the message sent while loading is in the history already
            self.pending = None
            self._start_turn()

    def _follow_daemon(self) -> bool:
        """When the model ran on a daemon that went away, drop it and load it again (in this
        process unless another daemon holds it now); True when that started."""
        app = cast(Any, self.app)
        # a stopped turn's worker may still hold the model for a moment: it is closed only after
        if app.runtime is None or self.busy or not self.turn_finished.is_set() or not daemon_gone(app.runtime.model):
            return False
        log.info("the daemon went away: loading the model again")
        app.set_runtime(None)
        self.notify("the daemon stopped: loading the model in this process", severity="warning")
        self.load(app.settings)
        return True

    def _load_failed(self, message: str) -> None:
        self._set_state("no model")
        self.pending = None
        self.notify(f"could not load the model: {message}", severity="error", timeout=15)

    def _set_state(self, state: str) -> None:
        self.status.state = state

    # --- sending ----------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        if self.busy:
            self.notify("an answer is still coming: Esc stops it", severity="warning")
            event.prompt.load_text(event.text)
            return
        if self.session_id is None:
            self.action_new_session()
        self._add_message({"role": "user", "content": event.text})
        self.log_view.mount(MessageView("user", event.text))
        self.log_view.scroll_end(animate=False)
        self._name_session(event.text)
        self._follow_daemon()
        if cast(Any, self.app).runtime is None:
            self.pending = event.text
            self.notify("the model is still loading; your message goes when it is ready")
            return
        self._start_turn()

    def _start_turn(self) -> None:
        self.generation += 1
        self.cancel = threading.Event()
        self.turn_finished = threading.Event()
        self.busy = True
        self._set_state("thinking…")
        self._run_turn(self.generation, list(self.history), self.cancel, self.turn_finished)

    @work(thread=True, exclusive=True, group="turn")
    def _run_turn(self, generation: int, history: list[dict[str, Any]], cancel: threading.Event,
                  finished: threading.Event) -> None:
        runtime = cast(Any, self.app).runtime

        def emit(event: Event) -> None:
            self._post(self._on_agent_event, generation, event, cancel=cancel)

        def ask(request: ApprovalRequest) -> Approval:
            return self._ask(generation, request, cancel)

        try:
            runtime.agent.run(history, emit, ask, cancel)
        except _PERSON_ERRORS as e:
            log.info("turn failed: %s", e)
            self._post(self._turn_failed, generation, str(e), cancel=cancel)
        finally:
            with self.closing_lock:
                finished.set()
                leftover, self.close_when_done = self.close_when_done, None
            if leftover is not None:  # the app quit while this turn ran: the model is ours to close
                leftover.close()
            self._post(self._turn_ended, generation, cancel=cancel)

    def _post(self, callback: Any, *args: Any, cancel: threading.Event | None = None) -> Any:
        """Run `callback` on the UI thread; when the app is quitting, stop the turn instead."""
        if not self.closing:
            try:
                return self.app.call_from_thread(callback, *args)
            except (RuntimeError, CancelledError):  # the app's loop ended under the call
                log.info("the app closed while a turn ran; stopping it")
        if cancel is not None:
            cancel.set()
        return None

    def _ask(self, generation: int, request: ApprovalRequest, cancel: threading.Event) -> Approval:
        """Block the worker until the user answers the approval dialog (or the turn is stopped)."""
        future: Future[Approval] = Future()
        self._post(self._open_approval, generation, request, future, cancel=cancel)
        while True:
            try:
                return future.result(timeout=0.1)
            except FutureTimeout:
                if cancel.is_set() or self.closing:
                    self._post(self._close_approval, future)
                    return Approval(False)

    def _open_approval(self, generation: int, request: ApprovalRequest, future: Future[Approval]) -> None:
        if generation != self.generation:
            future.set_result(Approval(False))
            return
        self._approval_future = future
        self._set_state("waiting for your approval")
        self.app.push_screen(ApprovalScreen(request), callback=lambda a: self._approved(a, future))

    def _approved(self, approval: Approval | None, future: Future[Approval]) -> None:
        approval = approval or Approval(False)
        if approval.remember is not None:
            try:
                cast(Any, self.app).rules.add(approval.remember)
                self.notify(f"allowed from now on: {approval.remember.describe()}")
            except OSError as e:
                self.notify(f"could not save the rule: {e.strerror}", severity="error")
        self._approval_future = None
        self._set_state("thinking…")
        if not future.done():
            future.set_result(approval)

    def _close_approval(self, future: Future[Approval]) -> None:
        if isinstance(self.app.screen, ApprovalScreen) and self._approval_future is future:
            self.app.screen.dismiss(Approval(False))

    # --- agent events (UI thread) -----------------------------------------------------------------

    async def _on_agent_event(self, generation: int, event: Event) -> None:
        if generation != self.generation:
            return  # a stale turn's event: dropped
        if isinstance(event, AnswerStarted):
            self._answer_view = MessageView("assistant")
            await self.log_view.mount(self._answer_view)
            self._answer_id = self._store(lambda: self.store.add(self.session_id, {"role": "assistant", "content": ""},
                                                                 complete=False))
            self._answer_saved_at = time.monotonic()
        elif isinstance(event, TextDelta) and self._answer_view is not None:
            await self._answer_view.append(event.text)
            self._save_partial()
        elif isinstance(event, Rewind) and self._answer_view is not None:
            await self._answer_view.rewind(event.text)
            self._save_partial(force=True)
        elif isinstance(event, AnswerDone):
            await self._answer_done(event)
        elif isinstance(event, ToolStarted):
            view = self._tool_views.get(event.call.id)
            if view is not None and event.decision is not None:
                view.set_state("waiting" if event.decision.verdict == "ask" else "running")
        elif isinstance(event, ToolFinished):
            self._tool_finished(event)
        elif isinstance(event, Notice):
            self.notify(event.text, severity="warning", timeout=8)
            await self.log_view.mount(Label(f"— {event.text}", classes="notice", markup=False))
        self.log_view.scroll_end(animate=False)

    async def _answer_done(self, event: AnswerDone) -> None:
        message = event.message
        view = self._answer_view
        if view is not None:
            stopped = message.get("status") == "stopped"
            await view.finish("stopped" if stopped else "")
            if not message.get("content") and message.get("tool_calls"):
                view.display = False
        answer_id = self._answer_id
        if answer_id is not None:
            self._store(lambda: self.store.update(answer_id, message, complete=True))
        self.history.append(message)
        self.message_ids.append(answer_id or 0)
        self._answer_view, self._answer_id = None, None
        for call in message.get("tool_calls", []):
            fn = call["function"]
            view_ = ToolCallView(fn["name"], fn["arguments"])
            self._tool_views[call["id"]] = view_
            await self.log_view.mount(view_)
        if event.timings is not None:
            self.status.speed = event.timings.decode_tok_s
            self.status.used = event.prompt_tokens + event.timings.generated_tokens
        self.status.window = event.n_ctx

    def _tool_finished(self, event: ToolFinished) -> None:
        view = self._tool_views.get(event.call.id)
        state = _result_state(event.result.content, event.result.ok)
        if view is None:  # feedback on a call that did not parse
            view = ToolCallView(event.call.name, event.call.arguments, state=state, result=event.result.content)
            self.log_view.mount(view)
        else:
            view.set_state(state, event.result.content)
        self._add_message(event.message)

    def _turn_failed(self, generation: int, message: str) -> None:
        if generation == self.generation:
            self.notify(message, severity="error", timeout=15)

    def _turn_ended(self, generation: int) -> None:
        if generation != self.generation:
            return
        self.busy = False
        self._tool_views.clear()
        if self._answer_view is not None:  # the turn failed mid-answer: keep what came
            self._save_partial(force=True)
            self.call_later(self._answer_view.finish, "interrupted")
            self._answer_view, self._answer_id = None, None
        self._set_state("")
        self._refresh_sessions()
        self._follow_daemon()  # a turn the daemon's going broke: be ready for the next one

    def _save_partial(self, force: bool = False) -> None:
        if self._answer_id is None or self._answer_view is None:
            return
        now = time.monotonic()
        if force or now - self._answer_saved_at >= SAVE_EVERY_S:
            answer_id, text = self._answer_id, self._answer_view.text
            self._store(lambda: self.store.update(answer_id, {"role": "assistant", "content": text}, complete=False))
            self._answer_saved_at = now

    def shut_down(self) -> bool:
        """The app is quitting: save the answer streaming now (as interrupted) and stop the turn.
        Returns True when no turn still runs; else the turn's worker closes `close_when_done`."""
        self.closing = True
        self._save_partial(force=True)
        self.cancel.set()
        if self._approval_future is not None and not self._approval_future.done():
            self._approval_future.set_result(Approval(False))
        return self.turn_finished.wait(0.5)

    # --- sessions ---------------------------------------------------------------------------------

    def _store(self, op: Any) -> Any:
        try:
            return op()
        except SessionError as e:
            self.notify(str(e), severity="error", timeout=15)
            return None

    def _add_message(self, message: dict[str, Any]) -> None:
        if self.session_id is None:
            return
        session_id = self.session_id
        mid = self._store(lambda: self.store.add(session_id, message))
        self.history.append(message)
        self.message_ids.append(mid or 0)

    def _name_session(self, text: str) -> None:
        session = self.store.get(self.session_id) if self.session_id else None
        if session is not None and session.title == "New chat":
            title = " ".join(text.split())[:40]
            self._store(lambda: self.store.rename(session.id, title))
            self._refresh_sessions()

    def _refresh_sessions(self) -> None:
        sessions = self._store(lambda: self.store.sessions(self._workspace_key)) or []
        self.query_one(SessionList).show(sessions, self.session_id)

    def open_session(self, session_id: int) -> None:
        self._stop_turn()
        stored = self._store(lambda: self.store.messages(session_id))
        if stored is None:
            return
        self.session_id = session_id
        self.history = [s.message for s in stored]
        self.message_ids = [s.id for s in stored]
        log_view = self.log_view
        log_view.remove_children()
        results = {m["tool_call_id"]: m.get("content", "") for m in self.history
                   if m["role"] == "tool" and m.get("tool_call_id")}
        widgets: list[Any] = []
        for s in stored:
            m = s.message
            if m["role"] == "user":
                widgets.append(MessageView("user", m.get("content", "")))
            elif m["role"] == "assistant":
                note = "interrupted" if not s.complete else ("stopped" if m.get("status") == "stopped" else "")
                view = MessageView("assistant", m.get("content", ""), note=note)
                view.display = bool(m.get("content")) or not m.get("tool_calls")
                widgets.append(view)
                for call in m.get("tool_calls", []):
                    fn = call["function"]
                    result = results.get(call["id"])
                    state = "stopped" if result is None else _result_state(result)
                    widgets.append(ToolCallView(fn["name"], fn["arguments"], state=state, result=result or ""))
            elif m["role"] == "tool" and m.get("tool_call_id") not in {
                    c["id"] for h in self.history for c in h.get("tool_calls", [])}:
                content = m.get("content", "")
                widgets.append(ToolCallView(m.get("name", "tool"), {}, state=_result_state(content), result=content))
        log_view.mount_all(widgets)
        self.call_after_refresh(log_view.scroll_end, animate=False)
        self._refresh_sessions()

    @on(SessionList.Chosen)
    def _chosen(self, event: SessionList.Chosen) -> None:
        if event.session_id != self.session_id:
            self.open_session(event.session_id)
        self.query_one(PromptInput).focus()

    # --- actions ----------------------------------------------------------------------------------

    def _stop_turn(self) -> None:
        if self.busy:
            self.cancel.set()
            self.generation += 1  # whatever the old turn still sends is dropped
            self._save_partial(force=True)
            if self._answer_view is not None:
                self.call_later(self._answer_view.finish, "stopped")
            if self._answer_id is not None and self._answer_view is not None:
                message = {"role": "assistant", "content": self._answer_view.text, "status": "stopped"}
                answer_id = self._answer_id
                self._store(lambda: self.store.update(answer_id, message, complete=True))
                self.history.append(message)
                self.message_ids.append(answer_id)
            self._answer_view, self._answer_id = None, None
            self._tool_views.clear()
            self.busy = False
            self._set_state("stopped")

    def action_stop(self) -> None:
        if self.busy:
            self._stop_turn()
        elif self.pending is not None:
            self.pending = None
            self.notify("the message waiting for the model was dropped")

    def action_regenerate(self) -> None:
        self._follow_daemon()
        if self.busy or cast(Any, self.app).runtime is None:
            self.notify("wait for the answer (or stop it with Esc) and for the model", severity="warning")
            return
        last_user = next((i for i in range(len(self.history) - 1, -1, -1) if self.history[i]["role"] == "user"), None)
        if last_user is None:
            self.notify("nothing to regenerate yet", severity="warning")
            return
        self._truncate(last_user + 1)
        self.open_session(cast(int, self.session_id))
        self._start_turn()

    def action_edit_last(self) -> None:
        if self.busy:
            self.notify("stop the answer first (Esc)", severity="warning")
            return
        last_user = next((i for i in range(len(self.history) - 1, -1, -1) if self.history[i]["role"] == "user"), None)
        if last_user is None:
            self.notify("no message to edit yet", severity="warning")
            return
        text = self.history[last_user]["content"]
        self._truncate(last_user)
        self.open_session(cast(int, self.session_id))
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    def _truncate(self, index: int) -> None:
        """Forget the session's messages from `index` on (in the store too)."""
        if index < len(self.message_ids) and self.session_id is not None:
            session_id, first = self.session_id, self.message_ids[index]
            self._store(lambda: self.store.delete_from(session_id, first))
        del self.history[index:]
        del self.message_ids[index:]

    def action_new_session(self) -> None:
        session = self._store(lambda: self.store.create(self._workspace_key))
        if session is not None:
            self.open_session(session.id)
        self.query_one(PromptInput).focus()

    def action_rename_session(self) -> None:
        session = self.store.get(self.session_id) if self.session_id else None
        if session is None:
            return

        def renamed(title: str | None) -> None:
            if title:
                self._store(lambda: self.store.rename(session.id, title))
                self._refresh_sessions()

        self.app.push_screen(RenameScreen(session.title), callback=renamed)

    def action_delete_session(self) -> None:
        listed = self.query_one(SessionList).highlighted_session
        session = listed if listed is not None and self.query_one(SessionList).has_focus else (
            self.store.get(self.session_id) if self.session_id else None)
        if session is None:
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            if session.id == self.session_id:
                self._stop_turn()
            self._store(lambda: self.store.delete(session.id))
            if session.id == self.session_id:
                remaining = self.store.sessions(self._workspace_key)
                if remaining:
                    self.open_session(remaining[0].id)
                else:
                    self.action_new_session()
            self._refresh_sessions()

        self.app.push_screen(ConfirmScreen(f"Delete the chat '{session.title}'?"), callback=confirmed)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(SessionList)
        sidebar.display = not sidebar.display
        if sidebar.display:
            sidebar.focus()
        else:
            self.query_one(PromptInput).focus()

    def action_pick_model(self) -> None:
        if self.busy:
            self.notify("stop the answer first (Esc)", severity="warning")
            return
        app = cast(Any, self.app)

        def picked(name: str | None) -> None:
            if name:
                self.load(app.settings.model_copy(update={"model": name}))

        self.app.push_screen(ModelPicker(app.settings, str(app.settings.model)), callback=picked)

    def action_copy_code(self) -> None:
        """Copy the code block that has the focus, else the last one of the chat."""
        if isinstance(self.focused, CodeBlock):
            self.focused.action_copy()
            return
        blocks = [b for v in self.log_view.query(MessageView) if v.role == "assistant" for b in v.code_blocks()]
        if not blocks:
            self.notify("no code block to copy yet", severity="warning")
            return
        blocks[-1].action_copy()

    @on(CodeBlock.Copied)
    def _copied(self, event: CodeBlock.Copied) -> None:
        self.notify(f"copied the code block ({len(event.code.splitlines())} lines)")

    def action_help(self) -> None:
        from tui.app import AssistantApp

        groups = [("anywhere", AssistantApp.BINDINGS), ("chat", ChatScreen.BINDINGS),
                  ("prompt", PromptInput.BINDINGS), ("code block", CodeBlock.BINDINGS),
                  ("approval dialog", ApprovalScreen.BINDINGS),
                  ("chats list", SessionList.BINDINGS), ("help", HelpScreen.BINDINGS)]
        self.app.push_screen(HelpScreen(groups))  # type: ignore[arg-type]


def _result_state(content: str, ok: bool | None = None) -> str:
    """How a tool call ended, for its mark in the chat."""
    if content.startswith(("the user rejected", "refused")):
        return "rejected"
    if ok is None:
        ok = not content.startswith("error")
    return "done" if ok else "failed"
