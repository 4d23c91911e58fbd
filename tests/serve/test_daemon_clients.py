"""Clients that share the daemon's model: `load_model(..., use_daemon=True)` (what the LSP does)
gets a DaemonBackend when a live daemon serves the same file, and generates through it."""

from __future__ import annotations

import pytest

from assistant.loader import load_model
from assistant.settings import Settings
from engine.backend import EngineError, SamplingParams
from tests.serve.conftest import generate_then_cancel

PROMPT = "def fibonacci(n):\n"


@pytest.fixture
def near_daemon(daemon, monkeypatch):
    """This process sees the shared daemon's token file, as an editor of the same user would."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", daemon.env["XDG_RUNTIME_DIR"])
    return daemon


def _settings(**kw) -> Settings:
    return Settings(model="smollm2-135m", backend="llama", threads=1, context_length=1024, **kw)


def _generate(model, params, cancel=None):
    prompt = model.backend.tokenize(PROMPT, add_special=False)
    return list(model.backend.generate(prompt, params, cancel=cancel))


def test_uses_the_daemon_and_answers_as_in_process(near_daemon) -> None:
    """With a daemon serving the same model, generation goes through it (its request count grows)
    and writes exactly what the same backend writes in-process at temperature 0."""
    greedy = SamplingParams(temperature=0.0, max_tokens=16, stop=("\n\n",))
    shared = load_model(_settings(), use_daemon=True)
    try:
        assert shared.backend.name == "daemon" and shared.choice.name == "daemon"
        assert shared.backend.summary.n_ctx == 1024 and shared.backend.summary.eog_tokens
        before = near_daemon.status()["requests"]
        events = _generate(shared, greedy)
        assert near_daemon.status()["requests"] > before
    finally:
        shared.close()
    local = load_model(_settings(), use_daemon=False)
    try:
        assert local.backend.name == "llama"
        expected = _generate(local, greedy)
    finally:
        local.close()
    assert "".join(e.text for e in events) == "".join(e.text for e in expected)
    assert events[-1].finish_reason == expected[-1].finish_reason
    assert events[-1].timings.generated_tokens == expected[-1].timings.generated_tokens


def test_cancel_ends_the_daemon_generation(near_daemon) -> None:
    """Cancelling while the daemon streams ends the answer there, and the daemon goes idle."""
    shared = load_model(_settings(), use_daemon=True)
    try:
        got = generate_then_cancel(shared.backend, shared.backend.tokenize(PROMPT, add_special=False))
        assert got[-1].finish_reason == "cancelled" and len(got) < 40
        assert near_daemon.wait_idle()["busy_slots"] == 0
        with pytest.raises(EngineError, match="cannot be sent"):
            next(shared.backend.generate([1, 2], SamplingParams(constraint=object())))  # type: ignore[arg-type]
    finally:
        shared.close()


def test_another_model_loads_in_process(near_daemon, qwen_path) -> None:
    """A daemon serving a different file is not used: the model loads here."""
    model = load_model(Settings(model=str(qwen_path), backend="llama", threads=1, context_length=512),
                       use_daemon=True)
    try:
        assert model.backend.name == "llama"
    finally:
        model.close()


def test_token_id_prompts_are_checked(near_daemon) -> None:
    """/v1/completions takes a prompt of token ids; ids past the vocabulary and a suffix with
    ids are refused with 400."""
    code, _, raw = near_daemon.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": [1, 2, 3],
                                                                    "max_tokens": 2, "temperature": 0})
    assert code == 200, raw
    for bad in ({"prompt": [10**9]}, {"prompt": [1, 2], "suffix": "x"}, {"prompt": [1], "stop_token_ids": [-1]}):
        code, _, raw = near_daemon.request("POST", "/v1/completions", {"model": "smollm2-135m", "max_tokens": 2, **bad})
        assert code == 400, raw


def test_the_editor_completer_follows_the_daemon(serve_env, monkeypatch) -> None:
    """The LSP's completer uses a daemon that serves its model, and loads the model itself once
    that daemon is gone; `use_daemon = false` keeps it in-process from the start."""
    from lsp.completer import Completer
    from tests.serve.conftest import start_daemon

    env = serve_env()
    d = start_daemon(env)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    completer = Completer(None, base=_settings())
    own = Completer(None, base=_settings(use_daemon=False))
    try:
        assert completer.model().backend.name == "daemon"
        assert own.model().backend.name == "llama"
    finally:
        own.close()
        d.stop()
    try:
        assert completer.model().backend.name == "llama"
    finally:
        completer.close()


def test_a_daemon_killed_mid_answer_is_an_error_not_a_short_answer(serve_env, monkeypatch) -> None:
    """A daemon killed while it streams closes the connection between two chunks, which http.client
    reads as a whole answer: the daemon backend raises a RemoteError saying the daemon stopped
    answering, after the text that came, never a finish that passes the cut answer for whole."""
    from engine.remote import RemoteError
    from tests.serve.conftest import start_daemon

    env = serve_env()
    d = start_daemon(env)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    shared = load_model(_settings(), use_daemon=True)
    got = []
    try:
        assert shared.backend.name == "daemon"
        events = shared.backend.generate(shared.backend.tokenize("1, 2, 3, 4, 5,", add_special=False),
                                         SamplingParams(temperature=0.0, max_tokens=400))
        got += [next(events) for _ in range(3)]
        d.proc.kill()  # 397 tokens are still to come: the answer is cut
        d.proc.wait()
        with pytest.raises(RemoteError, match=f"^the daemon at {d.url} stopped answering: "):
            got += list(events)
    finally:
        shared.close()
        d.stop()
    assert len(got) >= 3 and all(ev.finish_reason is None for ev in got)
