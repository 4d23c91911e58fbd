"""The completion service behind the language server: one model, one worker thread, no stale answers.

Requests run one at a time on a single worker thread, since one model answers them all. Each
carries a cancel event: a request cancelled by the client, or superseded by a newer request for
the same document, is dropped before it starts or stops between two tokens. The prompt is the
model family's FIM format with the dependency context from the code index first, in a stable
order, so consecutive requests share a KV prefix and only the changed tail is evaluated.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.completion import Completion, Cursor, complete, wants_block, window
from assistant.loader import LoadedModel, daemon_gone, load_shared
from assistant.prompts import fim_prompt
from assistant.settings import Settings, load_settings
from engine.backend import SamplingParams
from lsp.blocks import opens_block
from lsp.config import LspConfig
from lsp.context import build_context, render_files
from lsp.index import CodeIndex

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One completion asked for at a document version."""

    uri: str
    path: Path
    version: int | None
    text: str
    offset: int
    cancel: threading.Event = field(default_factory=threading.Event)
    msg_id: Any = None


@dataclass(frozen=True)
class _Shown:
    """The last completion answered for a file: typing through it needs no new generation."""

    path: Path
    prefix: str
    suffix: str
    text: str

    def continued(self, req: Request) -> str | None:
        """What is left of the suggestion after the user typed its beginning, if they did."""
        if req.path != self.path or req.text[req.offset :] != self.suffix:
            return None
        prefix = req.text[: req.offset]
        if not prefix.startswith(self.prefix):
            return None
        typed = prefix[len(self.prefix) :]
        if "\n" in typed or not self.text.startswith(typed) or len(typed) >= len(self.text):
            return None
        return self.text[len(typed) :]


@dataclass
class Stats:
    """Counters the client can read through `assistant.stats` (status bars, tests)."""

    requested: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    served_from_last: int = 0
    last_latency_ms: float | None = None
    last_prompt_tokens: int | None = None
    last_reused_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


COUNTS_KEPT = 4096
"""Token counts of context texts kept between requests."""


