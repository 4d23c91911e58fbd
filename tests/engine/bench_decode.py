"""Decode speed of the native engine's forward pass alone (not a test: run it by hand).

Opens a GGUF file as an engine that decodes one sequence does (packed weights with planes and
compact scales where the integer kernels run, float16 KV cache), evaluates a 512-token prompt,
then decodes `--tokens` tokens `--rounds` times through `transformer.forward`, one token at a
time with no sampling, and prints the median and best tokens per second. Without `assistant
bench`'s processes, generation loop and llama.cpp reference it is quick and steadier, for A/B
runs of two checkouts alternating in fresh processes (each with its own NUMBA_CACHE_DIR):

    PYTHONPATH=. .venv/bin/python -m tests.engine.bench_decode MODEL.gguf [--threads 2]
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
    n_ctx = a.prompt + 8 + a.tokens * a.rounds
    st = T.RunState(cfg, n_ctx, a.prompt, "cpu", 1)
    tokens = (np.arange(n_ctx, dtype=np.int64) * 7919 % min(cfg.n_vocab, 30000)) + 100
    T.forward(cfg, weights, st, tokens[:a.prompt], 0, False)
    pos = a.prompt
    for _ in range(8):  # warm: every one-token kernel loaded and its buffers mapped
        T.forward(cfg, weights, st, tokens[pos:pos + 1], pos, False)
        pos += 1
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


if __name__ == "__main__":
    raise SystemExit(main())
