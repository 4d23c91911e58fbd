"""The token loop every backend shares: sample, stream text, stop, and account for the time.

A backend supplies three small verbs — `sample()` picks the next token from the current logits
(applying any constraint), `advance(token)` evaluates it so the next logits exist, and
`context_full()` says whether another token still fits — and `stream_tokens` does the rest:
cancellation between tokens, max_tokens, end-of-generation tokens, incremental UTF-8, stop
strings across token boundaries, and the final event with the finish reason and timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from engine.backend import ContextOverflowError, EngineError, FinishReason, GenerationEvent, SamplingParams, Timings
from engine.sampler import token_logprobs
from engine.text import StopMatcher, Utf8Stream


def check_prompt(prompt: Sequence[int], n_ctx: int) -> None:
    """Refuse an empty prompt, or one that leaves no room in the context (said, never cut)."""
    if not prompt:
        raise EngineError("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}; "
            "shorten it or raise context_length in the settings"
        )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many cached tokens the prompt starts with, keeping its last token to evaluate (for its logits)."""
    return min(common_prefix(cached, prompt), len(prompt) - 1)


def stream_tokens(
    *,
    params: SamplingParams,
    cancel: threading.Event | None,
    stop_tokens: frozenset[int],
    token_bytes: Callable[[int], bytes],
    sample: Callable[[], int],
    advance: Callable[[int], None],
    context_full: Callable[[], bool],
    prompt_tokens: int,
    reused_tokens: int,
    t0: float,
    t_prompt: float,
    logits: Callable[[], np.ndarray] | None = None,
) -> Iterator[GenerationEvent]:
    """Generate after a prefilled prompt; one event per token, then the end with timings.
    `logits()` gives the row the last token was drawn from, for `params.logprobs`."""
    utf8, stops = Utf8Stream(), StopMatcher(params.stop)
    n_gen, t_first = 0, 0.0
    finish: FinishReason | None = None
    while finish is None:
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
            break
        if n_gen >= params.max_tokens:
            finish = "length"
            break
        tok = sample()
        n_gen += 1
        if n_gen == 1:
            t_first = time.perf_counter()
        if tok in stop_tokens:
            finish = "stop"
            break
        lp: dict = {}
        if params.logprobs is not None and logits is not None:
            value, top = token_logprobs(logits(), tok, params.logprobs)
            lp = {"logprob": value, "top_logprobs": top}
        text = stops.feed(utf8.feed(token_bytes(tok)))
        if stops.stopped:
            finish = "stop"
            if text:
                yield GenerationEvent(text=text, token=tok, **lp)
            break
        yield GenerationEvent(text=text, token=tok, **lp)
        if context_full():
            finish = "length"
            break
        advance(tok)
    tail = stops.feed(utf8.flush()) + stops.flush()
    t_end = time.perf_counter()
    timings = Timings(
        prompt_tokens=prompt_tokens,
        reused_tokens=reused_tokens,
        prompt_s=t_prompt,
        generated_tokens=n_gen,
        decode_s=(t_end - t_first) if n_gen else 0.0,
        ttft_s=(t_first - t0) if n_gen else t_end - t0,
    )
    yield GenerationEvent(text=tail, finish_reason=finish, timings=timings)
