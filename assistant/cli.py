"""The `assistant` command line: chat, complete, models, bench, config.

Answers go to stdout and nothing else does; errors a person can meet (a bad model file, an
unknown name, a bad setting, a prompt longer than the context, Ctrl-C) are one line on stderr
and a non-zero exit code, never a traceback. Everything else goes to the log file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assistant import __version__
from assistant.settings import Settings, SettingsError, config_path, load_settings

if TYPE_CHECKING:
    from assistant.tools import CodeIndexBuilder, SymbolIndex

log = logging.getLogger(__name__)


class UsageError(Exception):
    """The command line asks for something that cannot be done as written."""


# --- commands ------------------------------------------------------------------------------


def _sampling(settings: Settings, *, max_tokens: int | None = None, temperature: float | None = None):
    from engine.backend import SamplingParams

    return SamplingParams(
        temperature=settings.temperature if temperature is None else temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        min_p=settings.min_p,
        repeat_penalty=settings.repeat_penalty,
        seed=settings.seed,
        max_tokens=max_tokens or settings.max_tokens,
    )


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.loader import load_model
    from assistant.prompts import chat_prompt

    text = sys.stdin.read() if args.text == ["-"] else " ".join(args.text)
    if not text.strip():
        raise UsageError("nothing to say: give the message as arguments, or '-' to read it from stdin")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": text}
    ]
    model = load_model(settings)
    try:
        prompt = chat_prompt(model, messages)
        wrote_newline = True
        for ev in model.backend.generate(prompt, _sampling(settings)):
            if ev.text:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
                wrote_newline = ev.text.endswith("\n")
            if ev.timings is not None:
                t = ev.timings
                log.info(
                    "chat: %d prompt tokens (%d reused) at %.1f tok/s, %d generated at %.1f tok/s, finish=%s",
                    t.prompt_tokens, t.reused_tokens, t.prompt_tok_s, t.generated_tokens, t.decode_tok_s,
                    ev.finish_reason,
                )
                if args.stats:
                    print(
                        f"[{t.prompt_tokens} prompt tokens at {t.prompt_tok_s:.1f} tok/s, "
                        f"{t.generated_tokens} generated at {t.decode_tok_s:.1f} tok/s, "
                        f"first token after {t.ttft_s * 1000:.0f} ms, finish: {ev.finish_reason}]",
                        file=sys.stderr,
                    )
        if not wrote_newline:
            sys.stdout.write("\n")
    finally:
        model.close()
    return 0


def _parse_position(spec: str) -> tuple[Path, int, int]:
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise UsageError(f"'{spec}' is not FILE:LINE:COL (1-based line and column)")
    return Path(parts[0]), int(parts[1]), int(parts[2])


def cmd_complete(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.completion import complete, split_at, window
    from assistant.loader import load_model
    from assistant.prompts import fim_prompt

    path, line, col = _parse_position(args.position)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    try:
        cur = split_at(text, line, col)
    except ValueError as e:
        raise UsageError(f"{args.position}: {e}") from None
    model = load_model(settings)
    try:
        shown = window(cur)
        prompt, stops = fim_prompt(model, shown.prefix, shown.suffix, path=path.name)
        params = _sampling(settings, max_tokens=args.max_tokens, temperature=args.temperature or 0.0)
        params = type(params)(**{**params.__dict__, "stop": stops})
        multiline = {"auto": None, "always": True, "never": False}[args.multiline]
        result = complete(model.backend.generate(prompt, params), cur, multiline=multiline)
        sys.stdout.write(result.text + "\n")
    finally:
        model.close()
    return 0


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from models import catalog

    rows = []
    for m in catalog.BUNDLED:
        rows.append({"name": m.name, "title": m.title, "source": "bundled", "status": catalog.status(m, settings.cache_dir)})
    for name, path in settings.models.items():
        rows.append({"name": name, "title": str(path), "source": "settings",
                     "status": "ready" if Path(path).is_file() else "missing file"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "*" if r["name"] == settings.model else " "
        print(f"{mark} {r['name']:<{width}}  {r['status']:<24} {r['title']}")
    return 0


def cmd_models_info(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.loader import describe
    from models import catalog
    from models.gguf import read_gguf

    path = catalog.resolve(args.model or settings.model, settings.models, settings.cache_dir)
    with read_gguf(path) as gguf:
        info = describe(gguf, args.backend or settings.backend, remote_url=settings.remote.url)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} ×{v}" for k, v in value.items())
        print(f"{key:>15}: {value}")
    return 0


def cmd_models_verify(args: argparse.Namespace, settings: Settings) -> int:
    from models import catalog
    from models.gguf import GGUFError, read_gguf

    names = args.models or [m.name for m in catalog.BUNDLED]
    failed = 0
    for name in names:
        model = catalog.bundled(name)
        try:
            if model is not None:
                path, ok, got = catalog.verify(model, settings.cache_dir)
                if not ok:
                    raise catalog.ModelError(f"sha256 {got}, expected {model.sha256}")
            else:
                path = catalog.resolve(name, settings.models, settings.cache_dir)
            with read_gguf(path) as gguf:
                print(f"ok      {name}: {path} ({len(gguf.tensors)} tensors, {gguf.file_size:,} bytes)")
        except (catalog.ModelError, GGUFError) as e:
            failed += 1
            print(f"FAILED  {name}: {e}")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.bench import WORKLOADS, format_report, run_bench

    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise UsageError(f"unknown workload {unknown[0]!r} (choose from {', '.join(WORKLOADS)})")
    report = run_bench(
        settings,
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        runs=args.runs,
        reference=not args.no_reference and args.vs != "none",
        workloads=workloads,
        cold_start=args.cold_start,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_lsp(args: argparse.Namespace, settings: Settings) -> int:
    from lsp.server import create_server

    server = create_server(settings)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--tcp wants HOST:PORT, got '{args.tcp}'")
        server.start_tcp(host, int(port))
    else:
        server.start_io()
    return 0


def _workspace_root(path: Path) -> Path:
    """The nearest parent holding .git (the workspace), else the file's own directory."""
    for parent in [path.parent, *path.parent.parents]:
        if (parent / ".git").exists():
            return parent
    return path.parent


