"""Starting and stopping the daemon: the socket, the token file, uvicorn, and SIGTERM.

The socket is bound before the model loads, so a port in use is one clear error at once. The
token file (`daemon.json` in the user runtime dir, mode 0600) holds the URL, port, pid and a
random token; clients (`assistant.client`) read it to find and reach the daemon, and it is
removed when the daemon starts draining or exits. SIGTERM (or Ctrl-C) drains: the token file
goes, new requests get 503, the ones accepted finish, then uvicorn stops.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from assistant.client import DEFAULT_PORT, DaemonInfo, find_daemon, health_ok, token_file_path
from assistant.settings import Settings

log = logging.getLogger(__name__)

# How long SIGTERM waits for accepted requests before stopping anyway.
DRAIN_TIMEOUT_S = 120.0


class ServeError(Exception):
    """The daemon cannot start as asked; the message says why, for a person."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port), or ServeError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is in use; choose another with --port") from None
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def write_token_file(info: DaemonInfo) -> Path:
    """Write the daemon's address and token where only this user can read them."""
    path = token_file_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info.to_json(), f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def remove_token_file(pid: int) -> None:
    """Remove the token file if it is still this process's."""
    path = token_file_path()
    info = find_daemon(check_alive=False)
    if info is not None and info.pid == pid:
        path.unlink(missing_ok=True)


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains the scheduler before stopping."""

    def __init__(self, config: uvicorn.Config, scheduler) -> None:
        super().__init__(config)
        self._scheduler = scheduler
        self._drain_started = False

    def handle_exit(self, sig: int, frame) -> None:
        if self._drain_started:  # a second signal: stop now
            super().handle_exit(sig, frame)
            return
        self._drain_started = True
        log.info("signal %d: draining (new requests get 503)", sig)
        self._scheduler.drain()
        # Clients look for a daemon through the token file: from now on they should not find
        # this one (they would get 503s), but start in-process or find the next daemon.
        remove_token_file(os.getpid())

        def wait_then_exit() -> None:
            if not self._scheduler.wait_idle(DRAIN_TIMEOUT_S):
                log.warning("requests still running after %.0f s; stopping anyway", DRAIN_TIMEOUT_S)
            # Let streams that just ended flush their last bytes before uvicorn closes connections.
            time.sleep(0.2)
            self.should_exit = True

        threading.Thread(target=wait_then_exit, name="assistant-drain", daemon=True).start()


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
          max_queue: int = 16, max_tokens_cap: int = 2048, max_body_bytes: int = 1 << 20, slots: int = 4) -> int:
    """Run the daemon in this process until SIGTERM; return the exit code. `slots` requests run
    together on the native backend (continuous batching) or are in flight at once to a remote
    server (which batches them); llama.cpp runs one at a time."""
    from assistant.loader import load_model
    from assistant.server.app import ServerState, create_app
    from assistant.server.metrics import Metrics
    from assistant.server.scheduler import Scheduler

    if not is_loopback(host) and not token:
        raise ServeError(f"--host {host} is reachable from other machines; give an explicit --token to serve there")
    running = find_daemon()
    if running is not None and health_ok(running):
        raise ServeError(f"a daemon already runs at {running.url} (pid {running.pid}); stop it with: assistant stop")
    sock = bind(host, port)
    port = sock.getsockname()[1]
    model = load_model(settings, n_slots=max(1, slots))
    decoder, workers = None, 1
    if model.backend.name == "native" and slots > 1:
        from engine.native import BatchDecoder

        decoder = BatchDecoder(model.backend)  # type: ignore[arg-type]
    elif model.backend.name == "remote":
        workers = max(1, slots)
        log.info("forwarding to %s, %d requests in flight at most",
                 model.backend.endpoint.url, workers)  # type: ignore[attr-defined]
    elif slots > 1:
        log.info("the %s backend runs one request at a time (--slots applies to the native backend)",
                 model.backend.name)
    metrics = Metrics()
    # Counted where the generation ends, so a stream whose client left is counted too.
    scheduler = Scheduler(model.backend, max_queue=max_queue, decoder=decoder, workers=workers,
                          on_finish=lambda job, ev: metrics.generation(ev.timings, ev.finish_reason))
    token = token or secrets.token_urlsafe(32)
    url_host = f"[{host.strip('[]')}]" if ":" in host else host
    info = DaemonInfo(url=f"http://{url_host}:{port}", host=host, port=port, pid=os.getpid(), token=token,
                      model=model.name, started=time.time())
    state = ServerState(model=model, settings=settings, token=token, scheduler=scheduler, metrics=metrics,
                        max_tokens_cap=max_tokens_cap, max_body_bytes=max_body_bytes, port=port, host=host)
    config = uvicorn.Config(create_app(state), log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5, server_header=False, date_header=False)
    server = _DrainingServer(config, scheduler)
    state.token_file = write_token_file(info)
    log.info("serving %s on %s (pid %d, token file %s)", model.name, info.url, info.pid, state.token_file)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        remove_token_file(os.getpid())
        scheduler.close()
        model.close()
        sock.close()
    return 0


def start_detached(argv: list[str], *, log_path: Path, timeout_s: float = 180.0) -> DaemonInfo:
    """Start `assistant serve ARGV` in the background and wait until its /health answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "assistant.server", "serve", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServeError(f"the daemon exited with code {code}: {_last_line(log_path)}")
        info = find_daemon()
        if info is not None and info.pid == proc.pid and health_ok(info):
            return info
        time.sleep(0.2)
    proc.terminate()
    raise ServeError(f"the daemon did not answer within {timeout_s:.0f} s (see {log_path})")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1].strip() if lines else "(no output)"
