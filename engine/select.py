"""Choosing the engine that runs a GGUF file, and saying why.

`assistant models info` shows the choice and its reason, and `--backend auto` (the default)
follows it. `remote` is only ever asked for: the file then gives the vocabulary and prompt
formats, and an OpenAI-compatible server (engine.remote) runs the model. The native engine runs a file when it knows its architecture and every tensor's
quant type (on an NVIDIA GPU when numba.cuda finds one, else on the CPU) and is asked for with
`--backend native`; `auto` picks it where it was measured faster than llama.cpp (dense models on
a CPU with AVX-512 VNNI, `_auto_for_runnable`), llama.cpp elsewhere, and says why either way.
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
            return _auto_for_runnable(gguf, arch)
        if requested == "native":
            raise EngineError(f"the native engine cannot run this file: {why}")
        return BackendChoice("llama", f"auto: llama.cpp runs it because the native engine cannot: {why}")
    raise EngineError(f"unknown backend '{requested}'; choose one of: auto, {', '.join(BACKENDS)}")


def _auto_for_runnable(gguf: GGUFFile, arch: str) -> BackendChoice:
    """What `auto` picks for a file both engines can run: the one measured faster for its kind on
    this kind of machine (docs/benchmarks.md, 2 threads, a CPU with AVX-512 VNNI): the native engine
    for dense models where its integer kernels run (bundled models: decode 1.12-1.18x llama.cpp,
    prefill 1.17-1.40x, language-server p95 ~330 against ~400 ms), llama.cpp for the rest."""
    from engine.int8 import VNNI
    from engine.matmul import INT8
    from engine.native import cuda_present

    if gguf.get(f"{arch}.expert_count"):
        why = "on MoE files it still prefills at about half llama.cpp's speed"
    elif cuda_present():
        why = "its GPU path has not been measured on a GPU yet"
    elif not INT8:
        why = "on a CPU without AVX2 its float kernels are level with llama.cpp, not faster"
    elif not VNNI:
        why = ("on a CPU with AVX2 but without AVX-512 VNNI its integer kernels take several instructions "
               "where VNNI takes one, and were measured slower than llama.cpp (docs/benchmarks.md)")
    else:
        why = None
    if why is not None:
        return BackendChoice("llama", f"auto: llama.cpp (the native engine can run this '{arch}' file too: "
                                      f"--backend native; {why})")
    return BackendChoice("native", f"auto: the native engine, measured faster than llama.cpp for dense "
                                   f"'{arch}' files on CPUs with AVX-512 VNNI like this one "
                                   "(--backend llama to use llama.cpp)")


def open_backend(
    path: Path,
    choice: BackendChoice,
    *,
    n_ctx: int,
    n_threads: int,
    architecture: str = "",
    n_slots: int = 1,
    block_cache_bytes: int = 0,
    gguf: GGUFFile | None = None,
    packed_dir: Path | None = None,
) -> Backend:
    """Load the model at `path` on the chosen backend; `n_slots` sequences of KV cache where the
    backend decodes several together (native), else one, and up to `block_cache_bytes` of KV
    kept from earlier prompts (native: blocks; llama.cpp: whole sequences' states). `gguf`: the
    file's header where the caller has read it already (the native engine reads it otherwise).
    `packed_dir`: where the native engine keeps repacked weights between runs (None: nowhere)."""
    if choice.name == "llama":
        from engine.llama import LlamaBackend

        return LlamaBackend(path, n_ctx=n_ctx, n_threads=n_threads, architecture=architecture,
                            saved_bytes=block_cache_bytes)
    if choice.name == "native":
        from engine.native import NativeBackend

        native = NativeBackend(path, n_ctx=n_ctx, n_threads=n_threads, architecture=architecture, n_slots=n_slots,
                               block_cache_bytes=block_cache_bytes, gguf=gguf, packed_dir=packed_dir)
        try:
            native.warm_up()  # the kernels loaded now, not in the first request
        except BaseException:
            native.close()
            raise
        return native
    raise EngineError(f"unknown backend '{choice.name}'")
