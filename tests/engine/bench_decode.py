"""Decode speed of the native engine's forward pass alone (not a test: run it by hand).

Opens a GGUF file as an engine that decodes one sequence does (packed weights with planes and
compact scales where the integer kernels run, float16 KV cache), evaluates a 512-token prompt,
then decodes `--tokens` tokens `--rounds` times through `transformer.forward`, one token at a
time with no sampling, and prints the median and best tokens per second. Without `assistant
bench`'s processes, generation loop and llama.cpp reference it is quick and steadier, for A/B
runs of two checkouts alternating in fresh processes (each with its own NUMBA_CACHE_DIR):

    PYTHONPATH=. .venv/bin/python -m tests.engine.bench_decode MODEL.gguf [--threads 2]

`--ab-fused` instead alternates, in this one process, decoding `--tokens` tokens with each block
of a layer in one jitted call (engine.fused) and kernel by kernel (both give the same numbers, so
they share the KV cache), `--rounds` times each, and prints each path's median and best
milliseconds per token: the slow drift of a shared machine falls on both alike.

`--parts` prints where a decoded token goes: the forward pass, its layers and its head, then
each matrix of layer 0 through the integer path for one token and for eight, and attention over
the prompt, each timed on its own (from the cache, so faster than in the pass, which reads them
from memory).
`--batch N` instead decodes N sequences together (`forward_batch`, each slot's cache filled with
the prompt) and prints a step's time with the share of its matrices, attention, quantizing and
the rest (timers around those functions), then layer 0's attention alone with its caches hot.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ab-fused", action="store_true", help="one call per layer against kernel by kernel")
    ap.add_argument("--parts", action="store_true", help="a token's time by part, and layer 0's matrices")
    ap.add_argument("--batch", type=int, default=0, help="decode this many sequences together, by part")
    a = ap.parse_args()

    import numba

    from engine import transformer as T
    from engine.matmul import single_threaded_blas
    from models import arch as A
    from models.gguf import read_gguf

    single_threaded_blas()
    numba.set_num_threads(a.threads)
    gguf = read_gguf(a.model)
    cfg = A.config_from_gguf(gguf)
    weights = T.load_weights(gguf, cfg, planes=True)
    if a.batch:
        return _batch_parts(a, cfg, weights)
    n_ctx = a.prompt + 12 + a.tokens * a.rounds * (2 if a.ab_fused else 1)
    st = T.RunState(cfg, n_ctx, a.prompt, "cpu", 1)
    tokens = _tokens(cfg, n_ctx)
    T.forward(cfg, weights, st, tokens[:a.prompt], 0, False)
    pos = a.prompt
    for _ in range(8):  # warm: every one-token kernel loaded and its buffers mapped
        T.forward(cfg, weights, st, tokens[pos:pos + 1], pos, False)
        pos += 1
    if a.ab_fused:
        return _ab_fused(a, cfg, weights, st, tokens, pos)
    if a.parts:
        return _parts(cfg, weights, st, tokens, pos)
    rates = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.tokens):
            T.forward(cfg, weights, st, tokens[pos:pos + 1], pos, False)
            pos += 1
        rates.append(a.tokens / (time.perf_counter() - t0))
    print(f"{a.model}: decode after {a.prompt} tokens, {a.threads} threads: median {np.median(rates):.1f} tok/s, "
          f"best {max(rates):.1f} ({a.rounds} x {a.tokens} tokens)")
    return 0


def _ab_fused(a: argparse.Namespace, cfg, weights, st, tokens: np.ndarray, pos: int) -> int:
    """Rounds of `a.tokens` decoded tokens with and without engine.fused, alternating (which goes
    first alternates too), on the integer one-token path `transformer.forward` takes."""
    from engine import transformer as T

    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(-1, a.rounds):  # round -1: each path's kernels loaded, untimed
        for fused in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            for _ in range(a.tokens if r >= 0 else 2):
                T.embed(cfg, weights, st, tokens[pos:pos + 1], np.arange(pos, pos + 1))
                T._layers_and_head(cfg, weights, st, 1, True, slice(0, 1), pos0=pos, experts_alone=True, fused=fused)
                pos += 1
            if r >= 0:
                times[fused].append((time.perf_counter() - t0) / a.tokens * 1e3)
    for fused, label in ((False, "kernel by kernel"), (True, "one call per layer")):
        print(f"{label}: median {np.median(times[fused]):.2f} ms per token, best {min(times[fused]):.2f} "
              f"({a.rounds} x {a.tokens} tokens after {a.prompt})")
    return 0


def _tokens(cfg, n: int) -> np.ndarray:
    """n token ids spread over the vocabulary (which ones does not matter to the timing)."""
    return (np.arange(n, dtype=np.int64) * 7919 % min(cfg.n_vocab, 30000)) + 100


def _median_us(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _parts(cfg, weights, st, tokens: np.ndarray, pos: int) -> int:
    """A decoded token's time by part (medians of 30), then layer 0's matrices and attention alone."""
    from engine import kernels as K
    from engine import matmul as M
    from engine import transformer as T
    from engine.quants import quantize_activation8

    at = [pos]

    def token() -> None:
        T.forward(cfg, weights, st, tokens[at[0]:at[0] + 1], at[0], False)
        at[0] += 1

    print(f"forward: {_median_us(token, 30) / 1e3:.2f} ms")
    st.batched = st.fused = True
    try:
        layers = lambda: [T._layer_one_token(cfg, lw, st, i, at[0], 0) for i, lw in enumerate(weights.layers)]  # noqa: E731
        print(f"layers: {_median_us(layers, 30) / 1e3:.2f} ms")
        print(f"head: {_median_us(lambda: T.head_logits(cfg, weights, st, st.x[:1]), 30) / 1e3:.2f} ms")
    finally:
        st.batched = st.fused = False
    lw = weights.layers[0]
    for name in ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down"):
        w = getattr(lw, name, None)
        if w is None or not M.int8_weight(w):
            continue
        said = []
        for n in (1, 8):  # one token (decode), eight (a batch)
            x = np.random.default_rng(0).standard_normal((n, w.k)).astype(np.float32)
            xh, xs = np.empty_like(x), np.empty((n, w.k // 32), np.float32)
            xq, xd = np.empty((n, w.k), np.int8), np.empty((n, w.k // 32), np.float32)
            quantize_activation8(w.act, x, xh, xs, xq, xd)
            out = np.empty((n, w.rows), np.float32)
            us = _median_us(lambda: M.matmul_int8(out, w, xq, xd, xs), 200)
            said.append(f"{n} token{'s' if n > 1 else ''} {us:.1f} us, {n * w.rows * w.k / us / 1e3:.2f} GMAC/s")
        print(f"layer 0 {name} ({w.rows} x {w.k}, GGML type {w.qtype}): " + "; ".join(said))
    q = st.q[:1].reshape(1, cfg.n_head, cfg.head_dim)
    att = st.attn_out.x[:1].reshape(1, cfg.n_head, cfg.head_dim)
    us = _median_us(lambda: K.attention(att, q, st.k_bits[0][0], st.v_bits[0][0], at[0], cfg.window(0),
                                        1.0 / cfg.head_dim ** 0.5), 200)
    print(f"layer 0 attention over {at[0] + 1} positions: {us:.1f} us")
    return 0


def _batch_parts(a: argparse.Namespace, cfg, weights) -> int:
    """`--batch N`: N sequences decoded together after `--prompt` positions each, a step by part."""
    import collections

    from engine import kernels as K
    from engine import matmul as M
    from engine import transformer as T

    n = a.batch
    st = T.RunState(cfg, a.prompt + a.tokens + 8, max(64, n), "cpu", n)
    tokens = _tokens(cfg, a.prompt + a.tokens + n)
    for slot in range(n):  # every slot's cache filled with the same prompt (only the timing matters)
        for p0 in range(0, a.prompt, 64):
            T.forward(cfg, weights, st, tokens[p0:min(a.prompt, p0 + 64)], p0, False, slot=slot)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[label] += time.perf_counter() - t0

        setattr(owner, name, wrapper)

    timed(M, "matmul_int8", "integer matrices (the head's included)")
    timed(K, "attention_slots", "attention over the caches")
    timed(T, "head_logits", "head (norm and matrix)")
    timed(T.Activations, "_quantize", "quantizing activations")
    for name in ("rmsnorm", "rope", "swiglu"):
        timed(K, name, name)
    slots, positions = np.arange(n), np.full(n, a.prompt)
    T.forward_batch(cfg, weights, st, tokens[:n], slots, positions.copy())
    spent.clear()
    t0 = time.perf_counter()
    for i in range(a.tokens):
        T.forward_batch(cfg, weights, st, tokens[i:i + n], slots, positions + 1 + i)
    step = (time.perf_counter() - t0) / a.tokens * 1e3
    print(f"{n} sequences after {a.prompt} positions: {step:.1f} ms a step, {n / step * 1e3:.1f} tok/s aggregate")
    for label, secs in spent.most_common():
        print(f"  {label}: {secs / a.tokens * 1e3:.2f} ms")
    # layer 0's attention over the N caches again and again: what it costs with them in the cache
    q = np.random.default_rng(0).standard_normal((n, cfg.n_head, cfg.head_dim)).astype(np.float32)
    out = np.empty_like(q)
    pos = positions + a.tokens
    us = _median_us(lambda: K.attention_slots(out, q, st.k_bits[0], st.v_bits[0], slots, pos, cfg.window(0),
                                              1.0 / cfg.head_dim ** 0.5), 50)
    print(f"  (layer 0's attention alone, its caches hot: {us:.0f} us, x {cfg.n_layer} layers "
          f"{us * cfg.n_layer / 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
