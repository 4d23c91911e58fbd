"""Quantized matrix-vector and matrix-matrix products over the packed layouts of `engine.quants`.

`matvec` is the decode hot path: one long float32 loop per row that decodes each weight in a
register, scales it and multiplies it by the activation llama.cpp's dot product would see
(`xh`); the min term is folded in per block through the activation's block sums (`xs`).
fastmath lets LLVM keep these sums in SIMD lanes, so the result is within float32 rounding of
ggml's integer dot products. Several tokens at once (prefill, expert groups) go through
`matmul_packed`: the rows are dequantized to float32 a tile at a time (`dequantize_rows`) and
multiplied by every token in one BLAS SGEMM. The jitted kernels take a `Packed`'s fields as
plain arguments so that other jitted code can call them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import get_num_threads, njit, prange

from engine import int8 as I8
from engine import kernels as K
from engine.kernels import FAST
from engine.quants import (ACT_Q8_0, ACT_Q8_1, ACT_Q8_K, KIND_BYTE, KIND_F32, KIND_NIB, KIND_PLANES, QK_K, Packed,
                           compact_scale, compact_scales, row_steps, stored_value)

# The dot products read 1-D slices (a row, a block): with 2-D indexing in the inner loop LLVM
# keeps the index arithmetic scalar and the loop runs 2-3x slower.


@njit(fastmath=FAST, cache=True)
def _dot_f32(w: np.ndarray, xh: np.ndarray) -> np.float32:
    acc = np.float32(0.0)
    for i in range(xh.shape[0]):
        acc += w[i] * xh[i]
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_byte32(q: np.ndarray, s: np.ndarray, off: np.float32, xh: np.ndarray) -> np.float32:
    """sum_i s[i / 32] * (q[i] - off) * x[i]: one long loop with the scale read per weight.

    LLVM keeps every partial sum in SIMD lanes to the end; reducing per block instead costs a
    horizontal add every 32 weights (2.5x slower, measured). The shift must be a constant.
    """
    acc = np.float32(0.0)
    for i in range(xh.shape[0]):
        acc += s[i >> 5] * ((np.float32(q[i]) - off) * xh[i])
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_byte16(q: np.ndarray, s: np.ndarray, off: np.float32, xh: np.ndarray) -> np.float32:
    """`_dot_byte32` with a scale per 16 weights (Q6_K)."""
    acc = np.float32(0.0)
    for i in range(xh.shape[0]):
        acc += s[i >> 4] * ((np.float32(q[i]) - off) * xh[i])
    return acc


@njit(fastmath=FAST, cache=True)
def _dot_nib4(q: np.ndarray, s: np.ndarray, off: np.float32, xh: np.ndarray) -> np.float32:
    """One NIB row without the min term: low nibbles pair with x[:K/2], high ones with x[K/2:].

    As in `_dot_byte32`, one long loop with the scales read per weight; the two halves' scales
    and activations as separate slices (indexing s[(i >> 5) + K/64] instead runs 5x slower).
    """
    half = q.shape[0]
    nbh = half >> 5
    sl, sh = s[:nbh], s[nbh:]
    xl, xu = xh[:half], xh[half:]
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    for i in range(half):
        # float arithmetic splits the byte exactly and keeps the loop in float32 lanes
        fb = np.float32(q[i])
        h = np.float32(np.floor(fb * np.float32(0.0625)))
        lo += sl[i >> 5] * ((fb - np.float32(16.0) * h - off) * xl[i])
        hi += sh[i >> 5] * ((h - off) * xu[i])
    return lo + hi


@njit(fastmath=FAST, cache=True)
def _matvec_rows(out: np.ndarray, kind: int, o: np.float32, w32: np.ndarray, q: np.ndarray, s: np.ndarray,
                 m: np.ndarray, xh: np.ndarray, xs: np.ndarray, r0: int, r1: int, base: int = 0) -> None:
    """out[r - base] = W[r] . x for rows r0..r1-1.

    One loop per layout, each calling its row kernel directly: behind a per-row dispatch LLVM
    vectorizes the BYTE loop at about half the speed (measured).
    """
    if kind == KIND_F32:
        for r in range(r0, r1):
            out[r - base] = _dot_f32(w32[r], xh)
        return
    compact = compact_scales(s.shape[1], xh.shape[0])
    if kind == KIND_BYTE and s.shape[1] * 32 == xh.shape[0]:
        for r in range(r0, r1):
            out[r - base] = _dot_byte32(q[r], s[r], o, xh)
    elif kind == KIND_BYTE:
        for r in range(r0, r1):
            out[r - base] = _dot_byte16(q[r], s[r], o, xh)
    elif kind == KIND_NIB and not compact:
        for r in range(r0, r1):
            out[r - base] = _dot_nib4(q[r], s[r], o, xh)
    else:
        y = np.empty(xh.shape[0], np.float32)
        for r in range(r0, r1):
            _deq_planes(y, q[r], s[r], o)
            out[r - base] = _dot_f32(y, xh)
    if m.shape[0]:
        for r in range(r0, r1):
            out[r - base] += _min_term(q[r], m[r], xs, compact)


@njit(cache=True, inline="always")
def _block_min(qr: np.ndarray, mr: np.ndarray, b: int, nb: int, compact: bool) -> np.float32:
    """The min of block b (of nb per row, 32 weights each) of a row: its mins `mr`, or where the
    scales are compact -dmin per 256 in `mr` times the block's min byte at the row's end
    (engine.quants)."""
    if compact:
        return mr[b >> 3] * np.float32(qr[qr.shape[0] - nb + b])
    return mr[b]


@njit(fastmath=FAST, cache=True, inline="always")
def _min_term(qr: np.ndarray, mr: np.ndarray, xs: np.ndarray, compact: bool) -> np.float32:
    """sum_b min_b * xs[b] over a row's blocks of 32 (`_block_min`)."""
    acc = np.float32(0.0)
    nb = xs.shape[0]
    for b in range(nb):
        acc += _block_min(qr, mr, b, nb, compact) * xs[b]
    return acc


