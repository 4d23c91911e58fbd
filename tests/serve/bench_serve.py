"""Benchmark (not a test): aggregate decode tokens/s and time to first token at N concurrent streams,
for `assistant serve` next to llama-cpp-python's own `llama_cpp.server` on the same GGUF.

Run: python -m tests.serve.bench_serve --model PATH [--streams 1 4] [--tokens 32] [--threads 1]
                                        [--backend llama|native] [--slots 8]
Each server gets the same streamed /v1/completions requests (temperature 0, distinct prompts),
after a warm-up round at the most streams (8 tokens each, not recorded: first-use allocations
and page faults of the batched buffers otherwise land in whichever level runs first at that size).
With `--backend native` our daemon decodes up to `--slots` requests together (continuous
batching); llama_cpp.server runs one at a time. Each level also reports where the CPU went, from
/proc (Linux): the server's main thread (its event loop: HTTP, JSON, server-sent events), its
other threads (the decoding), and this client process (parsing the streams), in seconds of CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port: int, path: str, headers: dict[str, str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path, headers=headers)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server on {port} did not come up")


def stream_once(port: int, headers: dict[str, str], model: str, prompt: str, tokens: int) -> tuple[float, int, float]:
    """(time to first token, chunks received, total seconds) for one streamed completion."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True})
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=body, headers={**headers, "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    ttft, n = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        text = json.loads(line[6:])["choices"][0].get("text")
        if text:
            n += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    return ttft or 0.0, n, time.perf_counter() - t0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`; {} where /proc is not there."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def run_level(port, headers, model, streams: int, tokens: int, tag: str = "Task", pid: int | None = None) -> dict[str, float]:
    prompts = [f"# {tag} {i}: write a Python function that prints the numbers from 1 to {100 + i}.\n" for i in range(streams)]
    before = thread_cpu(pid) if pid else {}
    client0 = time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda p: stream_once(port, headers, model, p, tokens), prompts))
    wall = time.perf_counter() - t0
    client = time.process_time() - client0
    after = thread_cpu(pid) if pid else {}
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    ttfts = sorted(r[0] for r in results)
    p99 = statistics.quantiles(ttfts, n=100, method="inclusive")[98] if len(ttfts) > 1 else ttfts[0]
    return {"streams": streams, "tokens": sum(r[1] for r in results), "wall_s": round(wall, 2),
            "aggregate_tok_s": round(sum(r[1] for r in results) / wall, 1),
            "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_p99_s": round(p99, 3),
            "ttft_max_s": round(ttfts[-1], 3),
            "cpu_s": {"server_main_thread": round(spent.get(pid, 0.0), 2),
                      "server_other_threads": round(sum(v for t, v in spent.items() if t != pid), 2),
                      "client": round(client, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF path")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="llama", choices=("llama", "native"))
    ap.add_argument("--slots", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as home:
        run = Path(home) / "run"
        run.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "XDG_STATE_HOME": home, "XDG_CONFIG_HOME": home}
        ours = subprocess.Popen([sys.executable, "-m", "assistant.server", "serve", "--port", "0", "--model",
                                 args.model, "--backend", args.backend, "--threads", str(args.threads),
                                 "--context-length", "1024", "--slots", str(args.slots),
                                 "--max-queue", str(max(16, max(args.streams)))], env=env)
        token_file = run / "assistant" / "daemon.json"
        while not token_file.exists():
            time.sleep(0.2)
        info = json.loads(token_file.read_text())
        auth = {"Authorization": f"Bearer {info['token']}", "Host": "127.0.0.1"}
        wait_health(info["port"], "/health", auth)
        model = info["model"]
        run_level(info["port"], auth, model, max(args.streams), 8, "Warm-up")  # warm-up, not recorded
        for n in args.streams:
            rows.append({"server": f"assistant serve ({args.backend})", **run_level(info["port"], auth, model, n,
                                                                                   args.tokens, pid=ours.pid)})
        ours.send_signal(signal.SIGTERM)
        ours.wait()
        port = free_port()
        ref = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--n_ctx", "1024",
                                "--n_threads", str(args.threads), "--host", "127.0.0.1", "--port", str(port),
                                # Its default interrupts the running stream when another request arrives.
                                "--interrupt_requests", "False"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_health(port, "/v1/models", {})
            run_level(port, {}, args.model, max(args.streams), 8, "Warm-up")  # warm-up, not recorded
            for n in args.streams:
                rows.append({"server": "llama_cpp.server", **run_level(port, {}, args.model, n, args.tokens, pid=ref.pid)})
        finally:
            ref.terminate()
            ref.wait()
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
