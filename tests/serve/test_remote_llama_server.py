"""The remote backend against a server we did not write: llama-cpp-python's own OpenAI-compatible
server (`llama_cpp.server`, the `server` extra of the llama-cpp-python the project already pins)
on SmolLM2-135M. It plays the part of the vLLM / llama-server / Ollama a user points `remote` at:
its model name, its refusal of a prompt of token ids (a 500), its log-probability shape and its
stream are its own."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine.backend import SamplingParams
from engine.remote import RemoteBackend
from tests.serve.conftest import generate_then_cancel

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's server extra is not installed")

CHAT = "<|im_start|>user\nWhat is a Python list?<|im_end|>\n<|im_start|>assistant\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(smollm2_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path), "--model_alias", "smol",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"llama_cpp.server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("llama_cpp.server did not start in time") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def remote(llama_server: str, smollm2_path: Path):
    backend = RemoteBackend.connect(llama_server, smollm2_path)
    yield backend
    backend.close()


def _server_answer(url: str, prompt: str, max_tokens: int) -> str:
    """What the server writes itself for a text prompt at temperature 0."""
    body = json.dumps({"model": "smol", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["text"]


def test_model_and_context_come_from_the_server(remote) -> None:
    """The model's name is the server's alias; the context is the file's (this server does not say
    its own)."""
    assert remote.model_name == "smol"
    assert remote.summary.n_ctx > 0


def test_refused_token_ids_fall_back_to_text_and_answer_as_the_server(remote, llama_server: str) -> None:
    """This server takes only text prompts (a list of ids gets a 500 listing validation errors):
    auto mode switches to text, and the streamed greedy answer is the one the server gives to the
    same text asked directly."""
    prompt = remote.tokenize(CHAT, add_special=True, parse_special=True)
    events = list(remote.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24)))
    assert remote.prompt_mode == "text"
    text = "".join(e.text for e in events)
    assert text and text == _server_answer(llama_server, CHAT, 24)
    assert events[-1].finish_reason in ("length", "stop")
    assert 0 < events[-1].timings.generated_tokens <= 24  # the server's count: its stream carries text only


def test_log_probabilities_in_this_servers_shape(remote) -> None:
    """The streamed tokens come with their log-probabilities and best alternatives, read from this
    server's answer; at temperature 0 each token is its row's best."""
    prompt = remote.tokenize("def fibonacci(n):\n", add_special=False)
    events = [e for e in remote.generate(prompt, SamplingParams(temperature=0.0, max_tokens=6, logprobs=3))
              if e.token is not None]
    assert events
    for e in events:
        assert e.logprob is not None and e.logprob <= 0.0
        assert e.top_logprobs and len(e.top_logprobs) <= 3
        assert e.top_logprobs[0][0] == e.token
        assert abs(e.top_logprobs[0][1] - e.logprob) < 1e-4


def test_cancel_ends_the_answer_early(remote) -> None:
    """Cancelling mid-stream ends the answer there, as with our own daemon."""
    got = generate_then_cancel(remote, remote.tokenize("1, 2, 3, 4, 5,", add_special=False))
    assert got[-1].finish_reason == "cancelled" and len(got) < 40
