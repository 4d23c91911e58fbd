"""The native backend as a Backend on a real tiny model (SmolLM2-135M): streaming, stops, cancel, reuse."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.backend import Backend, ContextOverflowError, SamplingParams

CHAT = "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def _run(backend, prompt, params=GREEDY, **kw):
    events = list(backend.generate(prompt, params, **kw))
    return "".join(e.text for e in events), events


def test_is_a_backend(native_smollm2) -> None:
    """The native backend satisfies the Backend protocol and describes its model."""
    assert isinstance(native_smollm2, Backend)
    s = native_smollm2.summary
    assert native_smollm2.name == "native" and s.n_ctx == 1024 and s.n_vocab == 49152 and s.eog_tokens


def test_tokenizer_is_llama_cpps(native_smollm2, smollm2) -> None:
    """Tokens and text come from llama.cpp's vocabulary, so both backends tokenize alike."""
    text = "def add(a, b):\n    return a + b  # naïve 🙂"
    assert native_smollm2.tokenize(text) == smollm2.tokenize(text)
    assert native_smollm2.detokenize(native_smollm2.tokenize(text, add_special=False)) == text


def test_streams_one_event_per_token_then_the_end(native_smollm2) -> None:
    """Generation yields a text delta per token and ends with one event carrying reason and timings."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    text, events = _run(native_smollm2, prompt)
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == "length" and events[-1].timings.generated_tokens == 24 == len(events) - 1
    assert "def " in text


def test_greedy_matches_llama_cpp(native_smollm2, smollm2) -> None:
    """At temperature 0 the native engine writes what llama.cpp writes for the same prompt."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    ours, _ = _run(native_smollm2, prompt)
    theirs, _ = _run(smollm2, prompt)
    assert ours == theirs


def test_seeded_sampling_is_reproducible(native_smollm2) -> None:
    """With a seed, sampling at temperature 1 repeats exactly, and another seed differs."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, max_tokens=16)
    a, _ = _run(native_smollm2, prompt, params)
    b, _ = _run(native_smollm2, prompt, params)
    c, _ = _run(native_smollm2, prompt, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99,
                                                       max_tokens=16))
    assert a == b and a != c


def test_stop_string_ends_generation_and_is_not_emitted(native_smollm2) -> None:
    """A stop string ends the answer, and neither it nor anything after it is returned."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    full, _ = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=40))
    stop = "return"
    assert stop in full
    text, events = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,)))
    assert text == full[: full.index(stop)] and events[-1].finish_reason == "stop"


def test_end_of_generation_token_stops(native_smollm2) -> None:
    """The model's end-of-turn token ends the answer with reason 'stop' before max_tokens."""
    # a question whose short answer does not turn on near ties (to "Say hi." a 135M model's greedy
    # answer ends or rambles on with the last bits of the logits); from an empty cache, since what
    # earlier tests left cached changes how the prompt is split into matmuls
    prompt = native_smollm2.tokenize("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                                     add_special=False)
    native_smollm2.reset()
    text, events = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=100))
    assert events[-1].finish_reason == "stop" and events[-1].timings.generated_tokens < 100
    assert "<|im_end|>" not in text and "Paris" in text


def test_cancel_from_another_thread(native_smollm2) -> None:
    """Setting the cancel event from another thread stops generation between two tokens."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    cancel, started, seen = threading.Event(), threading.Event(), []

    def consume() -> None:
        for ev in native_smollm2.generate(prompt, SamplingParams(temperature=0.0, max_tokens=500), cancel=cancel,
                                          ignore_eos=True):
            seen.append(ev)
            if len(seen) == 3:
                started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(60)
    cancel.set()
    t.join(60)
    assert not t.is_alive() and seen[-1].finish_reason == "cancelled"
    assert 3 <= seen[-1].timings.generated_tokens < 500


def test_prefix_reuse_evaluates_only_new_tokens_and_keeps_the_answer(native_smollm2) -> None:
    """A call sharing a prefix with the cache evaluates only what follows it, and answers as a cold cache does."""
    base = native_smollm2.tokenize(CHAT, add_special=False)
    longer = base + native_smollm2.tokenize("Sure", add_special=False)
    native_smollm2.reset()
    cold, _ = _run(native_smollm2, longer, SamplingParams(temperature=0.0, max_tokens=8))
    native_smollm2.reset()
    _, ev1 = _run(native_smollm2, base, SamplingParams(temperature=0.0, max_tokens=2))
    assert ev1[-1].timings.reused_tokens == 0
    warm, ev2 = _run(native_smollm2, longer, SamplingParams(temperature=0.0, max_tokens=8))
    assert ev2[-1].timings.reused_tokens == len(base) and warm == cold
    other = base[:5] + native_smollm2.tokenize(" something else", add_special=False)
    _, ev3 = _run(native_smollm2, other, SamplingParams(temperature=0.0, max_tokens=2))
    assert ev3[-1].timings.reused_tokens == 5


def test_prompt_longer_than_context_is_refused(native_smollm2) -> None:
    """A prompt that does not fit the context raises ContextOverflowError saying both sizes."""
    with pytest.raises(ContextOverflowError, match="1500 tokens but the context holds 1024"):
        list(native_smollm2.generate([1] * 1500, GREEDY))


class _Ban:
    """A constraint that forbids one token and records what it saw."""

    def __init__(self, token: int) -> None:
        self.token, self.accepted = token, []

    def apply(self, logits: np.ndarray) -> None:
        logits[self.token] = -np.inf

    def accept(self, token: int) -> None:
        self.accepted.append(token)


def test_constraint_masks_logits_before_each_sample(native_smollm2) -> None:
    """A TokenConstraint in the sampling params masks every step and is told each sampled token."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    _, events = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=6))
    first = events[0].token
    ban = _Ban(first)
    _, events = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=6, constraint=ban))
    tokens = [e.token for e in events[:-1]]
    assert first not in tokens and ban.accepted == tokens


