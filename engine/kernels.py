"""The transformer's small kernels on the CPU: RMSNorm, RoPE, windowed grouped-query attention over
a ring-buffer KV cache, SwiGLU, and MoE routing.

Each is a free function named after the maths that writes into an output array, jitted with
Numba (`cache=True`, so a second process starts without compiling). They follow ggml-cpu's
float order where it is cheap to do so (RMSNorm's sum of squares in float64, RoPE angles
built by repeated float32 multiplication, softmax sums in float64), which keeps the native
engine within float32 rounding of llama.cpp. The hot one is `attention`, whose cost grows
with the context; the others are linear in the activations.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from llvmlite import binding as llvm_binding
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from engine import jitcache
from engine.llvm_ir import float_of_bits, vector_loop

jitcache.check()  # Numba's cache of the engine's modules consistent with all of their sources

# fastmath without 'nnan'/'ninf': masks and overflowing exponentials must keep their meaning
FAST = {"reassoc", "contract", "nsz", "arcp", "afn"}


@intrinsic
def kv_f32(typingctx, x):  # noqa: ANN001, ANN202 - a Numba intrinsic
    """A KV-cache element as float32: a float16's bits (uint16, the CPU caches: Numba has no
    float16 arrays there) widened, which x86 CPUs with F16C do in one instruction for 16 of them, or
    a float32 as it is."""
    if x == types.uint16:
        def widen(context, builder, sig, args):  # noqa: ANN001, ANN202
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(x), widen
    if x == types.float32:
        return types.float32(x), lambda context, builder, sig, args: args[0]
    return None


@intrinsic
def _kv_value(typingctx, v, cache):  # noqa: ANN001, ANN202 - a Numba intrinsic
    """The float32 v as an element of `cache`: rounded to float16 (to nearest, ties to even, as
    numpy's and F16C's conversions) for a uint16 cache, as it is for a float32 one."""
    if cache.dtype == types.uint16:
        def narrow(context, builder, sig, args):  # noqa: ANN001, ANN202
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

        return types.uint16(types.float32, cache), narrow
    return types.float32(types.float32, cache), lambda context, builder, sig, args: args[0]


def _score_lanes() -> int:
    """Lanes of `_score_keys`' vectors: 16 where the CPU has 512-bit vectors (AVX-512F), else 8.
    Its accumulators are one vector per key, as many keys as lanes: 16 of 16 lanes fill 32 of
    AVX-512's registers but are 32 of AVX2's 16 (each a pair of 8-lane halves), whose spills
    to the stack cost more than the products; 8 of 8 lanes fit."""
    try:
        return 16 if llvm_binding.get_host_cpu_features().get("avx512f", False) else 8
    except Exception:  # pragma: no cover - llvmlite cannot say
        return 8


#: keys whose scores `_score_keys` computes at once (also its vectors' lanes)
SCORE_KEYS = _score_lanes()


@intrinsic
def _score_keys(typingctx, scores, at, qv, cache, slot, g, sc):  # noqa: ANN001, ANN202 - a Numba intrinsic
    """scores[at:at+L] = sc * (qv . cache[slot + u, g]) for u < L = SCORE_KEYS: L keys' scores of one
    head (cache (cap, n_kv, d) float16 bits or float32, d a multiple of L, slot + L <= cap).

    Each key's products go into an L-lane accumulator of its own over d in L-wide chunks, and the
    L accumulators are then summed across their lanes together, by log2(L) rounds of two shuffles
    and an add that halve the vectors each round (one L-lane vector of the L sums at the end:
    45 instructions for 16), where one key at a time each dot product ended in a horizontal sum of
    its own (~8 dependent instructions a key)."""
    if not all(a.layout == "C" for a in (scores, qv, cache)):  # rows read as contiguous L-lane vectors
        return None
    lanes = SCORE_KEYS
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vl = ir.VectorType(f32, lanes)
    half = cache.dtype == types.uint16

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        s_val, at_val, q_val, c_val, slot_val, g_val, sc_val = args
        s_arr = context.make_array(sig.args[0])(context, builder, s_val)
        q_arr = context.make_array(sig.args[2])(context, builder, q_val)
        c_arr = context.make_array(sig.args[3])(context, builder, c_val)
        strides = cgutils.unpack_tuple(builder, c_arr.strides)
        d = cgutils.unpack_tuple(builder, c_arr.shape)[2]
        base = builder.ptrtoint(c_arr.data, i64)
        base = builder.add(base, builder.add(builder.mul(slot_val, strides[0]), builder.mul(g_val, strides[1])))
        elem = 2 if half else 4
        ety = ir.VectorType(ir.IntType(16), lanes) if half else vl
        q_ptr = builder.ptrtoint(q_arr.data, i64)
        fast = ("fast",)

        def chunk(i, accs):  # elements L*i..L*i+L-1 of q and of each key
            c = builder.mul(i, ir.Constant(i64, lanes))
            q = builder.load(builder.inttoptr(builder.add(q_ptr, builder.mul(c, ir.Constant(i64, 4))),
                                              vl.as_pointer()), align=4)
            new = []
            for u in range(lanes):
                row = builder.add(base, builder.mul(ir.Constant(i64, u), strides[0]))
                at_ptr = builder.inttoptr(builder.add(row, builder.mul(c, ir.Constant(i64, elem))), ety.as_pointer())
                k = builder.load(at_ptr, align=elem)
                if half:
                    k = builder.fpext(builder.bitcast(k, ir.VectorType(ir.HalfType(), lanes)), vl)
                new.append(builder.fadd(accs[u], builder.fmul(q, k, flags=fast), flags=fast))
            return new

        accs = vector_loop(builder, builder.udiv(d, ir.Constant(i64, lanes)), lanes, vl, chunk, "score_keys")

        def mask(m):
            return ir.Constant(ir.VectorType(ir.IntType(32), lanes), m)

        # log2(L) rounds, each folding pairs of vectors into one: the partial sums of the keys of both
        vs = list(accs)
        width = 1  # lanes each key holds together in a block, doubling each round
        while len(vs) > 1:
            nxt_vs = []
            for a, b in zip(vs[0::2], vs[1::2]):
                # lanes in blocks of `width`: the even blocks of a and b interleaved, then the odd ones
                even, odd = [], []
                for blk in range(0, lanes, 2 * width):
                    even += [blk + i for i in range(width)] + [lanes + blk + i for i in range(width)]
                    odd += [blk + width + i for i in range(width)] + [lanes + blk + width + i for i in range(width)]
                e = builder.shuffle_vector(a, b, mask(even))
                o = builder.shuffle_vector(a, b, mask(odd))
                nxt_vs.append(builder.fadd(e, o, flags=fast))
            vs = nxt_vs
            width *= 2
        scv = builder.insert_element(ir.Constant(vl, None), sc_val, ir.Constant(ir.IntType(32), 0))
        scv = builder.shuffle_vector(scv, ir.Constant(vl, None), mask([0] * lanes))
        out = builder.fmul(vs[0], scv, flags=fast)
        s_ptr = builder.add(builder.ptrtoint(s_arr.data, i64), builder.mul(at_val, ir.Constant(i64, 4)))
        builder.store(out, builder.inttoptr(s_ptr, vl.as_pointer()), align=4)
        return context.get_dummy_value()

    sig = types.void(scores, types.int64, qv, cache, types.int64, types.int64, types.float32)
    return sig, codegen


@njit(cache=True)
def store_kv(cache_row: np.ndarray, x: np.ndarray) -> None:
    """cache_row (n_kv, d) = x (n_kv, d): one position's keys or values into a float16 (uint16 bits)
    or float32 cache."""
    for h in range(x.shape[0]):
        for i in range(x.shape[1]):
            cache_row[h, i] = _kv_value(x[h, i], cache_row)


@njit(cache=True, inline="always")
def as_cached(x: np.float32, cache: np.ndarray) -> np.float32:
    """x as an element of `cache` would hold it, as float32: rounded to float16 for a float16
    cache (uint16 bits), x itself for a float32 one."""
    return kv_f32(_kv_value(np.float32(x), cache))


@njit(nogil=True, cache=True)
def round_f16(a: np.ndarray) -> None:
    """a (2-D float32) rounded in place to the nearest float16 values (numpy's float16 casts convert
    one element at a time, ~5 ns each, which made a SmolLM2 prefill twice as slow)."""
    bits = np.empty(0, np.uint16)  # the type `as_cached` rounds to
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(row.shape[0]):
            row[j] = as_cached(row[j], bits)


@njit(nogil=True, cache=True)
def widen_f16(out: np.ndarray, bits: np.ndarray) -> None:
    """out (n, m, d) float32 = the float16 values whose bits are `bits` (n, m, d)."""
    for i in range(bits.shape[0]):
        for h in range(bits.shape[1]):
            for j in range(bits.shape[2]):
                out[i, h, j] = kv_f32(bits[i, h, j])


def kv_view(cache: np.ndarray) -> np.ndarray:
    """A KV cache as the jitted kernels take it: float16 as its uint16 bits, float32 as it is."""
    return cache.view(np.uint16) if cache.dtype == np.float16 else cache


@njit(cache=True)
def exp_f32(x: np.float32) -> np.float32:
    """e**x in float32 within about 2 ulp, with no library call, so that loops over it vectorize.

    Without Intel's SVML Numba calls libm's expf once per element: the softmax of attention and
    SwiGLU then ran one exponential at a time (45% of a 2048-token prefill was attention). Cephes'
    expf: x = n ln2 + r with ln2 split in two (no fastmath here, so the split is kept), a degree-6
    polynomial for e**r, and 2**n from the exponent bits. Below -87.3 it returns the smallest normal
    float instead of 0, and past 88.3 e**88.3 (2.2e38) instead of more: softmax arguments are at
    most 0 and SiLU's e**-g only divides.
    """
    x = min(max(x, np.float32(-87.33654)), np.float32(88.3))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375)
    r = r + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    return p * float_of_bits(np.int32((np.int32(n) + 127) << 23))


@njit(cache=True)
def rmsnorm(out: np.ndarray, x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of width w.shape[0] (x may be (T, H*n))."""
    n = w.shape[0]
    assert x.size == out.size and x.size % n == 0, (x.shape, out.shape, n)
    xr = x.reshape(-1, n)
    outr = out.reshape(-1, n)
    for t in range(xr.shape[0]):
        ss = 0.0  # ggml: float products summed in double, the mean back in float
        for i in range(n):
            ss += np.float64(xr[t, i] * xr[t, i])
        mean = np.float32(ss / n)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
        for i in range(n):
            outr[t, i] = (xr[t, i] * scale) * w[i]


