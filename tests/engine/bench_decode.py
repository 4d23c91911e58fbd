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
    n_ctx = a.prompt + 12 + a.tokens * a.rounds * (2 if a.ab_fused else 1)
    st = T.RunState(cfg, n_ctx, a.prompt, "cpu", 1)
    tokens = (np.arange(n_ctx, dtype=np.int64) * 7919 % min(cfg.n_vocab, 30000)) + 100
    T.forward(cfg, weights, st, tokens[:a.prompt], 0, False)
    pos = a.prompt
    for _ in range(8):  # warm: every one-token kernel loaded and its buffers mapped
        T.forward(cfg, weights, st, tokens[pos:pos + 1], pos, False)
        pos += 1
    if a.ab_fused:
        return _ab_fused(a, cfg, weights, st, tokens, pos)
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


if __name__ == "__main__":
    raise SystemExit(main())
