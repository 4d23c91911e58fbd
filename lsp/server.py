"""The language server: ghost-text and classic completions from the local model, over stdio.

Handlers are thin: take the document at its version, hand a request to the completer's worker,
turn the answer into LSP types. A newer request for the same document supersedes the older
one, `$/cancelRequest` stops a request before or during generation, and an answer computed
for a version the document has since left is never returned. The workspace is indexed in the
background with `$/progress`; completions work from the current file before that is done.
stdout is the protocol: logs go to the log file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import to_fs_path

from assistant import __version__
from assistant.settings import Settings
from lsp.completer import Completer, Request
from lsp.config import parse_config
from lsp.index import CodeIndex
from lsp.watch import IndexWatcher

log = logging.getLogger(__name__)

SHOW_CONTEXT = "assistant.showContext"
STATS = "assistant.stats"
DOCUMENT_STATE = "assistant.documentState"


_COMPLETIONS = (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION)


class _Protocol(LanguageServerProtocol):
    """Takes each completion request's document snapshot the moment it arrives.

    Async handlers start on a later loop turn, after notifications that followed the request
    (a `didChange` typed right after) were already applied; the snapshot keeps the request tied
    to the text it was made for. Cancellations also reach the request's cancel event, so work
    already running on the model stops between two tokens.
    """

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        if method_name in _COMPLETIONS and isinstance(self._server, AssistantServer):
            self._server.capture(msg_id, params)
        super()._handle_request(msg_id, method_name, params)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        if isinstance(self._server, AssistantServer):
            self._server.cancel(msg_id)
        super()._handle_cancel_notification(msg_id)


class AssistantServer(LanguageServer):
    """The server's state: the code index, the completer, and the request in flight per document."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__("assistant", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=_Protocol)
        self.base_settings = settings
        self.index: CodeIndex | None = None
        self.completer = Completer(None, settings)
        self.in_flight: dict[str, Request] = {}
        self.captured: dict[int, Request] = {}  # id(params) -> the request's snapshot
        self.indexing_done = threading.Event()
        self.watcher: IndexWatcher | None = None

    # --- helpers ------------------------------------------------------------------------------

    def notify_problem(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        log.warning("%s", message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"assistant: {message}"))

    def apply_settings(self, raw: Any) -> None:
        parsed = parse_config(raw, self.completer.config)
        self.completer.config = parsed.config
        for problem in parsed.problems:
            self.notify_problem(problem)

    def capture(self, msg_id: Any, params: Any) -> None:
        try:
            req = self.request_for(params.text_document.uri, params.position)
        except (AttributeError, KeyError) as e:
            log.info("no snapshot for request %s: %s", msg_id, e)
            return
        if req is not None:
            req.msg_id = msg_id
            self.captured[id(params)] = req

    def cancel(self, msg_id: Any) -> None:
        for req in list(self.captured.values()) + list(self.in_flight.values()):
            if req.msg_id == msg_id:
                req.cancel.set()

    def take_request(self, params: Any) -> Request | None:
        """The snapshot taken when `params` arrived (or one taken now, for a direct call)."""
        req = self.captured.pop(id(params), None)
        return req if req is not None else self.request_for(params.text_document.uri, params.position)

    def request_for(self, uri: str, position: types.Position) -> Request | None:
        doc = self.workspace.get_text_document(uri)
        path = Path(to_fs_path(uri) or uri)
        text = doc.source
        try:
            offset = doc.offset_at_position(position)
        except (IndexError, ValueError):
            return None
        return Request(uri=uri, path=path, version=doc.version, text=text, offset=min(offset, len(text)))

    def start_indexing(self, root: Path) -> None:
        self.index = CodeIndex(root)
        self.completer.index = self.index
        token = str(uuid.uuid4())
        loop = asyncio.get_running_loop()

        def send(fn: Any, value: Any) -> None:
            loop.call_soon_threadsafe(fn, token, value)

        def build() -> None:
            progress = self.work_done_progress
            try:
                send(progress.begin, types.WorkDoneProgressBegin(title="assistant: indexing", percentage=0))
                last = [-1]

                def report(done: int, total: int) -> None:
                    pct = int(100 * done / total) if total else 100
                    if pct != last[0]:
                        last[0] = pct
                        send(progress.report, types.WorkDoneProgressReport(message=f"{done}/{total} files",
                                                                           percentage=pct))

                self.index.build(progress=report)
                self.watcher = IndexWatcher(self.index)
                self.watcher.start()
                send(progress.end, types.WorkDoneProgressEnd(message=f"{len(self.index)} files indexed"))
            except OSError as e:
                loop.call_soon_threadsafe(self.notify_problem, f"indexing stopped: {e}")
            finally:
                # set on the event loop, after the progress end queued above has gone out: whoever
                # sees "indexed" (the stats command) has been sent the end of the progress first
                try:
                    loop.call_soon_threadsafe(self.indexing_done.set)
                except RuntimeError:  # the loop is closed (shutting down)
                    self.indexing_done.set()

        try:
            self.work_done_progress.create(token)
        except Exception as e:  # a client without progress support still gets an index
            log.info("no progress reporting: %s", e)
        threading.Thread(target=build, name="assistant-index", daemon=True).start()

    async def complete(self, params: Any):
        """The completion for an inline or classic request, or None (disabled, cancelled, stale, empty)."""
        if not self.completer.config.completion.enabled:
            return None
        req = self.take_request(params)
        return None if req is None else await self.run_completion(req)

    async def run_completion(self, req: Request):
        """Supersede the document's older request, run this one, drop it if it went stale."""
        older = self.in_flight.get(req.uri)
        if older is not None:
            older.cancel.set()
        self.in_flight[req.uri] = req
        self.completer.stats.requested += 1
        try:
            result = await asyncio.wrap_future(self.completer.submit(self.completer.complete, req))
        except asyncio.CancelledError:
            req.cancel.set()
            raise
        except Exception as e:
            self.completer.stats.failed += 1
            self.notify_problem(f"completion failed: {e}", types.MessageType.Error)
            return None
        finally:
            if self.in_flight.get(req.uri) is req:
                del self.in_flight[req.uri]
        if result is None or not result.text:
            return None
        doc = self.workspace.get_text_document(req.uri)
        if doc.version != req.version:
            return None  # computed for text the user has since changed
        return result


