"""Quantized matrix-vector and matrix-matrix products over the packed layouts of `engine.quants`.

`matvec` is the decode hot path: one long float32 loop per row that decodes each weight in a
register and multiplies it by the activation llama.cpp's dot product would see (`xh`), with
the block scale read once per 32 weights and the min term folded in per block through the
activation's block sums (`xs`). fastmath lets LLVM reassociate these float32 sums into SIMD
lanes; integer-valued partial sums stay exact, so the result is within float32 rounding of
ggml's integer dot products. `matmul` (prefill, expert batches) decodes a tile of rows into a
float32 scratch once and reuses it for every token. Both take a `Packed`'s fields as plain
arguments so they can be called from other jitted code; `matvec_packed`/`matmul_packed` are the
Python-side conveniences.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.kernels import FAST
from engine.quants import KIND_BYTE, KIND_F32, KIND_NIB, KIND_NIB5, Packed

_TILE = 8  # rows decoded together by matmul


# The dot products read 1-D slices (a row, a block): with 2-D indexing in the inner loop LLVM
# keeps the index arithmetic scalar and the loop runs 2-3x slower.


@njit(fastmath=FAST, cache=True)
def _dot_f32(w: np.ndarray, xh: np.ndarray) -> np.float32:
    acc = np.float32(0.0)
    for i in range(xh.shape[0]):
        acc += w[i] * xh[i]
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_byte(q: np.ndarray, s: np.ndarray, off: np.float32, xh: np.ndarray) -> np.float32:
    """One BYTE row: sum over blocks of s[b] * sum_j (q[j] - off) * x[j]."""
    sub = xh.shape[0] // s.shape[0]
    acc = np.float32(0.0)
    for b in range(s.shape[0]):
        qb = q[b * sub:(b + 1) * sub]
        xb = xh[b * sub:(b + 1) * sub]
        a = np.float32(0.0)
        for j in range(sub):
            a += (np.float32(qb[j]) - off) * xb[j]
        acc += s[b] * a
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_nib(q: np.ndarray, s: np.ndarray, m: np.ndarray, off: np.float32, xh: np.ndarray,
             xs: np.ndarray) -> np.float32:
    """One NIB row: low nibbles pair with x[:K/2], high nibbles with x[K/2:]."""
    half = q.shape[0]
    nbh = half // 32
    acc = np.float32(0.0)
    for bb in range(nbh):
        base = bb * 32
        qb = q[base:base + 32]
        xl = xh[base:base + 32]
        xu = xh[half + base:half + base + 32]
        lo = np.float32(0.0)
        hi = np.float32(0.0)
        for j in range(32):
            # float arithmetic splits the byte exactly and keeps the loop in float32 lanes
            fb = np.float32(qb[j])
            h = np.float32(np.floor(fb * np.float32(0.0625)))
            lo += (fb - np.float32(16.0) * h - off) * xl[j]
            hi += (h - off) * xu[j]
        acc += s[bb] * lo + s[bb + nbh] * hi
    for b in range(m.shape[0]):
        acc += m[b] * xs[b]
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_nib5(q: np.ndarray, qh: np.ndarray, s: np.ndarray, m: np.ndarray, off: np.float32, xh: np.ndarray,
              xs: np.ndarray) -> np.float32:
    """One NIB5 row: as `_dot_nib`, plus bit j of qh[block] as the fifth bit of element j."""
    half = q.shape[0]
    nbh = half // 32
    acc = np.float32(0.0)
    for bb in range(nbh):
        base = bb * 32
        qb = q[base:base + 32]
        xl = xh[base:base + 32]
        xu = xh[half + base:half + base + 32]
        hl = qh[bb]
        hh = qh[bb + nbh]
        lo = np.float32(0.0)
        hi = np.float32(0.0)
        for j in range(32):
            fb = np.float32(qb[j])
            h = np.float32(np.floor(fb * np.float32(0.0625)))
            bl = np.float32((hl >> np.uint32(j)) & np.uint32(1))
            bh = np.float32((hh >> np.uint32(j)) & np.uint32(1))
            lo += (fb - np.float32(16.0) * h + np.float32(16.0) * bl - off) * xl[j]
            hi += (h + np.float32(16.0) * bh - off) * xu[j]
        acc += s[bb] * lo + s[bb + nbh] * hi
    for b in range(m.shape[0]):
        acc += m[b] * xs[b]
    return acc


@njit(fastmath=FAST, cache=True)
def _matvec_rows(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray, qh: np.ndarray,
                 s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray, r0: int, r1: int) -> None:
    o = np.float32(off)
    no_m = np.empty(0, np.float32)
    for r in range(r0, r1):
        if kind == KIND_F32:
            out[r] = _dot_f32(w32[r], xh)
        elif kind == KIND_BYTE:
            out[r] = _dot_byte(q[r], s[r], o, xh)
        elif kind == KIND_NIB:
            out[r] = _dot_nib(q[r], s[r], m[r] if m.shape[0] else no_m, o, xh, xs)
        else:
            out[r] = _dot_nib5(q[r], qh[r], s[r], m[r] if m.shape[0] else no_m, o, xh, xs)


@njit(fastmath=FAST, cache=True)
def matvec_serial(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray, qh: np.ndarray,
                  s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    """`matvec` on one thread, for matrices too small to pay for a parallel region."""
    _matvec_rows(out, kind, off, w32, q, qh, s, m, xh, xs, 0, out.shape[0])


@njit(parallel=True, fastmath=FAST, cache=True)
def matvec(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray, qh: np.ndarray,
           s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    """out[r] = W[r] . x for every row (hot: one call per weight matrix per decoded token)."""
    o = np.float32(off)
    if kind == KIND_F32:
        for r in prange(out.shape[0]):
            out[r] = _dot_f32(w32[r], xh)
    elif kind == KIND_BYTE:
        for r in prange(out.shape[0]):
            out[r] = _dot_byte(q[r], s[r], o, xh)
    elif kind == KIND_NIB:
        no_m = np.empty(0, np.float32)
        if m.shape[0]:
            for r in prange(out.shape[0]):
                out[r] = _dot_nib(q[r], s[r], m[r], o, xh, xs)
        else:
            for r in prange(out.shape[0]):
                out[r] = _dot_nib(q[r], s[r], no_m, o, xh, xs)
    else:
        no_m = np.empty(0, np.float32)
        if m.shape[0]:
            for r in prange(out.shape[0]):
                out[r] = _dot_nib5(q[r], qh[r], s[r], m[r], o, xh, xs)
        else:
            for r in prange(out.shape[0]):
                out[r] = _dot_nib5(q[r], qh[r], s[r], no_m, o, xh, xs)


@njit(fastmath=FAST, cache=True)
def _decode_row(kind: int, off: np.float32, w32: np.ndarray, q: np.ndarray, qh: np.ndarray, s: np.ndarray,
                r: int, y: np.ndarray) -> None:
    """Row r as float32 weights without the min term (that one goes through the block sums)."""
    k = y.shape[0]
    if kind == KIND_F32:
        y[:] = w32[r]
    elif kind == KIND_BYTE:
        sub = k // s.shape[1]
        for i in range(k):
            y[i] = s[r, i // sub] * (np.float32(q[r, i]) - off)
    else:
        half = k // 2
        for i in range(half):
            byte = np.int64(q[r, i])
            lo, hi = byte & 15, byte >> 4
            if kind == KIND_NIB5:
                lo |= ((np.int64(qh[r, i >> 5]) >> (i & 31)) & 1) << 4
                hi |= ((np.int64(qh[r, (i + half) >> 5]) >> (i & 31)) & 1) << 4
            y[i] = s[r, i >> 5] * (np.float32(lo) - off)
            y[i + half] = s[r, (i + half) >> 5] * (np.float32(hi) - off)


@njit(parallel=True, fastmath=FAST, cache=True)
def matmul(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray, qh: np.ndarray,
           s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    """out[t, r] = W[r] . x[t] for a batch of tokens x (T, K): prefill and expert groups."""
    n_tok, rows = out.shape
    k = xh.shape[1]
    assert xh.shape[0] == n_tok and xs.shape[0] == n_tok
    o = np.float32(off)
    n_tiles = (rows + _TILE - 1) // _TILE
    for tile in prange(n_tiles):
        r0 = tile * _TILE
        r1 = min(r0 + _TILE, rows)
        buf = np.empty((_TILE, k), np.float32)
        for r in range(r0, r1):
            _decode_row(kind, o, w32, q, qh, s, r, buf[r - r0])
        for t in range(n_tok):
            x = xh[t]
            for r in range(r0, r1):
                w = buf[r - r0]
                acc = np.float32(0.0)
                for i in range(k):
                    acc += w[i] * x[i]
                if m.shape[0]:
                    mr = m[r]
                    xst = xs[t]
                    for b in range(mr.shape[0]):
                        acc += mr[b] * xst[b]
                out[t, r] = acc


_SERIAL_WEIGHTS = 1 << 18  # below this many weights one thread is faster than a parallel region


def matvec_packed(out: np.ndarray, w: Packed, xh: np.ndarray, xs: np.ndarray) -> None:
    """`matvec` over a Packed weight; xh/xs must come from w.act's activation quantisation."""
    assert out.shape == (w.rows,) and xh.shape == (w.k,), (out.shape, xh.shape, w.rows, w.k)
    run = matvec_serial if w.rows * w.k < _SERIAL_WEIGHTS else matvec
    run(out, w.kind, w.off, w.w32, w.q, w.qh, w.s, w.m, xh, xs)


def matmul_packed(out: np.ndarray, w: Packed, xh: np.ndarray, xs: np.ndarray) -> None:
    """`matmul` over a Packed weight for T tokens: out (T, rows), xh (T, K), xs (T, K/32)."""
    assert out.shape == (xh.shape[0], w.rows) and xh.shape[1] == w.k, (out.shape, xh.shape, w.rows, w.k)
    if xh.shape[0] == 1:
        matvec_packed(out[0], w, xh[0], xs[0])
    else:
        matmul(out, w.kind, w.off, w.w32, w.q, w.qh, w.s, w.m, xh, xs)