def cmd_context(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.completion import split_at
    from lsp.completer import Completer, Request
    from lsp.config import parse_config
    from lsp.index import CodeIndex

    path, line, col = _parse_position(args.position)
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8")
        offset = len(split_at(text, line, col).prefix)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"{args.position}: {e}") from None
    index = CodeIndex(_workspace_root(path))
    index.build()
    completer = Completer(index, settings)
    completer.config = parse_config({"context.maxTokens": args.max_tokens}).config
    try:
        shown = completer.show_context(Request(uri=path.as_uri(), path=path, version=None, text=text, offset=offset))
    finally:
        completer.close()
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    for title, key in (("in the prompt", "kept"), ("dropped for the budget", "dropped")):
        print(f"# {len(shown[key])} snippets {title}")
        for s in shown[key]:
            print(f"## {s['path']}  (score {s['score']:.2f}: {s['reason']})")
            if key == "kept":
                print(s["text"].rstrip())
    return 0


def cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.logs import log_file

    values: dict[str, Any] = json.loads(settings.model_dump_json())
    path = config_path()
    if args.json:
        print(json.dumps({"config_file": str(path), "exists": path.exists(), "log_file": str(log_file()),
                          "settings": values}, indent=2))
        return 0
    print(f"# settings file: {path}{'' if path.exists() else ' (not present: defaults apply)'}")
    print(f"# log file: {log_file()}")
    for key, field in Settings.model_fields.items():
        if field.description:
            print(f"# {field.description}")
        print(f"{key} = {json.dumps(values[key])}")
    return 0


def code_index_builder() -> CodeIndexBuilder | None:
    """What builds a workspace's code index for the chat's `find_symbol` tool: lsp's tree-sitter
    index, None where lsp/ is not installed. This module is the composition root, the one place
    that hands lsp/ to the chat; assistant/ and tui/ only know the SymbolIndex protocol."""
    if importlib.util.find_spec("lsp.index") is None:
        return None
    return _build_code_index


def _build_code_index(root: Path) -> SymbolIndex:
    from lsp.index import CodeIndex

    index = CodeIndex(root)
    index.build()
    return index