class Completer:
    """Owns the model and the worker thread; every method but `submit` runs on that thread."""

    def __init__(self, index: CodeIndex | None, base: Settings | None = None) -> None:
        self.index = index
        self._base = base
        self.config = LspConfig()
        self._model: LoadedModel | None = None
        self._model_key: tuple[str | None, str | None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assistant-model")
        self.stats = Stats()
        self._shown: _Shown | None = None
        self._last_context: tuple[Any, int, Any] | None = None  # (cursor key, index generation, context)
        self._counts: dict[str, int] = {}  # text -> tokens, for the model in _counts_for
        self._counts_for: LoadedModel | None = None

    # --- model --------------------------------------------------------------------------------

    def settings(self) -> Settings:
        base = self._base or load_settings()
        update = {k: v for k, v in (("model", self.config.model), ("backend", self.config.backend)) if v}
        return base.model_copy(update=update) if update else base

    def model(self) -> LoadedModel:
        key = (self.config.model, self.config.backend)
        if self._model is not None and daemon_gone(self._model):
            log.info("the daemon went away: loading the model again (in this process unless another daemon has it)")
            self._model_key = None
        if self._model is None or self._model_key != key:
            if self._model is not None:
                self._model.close()
                self._model = None
            self._model = load_shared(self.settings())
            self._model_key = key
            log.info("model loaded: %s on %s (%s)", self._model.path, self._model.choice.name,
                     self._model.choice.reason)
        return self._model

    def forget(self) -> None:
        """Drop what is cached between requests: the last suggestion and the model's KV prefix."""
        self._shown = None
        self._last_context = None
        if self._model is not None:
            self._model.backend.reset()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for the loaded model; the context prices the same definitions and
        outlines request after request, so counts are kept (per model, the last COUNTS_KEPT)."""
        model = self.model()
        if self._counts_for is not model:
            self._counts, self._counts_for = {}, model
        n = self._counts.get(text)
        if n is None:
            n = len(model.backend.tokenize(text, add_special=False, parse_special=False))
            if len(self._counts) >= COUNTS_KEPT:
                self._counts.pop(next(iter(self._counts)))
            self._counts[text] = n
        return n

    # --- work ---------------------------------------------------------------------------------

    def submit(self, fn, *args: Any) -> Future:
        return self._worker.submit(fn, *args)

    def context_for(self, req: Request) -> Any:
        """The dependency context at the request's cursor. While the user types on one line (the
        text before that line and after the cursor unchanged, no other file changed in the index)
        the previous request's context is kept: the prompt's start then stays the same and the
        model reuses its KV cache for all of it."""
        if self.index is None or not self.config.context.cross_file or self.config.context.max_tokens == 0:
            return None
        line_start = req.text.rfind("\n", 0, req.offset) + 1
        key = (req.path, req.text[:line_start], req.text[req.offset:], self.config.context.max_tokens)
        last = self._last_context
        unchanged = last is not None and last[0] == key and last[1] == self.index.generation
        self.index.update_file(req.path, req.text)
        if unchanged:
            ctx = last[2]
        else:
            ctx = build_context(
                self.index, req.path, req.text, req.offset,
                max_tokens=self.config.context.max_tokens, count_tokens=self.count_tokens,
            )
        self._last_context = (key, self.index.generation, ctx)
        return ctx

    def complete(self, req: Request) -> Completion | None:
        """Run one completion; None when cancelled before or during generation."""
        if req.cancel.is_set():
            self.stats.cancelled += 1
            return None
        t0 = time.perf_counter()
        rest = self._shown.continued(req) if self._shown is not None else None
        if rest is not None:
            # The user is typing what the ghost text shows: the rest of it is still the answer.
            self.stats.served_from_last += 1
            self.stats.finished += 1
            self.stats.last_latency_ms = (time.perf_counter() - t0) * 1000
            return Completion(rest, None)
        self.stats.started += 1
        model = self.model()
        cur = window(Cursor(req.text[: req.offset], req.text[req.offset :]))
        ctx = self.context_for(req)
        files = render_files(ctx) if ctx is not None else []
        rel = self.index.relative(req.path) if self.index is not None else req.path.name
        prompt, stops = fim_prompt(model, cur.prefix, cur.suffix, path=rel, files=files)
        multiline = {"auto": None, "always": True, "never": False}[self.config.completion.multiline]
        params = SamplingParams(temperature=0.0, max_tokens=self.config.completion.max_tokens, stop=stops)
        if multiline is None:
            tree_says = opens_block(req.path, cur.prefix)
            multiline = wants_block(cur) if tree_says is None else tree_says
        result = complete(model.backend.generate(prompt, params, cancel=req.cancel), cur, multiline=multiline)
        if req.cancel.is_set():
            self.stats.cancelled += 1
            return None
        self.stats.finished += 1
        self.stats.last_latency_ms = (time.perf_counter() - t0) * 1000
        self._shown = _Shown(req.path, req.text[: req.offset], req.text[req.offset :], result.text)
        if result.timings is not None:
            self.stats.last_prompt_tokens = result.timings.prompt_tokens
            self.stats.last_reused_tokens = result.timings.reused_tokens
        return result

    def show_context(self, req: Request) -> dict[str, Any]:
        """Exactly which snippets a completion here would put in the prompt, and which it drops."""
        ctx = self.context_for(req)
        if ctx is None:
            return {"crossFile": self.config.context.cross_file, "kept": [], "dropped": []}

        def snippet(s: Any) -> dict[str, Any]:
            return {"path": str(s.path), "score": s.score, "reason": s.reason, "text": s.text}

        return {
            "crossFile": True,
            "maxTokens": self.config.context.max_tokens,
            "kept": [snippet(s) for s in ctx.snippets],
            "dropped": [snippet(s) for s in ctx.dropped],
        }

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._model is not None:
            self._model.close()
            self._model = None
