"""One decoded token through a layer, as one jitted call: its attention block and, where the
integer kernels run it, its dense FFN.

Decode is one token at a time, so the work per kernel is small and what the forward pass costs in
Python between kernels (a dispatch, an argument check, a numpy temporary per step: about fifteen
per layer) is a large share of a token's time on small models (SmolLM2-135M on a 2-core Zen 3:
17.6 ms per token layer by layer, 14.6 in one call per layer; docs/engine.md).
`layer_one_token` runs the attention block's whole sequence (RMSNorm, activation quantization, q/k/v
with their biases and norms, RoPE, the KV-cache write, attention, output projection, residual)
inside Numba, then a dense FFN's (RMSNorm, gate and up, SwiGLU, down, residual),
calling the same kernels the batched path uses with the same arguments (a token's rows as (1, n)
arrays), so both paths compute the same values to the bit. Each matrix goes through the integer
kernels (engine.int8) or the float ones as `transformer.linear` would send it (the `ints` flags);
the weights come in as `Packed` named tuples, and the parallel kernels they call keep their own
parallel regions. `layer_one_token` is the one entry point (see there why).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine import kernels as K
from engine.matmul import SERIAL_WEIGHTS, matmul_i8, matmul_i8_serial, matvec, matvec_serial
from engine.quants import Packed, _quantize_row, _quantize_row8

QK_NONE, QK_HEAD, QK_FULL = 0, 1, 2  # models.arch's qk_norm "none", "head", "full"


@njit(inline="always")
def _linear(out: np.ndarray, w: Packed, x: np.ndarray, xh: np.ndarray, xs: np.ndarray, xq: np.ndarray,
            xd: np.ndarray, chunk: int, ints: bool, held: int) -> int:
    """out (n,) = W . x for one token, through the integer kernels where `ints` (as `transformer.
    linear` computes a batch of one: x's int8 form, then `matmul_int8`'s kernel for one row), else
    the float ones. x is quantized to the weight's activation family first unless the buffers
    already hold that (`held`: what they hold, `_held`; -1 nothing); returns what they hold now.
    Every buffer is a (1, n) row, as the batched path passes it."""
    if ints:
        if held != _held(w.act, True):
            _quantize_row8(w.act, x[0], xh[0], xs[0], xq[0], xd[0])
            held = _held(w.act, True)
        if w.rows * w.k < SERIAL_WEIGHTS:
            matmul_i8_serial(out, w.kind, w.off, w.q, w.s, w.m, xq, xd, xs)
        else:
            matmul_i8(out, w.kind, w.off, w.q, w.s, w.m, xq, xd, xs, chunk)
        return held
    if held != _held(w.act, False) and held != _held(w.act, True):
        _quantize_row(w.act, x[0], xh[0], xs[0])
        held = _held(w.act, False)
    if w.rows * w.k < SERIAL_WEIGHTS:
        matvec_serial(out[0], w.kind, w.off, w.w32, w.q, w.s, w.m, xh[0], xs[0])
    else:
        matvec(out[0], w.kind, w.off, w.w32, w.q, w.s, w.m, xh[0], xs[0], chunk)
    return held


@njit(cache=True, inline="always")
def _held(act: int, ints: bool) -> int:
    """What the quantization buffers hold: act's values (xh, xs), and with `ints` its int8 form too."""
    return 2 * act + ints


