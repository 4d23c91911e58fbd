"""Checks of engine.cuda_kernels against the CPU kernels, run in a process with NUMBA_ENABLE_CUDASIM=1.

Run as a script, it prints one JSON object: check name -> the largest error found (or a message).
The simulator must be chosen before numba is first imported, hence a process of its own.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

import numpy as np  # noqa: E402

from engine import kernels as K  # noqa: E402
from engine.cuda_kernels import CudaOps  # noqa: E402

RNG = np.random.default_rng(0)
OPS = CudaOps(threads=16, split=64)  # small blocks: the simulator runs a Python thread per CUDA thread


def check_route() -> float:
    logits = (RNG.standard_normal((5, 8)) * 2).astype(np.float32)
    err = 0.0
    for renorm, scale in ((False, 0.0), (True, 0.0), (True, 2.0)):
        sel, w = np.empty((5, 2), np.int64), np.empty((5, 2), np.float32)
        K.route_experts(sel, w, logits, renorm, scale)
        gsel, gw = OPS.route(logits, 2, renorm, scale)
        if not np.array_equal(sel, gsel):
            return float("inf")
        err = max(err, float(np.abs(gw - w).max() / np.abs(w).max()))
    return err


def check_permute() -> float:
    sel = np.stack([RNG.permutation(6)[:2] for _ in range(7)]).astype(np.int64)
    counts, order = np.empty(6, np.int64), np.empty(14, np.int64)
    K.group_by_expert(sel, 6, counts, order)
    gcounts, gorder, ginverse = OPS.permute(sel, 6)
    ok = np.array_equal(counts, gcounts) and np.array_equal(order, gorder)
    ok = ok and np.array_equal(ginverse[gorder], np.arange(14))
    return 0.0 if ok else float("inf")


def check_gather_unpermute() -> float:
    """Gather each expert's tokens, apply a per-expert map, un-permute: the CPU MoE block's result."""
    n_tok, k, width, n_expert = 6, 2, 8, 4
    x = RNG.standard_normal((n_tok, width)).astype(np.float32)
    sel = np.stack([RNG.permutation(n_expert)[:k] for _ in range(n_tok)]).astype(np.int64)
    w = RNG.random((n_tok, k)).astype(np.float32)
    scale = RNG.standard_normal(n_expert).astype(np.float32)  # "expert e" multiplies by scale[e]
    counts, order, inverse = OPS.permute(sel, n_expert)
    rows = OPS.gather(x, order, k)
    y = rows * scale[sel.reshape(-1)[order]][:, None]
    got = OPS.unpermute(y, inverse, w)
    want = np.zeros((n_tok, width), np.float32)
    for j in range(k):  # slot order, as the CPU block adds them
        want += w[:, j:j + 1] * (x * scale[sel[:, j]][:, None])
    return float(np.abs(got - want).max() / np.abs(want).max())


def _attention_case(n_tok: int, pos0: int, window: int, cap: int) -> float:
    n_head, n_kv, d = 4, 2, 16
    kc = RNG.standard_normal((cap, n_kv, d)).astype(np.float32)
    vc = RNG.standard_normal((cap, n_kv, d)).astype(np.float32)
    q = RNG.standard_normal((n_tok, n_head, d)).astype(np.float32)
    want, got = np.empty_like(q), np.empty_like(q)
    K.attention(want, q, kc, vc, pos0, window, 0.25)
    OPS.attention(got, q, kc, vc, pos0, window, 0.25)
    return float(np.abs(got - want).max() / np.abs(want).max())


def check_attention_prefill() -> float:
    return max(_attention_case(6, 0, 0, 16), _attention_case(6, 10, 4, 9))  # causal; windowed ring of 9


def check_attention_decode() -> float:
    # one query over 150 positions (three decode splits), then over a 5-wide window in a ring of 8
    return max(_attention_case(1, 149, 0, 160), _attention_case(1, 41, 5, 8))



def check_backend() -> float:
    """A tiny MoE model: the backend with device="cuda" gives the CPU backend's logits."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_models import build_model, default_shape

    from engine.native import NativeBackend

    with tempfile.TemporaryDirectory() as tmp:
        shape = default_shape("qwen3moe", n_embd=64, n_head=2, n_head_kv=1, n_ff=128, n_ff_exp=64, n_vocab=64,
                              window=4)
        path = build_model(Path(tmp) / "tiny.gguf", shape)
        tokens = [3, 1, 4, 1, 5, 9]
        cpu = NativeBackend(path, n_ctx=32, n_batch=4, device="cpu")
        gpu = NativeBackend(path, n_ctx=32, n_batch=4, device="cuda")
        gpu.state.cuda = CudaOps(threads=16, split=2)  # small blocks, and decode splits of 2 positions
        want = cpu.eval_logits(tokens)
        got = gpu.eval_logits(tokens)
        gpu.reset()
        got_decode = np.stack([gpu.prefill([t]) for t in tokens])  # one token at a time: the decode kernels
        return float(max(np.abs(got - want).max(), np.abs(got_decode - want).max()) / np.abs(want).max())


if __name__ == "__main__":
    names = sys.argv[1:] or [n[6:] for n in dir() if n.startswith("check_")]
    print(json.dumps({n: globals()[f"check_{n}"]() for n in names}))
