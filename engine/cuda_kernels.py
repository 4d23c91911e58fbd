"""numba.cuda kernels of the native engine's GPU path: MoE routing and windowed attention.

MoE: `gate_topk` (softmax over all experts, top-k, optional renormalisation and scale; a thread
per token), `count_experts` + `permute_pairs` (the (token, slot) pairs sorted by expert with
tokens ascending, one thread per expert, so the order is deterministic and equals the CPU's
`group_by_expert`), `gather_rows` (each expert's tokens made contiguous for one GEMM per expert)
and `unpermute` (the weighted sum back per token, in slot order as llama.cpp adds the experts).
Attention over the same ring-buffer KV cache layout as the CPU: `attention_prefill` (a block per
(query, head), threads over the window's positions) and, for one query over a long context,
`attention_decode_split` + `attention_decode_combine` (flash-decoding: blocks take slices of
the positions and keep a running max, sum and weighted V that are merged at the end). Each
kernel mirrors a CPU kernel in engine.kernels and is tested against it under
NUMBA_ENABLE_CUDASIM=1; `CudaOps` wraps the launches with host arrays in and out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int64

from engine import jitcache

jitcache.check()  # Numba's cache of the engine's modules consistent with all of their sources

MAX_EXPERTS = 512
THREADS = 128  # the most threads per block of the attention kernels (a power of two)


# --- MoE routing -------------------------------------------------------------------------------


@cuda.jit(cache=True)
def gate_topk(logits, k, renorm, scale, selected, weights):  # noqa: ANN001
    """selected/weights (T, k) from router logits (T, E): a thread per token."""
    t = cuda.grid(1)
    if t >= logits.shape[0]:
        return
    n_expert = logits.shape[1]
    best = logits[t, 0]
    for e in range(1, n_expert):
        best = max(best, logits[t, e])
    total = float64(0.0)
    for e in range(n_expert):
        total += float64(math.exp(logits[t, e] - best))
    inv = float32(1.0 / total)
    taken = cuda.local.array(MAX_EXPERTS, int64)
    for e in range(n_expert):
        taken[e] = 0
    wsum = float32(0.0)
    for j in range(k):
        pick = -1
        for e in range(n_expert):  # the first largest not taken: the CPU's stable descending sort
            if taken[e] == 0 and (pick < 0 or logits[t, e] > logits[t, pick]):
                pick = e
        taken[pick] = 1
        selected[t, j] = pick
        p = float32(math.exp(logits[t, pick] - best)) * inv
        weights[t, j] = p
        wsum += p
    for j in range(k):
        if renorm:
            weights[t, j] = weights[t, j] / wsum
        if scale != 0.0:
            weights[t, j] = weights[t, j] * float32(scale)


@cuda.jit(cache=True)
def count_experts(selected, counts):  # noqa: ANN001
    """counts[e] = pairs routed to expert e: a thread per (token, slot) pair."""
    i = cuda.grid(1)
    k = selected.shape[1]
    if i < selected.shape[0] * k:
        cuda.atomic.add(counts, selected[i // k, i % k], 1)


@cuda.jit(cache=True)
def permute_pairs(selected, starts, order, inverse):  # noqa: ANN001
    """order[starts[e] + r] = r-th pair (t*k + slot) of expert e, tokens ascending; inverse maps back.

    A thread per expert walks the pairs in order, so the permutation is deterministic.
    """
    e = cuda.grid(1)
    if e >= starts.shape[0] - 1:
        return
    k = selected.shape[1]
    pos = starts[e]
    for i in range(selected.shape[0] * k):
        if selected[i // k, i % k] == e:
            order[pos] = i
            inverse[i] = pos
            pos += 1


@cuda.jit(cache=True)
def gather_rows(x, order, k, out):  # noqa: ANN001
    """out[r] = x[token of pair order[r]]: each expert's tokens contiguous, a thread per element."""
    r, c = cuda.grid(2)
    if r < order.shape[0] and c < x.shape[1]:
        out[r, c] = x[order[r] // k, c]


@cuda.jit(cache=True)
def unpermute(y, inverse, weights, out):  # noqa: ANN001
    """out[t] = sum over slots j of weights[t, j] * y[row of pair (t, j)], slots in order."""
    t, c = cuda.grid(2)
    k = weights.shape[1]
    if t < out.shape[0] and c < out.shape[1]:
        acc = weights[t, 0] * y[inverse[t * k], c]
        for j in range(1, k):
            acc += weights[t, j] * y[inverse[t * k + j], c]
        out[t, c] = acc


# --- attention ---------------------------------------------------------------------------------


@cuda.jit(device=True)
def _block_max(shared, value):  # noqa: ANN001, ANN202
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            shared[tid] = max(shared[tid], shared[tid + step])
        cuda.syncthreads()
        step //= 2
    out = shared[0]
    cuda.syncthreads()
    return out


@cuda.jit(device=True)
def _block_sum(shared, value):  # noqa: ANN001, ANN202
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            shared[tid] += shared[tid + step]
        cuda.syncthreads()
        step //= 2
    out = shared[0]
    cuda.syncthreads()
    return out


@cuda.jit(cache=True)
def attention_prefill(out, q, k_cache, v_cache, pos0, window, scale, scratch):  # noqa: ANN001
    """engine.kernels.attention with a block per (query, head): scratch (T*H, cap) holds the scores."""
    th = cuda.blockIdx.x
    n_tok, n_head, d = q.shape
    if th >= n_tok * n_head:
        return
    t, h = th // n_head, th % n_head
    cap, n_kv = k_cache.shape[0], k_cache.shape[1]
    g = h // (n_head // n_kv)
    p = pos0 + t
    lo = max(0, p - window + 1) if window > 0 else 0
    n = p - lo + 1
    tid, nthr = cuda.threadIdx.x, cuda.blockDim.x
    fmax = cuda.shared.array(THREADS, float32)
    fsum = cuda.shared.array(THREADS, float64)
    local = float32(-3.4e38)
    for j in range(tid, n, nthr):
        slot = (lo + j) % cap
        s = float32(0.0)
        for i in range(d):
            s += q[t, h, i] * k_cache[slot, g, i]
        s *= scale
        scratch[th, j] = s
        local = max(local, s)
    best = _block_max(fmax, local)
    part = float64(0.0)
    for j in range(tid, n, nthr):
        e = float32(math.exp(scratch[th, j] - best))
        scratch[th, j] = e
        part += float64(e)
    inv = float32(1.0 / _block_sum(fsum, part))
    for i in range(tid, d, nthr):
        acc = float32(0.0)
        for j in range(n):
            acc += (scratch[th, j] * inv) * v_cache[(lo + j) % cap, g, i]
        out[t, h, i] = acc


@cuda.jit(cache=True)
def attention_decode_split(q, k_cache, v_cache, pos, window, scale, split_len, part_max, part_sum, part_acc,
                           scratch):  # noqa: ANN001
    """One query at `pos`: block (h, s) takes positions [s*split_len, (s+1)*split_len) of its window
    and leaves its max, sum of exponentials and weighted V (relative to that max) for the combine."""
    h, split = cuda.blockIdx.x, cuda.blockIdx.y
    n_head, d = q.shape[1], q.shape[2]
    cap, n_kv = k_cache.shape[0], k_cache.shape[1]
    g = h // (n_head // n_kv)
    lo = max(0, pos - window + 1) if window > 0 else 0
    n = pos - lo + 1
    j0 = split * split_len
    j1 = min(n, j0 + split_len)
    tid, nthr = cuda.threadIdx.x, cuda.blockDim.x
    fmax = cuda.shared.array(THREADS, float32)
    fsum = cuda.shared.array(THREADS, float64)
    local = float32(-3.4e38)
    for j in range(j0 + tid, j1, nthr):
        slot = (lo + j) % cap
        s = float32(0.0)
        for i in range(d):
            s += q[0, h, i] * k_cache[slot, g, i]
        s *= scale
        scratch[h, j] = s
        local = max(local, s)
    best = _block_max(fmax, local)
    part = float64(0.0)
    for j in range(j0 + tid, j1, nthr):
        e = float32(math.exp(scratch[h, j] - best))
        scratch[h, j] = e
        part += float64(e)
    total = _block_sum(fsum, part)
    if tid == 0:
        part_max[h, split] = best if j1 > j0 else float32(-3.4e38)
        part_sum[h, split] = total
    for i in range(tid, d, nthr):
        acc = float32(0.0)
        for j in range(j0, j1):
            acc += scratch[h, j] * v_cache[(lo + j) % cap, g, i]
        part_acc[h, split, i] = acc


@cuda.jit(cache=True)
def attention_decode_combine(part_max, part_sum, part_acc, out):  # noqa: ANN001
    """Merge the splits of one query: rescale each by exp(its max - the max) and normalize."""
    h, i = cuda.grid(2)
    n_head, n_split, d = part_acc.shape
    if h >= n_head or i >= d:
        return
    best = part_max[h, 0]
    for s in range(1, n_split):
        best = max(best, part_max[h, s])
    total = float64(0.0)
    acc = float32(0.0)
    for s in range(n_split):
        f = math.exp(part_max[h, s] - best)
        total += part_sum[h, s] * f
        acc += part_acc[h, s, i] * float32(f)
    out[0, h, i] = acc * float32(1.0 / total)


# --- host-side wrappers ------------------------------------------------------------------------


class CudaOps:
    """Launches of the kernels above with host numpy arrays in and out (device KV cache optional).

    `threads` is the attention kernels' block size (a power of two, at most THREADS) and `split`
    the positions each decode block takes; the simulator tests shrink both.
    """

    def __init__(self, threads: int = THREADS, split: int = 256) -> None:
        assert 0 < threads <= THREADS and threads & (threads - 1) == 0, threads
        self.threads, self.split = threads, split

    def route(self, logits: np.ndarray, k: int, renorm: bool, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(selected, weights) of `engine.kernels.route_experts` computed on the device."""
        n_tok, n_expert = logits.shape
        assert n_expert <= MAX_EXPERTS and 0 < k <= n_expert
        sel = cuda.device_array((n_tok, k), np.int64)
        w = cuda.device_array((n_tok, k), np.float32)
        gate_topk[(n_tok + 63) // 64, 64](cuda.to_device(np.ascontiguousarray(logits, np.float32)), k, renorm,
                                           float(scale), sel, w)
        return sel.copy_to_host(), w.copy_to_host()

    def permute(self, selected: np.ndarray, n_expert: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts, order, inverse): the pairs grouped by expert as `engine.kernels.group_by_expert` does."""
        n_pairs = selected.size
        d_sel = cuda.to_device(np.ascontiguousarray(selected, np.int64))
        counts = cuda.to_device(np.zeros(n_expert, np.int64))
        count_experts[(n_pairs + 127) // 128, 128](d_sel, counts)
        host_counts = counts.copy_to_host()
        starts = np.concatenate([[0], np.cumsum(host_counts)]).astype(np.int64)
        order = cuda.device_array(n_pairs, np.int64)
        inverse = cuda.device_array(n_pairs, np.int64)
        permute_pairs[(n_expert + 63) // 64, 64](d_sel, cuda.to_device(starts), order, inverse)
        return host_counts, order.copy_to_host(), inverse.copy_to_host()

    def gather(self, x: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
        out = cuda.device_array((order.shape[0], x.shape[1]), np.float32)
        grid = ((order.shape[0] + 15) // 16, (x.shape[1] + 15) // 16)
        gather_rows[grid, (16, 16)](cuda.to_device(np.ascontiguousarray(x)), cuda.to_device(order), k, out)
        return out.copy_to_host()

    def unpermute(self, y: np.ndarray, inverse: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n_tok, width = weights.shape[0], y.shape[1]
        out = cuda.device_array((n_tok, width), np.float32)
        grid = ((n_tok + 15) // 16, (width + 15) // 16)
        unpermute[grid, (16, 16)](cuda.to_device(np.ascontiguousarray(y)), cuda.to_device(inverse),
                                  cuda.to_device(np.ascontiguousarray(weights)), out)
        return out.copy_to_host()

    def attention(self, out: np.ndarray, q: np.ndarray, k_cache: object, v_cache: object, pos0: int,
                  window: int, scale: float) -> None:
        """`engine.kernels.attention` on the device; the caches may be host arrays (the engine's float16
        ones are widened to float32 on the way, and q is rounded to float16 as the CPU kernel rounds
        it; the softmax weights are not, since the split decode normalizes after weighing) or
        float32 device arrays."""
        n_tok, n_head, d = q.shape
        on_device = hasattr(k_cache, "copy_to_host")  # a device array (the simulator has no is_cuda_array)
        if getattr(k_cache, "dtype", None) == np.float16:
            q = q.astype(np.float16).astype(np.float32)
        kc = k_cache if on_device else cuda.to_device(np.asarray(k_cache, np.float32))
        vc = v_cache if on_device else cuda.to_device(np.asarray(v_cache, np.float32))
        d_q = cuda.to_device(np.ascontiguousarray(q))
        d_out = cuda.device_array(q.shape, np.float32)
        span = min(window, pos0 + n_tok) if window > 0 else pos0 + n_tok  # the longest window of these queries
        if n_tok == 1:
            n_split = (span + self.split - 1) // self.split
            pm = cuda.device_array((n_head, n_split), np.float32)
            ps = cuda.device_array((n_head, n_split), np.float64)
            pa = cuda.device_array((n_head, n_split, d), np.float32)
            scratch = cuda.device_array((n_head, n_split * self.split), np.float32)
            attention_decode_split[(n_head, n_split), self.threads](d_q, kc, vc, pos0, window, np.float32(scale),
                                                                    self.split, pm, ps, pa, scratch)
            attention_decode_combine[((n_head + 7) // 8, (d + 31) // 32), (8, 32)](pm, ps, pa, d_out)
        else:
            scratch = cuda.device_array((n_tok * n_head, span), np.float32)
            attention_prefill[n_tok * n_head, self.threads](d_out, d_q, kc, vc, pos0, window, np.float32(scale),
                                                            scratch)
        out[:] = d_out.copy_to_host()
