"""A real `assistant serve` on 127.0.0.1 for the daemon tests: a subprocess in an isolated home.

Each daemon gets its own runtime dir (so its own token file) and port 0 (a free port it picks
and writes to the token file). platformdirs ignores an XDG_RUNTIME_DIR that is not mode 0700,
so the dirs are made that way.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODEL_ARGS = ["--model", "smollm2-135m", "--backend", "llama", "--threads", "1", "--context-length", "1024"]


@dataclass
class Daemon:
    """A running daemon: its process, the token file's contents and the environment it runs in."""

    proc: subprocess.Popen
    env: dict[str, str]
    token_file: Path
    info: dict[str, Any]

    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def token(self) -> str:
        return self.info["token"]

    @property
    def url(self) -> str:
        return self.info["url"]

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                token: str | None = "right", timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request with full control of the headers (Host included)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Host": f"127.0.0.1:{self.port}"}
        if token is not None:
            h["Authorization"] = f"Bearer {self.token if token == 'right' else token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, _, body = self.request("GET", "/v1/status")
        assert code == 200, body
        return json.loads(body)

    def metric(self, name: str) -> float:
        """The sum of a Prometheus metric's samples (all labels)."""
        code, _, body = self.request("GET", "/metrics")
        assert code == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_idle(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            if (s["queued"] == 0 and s["busy_slots"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def daemon_env(cli_env: dict[str, str], root: Path) -> dict[str, str]:
    env = dict(cli_env)
    run = root / "run"
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    env["XDG_RUNTIME_DIR"] = str(run)
    return env


def start_daemon(env: dict[str, str], *extra: str, timeout: float = 120) -> Daemon:
    token_file = Path(env["XDG_RUNTIME_DIR"]) / "assistant" / "daemon.json"
    token_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "assistant.server", "serve", "--port", "0", *MODEL_ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}: {proc.stderr.read()}")
        if token_file.exists():
            try:
                info = json.loads(token_file.read_text())
            except ValueError:
                info = None
            if info and info["pid"] == proc.pid:
                d = Daemon(proc, env, token_file, info)
                if d.request("GET", "/health", token=None)[0] == 200:
                    return d
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the daemon did not start in time")


@pytest.fixture(scope="session")
def serve_env(cli_env: dict[str, str], smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Makes environments for daemons, one runtime dir each."""
    def make() -> dict[str, str]:
        return daemon_env(cli_env, tmp_path_factory.mktemp("daemon"))
    return make


@pytest.fixture(scope="session")
def daemon(serve_env) -> Daemon:
    """The shared daemon: SmolLM2-135M on llama.cpp, default limits."""
    d = start_daemon(serve_env(), "--max-queue", "16")
    yield d
    d.stop()


@pytest.fixture(scope="session")
def tight_daemon(serve_env) -> Daemon:
    """A daemon with a queue of one and answers capped at 4 tokens."""
    d = start_daemon(serve_env(), "--max-queue", "1", "--max-tokens-cap", "4")
    yield d
    d.stop()


def generate_then_cancel(backend, tokens: list[int], after: int = 3) -> list:
    """Stream up to 400 greedy tokens of `tokens` on `backend`, setting the cancel event once
    `after` events came; the events it yielded."""
    from engine.backend import SamplingParams

    cancel = threading.Event()
    got = []
    for ev in backend.generate(tokens, SamplingParams(temperature=0.0, max_tokens=400), cancel=cancel):
        got.append(ev)
        if len(got) == after:
            cancel.set()
    return got