@njit(cache=True)
def layer_one_token(x: np.ndarray, attn_norm: np.ndarray, eps: float,
                    wq: Packed, wk: Packed, wv: Packed, wo: Packed,
                    bq: np.ndarray, bk: np.ndarray, bv: np.ndarray, bo: np.ndarray,
                    q_norm: np.ndarray, k_norm: np.ndarray, qk_mode: int,
                    cos: np.ndarray, sin: np.ndarray, neox: bool,
                    k_cache: np.ndarray, v_cache: np.ndarray, pos: int, window: int, scale: float,
                    xn: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: np.ndarray,
                    proj: np.ndarray, xh: np.ndarray, xs: np.ndarray, xq: np.ndarray, xd: np.ndarray,
                    chunks: np.ndarray, ints: np.ndarray, dense: bool, ffn_norm: np.ndarray, wg: Packed,
                    wu: Packed, wd: Packed, ffn_xn: np.ndarray, gate: np.ndarray, up: np.ndarray,
                    mid: np.ndarray) -> None:
    """x (1, n_embd) += the attention block of one token at position `pos` (absent biases and
    norms are empty arrays), then with `dense` += its dense FFN (else wg, wu, wd and the FFN's
    rows are not read). The scratch rows (each (1, n): xn, q, k, v, att, proj; ffn_xn, gate, up,
    mid) and the quantization buffers xh, xs, xq, xd (1-D, for the widest input) are overwritten.
    `chunks` and `ints` hold per matrix (wq, wk, wv, wo, gate, up, down) its parallel work-item
    size and whether it takes the integer kernels. One function on purpose: Numba compiles each
    jitted function together with all it calls (the integer kernels are most of that, ~30 s on the
    Zen 3 machine), so every further entry point that reaches them adds that to a first run's
    compiling (two blocks as two functions measured +50 s on Qwen2.5's)."""
    # the attention block
    n_kv, d = k_cache.shape[1], k_cache.shape[2]
    n_head = q.shape[1] // d
    K.rmsnorm(xn, x, attn_norm, eps)
    n_embd = x.shape[1]
    # q, k and v read the same input: quantized again only where the activation family changes
    rh, rs, rq, rd = _rows(xh, xs, xq, xd, n_embd)
    held = _linear(q, wq, xn, rh, rs, rq, rd, chunks[0], ints[0], -1)
    held = _linear(k, wk, xn, rh, rs, rq, rd, chunks[1], ints[1], held)
    _linear(v, wv, xn, rh, rs, rq, rd, chunks[2], ints[2], held)
    if bq.shape[0]:
        q[0] += bq
    if bk.shape[0]:
        k[0] += bk
    if bv.shape[0]:
        v[0] += bv
    if qk_mode != QK_NONE:
        K.rmsnorm(q, q, q_norm, eps)
        K.rmsnorm(k, k, k_norm, eps)
    q3 = q.reshape(1, n_head, d)
    k3 = k.reshape(1, n_kv, d)
    K.rope(q3, cos, sin, neox)
    K.rope(k3, cos, sin, neox)
    slot = pos % k_cache.shape[0]
    K.store_kv(k_cache[slot], k3[0])
    K.store_kv(v_cache[slot], v.reshape(n_kv, d))
    K.attention(att.reshape(1, n_head, d), q3, k_cache, v_cache, pos, window, scale)
    rh, rs, rq, rd = _rows(xh, xs, xq, xd, att.shape[1])
    _linear(proj, wo, att, rh, rs, rq, rd, chunks[3], ints[3], -1)
    if bo.shape[0]:
        proj[0] += bo
    x += proj
    if not dense:
        return
    # a dense SwiGLU FFN: down(silu(gate(x)) * up(x)) of x's RMSNorm
    K.rmsnorm(ffn_xn, x, ffn_norm, eps)
    rh, rs, rq, rd = _rows(xh, xs, xq, xd, n_embd)
    held = _linear(gate, wg, ffn_xn, rh, rs, rq, rd, chunks[4], ints[4], -1)
    _linear(up, wu, ffn_xn, rh, rs, rq, rd, chunks[5], ints[5], held)
    K.swiglu(mid, gate, up)
    rh, rs, rq, rd = _rows(xh, xs, xq, xd, mid.shape[1])
    _linear(proj, wd, mid, rh, rs, rq, rd, chunks[6], ints[6], -1)
    x += proj


@njit(cache=True, inline="always")
def _rows(xh: np.ndarray, xs: np.ndarray, xq: np.ndarray, xd: np.ndarray, k: int) -> tuple:
    """The quantization buffers for one input of width k, each as a (1, n) row."""
    return (xh[:k].reshape(1, k), xs[:k // 32].reshape(1, k // 32), xq[:k].reshape(1, k),
            xd[:k // 32].reshape(1, k // 32))
