"""The Backend protocol every engine implements, and the values that cross it.

A backend owns one loaded model and its KV cache. `generate` takes prompt tokens and sampling
parameters and yields `GenerationEvent`s: a text delta per token (never a broken UTF-8
character), then one final event with the finish reason and the timings. It keeps the tokens
it has evaluated so that the next call evaluates only what differs (prefix reuse), and it
stops between two tokens when the `cancel` event is set from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.constrained import TokenConstraint

FinishReason = Literal["stop", "length", "cancelled", "context"]


class EngineError(Exception):
    """A model cannot be loaded or run; the message says why, for a person."""


class ContextOverflowError(EngineError):
    """The prompt does not fit the context window (said, never silently cut)."""


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked and when generation ends."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    # Token ids that end generation besides the model's own end-of-generation tokens.
    stop_tokens: tuple[int, ...] = ()
    # Masks the logits before each sample (engine.constrained); it holds state, so one per call.
    constraint: TokenConstraint | None = None
    # Report each token's log-probability and this many most likely alternatives (None: nothing).
    logprobs: int | None = None

    def __post_init__(self) -> None:
        assert self.temperature >= 0 and self.max_tokens >= 0, (self.temperature, self.max_tokens)


@dataclass(frozen=True)
class Timings:
    """What one `generate` call cost."""

    prompt_tokens: int  # tokens in the prompt
    reused_tokens: int  # of those, already in the KV cache from the previous call
    prompt_s: float  # time to evaluate the rest of the prompt
    generated_tokens: int
    decode_s: float  # time spent producing tokens after the first one
    ttft_s: float  # call start to first token

    @property
    def prompt_tok_s(self) -> float:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class GenerationEvent:
    """One step of a generation: a text delta and its token, or the end with timings."""

    text: str = ""
    token: int | None = None
    finish_reason: FinishReason | None = None
    timings: Timings | None = None
    # With SamplingParams.logprobs: the token's log-probability under the logits it was drawn from
    # (after any constraint's mask) and the most likely alternatives, (token, logprob), best first.
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ModelSummary:
    """What a loaded backend says about its model."""

    path: Path
    architecture: str
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    eog_tokens: tuple[int, ...] = field(default=())


@runtime_checkable
class Backend(Protocol):
    """What the rest of the assistant needs from an engine."""

    name: str
    summary: ModelSummary

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes: ...

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationEvent]: ...

    def close(self) -> None: ...
