"""The remote backend (engine.remote) against a real OpenAI-compatible server: a real `assistant
serve` on SmolLM2-135M plays vLLM / llama-server. In-process it writes what the server and the
in-process engine write; a second daemon with `--backend remote` forwards to the first; errors
are one clear line."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.backend import SamplingParams
from engine.remote import RemoteBackend, RemoteError
from tests.serve.conftest import MODEL_ARGS, Daemon, generate_then_cancel, start_daemon

CHAT = "<|im_start|>user\nWhat is a Python list?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def _text(events) -> str:
    return "".join(e.text for e in events)


def _own_answer(d: Daemon, prompt: str, max_tokens: int = 24) -> str:
    """What the daemon itself writes for a text prompt at temperature 0."""
    code, _, raw = d.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": prompt,
                                                         "max_tokens": max_tokens, "temperature": 0})
    assert code == 200, raw
    return json.loads(raw)["choices"][0]["text"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def remote(daemon, smollm2_path: Path):
    backend = RemoteBackend.connect(daemon.url, smollm2_path, api_key=daemon.token)
    yield backend
    backend.close()


def test_answers_as_the_server_and_as_in_process(remote, daemon, smollm2_path: Path) -> None:
    """Token ids built here get the server's own greedy answer, which is the in-process engine's too;
    the model's name and context come from the server's /v1/models."""
    from engine.llama import LlamaBackend

    assert remote.model_name == "smollm2-135m" and remote.summary.n_ctx == 1024
    prompt = remote.tokenize(CHAT, add_special=True, parse_special=True)
    events = list(remote.generate(prompt, GREEDY))
    assert remote.prompt_mode == "auto"  # ids were taken: no switch to text
    local = LlamaBackend(smollm2_path, n_ctx=1024, n_threads=1, architecture="llama")
    try:
        expected = list(local.generate(prompt, GREEDY))
    finally:
        local.close()
    assert _text(events) == _text(expected) == _own_answer(daemon, CHAT)
    assert events[-1].finish_reason == expected[-1].finish_reason == "length"
    assert events[-1].timings.generated_tokens == 24 and events[-1].timings.prompt_tokens == len(prompt)


def test_text_prompts_carry_the_same_prompt(daemon, smollm2_path: Path, remote) -> None:
    """prompt = "text" sends the detokenized prompt (special tokens written out), and the server's
    answer is the one the token ids get."""
    as_text = RemoteBackend.connect(daemon.url, smollm2_path, api_key=daemon.token, prompt="text")
    try:
        prompt = as_text.tokenize(CHAT, add_special=True, parse_special=True)
        assert as_text._prompt_text(prompt) == CHAT
        assert _text(as_text.generate(prompt, GREEDY)) == _text(remote.generate(prompt, GREEDY))
    finally:
        as_text.close()


def test_auto_switches_to_text_when_ids_are_refused(daemon, qwen_path: Path) -> None:
    """A server that answers 400 to a prompt of token ids (here: ids past its vocabulary, from
    Qwen's) gets the prompt as text in auto mode, from then on."""
    other = RemoteBackend.connect(daemon.url, qwen_path, api_key=daemon.token, prompt="auto")
    try:
        prompt = other.tokenize("def fibonacci(n):", add_special=False)
        assert max(prompt) >= 49152  # SmolLM2's vocabulary size: the server refuses these ids
        text = _text(other.generate(prompt, GREEDY))
        assert other.prompt_mode == "text"
        assert text == _own_answer(daemon, "def fibonacci(n):")
        strict = RemoteBackend.connect(daemon.url, qwen_path, api_key=daemon.token, prompt="tokens")
        try:
            with pytest.raises(RemoteError, match="answered 400: a prompt of token ids"):
                list(strict.generate(prompt, GREEDY))
        finally:
            strict.close()
    finally:
        other.close()


def test_cancel_stops_the_remote_generation(remote, daemon) -> None:
    """Cancelling mid-stream ends the answer there, and the server goes idle."""
    got = generate_then_cancel(remote, remote.tokenize("1, 2, 3, 4, 5,", add_special=False))
    assert got[-1].finish_reason == "cancelled" and len(got) < 40
    assert daemon.wait_idle()["busy_slots"] == 0


def test_log_probabilities_are_read_in_each_servers_shape(remote, daemon) -> None:
    """The server's answer with tokens named `token_id:N`, the same answer with tokens named by
    their text (OpenAI's shape), and it rewritten in llama-server's shape (`content` entries with
    ids) give the same ids, log-probabilities and alternatives, best first, cut to those asked."""
    body = {"model": "smollm2-135m", "prompt": "def fibonacci(n):\n", "max_tokens": 8, "temperature": 0,
            "logprobs": 3}
    as_text = _post(daemon, "/v1/completions", body)["choices"][0]["logprobs"]
    as_ids = _post(daemon, "/v1/completions", {**body, "return_tokens_as_token_ids": True})["choices"][0]["logprobs"]
    ids = [int(t.removeprefix("token_id:")) for t in as_ids["tokens"]]
    rows = zip(ids, as_text["tokens"], as_ids["token_logprobs"], as_ids["top_logprobs"], strict=True)
    llama_server = {"content": [
        {"id": i, "token": t, "logprob": lp,
         "top_logprobs": [{"id": int(k.removeprefix("token_id:")), "token": "", "logprob": v} for k, v in top.items()]}
        for i, t, lp, top in rows]}
    read = remote._token_logprobs(as_ids, 3)
    assert [t for t, _, _ in read] == ids and [lp for _, lp, _ in read] == as_ids["token_logprobs"]
    assert all(len(top) == 3 and top[0] == (t, lp) for t, lp, top in read)  # greedy: the token is the best
    assert remote._token_logprobs(as_text, 3) == read == remote._token_logprobs(llama_server, 3)
    assert remote._token_logprobs(as_ids, 1) == [(t, lp, top[:1]) for t, lp, top in read]


def test_unreachable_and_refused_are_one_clear_error(daemon, smollm2_path: Path) -> None:
    """No server at the URL, a wrong or missing API key, and a URL that is not one, each give
    a RemoteError that says which."""
    port = _closed_port()
    with pytest.raises(RemoteError, match=f"cannot reach the server at http://127.0.0.1:{port}: .*refused"):
        RemoteBackend.connect(f"http://127.0.0.1:{port}", smollm2_path)
    with pytest.raises(RemoteError, match="answered 401 to /v1/models: the API key was refused") as e:
        RemoteBackend.connect(daemon.url + "/v1", smollm2_path, api_key="not-the-token")
    assert e.value.status == 401 and "\n" not in str(e.value)
    with pytest.raises(RemoteError, match="it wants an API key"):
        RemoteBackend.connect(daemon.url, smollm2_path)
    with pytest.raises(RemoteError, match="is not an http"):
        RemoteBackend.connect("gpu-box:8000", smollm2_path)


def test_the_cli_says_why_in_one_line(cli_env, daemon, smollm2_path: Path) -> None:
    """`assistant chat --backend remote` with no server there, `models info` with no URL, and
    `serve --backend remote` with a wrong key each exit with one line, never a traceback; models
    info names the remote backend and the server."""
    def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "assistant.cli", *args], capture_output=True, text=True,
                              timeout=120, env={**cli_env, **(env or {})})

    def one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("assistant: error: "), proc.stderr
        assert fragment in lines[0], lines[0]

    port = _closed_port()
    one_line(cli("chat", "--model", "smollm2-135m", "--backend", "remote", "--remote-url",
                 f"http://127.0.0.1:{port}", "hello"), f"cannot reach the server at http://127.0.0.1:{port}")
    one_line(cli("models", "info", "smollm2-135m", "--backend", "remote"), "needs the server's URL")
    info = cli("models", "info", "smollm2-135m", "--backend", "remote", "--remote-url", daemon.url, "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["backend"] == "remote" and daemon.url in described["backend_reason"]
    one_line(cli("serve", "--port", "0", *MODEL_ARGS, "--backend", "remote", "--remote-url", daemon.url,
                 env={"ASSISTANT_REMOTE_API_KEY": "not-the-token"}), "answered 401")


# --- a daemon that forwards -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(serve_env):
    """The server the forwarding daemon uses (its own, so that a test may stop it)."""
    d = start_daemon(serve_env())
    yield d
    d.stop()


@pytest.fixture(scope="module")
def proxy(serve_env, upstream):
    """`assistant serve --backend remote` in front of `upstream`, two requests in flight at most."""
    env = serve_env()
    env["ASSISTANT_REMOTE_API_KEY"] = upstream.token
    d = start_daemon(env, "--backend", "remote", "--remote-url", upstream.url, "--slots", "2")
    yield d
    d.stop()


def _post(d: Daemon, path: str, body: dict) -> dict:
    code, _, raw = d.request("POST", path, body)
    assert code == 200, raw
    return json.loads(raw)


def _stream(d: Daemon, path: str, body: dict) -> tuple[str, list[str]]:
    """The text of a streamed answer and its finish reasons."""
    code, _, raw = d.request("POST", path, {**body, "stream": True})
    assert code == 200, raw
    text, finishes = "", []
    for line in raw.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:])["choices"]:
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
    return text, finishes


