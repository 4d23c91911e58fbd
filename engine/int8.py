"""Integer dot products of quantized weight rows with int8 activations, as llama.cpp computes them.

llama.cpp quantizes the activation to int8 blocks (Q8_0, Q8_1, Q8_K) and multiplies it with the
weight's small integers exactly, one block at a time, before applying the two scales in float.
Numba widens small-integer arithmetic to 64 bits, so a plain loop cannot do that at speed; on a
CPU with AVX-512 VNNI one `vpdpbusd` multiplies 64 unsigned weight bytes by 64 signed activation
bytes and sums them in groups of four into 16 int32 lanes. `_make(R, T, layout)` builds a Numba
intrinsic that walks R weight rows in 64-byte steps with that instruction and, per step, turns
the int32 lanes to float and multiplies each by its block's scale product (weight scale ×
activation scale) into 16 float32 accumulators per row and token, reduced once at the end of the
rows. Where the activation's int8 form is stored in groups (`engine.quants.int8_position`: K a
multiple of 64, every K the kernels take; each half of K in groups of 4 steps, then one of 2, a
single step and 32 elements where the half does not divide), that work is done once per group of
4 (or 2) steps: the weight
rows' bytes, loaded in their own order, are transposed in registers to the activation's grouped
order (8 or 2 two-source permutes per group and row, shared by the tokens; the rows stored by
groups, below, are in that order already and skip them), so that each int32
lane sums 16 (8) products of one scale block over the group, and the lanes are turned to float
and scaled once per group. Per `vpdpbusd` that leaves about one float operation in place of
three, which had bound these kernels (docs/benchmarks.md, "Seventh pass"; `tests/engine/
bench_int8.py --expert`). The rows are read once for T tokens, so a batch of tokens (prefill,
several sequences decoded together, the tokens of one expert) costs little more than one; two
rows at a time load each token's activation bytes once for both (Qwen2.5-0.5B's matrices for 8
tokens: 16.0 ms against 19–20 ms one row at a time). Rows read side by side are not a stream the
hardware prefetcher follows: from memory, two rows at a time ran
at 40% of the speed of one until each step prefetched the same bytes `PREFETCH_ROWS` rows on; the
prefetch pays for one row at a time too (Qwen2.5-0.5B's matrices, each from memory, for one
token: 8.2 ms against 10.5 without; `tests/engine/bench_int8.py --distinct`). Each row's lanes
start from -off x the activation bytes, computed once per token and step for all the rows.

Layouts (`engine.quants` packed families): `BYTE32` one byte per weight and a scale per 32
(Q8_0, Q5_0, Q5_1, Q5_K), `BYTE16` the same with a scale per 16 (Q6_K), `NIB` two 4-bit weights
per byte in half-rows (Q4_0, Q4_1, Q4_K), `NIB5` and `NIB6` the same nibbles plus one bit plane
(Q5_0, Q5_1) or two with a scale per 16 (Q6_K), `NIBK` and `NIB5K` Q4_K and Q5_K as `NIB` and
`NIB5`. The K-quants' layouts (`NIBK`, `NIB5K`, `NIB6`) keep compact scales (engine.quants
`compact_byte`): per group the kernel loads the scale bytes, widens them and multiplies them by the
superblock's float32 `d` in one plain multiply, the same float32 products the float32 scales hold;
they run only the grouped loops (K is whole superblocks) and only their type's offset (Q6_K 32,
the others none). The PLANES layouts (`NIB5`, `NIB6`, `NIB5K`) and `NIBK` are stored group by group
(engine.quants `step_at`): a group's nibbles, in the activation's grouped order, then its bits
above the nibble (and for Q6_K its scale bytes), so that a row is read from its first byte to its
last, a stream the hardware prefetcher follows (with the nibbles and the planes in two regions of
the row, read group by group, one thread read the 253 MB Q6_K head of a Qwen3 file at 10-12 GB/s
against 31 for a plain stream; stored by groups, at 21). Per 64 weights a plane is a 64-bit mask,
which one masked byte move (`select` of a `<64 x i1>`) turns into the bit's value in each byte,
OR-ed onto the nibbles; Q6_K's two bits are a 2-bit field per weight, 32 bytes per step, loaded
twice over into 64 bytes and moved to bits 4-5 by one GF2P8AFFINEQB per half-row (a constant bit
matrix per 8 bytes; shifts on CPUs without GFNI), 3 instructions per 64 weights where its two
masks took 6. The planes save the bytes: 0.75
against 1.125 bytes per weight for Q5_0, 1.0 against 1.25 for Q6_K. Where many tokens share each
row (prefill, batches) that expansion per group of 8 tokens costs 10-15% (Qwen2.5-0.5B's matrices
for 64 tokens). Unpacking tiles of rows to bytes first won back about a third of that, but its two
more layouts took a first run's compiling from 32 to 59 s (`assistant chat`, empty Numba cache),
so it is not done. The intrinsic computes sum_b s[b] * d[b] * sum((q - off) * xq)
in integers, as llama.cpp does: the stored weights are unsigned (+off: Q8_0 128, Q6_K 32, Q5_0 16,
Q4_0 8), and a second `vpdpbusd` of a vector of `off` with the same activation bytes is subtracted
from each step's lanes (an extra pass over the block sums after each row cost ~20% of a batched
step; reading precomputed lane sums instead cost more, loads being the bound). The min terms
(Q4_1, Q5_1, Q4_K, Q5_K: no offset) go through the activation's block sums, as in the float
kernels.

On a CPU with AVX2 but without AVX-512 VNNI (AMD Zen 1-3, Intel before Ice Lake, and Intel's
Alder Lake and later, whose 256-bit AVX-VNNI is not used yet), the same IR runs: LLVM splits each
64-byte vector into two 32-byte ones, and `_dpbusd` makes each `vpdpbusd` a `vpmaddubsw` (unsigned
x signed byte pairs summed to int16) and a `vpmaddwd` by ones (int16 pairs to int32): the same
int32 lanes, so the same sums to the bit. vpmaddubsw saturates a pair's sum at 2^15, which weights
of up to 63 never reach against activation bytes of -128..127; within a group the int16 sums of
several steps are added before one vpmaddwd where the weights' range keeps them exact
(`_INT16_STEPS`). Q8_0's bytes (+128, up to 255) would pass it, so where the offset is 128 the row loop multiplies |w - 128| by the
activation with w - 128's sign (`_sign_trick`, as llama.cpp's AVX2 kernels do) and skips the
offset's product. Q6_K's 2-bit fields take the shifts (GF2P8AFFINEQB on 64 bytes needs AVX-512).
AVX2 has 16 registers of 32 bytes, and 16 float lanes per row and token are two of them: the 2 x 8
kernel's 16 accumulators alone took all 32. Where the activation is stored in groups, two
neighbouring int32 lanes always share a scale (a block of 32 or, in a group of two or one steps,
more lanes), except for Q6_K's scales per 16, so there (`narrow`) the 16 lanes are added in pairs by
one `vphaddd` and turned to float, scaled and accumulated as 8: one register per row and token,
one conversion and multiply where there were two (Qwen2.5's prefill of 512 went from 0.75-0.85 to
0.96-1.00 of llama.cpp's speed, docs/benchmarks.md). The sums differ from the 16-lane ones in
float rounding only (each pair's integers added before the scale, as llama.cpp adds a block's),
and are the same for a token alone and in a group.

A half of 64k + 32 elements (SmolLM2's K = 576: halves of 288) ends, after its groups, with 32
elements in their own order; the two halves' 32 are one more step, their bytes side by side (a NIB
row's last 32 bytes as low and high nibbles, a BYTE32 row's last 32 of each half), added into the
accumulators as any step (`tail`). Until 2026-12-08 such a K kept the activation in its own order,
every 64-byte step converted and scaled on its own: one thread, Q4_1 rows of 576 for 8 / 64 tokens
42.7 / 45.1 GMAC/s in that order, 71.3 / 70.6 grouped, Q8_0 64.9 / 60.8 against 78.9 / 81.7 (best
of five alternating processes, `int8_order` 0 against 2). The tail as a step of its own with its
own reduction per row and token had cost about as much as the eight blocks before it.
Without either (`AVAILABLE` false) the engine keeps its float32 kernels and the intrinsic is never
called; a portable Numba loop stands in for it so that code referring to it still compiles.

The kernels are compiled once, in a library per layout apart from the Numba functions that call
them by name (`load_kernels`), and their machine code is kept beside Numba's cache in a file per
layout whose name is a key of the sources they are made from, the CPU and the compilers' versions:
a changed kernel body is compiled again on its own. Numba's on-disk cache does not know that a
cached function in another module calls them: after changing what a call passes (`_KERNEL_TYPE`,
`_codegen`), delete the engine's `__pycache__/*.nb[ic]` (an installed release changes every file at
once, so users never meet a stale caller).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from engine import jitcache
from engine.llvm_ir import vector_loop
from engine.quants import (INT8_MIXED, INT8_UNIFORM, QK_K, ROW_NIBK, ROW_PLANE, ROW_PLANEK, ROW_Q6K,
                           compact_scale, int8_order, int8_position, row_steps, scale_bytes, stored_value)

BYTE32, BYTE16, NIB, NIB5, NIB6, NIBK, NIB5K = 0, 1, 2, 3, 4, 5, 6
#: how a row loop treats the weights' stored offset: none; each step's lanes start from -off x the
#: activation bytes; or (Q8_0's +128 on AVX2) the bytes made signed and multiplied by `_sign_trick`
PLAIN, OFFSET, SIGN_TRICK = 0, 1, 2
#: per layout, how many 64-byte steps' vpmaddubsw sums (AVX2) add up in int16 without passing 2^15:
#: 32767 // (w_max x 128 x 2) for its largest stored weight (4 bits 15, 5 bits 31, Q6_K 63; BYTE32
#: holds 5-bit bytes, or Q8_0's through `_sign_trick`, |w| up to 128: one step). The offset's
#: product (off <= 32: Q6_K's 32 x -128 x 8 = -2^15 at the extreme) sums 4 steps too.
_INT16_STEPS = {NIB: 8, NIBK: 8, NIB5: 4, NIB5K: 4, NIB6: 2, BYTE16: 2, BYTE32: 4}
_NIBBLES = (NIB, NIB5, NIB6, NIBK, NIB5K)  # layouts whose bytes hold two 4-bit weights, one per half-row
_PLANES = {NIB5: 1, NIB6: 2, NIB5K: 1}  # bit planes above the nibble (engine.quants PLANES family)
_SUB16 = (BYTE16, NIB6)  # layouts with a weight scale per 16 (Q6_K)
#: the K-quants' layouts, whose scales are compact (engine.quants `compact_byte`), and whether their
#: weights are stored with an offset: Q6_K (NIB6) always, Q4_K (NIBK) and Q5_K (NIB5K) never
_COMPACT = {NIBK: False, NIB5K: False, NIB6: True}
#: layouts whose weights always carry the same offset (whether they do, as `_COMPACT`): the K-quants'
#: and Q6_K's bytes (BYTE16 holds only Q6_K); only that row loop is compiled for them
_OFFSET_KNOWN = {**_COMPACT, BYTE16: True}
#: layouts of the K-quants and Q6_K's bytes, whose K is whole 256-weight superblocks
_SUPERBLOCKS = (*_COMPACT, BYTE16)
#: layouts stored by groups of steps (engine.quants `step_at`), by the bytes of a step there (their
#: `row_steps`): their nibbles are in the activation's grouped int8 order (engine.quants
#: `nibble_byte`) and go to `vpdpbusd` as loaded, without the transposes the others take
_STEP_BYTES = {NIBK: ROW_NIBK, NIB5: ROW_PLANE, NIB5K: ROW_PLANEK, NIB6: ROW_Q6K}
_STORED_GROUPED = tuple(_STEP_BYTES)
#: layouts whose K is always a multiple of 128, whose halves never end in 32 elements (`tail`): those
#: and the planes (whole 128-weight steps, engine.quants `pack`)
_GROUPED_ONLY = (*_SUPERBLOCKS, NIB5)
#: layouts whose kernels for two rows run on AVX2 one row after the other, each row's steps over
#: its tokens from registers: two rows side by side take more than AVX2's 16 registers (a row's
#: group of steps is 8 of them, unpacked), and the spills cost more than loading each token's
#: activation bytes once per row (a 2 x 8 Q4_K kernel body: 375 of its 1241 instructions moved
#: registers to and from the stack; one row: 67 of 454). Measured one thread, 8 and 64 tokens,
#: rows in tiles of 64 (`engine.matmul._rows_i8`): Q4_K (NIBK) 38-51 -> 53-72 GMAC/s, SmolLM2's
#: Q4_1 (NIB) 19-31 -> 22-40; not kept for BYTE32 (Q5_0's bytes 27-29 -> 22-24; Q8_0's 16-19 ->
#: 18-21) nor the planes (NIB5 27 -> 23; NIB6 the same)
_ROW_BY_ROW = (NIB, NIBK)


def _host_has(*names: str) -> bool:
    try:
        f = llvm_binding.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite cannot say: take the float path
        return False
    return all(f.get(name, False) for name in names)


#: whether `vpdpbusd` multiplies 64 bytes at a time here (AVX-512 VNNI); ASSISTANT_VNNI=0 takes the
#: AVX2 form on such a CPU too (tests of that path)
VNNI = _host_has("avx512f", "avx512bw", "avx512vnni") and os.environ.get("ASSISTANT_VNNI", "1") != "0"
#: True when this CPU runs the integer dot products: with AVX-512 VNNI, or with AVX2, whose
#: `vpmaddubsw` + `vpmaddwd` give the same int32 lanes 32 bytes at a time (`_dpbusd`)
AVAILABLE = VNNI or _host_has("avx2", "fma")
#: whether Q6_K's 2-bit fields are moved into place by GF2P8AFFINEQB (else by shifts);
#: ASSISTANT_GFNI=0 takes the shifts (tests of that path)
_GFNI = VNNI and _host_has("gfni") and os.environ.get("ASSISTANT_GFNI", "1") != "0"

_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V64I8, _V16I32 = ir.VectorType(_I8, 64), ir.VectorType(_I32, 16)
#: the 16 int32 lanes whose pairs (p, p + 1) vphaddd adds into its 8 lanes, in its order (per
#: 128-bit half: two pairs of the first source, two of the second)
_PAIRED = (0, 2, 8, 10, 4, 6, 12, 14)


#: how far ahead (in rows) a row's bytes are fetched while the rows before it multiply (16 measured
#: the same, 32 slower)
PREFETCH_ROWS = 8


def _weight_bytes(builder, row, high_at, n_planes: int, qv, hf: int):
    """Half-row hf's 64 weights of a step of a NIB/PLANES row (a byte pointer) as bytes, from the
    step's 64 bytes `qv`: its nibbles, then the bits above 4 (engine.quants `high_bit`) from the
    step's bytes of them at byte `high_at` of the row. One plane:
    per half-row a 64-bit mask, which LLVM turns into one masked byte move. Two (Q6_K): the step's
    32 bytes of 2-bit fields loaded twice over into 64, and each byte's field for this half-row
    moved to bits 4-5 by one GF2P8AFFINEQB (a bit matrix per 8 bytes: the first 32 bytes take bits
    0-1 or 4-5, the last 32 bits 2-3 or 6-7), or by shifts where the CPU lacks GFNI."""
    v = builder.and_(qv, ir.Constant(_V64I8, [0x0F] * 64)) if hf == 0 else builder.lshr(qv, ir.Constant(_V64I8, [4] * 64))
    if n_planes == 2:
        v32 = ir.VectorType(_I8, 32)
        c = builder.load(builder.bitcast(builder.gep(row, [high_at]), v32.as_pointer()), align=1)
        c = builder.shuffle_vector(c, ir.Constant(v32, None), ir.Constant(ir.VectorType(_I32, 64), list(range(32)) * 2))
        first, second = 4 * hf, 4 * hf + 2  # the field's low bit in bytes 0-31 and 32-63
        if _GFNI:
            affine = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V64I8, [_V64I8, _V64I8, _I8]), "llvm.x86.vgf2p8affineqb.512")
            # output bit 4 reads matrix byte 3, bit 5 byte 2 (GF2P8AFFINEQB: bit o = parity(A[7 - o] & x))
            matrix = [0] * 64
            for qw in range(8):
                low = first if qw < 4 else second
                matrix[8 * qw + 3], matrix[8 * qw + 2] = 1 << low, 1 << (low + 1)
            hi = builder.call(affine, [c, ir.Constant(_V64I8, matrix), ir.Constant(_I8, 0)])
        else:
            shift = [4 - first] * 32 + [4 - second] * 32
            up = builder.shl(c, ir.Constant(_V64I8, [max(t, 0) for t in shift]))
            hi = builder.and_(builder.lshr(up, ir.Constant(_V64I8, [max(-t, 0) for t in shift])),
                              ir.Constant(_V64I8, [0x30] * 64))
        return builder.or_(v, hi)
    for p in range(n_planes):
        at = builder.add(high_at, ir.Constant(_I64, 8 * (hf * n_planes + p)))
        bits = builder.load(builder.bitcast(builder.gep(row, [at]), _I64.as_pointer()), align=1)
        mask = builder.bitcast(bits, ir.VectorType(ir.IntType(1), 64))
        v = builder.or_(v, builder.select(mask, ir.Constant(_V64I8, [16 << p] * 64), ir.Constant(_V64I8, None)))
    return v


def _halves(builder, v, n: int = 32) -> list:
    """A vector cut into pieces of n elements (itself where it has n)."""
    if v.type.count == n:
        return [v]
    mask = lambda a: ir.Constant(ir.VectorType(_I32, n), list(range(a, a + n)))  # noqa: E731
    return [builder.shuffle_vector(v, ir.Constant(v.type, None), mask(a)) for a in range(0, v.type.count, n)]


def _joined(builder, parts: list):
    """Vectors of one type end to end (two or four)."""
    while len(parts) > 1:
        n = parts[0].type.count
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
        parts = [builder.shuffle_vector(parts[i], parts[i + 1], mask) for i in range(0, len(parts), 2)]
    return parts[0]


def _dpbusd(builder, acc, a, b):
    """acc + the sums of a's unsigned bytes times b's signed ones, four neighbours to an int32 lane
    (acc 16 or 8 lanes, a and b 64 or 32 bytes): `vpdpbusd`, or with AVX2 per 32 bytes `vpmaddubsw`
    (pairs to int16) and `vpmaddwd` by ones (pairs of those to int32), the same lanes. vpmaddubsw
    saturates a pair's sum at 2^15: exact for weight bytes up to 63 against activation bytes from
    -128 (Q8_K's) to 127, and up to 128 against Q8_0's +-127 (Q8_0's 255 go through `_sign_trick`)."""
    if VNNI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(acc.type, [acc.type, a.type, b.type]),
                                            f"llvm.x86.avx512.vpdpbusd.{32 * acc.type.count}")
        return builder.call(fn, [acc, a, b])
    return _dpbusd_steps(builder, acc, [(a, b)], 1)


def _dpbusd_steps(builder, acc, pairs: list, in_int16: int):
    """acc + `_dpbusd` of each (weight bytes, activation bytes) pair of a group's steps. With AVX2
    the vpmaddubsw sums of up to `in_int16` steps are added as int16 before one vpmaddwd: exact
    while in_int16 x w_max x 128 x 2 stays within int16 for weights of at most w_max against
    activation bytes of -128..127 (`_INT16_STEPS`), so the same lanes as step by step."""
    if VNNI:
        for w, x in pairs:
            acc = _dpbusd(builder, acc, w, x)
        return acc
    mod = builder.module
    v32, v16i16, v8i32 = ir.VectorType(_I8, 32), ir.VectorType(ir.IntType(16), 16), ir.VectorType(_I32, 8)
    maddubs = cgutils.get_or_insert_function(mod, ir.FunctionType(v16i16, [v32, v32]), "llvm.x86.avx2.pmadd.ub.sw")
    maddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd")
    ones = ir.Constant(v16i16, [1] * 16)
    for c in range(0, len(pairs), in_int16):
        chunk = [(_halves(builder, w), _halves(builder, x)) for w, x in pairs[c:c + in_int16]]
        lanes = []
        for h in range(len(chunk[0][0])):  # per 32 bytes
            pair_sums = None
            for wh, xh in chunk:
                p = builder.call(maddubs, [wh[h], xh[h]])
                pair_sums = p if pair_sums is None else builder.add(pair_sums, p)
            lanes.append(builder.call(maddwd, [pair_sums, ones]))
        acc = builder.add(acc, _joined(builder, lanes))
    return acc


def _sign_trick(builder, w, x):
    """(|w - 128|, x with the sign of w - 128) for weight bytes w stored +128 (Q8_0 on AVX2): their
    `_dpbusd` is sum((w - 128) x) with no pair's sum past vpmaddubsw's int16 (128 x 127 x 2)."""
    v32 = ir.VectorType(_I8, 32)
    sign = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32, [v32, v32]), "llvm.x86.avx2.psign.b")
    ws = builder.xor(w, ir.Constant(w.type, [0x80] * w.type.count))
    zero = ir.Constant(w.type, None)
    absolute = builder.select(builder.icmp_signed("<", ws, zero), builder.sub(zero, ws), ws)
    signed_x = [builder.call(sign, [xh, wh]) for xh, wh in zip(_halves(builder, x), _halves(builder, ws))]
    return absolute, _joined(builder, signed_x)


