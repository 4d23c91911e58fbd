"""Choosing the engine that runs a GGUF file, and saying why.

`assistant models info` shows the choice and its reason, and `--backend auto` (the default)
follows it. `remote` is only ever asked for: the file then gives the vocabulary and prompt
formats, and an OpenAI-compatible server (engine.remote) runs the model. The native engine runs a file when it knows its architecture and every tensor's
quant type (on an NVIDIA GPU when numba.cuda finds one, else on the CPU) and is asked for with
`--backend native`; `auto` picks llama.cpp for now (see the measurements noted in
`choose_backend`), and says whether the native engine could run the file or why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.backend import Backend, EngineError
from models.gguf import GGUFFile

BACKENDS = ("llama", "native", "remote")


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def choose_backend(gguf: GGUFFile, requested: str = "auto", *, remote_url: str | None = None) -> BackendChoice:
    """Which backend runs `gguf` when the user asked for `requested` (`remote_url`: where the
    remote backend sends generation)."""
    arch = gguf.architecture or "unknown"
    if requested == "remote":
        if not remote_url:
            raise EngineError("the remote backend needs the server's URL: set url in the [remote] section of "
                              "the settings, or pass --remote-url")
        return BackendChoice("remote", f"remote was asked for: the server at {remote_url} runs the model; this "
                                       f"'{arch}' file gives the vocabulary, chat template and FIM format, so the "
                                       "server's model must share its vocabulary")
    if requested == "llama":
        return BackendChoice("llama", "llama.cpp was asked for")
    if requested in ("native", "auto"):
        from engine.native import native_device, unsupported_reason

        why = unsupported_reason(gguf)
        if why is None and requested == "native":
            types = ", ".join(sorted({t.type_name for t in gguf.tensors.values()}))
            return BackendChoice("native", f"native was asked for: '{arch}' with {types} tensors, "
                                           f"on the {native_device()}")
        if why is None:
            # Measured (docs/benchmarks.md, a CPU with AVX-512 VNNI): on the bundled dense models
            # the native engine decodes at 1.07-1.19x llama.cpp and prefills at 1.25-1.47x, the
            # daemon batches 8 streams at 4.4-4.6x one, and the language server's p95 is 309-351 ms
            # against ~400; but MoE files decode at 0.68-0.87x, its first use compiles for ~15 s,
            # it takes ~1.65x the file in memory, its float kernels (CPUs without VNNI) were last
            # measured at ~1.0x, and its GPU path has not run on a GPU yet; auto keeps llama.cpp
            # until those are settled (issues 3 and 4).
            return BackendChoice("llama", f"auto: llama.cpp (the native engine can run this '{arch}' file too: "
                                          "--backend native; auto moves to it once its GPU path is verified)")
        if requested == "native":
            raise EngineError(f"the native engine cannot run this file: {why}")
        return BackendChoice("llama", f"auto: llama.cpp runs it because the native engine cannot: {why}")
    raise EngineError(f"unknown backend '{requested}'; choose one of: auto, {', '.join(BACKENDS)}")


def open_backend(
    path: Path,
    choice: BackendChoice,
    *,
    n_ctx: int,
    n_threads: int,
    architecture: str = "",
    n_slots: int = 1,
    block_cache_bytes: int = 0,
) -> Backend:
    """Load the model at `path` on the chosen backend; `n_slots` sequences of KV cache where the
    backend decodes several together (native), else one, and up to `block_cache_bytes` of KV
    kept from earlier prompts (native: blocks; llama.cpp: whole sequences' states)."""
    if choice.name == "llama":
        from engine.llama import LlamaBackend

        return LlamaBackend(path, n_ctx=n_ctx, n_threads=n_threads, architecture=architecture,
                            saved_bytes=block_cache_bytes)
    if choice.name == "native":
        from engine.native import NativeBackend

        return NativeBackend(path, n_ctx=n_ctx, n_threads=n_threads, architecture=architecture, n_slots=n_slots,
                             block_cache_bytes=block_cache_bytes)
    raise EngineError(f"unknown backend '{choice.name}'")