def cmd_tui(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.sandbox import SandboxError
    from assistant.sessions import SessionError
    from tui.app import make_app

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the terminal chat needs a terminal; for one answer on stdout use: assistant chat TEXT")
    try:
        app = make_app(settings, code_index=code_index_builder())
    except (SessionError, SandboxError) as e:
        raise UsageError(str(e)) from None
    app.run()
    return 0


def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    from assistant import service

    try:
        if args.service_command == "install":
            lines = service.install(dry_run=args.dry_run, enable=args.enable)
        else:
            lines = service.uninstall(dry_run=args.dry_run)
    except service.ServiceError as e:
        raise UsageError(str(e)) from None
    print("\n".join(lines))
    return 0


# --- parser --------------------------------------------------------------------------------


def model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="bundled model name, a name from your settings, or a .gguf path")
    p.add_argument("--backend", "-b", help="auto (default), llama, native, or remote (an OpenAI-compatible server)")
    p.add_argument("--remote-url", metavar="URL", help="the server --backend remote sends generation to "
                                                       "(remote.url in the settings)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--context-length", type=int, help="tokens of context (prompt plus answer)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant", description="A code assistant that runs on your own machine.")
    p.add_argument("--version", action="version", version=f"assistant {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("chat", help="answer one message, streamed to stdout")
    model_flags(c)
    c.add_argument("--temperature", "-t", type=float)
    c.add_argument("--max-tokens", "-n", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--system", help="a system message to put first")
    c.add_argument("--stats", action="store_true", help="print speed figures to stderr")
    c.add_argument("text", nargs="+", help="the message ('-' reads it from stdin)")
    c.set_defaults(func=cmd_chat)

    c = sub.add_parser("complete", help="print the completion at FILE:LINE:COL")
    model_flags(c)
    c.add_argument("--max-tokens", "-n", type=int, default=128)
    c.add_argument("--temperature", "-t", type=float, default=0.0)
    c.add_argument("--multiline", choices=("auto", "always", "never"), default="auto")
    c.add_argument("position", help="FILE:LINE:COL, 1-based")
    c.set_defaults(func=cmd_complete)

    m = sub.add_parser("models", help="list, describe and verify models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    c = msub.add_parser("list", help="bundled models and your own")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_models_list)
    c = msub.add_parser("info", help="architecture, size, formats and the backend that will run it")
    c.add_argument("model", nargs="?", help="name or path (default: the configured model)")
    c.add_argument("--backend", "-b")
    c.add_argument("--remote-url", metavar="URL", help="the server --backend remote would use")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_models_info)
    c = msub.add_parser("verify", help="re-check bundled models' checksums, or any GGUF file")
    c.add_argument("models", nargs="*", help="names or paths (default: every bundled model)")
    c.set_defaults(func=cmd_models_verify)

    c = sub.add_parser("bench", help="measure prompt and decode speed next to llama.cpp's raw loop")
    model_flags(c)
    c.add_argument("--prompt-tokens", type=int, default=512)
    c.add_argument("--gen-tokens", type=int, default=128)
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--vs", choices=("llama", "none"), default="llama",
                   help="the reference measured in the same run: llama.cpp's raw eval loop (default), or none")
    c.add_argument("--no-reference", action="store_true", help="the same as --vs none")
    c.add_argument("--workloads", default="decode", metavar="LIST",
                   help="comma-separated: decode (always), prefill-2048, batch-8, switch")
    c.add_argument("--cold-start", action="store_true",
                   help="also time the first token with Numba's on-disk cache and the kept packed weights "
                        "empty, warm, and the weights alone packed again")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_bench)

    c = sub.add_parser("lsp", help="run the language server (stdio; --tcp HOST:PORT for debugging)")
    model_flags(c)
    c.add_argument("--tcp", metavar="HOST:PORT")
    c.set_defaults(func=cmd_lsp)

    c = sub.add_parser("context", help="show which definitions a completion at FILE:LINE:COL would use")
    model_flags(c)
    c.add_argument("--max-tokens", type=int, default=1024, help="token budget for the context")
    c.add_argument("--json", action="store_true")
    c.add_argument("position", help="FILE:LINE:COL, 1-based")
    c.set_defaults(func=cmd_context)

    from assistant.server.commands import add_commands

    add_commands(sub, model_flags)  # serve, status, stop

    c = sub.add_parser("service", help="run the daemon (assistant serve) as a systemd user unit or a launchd agent")
    ssub = c.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    c = ssub.add_parser("install", help="write the unit for this platform (Linux: systemd, macOS: launchd)")
    c.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    c.add_argument("--enable", action="store_true", help="also enable and start it now (needs systemctl or launchctl)")
    c.set_defaults(func=cmd_service)
    c = ssub.add_parser("uninstall", help="stop the service and remove its unit")
    c.add_argument("--dry-run", action="store_true", help="print what would be run and removed; change nothing")
    c.set_defaults(func=cmd_service)

    c = sub.add_parser("config", help="settings")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("show", help="the settings in effect and where they come from")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_config_show)

    c = sub.add_parser("tui", help="the terminal chat about the current directory (the default command)")
    model_flags(c)
    c.set_defaults(func=cmd_tui)
    return p


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "backend", "threads", "context_length", "kv_cache_mb", "temperature", "max_tokens", "seed")
    if args.command != "chat":
        keys = ("model", "backend", "threads", "context_length", "kv_cache_mb")
    overrides: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    if getattr(args, "remote_url", None):
        overrides["remote"] = {"url": args.remote_url}  # merged with the file's [remote] section
    return overrides


def main(argv: list[str] | None = None) -> int:
    from engine.backend import EngineError
    from models.catalog import ModelError
    from models.gguf import GGUFError
    from models.templates import TemplateError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `assistant` alone opens the terminal chat
        args = parser.parse_args(["tui"])
    try:
        settings = load_settings(**setting_overrides(args))
        from assistant.logs import setup_logging

        setup_logging(settings.log_level)
        log.info("assistant %s: %s", __version__, " ".join(sys.argv[1:] if argv is None else argv))
        return args.func(args, settings)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\nassistant: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (SettingsError, ModelError, GGUFError, EngineError, TemplateError, UsageError) as e:
        log.info("error: %s", e)
        print(f"assistant: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
