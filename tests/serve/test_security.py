"""The daemon is open only to its user: loopback Host and Origin, bearer token, JSON bodies, size caps."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys

import pytest

from tests.serve.conftest import MODEL_ARGS

ROUTES = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/status", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/chat/completions", {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 1, "temperature": 0}),
    ("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": "x = ", "max_tokens": 1, "temperature": 0}),
]
HOSTS = ["localhost", "127.0.0.1", "[::1]", "evil.example"]
ORIGINS = [None, "http://evil.example"]
TOKENS = [None, "wrong-token", "right"]


@pytest.mark.parametrize("token", TOKENS, ids=["no-token", "wrong-token", "right-token"])
@pytest.mark.parametrize("origin", ORIGINS, ids=["no-origin", "evil-origin"])
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("method,path,body", ROUTES, ids=[r[1] for r in ROUTES])
def test_security_matrix(daemon, method, path, body, host, origin, token):
    """Only a loopback Host, no foreign Origin and the right token (except /health) get through; no CORS ever."""
    headers = {"Host": f"{host}:{daemon.port}"}
    if origin:
        headers["Origin"] = origin
    code, resp_headers, raw = daemon.request(method, path, body, headers=headers, token=token)
    if host == "evil.example" or origin:
        expected = 403
    elif path == "/health" or token == "right":
        expected = 200
    else:
        expected = 401
    assert code == expected, raw
    assert not any(h.startswith("access-control-") for h in resp_headers)
    if code != 200:
        assert "message" in json.loads(raw)["error"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_posts_need_json_content_type(daemon, path, ctype):
    """A POST that is not application/json (what a browser form or no-cors fetch sends) is 415."""
    body = json.dumps(ROUTES[-1][2]).encode()
    code, _, raw = daemon.request("POST", path, body, headers={"Content-Type": ctype or ""})
    assert code == 415, raw
    assert json.loads(raw)["error"]["code"] == "unsupported_media_type"


def test_body_over_the_cap_is_413(daemon):
    """A body over the size cap is refused with 413 before it is parsed."""
    big = {"model": "smollm2-135m", "prompt": "a" * (2 << 20), "max_tokens": 1}
    code, _, raw = daemon.request("POST", "/v1/completions", big)
    assert code == 413, raw[:200]
    assert daemon.request("GET", "/health", token=None)[0] == 200


def test_max_tokens_is_capped(tight_daemon):
    """Asking for a billion tokens is accepted but capped (here at 4)."""
    code, _, raw = tight_daemon.request("POST", "/v1/completions", {"model": "smollm2-135m", "prompt": "x",
                                                                    "max_tokens": 10**9, "temperature": 0})
    assert code == 200, raw
    assert json.loads(raw)["usage"]["completion_tokens"] <= 4


def test_token_file_is_private(daemon):
    """The token file is the user's alone (0600) and names this daemon's pid and port."""
    mode = stat.S_IMODE(daemon.token_file.stat().st_mode)
    assert mode == 0o600
    info = json.loads(daemon.token_file.read_text())
    assert info["pid"] == daemon.proc.pid and info["port"] == daemon.port and len(info["token"]) >= 32


def test_public_bind_without_token_refuses_to_start(serve_env):
    """--host 0.0.0.0 without --token exits 1 with one line, before loading anything."""
    r = subprocess.run([sys.executable, "-m", "assistant.server", "serve", "--host", "0.0.0.0", *MODEL_ARGS],
                       env=serve_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--token" in lines[0], r.stderr


def test_port_in_use_is_one_line(serve_env):
    """A port already taken gives a one-line error, not a traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "assistant.server", "serve", "--port", str(port), *MODEL_ARGS],
                           env=serve_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"assistant: error: port {port} on 127.0.0.1 is in use; choose another with --port"


def test_unknown_route_and_wrong_method_are_json_errors(daemon):
    """An unknown route is 404 and a wrong method 405, both OpenAI-shaped; without the token, 401 first."""
    code, _, raw = daemon.request("GET", "/v1/nope")
    assert code == 404 and json.loads(raw)["error"]["message"]
    code, _, raw = daemon.request("GET", "/v1/chat/completions")
    assert code == 405 and json.loads(raw)["error"]["message"]
    assert daemon.request("GET", "/v1/nope", token=None)[0] == 401
