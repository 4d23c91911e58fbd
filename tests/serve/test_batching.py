"""Continuous batching in the daemon on the native backend: requests decoded together get what
they get alone, never more at once than the slots, and clients that leave free their slot."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import start_daemon
from tests.serve.test_scheduling import LONG, open_stream

SLOTS = 4
KV_CACHE_MB = 64


@pytest.fixture(scope="module")
def native_daemon(serve_env):
    d = start_daemon(serve_env(), "--backend", "native", "--slots", str(SLOTS), "--max-queue", "32",
                    "--kv-cache-mb", str(KV_CACHE_MB), timeout=240)
    yield d
    d.stop()


def _watch_busy(d, busy: list[int], done: threading.Event) -> None:
    while not done.is_set():
        busy.append(d.status()["busy_slots"])
        time.sleep(0.02)


def test_concurrent_requests_equal_alone_and_share_the_slots(native_daemon):
    """32 concurrent clients, each sending its chat or completion request (greedy or seeded
    sampling) twice, each get exactly the answer it gets alone; several run at once, never more
    than the slots."""
    d = native_daemon
    chats = [{"model": "smollm2-135m", "messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
              "max_tokens": 16, "temperature": 0 if i % 2 else 0.8, "seed": 40 + i} for i in range(6)]
    completions = [{"model": "smollm2-135m", "prompt": f"def add_{i}(a, b):\n", "max_tokens": 12, "temperature": 0}
                   for i in range(2)]

    def ask(body):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        code, _, raw = d.request("POST", path, body, timeout=120)
        assert code == 200, raw
        choice = json.loads(raw)["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]

    bodies = chats + completions
    alone = [ask(b) for b in bodies]
    assert d.status()["slots"] == SLOTS
    busy: list[int] = []
    done = threading.Event()
    watcher = threading.Thread(target=_watch_busy, args=(d, busy, done))
    watcher.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            together = list(pool.map(lambda body: [ask(body), ask(body)], bodies * 4))
    finally:
        done.set()
        watcher.join()
    assert together == [[a, a] for a in alone * 4]
    assert busy and 2 <= max(busy) <= SLOTS
    assert d.wait_idle()["busy_slots"] == 0
    assert d.metric("assistant_kv_cache_capacity_tokens") == SLOTS * 1024
    assert 0 < d.metric("assistant_kv_cache_tokens") <= SLOTS * 1024


def test_disconnects_mid_stream_free_their_slots(native_daemon):
    """201 clients that hang up mid-stream, three at a time while another stream runs, each end
    their own generation at the next step; the other one finishes, and the daemon ends idle with
    every slot free and its memory where it was."""
    d = native_daemon
    before_cancel = d.metric("assistant_cancelled_generations_total")
    rss_before = d.status()["rss_bytes"]
    survivor: dict[str, object] = {}

    def full_answer():
        body = {"model": "smollm2-135m", "prompt": "def fibonacci(n):\n", "max_tokens": 300, "temperature": 0,
                "stop_token_ids": []}
        survivor["code"], _, raw = d.request("POST", "/v1/completions", body, timeout=300)
        survivor["usage"] = json.loads(raw)["usage"]

    t = threading.Thread(target=full_answer)
    t.start()
    rounds = 67
    for round_ in range(rounds):
        socks = [open_stream(d, {**LONG, "seed": 10 * round_ + i}) for i in range(SLOTS - 1)]
        for s in socks:
            s.close()
    t.join(300)
    status = d.wait_idle(60)
    assert status["queued"] == 0 and status["busy_slots"] == 0
    assert d.metric("assistant_cancelled_generations_total") - before_cancel == rounds * (SLOTS - 1)
    assert status["rss_bytes"] < rss_before * 1.05 + (16 << 20), (rss_before, status["rss_bytes"])
    assert survivor["code"] == 200 and survivor["usage"]["completion_tokens"] > 0
    assert d.request("GET", "/health", token=None)[0] == 200


def test_a_prompt_that_comes_back_is_served_from_kept_blocks(native_daemon):
    """Requests one after another take the same slot; a prompt that comes back after another
    replaced it there is served from the KV blocks kept in the byte-capped cache: the usage says
    how many prompt tokens were cached, the answer is the same, and /metrics and /v1/status show
    the cache within its cap."""
    d = native_daemon
    doc = '"""Parse the options of a small command-line tool and report errors clearly."""\n'
    first = {"model": "smollm2-135m", "prompt": doc + "import argparse\n\ndef parse(argv):\n", "max_tokens": 8,
             "temperature": 0}
    other = {"model": "smollm2-135m", "prompt": "class Matrix:\n    def __init__(self, rows, cols):\n" * 3,
             "max_tokens": 8, "temperature": 0}

    def ask(body):
        code, _, raw = d.request("POST", "/v1/completions", body, timeout=120)
        assert code == 200, raw
        answer = json.loads(raw)
        return answer["choices"][0]["text"], answer["usage"]

    text, usage = ask(first)
    ask(other)
    again, usage_again = ask(first)
    assert again == text
    prompt_tokens = usage_again["prompt_tokens"]
    assert prompt_tokens == usage["prompt_tokens"] and prompt_tokens > 16
    assert usage_again["prompt_tokens_details"]["cached_tokens"] == (prompt_tokens - 1) // 16 * 16
    cap = d.metric("assistant_kv_kept_capacity_bytes")
    assert (KV_CACHE_MB - 1) << 20 < cap <= KV_CACHE_MB << 20  # --kv-cache-mb, in whole blocks
    assert 0 < d.metric("assistant_kv_kept_bytes") <= cap
    kv = d.status()["kv_cache"]
    assert kv["kept_cap_bytes"] == cap and 0 < kv["kept_bytes"] <= cap and kv["slots_bytes"] > 0