def test_a_forwarding_daemon_answers_as_its_upstream(proxy, upstream) -> None:
    """Chat and completions through the forwarding daemon, plain and streamed, are the upstream's
    own answers at temperature 0; the upstream counts the forwarded requests."""
    chat = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is a Python list?"}],
            "max_tokens": 20, "temperature": 0}
    completion = {"model": "smollm2-135m", "prompt": "def fibonacci(n):\n", "max_tokens": 20, "temperature": 0}
    status = proxy.status()
    assert status["backend"] == "remote" and upstream.url in status["backend_reason"] and status["slots"] == 2
    before = upstream.metric("assistant_requests_total")
    for path, body, key in (("/v1/chat/completions", chat, "message"), ("/v1/completions", completion, "text")):
        direct = _post(upstream, path, body)["choices"][0]
        forwarded = _post(proxy, path, body)["choices"][0]
        if key == "message":
            direct, forwarded = direct["message"]["content"], forwarded["message"]["content"]
        else:
            direct, forwarded = direct["text"], forwarded["text"]
        assert forwarded == direct and forwarded.strip()
        assert _stream(proxy, path, body) == (direct, ["length"])
    assert upstream.metric("assistant_requests_total") >= before + 6


def test_a_forwarding_daemon_keeps_several_requests_in_flight(proxy) -> None:
    """With --slots 2 the forwarding daemon has two requests out at once (the upstream queues or
    batches them), where a llama.cpp daemon runs one at a time."""
    body = json.dumps({"model": "smollm2-135m", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 900, "temperature": 0,
                       "stream": True}).encode()
    conns = []
    try:
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
            conn.request("POST", "/v1/completions", body=body, headers={
                "Host": f"127.0.0.1:{proxy.port}", "Authorization": f"Bearer {proxy.token}",
                "Content-Type": "application/json"})
            conns.append(conn)
        seen, deadline = 0, time.monotonic() + 30
        while seen < 2 and time.monotonic() < deadline:
            seen = max(seen, proxy.status()["busy_slots"])
            time.sleep(0.05)
        assert seen == 2
    finally:
        for conn in conns:
            conn.close()
    assert proxy.wait_idle()["busy_slots"] == 0


