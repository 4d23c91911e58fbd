"""The Backend protocol over a running `assistant serve`, so that the editor and the terminal share
the daemon's model instead of loading their own.

`load_model(..., use_daemon=True)` hands out a `DaemonBackend` when a live daemon serves the
same model file. It is the remote backend (engine.remote) pointed at the daemon the token file
names: its bearer token, a loopback Host header, prompts always as token ids counted with the
file's own vocabulary, and the model's context as `/v1/status` gives it. The daemon rebuilds
grammar constraints from the same file, so tool calls decoded under a grammar go through it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.client import DaemonInfo
from engine.remote import Endpoint, RemoteBackend


class DaemonBackend(RemoteBackend):
    """One daemon's model, reached over HTTP."""

    name = "daemon"

    def __init__(self, info: DaemonInfo, path: Path, status: dict[str, Any], *, timeout: float = 600.0) -> None:
        self.info = info
        endpoint = Endpoint(info.url, api_key=info.token, headers={"Host": f"127.0.0.1:{info.port}"},
                            label=f"the daemon at {info.url}")
        super().__init__(endpoint, path, model=str(status["model"]), n_ctx=int(status["context_length"]),
                         prompt="tokens", grammars=status.get("grammars", ()),
                         architecture=str(status.get("architecture") or ""),
                         n_ctx_train=int(status.get("n_ctx_train") or status["context_length"]), timeout=timeout)
        self.served_by = str(status.get("backend") or "")
