"""How the LSP, the TUI and the CLI find and reach a running `assistant serve`.

The daemon writes `daemon.json` (mode 0600) in the user runtime dir: its URL, port, pid and
bearer token. `find_daemon()` reads it and checks that the pid is alive; `DaemonClient` makes
authenticated JSON requests with the standard library only, so importing this module costs
nothing when no daemon runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs


# Where `assistant serve` listens unless told otherwise.
DEFAULT_PORT = 8765


class DaemonError(Exception):
    """The daemon cannot be reached, or answered with an error; the message says which."""


def token_file_path() -> Path:
    """Where the running daemon's address and token are written."""
    return Path(platformdirs.user_runtime_dir("assistant")) / "daemon.json"


@dataclass(frozen=True)
class DaemonInfo:
    """What the token file says about the running daemon."""

    url: str
    host: str
    port: int
    pid: int
    token: str
    model: str
    started: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that pid now
        return False
    return True


def find_daemon(*, check_alive: bool = True) -> DaemonInfo | None:
    """The daemon the token file names, or None when there is none (or its process is gone)."""
    try:
        data = json.loads(token_file_path().read_text())
        info = DaemonInfo(**{k: data[k] for k in DaemonInfo.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if check_alive and not _alive(info.pid):
        return None
    return info


def health_ok(info: DaemonInfo, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{info.url}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


class DaemonClient:
    """Authenticated JSON requests to the daemon the token file names."""

    def __init__(self, info: DaemonInfo, timeout: float = 10.0) -> None:
        self.info = info
        self.timeout = timeout

    @classmethod
    def connect(cls) -> DaemonClient:
        info = find_daemon()
        if info is None:
            raise DaemonError(f"no daemon is running (no live one in {token_file_path()}); start one with: assistant serve")
        return cls(info)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (for `openai.OpenAI(base_url=..., api_key=info.token)`)."""
        return f"{self.info.url}/v1"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.info.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.info.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise DaemonError(f"the daemon answered {e.code}: {message}") from None
        except (OSError, urllib.error.URLError) as e:
            raise DaemonError(f"cannot reach the daemon at {self.info.url}: {e}") from None

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def stop(self, timeout: float = 150.0) -> bool:
        """SIGTERM the daemon and wait for it to exit; False if it still runs after `timeout`."""
        try:
            os.kill(self.info.pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.info.pid):
                return True
            time.sleep(0.1)
        return False
