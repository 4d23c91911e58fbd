"""The llama.cpp backend: the GGUF fallback, on llama-cpp-python's low-level API.

The high-level `Llama.generate` copies the whole logits row into numpy and samples in Python
each step (7.5 tok/s on the bundled 0.5B model here); this backend drives `llama_decode`
directly and samples with llama.cpp's own sampler chain in C, so a token costs one decode plus
a few microseconds of Python. The tokens in the KV cache are remembered, and the next call
evaluates only the part of its prompt that differs (prefix reuse).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp as lc
import numpy as np

from engine.backend import (
    ContextOverflowError,
    EngineError,
    GenerationEvent,
    ModelSummary,
    SamplingParams,
    Timings,
)
from engine.text import StopMatcher, Utf8Stream

log = logging.getLogger(__name__)

# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation. Its info is a page per load,
# so it goes to the log only at DEBUG.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}


@lc.llama_log_callback
def _log_to_python(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp writes to stderr unless told otherwise; stdout and stderr belong to the UI.
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        log.log(_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", msg)


@functools.cache
def _init_llama() -> None:
    """Set up llama.cpp once per process (safe to call again)."""
    lc.llama_log_set(_log_to_python, ctypes.c_void_p(0))
    lc.llama_backend_init()


class LlamaBackend:
    """One GGUF model loaded by llama.cpp, with a single sequence of KV cache."""

    name = "llama"

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 1,
        n_batch: int = 512,
        architecture: str = "",
    ) -> None:
        _init_llama()
        self._lock = threading.Lock()
        self.path = Path(path)
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {self.path} (see the log for its reason)")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise EngineError(f"llama.cpp could not make a context of {n_ctx} tokens for {self.path}")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self._mem = lc.llama_get_memory(self._ctx)
        self._n_batch = n_batch
        self._n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        eog = tuple(t for t in range(self._n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        self.summary = ModelSummary(
            path=self.path,
            architecture=architecture,
            n_ctx=lc.llama_n_ctx(self._ctx),
            n_ctx_train=lc.llama_model_n_ctx_train(self._model),
            n_vocab=self._n_vocab,
            eog_tokens=eog,
        )
        self._eog = frozenset(eog)

    # --- text <-> tokens ----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # more tokens than bytes can only happen with added specials; retry at the size asked
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        key = token if not special else -1 - token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = buf.raw[:n]
            self._pieces[key] = piece
        return piece

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special) for t in tokens).decode("utf-8", "replace")

    # --- evaluation ---------------------------------------------------------------------------

    def _eval(self, tokens: Sequence[int]) -> None:
        """Append `tokens` to the KV cache, in batches; logits are kept for the last one."""
        for i in range(0, len(tokens), self._n_batch):
            chunk = tokens[i : i + self._n_batch]
            arr = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                # The cache may hold part of the chunk now; forget everything to stay consistent.
                self.reset()
                raise EngineError(f"llama_decode failed with code {rc} at position {len(self._cached)}")
            self._cached.extend(chunk)

    def reset(self) -> None:
        lc.llama_memory_clear(self._mem, True)
        self._cached = []

    def _reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keep the cached tokens shared with `prompt`, drop the rest; return how many were kept."""
        n = 0
        for a, b in zip(self._cached, prompt):
            if a != b:
                break
            n += 1
        n = min(n, len(prompt) - 1)  # the last prompt token is always evaluated, for its logits
        if n < len(self._cached):
            if not lc.llama_memory_seq_rm(self._mem, 0, n, -1):
                self.reset()
                return 0
            del self._cached[n:]
        return n

    def _sampler(self, params: SamplingParams, history: Sequence[int]) -> lc.llama_sampler_p:
        sparams = lc.llama_sampler_chain_default_params()
        sparams.no_perf = True
        chain = lc.llama_sampler_chain_init(sparams)
        add = functools.partial(lc.llama_sampler_chain_add, chain)
        if params.repeat_penalty != 1.0:
            add(lc.llama_sampler_init_penalties(params.repeat_last_n, params.repeat_penalty, 0.0, 0.0))
        if params.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(lc.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(lc.llama_sampler_init_min_p(params.min_p, 1))
            add(lc.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
            add(lc.llama_sampler_init_dist(seed))
        if params.repeat_penalty != 1.0:
            for t in history[-params.repeat_last_n :]:
                lc.llama_sampler_accept(chain, t)
        return chain

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[GenerationEvent]:
        """Stream the continuation of `prompt`; see `engine.backend.Backend`."""
        n_ctx = self.summary.n_ctx
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}; "
                "shorten it or raise context_length in the settings"
            )
        with self._lock:
            yield from self._generate(list(prompt), params, cancel, ignore_eos)

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        cancel: threading.Event | None,
        ignore_eos: bool,
    ) -> Iterator[GenerationEvent]:
        t0 = time.perf_counter()
        reused = self._reuse_prefix(prompt)
        self._eval(prompt[reused:])
        t_prompt = time.perf_counter() - t0
        chain = self._sampler(params, prompt)
        utf8, stops = Utf8Stream(), StopMatcher(params.stop)
        stop_tokens = frozenset(params.stop_tokens) | (frozenset() if ignore_eos else self._eog)
        n_gen, t_first, finish = 0, 0.0, None
        constraint = params.constraint
        one = (lc.llama_token * 1)()
        try:
            while finish is None:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if n_gen >= params.max_tokens:
                    finish = "length"
                    break
                if constraint is not None:  # mask the logits in place: the sampler reads them next
                    logits = lc.llama_get_logits_ith(self._ctx, -1)
                    constraint.apply(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)))
                tok = lc.llama_sampler_sample(chain, self._ctx, -1)
                if constraint is not None:
                    constraint.accept(tok)
                n_gen += 1
                if n_gen == 1:
                    t_first = time.perf_counter()
                if tok in stop_tokens:
                    finish = "stop"
                    break
                text = stops.feed(utf8.feed(self.token_bytes(tok)))
                if stops.stopped:
                    finish = "stop"
                    if text:
                        yield GenerationEvent(text=text, token=tok)
                    break
                yield GenerationEvent(text=text, token=tok)
                if len(self._cached) + 1 >= self.summary.n_ctx:
                    finish = "length"
                    break
                one[0] = tok
                rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(one, 1))
                if rc != 0:
                    self.reset()
                    raise EngineError(f"llama_decode failed with code {rc} at position {len(self._cached)}")
                self._cached.append(tok)
        finally:
            lc.llama_sampler_free(chain)
        tail = stops.feed(utf8.flush()) + stops.flush()
        t_end = time.perf_counter()
        timings = Timings(
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            prompt_s=t_prompt,
            generated_tokens=n_gen,
            decode_s=(t_end - t_first) if n_gen else 0.0,
            ttft_s=(t_first - t0) if n_gen else t_end - t0,
        )
        yield GenerationEvent(text=tail, finish_reason=finish, timings=timings)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
