"""The `assistant serve`, `assistant status` and `assistant stop` commands.

`add_commands()` puts them on the CLI's subparsers; `python -m assistant.server` runs the same
commands on their own (the background daemon is started that way). Errors a person can meet
(port in use, a public bind without a token, no daemon running) become the CLI's `UsageError`,
so they are one line on stderr. uvicorn and the app are imported only by `serve`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from assistant.client import DEFAULT_PORT, DaemonClient, DaemonError, find_daemon
from assistant.settings import Settings, state_dir

Command = Callable[[argparse.Namespace, Settings], int]


def _one_line(func: Command) -> Command:
    """Report the daemon's errors the way the CLI reports everything else."""
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from assistant.cli import UsageError
        from assistant.server.daemon import ServeError

        try:
            return func(args, settings)
        except (ServeError, DaemonError) as e:
            raise UsageError(str(e)) from None
    return run


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.server.daemon import serve, start_detached

    if args.detach:
        argv = ["--host", args.host, "--port", str(args.port), "--max-queue", str(args.max_queue),
                "--max-tokens-cap", str(args.max_tokens_cap), "--slots", str(args.slots)]
        for flag in ("token", "model", "backend", "remote_url", "threads", "context_length", "kv_cache_mb"):
            value = getattr(args, flag, None)
            if value is not None:
                argv += [f"--{flag.replace('_', '-')}", str(value)]
        log_path = state_dir() / "serve.log"
        info = start_detached(argv, log_path=log_path)
        print(info.url)
        return 0
    if args.slots < 1:
        from assistant.cli import UsageError

        raise UsageError("--slots must be at least 1")
    return serve(settings, host=args.host, port=args.port, token=args.token, max_queue=args.max_queue,
                 max_tokens_cap=args.max_tokens_cap, slots=args.slots)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    info = find_daemon()
    if info is None:
        if args.json:
            print(json.dumps({"running": False}))
            return 1
        raise DaemonError("no daemon is running; start one with: assistant serve --detach")
    status: dict[str, Any] = {"running": True, "url": info.url, **DaemonClient(info).status()}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    rows = [("url", status["url"]), ("model", f"{status['model']} ({status['model_path']})"),
            ("backend", status["backend"]), ("pid", status["pid"]), ("uptime", f"{status['uptime_s']:.0f} s"),
            ("requests", status["requests"]), ("queue", f"{status['queued']} waiting, "
                                                         f"{status['busy_slots']}/{status['slots']} slots busy"),
            ("memory", _human_bytes(status["rss_bytes"])), ("token file", status["token_file"])]
    kv = status.get("kv_cache")
    if kv:
        kept = f"{_human_bytes(kv['kept_bytes'])} of {_human_bytes(kv['kept_cap_bytes'])}"
        rows.insert(-1, ("KV cache", f"{_human_bytes(kv['slots_bytes'])} in slots, {kept} kept from earlier requests"))
    for key, value in rows:
        print(f"{key:>10}: {value}")
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    info = find_daemon()
    if info is None:
        raise DaemonError("no daemon is running")
    t0 = time.monotonic()
    if not DaemonClient(info).stop(timeout=args.timeout):
        raise DaemonError(f"the daemon (pid {info.pid}) is still running after {args.timeout:.0f} s")
    print(f"stopped the daemon (pid {info.pid}) in {time.monotonic() - t0:.1f} s")
    return 0


def add_commands(sub: argparse._SubParsersAction, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add serve, status and stop to the CLI's subparsers."""
    c = sub.add_parser("serve", help="run the OpenAI-compatible daemon that holds the model")
    model_flags(c)
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    c.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    c.add_argument("--token", help="the bearer token clients must send (default: a random one in the token file)")
    c.add_argument("--detach", action="store_true", help="start in the background and print the URL once it answers")
    c.add_argument("--max-queue", type=int, default=16, help="requests that may wait; more are answered 429")
    c.add_argument("--max-tokens-cap", type=int, default=2048, help="the most tokens one answer may ask for")
    c.add_argument("--slots", type=int, default=4,
                   help="requests decoded together on the native backend, each with its own KV cache, or in "
                        "flight at once to a remote server (default 4; llama.cpp runs one at a time)")
    c.add_argument("--kv-cache-mb", type=int,
                   help="MiB of KV kept from earlier requests for prompts that start the same way (blocks "
                        "on the native backend, whole sequences on llama.cpp; default 256, 0 turns it off), "
                        "beyond the slots' own KV")
    c.set_defaults(func=_one_line(cmd_serve))

    c = sub.add_parser("status", help="whether the daemon runs, and its model, port, pid, uptime and memory")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_one_line(cmd_status))

    c = sub.add_parser("stop", help="stop the daemon (in-flight requests finish first)")
    c.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for it to exit")
    c.set_defaults(func=_one_line(cmd_stop))
