"""A byte-capped cache of KV blocks, keyed by the tokens that produced them, shared by every request.

A sequence's K/V rows at positions 0..p depend only on its tokens 0..p, so whole blocks of
`BLOCK_TOKENS` rows can be kept after the slot that computed them moves on, and given to any later
prompt that starts with the same tokens. A block's key is a hash chain: the hash of the previous
block's key and this block's tokens, so one key names the whole prefix up to the block's end and
a lookup walks the prompt's blocks from the first until one is missing.

The cache holds at most `capacity` blocks (the byte cap divided by one block's K and V over every
layer), preallocated with np.zeros so that the operating system commits pages only as blocks are
written. When it is full, the least recently used block goes first; a lookup marks the blocks it
matched as used from the last to the first, so a prefix's later blocks leave before its earlier
ones (an earlier block is worth every later one that extends it).

Blocks are written when a slot's rows are about to be overwritten (`NativeBackend` stores the part
of a slot's sequence that a new prompt does not keep) and read back by copying rows into the slot
that needs them: the attention kernels read each slot's cache as one contiguous array. Rows are
copied, not referenced, and a copy costs far less than computing them (a block of 16 tokens of the
0.5B model is 393 KB against 16 tokens of prefill, about 45 ms here).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.generation import common_prefix

BLOCK_TOKENS = 16


@dataclass
class PoolStats:
    """Counters since the pool was made."""

    lookups: int = 0  # prompts looked up
    hit_tokens: int = 0  # tokens given back from blocks
    stored_blocks: int = 0  # blocks written
    evicted_blocks: int = 0  # blocks dropped to make room (for SavedSequences: states)


def block_keys(tokens: Sequence[int], salt: bytes = b"", n_blocks: int | None = None) -> list[bytes]:
    """The chain keys of the first `n_blocks` whole blocks of `tokens` (all of them by default)."""
    n = len(tokens) // BLOCK_TOKENS if n_blocks is None else n_blocks
    arr = np.asarray(tokens[: n * BLOCK_TOKENS], np.int64)
    keys, prev = [], salt
    for i in range(n):
        prev = hashlib.blake2b(prev + arr[i * BLOCK_TOKENS:(i + 1) * BLOCK_TOKENS].tobytes(), digest_size=16).digest()
        keys.append(prev)
    return keys


class BlockPool:
    """KV blocks of `BLOCK_TOKENS` positions for every layer, at most `cap_bytes` of them."""

    def __init__(self, n_layer: int, n_kv: int, head_dim: int, cap_bytes: int, dtype: type = np.float32) -> None:
        """`dtype`: the slots' KV caches' (float16 on the CPU), which the blocks keep as they are."""
        self.block_bytes = 2 * n_layer * BLOCK_TOKENS * n_kv * head_dim * np.dtype(dtype).itemsize  # K and V
        self.capacity = max(0, cap_bytes // self.block_bytes)
        shape = (self.capacity, BLOCK_TOKENS, n_kv, head_dim)
        self.k = [np.zeros(shape, dtype) for _ in range(n_layer)]  # per layer
        self.v = [np.zeros(shape, dtype) for _ in range(n_layer)]
        self._where: OrderedDict[bytes, int] = OrderedDict()  # key -> block index, least recently used first
        self._free = list(range(self.capacity - 1, -1, -1))
        self.stats = PoolStats()

    def __len__(self) -> int:
        return len(self._where)

    @property
    def used_bytes(self) -> int:
        return len(self._where) * self.block_bytes

    @property
    def cap_bytes(self) -> int:
        return self.capacity * self.block_bytes

    def match(self, tokens: Sequence[int], salt: bytes = b"") -> list[int]:
        """The blocks holding the longest run of `tokens`' whole blocks from the start, in order;
        they become the most recently used (the first block most of all)."""
        self.stats.lookups += 1
        keys = block_keys(tokens, salt)
        n = 0
        while n < len(keys) and keys[n] in self._where:
            n += 1
        self._touch(keys, range(n - 1, -1, -1))
        return [self._where[key] for key in keys[:n]]

    def restore(self, blocks: list[int], k_dst: list[np.ndarray], v_dst: list[np.ndarray], *,
                first_block: int = 0) -> int:
        """Copy `blocks` (a prefix's, from its first) into one slot's per-layer caches (cap, n_kv, d)
        at their positions, skipping those before `first_block` (the slot holds them); the tokens
        the blocks cover."""
        n = len(blocks) * BLOCK_TOKENS
        rows = slice(first_block * BLOCK_TOKENS, n)
        if first_block < len(blocks):
            idx = np.asarray(blocks[first_block:], np.int64)
            for layer in range(len(self.k)):
                k_dst[layer][rows] = self.k[layer][idx].reshape(-1, *self.k[layer].shape[2:])
                v_dst[layer][rows] = self.v[layer][idx].reshape(-1, *self.v[layer].shape[2:])
        self.stats.hit_tokens += n - rows.start
        return n

    def store(self, tokens: Sequence[int], k_src: list[np.ndarray], v_src: list[np.ndarray], *,
              first_block: int = 0, salt: bytes = b"", pinned: Sequence[int] = ()) -> int:
        """Keep the whole blocks of `tokens` from `first_block` on, whose rows sit at positions 0..
        of the per-layer caches `k_src`, `v_src`; blocks already held are only marked used, and the
        `pinned` blocks (matched for a prompt, not restored yet) are not evicted. How many blocks
        were written."""
        if self.capacity == 0:
            return 0
        keys = block_keys(tokens, salt)
        span = range(len(keys) - 1, first_block - 1, -1)  # the later blocks first: when room runs
        self._touch(keys, span)  # out, an earlier block (worth every later one) pushes a later one out
        written = 0
        for i in span:
            key = keys[i]
            if key in self._where:
                continue
            idx = self._take(pinned)
            if idx is None:
                break
            rows = slice(i * BLOCK_TOKENS, (i + 1) * BLOCK_TOKENS)
            for layer in range(len(self.k)):
                self.k[layer][idx] = k_src[layer][rows]
                self.v[layer][idx] = v_src[layer][rows]
            self._where[key] = idx
            written += 1
        self._touch(keys, span)
        self.stats.stored_blocks += written
        return written

    def _touch(self, keys: list[bytes], span: range) -> None:
        for i in span:
            if keys[i] in self._where:
                self._where.move_to_end(keys[i])

    def _take(self, pinned: Sequence[int]) -> int | None:
        """A free block, or the least recently used one not pinned (None when every block is)."""
        if self._free:
            return self._free.pop()
        for key, idx in self._where.items():
            if idx not in pinned:
                del self._where[key]
                self.stats.evicted_blocks += 1
                return idx
        return None

    def clear(self) -> None:
        self._where.clear()
        self._free = list(range(self.capacity - 1, -1, -1))


class SavedSequences:
    """Whole sequences' saved states (opaque buffers, e.g. llama.cpp's per-sequence state), keyed by
    their tokens, at most `cap_bytes` of them, least recently used out first: the same service as
    `BlockPool` for an engine that saves and restores a sequence as one piece. A state whose
    tokens extend a held one's replaces it."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = max(0, cap_bytes)
        self._states: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.used_bytes = 0
        self.stats = PoolStats()

    def __len__(self) -> int:
        return len(self._states)

    def best(self, prompt: Sequence[int]) -> tuple[tuple[int, ...], Any, int] | None:
        """The held state sharing the longest prefix with `prompt`: (its tokens, the state, how many
        tokens they share), now the most recently used; None when none shares a token."""
        self.stats.lookups += 1
        best, shared = None, 0
        for tokens in self._states:
            n = common_prefix(tokens, prompt)
            if n > shared:
                best, shared = tokens, n
        if best is None:
            return None
        self._states.move_to_end(best)
        return best, self._states[best], shared

    def put(self, tokens: Sequence[int], state: Any) -> bool:
        """Keep `state` (a buffer of len() bytes) for `tokens`; False when it alone exceeds the cap."""
        size = len(state)
        if size > self.cap_bytes:
            return False
        key = tuple(tokens)
        for held in [t for t in self._states if len(t) <= len(key) and key[:len(t)] == t]:
            self._drop(held)  # a prefix of this one: nothing it gives that this one does not
        while self.used_bytes + size > self.cap_bytes:
            self._drop(next(iter(self._states)))
            self.stats.evicted_blocks += 1
        self._states[key] = state
        self.used_bytes += size
        self.stats.stored_blocks += 1
        return True

    def _drop(self, tokens: tuple[int, ...]) -> None:
        self.used_bytes -= len(self._states.pop(tokens))