def _load64(builder, ptr, idx):
    return builder.load(builder.bitcast(builder.gep(ptr, [idx]), _V64I8.as_pointer()), align=1)


#: a kernel's type: void(q, q_stride, s, s_stride, r, xq, xq_stride, xd, xd_stride, t0, K, off, out),
#: the arrays as byte pointers and row strides, the sums written to out (float*)
_KERNEL_TYPE = ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I64, _I8.as_pointer(), _I64, _I64, _I8.as_pointer(),
                                               _I64, _I8.as_pointer(), _I64, _I64, _I64, _I64, _F32.as_pointer()])
#: (rows, tokens) of the kernels: pairs of rows by 8 and by 4 tokens (batches), one by one (decode)
_SHAPES = ((2, 8), (2, 4), (1, 1))


def _orders(layout: int) -> tuple:
    """The activation orders a layout's kernels are made for: every K they take is a multiple of
    64 (engine.matmul `int8_activation`), so never the elements' own (`engine.quants.int8_order`)."""
    return (INT8_UNIFORM, INT8_MIXED)


_LAYOUTS = (BYTE32, BYTE16, NIB, NIB5, NIB6, NIBK, NIB5K)
#: every kernel: (rows, tokens, layout, activation order)
_VARIANTS = tuple((r, t, layout, order) for r, t in _SHAPES for layout in _LAYOUTS for order in _orders(layout))


