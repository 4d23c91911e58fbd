"""The daemon's front door: only its user, only from this machine, only JSON.

Checked before any route runs, in this order: the Host header must name the loopback
(127.0.0.1, localhost, [::1], any port) or the host the daemon was bound to, else 403, which
stops DNS-rebinding pages; an Origin header, if any, must be a loopback origin too (403); every
route except `/health` needs `Authorization: Bearer <token>`, compared in constant time (401);
a POST must say `Content-Type: application/json` (415) and carry at most `max_body` bytes
(413). No CORS header is ever written, so a browser never lets another site read an answer.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/health"})


def host_name(host_header: str) -> str | None:
    """The name in a Host header without its port ('[::1]:8765' → '::1'), or None if malformed."""
    h = host_header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not _is_port(h[end + 1 :])):
            return None
        return h[1:end]
    name, sep, port = h.partition(":")
    if sep and not _is_port(":" + port):
        return None
    return name or None


def _is_port(s: str) -> bool:
    return s.startswith(":") and s[1:].isdigit() and len(s) <= 6


def error_body(status: int, message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class Guard:
    """ASGI middleware that refuses requests that are not from the daemon's own user."""

    def __init__(self, app: ASGIApp, *, token: str, extra_hosts: frozenset[str] = frozenset(),
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self._token = token.encode()
        self._hosts = LOOPBACK_NAMES | {h.lower() for h in extra_hosts}
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(scope, headers)
        if refusal is not None:
            status, message, kind, code = refusal
            await _answer(send, status, error_body(status, message, kind, code))
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str, str] | None:
        name = host_name(headers.get("host", ""))
        if name not in self._hosts:
            return 403, "the Host header must name this machine's loopback address", "permission_error", "bad_host"
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or (parts.hostname or "") not in self._hosts:
                return 403, "requests from other origins are refused", "permission_error", "bad_origin"
        path = scope["path"]
        if path not in OPEN_PATHS and not self._authorized(headers.get("authorization", "")):
            return 401, "a valid 'Authorization: Bearer <token>' header is required (see the daemon's token file)", \
                "authentication_error", "invalid_api_key"
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return 415, f"POST bodies must be application/json, not '{ctype or 'none'}'", \
                    "invalid_request_error", "unsupported_media_type"
        if self._draining() and path not in OPEN_PATHS:
            return 503, "the daemon is shutting down", "server_error", "shutting_down"
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