@njit(fastmath=FAST, cache=True)
def matvec_serial(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray,
                  s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    """`matvec` on one thread, for matrices too small to pay for a parallel region."""
    _matvec_rows(out, kind, np.float32(off), w32, q, s, m, xh, xs, np.int64(0), out.shape[0])  # (see matmul_i8_serial)


@njit(parallel=True, fastmath=FAST, cache=True)
def matvec(out: np.ndarray, kind: int, off: float, w32: np.ndarray, q: np.ndarray,
           s: np.ndarray, m: np.ndarray, xh: np.ndarray, xs: np.ndarray, chunk: int) -> None:
    """out[r] = W[r] . x for every row (hot: one call per weight matrix per decoded token), in
    work items of `chunk` rows (small items cost a call each, see `work_chunk`)."""
    rows = out.shape[0]
    for c in prange((rows + chunk - 1) // chunk):
        _matvec_rows(out, kind, np.float32(off), w32, q, s, m, xh, xs, c * chunk, min(rows, (c + 1) * chunk))


# --- integer dot products (engine.int8): several tokens per weight row ------------------------------


@njit(cache=True, inline="always")
def _one_at_a_time(n_tok: int, q: np.ndarray) -> bool:
    """Whether `_rows_i8` takes its rows one at a time (a token or three: decode), not in pairs."""
    return n_tok < 4 or q.shape[0] < 2


@njit(cache=True, inline="always")
def _row_alone(out, layout, q, s, xq, xd, oi, r):
    """out[t, r] for every token of xq, row r on its own (the one-row kernel, `off` as an int64)."""
    for t in range(xq.shape[0]):
        out[t, r] = I8.dot1x1(layout, q, s, r, xq, xd, oi, t)


#: rows per tile of `_rows_i8`: each group of tokens goes over a tile's rows before the next
#: group, so that the group's int8 activation stays in the first-level cache (8 tokens of K = 2048:
#: 16 KB) and the tile's weights in the second (64 Q4_K rows of 2048: 72 KB)
ROW_TILE = 64


@njit(fastmath=FAST, cache=True)
def _rows_i8(out, layout, q, s, xq, xd, off, r0, r1):
    """out[t, r] for rows r0..r1-1 and every token: rows in pairs, tokens in groups of 8 and 4
    (the per-token arithmetic is the same in each, engine.int8); `off` the weights' stored offset.
    The rows go in tiles of `ROW_TILE`, each group of tokens over a whole tile: a pair of rows
    taking every group before the next pair read all the tokens' activation again for each pair,
    from the second-level cache for 64 tokens (Q4_K experts of 1024 x 2048, one thread, one row at
    a time as on AVX2: 44 GMAC/s against 72 in tiles). The last one to seven tokens of four or
    more go through one more group that ends at the last token and overlaps the one before: the
    overlapped tokens come out the same, and a group of 4 or 8 costs less than its tokens one by
    one (an expert's 13 tokens took 19% longer per token than 16). An odd row left at the end is
    paired with the row before it (or after, read but not written), so that one-row kernels for 8
    and 4 tokens are not compiled too (a first run's compiling, SmolLM2 opened and warmed up with
    an empty Numba cache: 71 s with them, 46-48 s without, 45 s before the grouped kernels)."""
    n_tok = xq.shape[0]
    oi = np.int64(off)
    if _one_at_a_time(n_tok, q):  # a token or three (decode): one row at a time, as fast as memory brings it
        for r in range(r0, r1):
            _row_alone(out, layout, q, s, xq, xd, oi, r)
        return
    for a0 in range(r0, r1, ROW_TILE):
        b0 = min(r1, a0 + ROW_TILE)
        t = 0
        while t < n_tok:
            left = n_tok - t
            width = 8 if left >= 8 or (left > 4 and n_tok >= 8) else 4
            t0 = min(t, n_tok - width)
            r = a0
            while r < b0:
                # rows (a, a + 1) written from `first` on: a pair, or the last row with a neighbour
                a = r if r + 2 <= b0 else (r - 1 if r > 0 else r)
                first = r - a
                if width == 4:
                    _put_pair(out, I8.dot2x4(layout, q, s, a, xq, xd, oi, t0), 4, t0, t - t0, a, first, b0)
                else:
                    o = I8.dot2x8(layout, q, s, a, xq, xd, oi, t0)
                    if first == 0 and t == t0 and a + 1 < b0:  # the common case: plain stores
                        for u in range(8):
                            out[t0 + u, a] = o[u]
                            out[t0 + u, a + 1] = o[8 + u]
                    else:
                        _put_pair(out, o, 8, t0, t - t0, a, first, b0)
                r = a + 2
            t = t0 + width


@njit(cache=True, inline="always")
def _put_pair(out, o, width, t0, skip, a, first, b0):
    """out[t0 + u, a + j] = o[width * j + u]: a pair kernel's sums (row by row, `width` tokens each)
    for its tokens from `skip` on and its rows from `first` on that lie below b0."""
    for u in range(skip, width):
        for j in range(first, 2):
            if a + j < b0:
                out[t0 + u, a + j] = o[width * j + u]


@njit(fastmath=FAST, cache=True)
def _matmul_rows_i8(out: np.ndarray, kind: int, off: float, q: np.ndarray, s: np.ndarray, m: np.ndarray,
                    xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, r0: int, r1: int) -> None:
    """out[t, r] = W[r] . x_t for rows r0..r1-1 and every token t of xq (T, K), with integer dot
    products of the signed weights (stored value - off) and the int8 activation per block, then
    the min term through the activation's block sums."""
    sub16 = s.shape[1] * 16 == xq.shape[1]
    compact = compact_scales(s.shape[1], xq.shape[1])
    if kind == KIND_NIB:
        layout = I8.NIBK if compact else I8.NIB
    elif kind == KIND_PLANES and compact:
        layout = I8.NIB5K if m.shape[0] else I8.NIB6
    elif kind == KIND_PLANES:
        layout = I8.NIB5
    else:
        layout = I8.BYTE16 if sub16 else I8.BYTE32
    nb = xs.shape[1]
    if m.shape[0] and _one_at_a_time(xq.shape[0], q):
        # decode: each row's min term right after its dot products, while the rows after it stream
        # in; in a pass after all of them the memory stood idle (the same sums in the same order).
        # The row's kernel is inlined here as in `_rows_i8`: a call of `_rows_i8` per row cost
        # ~80 ns, more than a 576-wide Q4_1 row's products (~30 ns)
        mins = np.empty(nb if compact else 0, np.float32)
        oi = np.int64(off)
        for r in range(r0, r1):
            _row_alone(out, layout, q, s, xq, xd, oi, r)
            if compact:
                I8.compact_mins(mins, q[r], m[r])
            mr = mins if compact else m[r]
            for t in range(xq.shape[0]):
                out[t, r] += _min_dot(mr, xs[t])
        return
    _rows_i8(out, layout, q, s, xq, xd, off, r0, r1)
    if m.shape[0] == 0:
        return
    # each row's min per block of 32 (`_block_min`) once for all the tokens: made again for every
    # token, the min term took 24% of a Qwen3-30B-A3B-shaped prefill's gate/up experts (185 ms
    # against 141 without it)
    mins = np.empty((r1 - r0 if compact else 0, nb), np.float32)  # (float32 mins are their own table)
    if compact:
        for r in range(r0, r1):  # (the same products as `_block_min`, 8 at a time)
            I8.compact_mins(mins[r - r0], q[r], m[r])
    # token by token along the rows: a token's outputs are contiguous, while one row's are a row of
    # `out` apart (8 KB for 2048 rows, the same cache set: row by row it ran 6x slower for 64 tokens)
    for t in range(xq.shape[0]):
        xt, ot = xs[t], out[t]
        for r in range(r0, r1):
            ot[r] += _min_dot(mins[r - r0] if compact else m[r], xt)


@njit(fastmath=FAST, cache=True)
def _min_dot(mr: np.ndarray, xt: np.ndarray) -> np.float32:
    """sum_b mr[b] * xt[b]: a row's min term from its mins per block and a token's block sums. One
    compiled function for the pass after the rows and for decode's row-by-row sums, so that a
    token's result is the same alone as beside others (the reduction's order is LLVM's choice)."""
    acc = np.float32(0.0)
    for b in range(mr.shape[0]):
        acc += mr[b] * xt[b]
    return acc


@njit(parallel=True, fastmath=FAST, cache=True)
def matmul_i8(out: np.ndarray, kind: int, off: float, q: np.ndarray, s: np.ndarray, m: np.ndarray,
              xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, chunk: int) -> None:
    """out (T, rows) = W . x_t for every token, rows in work items of `chunk` (all the tokens at
    once: `_rows_i8` keeps a group of them in the first-level cache over a tile of rows)."""
    n_tok, rows = out.shape
    for c in prange((rows + chunk - 1) // chunk):
        r0, r1 = c * chunk, min(rows, (c + 1) * chunk)
        _matmul_rows_i8(out, kind, off, q, s, m, xq, xd, xs, r0, r1)


@njit(fastmath=FAST, cache=True)
def matmul_i8_serial(out: np.ndarray, kind: int, off: float, q: np.ndarray, s: np.ndarray, m: np.ndarray,
                     xq: np.ndarray, xd: np.ndarray, xs: np.ndarray) -> None:
    """`matmul_i8` on one thread (small matrices)."""
    # the first row as an int64, not the literal 0: Numba would compile _matmul_rows_i8 and every
    # integer kernel in it a second time for a literal argument (a first run's compiling, measured)
    _matmul_rows_i8(out, kind, off, q, s, m, xq, xd, xs, np.int64(0), out.shape[1])


# --- one token through a SwiGLU FFN, or through the experts a router picked ------------------------


@njit(fastmath=FAST, cache=True, inline="always")
def _expert_rows(out: np.ndarray, j0: int, j1: int, e: int, w: Packed, x: tuple, ints: bool, a: int,
                 b: int) -> None:
    """out[j0:j1, a:b] = rows a..b-1 of expert e of the stack w (out.shape[1] rows each) . the
    inputs x = (xh, xs, xq, xd), each (n, K) with the row for out[j] at j or, if n is 1, at 0 (one
    token through several experts); through the integer dot products when `ints` (all the tokens
    at once: in blocks of 64, an expert's 65-85 tokens of a prefill ran as 64 and a few one by one)."""
    xh, xs, xq, xd = x
    e0, e1 = e * out.shape[1], (e + 1) * out.shape[1]
    if ints:
        m = w.m[e0:e1] if w.m.shape[0] else w.m
        i0, i1 = (0, 1) if xq.shape[0] == 1 else (j0, j1)
        _matmul_rows_i8(out[j0:j1], w.kind, w.off, w.q[e0:e1], w.s[e0:e1], m, xq[i0:i1], xd[i0:i1], xs[i0:i1],
                        a, b)
    else:
        one = xh.shape[0] == 1
        for j in range(j0, j1):
            i = 0 if one else j
            _matvec_rows(out[j], w.kind, np.float32(w.off), w.w32, w.q, w.s, w.m, xh[i], xs[i], e0 + a, e0 + b, e0)


@njit(parallel=True, fastmath=FAST, cache=True)
def experts_swiglu(mid: np.ndarray, up: np.ndarray, experts: np.ndarray, starts: np.ndarray, gate: Packed,
                   upw: Packed, gx: tuple, ux: tuple, ints: bool, chunk: int) -> None:
    """mid[j] = silu(gate_e . x_j) * (up_e . x_j) for the rows j = starts[i]..starts[i+1]-1 of each
    expert e = experts[i]: one token through the experts a router picked (a row each, x one row),
    or the tokens of a batch grouped by expert (x gathered the same way).

    gate/up are stacks of experts of mid.shape[1] rows each (a dense FFN is a stack of one, expert
    0); `up` is scratch of mid's shape; gx/ux the input quantized for each (xh, xs, xq, xd; the
    int8 pair empty unless `ints`, the integer dot products, and xh unused when it is). One
    parallel region covers every expert's rows, so a top-8 MoE layer pays for one launch, not one
    per expert and matrix."""
    n_ff = mid.shape[1]
    per, n_e = (n_ff + chunk - 1) // chunk, experts.shape[0]
    for it in prange(n_e * per):
        i, c = it % n_e, it // n_e  # chunk-major: see `group_chunk`
        j0, j1 = starts[i], starts[i + 1]
        a, b = c * chunk, min(n_ff, (c + 1) * chunk)
        _expert_rows(mid, j0, j1, experts[i], gate, gx, ints, a, b)
        _expert_rows(up, j0, j1, experts[i], upw, ux, ints, a, b)
        for j in range(j0, j1):
            g, u = mid[j], up[j]
            for r in range(a, b):
                g[r] = g[r] / (np.float32(1.0) + K.exp_f32(-g[r])) * u[r]


@njit(parallel=True, fastmath=FAST, cache=True)
def experts_down(y: np.ndarray, experts: np.ndarray, starts: np.ndarray, down: Packed, x: tuple, ints: bool,
                 chunk: int) -> None:
    """y[j] = down_e . x[j] for the rows j = starts[i]..starts[i+1]-1 of each expert e = experts[i]
    (y.shape[1] rows per expert); x = (xh, xs, xq, xd) the SwiGLU outputs quantized, a row per y's."""
    n_out = y.shape[1]
    per, n_e = (n_out + chunk - 1) // chunk, experts.shape[0]
    for it in prange(n_e * per):
        i, c = it % n_e, it // n_e  # chunk-major: see `group_chunk`
        a, b = c * chunk, min(n_out, (c + 1) * chunk)
        _expert_rows(y, starts[i], starts[i + 1], experts[i], down, x, ints, a, b)


@njit(fastmath=FAST, cache=True)
def _deq_byte32(y: np.ndarray, q: np.ndarray, s: np.ndarray, o: np.float32) -> None:
    for i in range(y.shape[0]):
        y[i] = s[i >> 5] * (np.float32(q[i]) - o)


@njit(fastmath=FAST, cache=True)
def _deq_byte16(y: np.ndarray, q: np.ndarray, s: np.ndarray, o: np.float32) -> None:
    for i in range(y.shape[0]):
        y[i] = s[i >> 4] * (np.float32(q[i]) - o)


@njit(fastmath=FAST, cache=True)
def _deq_nib(y: np.ndarray, q: np.ndarray, s: np.ndarray, o: np.float32) -> None:
    half = q.shape[0]
    nbh = half >> 5
    sl, sh = s[:nbh], s[nbh:]
    yl, yh = y[:half], y[half:]
    for i in range(half):
        fb = np.float32(q[i])
        h = np.float32(np.floor(fb * np.float32(0.0625)))
        yl[i] = sl[i >> 5] * (fb - np.float32(16.0) * h - o)
        yh[i] = sh[i >> 5] * (h - o)


@njit(fastmath=FAST, cache=True)
def _deq_planes(y: np.ndarray, q: np.ndarray, s: np.ndarray, o: np.float32) -> None:
    """One PLANES row, or a NIB or PLANES row with compact scales (engine.quants). The integer
    kernels are the fast path for these layouts: they are packed only where those run, so this
    plain loop serves the rare float caller."""
    k = y.shape[0]
    half = k // 2
    sb = row_steps(q.shape[0], k)
    if compact_scales(s.shape[0], k):  # d per 256 times each sub-block's scale byte
        for i in range(k):
            sc = s[i // QK_K] * compact_scale(q, i, k)
            y[i] = sc * (np.float32(stored_value(q, i, half, sb)) - o)
        return
    sub = 16 if s.shape[0] * 16 == k else 32
    for i in range(k):
        y[i] = s[i // sub] * (np.float32(stored_value(q, i, half, sb)) - o)


@njit(nogil=True, fastmath=FAST, cache=True)
def dequantize_rows(y: np.ndarray, kind: int, off: float, q: np.ndarray, s: np.ndarray, r0: int) -> None:
    """y[j] = rows r0+j of a BYTE or NIB matrix as float32, without the min term (that one goes
    through the activation's block sums): the weights a prefill GEMM multiplies. As in `matvec`,
    one loop per layout (a branch inside the loop runs several times slower, measured)."""
    o = np.float32(off)
    if kind == KIND_BYTE and s.shape[1] * 32 == y.shape[1]:
        for j in range(y.shape[0]):
            _deq_byte32(y[j], q[r0 + j], s[r0 + j], o)
    elif kind == KIND_BYTE:
        for j in range(y.shape[0]):
            _deq_byte16(y[j], q[r0 + j], s[r0 + j], o)
    elif kind == KIND_NIB and not compact_scales(s.shape[1], y.shape[1]):
        for j in range(y.shape[0]):
            _deq_nib(y[j], q[r0 + j], s[r0 + j], o)
    else:
        for j in range(y.shape[0]):
            _deq_planes(y[j], q[r0 + j], s[r0 + j], o)


SERIAL_WEIGHTS = 1 << 18  # below this many weights one thread is faster than a parallel region


def _threads() -> int:
    """numba.get_num_threads() for this thread, read once (from Python it took ~4 µs, a tenth of
    a small matrix's time; SmolLM2 decodes with ~150 of them a token). The engine sets its
    thread's count before its first kernel (engine.native); a later change on the same thread
    would only leave work items of the old size."""
    n = getattr(_local, "threads", 0)
    if not n:
        n = _local.threads = get_num_threads()
    return n


def group_chunk(rows: int) -> int:
    """Rows per work item for experts that each run a different number of tokens
    (`experts_swiglu`/`experts_down` on a batch grouped by expert): a whole number of items per
    thread for each expert, the items taken chunk by chunk across the experts, so that Numba's
    even split of the items gives every thread the same share of every expert (one item per
    expert left a thread with whichever half of the experts got more tokens)."""
    return max(32, -(-rows // (2 * _threads())))


def work_chunk(rows: int) -> int:
    """Rows per parallel work item: a few per thread, never tiny (each costs a call)."""
    return max(64, -(-rows // (4 * _threads())))


def matvec_packed(out: np.ndarray, w: Packed, xh: np.ndarray, xs: np.ndarray) -> None:
    """`matvec` over a Packed weight; xh/xs must come from w.act's activation quantisation."""
    assert out.shape == (w.rows,) and xh.shape == (w.k,), (out.shape, xh.shape, w.rows, w.k)
    if w.rows * w.k < SERIAL_WEIGHTS:
        matvec_serial(out, w.kind, w.off, w.w32, w.q, w.s, w.m, xh, xs)
    else:
        matvec(out, w.kind, w.off, w.w32, w.q, w.s, w.m, xh, xs, work_chunk(w.rows))


def _int8_enabled() -> bool:
    import os

    return I8.AVAILABLE and os.environ.get("ASSISTANT_INT8_DOT", "1") != "0"


#: integer dot products on this CPU (engine.int8); ASSISTANT_INT8_DOT=0 keeps the float kernels (benchmarks)
INT8 = _int8_enabled()
_INT8_ACTS = frozenset({ACT_Q8_0, ACT_Q8_1, ACT_Q8_K})


def int8_activation(act: int, k: int) -> bool:
    """Whether an input of width k quantized for `act` also gets the int8 form."""
    return INT8 and act in _INT8_ACTS and k % 64 == 0


def int8_weight(w: Packed) -> bool:
    """Whether `w` multiplies through the integer dot products (its rows split into 64-byte steps):
    several tokens always, one token when the caller asks (`transformer.forward` does, but for a
    MoE's experts, see there)."""
    return int8_activation(w.act, w.k) and w.kind != KIND_F32


def matmul_int8(out: np.ndarray, w: Packed, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray) -> None:
    """out (T, rows) = W . x_t for T > 1 tokens in their int8 form (`int8_weight(w)` must hold)."""
    assert out.shape == (xq.shape[0], w.rows) and xq.shape[1] == w.k, (out.shape, xq.shape, w.rows, w.k)
    if w.rows * w.k * xq.shape[0] < SERIAL_WEIGHTS:
        matmul_i8_serial(out, w.kind, w.off, w.q, w.s, w.m, xq, xd, xs)
    else:
        matmul_i8(out, w.kind, w.off, w.q, w.s, w.m, xq, xd, xs, work_chunk(w.rows))


_GEMM_TILE = 1 << 20  # weights one thread dequantizes per SGEMM call (4 MB of float32 scratch)


def matmul_packed(out: np.ndarray, w: Packed, xh: np.ndarray, xs: np.ndarray) -> None:
    """out (T, rows) = xh (T, K) @ W.T for T tokens, W a Packed weight; xs (T, K/32) the block sums.

    One token is a `matvec`. More go through BLAS: each engine thread takes a share of the rows,
    dequantizes them to float32 a tile at a time and multiplies the tile by all T activation rows
    in one single-threaded SGEMM, so the decode cost of the weights is shared by the batch
    (prefill, expert groups, batched decode). One BLAS thread per engine thread: OpenBLAS's own
    workers spin after each call and starve the next dequantization (measured: 2x slower).
    """
    assert out.shape == (xh.shape[0], w.rows) and xh.shape[1] == w.k, (out.shape, xh.shape, w.rows, w.k)
    if xh.shape[0] == 1:
        matvec_packed(out[0], w, xh[0], xs[0])
        return
    if w.kind == KIND_F32:
        np.matmul(xh, w.w32.T, out=out)
        return
    n = max(1, min(get_num_threads(), w.rows // 64))
    bounds = [w.rows * i // n for i in range(n + 1)]
    if n == 1:
        _gemm_rows(out, w, xh, 0, w.rows)
    else:
        list(_pool(n).map(lambda i: _gemm_rows(out, w, xh, bounds[i], bounds[i + 1]), range(n)))
    if w.m.shape[0]:
        out += xs @ _mins_per_block(w).T


def _mins_per_block(w: Packed) -> np.ndarray:
    """w's min per block of 32, (rows, K/32), multiplied out where its scales are compact."""
    if not w.compact:
        return w.m
    nb = w.k // 32
    return np.repeat(w.m, QK_K // 32, axis=1) * w.q[:, w.q.shape[1] - nb:].astype(np.float32)


def _gemm_rows(out: np.ndarray, w: Packed, xh: np.ndarray, r0: int, r1: int) -> None:
    tile = max(1, min(r1 - r0, _GEMM_TILE // w.k))
    buf = _scratch(tile * w.k).reshape(tile, w.k)
    for a in range(r0, r1, tile):
        b = min(r1, a + tile)
        y = buf[: b - a]
        dequantize_rows(y, w.kind, w.off, w.q, w.s, a)
        out[:, a:b] = xh @ y.T


_local = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}


def _scratch(n: int) -> np.ndarray:
    """This thread's float32 buffer of at least n elements, kept for the next call."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] < n:
        buf = _local.buf = np.empty(n, np.float32)
    return buf[:n]


def thread_pool() -> ThreadPoolExecutor:
    """The pool of as many threads as the engine computes with (numpy/BLAS work shared out)."""
    return _pool(max(1, get_num_threads()))


def _pool(n: int) -> ThreadPoolExecutor:
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="engine-gemm")
    return _pools[n]


def single_threaded_blas() -> None:
    """Limit BLAS to one thread per caller for the rest of the process (the engine's threads
    split the work themselves; see `matmul_packed`)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