def test_a_file_without_tokenizer_takes_token_ids(synthetic) -> None:
    """A "no_vocab" file (token ids only) says it cannot tokenize text instead of letting llama.cpp
    abort the process, and still generates from token ids, each token with no text."""
    from engine.backend import EngineError
    from engine.native import NativeBackend

    native = NativeBackend(synthetic("qwen2"), n_ctx=64, n_threads=1, n_batch=16)
    try:
        with pytest.raises(EngineError, match="no tokenizer"):
            native.tokenize("def f():")
        events = list(native.generate([1, 2, 3, 4], SamplingParams(temperature=0.0, max_tokens=5), ignore_eos=True))
        assert events[-1].timings.generated_tokens == 5 and "".join(e.text for e in events) == ""
    finally:
        native.close()


def test_kernels_run_on_the_backends_own_thread(synthetic, monkeypatch) -> None:
    """Numba's OpenMP layer starts a team of threads per thread that opens parallel regions, and two
    teams on the same cores cost ~25-30%: whichever threads generate (the TUI's worker, the
    language server's, the daemon's scheduler), the model's kernels run on the one thread that
    loaded it, with the number of threads it was given, and the callers' own setting is left alone."""
    import numba

    from engine import transformer as T
    from engine.native import NativeBackend

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two cores")
    native = NativeBackend(synthetic("llama"), n_ctx=64, n_threads=1, n_batch=16)
    ran_on, callers = [], []
    forward = T.forward

    def spy(*args, **kwargs):
        ran_on.append((threading.get_ident(), numba.get_num_threads()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(T, "forward", spy)

    def work() -> None:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # a fresh thread's default: every core
        list(native.generate([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=2), ignore_eos=True))
        callers.append((threading.get_ident(), numba.get_num_threads()))

    try:
        for _ in range(2):
            t = threading.Thread(target=work)
            t.start()
            t.join()
        engine_thread = native._engine.run(threading.get_ident)
        assert len(ran_on) >= 4 and set(ran_on) == {(engine_thread, 1)}
        assert len(callers) == 2 and all(ident != engine_thread and n == numba.config.NUMBA_NUM_THREADS
                                         for ident, n in callers)
    finally:
        native.close()


def test_logprobs_of_each_token(native_smollm2) -> None:
    """With logprobs asked for, each token carries its log-probability and the most likely
    alternatives; greedy picks the first of them. Without, nothing is computed."""
    prompt = native_smollm2.tokenize(CHAT, add_special=False)
    _, events = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=8, logprobs=3))
    tokens = [e for e in events if e.token is not None]
    assert len(tokens) == 8
    for e in tokens:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0] == (e.token, e.logprob)
        assert e.logprob <= 0 and e.top_logprobs[1][1] <= e.logprob
    _, plain = _run(native_smollm2, prompt, SamplingParams(temperature=0.0, max_tokens=2))
    assert all(e.logprob is None and e.top_logprobs == () for e in plain)