def _kernel_name(n_rows: int, n_tok: int, layout: int, order: int) -> str:
    return f"assistant_i8dot_{n_rows}x{n_tok}_l{layout}_o{order}"


def _variants_of(layout: int) -> tuple:
    """The kernels (`_VARIANTS`) of one layout: the contents of its library."""
    return tuple(v for v in _VARIANTS if v[2] == layout)


def _kernel(mod, n_rows: int, n_tok: int, layout: int, order: int):
    """Define in module `mod` the LLVM function (`_KERNEL_TYPE`) that computes the n_rows x n_tok
    sums of one rowdot with the activation stored in `order` (engine.quants `int8_order`,
    `int8_position`). One function per variant, not one body with a branch on K: the branches'
    other loops cost the stepwise loop ~7% (Qwen2.5-0.5B's 896-wide matrices for 8 tokens)."""
    fn = ir.Function(mod, _KERNEL_TYPE, _kernel_name(n_rows, n_tok, layout, order))
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    q_base, q_stride, s_base, s_stride, r, x_base, x_stride, d_base, d_stride, t0, k, off_val, out = fn.args
    # AVX2, activation in groups (not Q6_K's scales per 16): each pair of int32 lanes shares one
    # scale, so a group's 16 lanes are added in pairs (vphaddd) and scaled as 8 floats: half the
    # accumulators, conversions and multiplies per row and token (see the module's notes)
    narrow = not VNNI and layout not in _SUB16
    n_acc = 8 if narrow else 16
    v_acc = ir.VectorType(_F32, n_acc)
    reduce = cgutils.get_or_insert_function(mod, ir.FunctionType(_F32, [_F32, v_acc]),
                                            f"llvm.vector.reduce.fadd.v{n_acc}f32")
    prefetch = cgutils.get_or_insert_function(
        mod, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0i8")

    def rows_of(base, stride, first, n):
        """Byte pointers to rows first..first+n-1 of a 2-D array."""
        return [builder.gep(base, [builder.mul(builder.add(first, ir.Constant(_I64, j)), stride)]) for j in range(n)]

    q_rows = rows_of(q_base, q_stride, r, n_rows)
    ahead = builder.mul(q_stride, ir.Constant(_I64, PREFETCH_ROWS))
    s_rows = [builder.bitcast(p, _F32.as_pointer()) for p in rows_of(s_base, s_stride, r, n_rows)]
    x_rows = rows_of(x_base, x_stride, t0, n_tok)
    d_rows = [builder.bitcast(p, _F32.as_pointer()) for p in rows_of(d_base, d_stride, t0, n_tok)]
    half = builder.udiv(k, ir.Constant(_I64, 2))
    nibbles, n_planes, sub16 = layout in _NIBBLES, _PLANES.get(layout, 0), layout in _SUB16
    d_half = builder.udiv(k, ir.Constant(_I64, 64))  # nibbles: activation-block index of the high half
    s_half = builder.udiv(k, ir.Constant(_I64, 32)) if sub16 else d_half  # its weight-scale index

    def spread(v, n):
        """A vector of n floats spread over the 16 int32 lanes (each over 16/n neighbouring lanes), as
        the accumulators hold them (narrow: the first of each pair, in `_PAIRED` order)."""
        mask = [j * n // 16 for j in range(16)]
        mask = [mask[p] for p in _PAIRED] if narrow else mask
        return builder.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(ir.VectorType(_I32, n_acc), mask))

    def lanes(ptr, idx, n):
        """The n floats at ptr[idx] spread over 16 lanes (each over 16/n neighbouring lanes)."""
        vn = ir.VectorType(_F32, n)
        return spread(builder.load(builder.bitcast(builder.gep(ptr, [idx]), vn.as_pointer()), align=4), n)

    compact = layout in _COMPACT

    def compact_lanes(j, sc_at, x_off, n, size):
        """Row j's n weight scales from its byte sc_at on, spread as `lanes` does, from its
        compact scales (engine.quants `compact_byte`): each scale byte (signed for Q6_K) times its
        superblock's d, in one plain multiply, the float32 product the other layouts hold. A group
        of `size` = 256 weights in a MIXED order starts at a multiple of 128: where it starts
        half-way through a superblock (the second half of K = 768, say), its second half of scales
        takes the next d."""
        vb = ir.VectorType(_I8, n)
        b = builder.load(builder.bitcast(builder.gep(q_rows[j], [sc_at]), vb.as_pointer()),
                         align=1)
        vi = (builder.sext if _COMPACT[layout] else builder.zext)(b, ir.VectorType(_I32, n))
        d = builder.load(builder.gep(s_rows[j], [builder.udiv(x_off, ir.Constant(_I64, QK_K))]))
        dv = builder.insert_element(ir.Constant(ir.VectorType(_F32, n), None), d, ir.Constant(_I32, 0))
        which = [0] * n
        if size == QK_K and order == INT8_MIXED:
            last = builder.udiv(builder.add(x_off, ir.Constant(_I64, QK_K - 1)), ir.Constant(_I64, QK_K))
            dv = builder.insert_element(dv, builder.load(builder.gep(s_rows[j], [last])), ir.Constant(_I32, 1))
            which = [0] * (n // 2) + [1] * (n // 2)
        dv = builder.shuffle_vector(dv, ir.Constant(dv.type, None), ir.Constant(ir.VectorType(_I32, n), which))
        return spread(builder.fmul(builder.sitofp(vi, ir.VectorType(_F32, n)), dv), n)

    def load64(ptr, idx):
        return _load64(builder, ptr, idx)

    off8 = builder.trunc(off_val, _I8)
    offv = builder.shuffle_vector(builder.insert_element(ir.Constant(_V64I8, None), off8, ir.Constant(_I32, 0)),
                                  ir.Constant(_V64I8, None), ir.Constant(ir.VectorType(_I32, 64), [0] * 64))
    zero_i = ir.Constant(_V16I32, None)
    zero_acc = ir.Constant(ir.VectorType(_I32, n_acc), None)  # no offset: the lanes start from zero
    fast = ("fast",)

    def merge(a_vals, a_block, b_vals, b_block):
        """Where two branches join: each value from whichever branch ran."""
        out = []
        for a, b in zip(a_vals, b_vals):
            phi = builder.phi(a.type)
            phi.add_incoming(a, a_block)
            phi.add_incoming(b, b_block)
            out.append(phi)
        return out

    def tail(accs, signed):
        """A half of 64k + 32 elements (K = 576, say: SmolLM2's) ends with 32 of them in their own
        order: a NIB row's last 32 bytes (their low and high nibbles), or a BYTE32 row's last 32
        bytes of each half, one step of the two halves' 32 bytes side by side, into the
        accumulators as any step (each token's lanes 0-7 the low half's block, 8-15 the high's);
        the new accumulators. (Summed on their own, 8 lanes and a reduction per row and token, the
        two blocks cost about as much as the eight before them.)"""
        v32i8 = ir.VectorType(_I8, 32)
        byte = builder.sub(half, ir.Constant(_I64, 32))  # the low half's last 32 elements
        blk = builder.udiv(byte, ir.Constant(_I64, 32))
        blocks = (blk, builder.add(blk, d_half))

        def load32(ptr, at):
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), v32i8.as_pointer()), align=1)

        def both(ptr, at_lo, at_hi):
            return _joined(builder, [load32(ptr, at_lo), load32(ptr, at_hi)])

        def pair_lanes(ptr):
            """ptr's floats of the two blocks, spread as `lanes` does (each over 8 lanes)."""
            v = ir.Constant(ir.VectorType(_F32, 2), None)
            for h, b in enumerate(blocks):
                v = builder.insert_element(v, builder.load(builder.gep(ptr, [b])), ir.Constant(_I32, h))
            return spread(v, 2)

        new = list(accs)
        weights = []
        for j in range(n_rows):
            if nibbles:
                qv = load32(q_rows[j], byte)
                wv = _joined(builder, [builder.and_(qv, ir.Constant(v32i8, [0x0F] * 32)),
                                       builder.lshr(qv, ir.Constant(v32i8, [4] * 32))])
            else:
                wv = both(q_rows[j], byte, builder.add(byte, half))
            weights.append((wv, pair_lanes(s_rows[j])))
        for t in range(n_tok):
            xv = both(x_rows[t], byte, builder.add(byte, half))
            start = offset_start([xv]) if signed == OFFSET else zero_acc
            dl = pair_lanes(d_rows[t])
            for j in range(n_rows):
                wv, sl = weights[j]
                u = j * n_tok + t
                new[u] = accumulate(new[u], dot_lanes(start, [(wv, xv)], signed, 1), sl, dl)
        return new

    def paired(v):
        """16 int32 lanes as the accumulators hold them: narrow, each pair's sum (vphaddd of the
        halves, lanes in `_PAIRED` order); else as they are."""
        if not narrow:
            return v
        v8i32 = ir.VectorType(_I32, 8)
        hadd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8i32, [v8i32, v8i32]), "llvm.x86.avx2.phadd.d")
        return builder.call(hadd, _halves(builder, v, 8))

    def offset_start(xs_):
        """-off x the activation bytes of a step or group (`_dpbusd_steps`, on AVX2 off <= 32), in
        the accumulators' lanes: each row's lanes start from it (computed once for all the rows)."""
        return paired(builder.sub(zero_i, _dpbusd_steps(builder, zero_i, [(offv, xv) for xv in xs_], 4)))

    def dot_lanes(start, pairs, signed, in_int16):
        """start + the integer products of a step's or group's (weight bytes, activation bytes)
        pairs (`_dpbusd_steps`), through `_sign_trick` where the weights are Q8_0's bytes on AVX2
        (`signed` SIGN_TRICK), as int32 in the accumulators' lanes."""
        if signed == SIGN_TRICK:
            pairs, in_int16 = [_sign_trick(builder, w, x) for w, x in pairs], 1
        if not narrow:
            return _dpbusd_steps(builder, start, pairs, in_int16)
        dot = paired(_dpbusd_steps(builder, zero_i, pairs, in_int16))
        return dot if start is zero_acc else builder.add(dot, start)

    def accumulate(acc, dot, sl, dl):
        """acc + the int32 lanes `dot` as floats times their scales (weight's sl x activation's dl)."""
        sc = builder.fmul(sl, dl, flags=fast)
        return builder.fadd(acc, builder.fmul(builder.sitofp(dot, v_acc), sc, flags=fast), flags=fast)

    def fetch_ahead(j, at):
        """Row j's byte `at`, PREFETCH_ROWS rows on, on its way to the cache (see the module's notes)."""
        builder.call(prefetch, [builder.gep(q_rows[j], [builder.add(ahead, at)]),
                                ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])

    def step(i, accs, signed):
        """One 64-byte step of every row for every token: step i of each half of the row (the step
        a half of the MIXED order ends with); the new accumulators."""
        byte = builder.mul(i, ir.Constant(_I64, 64))
        blk = builder.mul(i, ir.Constant(_I64, 4 if sub16 else 2))
        d_blk = builder.mul(i, ir.Constant(_I64, 2))
        # (activation byte offset, weight-scale block, activation block) per half
        parts = ((byte, blk, d_blk), (builder.add(byte, half), builder.add(blk, s_half), builder.add(d_blk, d_half)))
        n_s = 4 if sub16 else 2
        packed = []  # per row: the step's 64 bytes of nibbles
        for j in range(n_rows):
            for x_off, _, _ in (parts[:1] if nibbles else parts):
                fetch_ahead(j, x_off)
            packed.append(load64(q_rows[j], byte) if nibbles else None)
        new = list(accs)
        # part by part (a half-row each where the layout has them), so that only one part's weight
        # vectors are live across the tokens; each sum still adds the low half first
        for p, (x_off, s_blk, d_blk) in enumerate(parts):
            weights = []  # per row: (int8 vector, weight-scale lanes)
            for j in range(n_rows):
                if nibbles:
                    wv = _weight_bytes(builder, q_rows[j], None, 0, packed[j], p)  # (planes: grouped_at)
                else:
                    wv = load64(q_rows[j], x_off)
                weights.append((wv, lanes(s_rows[j], s_blk, n_s)))
            for t in range(n_tok):
                xv = load64(x_rows[t], x_off)
                start = offset_start([xv]) if signed == OFFSET else zero_acc
                dl = lanes(d_rows[t], d_blk, 2)
                for j in range(n_rows):
                    wv, sl = weights[j]
                    u = j * n_tok + t
                    new[u] = accumulate(new[u], dot_lanes(start, [(wv, xv)], signed, 1), sl, dl)
        return new

    def transpose(vs):
        """G = len(vs) (4 or 2) steps' 64 bytes, read as 16 lanes of 4 bytes each in natural
        order, to the order `engine.quants.int8_position` stores a group of 64G activation bytes
        in: lane j of step s gets the natural lane Gj + s (two-source permutes: 8 for 4 steps,
        2 for 2)."""
        a = [builder.bitcast(v, _V16I32) for v in vs]
        mask = lambda m: ir.Constant(ir.VectorType(_I32, 16), m)  # noqa: E731
        if len(a) == 2:
            out = [builder.shuffle_vector(a[0], a[1], mask([2 * j + s for j in range(16)])) for s in range(2)]
            return [builder.bitcast(v, _V64I8) for v in out]
        lo = [builder.shuffle_vector(a[0 + h], a[1 + h], mask([4 * j + s for s in range(2) for j in range(8)]))
              for h in (0, 2)]
        hi = [builder.shuffle_vector(a[0 + h], a[1 + h], mask([4 * j + 2 + s for s in range(2) for j in range(8)]))
              for h in (0, 2)]
        first, second = list(range(8)) + list(range(16, 24)), list(range(8, 16)) + list(range(24, 32))
        out = [builder.shuffle_vector(lo[0], lo[1], mask(first)), builder.shuffle_vector(lo[0], lo[1], mask(second)),
               builder.shuffle_vector(hi[0], hi[1], mask(first)), builder.shuffle_vector(hi[0], hi[1], mask(second))]
        return [builder.bitcast(v, _V64I8) for v in out]

    def grouped_at(n_g):
        """The body for a group of n_g steps of an activation stored in groups (engine.quants
        `int8_position`)."""

        def group(first, accs, signed):
            """The n_g 64-byte steps from step `first` of each half of every row (64 n_g weights of
            each half-row) where the layout has halves or the order is MIXED, else of the row, for
            every token: each lane sums the integer products of 4 n_g weights of one scale block
            over the steps, turned to float and scaled once."""
            byte = builder.mul(first, ir.Constant(_I64, 64))
            split = nibbles or order == INT8_MIXED
            parts = [(byte, 0), (builder.add(byte, half), 1)] if split else [(byte, 0)]
            grouped_row = layout in _STORED_GROUPED
            # where the group's nibble steps, bytes of high bits and (grouped rows) scales are
            if grouped_row:  # engine.quants `step_at`: the group's bytes one after the other
                base = builder.mul(first, ir.Constant(_I64, _STEP_BYTES[layout]))
                steps = [builder.add(base, ir.Constant(_I64, 64 * s)) for s in range(n_g)]
                highs = [builder.add(base, ir.Constant(_I64, 64 * n_g + 16 * n_planes * s)) for s in range(n_g)]
            else:
                steps = [builder.add(byte, ir.Constant(_I64, 64 * s)) for s in range(n_g)]
            packed = []
            for j in range(n_rows):
                if grouped_row:  # every line of the group, PREFETCH_ROWS rows on
                    for line in range(-(-_STEP_BYTES[layout] * n_g // 64)):
                        fetch_ahead(j, builder.add(base, ir.Constant(_I64, 64 * line)))
                for s in range(n_g * (not grouped_row)):
                    fetch_ahead(j, steps[s])
                    if split and not nibbles:  # the other half's bytes are a stream of their own
                        fetch_ahead(j, builder.add(steps[s], half))
                if nibbles:  # planes are added to the natural steps' nibbles, then transposed
                    natural = [load64(q_rows[j], at) for at in steps]
                    packed.append(natural if grouped_row else transpose(natural))
            new = list(accs)
            per_scale = (16 if sub16 else 32) // (4 * n_g)  # lanes per weight scale
            for x_off, hf in parts:
                weights = []  # per row: (n_g int8 vectors in the grouped order, weight-scale lanes)
                for j in range(n_rows):
                    if n_planes:
                        wv = [_weight_bytes(builder, q_rows[j], highs[s], n_planes, packed[j][s], hf) for s in range(n_g)]
                        wv = wv if grouped_row else transpose(wv)
                    elif nibbles:
                        wv = [builder.and_(v, ir.Constant(_V64I8, [0x0F] * 64)) if hf == 0
                              else builder.lshr(v, ir.Constant(_V64I8, [4] * 64)) for v in packed[j]]
                    else:
                        wv = transpose([load64(q_rows[j], builder.add(x_off, ir.Constant(_I64, 64 * s)))
                                        for s in range(n_g)])
                    s_at = builder.udiv(x_off, ir.Constant(_I64, 16 if sub16 else 32))
                    if compact:  # the group's scale bytes of this half-row, after its nibbles and planes
                        per = scale_bytes.py_func(_STEP_BYTES[layout])
                        sc_at = builder.add(base, ir.Constant(_I64, (64 + 16 * n_planes + per * hf) * n_g))
                        sl = compact_lanes(j, sc_at, x_off, 16 // per_scale, 64 * n_g)
                    else:
                        sl = lanes(s_rows[j], s_at, 16 // per_scale)
                    weights.append((wv, sl))
                d_at = builder.udiv(x_off, ir.Constant(_I64, 32))
                for t in range(n_tok):
                    xs_ = [load64(x_rows[t], builder.add(x_off, ir.Constant(_I64, 64 * s))) for s in range(n_g)]
                    start = offset_start(xs_) if signed == OFFSET else zero_acc
                    dl = lanes(d_rows[t], d_at, 64 * n_g // 32)  # the group's activation scales
                    for j in range(n_rows):
                        wv, sl = weights[j]
                        u = j * n_tok + t
                        dot = dot_lanes(start, list(zip(wv, xs_)), signed, _INT16_STEPS[layout])
                        new[u] = accumulate(new[u], dot, sl, dl)
            return new

        return group

    def loop(count, body, signed):
        """for i < count: accs = body(i, accs, signed), from zero; the per-(row, token) vectors."""
        return vector_loop(builder, count, n_rows * n_tok, v_acc, lambda i, accs: body(i, accs, signed), "i8dot")

    def when(pred, body, accs):
        """accs = body(accs) if pred."""
        before = builder.block
        with builder.if_then(pred):
            new, inside = body(accs), builder.block
        return merge(accs, before, new, inside)

    def reduced(accs):
        return [builder.call(reduce, [ir.Constant(_F32, -0.0), acc], fastmath=("reassoc",)) for acc in accs]

    def row(signed):
        """The loop over the rows' groups of 4 steps (MIXED: each half's groups of 4 steps, then the
        group of 2, the step and the 32 elements that end it where it has them) and the
        per-(row, token) sums."""
        four, two = grouped_at(4), grouped_at(2)
        if order == INT8_UNIFORM:
            count = builder.udiv(k, ir.Constant(_I64, 512 if nibbles else 256))
            return reduced(loop(count, lambda g, a, sg: four(builder.mul(g, ir.Constant(_I64, 4)), a, sg), signed))
        n4 = builder.udiv(half, ir.Constant(_I64, 256))
        accs = loop(n4, lambda g, a, sg: four(builder.mul(g, ir.Constant(_I64, 4)), a, sg), signed)
        at = builder.mul(n4, ir.Constant(_I64, 4))
        left = builder.urem(half, ir.Constant(_I64, 256))
        has2 = builder.icmp_unsigned(">=", left, ir.Constant(_I64, 128))
        accs = when(has2, lambda a: two(at, a, signed), accs)
        if layout not in _SUPERBLOCKS:  # (K whole superblocks: no half ends with a single step)
            last = builder.select(has2, builder.add(at, ir.Constant(_I64, 2)), at)
            has1 = builder.icmp_unsigned(">=", builder.urem(left, ir.Constant(_I64, 128)), ir.Constant(_I64, 64))
            single = grouped_at(1) if layout in _STORED_GROUPED else step
            accs = when(has1, lambda a: single(last, a, signed), accs)
        if layout not in _GROUPED_ONLY:  # (K a multiple of 128 there)
            has_tail = builder.icmp_unsigned("!=", builder.urem(half, ir.Constant(_I64, 64)), ir.Constant(_I64, 0))
            accs = when(has_tail, lambda a: tail(a, signed), accs)
        return reduced(accs)

    def either(pred, if_true, if_false):
        """The sums of if_true() where pred holds, else of if_false()."""
        with builder.if_else(pred) as (yes, no):
            with yes:
                true_sums, true_end = if_true(), builder.block
            with no:
                false_sums, false_end = if_false(), builder.block
        return merge(true_sums, true_end, false_sums, false_end)

    def offset_is(value):
        return builder.icmp_signed("==", off_val, ir.Constant(_I64, value))

    def rows(signed):
        """`row` for all the rows at once, or (`_ROW_BY_ROW` on AVX2) for each row in turn, its
        sums in the same order: the same arithmetic per row and token either way."""
        nonlocal n_rows, q_rows, s_rows
        if VNNI or n_rows == 1 or layout not in _ROW_BY_ROW:
            return row(signed)
        every, sums = (n_rows, q_rows, s_rows), []
        for j in range(every[0]):
            n_rows, q_rows, s_rows = 1, [every[1][j]], [every[2][j]]
            sums += row(signed)
        n_rows, q_rows, s_rows = every
        return sums

    if layout in _OFFSET_KNOWN:  # its weights' offset is known
        sums = rows(OFFSET if _OFFSET_KNOWN[layout] else PLAIN)
    elif layout == BYTE32 and not VNNI:  # Q8_0's bytes (+128) would pass vpmaddubsw's int16
        sums = either(offset_is(0), lambda: rows(PLAIN),
                      lambda: either(offset_is(128), lambda: rows(SIGN_TRICK), lambda: rows(OFFSET)))
    else:
        sums = either(offset_is(0), lambda: rows(PLAIN), lambda: rows(OFFSET))
    for j, v in enumerate(sums):
        builder.store(v, builder.gep(out, [ir.Constant(_I64, j)]))
    builder.ret_void()
    return fn


def _codegen(n_rows: int, n_tok: int, layout: int):
    """IR for `rowdot`: q (rows, K or K/2) uint8, s (rows, K/sub) scales, r (the first of n_rows
    rows), xq (T, K) int8, xd (T, K/32), off (the weights' stored offset, an integer), t0 (the
    first of n_tok tokens), order (`engine.quants.int8_order` of K): a call of that order's
    `_kernel`, compiled once in the kernels' own library (`load_kernels`) and called by its symbol.
    Per 64-byte step (or group), each token's activation bytes are loaded (and their product with the
    offset taken) once for all the rows, and each row's bytes once for all the tokens. The loops are
    emitted twice, with and without the offset's product; `off` picks one."""

    def codegen(context, builder, sig, args):
        q_val, s_val, r, xq_val, xd_val, off_val, t0, order = args
        load_kernels((layout,))  # the symbols the calls name, before this caller's code is linked
        # and all of them before a caller is loaded from Numba's cache (parent functions inherit it)
        context.active_code_library._reload_init.add(load_kernels)
        mod = builder.module

        def kernel(order_: int):
            return cgutils.get_or_insert_function(mod, _KERNEL_TYPE, _kernel_name(n_rows, n_tok, layout, order_))

        def raw(ty, val):
            arr = context.make_array(ty)(context, builder, val)
            return builder.bitcast(arr.data, _I8.as_pointer()), cgutils.unpack_tuple(builder, arr.strides)[0], arr

        def i64(v):
            return builder.sext(v, _I64) if v.type.width < 64 else v

        (q, qs, _), (s, ss, _), (x, xs, xq), (d, ds, _) = (raw(sig.args[i], args[i]) for i in (0, 1, 3, 4))
        k = cgutils.unpack_tuple(builder, xq.shape)[1]
        n = n_rows * n_tok
        out = builder.bitcast(cgutils.alloca_once(builder, ir.ArrayType(_F32, n)), _F32.as_pointer())
        call_args = [q, qs, s, ss, i64(r), x, xs, d, ds, i64(t0), k, off_val, out]
        uniform = builder.icmp_signed("==", order, ir.Constant(_I64, INT8_UNIFORM))
        with builder.if_else(uniform) as (by_fours, other):
            with by_fours:
                builder.call(kernel(INT8_UNIFORM), call_args)
            with other:  # (K a multiple of 64: never in the elements' own order)
                builder.call(kernel(INT8_MIXED), call_args)
        return _result(context, builder, sig, out, n)

    return codegen


def _result(context, builder, sig, out, n: int):
    """The n sums a kernel wrote to `out`, as the intrinsic returns them."""
    sums = [builder.load(builder.gep(out, [ir.Constant(_I64, j)])) for j in range(n)]
    if n == 1:
        return sums[0]
    return context.make_tuple(builder, sig.return_type, sums)


def _portable(n_rows: int, n_tok: int, layout: int):
    """The same sums in plain Numba (slow: only so that callers compile without VNNI)."""

    compact = layout in _COMPACT

    @njit(cache=True)
    def dot(q, s, r, xq, xd, off, t0, order):
        k = xq.shape[1]
        half = k // 2
        sb = row_steps(q.shape[1], k)
        out = np.zeros(n_rows * n_tok, np.float32)
        for j in range(n_rows):
            qr, sr = q[r + j], s[r + j]
            for t in range(n_tok):
                acc = np.float32(0.0)
                for i in range(k):
                    if layout in _NIBBLES:  # element i in the low nibbles of the first half, i - K/2 in the high ones
                        w = stored_value(qr, i, half, sb)
                    else:
                        w = np.int64(qr[i])
                    if compact:  # the scale byte times the superblock's d
                        sc = sr[i // QK_K] * compact_scale(qr, i, k)
                    else:
                        sc = sr[i // 16 if layout in _SUB16 else i // 32]
                    acc += sc * xd[t0 + t, i // 32] * np.float32((w - off) * np.int64(xq[t0 + t, int8_position(i, k)]))
                out[j * n_tok + t] = acc
        return out

    return dot


#: per layout, the library of its kernels once compiled or loaded (kept: Numba drops a library's
#: code with it)
_libraries: dict = {}
_SOURCES = ("int8.py", "llvm_ir.py", "quants.py")  # what the kernels' IR is made from


@functools.cache
def _cache_key(codegen) -> str:
    """What the kernels' machine code depends on: their sources, the paths they take here (VNNI,
    GFNI), the CPU Numba compiles for, and the compilers' versions."""
    import hashlib

    import llvmlite
    import numba

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    cpu = getattr(codegen, "_get_host_cpu_name", llvm_binding.get_host_cpu_name)()
    h.update(repr((VNNI, _GFNI, cpu, getattr(codegen, "_tm_features", ""), numba.__version__,
                   llvmlite.__version__)).encode())
    return h.hexdigest()[:20]


def _cache_path(key: str, layout: int):
    """The file of a layout's kernels' object code, in the directory Numba caches this package's
    functions in (`jitcache.cache_dir`); None where none is writable."""
    directory = jitcache.cache_dir()
    return None if directory is None else os.path.join(directory, f"int8-kernels-l{layout}-{key}.nbk")


def _kernel_library(codegen, path, layout: int, compile_missing: bool):
    """The library of a layout's kernels (every shape and order): loaded from `path` where the file
    holds it, else compiled and written there (None instead where not `compile_missing`)."""
    import pickle

    if path and os.path.exists(path):
        with contextlib.suppress(Exception), open(path, "rb") as f:  # damaged or foreign: compile, replace
            return codegen.unserialize_library(pickle.load(f))
    if not compile_missing:
        return None
    library = codegen.create_library(f"assistant_int8_l{layout}")
    library.enable_object_caching()
    mod = library.create_ir_module(f"assistant_int8_l{layout}")
    for variant in _variants_of(layout):
        _kernel(mod, *variant)
    library.add_ir_module(mod)
    library.finalize()
    if path:
        name, kind, (object_code, _shared) = library.serialize_using_object_code()
        jitcache.write_atomically(path, pickle.dumps((name, kind, (object_code, _names_only(layout)))))
        for old in glob.glob(os.path.join(os.path.dirname(path), f"int8-kernels-l{layout}-*.nbk")):
            if old != path:  # an earlier version's or CPU's: never read again here
                with contextlib.suppress(OSError):
                    os.unlink(old)
    return library


def _names_only(layout: int) -> bytes:
    """Bitcode that defines the layout's kernel symbols with empty bodies, kept in place of their
    IR beside the machine code: Numba parses that module when it loads a library, only to learn
    which symbols it defines (the code comes from the object file, and nothing links the IR in,
    since callers name the symbols), and the kernels' whole IR took 33 ms per layout to parse,
    0.23 s of every start."""
    mod = ir.Module(f"assistant_int8_l{layout}_names")
    for variant in _variants_of(layout):
        fn = ir.Function(mod, _KERNEL_TYPE, _kernel_name(*variant))
        ir.IRBuilder(fn.append_basic_block()).ret_void()
    return llvm_binding.parse_assembly(str(mod)).as_bitcode()


def load_kernels(layouts: tuple = _LAYOUTS, compile_missing: bool = True) -> None:
    """Compile the integer kernels of `layouts` (every shape and order: `_kernel`) once into a
    library per layout, or load their machine code from the last time, and make their symbols
    known to the code that calls them. Each Numba function that reaches the intrinsics is compiled
    with what it calls, and when the kernels were in their IR every such function (`matmul_i8`,
    `matmul_i8_serial`, the experts', `layer_one_token`) optimised and compiled all of them again,
    ~30 s each here: a first run of SmolLM2 on this engine took 194 s, 95 s with this. Called
    before any code that calls a kernel is linked or loaded: by the intrinsic when it is compiled
    (its layout), as a reload hook of the functions that inline it when Numba loads them from its
    cache (all), and at import for the layouts whose machine code is on disk (`compile_missing`
    false: no compiling), for a function cached by a process that had loaded the one inlining the
    intrinsic from the cache (the hook is not inherited from there)."""
    if not AVAILABLE or all(layout in _libraries for layout in layouts):
        return
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:
        codegen = cpu_target.target_context.codegen()
        for layout in layouts:
            if layout in _libraries:
                continue
            library = _kernel_library(codegen, _cache_path(_cache_key(codegen), layout), layout, compile_missing)
            if library is None:
                continue
            for variant in _variants_of(layout):
                name = _kernel_name(*variant)
                llvm_binding.add_symbol(name, library.get_pointer_to_function(name))
            _libraries[layout] = library


def _make(n_rows: int, n_tok: int, layout: int):
    if not AVAILABLE:
        portable = _portable(n_rows, n_tok, layout)
        if n_rows * n_tok == 1:
            return njit(cache=True)(lambda q, s, r, xq, xd, off, t0, g: portable(q, s, r, xq, xd, off, t0, g)[0])
        return portable

    @intrinsic
    def rowdot(typingctx, q, s, r, xq, xd, off, t0, order):
        n = n_rows * n_tok
        ret = types.float32 if n == 1 else types.UniTuple(types.float32, n)
        return ret(q, s, r, xq, xd, types.int64, t0, types.int64), _codegen(n_rows, n_tok, layout)

    return rowdot


def _by_layout(n_rows: int, n_tok: int):
    """dot(layout, q, s, r, xq, xd, off, t0): rows r..r+n_rows-1 of (q, s) in `layout` against
    tokens t0..t0+n_tok-1 of (xq, xd); the n_rows * n_tok sums row by row (one float for 1x1).
    Numba fixes an intrinsic's code when it compiles the caller, so the layout picks one of seven."""
    b32, b16, nib, nib5, nib6, nibk, nib5k = (_make(n_rows, n_tok, lay)
                                              for lay in _LAYOUTS)

    @njit(cache=True, inline="always")
    def dot(layout, q, s, r, xq, xd, off, t0):
        g = int8_order(xq.shape[1])
        if layout == NIBK:
            return nibk(q, s, r, xq, xd, off, t0, g)
        if layout == NIB5K:
            return nib5k(q, s, r, xq, xd, off, t0, g)
        if layout == NIB:
            return nib(q, s, r, xq, xd, off, t0, g)
        if layout == NIB5:
            return nib5(q, s, r, xq, xd, off, t0, g)
        if layout == NIB6:
            return nib6(q, s, r, xq, xd, off, t0, g)
        if layout == BYTE16:
            return b16(q, s, r, xq, xd, off, t0, g)
        return b32(q, s, r, xq, xd, off, t0, g)

    return dot


dot2x8, dot2x4, dot1x1 = (_by_layout(r, t) for r, t in _SHAPES)


@intrinsic
def compact_mins(typingctx, out, qr, mr):
    """out[b] = mr[b // 8] * qr[len(qr) - len(out) + b]: a compact row's min per block of 32 (its
    -dmin per 256 times the block's min byte, which the row ends with; engine.matmul `_block_min`,
    the same single multiply), 8 blocks per vector. In a Numba loop the byte-to-float conversions
    stayed scalar: ~150 cycles for a row of 2048, more than the integer kernel's pass over the row
    for one token (105), where this takes a few. len(out) is a multiple of 8; all three contiguous."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (out, qr, mr)):
        return None

    def codegen(context, builder, sig, args):
        o, q, m = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args, args))
        nb = cgutils.unpack_tuple(builder, o.shape)[0]
        start = builder.sub(cgutils.unpack_tuple(builder, q.shape)[0], nb)
        qb = builder.gep(builder.bitcast(q.data, _I8.as_pointer()), [start])
        v8i8, v8f = ir.VectorType(_I8, 8), ir.VectorType(_F32, 8)

        def body(c, _accs):
            at = builder.mul(c, ir.Constant(_I64, 8))
            b = builder.load(builder.bitcast(builder.gep(qb, [at]), v8i8.as_pointer()), align=1)
            f = builder.uitofp(builder.zext(b, ir.VectorType(_I32, 8)), v8f)
            d = builder.load(builder.gep(builder.bitcast(m.data, _F32.as_pointer()), [c]))
            dv = builder.shuffle_vector(builder.insert_element(ir.Constant(v8f, None), d, ir.Constant(_I32, 0)),
                                        ir.Constant(v8f, None), ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
            out_at = builder.gep(builder.bitcast(o.data, _F32.as_pointer()), [at])
            builder.store(builder.fmul(dv, f), builder.bitcast(out_at, v8f.as_pointer()), align=4)
            return []

        vector_loop(builder, builder.udiv(nb, ir.Constant(_I64, 8)), 0, v8f, body, "mins")
        return context.get_dummy_value()

    return types.void(out, qr, mr), codegen


load_kernels(compile_missing=False)
