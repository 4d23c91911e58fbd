"""Scheduling in the daemon: disconnects cancel, a full queue answers 429, SIGTERM drains, seeds are stable."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import start_daemon

LONG = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 400, "temperature": 0, "stream": True}


def open_stream(d, body: dict, path: str = "/v1/chat/completions", events: int = 2) -> socket.socket:
    """Send a streaming request by hand; return the socket once `events` data chunks are in.

    A chat stream's first chunk (the role) is sent before the model runs; the second one is
    the first token.
    """
    s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
    payload = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost:{d.port}\r\nAuthorization: Bearer {d.token}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    got = b""
    while got.count(b"data: ") < events:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return s


def test_disconnects_cancel_and_leave_the_daemon_idle(daemon):
    """20 clients that hang up mid-stream each stop their generation within a few tokens; the daemon ends idle."""
    before_gen = daemon.metric("assistant_generated_tokens_total")
    before_cancel = daemon.metric("assistant_cancelled_generations_total")
    for i in range(20):
        s = open_stream(daemon, {**LONG, "seed": i})
        s.close()
    status = daemon.wait_idle()
    assert status["queued"] == 0 and status["busy_slots"] == 0
    assert daemon.metric("assistant_cancelled_generations_total") - before_cancel == 20
    generated = daemon.metric("assistant_generated_tokens_total") - before_gen
    assert generated < 20 * 40, generated  # each asked for 400
    assert daemon.request("GET", "/health", token=None)[0] == 200


@pytest.fixture(scope="module")
def queue_daemon(serve_env):
    """A daemon whose queue holds two waiting requests."""
    d = start_daemon(serve_env(), "--max-queue", "2")
    yield d
    d.stop()


def _wait_queued(d, n: int) -> None:
    deadline = time.monotonic() + 30
    while d.status()["queued"] != n:
        assert time.monotonic() < deadline, d.status()
        time.sleep(0.05)


def test_full_queue_answers_429_at_once(queue_daemon):
    """With one request running and two waiting, the next one is refused with 429 without waiting."""
    d = queue_daemon
    running = open_stream(d, LONG)
    waiting = [open_stream(d, {**LONG, "seed": i}, events=1) for i in range(2)]
    try:
        _wait_queued(d, 2)
        t0 = time.monotonic()
        code, _, raw = d.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": "x", "max_tokens": 1})
        assert code == 429, raw
        assert time.monotonic() - t0 < 2.0
        assert json.loads(raw)["error"]["code"] == "queue_full"
    finally:
        for s in (running, *waiting):
            s.close()
    assert d.wait_idle()["busy_slots"] == 0


def test_completions_go_before_chat(queue_daemon):
    """While the model is busy, a completion queued after a chat still runs first."""
    d = queue_daemon
    order: list[str] = []

    def ask(path, body, tag):
        code, _, raw = d.request("POST", path, body)
        assert code == 200, raw
        order.append(tag)

    running = open_stream(d, LONG)
    chat = threading.Thread(target=ask, args=("/v1/chat/completions", {
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, "chat"))
    completion = threading.Thread(target=ask, args=("/v1/completions", {
        "model": "smollm2-135m", "prompt": "import", "max_tokens": 3}, "completion"))
    try:
        chat.start()
        _wait_queued(d, 1)
        completion.start()
        _wait_queued(d, 2)
    finally:
        running.close()
    chat.join(60)
    completion.join(60)
    assert order == ["completion", "chat"]


def test_same_seed_same_answer_under_concurrency(daemon):
    """Concurrent clients at temperature 0 with a seed get exactly the answer each gets alone; one slot is busy at most."""
    bodies = [{"model": "smollm2-135m", "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
               "max_tokens": 10, "temperature": 0, "seed": 42} for i in range(6)]

    def ask(body):
        code, _, raw = daemon.request("POST", "/v1/chat/completions", body)
        assert code == 200, raw
        return json.loads(raw)["choices"][0]["message"]["content"]

    alone = [ask(b) for b in bodies]
    busy: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            busy.append(daemon.status()["busy_slots"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, bodies * 2))
    finally:
        done.set()
        watcher.join()
    assert together == alone * 2
    assert busy and max(busy) <= 1


def test_llama_backend_keeps_a_replaced_prompt_for_its_return(daemon):
    """On llama.cpp (one sequence of KV) a prompt that replaces a long one saves it first; when the
    first comes back, its tokens come from the saved state (usage.prompt_tokens_details) and the
    answer is the one it gets with its prompt already in the cache."""
    long_a = "def parse_options(argv):\n    options = {}\n" + "    options['k'] = argv.pop()\n" * 40
    long_b = "class Matrix:\n    def __init__(self, rows):\n" + "        self.rows.append(rows.pop())\n" * 40

    def ask(prompt):
        code, _, raw = daemon.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": prompt,
                                                                  "max_tokens": 8, "temperature": 0}, timeout=120)
        assert code == 200, raw
        answer = json.loads(raw)
        return answer["choices"][0]["text"], answer["usage"]

    ask(long_a)
    held, _ = ask(long_a)
    ask(long_b)
    again, usage = ask(long_a)
    assert again == held
    assert usage["prompt_tokens"] > 256 and usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    assert daemon.status()["kv_cache"]["kept_bytes"] > 0
    assert daemon.metric("assistant_kv_kept_capacity_bytes") == 256 << 20


def test_sigterm_drains_then_exits(serve_env):
    """SIGTERM: the token file goes at once (clients stop finding the daemon), the stream in
    flight finishes with [DONE], new requests get 503, the process exits 0."""
    d = start_daemon(serve_env())
    try:
        s = open_stream(d, {**LONG, "max_tokens": 60})
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        code, _, raw = d.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": "x", "max_tokens": 1})
        assert code == 503, raw
        assert json.loads(raw)["error"]["code"] == "shutting_down"
        assert not d.token_file.exists() and d.proc.poll() is None  # gone while the daemon still drains
        rest = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
            if b"data: [DONE]" in rest:
                break
        s.close()
        assert b'"finish_reason": "length"' in rest or b'"finish_reason": "stop"' in rest
        assert b"data: [DONE]" in rest
        assert d.proc.wait(timeout=60) == 0
    finally:
        d.stop()