def test_a_forwarding_daemon_passes_grammars_on(proxy, upstream) -> None:
    """Its upstream takes grammars, so the forwarding daemon says it does too, and a grammar sent
    to it holds the answer as it does at the upstream."""
    code, _, raw = proxy.request("GET", "/v1/models")
    assert code == 200 and json.loads(raw)["data"][0]["grammars"] == ["lark"]
    body = {"model": "smollm2-135m", "prompt": "Is the sky blue? Answer:", "max_tokens": 8, "temperature": 0,
            "grammar": {"lark": 'start: " maybe" | " never"'}}
    text = _post(proxy, "/v1/completions", body)["choices"][0]["text"]
    assert text in (" maybe", " never") and text == _post(upstream, "/v1/completions", body)["choices"][0]["text"]


def _streamed_logprobs(d: Daemon, body: dict) -> dict[str, list]:
    """The legacy `logprobs` of a streamed completion, its chunks' lists joined."""
    code, _, raw = d.request("POST", "/v1/completions", {**body, "stream": True})
    assert code == 200, raw
    joined: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:])["choices"]:
                for key, values in (choice.get("logprobs") or {}).items():
                    joined[key] += values
    return joined


def _same_logprobs(got: dict, expected: dict) -> None:
    assert got["tokens"] == expected["tokens"] and got["text_offset"] == expected["text_offset"]
    assert got["token_logprobs"] == pytest.approx(expected["token_logprobs"], abs=1e-5)
    for top, top_expected in zip(got["top_logprobs"], expected["top_logprobs"], strict=True):
        assert list(top) == list(top_expected) and list(top.values()) == pytest.approx(list(top_expected.values()),
                                                                                       abs=1e-5)


