"""Quant formats of the native engine: bit-exact dequantisation, repacked matmuls, activation quantisation."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from engine import quants as Q
from engine import int8 as I8
from engine.matmul import int8_weight, matmul_int8, matmul_packed, matvec_packed

TYPES = sorted(Q.BLOCKS, key=lambda t: T(t).name)
_GGUF_QUANTIZES = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16, Q.BF16}


def random_tensor(qtype: int, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid raw bytes (rows, bytes per row): gguf-py's quantizer where it has one, else random
    bytes with small finite fp16 scales (the K-quants)."""
    rng = np.random.default_rng(seed)
    if qtype == Q.F32:
        return rng.standard_normal((rows, k)).astype(np.float32).view(np.uint8)
    if qtype in _GGUF_QUANTIZES:
        return gguf.quants.quantize(rng.standard_normal((rows, k)).astype(np.float32), T(qtype))
    block, size = Q.BLOCKS[qtype]
    raw = rng.integers(0, 256, (rows * k // block, size), dtype=np.uint8)
    scale = (rng.random((raw.shape[0], 1)) * 0.01 + 1e-4).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        raw[:, 208:210] = scale
    else:
        raw[:, 0:2] = scale
        raw[:, 2:4] = (rng.random((raw.shape[0], 1)) * 0.01).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: T(t).name)
def test_dequantize_is_bit_exact_with_gguf(qtype: int) -> None:
    """Every supported type dequantizes to exactly the floats gguf-py's reference produces."""
    raw = random_tensor(qtype, 16, 512)
    want = gguf.quants.dequantize(raw, T(qtype))
    got = Q.dequantize(raw, qtype)
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_dequantize_reshapes_and_rejects_unknown_types() -> None:
    """`dequantize` returns the asked shape and refuses types outside the supported table."""
    raw = random_tensor(Q.Q8_0, 4, 64)
    assert Q.dequantize(raw, Q.Q8_0, (2, 2, 64)).shape == (2, 2, 64)
    with pytest.raises(ValueError, match="GGML type 10"):
        Q.dequantize(raw, int(T.Q2_K))


def _reference_product(raw: np.ndarray, qtype: int, xh: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """float64 W @ xh, with the min term taken through the activation's block sums as ggml does."""
    rows = raw.shape[0]
    w = Q.dequantize(raw, qtype).reshape(rows, -1).astype(np.float64)
    if qtype not in (Q.Q4_1, Q.Q5_1):
        return xh.astype(np.float64) @ w.T
    # Q4_1/Q5_1 dot the mins with q8_1's fp16 block sums: w = d*q + m  ->  (w - m) . x + m . s
    mins = gguf.quants.dequantize(raw.reshape(-1, Q.BLOCKS[qtype][1])[:, :4].copy(), T.F16)[:, 1]
    m = mins.reshape(rows, -1).astype(np.float64)
    w_no_m = w - np.repeat(m, 32, axis=1)
    return xh.astype(np.float64) @ w_no_m.T + xs.astype(np.float64) @ m.T


_K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
_FLOAT_CASES = [(t, False) for t in TYPES] + [(t, True) for t in sorted(Q.PLANES_OF)]


def _layout_id(qtype: int, planes: bool, compact: bool) -> str:
    return T(qtype).name + ("-planes" if planes else "") + ("-compact" if compact else "")


def _pack_as(raw: np.ndarray, qtype: int, k: int, planes: bool, compact: bool) -> Q.Packed:
    """`Q.pack` in the layout a case names; the K-quants' planes always have compact scales."""
    w = Q.pack(raw, qtype, k, planes=planes, compact=compact)
    assert (w.kind == Q.KIND_PLANES) == planes
    assert w.compact == (qtype in _K_QUANTS and (compact or planes))
    return w


@pytest.mark.parametrize(("qtype", "planes", "compact"), [(t, p, False) for t, p in _FLOAT_CASES] + [(Q.Q4_K, False, True)],
                         ids=[_layout_id(t, p, False) for t, p in _FLOAT_CASES] + [_layout_id(Q.Q4_K, False, True)])
def test_matvec_and_matmul_match_the_dequantized_product(qtype: int, planes: bool, compact: bool) -> None:
    """The packed kernels compute W x to float32 rounding of the float64 product of the dequantized
    weights, in each layout (the 5- and 6-bit types also as nibbles and bit planes, the K-quants
    also with compact scales)."""
    rows, k, n_tok = 48, 512, 5
    raw = random_tensor(qtype, rows, k, seed=1)
    w = _pack_as(raw, qtype, k, planes, compact)
    x = np.random.default_rng(2).standard_normal((n_tok, k)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((n_tok, k // 32), np.float32)
    Q.quantize_activation(w.act, x, xh, xs)
    want = _reference_product(raw, qtype, xh, xs)
    scale = np.abs(xh).astype(np.float64) @ np.abs(Q.dequantize(raw, qtype).reshape(rows, k)).T.astype(np.float64)
    one = np.empty(rows, np.float32)
    matvec_packed(one, w, xh[0], xs[0])
    many = np.empty((n_tok, rows), np.float32)
    matmul_packed(many, w, xh, xs)
    assert np.max(np.abs(one - want[0]) / scale[0]) < 1e-6
    assert np.max(np.abs(many - want) / scale) < 1e-6


# 576: 4-bit half-rows end in a 32-byte step (the activation in its own order); 512, 1024: each half in
# groups of 4 steps; 768: 4 then 2; 896: 4, 2, then a step; 640: 4 then a step
_INT8_CASES = [(t, k, False) for t in TYPES for k in (512, 576, 768, 896, 1024)
               if Q._KIND_OF[t] != Q.KIND_F32 and Q.packable(t, k) is None]
_INT8_CASES += [(t, k, True) for t in sorted(Q.PLANES_OF) for k in (640, 768, 896, 1024) if Q.packable(t, k) is None]
_INT8_CASES = [(t, k, p, False) for t, k, p in _INT8_CASES] + [(Q.Q4_K, k, False, True) for k in (512, 768, 1024)]


def test_int8_groups_give_each_lane_the_elements_of_one_block() -> None:
    """Where the activation's int8 form is stored in groups (K a multiple of 64, every K the
    integer kernels take), the positions are a permutation; each half of K is stored from its start
    as groups of 4 64-byte steps, then one of 2 where 128 or more are left, then its last 64 and 32
    in their own order; and the 4-byte lane j of a group of G steps holds its elements
    4Gj..4Gj+4G-1 (within one scale block of 16 or 32). Elsewhere the order is the elements' own."""
    def groups(half: int) -> list[tuple[int, int]]:  # (first element, steps; 0: 32 in their own order)
        out, e = [], 0
        while half - e >= 256:
            out, e = out + [(e, 4)], e + 256
        if half - e >= 128:
            out, e = out + [(e, 2)], e + 128
        if half - e >= 64:
            out, e = out + [(e, 1)], e + 64
        return out + ([(e, 0)] if half - e else [])

    assert groups(448) == [(0, 4), (256, 2), (384, 1)] and groups(288) == [(0, 4), (256, 0)]
    assert Q.int8_order(576) == Q.INT8_MIXED and Q.int8_order(608) == Q.INT8_NATURAL
    for k in (1024, 768, 896, 640, 4864, 384, 576, 320, 608):
        where = np.array([Q.int8_position(i, k) for i in range(k)])
        assert sorted(where) == list(range(k))
        if k % 64:
            assert list(where) == list(range(k))
            continue
        for h in (0, k // 2):
            for first, n_g in groups(k // 2):
                start = h + first
                if n_g == 0:
                    assert list(where[start:start + 32]) == list(range(start, start + 32))
                    continue
                for j in range(16):
                    held = sorted(i for i in range(start, start + 64 * n_g) if where[i] - start in
                                  [64 * s + 4 * j + b for s in range(n_g) for b in range(4)])
                    assert held == list(range(start + 4 * n_g * j, start + 4 * n_g * (j + 1)))


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
@pytest.mark.parametrize(("qtype", "k", "planes", "compact"), _INT8_CASES,
                         ids=[f"{_layout_id(t, p, c)}-k{k}" for t, k, p, c in _INT8_CASES])
def test_integer_dot_products_match_the_dequantized_product(qtype: int, k: int, planes: bool, compact: bool) -> None:
    """The int8 kernels (engine.int8) compute W x for any number of tokens (groups of 8, 4 and
    single ones) to float32 rounding of the float64 product, in each layout, and a token's result
    does not depend on the tokens beside it."""
    rows, n_tok = 47, 21  # odd: a row left after the pairs; tokens in groups of 8, 8 and 8 (from token 13)
    raw = random_tensor(qtype, rows, k, seed=1)
    w = _pack_as(raw, qtype, k, planes, compact)
    assert int8_weight(w)
    x = np.random.default_rng(2).standard_normal((n_tok, k)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((n_tok, k // 32), np.float32)
    xq, xd = np.empty((n_tok, k), np.int8), np.empty((n_tok, k // 32), np.float32)
    Q.quantize_activation8(w.act, x, xh, xs, xq, xd)
    want = _reference_product(raw, qtype, xh, xs)
    scale = np.abs(xh).astype(np.float64) @ np.abs(Q.dequantize(raw, qtype).reshape(rows, k)).T.astype(np.float64)
    many = np.empty((n_tok, rows), np.float32)
    matmul_int8(many, w, xq, xd, xs)
    assert np.max(np.abs(many - want) / scale) < 1e-6
    for t in (0, 9, 17, 20):  # in a group of 8, in the last group (overlapping the one before), alone
        one = np.empty((1, rows), np.float32)
        matmul_int8(one, w, xq[t:t + 1], xd[t:t + 1], xs[t:t + 1])
        assert np.array_equal(one[0], many[t])
    for n in (6, 13):  # groups of 4 that overlap; a group of 8 and one of 8 that overlaps it
        some = np.empty((n, rows), np.float32)
        matmul_int8(some, w, xq[:n], xd[:n], xs[:n])
        assert np.array_equal(some, many[:n])


# (type, K, its integer kernels' layout): the rows stored by groups, PLANES and Q4_K's compact NIB
_GROUPED_ROWS = [(Q.Q6_K, 768, I8.NIB6), (Q.Q6_K, 1024, I8.NIB6), (Q.Q5_0, 896, I8.NIB5), (Q.Q5_1, 640, I8.NIB5),
                 (Q.Q5_K, 768, I8.NIB5K), (Q.Q4_K, 768, I8.NIBK), (Q.Q4_K, 1024, I8.NIBK)]


@pytest.mark.parametrize(("qtype", "k", "layout"), _GROUPED_ROWS, ids=[f"{T(t).name}-k{k}" for t, k, _ in _GROUPED_ROWS])
def test_rows_stored_by_groups_are_their_groups_one_after_the_other(qtype: int, k: int, layout: int) -> None:
    """A PLANES row, or a Q4_K row with compact scales, holds every nibble, high bit and scale (and
    min) byte once, and each group of steps of the activation's int8 form (4 steps, then one of 2
    where 128 elements are left, then a single step) has all of its bytes, both half-rows', in one
    stretch of the row, the groups in order, then the mins: the kernels read a row from its first
    byte to its last. The row's width tells its form, and the integer kernels' layout reads the
    same form."""
    half = k // 2
    w = Q.pack(random_tensor(qtype, 1, k, seed=4), qtype, k, planes=qtype in Q.PLANES_OF, compact=True)
    sb = Q.row_steps(w.q.shape[1], k)
    assert sb == I8._STEP_BYTES[layout] and Q.planes_of(sb) == Q.PLANES_OF.get(qtype, 0)
    owner = np.full(w.q.shape[1] * 8, -1)  # per bit of the row: the first step of its element's group
    after = k  # the mins, after the groups
    for i in range(k):
        group = Q.step_group((i % half) >> 6, half)[0]
        bits = [8 * Q.nibble_byte(i % half, half, sb) + 4 * (i >= half) + b for b in range(4)]
        bits += [8 * byte + bit for byte, bit in (Q.high_bit(i, half, sb, p) for p in range(Q.planes_of(sb)))]
        assert (owner[bits] == -1).all(), i
        owner[bits] = group
        if w.compact and i % (64 // Q.scale_bytes(sb)) == 0:
            scale = [8 * Q.compact_byte(i, k, sb) + b for b in range(8)]
            assert (owner[scale] == -1).all(), i
            owner[scale] = group
            if w.m.shape[0] and i % 32 == 0:  # its min, at the row's end
                owner[[8 * (w.q.shape[1] - k // 32 + i // 32) + b for b in range(8)]] = after
    assert (owner >= 0).all()
    firsts = owner[::8]
    assert (np.diff(firsts) >= 0).all()  # the groups in order, each in one stretch
    for first in np.unique(firsts[firsts < after]):
        assert np.flatnonzero(firsts == first)[0] == Q.step_at(first, sb)


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
def test_q6k_fields_without_gfni_give_the_same_products(tmp_path: Path) -> None:
    """Where the CPU lacks GFNI, the integer kernels move Q6_K's 2-bit fields into place with
    shifts instead of GF2P8AFFINEQB: the same weight bytes, so the same sums. Each way is compiled
    in a process of its own (ASSISTANT_GFNI picks it when the module loads; the kernels' file in
    Numba's cache is keyed by it, so the two share the rest of that cache), for one row and token
    at a time and for a pair of rows and four tokens, K = 768 (groups of 4 and 2 steps) and 1024."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
from numba import njit
sys.path.insert(0, {str(Path(__file__).parent)!r})
from engine import int8 as I8, quants as Q
from test_quants import random_tensor
one, pair = I8._make(1, 1, I8.NIB6), I8._make(2, 4, I8.NIB6)

@njit
def products(q, s, xq, xd, g):
    out = np.empty((2, q.shape[0], 4), np.float32)
    for r in range(0, q.shape[0], 2):
        for t in range(4):
            out[0, r, t] = one(q, s, r, xq, xd, 32, t, g)
            out[0, r + 1, t] = one(q, s, r + 1, xq, xd, 32, t, g)
        v = pair(q, s, r, xq, xd, 32, 0, g)
        for j in range(8):
            out[1, r + j // 4, j % 4] = v[j]
    return out

res = []
for k in (768, 1024):
    w = Q.pack(random_tensor(Q.Q6_K, 6, k, seed=8), Q.Q6_K, k, planes=True)
    x = np.random.default_rng(9).standard_normal((4, k)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((4, k // 32), np.float32)
    xq, xd = np.empty((4, k), np.int8), np.empty((4, k // 32), np.float32)
    Q.quantize_activation8(w.act, x, xh, xs, xq, xd)
    res.append(products(w.q, w.s, xq, xd, Q.int8_order(k)))
np.save(sys.argv[1], np.stack(res))
print(I8._GFNI)
"""
    outs = {}
    for flag in ("0", "1"):
        env = {**__import__("os").environ, "ASSISTANT_GFNI": flag}
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"gfni{flag}.npy")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.strip() == str(flag == "1" and I8.VNNI and I8._host_has("gfni"))
        outs[flag] = np.load(tmp_path / f"gfni{flag}.npy")
    assert np.array_equal(outs["0"], outs["1"])
    assert np.array_equal(outs["0"][:, 0], outs["0"][:, 1])  # one row and token at a time as in pairs
    assert np.abs(outs["0"]).min() > 0


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
def test_a_new_process_loads_the_kernels_and_their_callers_without_compiling(tmp_path: Path) -> None:
    """The integer kernels are compiled once per layout and kept beside Numba's cache: a new
    process finds all seven when the module loads, before any caller is compiled, and a caller
    Numba loads from its own cache calls them and gives this process's products."""
    import os
    import pickle
    import subprocess
    import sys

    w = Q.pack(random_tensor(Q.Q4_0, 6, 256, seed=3), Q.Q4_0, 256)
    x = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((3, 8), np.float32)
    xq, xd = np.empty((3, 256), np.int8), np.empty((3, 8), np.float32)
    Q.quantize_activation8(w.act, x, xh, xs, xq, xd)
    here = np.empty((3, 6), np.float32)
    matmul_int8(here, w, xq, xd, xs)  # compiled (or loaded) here, in this process's Numba cache
    I8.load_kernels()
    (tmp_path / "in.pickle").write_bytes(pickle.dumps((w, xq, xd, xs)))
    script = f"""
import pickle, sys
import numpy as np
from engine import int8 as I8
print(sorted(I8._libraries) == sorted(I8._LAYOUTS))
from engine.matmul import matmul_i8, matmul_i8_serial, matmul_int8
with open({str(tmp_path / "in.pickle")!r}, "rb") as f:
    w, xq, xd, xs = pickle.load(f)
out = np.empty((3, 6), np.float32)
matmul_int8(out, w, xq, xd, xs)
print(sum(f.stats.cache_hits.total() for f in (matmul_i8, matmul_i8_serial)),
      sum(f.stats.cache_misses.total() for f in (matmul_i8, matmul_i8_serial)))
np.save(sys.argv[1], out)
"""
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npy")], env=dict(os.environ),
                         cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found, hits, misses = run.stdout.split()
    assert (found, hits, misses) == ("True", "1", "0")
    assert np.array_equal(np.load(tmp_path / "out.npy"), here)


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
def test_a_damaged_kernel_file_is_compiled_again_and_replaced(tmp_path: Path) -> None:
    """A kernel file that does not load (cut short, another program's) costs a compile, not a
    failure, and is written anew; the next load reads it."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    path = tmp_path / "int8-kernels-l1-damaged.nbk"
    path.write_bytes(b"\x80\x04not a pickle")
    name = I8._kernel_name(1, 1, I8.BYTE16, I8.INT8_UNIFORM)
    with global_compiler_lock:
        compiled = I8._kernel_library(codegen, str(path), I8.BYTE16, compile_missing=True)
        assert compiled.get_pointer_to_function(name)
        assert path.stat().st_size > 1000
        loaded = I8._kernel_library(codegen, str(path), I8.BYTE16, compile_missing=False)
        assert loaded is not None and loaded.get_pointer_to_function(name)


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
@pytest.mark.parametrize("k", [512, 768])
def test_compact_scales_give_the_same_integer_products(k: int) -> None:
    """A Q4_K matrix's integer dot products (before the min term) are the same floats whether its
    scales are stored as the float32 products d*sc or compact (d per 256, a byte per sub-block),
    for one token and for groups; and the compact rows take 0.59 bytes a weight against 0.75."""
    from engine.matmul import _rows_i8

    rows, n_tok = 33, 11
    raw = random_tensor(Q.Q4_K, rows, k, seed=3)
    plain, compact = Q.pack(raw, Q.Q4_K, k), Q.pack(raw, Q.Q4_K, k, compact=True)
    assert not plain.compact and compact.compact
    assert plain.nbytes == rows * k * 0.75 and compact.nbytes == rows * k * (0.5 + 2 / 32 + 8 / 256)
    x = np.random.default_rng(4).standard_normal((n_tok, k)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((n_tok, k // 32), np.float32)
    xq, xd = np.empty((n_tok, k), np.int8), np.empty((n_tok, k // 32), np.float32)
    Q.quantize_activation8(Q.ACT_Q8_K, x, xh, xs, xq, xd)
    for n in (1, n_tok):
        outs = []
        for layout, w in ((I8.NIB, plain), (I8.NIBK, compact)):
            out = np.zeros((n, rows), np.float32)
            _rows_i8(out, layout, w.q, w.s, xq[:n], xd[:n], 0.0, 0, rows)
            outs.append(out)
        assert np.array_equal(outs[0], outs[1]) and np.abs(outs[0]).max() > 0


def test_compact_mins_are_the_block_mins() -> None:
    """`int8.compact_mins`, 8 blocks at a time, gives each block's min exactly as `matmul._block_min`
    does (-dmin per 256 times the min byte at the row's end), for Q4_K and Q5_K rows."""
    from numba import njit

    from engine.matmul import _block_min

    @njit
    def both(q, m, nb):
        vec, one = np.empty((q.shape[0], nb), np.float32), np.empty((q.shape[0], nb), np.float32)
        for r in range(q.shape[0]):
            I8.compact_mins(vec[r], q[r], m[r])
            for b in range(nb):
                one[r, b] = _block_min(q[r], m[r], b, nb, True)
        return vec, one

    for qtype, k in ((Q.Q4_K, 768), (Q.Q5_K, 1024)):
        w = Q.pack(random_tensor(qtype, 5, k, seed=6), qtype, k, planes=qtype == Q.Q5_K, compact=True)
        vec, one = both(w.q, w.m, k // 32)
        assert np.array_equal(vec, one) and np.abs(one).max() > 0


def test_rows_slice_is_one_expert_of_a_stack() -> None:
    """Slicing a packed expert stack by rows gives views that multiply like the expert alone."""
    raw = random_tensor(Q.Q4_K, 4 * 16, 256, seed=3)
    stack = Q.pack(raw, Q.Q4_K, 256)
    alone = Q.pack(raw[32:48], Q.Q4_K, 256)
    part = stack.rows_slice(32, 48)
    assert np.shares_memory(part.q, stack.q)
    x = np.random.default_rng(4).standard_normal((1, 256)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((1, 8), np.float32)
    Q.quantize_activation(Q.ACT_Q8_K, x, xh, xs)
    a, b = np.empty(16, np.float32), np.empty(16, np.float32)
    matvec_packed(a, part, xh[0], xs[0])
    matvec_packed(b, alone, xh[0], xs[0])
    assert np.array_equal(a, b)


def test_packable_says_why_not() -> None:
    """A 4-bit row that cannot split into two halves of whole blocks is refused with the reason."""
    assert Q.packable(Q.Q4_0, 896) is None
    assert "halves" in (Q.packable(Q.Q4_0, 96) or "")
    assert "blocks" in (Q.packable(Q.Q6_K, 128) or "")
    assert Q.packable(int(T.Q2_K), 256) is not None


# --- activation quantisation against llama.cpp's own from_float -----------------------------

_CPU = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
_CPU.ggml_cpu_init()


def _llama_quantize_row(name: str, x: np.ndarray, n_bytes: int) -> np.ndarray:
    out = np.zeros(n_bytes, np.uint8)
    getattr(_CPU, name)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out


def _decode_q8(raw: np.ndarray, block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized values, per-32 block sums) of a row of q8_0/q8_1/q8_K blocks."""
    if block_bytes == 292:  # q8_K: float d, 256 int8, 16 int16 sums
        blk = raw.reshape(-1, 292)
        d = blk[:, :4].copy().view(np.float32)[:, 0]
        vals = (d[:, None] * blk[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
        bsums = blk[:, 260:].copy().view(np.int16).reshape(-1, 16).astype(np.float32)
        return vals, (d[:, None] * (bsums[:, 0::2] + bsums[:, 1::2])).reshape(-1)
    blk = raw.reshape(-1, block_bytes)
    d = Q.F16_TABLE[blk[:, :2].copy().view(np.uint16)[:, 0]]
    vals = (blk[:, block_bytes - 32:].view(np.int8).astype(np.float32) * d[:, None]).reshape(-1)
    sums = Q.F16_TABLE[blk[:, 2:4].copy().view(np.uint16)[:, 0]] if block_bytes == 36 else None
    return vals, sums


@pytest.mark.parametrize(
    ("act", "fn", "block", "block_bytes"),
    [(Q.ACT_Q8_0, "quantize_row_q8_0", 32, 34), (Q.ACT_Q8_1, "quantize_row_q8_1", 32, 36),
     (Q.ACT_Q8_K, "quantize_row_q8_K", 256, 292)],
    ids=["q8_0", "q8_1", "q8_K"],
)
def test_activation_quantization_is_llama_cpps(act: int, fn: str, block: int, block_bytes: int) -> None:
    """Activations quantize to the very values (and block sums) ggml-cpu's from_float gives the dot product."""
    rng = np.random.default_rng(5)
    k = 1024
    x = (rng.standard_normal((24, k)) * rng.random((24, 1)) * 4).astype(np.float32)
    x[0, :256] = 0.0  # an all-zero block
    x[1, 7] = -50.0  # a block whose largest magnitude is negative
    xh, xs = np.empty_like(x), np.empty((24, k // 32), np.float32)
    Q.quantize_activation(act, x, xh, xs)
    for t in range(x.shape[0]):
        vals, sums = _decode_q8(_llama_quantize_row(fn, x[t], k // block * block_bytes), block_bytes)
        assert np.array_equal(vals, xh[t]), t
        if act == Q.ACT_Q8_1:
            assert np.array_equal(sums, xs[t]), t
        if act == Q.ACT_Q8_K:
            np.testing.assert_allclose(xs[t], sums, rtol=1e-6, atol=0)


def test_f16_and_bf16_activations_round_to_nearest_even() -> None:
    """F16/BF16 weights see x rounded as F16C and ggml's fp32->bf16 round it, across the whole range."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(50_000) * np.exp(rng.uniform(-30, 12, 50_000))).astype(np.float32)
    x[:4] = [65504.0, 65519.0, 65520.0, 2.0**-25]
    xh, xs = np.empty((1, x.size), np.float32), np.empty((1, x.size // 32), np.float32)
    Q.quantize_activation(Q.ACT_F16, x[None], xh, xs)
    with np.errstate(over="ignore"):
        assert np.array_equal(xh[0], x.astype(np.float16).astype(np.float32))
    Q.quantize_activation(Q.ACT_BF16, x[None], xh, xs)
    want = gguf.quants.dequantize(gguf.quants.quantize(x, T.BF16), T.BF16)
    assert np.array_equal(xh[0], want)


@pytest.mark.skipif(not I8.AVAILABLE, reason="this CPU has neither AVX2 nor AVX-512 VNNI: the engine keeps its float kernels")
@pytest.mark.parametrize("planes", [False, True], ids=["bytes", "planes"])
@pytest.mark.parametrize("grouped", [False, True], ids=["one-token", "grouped"])
def test_integer_expert_kernels_match_the_float_ones(planes: bool, grouped: bool) -> None:
    """Gate/up with SwiGLU, then down, through experts of a stack give the same outputs through the
    integer kernels as through the float ones, to activation rounding: one token through the two
    experts a router picked, or 75 rows grouped by expert (3, 70 and 2 rows: one expert's rows
    span two blocks of 64)."""
    from engine.matmul import experts_down, experts_swiglu

    n_expert, n_ff, n_embd = 4, 256, 512  # the int8 form in groups of 4 steps for gate/up, of 2 for down
    if grouped:
        experts, starts = np.array([0, 2, 3], np.int64), np.array([0, 3, 73, 75], np.int64)
    else:
        experts, starts = np.array([2, 0], np.int64), np.array([0, 1, 2], np.int64)
    rows = int(starts[-1])
    # with planes, gate/up with compact scales too, as the engine packs them where these kernels run
    gate = Q.pack(random_tensor(Q.Q4_K, n_expert * n_ff, n_embd, seed=5), Q.Q4_K, n_embd, compact=planes)
    up = Q.pack(random_tensor(Q.Q4_K, n_expert * n_ff, n_embd, seed=6), Q.Q4_K, n_embd, compact=planes)
    down = Q.pack(random_tensor(Q.Q6_K, n_expert * n_embd, n_ff, seed=7), Q.Q6_K, n_ff, planes=planes)
    x = np.random.default_rng(8).standard_normal((rows if grouped else 1, n_embd)).astype(np.float32)
    xh, xs = np.empty_like(x), np.empty((x.shape[0], n_embd // 32), np.float32)
    xq, xd = np.empty(x.shape, np.int8), np.empty((x.shape[0], n_embd // 32), np.float32)
    Q.quantize_activation8(gate.act, x, xh, xs, xq, xd)
    outs = []
    for ints in (False, True):
        mid, scratch = np.empty((rows, n_ff), np.float32), np.empty((rows, n_ff), np.float32)
        mh, ms = np.empty_like(mid), np.empty((rows, n_ff // 32), np.float32)
        mq, md = np.empty((rows, n_ff), np.int8), np.empty((rows, n_ff // 32), np.float32)
        y = np.empty((rows, n_embd), np.float32)
        experts_swiglu(mid, scratch, experts, starts, gate, up, (xh, xs, xq, xd), (xh, xs, xq, xd), ints, 64)
        if ints:
            Q.quantize_activation8(down.act, mid, mh, ms, mq, md)
        else:
            Q.quantize_activation(down.act, mid, mh, ms)
        experts_down(y, experts, starts, down, (mh, ms, mq, md), ints, 64)
        outs.append((mid, y))
    assert np.allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5 * np.abs(outs[0][0]).max())
    assert np.allclose(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-3 * np.abs(outs[0][1]).max())


def test_round_f16_rounds_as_a_float16_conversion() -> None:
    """`quants.round_f16` (the activation scales' float16 rounding, done on the float32's bits)
    gives what a float16 conversion gives, ties to even, for normal and subnormal float16 values,
    the largest ones, the carries into the exponent and the signs."""
    from numba import njit

    @njit
    def rounded(x, out):
        for i in range(x.shape[0]):
            out[i] = Q.round_f16(x[i])

    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 4_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = bits[np.isfinite(bits) & (np.abs(bits) < 65520)]
    edges = [65504, 65519.99, 6.103515625e-05, 6.1e-05, 2.0**-24, 2.0**-25, 0.0, -0.0, 2047.5, 1024.5,
             1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11), 0.099975586]
    x = np.concatenate([x, rng.standard_normal(100_000).astype(np.float32), np.float32(edges)])
    assert x.shape[0] > 1_000_000
    out = np.empty_like(x)
    rounded(x, out)
    assert np.array_equal(out.view(np.uint32), x.astype(np.float16).astype(np.float32).view(np.uint32))
