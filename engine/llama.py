"""The llama.cpp backend: the GGUF fallback, on llama-cpp-python's low-level API.

The high-level `Llama.generate` copies the whole logits row into numpy and samples in Python
each step (7.5 tok/s on the bundled 0.5B model here); this backend drives `llama_decode`
directly and samples with llama.cpp's own sampler chain in C, so a token costs one decode plus
a few microseconds of Python. The tokens in the KV cache are remembered, and the next call
evaluates only the part of its prompt that differs (prefix reuse). When a prompt would drop most
of what the cache holds (an editor moving to another file), the sequence's state is saved first,
up to a byte cap (engine.kvpool.SavedSequences), and a later prompt that starts like a saved
sequence gets it back instead of evaluating it again.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp as lc
import numpy as np

from engine.backend import (
    EngineError,
    GenerationEvent,
    ModelSummary,
    SamplingParams,
)
from engine.generation import check_prompt, reusable_prefix, stream_tokens
from engine.kvpool import BLOCK_TOKENS, SavedSequences
from engine.tokenizer import Vocab, VocabText, init_llama


SAVE_MIN_TOKENS = 256  # a sequence is saved when a new prompt would drop at least this many of its tokens


class LlamaBackend(VocabText):
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
        saved_bytes: int = 0,
    ) -> None:
        """Load `path`; up to `saved_bytes` of sequence states are kept for prompts that come back."""
        init_llama()
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
        self.vocab = Vocab(self._vocab)
        self._mem = lc.llama_get_memory(self._ctx)
        self._n_batch = n_batch
        self._n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        self.saved = SavedSequences(saved_bytes) if saved_bytes > 0 else None
        eog = self.vocab.eog_tokens
        self.summary = ModelSummary(
            path=self.path,
            architecture=architecture,
            n_ctx=lc.llama_n_ctx(self._ctx),
            n_ctx_train=lc.llama_model_n_ctx_train(self._model),
            n_vocab=self._n_vocab,
            eog_tokens=eog,
        )
        self._eog = frozenset(eog)

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

    def kv_memory(self) -> dict[str, int]:
        """The KV cache's bytes: the one sequence's (its whole context, f16 K and V) and the saved
        sequences' (held, the cap, states evicted so far)."""
        m = self._model
        head_dim = lc.llama_model_n_embd(m) // max(1, lc.llama_model_n_head(m))
        slots = self.summary.n_ctx * lc.llama_model_n_layer(m) * 2 * lc.llama_model_n_head_kv(m) * head_dim * 2
        saved = self.saved
        return {"slots_bytes": slots, "kept_bytes": saved.used_bytes if saved else 0,
                "kept_cap_bytes": saved.cap_bytes if saved else 0, "kept_evictions": saved.stats.evicted_blocks if saved else 0}

    def kv_usage(self) -> tuple[int, int]:
        """(tokens whose K/V the cache holds, tokens it can hold)."""
        return len(self._cached), self.summary.n_ctx

    def _reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keep the cached tokens shared with `prompt` (or a saved sequence's, when it shares more),
        drop the rest; return how many were kept."""
        n = reusable_prefix(self._cached, prompt)
        # a saved sequence is worth restoring only for a block or more beyond what the cache keeps
        worth_looking = self.saved is not None and len(prompt) - 1 >= n + BLOCK_TOKENS
        found = self.saved.best(prompt) if worth_looking else None
        if len(self._cached) - n >= SAVE_MIN_TOKENS:
            self._save_sequence()
        if found is not None and min(found[2], len(prompt) - 1) >= n + BLOCK_TOKENS:
            tokens, state, shared = found
            lc.llama_memory_seq_rm(self._mem, 0, -1, -1)
            if lc.llama_state_seq_set_data(self._ctx, state, len(state), 0) == 0:
                self.reset()
                return 0
            self._cached = list(tokens)
            n = min(shared, len(prompt) - 1)
            self.saved.stats.hit_tokens += n
        if n < len(self._cached):
            if not lc.llama_memory_seq_rm(self._mem, 0, n, -1):
                self.reset()
                return 0
            del self._cached[n:]
        return n

    def _save_sequence(self) -> None:
        """Keep the cached sequence's state (its K/V cells) for a prompt that comes back to it."""
        size = lc.llama_state_seq_get_size(self._ctx, 0)
        if self.saved is None or size > self.saved.cap_bytes:
            return
        state = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(self._ctx, state, size, 0) == size:
            self.saved.put(self._cached, state)

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
        check_prompt(prompt, self.summary.n_ctx)
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
        constraint = params.constraint
        one = (lc.llama_token * 1)()

        def sample() -> int:
            if constraint is not None:  # mask the logits in place: the sampler reads them next
                logits = lc.llama_get_logits_ith(self._ctx, -1)
                constraint.apply(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)))
            tok = lc.llama_sampler_sample(chain, self._ctx, -1)
            if constraint is not None:
                constraint.accept(tok)
            return tok

        def advance(tok: int) -> None:
            one[0] = tok
            rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(one, 1))
            if rc != 0:
                self.reset()
                raise EngineError(f"llama_decode failed with code {rc} at position {len(self._cached)}")
            self._cached.append(tok)

        try:
            yield from stream_tokens(
                params=params, cancel=cancel,
                stop_tokens=frozenset(params.stop_tokens) | (frozenset() if ignore_eos else self._eog),
                token_bytes=self.token_bytes, sample=sample, advance=advance,
                context_full=lambda: len(self._cached) + 1 >= self.summary.n_ctx,
                prompt_tokens=len(prompt), reused_tokens=reused, t0=t0, t_prompt=t_prompt,
                logits=lambda: np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, -1), shape=(self._n_vocab,)),
            )
        finally:
            lc.llama_sampler_free(chain)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
