"""The KV block cache (engine.kvpool): blocks keyed by the chain of tokens before them, a byte cap
that holds, least-recently-used eviction that keeps a prefix's earlier blocks longest, and, on the
native engine, prompts that come back after others served from the cache with the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.backend import SamplingParams
from engine.kvpool import BLOCK_TOKENS, BlockPool, SavedSequences, block_keys

N_LAYER, N_KV, D = 3, 2, 8


def _slot_cache(n_tokens: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    k = [rng.standard_normal((n_tokens, N_KV, D)).astype(np.float32) for _ in range(N_LAYER)]
    v = [rng.standard_normal((n_tokens, N_KV, D)).astype(np.float32) for _ in range(N_LAYER)]
    return k, v


def _pool(n_blocks: int) -> BlockPool:
    block = 2 * N_LAYER * BLOCK_TOKENS * N_KV * D * 4
    return BlockPool(N_LAYER, N_KV, D, n_blocks * block + block - 1)  # a cap between n and n + 1 blocks


def test_blocks_come_back_for_the_same_tokens_only() -> None:
    pool = _pool(8)
    tokens = list(range(100, 100 + 5 * BLOCK_TOKENS + 7))  # 5 whole blocks and a part
    k, v = _slot_cache(len(tokens), 0)
    assert pool.store(tokens, k, v) == 5 and len(pool) == 5
    assert pool.store(tokens, k, v) == 0  # held already
    blocks = pool.match(tokens)
    assert len(blocks) == 5
    k2, v2 = _slot_cache(len(tokens), 1)
    assert pool.restore(blocks, k2, v2) == 5 * BLOCK_TOKENS
    for layer in range(N_LAYER):
        np.testing.assert_array_equal(k2[layer][:5 * BLOCK_TOKENS], k[layer][:5 * BLOCK_TOKENS])
        np.testing.assert_array_equal(v2[layer][:5 * BLOCK_TOKENS], v[layer][:5 * BLOCK_TOKENS])
    # a block's key names every token before it: a change in block 2 ends the match there
    changed = list(tokens)
    changed[2 * BLOCK_TOKENS + 3] += 1
    assert pool.match(changed) == blocks[:2]
    assert pool.match([7] + tokens[1:]) == []
    # the same tokens computed another way (another salt) are another entry
    assert pool.match(tokens, salt=b"other") == []
    # restoring from a block on leaves the rows before it alone
    k3, v3 = _slot_cache(len(tokens), 2)
    before = k3[0][:BLOCK_TOKENS].copy()
    pool.restore(blocks, k3, v3, first_block=1)
    np.testing.assert_array_equal(k3[0][:BLOCK_TOKENS], before)
    np.testing.assert_array_equal(k3[0][BLOCK_TOKENS:5 * BLOCK_TOKENS], k[0][BLOCK_TOKENS:5 * BLOCK_TOKENS])
    assert pool.stats.hit_tokens == 5 * BLOCK_TOKENS + 4 * BLOCK_TOKENS


def test_the_byte_cap_holds_and_the_least_recently_used_go_first() -> None:
    pool = _pool(6)
    assert pool.capacity == 6 and pool.cap_bytes <= 7 * pool.block_bytes - 1
    a = list(range(4 * BLOCK_TOKENS))
    b = list(range(1000, 1000 + 4 * BLOCK_TOKENS))
    pool.store(a, *_slot_cache(len(a), 0))
    pool.store(b, *_slot_cache(len(b), 1))  # 8 blocks wanted, 6 fit: two of a's go
    assert len(pool) == 6 and pool.used_bytes == 6 * pool.block_bytes and pool.stats.evicted_blocks == 2
    # a's later blocks went first: its first two are still there, and b is whole
    assert len(pool.match(a)) == 2 and len(pool.match(b)) == 4
    # a was used last now: storing c evicts from b, its later blocks first
    c = list(range(5000, 5000 + 2 * BLOCK_TOKENS))
    pool.match(a)
    pool.store(c, *_slot_cache(len(c), 2))
    assert len(pool) == 6
    assert len(pool.match(a)) == 2 and len(pool.match(c)) == 2 and len(pool.match(b)) == 2
    # a prefix longer than the whole pool keeps its earliest blocks
    long = list(range(9000, 9000 + 10 * BLOCK_TOKENS))
    pool.store(long, *_slot_cache(len(long), 3))
    assert len(pool) == 6 and len(pool.match(long)) == 6


def test_a_zero_cap_keeps_nothing() -> None:
    pool = BlockPool(N_LAYER, N_KV, D, 0)
    tokens = list(range(3 * BLOCK_TOKENS))
    assert pool.capacity == 0 and pool.store(tokens, *_slot_cache(len(tokens), 0)) == 0
    assert pool.match(tokens) == []


def test_block_keys_are_a_chain() -> None:
    tokens = list(range(3 * BLOCK_TOKENS + 5))
    keys = block_keys(tokens)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert block_keys(tokens[:2 * BLOCK_TOKENS]) == keys[:2]
    assert block_keys(tokens, b"x") != keys


def test_saved_sequences_keep_to_their_cap() -> None:
    saved = SavedSequences(100)
    assert saved.put([1, 2, 3], bytearray(40)) and saved.put([7, 8], bytearray(40))
    assert saved.best([1, 2, 9])[::2] == ((1, 2, 3), 2)
    assert saved.put([1, 2, 3, 4], bytearray(30))  # extends (1, 2, 3): replaces it
    assert len(saved) == 2 and saved.used_bytes == 70
    assert saved.put([5], bytearray(40))  # the least recently used, (7, 8), makes room
    assert saved.best([7, 8]) is None and saved.best([1, 2])[0] == (1, 2, 3, 4)
    assert saved.used_bytes == 70 <= saved.cap_bytes and saved.stats.evicted_blocks == 1
    assert not saved.put([6], bytearray(101))  # more than the whole cap
    assert saved.best([9]) is None


# --- on the native engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_prompts(smollm2_path: Path) -> tuple[str, str]:
    source = Path(__file__).read_text()
    return source[:1500], source[1500:3000]


def test_a_prompt_that_comes_back_is_served_from_the_blocks(smollm2_path: Path, smollm2_prompts) -> None:
    """One sequence of KV, two prompts in turn: the second time each is evaluated from its last
    partial block only, and the answer is the one it got first."""
    from engine.native import NativeBackend

    b = NativeBackend(smollm2_path, n_ctx=1024, n_threads=2)
    try:
        a, c = (b.tokenize(p) for p in smollm2_prompts)
        params = SamplingParams(temperature=0, max_tokens=12)

        def ask(prompt):
            events = list(b.generate(prompt, params))
            return "".join(e.text for e in events), events[-1].timings.reused_tokens

        first_a, first_c = ask(a), ask(c)
        assert first_a[1] == 0 and first_c[1] <= BLOCK_TOKENS  # both start with the same BOS token at most
        again_a, again_c = ask(a), ask(c)
        assert again_a[0] == first_a[0] and again_c[0] == first_c[0]
        assert again_a[1] == (len(a) - 1) // BLOCK_TOKENS * BLOCK_TOKENS
        assert again_c[1] == (len(c) - 1) // BLOCK_TOKENS * BLOCK_TOKENS
        kv = b.kv_memory()
        assert 0 < kv["kept_bytes"] <= kv["kept_cap_bytes"] and kv["kept_bytes"] % b.pool.block_bytes == 0
    finally:
        b.close()


def test_batched_decoding_from_the_blocks_is_exact(smollm2_path: Path, smollm2_prompts) -> None:
    """In continuous batching (the daemon) a prompt restored from the blocks gets the very logits
    it got when computed: same tokens, same log-probabilities, bit for bit."""
    from engine.native import NativeBackend

    b = NativeBackend(smollm2_path, n_ctx=1024, n_threads=2, n_slots=2)
    try:
        a, c, d = (b.tokenize(p) for p in (*smollm2_prompts, "x = 1\n" * 120))
        params = SamplingParams(temperature=0, max_tokens=8, logprobs=2)

        def ask(prompt):
            events = [ev for _, ev in b.generate_batch([(prompt, params)])]
            return [(e.token, e.logprob, e.top_logprobs) for e in events[:-1]], events[-1].timings.reused_tokens

        first, reused = ask(a)
        assert reused == 0
        ask(c)
        ask(d)  # the slots hold c and d now; a comes from the blocks
        assert not any(b._slot_tokens[s][:len(a) - 1] == a[:-1] for s in range(2))
        again, reused = ask(a)
        assert reused == (len(a) - 1) // BLOCK_TOKENS * BLOCK_TOKENS
        assert again == first
    finally:
        b.close()


def test_the_native_engine_keeps_within_its_block_cap(smollm2_path: Path) -> None:
    """Many different prompts through a pool of a few blocks: it never holds more than its cap, and
    the oldest prompts' blocks are the ones gone."""
    from engine.native import NativeBackend

    probe = NativeBackend(smollm2_path, n_ctx=512, n_threads=2, block_cache_bytes=1 << 20)
    block = probe.pool.block_bytes
    probe.close()
    b = NativeBackend(smollm2_path, n_ctx=512, n_threads=2, block_cache_bytes=5 * block)
    try:
        params = SamplingParams(temperature=0, max_tokens=1)
        prompts = [b.tokenize(f"# file {i}\n" + "value = compute(value)\n" * (4 + i)) for i in range(8)]

        def reused(prompt):
            return list(b.generate(prompt, params))[-1].timings.reused_tokens

        for p in prompts:
            reused(p)
            assert len(b.pool) <= 5 and b.kv_memory()["kept_bytes"] <= 5 * block
        assert b.pool.capacity == 5 and b.pool.stats.evicted_blocks > 0
        assert reused(prompts[-2]) >= 2 * BLOCK_TOKENS  # the one before the last is kept
        assert reused(prompts[0]) < BLOCK_TOKENS  # the first went long ago (a few tokens are shared)
    finally:
        b.close()


