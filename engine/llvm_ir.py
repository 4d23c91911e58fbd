"""LLVM IR pieces that the engine's hand-written intrinsics (engine.int8, engine.kernels) share."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I64 = ir.IntType(64)


@intrinsic
def float_of_bits(typingctx, bits):  # noqa: ANN001, ANN202 - a Numba intrinsic
    """The float32 whose bit pattern is the int32 `bits`."""
    return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@intrinsic
def bits_of_float(typingctx, x):  # noqa: ANN001, ANN202 - a Numba intrinsic
    """The int32 bit pattern of the float32 x."""
    return types.int32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


def vector_loop(builder: ir.IRBuilder, count: ir.Value, n: int, vtype: ir.Type, body, name: str) -> list:
    """Emit `for i < count: accs = body(i, accs)` with n accumulators of `vtype` starting at zero
    (i and count int64); the builder is left after the loop, and the accumulators' final values
    (the loop's phis) are returned."""
    entry = builder.block
    head = builder.append_basic_block(f"{name}.loop")
    inner = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), entry)
    accs = []
    for _ in range(n):
        acc = builder.phi(vtype)
        acc.add_incoming(ir.Constant(vtype, None), entry)
        accs.append(acc)
    builder.cbranch(builder.icmp_unsigned("<", i, count), inner, done)
    builder.position_at_end(inner)
    new = body(i, accs)
    i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.block)
    for acc, value in zip(accs, new):
        acc.add_incoming(value, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return accs
