"""`python -m assistant.server serve|status|stop`: the daemon's commands without the rest of the CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from assistant.server.commands import add_commands

log = logging.getLogger("assistant.server")


def main(argv: list[str] | None = None) -> int:
    from assistant.cli import UsageError, model_flags, setting_overrides
    from assistant.logs import setup_logging
    from assistant.settings import SettingsError, load_settings
    from engine.backend import EngineError
    from models.catalog import ModelError
    from models.gguf import GGUFError
    from models.templates import TemplateError

    parser = argparse.ArgumentParser(prog="assistant")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), model_flags)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**setting_overrides(args))
        setup_logging(settings.log_level)
        return args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except (SettingsError, ModelError, GGUFError, EngineError, TemplateError, UsageError) as e:
        log.info("error: %s", e)
        print(f"assistant: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
