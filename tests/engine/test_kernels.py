"""The native engine's small kernels and sampler against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from engine import kernels as K
from engine.backend import SamplingParams
from engine.sampler import Sampler, apply_repeat_penalty

RNG = np.random.default_rng(0)


def test_rmsnorm_matches_numpy() -> None:
    """RMSNorm scales each row to unit root-mean-square and multiplies by the weight."""
    x = RNG.standard_normal((5, 64)).astype(np.float32) * 3
    w = RNG.standard_normal(64).astype(np.float32)
    out = np.empty_like(x)
    K.rmsnorm(out, x, w, 1e-5)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-6)


def test_rmsnorm_per_head_normalizes_each_head() -> None:
    """With a weight one head wide, rows of (T, heads * d) are normalized head by head (qwen3's q/k norm)."""
    x = RNG.standard_normal((3, 4 * 16)).astype(np.float32)
    w = np.ones(16, np.float32)
    out = np.empty_like(x)
    K.rmsnorm(out, x, w, 1e-6)
    heads = out.reshape(3, 4, 16)
    np.testing.assert_allclose(np.sqrt((heads.astype(np.float64) ** 2).mean(-1)), 1.0, rtol=1e-5)


def _rope_reference(x: np.ndarray, pos: np.ndarray, base: float, neox: bool) -> np.ndarray:
    n_tok, n_heads, d = x.shape
    inv = base ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None]  # (T, d/2)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x = x.astype(np.float64)
    a, b = (x[..., : d // 2], x[..., d // 2:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * c - b * s, a * s + b * c
    out = np.empty_like(x)
    if neox:
        out[..., : d // 2], out[..., d // 2:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


@pytest.mark.parametrize("neox", [False, True], ids=["normal", "neox"])
def test_rope_rotates_pairs(neox: bool) -> None:
    """RoPE rotates (2i, 2i+1) pairs, or (i, i+d/2) pairs for NeoX, by position * base^(-2i/d)."""
    pos = np.array([0, 1, 7, 100, 1000])
    x = RNG.standard_normal((5, 3, 32)).astype(np.float32)
    cos, sin = np.empty((5, 16), np.float32), np.empty((5, 16), np.float32)
    K.rope_cache(cos, sin, pos, 32, 10000.0, 1.0, np.empty(0, np.float32))
    got = x.copy()
    K.rope(got, cos, sin, neox)
    np.testing.assert_allclose(got, _rope_reference(x, pos.astype(np.float64), 10000.0, neox), rtol=1e-4, atol=2e-4)


def _attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos0: int, window: int) -> np.ndarray:
    """q (T, H, d) at positions pos0.., k/v (P, Hkv, d) by position."""
    n_tok, n_head, d = q.shape
    group = n_head // k.shape[1]
    out = np.zeros(q.shape)
    for t in range(n_tok):
        p = pos0 + t
        lo = max(0, p - window + 1) if window else 0
        for h in range(n_head):
            s = k[lo:p + 1, h // group].astype(np.float64) @ q[t, h] / np.sqrt(d)
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ v[lo:p + 1, h // group]
    return out


@pytest.mark.parametrize("window", [0, 5], ids=["causal", "window5"])
def test_attention_matches_the_reference(window: int) -> None:
    """Grouped-query attention sees each query's causal window, reading a ring of cache slots."""
    n_pos, n_head, n_kv, d = 24, 4, 2, 16
    k = RNG.standard_normal((n_pos, n_kv, d)).astype(np.float32)
    v = RNG.standard_normal((n_pos, n_kv, d)).astype(np.float32)
    q = RNG.standard_normal((n_pos, n_head, d)).astype(np.float32)
    want = _attention_reference(q, k, v, 0, window)
    # the whole context at once
    out = np.empty_like(q)
    K.attention(out, q, k, v, 0, window, 1 / np.sqrt(d))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    if window:
        # a ring of window + chunk - 1 slots fed 4 positions at a time, as the engine's windowed layers are
        cap = window + 4 - 1
        kc, vc = np.zeros((cap, n_kv, d), np.float32), np.zeros((cap, n_kv, d), np.float32)
        for p0 in range(0, n_pos, 4):
            slots = np.arange(p0, p0 + 4) % cap
            kc[slots], vc[slots] = k[p0:p0 + 4], v[p0:p0 + 4]
            part = np.empty((4, n_head, d), np.float32)
            K.attention(part, q[p0:p0 + 4], kc, vc, p0, window, 1 / np.sqrt(d))
            np.testing.assert_allclose(part, want[p0:p0 + 4], rtol=1e-5, atol=1e-5)


def test_float16_caches_attend_to_their_values_and_store_rounded() -> None:
    """The CPU's float16 KV caches (as uint16 bits, `kv_view`) give the attention of their values
    widened to float32, with every kernel (one query, several, several sequences' slots, the
    SGEMM path); `store_kv` rounds as numpy does."""
    n_pos, n_head, n_kv, d = 80, 6, 2, 32
    k = RNG.standard_normal((n_pos, n_kv, d)).astype(np.float32)
    v = RNG.standard_normal((n_pos, n_kv, d)).astype(np.float32)
    q = RNG.standard_normal((n_pos, n_head, d)).astype(np.float32)
    kc, vc = np.zeros((n_pos, n_kv, d), np.float16), np.zeros((n_pos, n_kv, d), np.float16)
    for p in range(n_pos):  # one position at a time, as a decoded token's are written
        K.store_kv(K.kv_view(kc)[p], k[p])
        K.store_kv(K.kv_view(vc)[p], v[p])
    assert np.array_equal(kc, k.astype(np.float16)) and np.array_equal(vc, v.astype(np.float16))
    # q and the softmax weights rounded to float16 too (as llama.cpp's products with a float16
    # cache): against a reference that rounds only q, within the weights' float16 rounding
    want = _attention_reference(q.astype(np.float16).astype(np.float32), kc.astype(np.float32),
                                vc.astype(np.float32), 0, 0)
    scale = 1 / np.sqrt(d)
    out = np.empty_like(q)
    K.attention(out, q, K.kv_view(kc), K.kv_view(vc), 0, 0, scale)
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-3)
    slots_out = np.empty_like(q)
    K.attention_slots(slots_out, q, K.kv_view(kc)[None], K.kv_view(vc)[None], np.zeros(n_pos, np.int64),
                      np.arange(n_pos), 0, scale)
    assert np.array_equal(slots_out, out)
    from concurrent.futures import ThreadPoolExecutor

    gemm_out = np.empty_like(q)
    with ThreadPoolExecutor(2) as pool:
        K.attention_gemm(gemm_out, q, kc, vc, 0, 0, scale, pool)
    np.testing.assert_allclose(gemm_out, want, rtol=0, atol=2e-3)


@pytest.mark.parametrize(("renorm", "scale"), [(False, 0.0), (True, 0.0), (True, 2.5)])
def test_route_experts_is_softmax_topk(renorm: bool, scale: float) -> None:
    """Routing takes a softmax over all experts, the top-k in order, then optional renormalisation and scale."""
    logits = RNG.standard_normal((6, 8)).astype(np.float32) * 2
    sel, w = np.empty((6, 3), np.int64), np.empty((6, 3), np.float32)
    K.route_experts(sel, w, logits, renorm, scale)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want_sel = np.argsort(-p, axis=1)[:, :3]
    want_w = np.take_along_axis(p, want_sel, 1)
    if renorm:
        want_w /= want_w.sum(1, keepdims=True)
    if scale:
        want_w *= scale
    assert np.array_equal(sel, want_sel)
    np.testing.assert_allclose(w, want_w, rtol=1e-5)


def test_group_by_expert_is_a_stable_permutation() -> None:
    """Grouping lists every (token, slot) pair once, expert by expert, tokens in order within an expert."""
    sel = RNG.integers(0, 5, (7, 2))
    sel[:, 1] = (sel[:, 0] + 1 + RNG.integers(0, 4, 7)) % 5  # distinct experts per token
    counts, order = np.empty(5, np.int64), np.empty(14, np.int64)
    K.group_by_expert(sel, 5, counts, order)
    assert sorted(order) == list(range(14))
    experts = sel.reshape(-1)[order]
    assert list(experts) == sorted(experts)
    assert np.array_equal(counts, np.bincount(sel.reshape(-1), minlength=5))
    for e in range(5):
        toks = order[experts == e] // 2
        assert list(toks) == sorted(toks)


def test_swiglu_is_silu_gate_times_up() -> None:
    """SwiGLU multiplies silu(gate) by up elementwise."""
    g, u = RNG.standard_normal((3, 10)).astype(np.float32), RNG.standard_normal((3, 10)).astype(np.float32)
    out = np.empty_like(g)
    K.swiglu(out, g, u)
    np.testing.assert_allclose(out, g / (1 + np.exp(-g)) * u, rtol=1e-6)


# --- sampler -----------------------------------------------------------------------------------


def test_greedy_picks_the_argmax_after_the_penalty() -> None:
    """At temperature 0 the sampler returns the argmax, with repeated tokens penalized first."""
    logits = np.array([1.0, 3.0, 2.9, -1.0], np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []) == 1
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.5)).sample(logits, [1]) == 2


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    """The repeat penalty pushes seen tokens toward less likely whatever their sign, as llama.cpp's does."""
    x = np.array([2.0, -2.0, 1.0], np.float32)
    apply_repeat_penalty(x, [0, 1, 1], 2.0)
    assert list(x) == [1.0, -4.0, 1.0]


def test_seeded_sampling_repeats_and_filters_respect_the_candidates() -> None:
    """A seed makes draws repeat; top-k=2 and min-p keep draws among the allowed candidates."""
    logits = RNG.standard_normal(100).astype(np.float32) * 3
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    a = [Sampler(params).sample(logits, []) for _ in range(3)]
    s1, s2 = Sampler(params), Sampler(params)
    assert [s1.sample(logits, []) for _ in range(20)] == [s2.sample(logits, []) for _ in range(20)]
    assert len(set(a)) == 1
    top2 = set(np.argsort(-logits)[:2])
    s = Sampler(SamplingParams(temperature=1.5, top_k=2, seed=1))
    assert {s.sample(logits, []) for _ in range(50)} <= top2
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=2))
    allowed = set(np.flatnonzero(logits >= logits.max() + np.log(0.5)))
    assert {s.sample(logits, []) for _ in range(50)} <= allowed
