"""Logging to a file in the user state dir, so stdout carries answers and nothing else."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from assistant.settings import state_dir


def log_file() -> Path:
    return state_dir() / "assistant.log"


def setup_logging(level: str = "INFO") -> Path | None:
    """Send every logger to the rotating log file; return its path (None if it can't be written)."""
    root = logging.getLogger()
    root.setLevel(level)
    path = log_file()
    if any(getattr(h, "_assistant", False) for h in root.handlers):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=5 << 20, backupCount=2, encoding="utf-8"
        )
    except OSError:
        handler, path = logging.NullHandler(), None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._assistant = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    return path
