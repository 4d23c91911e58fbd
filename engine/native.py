"""The native engine behind the Backend protocol: what it runs, where, and generation.

`unsupported_reason` says why a file cannot run natively (engine.select turns it into the
choice's reason), `native_device` where it runs (an NVIDIA GPU when numba.cuda finds one, else
the CPU), and `NativeBackend` loads a file into engine.transformer's Weights and RunState and
generates with small verbs: `prefill` (append tokens to the KV cache, in chunks), `decode_step`,
the `Sampler`, and `generate`, which streams text deltas through engine.text, stops between two
tokens when cancelled, applies token constraints, and reuses the cached prefix of the previous
call. Tokens come from llama.cpp's tokenizer loaded vocabulary-only (engine.tokenizer).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numba
import numpy as np

from engine import quants
from engine import transformer as T
from engine.backend import (
    EngineError,
    GenerationEvent,
    ModelSummary,
    SamplingParams,
    Timings,
)
from engine.sampler import Sampler
from engine.generation import check_prompt, common_prefix, reusable_prefix, stream_tokens
from engine.kvpool import BLOCK_TOKENS, BlockPool
from engine.matmul import single_threaded_blas
from engine.tokenizer import VocabFile, VocabText
from engine.transformer import Device
from models import arch as A
from models.gguf import GGUFFile, read_gguf

_R = TypeVar("_R")

# ======================================================================================
# What the native engine runs, and where
# ======================================================================================


@functools.cache
def cuda_present() -> bool:
    """True when numba.cuda finds a real NVIDIA GPU (the simulator does not count)."""
    from numba import cuda

    return not numba.config.ENABLE_CUDASIM and cuda.is_available()


def native_device() -> str:
    """Where the native engine runs on this machine, in words."""
    return "NVIDIA GPU (numba.cuda kernels for attention and MoE routing)" if cuda_present() else "CPU (Numba kernels)"


def unsupported_reason(gguf: GGUFFile) -> str | None:
    """One sentence on why `gguf` cannot run natively (architecture, tensors, quant types), or None."""
    why = A.unsupported_reason(gguf, quants.SUPPORTED)
    if why is not None:
        return why
    for info in gguf.tensors.values():
        if len(info.shape) >= 2:
            cant = quants.packable(info.ggml_type, info.shape[0])
            if cant is not None:
                return f"tensor '{info.name}' ({info.type_name}) cannot be repacked: {cant}"
    return None


# ======================================================================================
# The backend
# ======================================================================================

DEFAULT_BLOCK_CACHE_BYTES = 256 << 20  # the block pool's cap, beside the slots' own KV
_KV_DTYPES = {"f16": np.float16, "f32": np.float32}  # NativeBackend's kv_type
_SINGLE, _UNIFORM = b"single", b"uniform"  # one generation's kernels, or the batched ones for every token


class _EngineThread:
    """The one thread that runs a model's kernels. Numba's OpenMP layer starts a team of worker
    threads for each thread that opens parallel regions, and two teams on the same cores cost
    ~25-30%: a model loaded on one thread and decoded on another (the TUI's worker, the language
    server's, the daemon's scheduler) ran at 46-47 tok/s against 64 (Qwen2.5-0.5B, 2 threads).
    Calls from any thread are run here; a call from this thread runs at once."""

    def __init__(self, n_threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="native-engine")
        self._ident = self._pool.submit(threading.get_ident).result()
        self.run(numba.set_num_threads, n_threads)
        self.run(single_threaded_blas)

    def run(self, fn: Callable[..., _R], *args: object, **kwargs: object) -> _R:
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class NativeBackend(VocabText):
    """One GGUF model on the native CPU engine, with a single sequence of KV cache. Its kernels run
    on a thread of its own (`_EngineThread`), whichever thread calls it."""

    name = "native"

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 1,
        n_batch: int = 256,
        architecture: str = "",
        device: Device | None = None,
        n_slots: int = 1,
        block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        kv_type: str = "f16",
        gguf: GGUFFile | None = None,
        packed_dir: Path | None = None,
    ) -> None:
        """Load `path`; `device` None runs on the GPU when numba.cuda finds one, else on the CPU.
        `n_slots` sequences can be generated together (`generate_batch`), each with its own KV cache;
        up to `block_cache_bytes` more hold blocks of earlier sequences for any later prompt that
        starts the same way (engine.kvpool; not for models with a windowed layer, whose rings do
        not keep every row). `kv_type` "f32" keeps the KV cache in float32 instead of float16
        (llama.cpp's `type_k`/`type_v`): twice the memory, and keys, values, queries and softmax
        weights are not rounded to float16 (the layer-by-layer parity checks use it on both sides).
        `gguf`: the file's header where the caller has read it already (Qwen2.5's, with its 151,936
        token strings, takes 0.2-0.3 s to read). `packed_dir`: where the repacked weights are kept
        between runs (engine.packcache; None repacks every time)."""
        if kv_type not in _KV_DTYPES:
            raise EngineError(f"unknown KV cache type {kv_type!r}: one of {', '.join(_KV_DTYPES)}")
        self.path = Path(path)
        self._lock = threading.Lock()
        self.gguf = gguf if gguf is not None else read_gguf(self.path)
        why = unsupported_reason(self.gguf)
        if why is not None:
            raise EngineError(f"the native engine cannot run {self.path.name}: {why}")
        self.cfg = A.config_from_gguf(self.gguf)
        self.n_threads = max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS))
        self._engine = _EngineThread(self.n_threads)
        # llama.cpp reads the vocabulary in C, without the GIL: on a thread of its own while the
        # weights load and the kernels warm up (0.6 s of Qwen2.5's 151,936 tokens here)
        reader = ThreadPoolExecutor(1, thread_name_prefix="vocab")
        self._vocab_job = reader.submit(VocabFile, self.path)
        reader.shutdown(wait=False)
        self._vocab: VocabFile | None = None
        try:
            # one sequence at a time: decode is bound by bytes, so 5- and 6-bit matrices take the
            # smaller layout; batching several, the integer kernels are bound by arithmetic instead
            self.weights = self._engine.run(T.load_weights, self.gguf, self.cfg, planes=n_slots == 1,
                                            packed_dir=packed_dir)
        except BaseException:
            self._engine.close()
            self._close_vocab()
            raise
        self.device: Device = device or ("cuda" if cuda_present() else "cpu")
        self.state = T.RunState(self.cfg, n_ctx, max(min(n_batch, n_ctx), n_slots), self.device, n_slots,
                                _KV_DTYPES[kv_type])
        self._slot_tokens: list[list[int]] = [[] for _ in range(n_slots)]  # per slot: tokens whose K/V it holds
        self._cached = self._slot_tokens[0]  # slot 0's: the single generation
        self._slot_salt = [b""] * n_slots  # per slot: how its rows were computed (the pool keeps kinds apart)
        windowed = any(self.cfg.window(layer) for layer in range(self.cfg.n_layer))
        self.pool = None if windowed or block_cache_bytes <= 0 else BlockPool(
            self.cfg.n_layer, self.cfg.n_head_kv, self.cfg.head_dim, block_cache_bytes, self.state.kv_dtype)
        self._summary_of = (architecture or self.cfg.arch, n_ctx)

    @property
    def vocab(self) -> VocabFile:
        return self._read_vocab()

    def _read_vocab(self) -> VocabFile:
        """The file's vocabulary, waited for the first time it is asked for (EngineError where
        llama.cpp could not read it)."""
        if self._vocab is None:
            if self._vocab_job is None:
                raise EngineError(f"{self.path.name} was closed")
            self._vocab = self._vocab_job.result()
        return self._vocab

    def _close_vocab(self) -> None:
        job, self._vocab_job, self._vocab = getattr(self, "_vocab_job", None), None, None
        if job is not None and job.exception() is None:  # (waits for a read still under way)
            job.result().close()

    @functools.cached_property
    def summary(self) -> ModelSummary:
        architecture, n_ctx = self._summary_of
        return ModelSummary(path=self.path, architecture=architecture, n_ctx=n_ctx, n_ctx_train=self.cfg.n_ctx_train,
                            n_vocab=self.cfg.n_vocab, eog_tokens=self.vocab.eog_tokens)

    @functools.cached_property
    def _eog(self) -> frozenset[int]:
        return frozenset(self.vocab.eog_tokens)

    def warm_up(self) -> None:
        """Evaluate three tokens and forget them, so that Numba loads the kernels a prompt and a
        decoded token take (from its on-disk cache, or compiles them) now rather than inside the
        first request: about 0.1-0.2 s of a first prompt on this machine. With several slots the
        batched kernels the daemon runs, else the single sequence's. Then every scratch buffer made
        is written once, so that its pages are mapped (`RunState.touch_scratch`). Costs about three
        decoded tokens' time beyond the loading; nothing of it stays in the cache or the routing
        counts."""
        tokens = [t % self.cfg.n_vocab for t in (1, 2, 3)]
        with self._lock:
            if self.state.n_slots > 1:
                self.decode_together([], [], chunks=[(0, tokens[:2])], heads=[1])
                self.decode_together(tokens[2:], [0])
            else:
                self.prefill(tokens[:2])
                self.decode_step(tokens[2])
            self.reset()
            if self.cfg.is_moe:
                self.state.routed[:] = 0
            self._engine.run(self.state.touch_scratch)
        self._read_vocab()  # read by now, beside the above: its errors are the loading's

    def decode_bytes_per_token(self) -> int:
        """Bytes of weights one decoded token reads (for the bandwidth bound of `assistant bench`)."""
        return self.weights.decode_bytes(self.cfg)

    # --- evaluation verbs ---------------------------------------------------------------------

    def reset(self) -> None:
        for cached in self._slot_tokens:
            cached.clear()

    def copy_prefix(self, src: int, dst: int, n: int) -> bool:
        """Give slot `dst` the first n cached tokens of slot `src` by copying their K/V rows (every
        position sits in its own row when no layer is windowed); False, copying nothing, when a
        windowed layer's ring does not hold them in place."""
        if any(self.cfg.window(layer) for layer in range(self.cfg.n_layer)) or n <= 0:
            return False
        st = self.state
        self._keep_blocks(dst, common_prefix(self._slot_tokens[dst], self._slot_tokens[src][:n]))
        for k, v in zip(st.k_slots, st.v_slots):
            k[dst, :n] = k[src, :n]
            v[dst, :n] = v[src, :n]
        self._slot_tokens[dst][:] = self._slot_tokens[src][:n]
        self._slot_salt[dst] = self._slot_salt[src]
        return True

    def _keep_blocks(self, slot: int, kept: int, pinned: Sequence[int] = ()) -> None:
        """Before a slot's rows from `kept` on are overwritten, put their whole blocks in the pool
        (without evicting the `pinned` blocks, which are about to be copied in)."""
        cached = self._slot_tokens[slot]
        if self.pool is not None and len(cached) >= kept + 1 and len(cached) >= BLOCK_TOKENS:
            st = self.state
            self.pool.store(cached, [k[slot] for k in st.k_slots], [v[slot] for v in st.v_slots],
                            first_block=kept // BLOCK_TOKENS, salt=self._slot_salt[slot], pinned=pinned)

    def kv_usage(self) -> tuple[int, int]:
        """(tokens whose K/V the slots hold, tokens they can hold)."""
        return sum(len(c) for c in self._slot_tokens), self.state.n_ctx * self.state.n_slots

    def kv_memory(self) -> dict[str, int]:
        """The KV cache's bytes: the slots' (for their whole context) and those kept from earlier
        prompts in the block pool (held, its cap, blocks evicted so far)."""
        pool = self.pool
        return {"slots_bytes": self.state.kv_bytes, "kept_bytes": pool.used_bytes if pool else 0,
                "kept_cap_bytes": pool.cap_bytes if pool else 0, "kept_evictions": pool.stats.evicted_blocks if pool else 0}

    def prefill(self, tokens: Sequence[int], *, all_logits: bool = False, slot: int = 0,
                uniform: bool = False) -> np.ndarray:
        """Append `tokens` to a slot's cache in chunks; the logits of the last (or of every) token.
        `uniform`: every chunk through the batched kernels, so that the values do not depend on how
        the prompt was split (continuous batching splits it by what else is running)."""
        cached = self._slot_tokens[slot]
        assert tokens and len(cached) + len(tokens) <= self.state.n_ctx
        if not cached:
            self._slot_salt[slot] = _UNIFORM if uniform else _SINGLE
        chunks = []
        for i in range(0, len(tokens), self.state.n_batch):
            chunk = np.asarray(tokens[i:i + self.state.n_batch], dtype=np.int64)
            logits = self._engine.run(T.forward, self.cfg, self.weights, self.state, chunk, len(cached), all_logits,
                                      slot, uniform)
            cached.extend(int(t) for t in chunk)
            chunks.append(logits)
        return np.concatenate(chunks) if all_logits else chunks[-1][0]

    def decode_together(self, tokens: Sequence[int], slots: Sequence[int], *, chunks: Sequence[tuple[int, Sequence[int]]] = (),
                        heads: Sequence[int] = ()) -> np.ndarray:
        """Evaluate one token after each of several slots' caches and, in the same pass, `chunks`
        of prompts ((slot, tokens) appended to those slots' caches and token lists); the logits
        (n, n_vocab) of the decoded tokens, then of the chunks' rows `heads` (indices into the
        chunks' tokens taken in order). The decoded tokens are not added to their slots' token
        lists (the caller does)."""
        rows_tok = list(tokens)
        rows_slot = list(slots)
        rows_pos = [len(self._slot_tokens[s]) for s in slots]
        for slot, chunk in chunks:
            cached = self._slot_tokens[slot]
            if not cached:
                self._slot_salt[slot] = _UNIFORM
            rows_tok += chunk
            rows_slot += [slot] * len(chunk)
            rows_pos += range(len(cached), len(cached) + len(chunk))
        head = np.concatenate([np.arange(len(tokens)), len(tokens) + np.asarray(heads, np.int64)]).astype(np.int64)
        logits = self._engine.run(T.forward_batch, self.cfg, self.weights, self.state, np.asarray(rows_tok, np.int64),
                                  np.asarray(rows_slot, np.int64), np.asarray(rows_pos, np.int64), head)
        for slot, chunk in chunks:
            self._slot_tokens[slot].extend(int(t) for t in chunk)
        return logits

    def decode_step(self, token: int) -> np.ndarray:
        """Evaluate one token after the cache; its logits (n_vocab,)."""
        return self.prefill([token])

    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits (n_tokens, n_vocab) of `tokens` from an empty cache."""
        with self._lock:
            self.reset()
            return self.prefill(list(tokens), all_logits=True)

    def eval_layer(self, layer: int, x: np.ndarray) -> np.ndarray:
        """One layer on the residual stream x (n, n_embd) at positions 0..n-1, in chunks (for parity tests)."""
        assert x.shape[0] <= self.state.n_ctx and x.shape[1] == self.cfg.n_embd, x.shape
        out = np.empty_like(x)

        def run() -> None:
            st, lw = self.state, self.weights.layers[layer]
            for pos0 in range(0, x.shape[0], st.n_batch):
                n = min(st.n_batch, x.shape[0] - pos0)
                T.set_positions(self.cfg, self.weights, st, np.arange(pos0, pos0 + n))
                st.x[:n] = x[pos0:pos0 + n]
                T.attention_block(self.cfg, lw, st, layer, pos0, n)
                T.ffn_block(self.cfg, lw, st, layer, n)
                out[pos0:pos0 + n] = st.x[:n]

        with self._lock:
            self.reset()
            self._engine.run(run)
        return out

    def eval_head(self, x: np.ndarray) -> np.ndarray:
        """Final norm and LM head on the residual stream x (n, n_embd): logits (n, n_vocab)."""
        x = np.ascontiguousarray(x, np.float32)
        step = self.state.n_batch
        with self._lock:
            return np.concatenate([self._engine.run(T.head_logits, self.cfg, self.weights, self.state, x[i:i + step])
                                   for i in range(0, x.shape[0], step)])

    def _reuse_prefix(self, prompt: Sequence[int], slot: int = 0, uniform: bool = False) -> int:
        """Keep a slot's cached tokens shared with `prompt` while every ring still holds them, or
        take a longer prefix from the block pool; how many tokens need no evaluation. What the slot
        held beyond them goes to the pool first."""
        cached = self._slot_tokens[slot]
        n = reusable_prefix(cached, prompt)
        for layer in range(self.cfg.n_layer):
            window, cap = self.cfg.window(layer), self.state.k_cache[layer].shape[0]
            if window and n > 0 and max(0, n - window + 1) <= len(cached) - 1 - cap:
                n = 0  # a ring has overwritten part of the window the next token needs
        blocks: list[int] = []
        salt = _UNIFORM if uniform else _SINGLE
        if self.pool is not None and len(prompt) > n + BLOCK_TOKENS:
            blocks = self.pool.match(prompt[:len(prompt) - 1], salt)  # the last token is evaluated
            if len(blocks) * BLOCK_TOKENS <= n:
                blocks = []
        self._keep_blocks(slot, n, pinned=blocks)
        if blocks:
            st = self.state
            n = self.pool.restore(blocks, [k[slot] for k in st.k_slots], [v[slot] for v in st.v_slots],
                                  first_block=n // BLOCK_TOKENS)
            cached[:] = prompt[:n]
            self._slot_salt[slot] = salt
        del cached[n:]
        return n

    # --- generation ---------------------------------------------------------------------------

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

    def generate_batch(
        self,
        requests: Sequence[tuple[Sequence[int], SamplingParams]],
        *,
        cancels: Sequence[threading.Event | None] | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[tuple[int, GenerationEvent]]:
        """Generate the continuations of several prompts together (at most n_slots) through a
        `BatchDecoder`, the prompts prefilled together (n_batch tokens a pass). Yields (request index,
        event), each sequence's events in order and the same tokens it gets alone (greedy or
        seeded); an error in one request is raised."""
        assert 0 < len(requests) <= self.state.n_slots, (len(requests), self.state.n_slots)
        # every prompt as soon as a pass has room: all of them are known now
        decoder = BatchDecoder(self, prefill_budget=sum(len(p) for p, _ in requests))
        index = {}
        for i, (prompt, params) in enumerate(requests):
            index[decoder.add(prompt, params, cancel=cancels[i] if cancels else None, ignore_eos=ignore_eos)] = i
        while decoder.running:
            for slot, ev in decoder.step():
                if isinstance(ev, BaseException):
                    raise ev
                yield index[slot], ev

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        cancel: threading.Event | None,
        ignore_eos: bool,
    ) -> Iterator[GenerationEvent]:
        """Prefill `prompt` into slot 0 (reusing its cached prefix) and return its token stream."""
        t0 = time.perf_counter()
        reused = self._reuse_prefix(prompt)
        first = self.prefill(prompt[reused:])
        return self._stream(prompt, params, cancel, ignore_eos, 0, None, first, reused, t0, time.perf_counter() - t0)

    def _stream(
        self,
        prompt: list[int],
        params: SamplingParams,
        cancel: threading.Event | None,
        ignore_eos: bool,
        slot: int,
        batched: dict[int, np.ndarray] | None,
        first: np.ndarray,
        reused: int,
        t0: float,
        t_prompt: float,
    ) -> Iterator[GenerationEvent]:
        """The token stream of a prefilled prompt whose last logits are `first`. Alone (`batched`
        None) each token is evaluated as the stream advances; in a batch the driver evaluates every
        slot's token together and leaves the logits in batched[slot] before the stream goes on."""
        sampler = Sampler(params)
        history = list(prompt)
        cached = self._slot_tokens[slot]
        constraint = params.constraint  # engine.constrained: masks the logits before each sample
        state = {"logits": first}

        def sample() -> int:
            if batched is not None and slot in batched:
                state["logits"] = batched.pop(slot)
            if constraint is not None:
                constraint.apply(state["logits"])
            tok = sampler.sample(state["logits"], history)
            if constraint is not None:
                constraint.accept(tok)
            return tok

        def advance(tok: int) -> None:
            history.append(tok)
            if batched is None:
                state["logits"] = self.decode_step(tok)
            else:  # evaluated already, with the other slots' tokens
                cached.append(tok)

        return stream_tokens(
            params=params, cancel=cancel,
            stop_tokens=frozenset(params.stop_tokens) | (frozenset() if ignore_eos else self._eog),
            token_bytes=self.token_bytes, sample=sample, advance=advance,
            context_full=lambda: len(cached) + 1 >= self.summary.n_ctx,
            prompt_tokens=len(prompt), reused_tokens=reused, t0=t0, t_prompt=t_prompt,
            logits=lambda: state["logits"],
        )

    def close(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self._engine.close()
        self._close_vocab()
        if getattr(self, "gguf", None) is not None:
            self.gguf.close()


# ======================================================================================
# Continuous batching
# ======================================================================================


SHARE_MIN_TOKENS = 16  # a prefix is copied from another slot when it saves at least this many tokens


@dataclass
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    cancel: threading.Event | None
    ignore_eos: bool
    reused: int
    t0: float
    done: int = 0  # prompt tokens in the slot's cache
    stream: Iterator[GenerationEvent] | None = None


class BatchDecoder:
    """Sequences that join and leave between decode steps on one native backend (continuous
    batching, for the daemon). `add` gives a request a free slot, the one whose cached tokens share
    the longest prefix with its prompt; each `step` is one batched pass of the model over a token of
    every running sequence and chunks of waiting prompts, up to `prefill_budget` tokens (one chunk
    by default, so a long prompt goes in pieces while the running streams keep flowing): several
    prompts that arrive together are prefilled in one pass, and beside the decoding ones.
    Every evaluation goes through the batched kernels, so a sequence's tokens do not depend on what
    runs beside it or on how its prompt was split. A cancelled sequence ends at the next step and
    frees its slot."""

    def __init__(self, backend: NativeBackend, *, prefill_budget: int | None = None) -> None:
        self.backend = backend
        self.n_slots = backend.state.n_slots
        self.prefill_budget = prefill_budget or backend.state.n_batch
        self._seqs: dict[int, _Sequence] = {}  # slot -> sequence, in the order they arrived
        self._pending: dict[int, int] = {}  # slot -> its last token, whose logits the next step needs
        self._logits: dict[int, np.ndarray] = {}

    @property
    def running(self) -> int:
        return len(self._seqs)

    @property
    def free(self) -> int:
        return self.n_slots - len(self._seqs)

    def add(self, prompt: Sequence[int], params: SamplingParams, *, cancel: threading.Event | None = None,
            ignore_eos: bool = False) -> int:
        """Take a request into a free slot (raises EngineError for a prompt that cannot run); its slot."""
        b = self.backend
        check_prompt(prompt, b.summary.n_ctx)
        assert self.free > 0, "no free slot"
        prompt = list(prompt)
        with b._lock:
            held = [reusable_prefix(b._slot_tokens[s], prompt) for s in range(self.n_slots)]
            slot = max((s for s in range(self.n_slots) if s not in self._seqs), key=lambda s: (held[s], -s))
            # another slot (running or not) that holds a longer prefix of this prompt lends it: its
            # K/V rows are copied instead of computed again (a shared system prompt, the same file)
            lender = max(range(self.n_slots), key=held.__getitem__)
            if held[lender] >= held[slot] + SHARE_MIN_TOKENS:
                b.copy_prefix(lender, slot, held[lender])
            reused = b._reuse_prefix(prompt, slot, uniform=True)
        self._seqs[slot] = _Sequence(prompt, params, cancel, ignore_eos, reused, time.perf_counter(), done=reused)
        return slot

    def step(self) -> list[tuple[int, GenerationEvent | BaseException]]:
        """One pass of the model: a token of every running sequence and, beside them, chunks of
        waiting prompts (up to `prefill_budget` tokens and what the pass holds), so the weights
        are read once for both; the events this produced, per slot (an exception is that
        request's error; its slot is freed like a finished one)."""
        b = self.backend
        out: list[tuple[int, GenerationEvent | BaseException]] = []
        with b._lock:
            # one token of every running sequence; one whose next token would not fit ends in its
            # stream ('length'), unevaluated
            ready = [s for s in self._pending if len(b._slot_tokens[s]) + 1 < b.summary.n_ctx]
            room = min(self.prefill_budget, b.state.n_batch - len(ready))
            chunks: list[tuple[int, list[int]]] = []
            heads: list[int] = []
            finishing: list[int] = []
            at = 0
            for slot, seq in list(self._seqs.items()):
                if seq.stream is not None:
                    continue
                if seq.cancel is not None and seq.cancel.is_set():  # left before its first token
                    del self._seqs[slot]
                    out.append((slot, GenerationEvent(finish_reason="cancelled", timings=Timings(
                        len(seq.prompt), seq.reused, time.perf_counter() - seq.t0, 0, 0.0,
                        time.perf_counter() - seq.t0))))
                    continue
                if room <= 0:
                    continue
                n = min(len(seq.prompt) - seq.done, room)  # where it splits changes no value (uniform)
                chunks.append((slot, seq.prompt[seq.done:seq.done + n]))
                seq.done += n
                room -= n
                at += n
                if seq.done == len(seq.prompt):
                    heads.append(at - 1)
                    finishing.append(slot)
            if ready or chunks:
                rows = b.decode_together([self._pending[s] for s in ready], ready, chunks=chunks, heads=heads)
                for j, s in enumerate(ready):
                    self._logits[s] = rows[j]
                for j, slot in enumerate(finishing):
                    seq = self._seqs[slot]
                    seq.stream = b._stream(seq.prompt, seq.params, seq.cancel, seq.ignore_eos, slot, self._logits,
                                           rows[len(ready) + j], seq.reused, seq.t0, time.perf_counter() - seq.t0)
                    out.extend(self._pump(slot))
            for s in list(self._pending):
                if s in finishing:
                    continue
                del self._pending[s]
                out.extend(self._pump(s))
        return out

    def _pump(self, slot: int) -> list[tuple[int, GenerationEvent | BaseException]]:
        seq = self._seqs[slot]
        try:
            ev = next(seq.stream)
        except Exception as e:  # noqa: BLE001 - e.g. a constraint that cannot go on
            del self._seqs[slot]
            self._logits.pop(slot, None)
            return [(slot, e)]
        if ev.finish_reason is None:
            self._pending[slot] = ev.token
        else:
            del self._seqs[slot]
            self._logits.pop(slot, None)
        return [(slot, ev)]
