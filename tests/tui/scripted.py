"""A scripted model for the TUI tests: it answers with prepared replies, one per `generate` call,
streamed a character per token, so a test decides exactly when a tool call comes and what it
says. It implements the engine's Backend protocol and renders prompts with the real Qwen2.5
chat template (the fixture copy), so everything above the backend is the code users run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.backend import GenerationEvent, ModelSummary, SamplingParams, Timings
from engine.select import BackendChoice
from models.templates import ChatTemplate

QWEN_TEMPLATE = Path(__file__).parents[1] / "fixtures" / "templates" / "qwen2.5-coder.jinja"


class Boom(RuntimeError):
    """An unexpected failure inside the engine (a bug, not an error a person can meet)."""


@dataclass
class Reply:
    """One answer: its text, the pause per character, and where (if anywhere) it fails."""

    text: str
    delay: float = 0.0
    crash_after: int | None = None


class ScriptedBackend:
    """The Backend protocol over a list of replies; tokens are characters (code points)."""

    name = "scripted"

    def __init__(self, replies: Sequence[Reply | str], n_ctx: int = 8192) -> None:
        self.replies = [r if isinstance(r, Reply) else Reply(r) for r in replies]
        self.prompts: list[str] = []
        self.summary = ModelSummary(path=Path("scripted.gguf"), architecture="scripted", n_ctx=n_ctx,
                                    n_ctx_train=n_ctx, n_vocab=0x110000)
        self.streaming = threading.Event()  # set once the current reply has sent a character

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(map(chr, tokens))

    def token_bytes(self, token: int) -> bytes:
        return chr(token).encode()

    def generate(self, prompt: Sequence[int], params: SamplingParams, *,
                 cancel: threading.Event | None = None) -> Iterator[GenerationEvent]:
        self.prompts.append(self.detokenize(prompt))
        reply = self.replies.pop(0) if self.replies else Reply("(no more scripted replies)")
        self.streaming.clear()
        n, finish = 0, "stop"
        for n, ch in enumerate(reply.text, 1):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                n -= 1
                break
            if reply.crash_after is not None and n > reply.crash_after:
                raise Boom("the scripted engine failed mid-answer")
            if reply.delay:
                time.sleep(reply.delay)
            yield GenerationEvent(text=ch, token=ord(ch))
            self.streaming.set()
        timings = Timings(prompt_tokens=len(prompt), reused_tokens=0, prompt_s=0.1, generated_tokens=n,
                          decode_s=max(n - 1, 0) / 20.0, ttft_s=0.1)
        yield GenerationEvent(finish_reason=finish, timings=timings)

    def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedModel:
    """What the chat needs of a loaded model: a backend, its chat template, its name."""

    backend: ScriptedBackend
    chat_template: ChatTemplate = field(default_factory=lambda: ChatTemplate(QWEN_TEMPLATE.read_text()))
    name: str = "scripted"
    bos_text: str = ""
    choice: BackendChoice = field(default_factory=lambda: BackendChoice("scripted", "tests"))
    gguf: None = None

    def close(self) -> None:
        self.backend.close()


def tool_call(name: str, **arguments: object) -> str:
    """A reply that is one tool call in Qwen's native format."""
    import json

    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let the app run until `condition()` holds (fails the test after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the app did not reach the expected state in time")
        await pilot.pause(0.05)
