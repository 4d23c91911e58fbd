"""The llama.cpp backend against a real tiny model (SmolLM2-135M): streaming, stops, cancel, reuse."""

from __future__ import annotations

import threading

import pytest

from engine.backend import Backend, ContextOverflowError, SamplingParams
from engine.text import Utf8Stream

CHAT = "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


def _run(backend, prompt, params=GREEDY, **kw):
    events = list(backend.generate(prompt, params, **kw))
    return "".join(e.text for e in events), events


def test_is_a_backend(smollm2) -> None:
    """The llama.cpp backend satisfies the Backend protocol every engine implements."""
    assert isinstance(smollm2, Backend)
    assert smollm2.summary.n_ctx == 1024 and smollm2.summary.n_vocab == 49152


def test_streams_one_event_per_token_then_the_end(smollm2) -> None:
    """Generation yields a text delta per token and ends with one event carrying reason and timings."""
    prompt = smollm2.tokenize(CHAT, add_special=False)
    text, events = _run(smollm2, prompt)
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == "length" and events[-1].timings is not None
    assert events[-1].timings.generated_tokens == 40 == len(events) - 1
    assert all(e.token is not None for e in events[:-1])
    assert "def " in text


def test_greedy_is_deterministic(smollm2) -> None:
    """At temperature 0 the same prompt gives the same text, whatever was cached before."""
    prompt = smollm2.tokenize(CHAT, add_special=False)
    first, _ = _run(smollm2, prompt)
    smollm2.reset()
    second, _ = _run(smollm2, prompt)
    assert first == second


def test_seeded_sampling_is_reproducible(smollm2) -> None:
    """With a seed, sampling at temperature 1 repeats exactly."""
    prompt = smollm2.tokenize(CHAT, add_special=False)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, max_tokens=24)
    a, _ = _run(smollm2, prompt, params)
    b, _ = _run(smollm2, prompt, params)
    assert a == b


def test_stop_string_ends_generation_and_is_not_emitted(smollm2) -> None:
    """A stop string ends the answer, and neither it nor anything after it is returned."""
    prompt = smollm2.tokenize(CHAT, add_special=False)
    full, _ = _run(smollm2, prompt)
    stop = "return"
    assert stop in full
    text, events = _run(smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,)))
    assert text == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


def test_end_of_generation_token_stops(smollm2) -> None:
    """The model's end-of-turn token ends the answer with reason 'stop' before max_tokens."""
    prompt = smollm2.tokenize("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n", add_special=False)
    text, events = _run(smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=200))
    assert events[-1].finish_reason == "stop"
    assert events[-1].timings.generated_tokens < 200
    assert "<|im_end|>" not in text


def test_cancel_from_another_thread(smollm2) -> None:
    """Setting the cancel event from another thread stops generation between two tokens."""
    prompt = smollm2.tokenize(CHAT, add_special=False)
    cancel = threading.Event()
    seen: list = []
    started = threading.Event()

    def consume() -> None:
        for ev in smollm2.generate(prompt, SamplingParams(temperature=0.0, max_tokens=500), cancel=cancel,
                                   ignore_eos=True):
            seen.append(ev)
            if len(seen) == 5:
                started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(30)
    cancel.set()
    t.join(30)
    assert not t.is_alive()
    assert seen[-1].finish_reason == "cancelled"
    assert 5 <= seen[-1].timings.generated_tokens < 500


def test_prefix_reuse_evaluates_only_new_tokens(smollm2) -> None:
    """A second call sharing a prefix with the cached tokens evaluates only the tokens after it."""
    smollm2.reset()
    base = smollm2.tokenize(CHAT, add_special=False)
    _, ev1 = _run(smollm2, base, SamplingParams(temperature=0.0, max_tokens=4))
    assert ev1[-1].timings.reused_tokens == 0
    longer = base + smollm2.tokenize("zebra crossing 42", add_special=False)
    _, ev2 = _run(smollm2, longer, SamplingParams(temperature=0.0, max_tokens=4))
    assert ev2[-1].timings.reused_tokens == len(base)
    # A diverging prompt keeps only the common part.
    other = base[:5] + smollm2.tokenize(" something else", add_special=False)
    _, ev3 = _run(smollm2, other, SamplingParams(temperature=0.0, max_tokens=4))
    assert ev3[-1].timings.reused_tokens == 5


def test_reuse_gives_the_same_answer_as_a_cold_cache(smollm2) -> None:
    """Prefix reuse changes the cost, not the answer."""
    base = smollm2.tokenize(CHAT, add_special=False)
    longer = base + smollm2.tokenize("Sure", add_special=False)
    smollm2.reset()
    cold, _ = _run(smollm2, longer)
    smollm2.reset()
    _run(smollm2, base, SamplingParams(temperature=0.0, max_tokens=3))
    warm, events = _run(smollm2, longer)
    assert events[-1].timings.reused_tokens > 0
    assert warm == cold


def test_prompt_longer_than_context_is_refused(smollm2) -> None:
    """A prompt that does not fit the context raises ContextOverflowError saying both sizes."""
    with pytest.raises(ContextOverflowError, match="1500 tokens but the context holds 1024"):
        list(smollm2.generate([1] * 1500, GREEDY))


def test_utf8_split_across_tokens(smollm2) -> None:
    """Characters whose bytes span several tokens come out whole, never as broken characters."""
    text = "naïve café 🙂🚀 世界 ok"
    tokens = smollm2.tokenize(text, add_special=False)
    pieces = [smollm2.token_bytes(t) for t in tokens]
    assert any(_broken(p) for p in pieces), "the test needs a token that is not valid UTF-8 alone"
    stream = Utf8Stream()
    out = [stream.feed(p) for p in pieces] + [stream.flush()]
    assert "\ufffd" not in "".join(out)
    assert "".join(out) == text
    assert smollm2.detokenize(tokens) == text


def _broken(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False