def test_a_forwarding_daemon_passes_log_probabilities_on(proxy, upstream) -> None:
    """At temperature 0 the forwarding daemon answers `logprobs` with the token log-probabilities
    and best alternatives its upstream gives directly (completions plain and streamed, chat); the
    upstream names tokens `token_id:N` when asked, as vLLM does."""
    completion = {"model": "smollm2-135m", "prompt": "def fibonacci(n):\n", "max_tokens": 12, "temperature": 0,
                  "logprobs": 3}
    direct = _post(upstream, "/v1/completions", completion)["choices"][0]["logprobs"]
    assert len(direct["tokens"]) == 12 and all(len(top) == 3 for top in direct["top_logprobs"])
    # greedy: each token is its own best alternative
    assert direct["token_logprobs"] == [max(top.values()) for top in direct["top_logprobs"]]
    _same_logprobs(_post(proxy, "/v1/completions", completion)["choices"][0]["logprobs"], direct)
    _same_logprobs(_streamed_logprobs(proxy, completion), direct)
    _same_logprobs(_streamed_logprobs(upstream, completion), direct)

    by_id = _post(upstream, "/v1/completions", {**completion, "return_tokens_as_token_ids": True})["choices"][0]
    assert all(t.startswith("token_id:") and t[9:].isdigit() for t in by_id["logprobs"]["tokens"])
    assert by_id["logprobs"]["token_logprobs"] == direct["token_logprobs"]
    assert by_id["logprobs"]["text_offset"] == direct["text_offset"]

    chat = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is a Python list?"}],
            "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    direct_chat = _post(upstream, "/v1/chat/completions", chat)["choices"][0]["logprobs"]["content"]
    forwarded_chat = _post(proxy, "/v1/chat/completions", chat)["choices"][0]["logprobs"]["content"]
    assert len(direct_chat) == 8
    assert [e["token"] for e in forwarded_chat] == [e["token"] for e in direct_chat]
    assert [e["logprob"] for e in forwarded_chat] == pytest.approx([e["logprob"] for e in direct_chat], abs=1e-5)
    assert [[t["token"] for t in e["top_logprobs"]] for e in forwarded_chat] == \
        [[t["token"] for t in e["top_logprobs"]] for e in direct_chat]


def test_a_forwarding_daemon_says_when_its_upstream_is_gone(proxy, upstream) -> None:
    """Once the upstream stops, a request to the forwarding daemon is answered 502 with the reason."""
    upstream.stop()
    code, _, raw = proxy.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": "x", "max_tokens": 2})
    assert code == 502, raw
    assert "cannot reach the server at " + upstream.url in json.loads(raw)["error"]["message"]