@pytest.mark.parametrize("key, ftype, shape", [
    ("qwen2", "Q5_0", {"window": 6}),  # biases; a window the prompt is longer than
    ("qwen3", "Q4_K_M", {}),  # per-head q/k norms; K-quant layouts with compact scales
    ("olmoe", "Q8_0", {}),  # a MoE (only its attention is one call); q/k norms over the projection
    ("llama", "F16", {}),  # float weights beside the integer ones
])
@pytest.mark.parametrize("ints", [True, False], ids=["integer", "float"])
def test_one_token_blocks_in_one_call_compute_what_the_layer_by_layer_path_does(
        key: str, ftype: str, shape: dict, ints: bool, synthetic) -> None:
    """A decoded token's attention block and (on the integer path) dense FFN, each run as one jitted
    call (engine.fused), give the logits of the same token run kernel by kernel, to the bit, with
    the same KV cache after it: a token's numbers do not depend on which path ran it."""
    from engine import transformer as T
    from engine.matmul import INT8
    from models import arch as A
    from models.gguf import read_gguf

    if ints and not INT8:
        pytest.skip("this CPU has neither AVX2 nor AVX-512 VNNI: no integer kernels")
    gguf = read_gguf(synthetic(key, ftype, **shape))
    cfg = A.config_from_gguf(gguf)
    weights = T.load_weights(gguf, cfg, planes=INT8)
    tokens = np.array([5, 17, 3, 250, 9, 77, 120, 31, 8, 64, 2, 200, 41, 13], np.int64)
    results = []
    for fused in (True, False):
        st = T.RunState(cfg, 32, 8, "cpu", 1)
        T.forward(cfg, weights, st, tokens[:8], 0, False)
        logits = []
        for pos in range(8, len(tokens)):
            T.embed(cfg, weights, st, tokens[pos:pos + 1], np.arange(pos, pos + 1))
            logits.append(T._layers_and_head(cfg, weights, st, 1, ints, slice(0, 1), pos0=pos,
                                             experts_alone=True, fused=fused)[0])
        results.append((np.stack(logits), [c.copy() for c in st.k_cache], [c.copy() for c in st.v_cache]))
    (got, k_got, v_got), (want, k_want, v_want) = results
    assert np.abs(want).max() > 0
    assert np.array_equal(got, want)
    assert all(np.array_equal(a, b) for a, b in zip(k_got + v_got, k_want + v_want))


@pytest.mark.parametrize("one_token_int8", [True, False], ids=["integer-one-token", "fused-float-one-token"])
def test_warm_up_changes_nothing_a_later_evaluation_computes(one_token_int8: bool, synthetic, monkeypatch) -> None:
    """`warm_up` (run as the engine opens) leaves no trace in what a prompt and the tokens after
    it compute: the same logits as an engine that never warmed up, on the integer one-token path
    and on the fused float one (the one CPUs without VNNI take, whose per-layer work-item sizes
    the warm-up's page mapping once zeroed), and no routing counted."""
    from engine import transformer as T
    from engine.native import NativeBackend

    monkeypatch.setattr(T, "ONE_TOKEN_INT8", one_token_int8)
    path = synthetic("llama-moe", "Q4_K_M")
    tokens = [11, 42, 7, 99, 3]
    results = []
    for warm in (False, True):
        backend = NativeBackend(path, n_ctx=64, n_threads=2)
        try:
            if warm:
                backend.warm_up()
                assert not backend.state.routed.any()
                assert all(c.all() for c in backend.state.chunks.values())
            first = backend.prefill(tokens[:3])
            rest = [backend.decode_step(t) for t in tokens[3:]]
            results.append(np.stack([first, *rest]))
        finally:
            backend.close()
    assert np.array_equal(results[0], results[1])


def test_kv_cache_type_float32_follows_llama_cpps_float32_cache(synthetic) -> None:
    """`kv_type` "f32" keeps the KV cache in float32 (twice the bytes) and then agrees with
    llama.cpp's float32 cache to float32 rounding; an unknown type is refused with its name."""
    from engine.backend import EngineError
    from engine.native import NativeBackend
    from synthetic_models import llama_logits

    path = synthetic("qwen2")
    with pytest.raises(EngineError, match="unknown KV cache type 'q8_0'"):
        NativeBackend(path, n_ctx=64, n_threads=1, n_batch=16, kv_type="q8_0")
    f16 = NativeBackend(path, n_ctx=64, n_threads=1, n_batch=16)
    f32 = NativeBackend(path, n_ctx=64, n_threads=1, n_batch=16, kv_type="f32")
    try:
        assert f32.state.kv_bytes == 2 * f16.state.kv_bytes
        tokens = [int(t) for t in np.random.default_rng(5).integers(1, 200, 48)]
        want = llama_logits(path, tokens, n_threads=1, kv_f32=True)
        got = f32.eval_logits(tokens)
        rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
        print(f"\nfloat32 KV: relative error median {np.median(rel):.1e}, largest {rel.max():.1e}")
        assert np.median(rel) < 1e-5 and rel.max() < 1e-4
    finally:
        f16.close()
        f32.close()


def test_a_vocabulary_llama_cpp_cannot_read_is_a_clear_error_of_the_loading(synthetic, tmp_path) -> None:
    """The vocabulary is read on a thread of its own while the weights load; llama.cpp refusing it
    (here: a tokenizer model it does not know) is still the loading's EngineError, and the engine
    opened for it is closed."""
    from engine.backend import EngineError
    from engine.select import BackendChoice, open_backend

    path = tmp_path / "bad-vocab.gguf"
    path.write_bytes(synthetic("llama").read_bytes().replace(b"no_vocab", b"bad_name", 1))
    engines = {t for t in threading.enumerate() if t.name.startswith("native-engine")}
    with pytest.raises(EngineError, match="could not read the vocabulary of .*bad-vocab.gguf"):
        open_backend(path, BackendChoice("native", "asked for"), n_ctx=64, n_threads=1)
    for t in threading.enumerate():
        if t.name.startswith("native-engine") and t not in engines:
            t.join(timeout=10)
            assert not t.is_alive()