@njit(cache=True)
def rope_cache(cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, n_rot: int, base: float,
               freq_scale: float, factors: np.ndarray) -> None:
    """cos/sin (T, n_rot/2) of each position's angles, as ggml_rope_cache_init builds them."""
    assert cos.shape == sin.shape == (positions.shape[0], n_rot // 2), (cos.shape, positions.shape, n_rot)
    theta_scale = np.float32(base) ** (np.float32(-2.0) / np.float32(n_rot))
    for t in range(positions.shape[0]):
        theta = np.float32(positions[t])
        for i in range(n_rot // 2):
            ff = factors[i] if factors.shape[0] else np.float32(1.0)
            angle = np.float32(freq_scale) * (theta / ff)
            cos[t, i] = np.cos(angle)
            sin[t, i] = np.sin(angle)
            theta = theta * theta_scale


@njit(cache=True)
def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> None:
    """Rotate each head of x (T, n_heads, head_dim) in place: pairs (2i, 2i+1), or (i, i+d/2) for NeoX."""
    n_tok, n_heads, d = x.shape
    half = cos.shape[1]
    assert cos.shape == sin.shape and cos.shape[0] == n_tok and 2 * half == d
    for th in range(n_tok * n_heads):
        t, h = th // n_heads, th % n_heads
        v = x[t, h]
        for i in range(half):
            a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
            x0, x1 = v[a], v[b]
            v[a] = x0 * cos[t, i] - x1 * sin[t, i]
            v[b] = x0 * sin[t, i] + x1 * cos[t, i]


@njit(parallel=True, fastmath=FAST, cache=True)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int,
              window: int, scale: float) -> None:
    """Causal grouped-query attention for T queries at positions pos0..pos0+T-1 (hot).

    q (T, n_head, d); k_cache/v_cache (cap, n_kv, d) hold position p in slot p % cap (float16 bits
    or float32, `kv_view`); a query at p sees keys max(0, p - window + 1)..p (all of 0..p when
    window is 0).
    """
    n_tok, n_head, d = q.shape
    cap, n_kv = k_cache.shape[0], k_cache.shape[1]
    assert out.shape == q.shape and v_cache.shape == k_cache.shape and k_cache.shape[2] == d
    # every position still in the cache, or (a ring) every query's window fits in it
    assert n_head % n_kv == 0 and (pos0 + n_tok <= cap or (window > 0 and n_tok + window - 1 <= cap))
    group = n_head // n_kv
    sc = np.float32(scale)
    for th in prange(n_tok * n_head):
        t, h = th // n_head, th % n_head
        _attend(out[t, h], q[t, h], k_cache, v_cache, h // group, pos0 + t, window, sc)


GEMM_QUERIES = 64  # from this many queries in a chunk, `attention_gemm` beats `attention` (measured)


def attention_gemm(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int,
                   window: int, scale: float, pool: object) -> None:
    """`attention` for a chunk of queries through BLAS: per head, scores = Q K^T as one SGEMM over
    every key the chunk sees, the causal (and window) mask and softmax, then P V as another SGEMM;
    the heads are shared among the engine's threads (`pool`, a ThreadPoolExecutor, one BLAS thread
    each). 2.4x faster than `attention` for 256 queries over 2048 keys; for few queries the
    per-query kernel wins. The values match it to float32 rounding, not bit for bit, so the
    batched kernels (whose results must not depend on how a prompt was split) keep `attention`.
    """
    n, n_head, _ = q.shape
    cap, n_kv = k_cache.shape[0], k_cache.shape[1]
    group = n_head // n_kv
    end = pos0 + n
    lo = max(0, pos0 - window + 1) if window > 0 else 0  # the first key any of these queries sees
    if lo // cap == (end - 1) // cap:  # one contiguous run of the (ring) cache
        a = lo % cap
        keys, vals = k_cache[a:a + end - lo], v_cache[a:a + end - lo]
    else:
        rows = np.arange(lo, end) % cap
        keys, vals = k_cache[rows], v_cache[rows]
    half = keys.dtype in (np.float16, np.uint16)  # then q and the weights are rounded to float16, as in `_attend`
    if half:
        wide_k, wide_v = np.empty(keys.shape, np.float32), np.empty(vals.shape, np.float32)
        widen_f16(wide_k, keys.view(np.uint16))
        widen_f16(wide_v, vals.view(np.uint16))
        keys, vals = wide_k, wide_v
        q = q.reshape(n, -1).copy()
        round_f16(q)
        q = q.reshape(n, n_head, -1)
    key_pos = np.arange(lo, end)[None, :]
    query_pos = np.arange(pos0, end)[:, None]
    hidden = key_pos > query_pos
    if window > 0:
        hidden |= key_pos <= query_pos - window
    sc = np.float32(scale)

    def head(h: int) -> None:
        g = h // group
        s = q[:, h, :] @ keys[:, g, :].T
        s *= sc
        s[hidden] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s *= (1.0 / s.sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
        if half:
            round_f16(s)
        out[:, h, :] = s @ vals[:, g, :]

    list(pool.map(head, range(n_head)))  # type: ignore[attr-defined]


@njit(parallel=True, fastmath=FAST, cache=True)
def attention_slots(out: np.ndarray, q: np.ndarray, k_caches: np.ndarray, v_caches: np.ndarray,
                    slots: np.ndarray, positions: np.ndarray, window: int, scale: float) -> None:
    """`attention` for T queries of T different sequences (batched decode): query t at position
    positions[t] over the cache of slot slots[t] of k_caches/v_caches (n_slots, cap, n_kv, d)."""
    n_tok, n_head, d = q.shape
    n_kv = k_caches.shape[2]
    group = n_head // n_kv
    sc = np.float32(scale)
    for th in prange(n_tok * n_head):
        t, h = th // n_head, th % n_head
        _attend(out[t, h], q[t, h], k_caches[slots[t]], v_caches[slots[t]], h // group, positions[t], window, sc)


@njit(fastmath=FAST, cache=True)
def _attend(o: np.ndarray, qv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, g: int, p: int,
            window: int, sc: np.float32) -> None:
    """One head of one query at position p: softmax(q . k / sqrt(d)) v over its window of KV head g.
    With a float16 cache, q and the softmax weights are rounded to float16 before they meet the
    keys and values, as llama.cpp's matrix products with a float16 cache convert them."""
    cap, d = k_cache.shape[0], qv.shape[0]
    lo = max(0, p - window + 1) if window > 0 else 0
    n = p - lo + 1  # the caller sizes rings so that n <= cap
    scores = np.empty(n, np.float32)
    qr = np.empty(d, np.float32)
    for i in range(d):
        qr[i] = as_cached(qv[i], k_cache)
    qv = qr
    best = np.float32(-3.4e38)
    # the ring's slots counted with a wrap, not `% cap` per key: an integer division per key and
    # head was most of attention's cost at long contexts (Qwen's decode at 1,400 tokens, measured)
    first = lo % cap
    slot = first
    j = 0
    while j + SCORE_KEYS <= n and slot + SCORE_KEYS <= cap and d % SCORE_KEYS == 0:  # L keys at once
        _score_keys(scores, j, qv, k_cache, slot, g, sc)
        for u in range(j, j + SCORE_KEYS):
            best = max(best, scores[u])
        j += SCORE_KEYS
        slot = slot + SCORE_KEYS if slot + SCORE_KEYS < cap else 0
    while j + 4 <= n and slot + 4 <= cap:  # four keys at once: four independent sums to reduce
        k0, k1, k2, k3 = k_cache[slot, g], k_cache[slot + 1, g], k_cache[slot + 2, g], k_cache[slot + 3, g]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for i in range(d):
            x = qv[i]
            s0 += x * kv_f32(k0[i])
            s1 += x * kv_f32(k1[i])
            s2 += x * kv_f32(k2[i])
            s3 += x * kv_f32(k3[i])
        scores[j], scores[j + 1], scores[j + 2], scores[j + 3] = s0 * sc, s1 * sc, s2 * sc, s3 * sc
        best = max(best, max(max(s0 * sc, s1 * sc), max(s2 * sc, s3 * sc)))
        j += 4
        slot = slot + 4 if slot + 4 < cap else 0
    while j < n:
        kv = k_cache[slot, g]
        slot = slot + 1 if slot + 1 < cap else 0
        s = np.float32(0.0)
        for i in range(d):
            s += qv[i] * kv_f32(kv[i])
        s = s * sc
        scores[j] = s
        best = max(best, s)
        j += 1
    total = 0.0
    for j in range(n):
        e = exp_f32(scores[j] - np.float32(best))
        scores[j] = e
        total += np.float64(e)
    inv = np.float32(1.0 / total)
    o[:] = 0.0
    slot = first
    j = 0
    while j + 4 <= n and slot + 4 <= cap:  # four keys per pass over o: a quarter of its loads and stores
        w0, w1 = as_cached(scores[j] * inv, v_cache), as_cached(scores[j + 1] * inv, v_cache)
        w2, w3 = as_cached(scores[j + 2] * inv, v_cache), as_cached(scores[j + 3] * inv, v_cache)
        v0, v1, v2, v3 = v_cache[slot, g], v_cache[slot + 1, g], v_cache[slot + 2, g], v_cache[slot + 3, g]
        for i in range(d):
            o[i] += w0 * kv_f32(v0[i]) + w1 * kv_f32(v1[i]) + w2 * kv_f32(v2[i]) + w3 * kv_f32(v3[i])
        j += 4
        slot = slot + 4 if slot + 4 < cap else 0
    while j < n:
        wj = as_cached(scores[j] * inv, v_cache)
        vv = v_cache[slot, g]
        slot = slot + 1 if slot + 1 < cap else 0
        for i in range(d):
            o[i] += wj * kv_f32(vv[i])
        j += 1


@njit(parallel=True, fastmath=FAST, cache=True)
def swiglu(out: np.ndarray, gate: np.ndarray, up: np.ndarray) -> None:
    """out = silu(gate) * up, elementwise over (T, n), a row per work item (each row is thousands
    of exponentials: serial, it was 6% of a batched decode step)."""
    assert gate.shape == up.shape == out.shape
    for t in prange(out.shape[0]):
        g, u, o = gate[t], up[t], out[t]
        for i in range(o.shape[0]):
            o[i] = g[i] / (np.float32(1.0) + exp_f32(-g[i])) * u[i]


@njit(cache=True)
def softmax(out: np.ndarray, x: np.ndarray) -> None:
    """out = exp(x - max) / sum, one row; the sum in float64 as ggml does."""
    best = x.max()
    total = 0.0
    for i in range(x.shape[0]):
        e = np.exp(x[i] - best)
        out[i] = e
        total += np.float64(e)
    inv = np.float32(1.0 / total)
    for i in range(x.shape[0]):
        out[i] *= inv


@njit(cache=True)
def route_experts(selected: np.ndarray, weights: np.ndarray, logits: np.ndarray, renorm: bool,
                  scale: float) -> None:
    """Softmax over all experts, top-k, optional renormalisation and scale (build_moe_ffn).

    logits (T, n_expert) -> selected (T, k) expert ids in decreasing probability, weights (T, k).
    """
    n_tok, n_expert = logits.shape
    k = selected.shape[1]
    probs = np.empty(n_expert, np.float32)
    for t in range(n_tok):
        softmax(probs, logits[t])
        order = np.argsort(-probs, kind="mergesort")
        total = np.float32(0.0)
        for j in range(k):
            selected[t, j] = order[j]
            weights[t, j] = probs[order[j]]
            total += weights[t, j]
        for j in range(k):
            if renorm:
                weights[t, j] = weights[t, j] / total
            if scale != 0.0:
                weights[t, j] = weights[t, j] * np.float32(scale)


@njit(cache=True)
def group_by_expert(selected: np.ndarray, n_expert: int, counts: np.ndarray, order: np.ndarray) -> None:
    """Sort the (token, slot) pairs by expert for batched MoE: counts (n_expert,) tokens per
    expert, order (T*k,) flat pair indices t*k + slot, expert by expert, tokens ascending."""
    n_tok, k = selected.shape
    counts[:] = 0
    for t in range(n_tok):
        for j in range(k):
            counts[selected[t, j]] += 1
    start = np.zeros(n_expert + 1, np.int64)
    for e in range(n_expert):
        start[e + 1] = start[e] + counts[e]
    fill = start[:n_expert].copy()
    for t in range(n_tok):
        for j in range(k):
            e = selected[t, j]
            order[fill[e]] = t * k + j
            fill[e] += 1


@njit(parallel=True, cache=True)
def sum_expert_rows(out: np.ndarray, rows: np.ndarray, order: np.ndarray, weights: np.ndarray) -> None:
    """out[t] = sum over slots j of weights[t, j] * rows[i], i the place of the pair t*k + j in
    `order` (`group_by_expert`): a batch's expert outputs, computed expert by expert, weighted and
    added back per token in slot order, as llama.cpp adds them (each product rounded, then summed;
    no fused multiply-add, so the values equal numpy's)."""
    n, k = weights.shape
    where = np.empty(n * k, np.int64)
    for i in range(n * k):
        where[order[i]] = i
    for t in prange(n):
        o = out[t]
        r, w = rows[where[t * k]], weights[t, 0]
        for c in range(o.shape[0]):
            o[c] = r[c] * w
        for j in range(1, k):
            r, w = rows[where[t * k + j]], weights[t, j]
            for c in range(o.shape[0]):
                o[c] += r[c] * w


@njit(cache=True)
def sigmoid(x: float) -> np.float32:
    """1 / (1 + e^-x): the shared expert's gate."""
    return np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-x)))
