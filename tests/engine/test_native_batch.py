"""Several sequences decoded together by the native engine (`generate_batch`): each gets exactly
what it gets alone, with its own stops, limits and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.backend import SamplingParams

PROMPTS = [
    "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
    "import os\nimport sys\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n",
]


@pytest.fixture(scope="module")
def batched_smollm2(smollm2_path: Path):
    from engine.native import NativeBackend

    backend = NativeBackend(smollm2_path, n_ctx=512, n_threads=2, n_slots=4)
    yield backend
    backend.close()


def _collect(events) -> dict[int, list]:
    out: dict[int, list] = {}
    for i, ev in events:
        out.setdefault(i, []).append(ev)
    return out


def _text(events: list) -> str:
    return "".join(e.text for e in events)


def test_each_sequence_gets_what_it_gets_alone(batched_smollm2) -> None:
    """Greedy and seeded sequences decoded together produce, token for token, their result alone."""
    b = batched_smollm2
    params = [SamplingParams(temperature=0.0, max_tokens=20),
              SamplingParams(temperature=0.9, seed=11, max_tokens=20),
              SamplingParams(temperature=0.0, max_tokens=12),
              SamplingParams(temperature=0.7, seed=5, max_tokens=20)]
    requests = [(b.tokenize(p, add_special=False), sp) for p, sp in zip(PROMPTS, params)]
    together = _collect(b.generate_batch(requests))
    for i, request in enumerate(requests):
        alone = _collect(b.generate_batch([request]))[0]
        assert [e.token for e in together[i]] == [e.token for e in alone]
        assert _text(together[i]) == _text(alone)
    assert together[2][-1].finish_reason == "length" and together[2][-1].timings.generated_tokens == 12
    assert "def " in _text(together[0])


def test_stops_and_cancel_end_one_sequence_only(batched_smollm2) -> None:
    """A stop string ends its own sequence; cancelling one leaves the others running to their end."""
    b = batched_smollm2
    cancel = threading.Event()
    requests = [(b.tokenize(PROMPTS[1], add_special=False), SamplingParams(temperature=0.0, max_tokens=30, stop=("\n",))),
                (b.tokenize(PROMPTS[2], add_special=False), SamplingParams(temperature=0.0, max_tokens=30)),
                (b.tokenize(PROMPTS[3], add_special=False), SamplingParams(temperature=0.0, max_tokens=30))]
    seen: dict[int, list] = {}
    for i, ev in b.generate_batch(requests, cancels=[None, cancel, None], ignore_eos=True):
        seen.setdefault(i, []).append(ev)
        if i == 2 and len(seen[2]) == 3:
            cancel.set()
    assert seen[0][-1].finish_reason == "stop" and "\n" not in _text(seen[0])
    assert seen[1][-1].finish_reason == "cancelled" and seen[1][-1].timings.generated_tokens < 30
    assert seen[2][-1].finish_reason == "length" and seen[2][-1].timings.generated_tokens == 30


def test_moe_sequences_batched_match_alone(synthetic: Callable[..., Path]) -> None:
    """On a quantized MoE (tokens of several sequences grouped by expert), batched equals alone."""
    from engine.native import NativeBackend

    path = synthetic("qwen3moe", "Q4_K_M")
    b = NativeBackend(path, n_ctx=256, n_threads=2, n_slots=3)
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=16)
        requests = [([1 + (7 * i + j) % 200 for j in range(20 + 5 * i)], greedy) for i in range(3)]
        together = _collect(b.generate_batch(requests, ignore_eos=True))
        for i, request in enumerate(requests):
            alone = _collect(b.generate_batch([request], ignore_eos=True))[0]
            assert [e.token for e in together[i]] == [e.token for e in alone]
            assert len(alone) == 17
    finally:
        b.close()


def test_a_prefix_held_by_another_slot_is_copied_not_recomputed(smollm2_path: Path) -> None:
    """A request that lands in an empty slot while another slot holds the same long prefix gets
    those K/V rows copied (its prompt counts them as reused), and answers exactly as alone."""
    from engine.native import BatchDecoder, NativeBackend

    b = NativeBackend(smollm2_path, n_ctx=512, n_threads=2, n_slots=2)
    try:
        shared = b.tokenize("<|im_start|>system\nYou are a careful Python assistant who explains code "
                            "briefly and precisely.<|im_end|>\n<|im_start|>user\n", add_special=False)
        first = shared + b.tokenize("Write fizzbuzz.<|im_end|>\n", add_special=False)
        second = shared + b.tokenize("Reverse a list.<|im_end|>\n", add_special=False)
        greedy = SamplingParams(temperature=0.0, max_tokens=12)
        d = BatchDecoder(b)
        d.add(first, greedy)
        for _ in range(3):
            d.step()
        slot = d.add(second, greedy)  # slot 0 is busy with the first: the second goes to slot 1
        events = []
        while d.running:
            events += [ev for s, ev in d.step() if s == slot]
        assert events[-1].timings.reused_tokens >= len(shared) - 1
        b.reset()
        alone = _collect(b.generate_batch([(second, greedy)]))[0]
        assert alone[-1].timings.reused_tokens == 0
        assert [e.token for e in events] == [e.token for e in alone]
    finally:
        b.close()


def test_prompts_prefilled_in_chunks_beside_running_decodes(batched_smollm2) -> None:
    """Two prompts that arrive together are prefilled in one pass; a long prompt that joins while
    they decode goes in chunks (a small prefill budget), each chunk in the same pass as their
    tokens, so they keep getting a token every step; every sequence still gets, token for token,
    what it gets alone."""
    from engine import transformer as T
    from engine.native import BatchDecoder

    b = batched_smollm2
    long_prompt = b.tokenize("# utilities\n" + "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(12)),
                             add_special=False)
    short = [b.tokenize(PROMPTS[1], add_special=False), b.tokenize(PROMPTS[3], add_special=False)]
    budget = 32
    assert sum(map(len, short)) <= budget < len(long_prompt) // 3
    params = SamplingParams(temperature=0.0, max_tokens=24)

    def tokens(events) -> list[int]:
        return [e.token for e in events if e.token is not None]

    passes = 0
    real = T.forward_batch

    def counted(*args, **kwargs):
        nonlocal passes
        passes += 1
        return real(*args, **kwargs)

    T.forward_batch = counted
    try:
        decoder = BatchDecoder(b, prefill_budget=budget)
        slots = [decoder.add(p, params) for p in short]
        got: dict[int, list] = {}
        per_step: list[set[int]] = []
        while decoder.running:
            if len(per_step) == 2:
                slots.append(decoder.add(long_prompt, params))  # joins while the others decode
                left = len(long_prompt) - decoder._seqs[slots[2]].reused
            events = decoder.step()
            per_step.append({slot for slot, ev in events})
            for slot, ev in events:
                assert not isinstance(ev, BaseException), ev
                got.setdefault(slot, []).append(ev)
    finally:
        T.forward_batch = real
    alone = [tokens(_collect(b.generate_batch([(p, params)]))[0]) for p in (*short, long_prompt)]
    assert [tokens(got[s]) for s in slots] == alone
    assert per_step[0] == set(slots[:2])  # both first tokens after one pass
    prefilling = -(-left // budget)  # steps until the long prompt's first token
    assert prefilling >= 2
    assert all(set(slots[:2]) <= per_step[i] for i in range(2, 2 + prefilling))  # the others kept going
    assert slots[2] in per_step[2 + prefilling - 1] and slots[2] not in per_step[2 + prefilling - 2]
    assert passes == len(per_step)  # one pass of the model per step
