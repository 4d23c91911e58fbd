"""Choosing the engine that runs a GGUF file, and saying why.

`assistant models info` shows the choice and its reason, and `--backend auto` (the default)
follows it. Today the llama.cpp backend runs every file; the native engine joins the choice
when it lands, for the architectures and quant types it supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.backend import Backend, EngineError
from models.gguf import GGUFFile

BACKENDS = ("llama",)


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def choose_backend(gguf: GGUFFile, requested: str = "auto") -> BackendChoice:
    """Which backend runs `gguf` when the user asked for `requested`."""
    arch = gguf.architecture or "unknown"
    if requested == "llama":
        return BackendChoice("llama", "llama.cpp was asked for")
    if requested == "auto":
        return BackendChoice(
            "llama", f"auto: the native engine is not built yet, so llama.cpp runs '{arch}' files"
        )
    raise EngineError(f"unknown backend '{requested}'; choose one of: auto, {', '.join(BACKENDS)}")


def open_backend(
    path: Path,
    choice: BackendChoice,
    *,
    n_ctx: int,
    n_threads: int,
    architecture: str = "",
) -> Backend:
    """Load the model at `path` on the chosen backend."""
    if choice.name == "llama":
        from engine.llama import LlamaBackend

        return LlamaBackend(path, n_ctx=n_ctx, n_threads=n_threads, architecture=architecture)
    raise EngineError(f"unknown backend '{choice.name}'")