def create_server(settings: Settings | None = None) -> AssistantServer:
    server = AssistantServer(settings)

    @server.feature(types.INITIALIZE)
    def initialize(ls: AssistantServer, params: types.InitializeParams) -> None:
        ls.apply_settings(params.initialization_options)

    @server.feature(types.INITIALIZED)
    def initialized(ls: AssistantServer, params: types.InitializedParams) -> None:
        root = ls.workspace.root_path
        if root and Path(root).is_dir():
            ls.start_indexing(Path(root))
        else:
            ls.indexing_done.set()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: AssistantServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: AssistantServer, params: types.DidCloseTextDocumentParams) -> None:
        if ls.index is not None:
            path = Path(to_fs_path(params.text_document.uri) or params.text_document.uri)
            ls.index.release_buffer(path)

    @server.feature(
        types.TEXT_DOCUMENT_INLINE_COMPLETION,
        types.InlineCompletionOptions(),
    )
    async def inline_completion(ls: AssistantServer, params: types.InlineCompletionParams):
        result = await ls.complete(params)
        if result is None:
            return None
        at = types.Range(start=params.position, end=params.position)
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=result.text, range=at)])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: AssistantServer, params: types.CompletionParams):
        result = await ls.complete(params)
        if result is None:
            return None
        at = types.Range(start=params.position, end=params.position)
        first = result.text.split("\n", 1)[0].strip() or result.text.strip()
        item = types.CompletionItem(
            label=first[:80],
            kind=types.CompletionItemKind.Snippet,
            detail="assistant",
            text_edit=types.TextEdit(range=at, new_text=result.text),
            insert_text_format=types.InsertTextFormat.PlainText,
            sort_text="0",
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.command(SHOW_CONTEXT)
    async def show_context(ls: AssistantServer, uri: str, position: dict[str, int]) -> dict[str, Any] | None:
        req = ls.request_for(uri, types.Position(line=int(position["line"]), character=int(position["character"])))
        if req is None:
            return None
        return await asyncio.wrap_future(ls.completer.submit(ls.completer.show_context, req))

    @server.command(STATS)
    def stats(ls: AssistantServer) -> dict[str, Any]:
        return {**ls.completer.stats.as_dict(), "indexed": ls.indexing_done.is_set(),
                "files": len(ls.index) if ls.index is not None else 0}

    @server.command(DOCUMENT_STATE)
    def document_state(ls: AssistantServer, uri: str) -> dict[str, Any]:
        """The buffer as the server holds it: for checking that sync kept up with the editor."""
        doc = ls.workspace.get_text_document(uri)
        return {"version": doc.version, "text": doc.source}

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: AssistantServer, params: None) -> None:
        if ls.watcher is not None:
            ls.watcher.stop()
        ls.completer.close()

    return server
