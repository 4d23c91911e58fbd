"""Integer dot products of quantized weight rows with int8 activations, as llama.cpp computes them.

llama.cpp quantizes the activation to int8 blocks (Q8_0, Q8_1, Q8_K) and multiplies it with the
weight's small integers exactly, one block at a time, before applying the two scales in float.
Numba widens small-integer arithmetic to 64 bits, so a plain loop cannot do that at speed; on a
CPU with AVX-512 VNNI one `vpdpbusd` multiplies 64 unsigned weight bytes by 64 signed activation
bytes and sums them in groups of four into 16 int32 lanes. `rowdot(T, layout)` builds a Numba
intrinsic that walks one weight row in 64-byte steps with that instruction and, per step, turns
the int32 lanes to float and multiplies each by its block's scale product (weight scale ×
activation scale) into 16 float32 accumulators per token, reduced once at the end of the row.
The row is read once for T tokens, so a batch of tokens (prefill, several sequences decoded
together, the tokens of one expert) costs little more than one.

Layouts (`engine.quants` packed families): `BYTE32` one byte per weight and a scale per 32
(Q8_0, Q5_0, Q5_1, Q5_K), `BYTE16` the same with a scale per 16 (Q6_K), `NIB` two 4-bit weights
per byte in half-rows (Q4_0, Q4_1, Q4_K). The intrinsic computes sum_b s[b] * d[b] * sum(q * xq)
with the stored (offset) weights; the offset and the min terms go through the activation's
block sums, as in the float kernels. Without VNNI (`AVAILABLE` false) the engine keeps its
float32 kernels and the intrinsic is never called; a portable Numba loop stands in for it so
that code referring to it still compiles.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

BYTE32, BYTE16, NIB = 0, 1, 2


def _host_has_vnni() -> bool:
    try:
        f = llvm_binding.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite cannot say: take the float path
        return False
    return all(f.get(name, False) for name in ("avx512f", "avx512bw", "avx512vnni"))


#: True when this CPU runs the integer dot products (AVX-512 VNNI)
AVAILABLE = _host_has_vnni()

_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V64I8, _V16I32, _V16F32 = ir.VectorType(_I8, 64), ir.VectorType(_I32, 16), ir.VectorType(_F32, 16)


def _codegen(n_tok: int, layout: int):
    """IR for `rowdot`: q (1-D row), s (1-D row scales), xq (T, K) int8, xd (T, K/32), t0."""

    def codegen(context, builder, sig, args):
        q_val, s_val, xq_val, xd_val, t0 = args
        q_ty, s_ty, xq_ty, xd_ty = sig.args[:4]
        mod = builder.module
        dpbusd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I32, [_V16I32, _V64I8, _V64I8]), "llvm.x86.avx512.vpdpbusd.512")
        reduce = cgutils.get_or_insert_function(mod, ir.FunctionType(_F32, [_F32, _V16F32]),
                                                "llvm.vector.reduce.fadd.v16f32")
        qp = builder.bitcast(context.make_array(q_ty)(context, builder, q_val).data, _I8.as_pointer())
        sp = builder.bitcast(context.make_array(s_ty)(context, builder, s_val).data, _F32.as_pointer())
        xq = context.make_array(xq_ty)(context, builder, xq_val)
        xd = context.make_array(xd_ty)(context, builder, xd_val)
        k = cgutils.unpack_tuple(builder, xq.shape)[1]
        x_stride = cgutils.unpack_tuple(builder, xq.strides)[0]
        d_stride = cgutils.unpack_tuple(builder, xd.strides)[0]
        x_base = builder.bitcast(xq.data, _I8.as_pointer())
        d_base = builder.bitcast(xd.data, _I8.as_pointer())
        t0 = builder.sext(t0, _I64) if t0.type.width < 64 else t0
        x_rows, d_rows = [], []
        for t in range(n_tok):
            row = builder.add(t0, ir.Constant(_I64, t))
            x_rows.append(builder.gep(x_base, [builder.mul(row, x_stride)]))
            d_rows.append(builder.bitcast(builder.gep(d_base, [builder.mul(row, d_stride)]), _F32.as_pointer()))
        half = builder.udiv(k, ir.Constant(_I64, 2))
        n_steps = builder.udiv(k, ir.Constant(_I64, 128 if layout == NIB else 64))
        s_half = builder.udiv(k, ir.Constant(_I64, 64))  # NIB: scale/activation-block index of the high half

        def lane_scales(s_ptr, s_idx, d_ptr, d_idx):
            """<16 x float>: the scale product of each int32 lane's block for one 64-byte step."""
            if layout == BYTE16:  # four weight blocks of 16, two activation blocks of 32
                v4, v2 = ir.VectorType(_F32, 4), ir.VectorType(_F32, 2)
                sv = builder.load(builder.bitcast(builder.gep(s_ptr, [s_idx]), v4.as_pointer()), align=4)
                dv = builder.load(builder.bitcast(builder.gep(d_ptr, [d_idx]), v2.as_pointer()), align=4)
                dv = builder.shuffle_vector(dv, ir.Constant(v2, None), ir.Constant(ir.VectorType(_I32, 4), [0, 0, 1, 1]))
                sc = builder.fmul(sv, dv, flags=("fast",))
                mask = [j // 4 for j in range(16)]
                return builder.shuffle_vector(sc, ir.Constant(v4, None), ir.Constant(ir.VectorType(_I32, 16), mask))
            v2 = ir.VectorType(_F32, 2)
            sv = builder.load(builder.bitcast(builder.gep(s_ptr, [s_idx]), v2.as_pointer()), align=4)
            dv = builder.load(builder.bitcast(builder.gep(d_ptr, [d_idx]), v2.as_pointer()), align=4)
            sc = builder.fmul(sv, dv, flags=("fast",))
            mask = [j // 8 for j in range(16)]
            return builder.shuffle_vector(sc, ir.Constant(v2, None), ir.Constant(ir.VectorType(_I32, 16), mask))

        def load64(ptr, idx):
            return builder.load(builder.bitcast(builder.gep(ptr, [idx]), _V64I8.as_pointer()), align=1)

        def nib_tail(sums):
            """A half-row of 64k + 32 bytes (K = 576, say) ends with one 32-byte step, 8 lanes wide."""
            v32i8, v8i32, v8f32 = ir.VectorType(_I8, 32), ir.VectorType(_I32, 8), ir.VectorType(_F32, 8)
            dpbusd8 = cgutils.get_or_insert_function(
                mod, ir.FunctionType(v8i32, [v8i32, v32i8, v32i8]), "llvm.x86.avx512.vpdpbusd.256")
            reduce8 = cgutils.get_or_insert_function(mod, ir.FunctionType(_F32, [_F32, v8f32]),
                                                     "llvm.vector.reduce.fadd.v8f32")
            has_tail = builder.icmp_unsigned("!=", builder.urem(half, ir.Constant(_I64, 64)), ir.Constant(_I64, 0))
            before = builder.block
            with builder.if_then(has_tail):
                byte = builder.mul(n_steps, ir.Constant(_I64, 64))
                qv = builder.load(builder.bitcast(builder.gep(qp, [byte]), v32i8.as_pointer()), align=1)
                parts = (builder.and_(qv, ir.Constant(v32i8, [0x0F] * 32)), builder.lshr(qv, ir.Constant(v32i8, [4] * 32)))
                blocks = (builder.mul(n_steps, ir.Constant(_I64, 2)),)
                blocks += (builder.add(blocks[0], s_half),)
                offsets = (byte, builder.add(byte, half))
                tails = []
                for t in range(n_tok):
                    acc = ir.Constant(v8f32, None)
                    for part, blk, off in zip(parts, blocks, offsets):
                        xv = builder.load(builder.bitcast(builder.gep(x_rows[t], [off]), v32i8.as_pointer()), align=1)
                        dot = builder.call(dpbusd8, [ir.Constant(v8i32, None), part, xv])
                        sc = builder.fmul(builder.load(builder.gep(sp, [blk])), builder.load(builder.gep(d_rows[t], [blk])),
                                          flags=("fast",))
                        scv = builder.insert_element(ir.Constant(v8f32, None), sc, ir.Constant(_I32, 0))
                        scv = builder.shuffle_vector(scv, ir.Constant(v8f32, None), ir.Constant(v8i32, [0] * 8))
                        acc = builder.fadd(acc, builder.fmul(builder.sitofp(dot, v8f32), scv, flags=("fast",)),
                                           flags=("fast",))
                    tails.append(builder.fadd(sums[t], builder.call(reduce8, [ir.Constant(_F32, -0.0), acc],
                                                                    fastmath=("reassoc",))))
                inside = builder.block
            out = []
            for t in range(n_tok):
                phi = builder.phi(_F32)
                phi.add_incoming(sums[t], before)
                phi.add_incoming(tails[t], inside)
                out.append(phi)
            return out

        zero_i, zero_f = ir.Constant(_V16I32, None), ir.Constant(_V16F32, None)
        entry = builder.block
        loop = builder.append_basic_block("i8dot.loop")
        body = builder.append_basic_block("i8dot.body")
        done = builder.append_basic_block("i8dot.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        i = builder.phi(_I64)
        i.add_incoming(ir.Constant(_I64, 0), entry)
        accs = []
        for _ in range(n_tok):
            acc = builder.phi(_V16F32)
            acc.add_incoming(zero_f, entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_unsigned("<", i, n_steps), body, done)
        builder.position_at_end(body)
        byte = builder.mul(i, ir.Constant(_I64, 64))
        qv = load64(qp, byte)
        if layout == NIB:
            lo = builder.and_(qv, ir.Constant(_V64I8, [0x0F] * 64))
            hi = builder.lshr(qv, ir.Constant(_V64I8, [4] * 64))
            blk = builder.mul(i, ir.Constant(_I64, 2))
            blk_hi = builder.add(blk, s_half)
            s_lo = [lane_scales(sp, blk, d_rows[t], blk) for t in range(n_tok)]
            s_hi = [lane_scales(sp, blk_hi, d_rows[t], blk_hi) for t in range(n_tok)]
        else:
            blk = builder.mul(i, ir.Constant(_I64, 4 if layout == BYTE16 else 2))
            blk_d = builder.mul(i, ir.Constant(_I64, 2))
            s_lo = [lane_scales(sp, blk, d_rows[t], blk_d) for t in range(n_tok)]
        new = []
        for t in range(n_tok):
            dot = builder.call(dpbusd, [zero_i, lo if layout == NIB else qv, load64(x_rows[t], byte)])
            acc = builder.fadd(accs[t], builder.fmul(builder.sitofp(dot, _V16F32), s_lo[t], flags=("fast",)),
                               flags=("fast",))
            if layout == NIB:
                dot = builder.call(dpbusd, [zero_i, hi, load64(x_rows[t], builder.add(byte, half))])
                acc = builder.fadd(acc, builder.fmul(builder.sitofp(dot, _V16F32), s_hi[t], flags=("fast",)),
                                   flags=("fast",))
            new.append(acc)
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.block)
        for acc, value in zip(accs, new):
            acc.add_incoming(value, builder.block)
        builder.branch(loop)
        builder.position_at_end(done)
        sums = [builder.call(reduce, [ir.Constant(_F32, -0.0), acc], fastmath=("reassoc",)) for acc in accs]
        if layout == NIB:
            sums = nib_tail(sums)
        if n_tok == 1:
            return sums[0]
        return context.make_tuple(builder, sig.return_type, sums)

    return codegen


def _portable(n_tok: int, layout: int):
    """The same sums in plain Numba (slow: only so that callers compile without VNNI)."""

    @njit(cache=True)
    def dot(q, s, xq, xd, t0):
        k = xq.shape[1]
        out = np.zeros(n_tok, np.float32)
        for t in range(n_tok):
            acc = np.float32(0.0)
            for i in range(k):
                if layout == NIB:  # element i in the low nibbles of the first half, i - K/2 in the high ones
                    half = k // 2
                    w = np.int64(q[i] & 15) if i < half else np.int64(q[i - half] >> 4)
                    sb = i // 32
                elif layout == BYTE16:
                    w, sb = np.int64(q[i]), i // 16
                else:
                    w, sb = np.int64(q[i]), i // 32
                acc += s[sb] * xd[t0 + t, i // 32] * np.float32(w * np.int64(xq[t0 + t, i]))
            out[t] = acc
        return out

    return dot


def _make(n_tok: int, layout: int):
    if not AVAILABLE:
        portable = _portable(n_tok, layout)
        if n_tok == 1:
            return njit(cache=True)(lambda q, s, xq, xd, t0: portable(q, s, xq, xd, t0)[0])
        return portable

    @intrinsic
    def rowdot(typingctx, q, s, xq, xd, t0):
        ret = types.float32 if n_tok == 1 else types.UniTuple(types.float32, n_tok)
        return ret(q, s, xq, xd, t0), _codegen(n_tok, layout)

    return rowdot


# rowdot{T}_{layout}(q_row, s_row, xq, xd, t0): tokens t0..t0+T-1 of xq/xd against one weight row
dot1_byte32, dot4_byte32, dot8_byte32 = (_make(n, BYTE32) for n in (1, 4, 8))
dot1_byte16, dot4_byte16, dot8_byte16 = (_make(n, BYTE16) for n in (1, 4, 8))
dot1_nib, dot4_nib, dot8_nib = (_make(n, NIB) for n in (1, 4, 8))
