"""One decoded token through a layer's attention block, as one jitted call.

Used for one token where the integer kernels do not run it (a CPU without AVX-512 VNNI; see
`transformer.forward`). Decode is one token at a time, so the work per kernel is small and what the forward pass costs
in Python between kernels (a dispatch, an argument check, a numpy temporary per step: about
fifteen per layer) is a large share of a token's time on small models. `attention_one_token`
runs the block's whole sequence (RMSNorm, activation quantization, q/k/v with their biases and
norms, RoPE, the KV-cache write, attention, output projection, residual) inside Numba, calling
the same kernels the batched path uses, so both paths compute the same values. The weights come
in as `Packed` named tuples; the parallel kernels it calls (`matvec`, `attention`) keep their own
parallel regions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine import kernels as K
from engine.matmul import SERIAL_WEIGHTS, matvec, matvec_serial
from engine.quants import Packed, _quantize_row

QK_NONE, QK_HEAD, QK_FULL = 0, 1, 2  # models.arch's qk_norm "none", "head", "full"


@njit(cache=True)
def _linear(out: np.ndarray, w: Packed, x: np.ndarray, xh: np.ndarray, xs: np.ndarray, chunk: int,
            quantized_as: int) -> None:
    """out = W . x for one token: x quantized to the weight's activation family first, unless
    xh/xs already hold it in that family (`quantized_as`, -1 for nothing yet)."""
    if w.act != quantized_as:
        _quantize_row(w.act, x, xh, xs)
    if w.rows * w.k < SERIAL_WEIGHTS:
        matvec_serial(out, w.kind, w.off, w.w32, w.q, w.s, w.m, xh, xs)
    else:
        matvec(out, w.kind, w.off, w.w32, w.q, w.s, w.m, xh, xs, chunk)


@njit(cache=True)
def attention_one_token(x: np.ndarray, attn_norm: np.ndarray, eps: float,
                        wq: Packed, wk: Packed, wv: Packed, wo: Packed,
                        bq: np.ndarray, bk: np.ndarray, bv: np.ndarray, bo: np.ndarray,
                        q_norm: np.ndarray, k_norm: np.ndarray, qk_mode: int,
                        cos: np.ndarray, sin: np.ndarray, neox: bool,
                        k_cache: np.ndarray, v_cache: np.ndarray, pos: int, window: int, scale: float,
                        xn: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: np.ndarray,
                        proj: np.ndarray, xh: np.ndarray, xs: np.ndarray, chunks: np.ndarray) -> None:
    """x (n_embd,) += attention block of one token at position `pos` (absent biases and norms are
    empty arrays); the scratch rows xn, q, k, v, att, proj and xh/xs (at least the widest input)
    are overwritten. `chunks` holds the parallel work-item size of wq, wk, wv, wo."""
    n_kv, d = k_cache.shape[1], k_cache.shape[2]
    n_head = q.shape[0] // d
    K.rmsnorm(xn, x, attn_norm, eps)
    n_embd = x.shape[0]
    # q, k and v read the same input: quantized again only where the activation family changes
    _linear(q, wq, xn, xh[:n_embd], xs[:n_embd // 32], chunks[0], -1)
    _linear(k, wk, xn, xh[:n_embd], xs[:n_embd // 32], chunks[1], wq.act)
    _linear(v, wv, xn, xh[:n_embd], xs[:n_embd // 32], chunks[2], wk.act)
    if bq.shape[0]:
        q += bq
    if bk.shape[0]:
        k += bk
    if bv.shape[0]:
        v += bv
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
    q_dim = att.shape[0]
    _linear(proj, wo, att, xh[:q_dim], xs[:q_dim // 32], chunks[3], -1)
    if bo.shape[0]:
        proj += bo
    x += proj
