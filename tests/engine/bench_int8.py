"""Time of the integer matrix kernels over one forward pass's matrices (not a test: run it by hand).

The matrices have Qwen2.5-Coder-0.5B's shapes (24 layers of q, k+v, o, gate+up, down, then the
151,936-row head) with random Q5_0-style bytes (offset 16); each is multiplied by T tokens through
`engine.matmul.matmul_i8`, best of 7 pairs of calls, and the per-pass sum is printed with each
matrix's time. The head comes from memory each call (136 MB); the layer matrices fit in the cache
when one is timed alone, as they do not in a real pass, so read the sum as a lower bound.
`--distinct` times whole passes over 24 distinct copies of each layer's matrices and the head
instead (about 680 MB, every matrix from memory, as in the model): best of 5 passes.
`--expert` times instead 32 distinct Q4_K-style expert matrices of Qwen3-30B-A3B's gate shape (768
rows of 2048 nibbles, scales and mins per 32) for each token count, as a MoE prefill gives an
expert 5-64 tokens, in GMAC/s: `--expert --tokens 1 8 13 16 32 64`.
`--planes` packs the layer matrices as the engine does on these CPUs (nibbles and a bit plane,
engine.quants PLANES: 0.75 bytes per weight against 1.125); the head stays Q8_0-style bytes.

    .venv/bin/python -m tests.engine.bench_int8 [--tokens 1 8] [--threads 2] [--distinct] [--planes]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SHAPES = [("q", 896, 896, 24), ("kv", 256, 896, 24), ("o", 896, 896, 24), ("gate+up", 9728, 896, 24),
          ("down", 896, 4864, 24), ("head", 151936, 896, 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distinct", action="store_true", help="whole passes over distinct matrices")
    ap.add_argument("--planes", action="store_true", help="layer matrices as nibbles + a bit plane")
    ap.add_argument("--expert", action="store_true", help="Q4_K-style expert matrices, GMAC/s per token count")
    a = ap.parse_args()

    import numba

    from engine import int8
    from engine import matmul as M

    if not int8.AVAILABLE:
        print("this CPU has neither AVX2 nor AVX-512 VNNI: the engine runs its float kernels, nothing to time")
        return 1
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    def matrix(rows: int, k: int, layer: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Random weight bytes, scales and the packed family of one (rows, k) matrix."""
        planes = a.planes and layer
        width, kind = (k // 2 + k // 8, M.KIND_PLANES) if planes else (k, M.KIND_BYTE)
        q = rng.integers(0, 256 if planes else 32, (rows, width), dtype=np.uint8)
        return q, rng.random((rows, k // 32), dtype=np.float32), kind

    if a.distinct:
        return _distinct_passes(a.tokens, rng, M, matrix)
    if a.expert:
        return _expert_matrices(a.tokens, rng, M)
    for n_tok in a.tokens:
        total, parts = 0.0, []
        for name, rows, k, reps in SHAPES:
            q, s, kind = matrix(rows, k, reps > 1)
            m = np.zeros((0, 0), np.float32)
            xq = rng.integers(-127, 128, (n_tok, k), dtype=np.int8)
            xd = rng.random((n_tok, k // 32), dtype=np.float32)
            xs = rng.random((n_tok, k // 32), dtype=np.float32)
            out = np.zeros((n_tok, rows), np.float32)
            M.matmul_i8(out, kind, 16.0, q, s, m, xq, xd, xs, M.work_chunk(rows))  # compile, warm
            best = float("inf")
            for _ in range(7):
                t0 = time.perf_counter()
                M.matmul_i8(out, kind, 16.0, q, s, m, xq, xd, xs, M.work_chunk(rows))
                M.matmul_i8(out, kind, 16.0, q, s, m, xq, xd, xs, M.work_chunk(rows))
                best = min(best, (time.perf_counter() - t0) / 2)
            total += best * reps
            parts.append(f"{name} {best * 1e3:.3f} ms")
        print(f"{n_tok} token(s): {total * 1e3:.1f} ms per pass ({n_tok / total:.0f} tok/s, matrices only); "
              + ", ".join(parts), flush=True)
    return 0


def _best_of(runs: int, work) -> float:
    """The shortest of `runs` timed calls of work(), after one untimed (compiling, warming)."""
    work()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best


def _distinct_passes(tokens: list[int], rng: np.random.Generator, M, matrix) -> int:
    layers = [[matrix(rows, k, True) for _, rows, k, reps in SHAPES if reps > 1] for _ in range(24)]
    head = [matrix(rows, k, False) for _, rows, k, reps in SHAPES if reps == 1]
    m = np.zeros((0, 0), np.float32)
    for n_tok in tokens:
        acts = {k: (rng.integers(-127, 128, (n_tok, k), dtype=np.int8), rng.random((n_tok, k // 32), dtype=np.float32),
                    rng.random((n_tok, k // 32), dtype=np.float32)) for k in {k for _, _, k, _ in SHAPES}}
        outs = {rows: np.zeros((n_tok, rows), np.float32) for _, rows, _, _ in SHAPES}

        def one_pass() -> None:
            for q, s, kind in [w for layer in layers for w in layer] + head:
                xq, xd, xs = acts[s.shape[1] * 32]
                M.matmul_i8(outs[q.shape[0]], kind, 16.0, q, s, m, xq, xd, xs, M.work_chunk(q.shape[0]))

        best = _best_of(5, one_pass)
        print(f"{n_tok} token(s), distinct matrices: {best * 1e3:.1f} ms per pass ({n_tok / best:.0f} tok/s, "
              "matrices only)", flush=True)
    return 0


def _expert_matrices(tokens: list[int], rng: np.random.Generator, M) -> int:
    rows, k, n = 768, 2048, 32
    mats = [(rng.integers(0, 256, (rows, k // 2), dtype=np.uint8), rng.random((rows, k // 32), dtype=np.float32),
             rng.random((rows, k // 32), dtype=np.float32)) for _ in range(n)]
    for n_tok in tokens:
        xq = rng.integers(-127, 128, (n_tok, k), dtype=np.int8)
        xd, xs = rng.random((n_tok, k // 32), dtype=np.float32), rng.random((n_tok, k // 32), dtype=np.float32)
        out = np.zeros((n_tok, rows), np.float32)

        def all_experts() -> None:
            for q, s, m in mats:
                M.matmul_i8(out, M.KIND_NIB, 0.0, q, s, m, xq, xd, xs, M.work_chunk(rows))

        best = _best_of(5, all_experts)
        print(f"{n_tok:3d} token(s): {best / n * 1e6:7.1f} us per expert matrix, "
              f"{rows * k * n_tok * n / best / 1e9:6.1f} GMAC/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
