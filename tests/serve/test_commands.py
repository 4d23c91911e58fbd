"""`serve --detach`, `status [--json]` and `stop`, run as a person would (here via `python -m assistant.server`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from tests.serve.conftest import MODEL_ARGS


def run(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", "assistant.server", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_detach_status_stop(serve_env):
    """--detach prints the URL once /health answers; status reports the daemon; stop ends it and its token file."""
    env = serve_env()
    r = run(env, "serve", "--detach", "--port", "0", *MODEL_ARGS)
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200

    r = run(env, "status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["running"] and status["url"] == url and status["model"] == "smollm2-135m"
    assert status["backend"] == "llama" and status["rss_bytes"] > 10 << 20 and status["uptime_s"] >= 0
    token_file = status["token_file"]
    assert token_file.startswith(env["XDG_RUNTIME_DIR"]) and os.path.exists(token_file)
    pid = status["pid"]

    r = run(env, "status")
    assert r.returncode == 0 and "smollm2-135m" in r.stdout and str(pid) in r.stdout

    r = run(env, "stop")
    assert r.returncode == 0, r.stderr
    assert f"pid {pid}" in r.stdout
    time.sleep(0.2)
    assert not os.path.exists(token_file)
    r = run(env, "status", "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == {"running": False}
    r = run(env, "stop")
    assert r.returncode == 1 and r.stderr.strip() == "assistant: error: no daemon is running"


def test_second_daemon_is_refused(daemon):
    """Starting a daemon where one already answers is a one-line error naming the running one."""
    r = run(daemon.env, "serve", "--port", "0", *MODEL_ARGS, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("assistant: error: a daemon already runs at ")