def test_llama_cpp_gets_a_saved_sequence_back(smollm2_path: Path, smollm2_prompts) -> None:
    """The llama.cpp backend, one sequence of KV: a prompt that replaces most of it saves it first
    (within the cap), and the prompt that comes back is answered from the saved state, the same."""
    from engine.llama import SAVE_MIN_TOKENS, LlamaBackend

    b = LlamaBackend(smollm2_path, n_ctx=1024, n_threads=2, saved_bytes=64 << 20)
    try:
        a, c = (b.tokenize(p) for p in smollm2_prompts)
        assert len(a) > SAVE_MIN_TOKENS and len(c) > SAVE_MIN_TOKENS
        params = SamplingParams(temperature=0, max_tokens=12)

        def ask(prompt):
            events = list(b.generate(prompt, params))
            return "".join(e.text for e in events), events[-1].timings.reused_tokens

        # llama.cpp's numbers for a token depend on the batch it is evaluated in: the answer to
        # compare with is the one given when the prompt is already in the cache (its last token
        # evaluated alone, as after a restore)
        ask(a)
        held_a = ask(a)
        ask(c)
        held_c = ask(c)
        again_a, again_c = ask(a), ask(c)
        assert (again_a[0], again_c[0]) == (held_a[0], held_c[0])
        assert again_a[1] == len(a) - 1 and again_c[1] == len(c) - 1
        kv = b.kv_memory()
        assert 0 < kv["kept_bytes"] <= kv["kept_cap_bytes"] == 64 << 20 and kv["slots_bytes"] > 0
    finally:
        b.close()
    off = LlamaBackend(smollm2_path, n_ctx=1024, n_threads=2)  # no cap, nothing kept
    try:
        for prompt in (a, c, a):
            *_, last = off.generate(prompt, SamplingParams(temperature=0, max_tokens=1))
        assert last.timings.reused_tokens <= 1 and off.saved is None
    finally:
        off.close()
