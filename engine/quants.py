"""GGML quant formats: bit-exact dequantisation, the repacked layouts the matmul kernels read,
and the activation quantisation llama.cpp applies before every quantized dot product.

Each format is one small unit registered in `_DEQUANT` by its GGML type, behind one
`dequantize(data, qtype)` that matches `gguf.quants.dequantize` bit for bit (the same float32
operations in the same order). For the kernels, `pack` repacks a tensor once at load into one of
four families that share a single signature (`Packed`): `F32` (plain rows; F16/BF16 widened),
`BYTE` (one uint8 per weight minus an offset, a float32 scale per 32 or 16 and optional min per
32: Q8_0, Q6_K and the 5-bit Q5_0, Q5_1, Q5_K), `NIB` (4-bit half-rows: byte i holds element
i in its low nibble and element i+K/2 in its high one, float32 scale and optional min per 32:
Q4_0, Q4_1, Q4_K) and `PLANES` (the 5- and 6-bit types as NIB half-rows plus one or two bit
planes for the bits above the nibble, `pack(..., planes=True)`). The float decode kernel reads a
byte per weight about three times faster than it reassembles five bits, so 5- and 6-bit weights
take a whole byte there; the integer kernels (engine.int8) expand a bit plane into bytes with one
masked move per 64 weights, so on CPUs that run them the planes save a third of the bytes
(docs/engine.md). Sub-block scales are pre-multiplied (d*sc, -dmin*m), so every
quant type is `w = s*(q - off) + m` per block. For the integer kernels the K-quants keep their
scales compact instead (`pack(..., compact=True)`, always with `planes`): a float32 d (and -dmin)
per 256 in `s` (and `m`) and the sub-block scale (and min) as one byte each (the scales in the
row's groups of steps, `step_at`; the mins at the row's end), which the kernels multiply out as they go to the same float32 products (Q4_K: 0.59 bytes
per weight against 0.75; `compact_byte`). llama.cpp quantizes the activation to the weight's
`vec_dot_type` (Q8_0, Q8_1, Q8_K, F16, BF16) before the dot product; `quantize_activation`
reproduces those values exactly and hands the kernels the dequantized activation `xh` plus a
per-32 block sum `xs` for the min term, so our float32 dot products land within rounding of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from engine import jitcache
from engine.llvm_ir import bits_of_float, float_of_bits

jitcache.check()  # Numba's cache of the engine's modules consistent with all of their sources

# GGML type ids (ggml.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K = 12, 13, 14
BF16 = 30
QK_K = 256

#: GGML type -> (elements per block, bytes per block), for the types the native engine runs
BLOCKS = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q8_0: (32, 34), Q4_0: (32, 18), Q4_1: (32, 20),
    Q5_0: (32, 22), Q5_1: (32, 24), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
}
SUPPORTED = frozenset(BLOCKS)

# Packed families and activation families (the weight's vec_dot_type in ggml-cpu)
KIND_F32, KIND_BYTE, KIND_NIB, KIND_PLANES = 0, 1, 2, 3
ACT_F32, ACT_F16, ACT_BF16, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K = 0, 1, 2, 3, 4, 5
ACT_OF = {
    F32: ACT_F32, F16: ACT_F16, BF16: ACT_BF16, Q8_0: ACT_Q8_0, Q4_0: ACT_Q8_0, Q5_0: ACT_Q8_0,
    Q4_1: ACT_Q8_1, Q5_1: ACT_Q8_1, Q4_K: ACT_Q8_K, Q5_K: ACT_Q8_K, Q6_K: ACT_Q8_K,
}
_KIND_OF = {
    F32: KIND_F32, F16: KIND_F32, BF16: KIND_F32, Q8_0: KIND_BYTE, Q6_K: KIND_BYTE,
    Q4_0: KIND_NIB, Q4_1: KIND_NIB, Q4_K: KIND_NIB, Q5_0: KIND_BYTE, Q5_1: KIND_BYTE, Q5_K: KIND_BYTE,
}
_OFFSET = {Q8_0: 128.0, Q6_K: 32.0, Q4_0: 8.0, Q5_0: 16.0}
#: bits above the nibble, for the types the PLANES family holds
PLANES_OF = {Q5_0: 1, Q5_1: 1, Q5_K: 1, Q6_K: 2}

#: float16 bit pattern -> float32, the conversion every fp16 scale goes through
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class Packed(NamedTuple):
    """One weight matrix (rows, K) in a kernel layout; arrays a family does not use are empty."""

    qtype: int
    kind: int
    act: int  # activation family the dot product quantizes x to
    off: float  # subtracted from each stored quant
    rows: int
    k: int
    w32: np.ndarray  # float32 (rows, K)            F32 family
    q: np.ndarray  # uint8 (rows, K) or (rows, K/2)   BYTE / NIB; PLANES: (rows, K/2 + K/8 per plane)
    #                                                compact: then a byte per sub-block scale (and min)
    s: np.ndarray  # float32 (rows, K/sub)           scale per 32 (per 16 for Q6_K); compact: d per 256
    m: np.ndarray  # float32 (rows, K/32)            min per 32 (Q4_1, Q5_1, Q4_K, Q5_K); compact: -dmin per 256

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.w32, self.q, self.s, self.m))

    @property
    def compact(self) -> bool:
        """Whether the K-quant scales are kept compact (`compact_byte`)."""
        return self.kind != KIND_F32 and compact_scales(self.s.shape[1], self.k)

    def rows_slice(self, start: int, stop: int) -> Packed:
        """Rows [start, stop) as views (one expert of a stacked expert tensor)."""
        cut = [a[start:stop] if a.shape[0] else a for a in (self.w32, self.q, self.s, self.m)]
        return self._replace(rows=stop - start, w32=cut[0], q=cut[1], s=cut[2], m=cut[3])


# --- dequantisation, bit-exact with gguf-py --------------------------------------------------


@njit(cache=True)
def _u16(b: np.ndarray, i: int) -> int:
    return np.int64(b[i]) | (np.int64(b[i + 1]) << 8)


@njit(cache=True)
def _scale_min_k4(sc: np.ndarray, j: int) -> tuple[int, int]:
    """The 6-bit scale and min of sub-block j from a Q4_K/Q5_K 12-byte scales field."""
    if j < 4:
        return np.int64(sc[j] & 63), np.int64(sc[j + 4] & 63)
    d = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)
    m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
    return np.int64(d), np.int64(m)


@njit(cache=True)
def _dequant_block(qtype: int, b: np.ndarray, y: np.ndarray, tab: np.ndarray) -> None:
    """One block's bytes `b` to floats `y`, in gguf-py's float32 operation order."""
    if qtype == Q8_0:
        d = tab[_u16(b, 0)]
        for j in range(32):
            v = np.int64(b[2 + j])
            y[j] = np.float32(v - 256 if v > 127 else v) * d
    elif qtype == Q4_0 or qtype == Q5_0:
        d = tab[_u16(b, 0)]
        if qtype == Q4_0:
            for j in range(16):
                y[j] = d * np.float32(np.int64(b[2 + j] & 0xF) - 8)
                y[j + 16] = d * np.float32(np.int64(b[2 + j] >> 4) - 8)
        else:
            qh = _u16(b, 2) | (_u16(b, 4) << 16)
            for j in range(16):
                lo = np.int64(b[6 + j] & 0xF) | (((qh >> j) & 1) << 4)
                hi = np.int64(b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
                y[j] = d * np.float32(lo - 16)
                y[j + 16] = d * np.float32(hi - 16)
    elif qtype == Q4_1 or qtype == Q5_1:
        d = tab[_u16(b, 0)]
        m = tab[_u16(b, 2)]
        if qtype == Q4_1:
            for j in range(16):
                y[j] = (d * np.float32(b[4 + j] & 0xF)) + m
                y[j + 16] = (d * np.float32(b[4 + j] >> 4)) + m
        else:
            qh = _u16(b, 4) | (_u16(b, 6) << 16)
            for j in range(16):
                lo = np.int64(b[8 + j] & 0xF) | (((qh >> j) & 1) << 4)
                hi = np.int64(b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
                y[j] = (d * np.float32(lo)) + m
                y[j + 16] = (d * np.float32(hi)) + m
    elif qtype == Q4_K or qtype == Q5_K:
        d = tab[_u16(b, 0)]
        dmin = tab[_u16(b, 2)]
        sc = b[4:16]
        qs = b[16:144] if qtype == Q4_K else b[48:176]
        for j in range(8):  # sub-blocks of 32: pair p = j//2, low nibbles for even j
            s_, m_ = _scale_min_k4(sc, j)
            dl = d * np.float32(s_)
            ml = dmin * np.float32(m_)
            p, shift = j // 2, 4 * (j % 2)
            for l in range(32):
                q = np.int64((qs[32 * p + l] >> shift) & 0xF)
                if qtype == Q5_K:
                    q |= np.int64((b[16 + l] >> j) & 1) << 4
                y[32 * j + l] = dl * np.float32(q) - ml
    elif qtype == Q6_K:
        d = tab[_u16(b, 208)]
        for h in range(2):  # halves of 128
            for l in range(128):
                k = l // 32  # quarter within the half
                lo = (b[64 * h + (l % 64)] >> (4 * (l // 64))) & 0xF
                hi = (b[128 + 32 * h + (l % 32)] >> (2 * k)) & 3
                q = np.int64(lo | (hi << 4)) - 32
                scv = np.int64(b[192 + 8 * h + l // 16])
                scv = scv - 256 if scv > 127 else scv
                y[128 * h + l] = (d * np.float32(scv)) * np.float32(q)


@njit(parallel=True, cache=True)
def _dequant_blocks(qtype: int, blocks: np.ndarray, out: np.ndarray, tab: np.ndarray) -> None:
    for i in prange(blocks.shape[0]):
        _dequant_block(qtype, blocks[i], out[i], tab)


def dequantize(data: np.ndarray, qtype: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Raw GGUF bytes (..., bytes per row) of `qtype` to float32 (..., elements per row)."""
    if qtype not in BLOCKS:
        raise ValueError(f"GGML type {qtype} is not one the native engine dequantizes")
    block, size = BLOCKS[qtype]
    raw = np.ascontiguousarray(data).view(np.uint8)
    assert raw.shape[-1] % size == 0, (raw.shape, qtype)
    out_shape = (*raw.shape[:-1], raw.shape[-1] // size * block) if shape is None else shape
    flat = raw.reshape(-1)
    if qtype == F32:
        out = flat.view(np.float32).copy()
    elif qtype == F16:
        out = F16_TABLE[flat.view(np.uint16)]
    elif qtype == BF16:
        out = (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        out = np.empty((flat.size // size, block), np.float32)
        _dequant_blocks(qtype, flat.reshape(-1, size), out, F16_TABLE)
    return out.reshape(out_shape)


# --- repacking into the kernel layouts -------------------------------------------------------


def _pack_rows_of(qtype: int):
    """The jitted repacking of `qtype`'s rows: one function per type, compiled only for the types
    a file holds (the type a constant, its branch alone is compiled: one function for all eight
    was the largest part of a first run's compiling after the integer kernels, 17 s of SmolLM2's)."""

    @njit(parallel=True, cache=True)
    def pack_rows(raw: np.ndarray, k: int, tab: np.ndarray, q: np.ndarray, s: np.ndarray, m: np.ndarray,
                  compact: bool) -> None:
        """Decode each row's blocks to integer quants + scales, then write the family layout."""
        rows = raw.shape[0]
        block = 256 if qtype == Q4_K or qtype == Q5_K or qtype == Q6_K else 32
        size = raw.shape[1] * block // k
        half = k // 2
        nib = q.shape[1] != k  # NIB or PLANES, not BYTE
        sb = row_steps(q.shape[1], k) if nib else 0
        n_planes = planes_of(sb) if nib else 0
        # where each element's nibble and bits go, the same in every row: found once (found per
        # element and row, Qwen2.5's Q5_0 matrices packed at 98 M weights/s, 2.6 s of its 3.5 s load)
        nib_at = np.empty(half if nib else 0, np.int64)
        for i in range(nib_at.shape[0]):
            nib_at[i] = nibble_byte(i, half, sb)
        bit_at = np.empty((n_planes, k), np.int64)  # 8 * byte + bit
        for p in range(n_planes):
            for i in range(k):
                at_, bit = high_bit(i, half, sb, p)
                bit_at[p, i] = 8 * at_ + bit
        for r in prange(rows):
            qi = np.empty(k, np.uint8)  # unsigned integer quant of each element, natural order
            scb = np.empty(k // 16, np.uint8)  # compact: each sub-block's scale byte, then its min's
            n_sub = k // 16 if qtype == Q6_K else k // 32
            row = raw[r]
            for bi in range(k // block):
                b = row[bi * size:(bi + 1) * size]
                base = bi * block
                if qtype == Q8_0:
                    s[r, bi] = tab[_u16(b, 0)]
                    for j in range(32):
                        qi[base + j] = (np.int64(b[2 + j]) + 128) & 0xFF
                elif qtype == Q4_0 or qtype == Q4_1 or qtype == Q5_0 or qtype == Q5_1:
                    s[r, bi] = tab[_u16(b, 0)]
                    o = 2
                    if qtype == Q4_1 or qtype == Q5_1:
                        m[r, bi] = tab[_u16(b, 2)]
                        o = 4
                    if qtype == Q4_0 or qtype == Q4_1:
                        for j in range(16):
                            qi[base + j] = b[o + j] & 0xF
                            qi[base + j + 16] = b[o + j] >> 4
                    else:  # the fifth bits, a 32-bit mask before the nibbles
                        h = _u16(b, o) | (_u16(b, o + 2) << 16)
                        for j in range(16):
                            qi[base + j] = (b[o + 4 + j] & 0xF) | (((h >> j) & 1) << 4)
                            qi[base + j + 16] = (b[o + 4 + j] >> 4) | (((h >> (j + 16)) & 1) << 4)
                elif qtype == Q4_K or qtype == Q5_K:
                    d = tab[_u16(b, 0)]
                    dmin = tab[_u16(b, 2)]
                    qs = b[16:144] if qtype == Q4_K else b[48:176]
                    if compact:
                        s[r, bi], m[r, bi] = d, -dmin
                    for j in range(8):
                        s_, m_ = _scale_min_k4(b[4:16], j)
                        if compact:
                            scb[bi * 8 + j], scb[n_sub + bi * 8 + j] = s_, m_
                        else:
                            s[r, bi * 8 + j] = d * np.float32(s_)
                            m[r, bi * 8 + j] = -(dmin * np.float32(m_))
                        p, shift = j // 2, 4 * (j % 2)
                        for l in range(32):
                            v = (qs[32 * p + l] >> shift) & 0xF
                            if qtype == Q5_K:
                                v |= ((b[16 + l] >> j) & 1) << 4
                            qi[base + 32 * j + l] = v
                else:  # Q6_K
                    d = tab[_u16(b, 208)]
                    if compact:
                        s[r, bi] = d
                    for j in range(16):
                        scv = np.int64(b[192 + j])
                        if compact:
                            scb[bi * 16 + j] = b[192 + j]  # a signed byte
                        else:
                            s[r, bi * 16 + j] = d * np.float32(scv - 256 if scv > 127 else scv)
                    for h in range(2):
                        for l in range(128):
                            lo = (b[64 * h + (l % 64)] >> (4 * (l // 64))) & 0xF
                            hi = (b[128 + 32 * h + (l % 32)] >> (2 * (l // 32))) & 3
                            qi[base + 128 * h + l] = lo | (hi << 4)
            if not nib:
                q[r, :] = qi
                continue
            qr = q[r]
            qr[:] = 0
            for i in range(half):
                qr[nib_at[i]] = (qi[i] & 0xF) | ((qi[i + half] & 0xF) << 4)
            for p in range(n_planes):  # PLANES
                for i in range(k):
                    at_ = bit_at[p, i]
                    qr[at_ >> 3] |= ((np.int64(qi[i]) >> (4 + p)) & 1) << (at_ & 7)
            if compact:  # the scales in their groups, the mins (K/32 bytes) at the row's end
                sub = k // n_sub
                for j in range(n_sub):
                    qr[compact_byte(j * sub, k, sb)] = scb[j]
                if m.shape[0]:
                    qr[q.shape[1] - n_sub:] = scb[n_sub:2 * n_sub]

    return pack_rows


_PACK_ROWS = {qtype: _pack_rows_of(qtype) for qtype, kind in _KIND_OF.items() if kind != KIND_F32}


@njit(cache=True, inline="always")
def compact_scales(n_scales: int, k: int) -> bool:
    """Whether a K-wide row with n_scales scales per row keeps them compact (one per 256: a
    packed row's `s` otherwise holds one per 32 or 16)."""
    return n_scales * QK_K == k


#: the forms of a NIB or PLANES row (`row_steps`), named by the bytes of one 64-byte step of
#: nibbles where it is stored by groups (`step_at`): NIB in the elements' own order, Q4_K's NIB
#: with compact scales, one plane (Q5_0, Q5_1), one plane and compact scales (Q5_K), Q6_K
ROW_NIB, ROW_NIBK, ROW_PLANE, ROW_PLANEK, ROW_Q6K = 64, 68, 80, 84, 104


@njit(cache=True, inline="always")
def row_steps(width: int, k: int) -> int:
    """The form of a NIB or PLANES row of `width` bytes and K weights, as the bytes of one of its
    64-byte steps of nibbles (128 weights) where it is stored by groups (`step_at`), or 64 for
    a NIB row in the elements' own order. Each form has its own width: per 128 weights 64 bytes
    (NIB), 72 (Q4_K's NIB with compact scales: 68 per step, 4 bytes of mins at the row's end),
    80 (Q5_0 and Q5_1: one plane), 88 (Q5_K: a plane and compact scales, 84, then the mins) and
    104 (Q6_K: two planes' bits as 2-bit fields and compact scales)."""
    f = width * 128 // k
    if f == ROW_NIBK + 4 or f == ROW_PLANEK + 4:
        return f - 4
    return f


@njit(cache=True, inline="always")
def planes_of(sb: int) -> int:
    """The bit planes above the nibble of a row of form `sb` (`row_steps`)."""
    if sb == ROW_Q6K:
        return 2
    return 1 if sb == ROW_PLANE or sb == ROW_PLANEK else 0


@njit(cache=True, inline="always")
def scale_bytes(sb: int) -> int:
    """Compact scale bytes per half-row and step in a row of form `sb` (`row_steps`): 4 for Q6_K
    (a scale per 16), 2 for Q4_K and Q5_K (per 32), else none (the scales are float32, in `s`)."""
    if sb == ROW_Q6K:
        return 4
    return 2 if sb == ROW_NIBK or sb == ROW_PLANEK else 0


@njit(cache=True, inline="always")
def step_group(step: int, half: int) -> tuple[int, int]:
    """The group of steps that step `step` of a half-row is in, as (its first step, its steps):
    the groups of the activation's int8 form (`int8_position`: 4 steps, then one of 2 where 128 or
    more elements are left, then a last single step where 64 are)."""
    n4 = (half >> 8) << 2
    if step < n4:
        return step - (step & 3), 4
    if (half & 255) >= 128 and step < n4 + 2:
        return n4, 2
    return step, 1


@njit(cache=True, inline="always")
def step_at(step: int, sb: int) -> int:
    """Where step `step`'s group starts in a row of form `sb` (`row_steps`) stored by groups,
    when `step` is its first.

    The row is its groups of steps (`step_group`) one after the other, and a group of G steps is
    the 64G bytes of their nibbles (`nibble_byte`), then their bits above the nibble (`high_bit`),
    then the compact scale bytes of the low half-row's 64G weights and of the high one's
    (`compact_byte`); the mins of Q4_K and Q5_K follow the last group. The integer kernels read a
    row from its first byte to its last, a stream the hardware prefetcher follows. With the
    nibbles, the planes and the scales each in a region of their own, read group by group as
    interleaved streams, reading the 253 MB Q6_K head of a Qwen3 file one row after the other ran
    at 10-12 GB/s on one thread, where a plain stream reads 31 (docs/engine.md)."""
    return step * sb


@njit(cache=True, inline="always")
def nibble_byte(i: int, half: int, sb: int) -> int:
    """The byte of a row of form `sb` (`row_steps`) whose nibbles hold element i of the low
    half-row (its low nibble) and element half + i (its high one). Rows stored by groups keep
    each group's nibbles (`step_at`) in the order of the activation's int8 form (`int8_position`),
    so that the integer kernels multiply the bytes as they load them; NIB rows (64) the
    elements' own order."""
    if sb == ROW_NIB:
        return i
    p = int8_position(i, 2 * half)
    st = p >> 6
    first, _g = step_group(st, half)
    return step_at(first, sb) + 64 * (st - first) + (p & 63)


@njit(cache=True, inline="always")
def high_bit(i: int, half: int, sb: int, p: int) -> tuple[int, int]:
    """Where, in a PLANES row of form `sb` (`row_steps`), bit 4+p of element i lives: (byte, bit
    in it). In each group of steps (`step_at`), after its nibbles, per step:

    - One plane (Q5_0, Q5_1, Q5_K): 8 bytes per half-row, a 64-bit mask whose bit b belongs to the
      element in the step's nibble byte b, which the integer kernels turn into bytes with one
      masked move.
    - Two (Q6_K): 32 bytes of 2-bit fields. Byte b holds the two bits of the element whose nibble
      is in the step's byte b at bits 0-1 for the low half-row and 4-5 for the high one, and of the
      nibble byte b + 32 at bits 2-3 and 6-7. Loaded twice over into 64 bytes, one bit-matrix
      multiply (GF2P8AFFINEQB) per half-row moves each byte's field to bits 4-5 (engine.int8
      `_weight_bytes`)."""
    n_planes = planes_of(sb)
    hf = 1 if i >= half else 0
    pos = int8_position(i - hf * half, 2 * half)
    st, b = pos >> 6, pos & 63
    first, g = step_group(st, half)
    at = step_at(first, sb) + 64 * g + 16 * n_planes * (st - first)
    if n_planes == 2:
        return at + (b & 31), 4 * hf + 2 * (b >> 5) + p
    return at + 8 * hf + (b >> 3), b & 7


@njit(cache=True, inline="always")
def compact_byte(i: int, k: int, sb: int) -> int:
    """Where element i's scale byte is in a compact K-wide row of form `sb` (`row_steps`): in its
    group of steps (`step_at`), after the nibbles and planes, the low half-row's then the high
    one's, a byte per 16 (Q6_K) or 32 weights."""
    half = k >> 1
    hf = 1 if i >= half else 0
    j = i - hf * half
    first, g = step_group(j >> 6, half)
    per = scale_bytes(sb)
    return step_at(first, sb) + (64 + 16 * planes_of(sb) + per * hf) * g + (j - 64 * first) * per // 64


@njit(cache=True, inline="always")
def compact_scale(qr: np.ndarray, i: int, k: int) -> np.float32:
    """Element i's scale byte in a compact K-wide row `qr` (`compact_byte`) as a number: signed for
    Q6_K, a 6-bit code for Q4_K and Q5_K; times the superblock's d it is the scale."""
    sb = row_steps(qr.shape[0], k)
    b = np.int64(qr[compact_byte(i, k, sb)])
    return np.float32(b - 256 if sb == ROW_Q6K and b > 127 else b)


@njit(cache=True, inline="always")
def stored_value(qr: np.ndarray, i: int, half: int, sb: int) -> int:
    """Element i's stored (unsigned) value in a NIB or PLANES row `qr` of form `sb` (`row_steps`)."""
    v = np.int64(qr[nibble_byte(i, half, sb)] & 15) if i < half else \
        np.int64(qr[nibble_byte(i - half, half, sb)] >> 4)
    for p in range(planes_of(sb)):
        at, bit = high_bit(i, half, sb, p)
        v |= ((np.int64(qr[at]) >> bit) & 1) << (4 + p)
    return v


#: the orders an activation's int8 form is stored in (`int8_order`): the elements' own; groups of
#: 4 steps throughout (K a multiple of 512); groups of 4, 2 and 1 steps (and 32 elements) in each
#: half of K
INT8_NATURAL, INT8_UNIFORM, INT8_MIXED = 0, 1, 2


@njit(cache=True, inline="always")
def int8_position(i: int, k: int) -> int:
    """Where element i of a K-wide activation's int8 form is stored. Where K is a multiple of 64
    (`int8_order`), each half of K (the elements a nibble layout's bytes pair) is stored from its
    start in groups of 256 elements as 4 64-byte steps, then, where 128 or more are left, 128 as 2
    steps, then the last 64 and 32 (if any) in their own order; in a group of G steps the 4-byte
    lane j of step s holds elements 4Gj + 4s .. 4Gj + 4s + 3 of the group. Over the G steps a lane
    of engine.int8's integer dot product then sums 4G elements of one scale block, so the scales
    are applied once per G steps instead of each step. Elsewhere the order is the elements' own."""
    if k % 64:
        return i
    half = k >> 1
    base = half if i >= half else 0
    e = i - base
    n4 = half - (half & 255)  # the half's elements in groups of 4 steps
    if e < n4:
        f = e & 255
        return i - f + ((f & 15) >> 2) * 64 + (f >> 4) * 4 + (f & 3)
    f = e - n4
    if f < 128 and half - n4 >= 128:  # a group of 2 steps
        return i - f + ((f & 7) >> 2) * 64 + (f >> 3) * 4 + (f & 3)
    return i


@njit(cache=True, inline="always")
def int8_order(k: int) -> int:
    """The order a K-wide activation's int8 form is stored in (`int8_position`): INT8_UNIFORM
    where each half of K is whole groups of 4 steps (K a multiple of 512: the same as groups of 4
    along the whole row), INT8_MIXED where the halves end in a group of 2, a step or 32 elements (K
    a multiple of 64: every K the integer kernels take, SmolLM2's 576 included, whose halves of 288
    end in 32), else INT8_NATURAL; the one rule that the storing and engine.int8's choice of kernel
    both follow."""
    if k % 512 == 0:
        return INT8_UNIFORM
    return INT8_MIXED if k % 64 == 0 else INT8_NATURAL


def packable(qtype: int, k: int) -> str | None:
    """Why a (rows, K) tensor of `qtype` cannot be packed, or None when it can."""
    if qtype not in BLOCKS:
        return "its quant type is not one the native engine runs"
    block = BLOCKS[qtype][0]
    if k % block:
        return f"its rows of {k} are not whole {block}-element blocks"
    if _KIND_OF[qtype] == KIND_NIB and k % 64:
        return f"its rows of {k} elements cannot be split in two halves of whole blocks"
    return None


#: raw bytes packed per step of `pack`, after which its `done` hears which rows are finished
PACK_STEP_BYTES = 16 << 20


def pack(raw: np.ndarray, qtype: int, k: int, planes: bool = False, compact: bool = False,
         done: Callable[[int, int], None] | None = None) -> Packed:
    """Repack a GGUF tensor's raw rows (rows, bytes per row), or its F32 view, for the kernels;
    `planes`: the 5- and 6-bit types as nibbles and bit planes where the rows are whole 128-weight
    steps (the layout the integer kernels read fastest; the float ones read BYTE faster);
    `compact`: a K-quant's scales compact (see the module's notes) where it is packed as NIB or
    PLANES (the K-quants' PLANES always are; the float kernels read compact scales slowly).
    `done(r0, r1)` is called as each step of rows is packed, so that a caller can let the file's
    pages of those rows go (`GGUFFile.release`) before the next step maps its own in: packing
    then holds one step of the file resident, not the whole tensor (Qwen2.5's 136 MB embedding)."""
    why = packable(qtype, k)
    if why is not None:
        raise ValueError(f"cannot pack a {k}-column tensor of GGML type {qtype}: {why}")
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(raw.shape[0], -1)
    rows, kind = raw.shape[0], _KIND_OF[qtype]
    if planes and qtype in PLANES_OF and k % 128 == 0:
        kind = KIND_PLANES
    e2 = np.empty((0, 0), np.float32)
    q, s, m, w32 = np.empty((0, 0), np.uint8), e2, e2, e2
    if kind == KIND_F32:
        w32 = np.empty((rows, k), np.float32)
    else:
        sub = 16 if qtype == Q6_K else 32
        width = {KIND_BYTE: k, KIND_NIB: k // 2, KIND_PLANES: k // 2 + k // 8 * PLANES_OF.get(qtype, 0)}[kind]
        has_min = qtype in (Q4_1, Q5_1, Q4_K, Q5_K)
        compact = qtype in (Q4_K, Q5_K, Q6_K) and (kind == KIND_PLANES or (compact and kind == KIND_NIB))
        if compact:
            width += k // sub + (k // 32 if has_min else 0)
        q = np.empty((rows, width), np.uint8)
        s = np.empty((rows, k // (QK_K if compact else sub)), np.float32)
        if has_min:
            m = np.empty((rows, k // (QK_K if compact else 32)), np.float32)
    step = max(1, PACK_STEP_BYTES // max(1, raw.shape[1]))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        if kind == KIND_F32:
            w32[r0:r1] = dequantize(raw[r0:r1], qtype).reshape(r1 - r0, k)
        else:
            _PACK_ROWS[qtype](raw[r0:r1], k, F16_TABLE, q[r0:r1], s[r0:r1], m[r0:r1] if m.shape[0] else m, compact)
        if done is not None:
            done(r0, r1)
    return Packed(qtype, kind, ACT_OF[qtype], _OFFSET.get(qtype, 0.0), rows, k, w32, q, s, m)


# --- activation quantisation (ggml-cpu's from_float for each vec_dot_type) ------------------


@njit(cache=True)
def round_f16(x: float) -> np.float32:
    """x (a float32: every caller's) rounded to the nearest float16 (ties to even, as F16C does),
    returned as float32."""
    a = abs(x)
    if not a < 65520.0:  # past 65504 rounds to infinity; inf and nan stay
        return np.float32(x) if (a != a or a == np.inf) else np.float32(math.copysign(np.inf, x))
    if a < 6.103515625e-05:  # float16 subnormals: a grid of 2**-24
        return np.float32(np.rint(x * 16777216.0) * 5.9604644775390625e-08)
    # keep 11 significant bits of the float32: its 13 lowest bits rounded off, ties to even (a carry
    # moves into the exponent as it should), with no libm call (frexp/ldexp were)
    bits = bits_of_float(np.float32(x))
    return float_of_bits((bits + np.int32(0xFFF) + ((bits >> 13) & np.int32(1))) & np.int32(-0x2000))


@njit(cache=True)
def _quantize_row(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    _quantize_row8(act, x, xh, xs, np.empty(0, np.int8), np.empty(0, np.float32))


@njit(cache=True)
def _quantize_row8(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray, xq: np.ndarray,
                   xd: np.ndarray) -> None:
    """x quantized for `act`: xh the values the dot product sees, xs their sums per 32; for the int8
    families also, where xq is not empty, the int8 values xq (in the order of `int8_position`) and
    their scale per 32 xd (engine.int8's integer dot products).

    Block by block, each step a loop over the block's elements that LLVM vectorizes (the largest
    magnitude as integers, the rounding, the int8 values into a block of their own), then the
    int8 values stored 4 at a time (`_store_int8`), and float16 rounding on the bits
    (`round_f16`). Element by element, with libm's frexp/ldexp per block and each element's int8
    position worked out on its own, it took 4.0-4.5 ns per element on one thread, 2.0-2.3 now
    (64 rows of 2048 or 4864, Q8_0/Q8_1/Q8_K; docs/benchmarks.md)."""
    k = x.shape[0]
    ints = xq.shape[0] > 0
    if act == ACT_F32:
        xh[:] = x
    elif act == ACT_F16:
        for i in range(k):
            xh[i] = round_f16(x[i])
    elif act == ACT_BF16:
        xu, hu = x.view(np.uint32), xh.view(np.uint32)
        for i in range(k):
            u = np.uint64(xu[i])
            if (u & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000):
                hu[i] = np.uint32((u & np.uint64(0xFFFF0000)) | np.uint64(64 << 16))
            else:
                hu[i] = np.uint32(((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16))
                                  << np.uint64(16))
    elif act == ACT_Q8_0 or act == ACT_Q8_1:
        # quantize_row_q8_0/q8_1 (x86): d = amax/127, q = round-to-even(x * 127/amax)
        qb = np.empty(32, np.int8)
        xq4 = xq.view(np.uint32)
        for b in range(k // 32):
            xb = x[b * 32:(b + 1) * 32]
            amax = _abs_max(xb)
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            dh = round_f16(d)
            total = _rounded(qb, xb, inv, xh[b * 32:(b + 1) * 32], dh, False)
            xs[b] = round_f16(d * total) if act == ACT_Q8_1 else dh * total
            if ints:
                _store_int8(xq4, qb, b * 32, k)
                xd[b] = dh
    else:  # ACT_Q8_K, quantize_row_q8_K_ref: iscale = -127/max with max the signed largest |x|
        qb = np.empty(32, np.int8)
        xq4 = xq.view(np.uint32)
        for b in range(k // QK_K):
            xb = x[b * QK_K:(b + 1) * QK_K]
            amax = _abs_max(xb)
            if amax == 0:
                xh[b * QK_K:(b + 1) * QK_K] = 0.0
                xs[b * 8:(b + 1) * 8] = 0.0
                if ints:  # (a superblock's int8 values need not be stored in its own 256 places)
                    qb[:] = 0
                    for sb in range(8):
                        _store_int8(xq4, qb, b * QK_K + sb * 32, k)
                    xd[b * 8:(b + 1) * 8] = 0.0
                continue
            vmax = np.float32(0.0)
            for j in range(QK_K):  # the first element of the largest magnitude, with its sign
                if abs(xb[j]) == amax:
                    vmax = xb[j]
                    break
            iscale = np.float32(-127.0) / vmax
            d = np.float32(1.0) / iscale
            for sb in range(8):
                at = b * QK_K + sb * 32
                total = _rounded(qb, x[at:at + 32], iscale, xh[at:at + 32], d, True)
                xs[b * 8 + sb] = d * total
                if ints:
                    _store_int8(xq4, qb, at, k)
                    xd[b * 8 + sb] = d


@njit(cache=True)
def _abs_max(xb: np.ndarray) -> np.float32:
    """The largest |x| of a block, as the largest of the bit patterns without the sign (those of
    floats >= 0 order as the floats do): integers, so in SIMD lanes (a float max loop stayed
    scalar without fastmath's no-NaN)."""
    bits = xb.view(np.int32)
    top = np.int32(0)
    for j in range(bits.shape[0]):
        top = max(top, bits[j] & np.int32(0x7FFFFFFF))
    return float_of_bits(top)


@njit(cache=True)
def _rounded(qb: np.ndarray, xb: np.ndarray, scale: np.float32, hb: np.ndarray, d: np.float32,
             q8k: bool) -> np.float32:
    """qb = round-to-even(xb * scale) as int8, for Q8_K (`q8k`) at most 127 (no -128: the largest
    magnitude's own sign maps it to -127) and -0 as +0 (its xh as from an integer, as ggml's
    reference gives it); hb = those values * d; the sum of qb, added as integers (so in SIMD lanes
    without fastmath)."""
    total = np.int32(0)
    for j in range(32):
        qv = np.float32(np.rint(xb[j] * scale))
        if q8k:
            qv = min(qv, np.float32(127.0)) + np.float32(0.0)
        qb[j] = np.int8(qv)
        hb[j] = qv * d
        total += np.int32(qv)
    return np.float32(total)


@njit(cache=True, inline="always")
def _store_int8(xq4: np.ndarray, qb: np.ndarray, i0: int, k: int) -> None:
    """The int8 form's bytes (xq4: its uint32 view) at the `int8_position`s of elements
    i0..i0+31 (i0 a multiple of 32) = the block's int8 values qb, in the elements' order. Four
    neighbours i, i+1, i+2, i+3 (i a multiple of 4) always stay together, so they move as one
    uint32, to a position worked out per 4."""
    q4 = qb.view(np.uint32)
    if k % 64:
        xq4[i0 >> 2:(i0 >> 2) + 8] = q4
        return
    for r in range(8):
        xq4[int8_position(i0 + 4 * r, k) >> 2] = q4[r]


@njit(parallel=True, cache=True)
def _quantize_rows(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    for t in prange(x.shape[0]):
        _quantize_row(act, x[t], xh[t], xs[t])


@njit(parallel=True, cache=True)
def _quantize_rows8(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray, xq: np.ndarray,
                    xd: np.ndarray) -> None:
    for t in prange(x.shape[0]):
        _quantize_row8(act, x[t], xh[t], xs[t], xq[t], xd[t])


def quantize_activation8(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray, xq: np.ndarray,
                         xd: np.ndarray) -> None:
    """`quantize_activation` that also fills the int8 form: xq (T, K) and xd (T, K/32)."""
    if x.shape[0] == 1:
        _quantize_row8(act, x[0], xh[0], xs[0], xq[0], xd[0])
    else:
        _quantize_rows8(act, x, xh, xs, xq, xd)


def quantize_activation(act: int, x: np.ndarray, xh: np.ndarray, xs: np.ndarray) -> None:
    """Rows of x (T, K) to the values llama.cpp's dot product sees: xh (T, K) and xs (T, K/32)."""
    assert x.shape == xh.shape and xs.shape[0] == x.shape[0] and xs.shape[1] == x.shape[1] // 32
    if x.shape[0] == 1:  # a parallel region costs more than one row
        _quantize_row(act, x[0], xh[0], xs[0])
    else:
        _quantize_rows(act, x, xh, xs)
