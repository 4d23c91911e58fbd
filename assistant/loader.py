"""From settings to a running model: name → checked GGUF file → chosen backend → loaded engine.

Every file passes the strict GGUF reader before an engine sees it; the chat template and the
fill-in-the-middle format are read from the same header. `describe()` is what `assistant models
info` prints, and needs no engine.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import psutil
from gguf import constants as gguf_constants

from assistant.settings import Settings
from engine.backend import Backend
from engine.select import BackendChoice, choose_backend, open_backend
from models import catalog
from models.fim import FimFormat, detect_fim
from models.gguf import GGUFFile, read_gguf
from models.templates import ChatTemplate

log = logging.getLogger(__name__)

# GGUF token types (llama.cpp's llama_token_type): 1 is a normal token; FIM markers are special.
_NORMAL_TOKEN = 1


def default_threads() -> int:
    """Physical cores: llama.cpp and the native engine both slow down on hyper-threads."""
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def special_tokens(gguf: GGUFFile) -> list[str]:
    """The vocabulary's non-normal tokens (control, user-defined), where FIM markers live."""
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    types = gguf.get("tokenizer.ggml.token_type")
    if types is None or len(types) != len(tokens):
        return list(tokens)
    return [tokens[i] for i, t in enumerate(types) if int(t) != _NORMAL_TOKEN]


def _token_text(gguf: GGUFFile, key: str) -> str:
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    idx = gguf.get(key)
    if isinstance(idx, int) and 0 <= idx < len(tokens):
        return str(tokens[idx])
    return ""


def chat_template_of(gguf: GGUFFile) -> ChatTemplate:
    """The model's own chat template, or ChatML when the file has none."""
    source = gguf.get("tokenizer.chat_template")
    bos = _token_text(gguf, "tokenizer.ggml.bos_token_id")
    eos = _token_text(gguf, "tokenizer.ggml.eos_token_id")
    if not source:
        return ChatTemplate.chatml()
    return ChatTemplate(str(source), bos_token=bos, eos_token=eos)


@dataclass
class LoadedModel:
    """A model ready to answer: its file, header, engine and prompt formats."""

    name: str
    path: Path
    gguf: GGUFFile
    choice: BackendChoice
    backend: Backend
    chat_template: ChatTemplate
    fim: FimFormat | None
    bos_text: str

    def close(self) -> None:
        self.backend.close()
        self.gguf.close()


def _daemon_backend(path: Path) -> Any:
    """A DaemonBackend when a live daemon serves the file at `path`, else None (quietly: no
    daemon is the common case, and then the model loads in-process)."""
    from assistant.client import DaemonClient, DaemonError, find_daemon, health_ok

    info = find_daemon()
    if info is None or not health_ok(info):
        return None
    try:
        status = DaemonClient(info, timeout=5).status()
    except DaemonError as e:
        log.info("not using the daemon at %s: %s", info.url, e)
        return None
    if Path(str(status.get("model_path", ""))).resolve() != path.resolve():
        log.info("the daemon at %s serves %s, not %s: loading in-process", info.url, status.get("model_path"), path)
        return None
    from assistant.daemon_backend import DaemonBackend

    log.info("using the daemon at %s (pid %d) for %s", info.url, info.pid, path.name)
    return DaemonBackend(info, path, status)


def resolve_path(settings: Settings) -> Path:
    return catalog.resolve(settings.model, settings.models, settings.cache_dir)


def load_model(settings: Settings, *, n_slots: int = 1, use_daemon: bool = False) -> LoadedModel:
    """Resolve, check and load the model the settings name (errors are for a person to read);
    `n_slots` sequences decoded together where the backend can (the daemon). With `use_daemon`
    and a live `assistant serve` holding the same file, its model is used over HTTP instead of a
    second copy in this process (assistant.daemon_backend)."""
    path = resolve_path(settings)
    gguf = read_gguf(path)
    try:
        backend, choice = _open(settings, path, gguf, n_slots=n_slots, use_daemon=use_daemon)
    except BaseException:
        gguf.close()
        raise
    return LoadedModel(
        name=settings.model,
        path=path,
        gguf=gguf,
        choice=choice,
        backend=backend,
        chat_template=chat_template_of(gguf),
        fim=detect_fim(special_tokens(gguf)),
        bos_text=_token_text(gguf, "tokenizer.ggml.bos_token_id"),
    )


def load_shared(settings: Settings) -> LoadedModel:
    """What the editor and the terminal chat load: the model of a running daemon that holds the
    same file (unless the settings say `use_daemon = false`), else the model in this process."""
    return load_model(settings, use_daemon=settings.use_daemon)


def daemon_gone(model: Any) -> bool:
    """True when `model` ran on a daemon that is not there any more (its token file removed, its
    process ended, or another daemon in its place). The client then loads it again with
    `load_shared`, which falls back to an in-process engine when no daemon holds the file."""
    from assistant.client import find_daemon

    if getattr(model, "choice", None) is None or model.choice.name != "daemon":
        return False
    info = find_daemon()
    return info is None or info.pid != model.backend.info.pid


def packed_weights_dir() -> Path:
    """Where the native engine keeps repacked weights between runs (engine.packcache)."""
    return Path(platformdirs.user_cache_dir("assistant")) / "packed"


def runs_on(model: Any) -> str:
    """Where a loaded model runs, for a status line: 'daemon :8765', 'remote gpu-box:8000', or the
    name of the engine in this process ('llama', 'native')."""
    backend = model.backend
    if backend.name == "daemon":
        return f"daemon :{backend.info.port}"
    if backend.name == "remote":
        return f"remote {backend.endpoint.host}:{backend.endpoint.port}"
    return backend.name


def _open(settings: Settings, path: Path, gguf: GGUFFile, *, n_slots: int,
          use_daemon: bool) -> tuple[Backend, BackendChoice]:
    daemon = _daemon_backend(path) if use_daemon else None
    if daemon is not None:
        return daemon, BackendChoice("daemon", f"the running daemon ({daemon.info.url}, pid {daemon.info.pid}) "
                                               f"holds this model on its {daemon.served_by} backend")
    choice = choose_backend(gguf, settings.backend, remote_url=settings.remote.url)
    if choice.name == "remote":
        from engine.remote import RemoteBackend

        r = settings.remote
        backend = RemoteBackend.connect(r.url or "", path, model=r.model, api_key=r.key(), prompt=r.prompt,
                                        n_ctx=settings.context_length, architecture=gguf.architecture or "")
        return backend, BackendChoice("remote", f"{choice.reason}; it serves '{backend.model_name}'")
    backend = open_backend(path, choice, n_ctx=settings.context_length,
                           n_threads=settings.threads or default_threads(),
                           architecture=gguf.architecture or "", n_slots=n_slots,
                           block_cache_bytes=settings.kv_cache_mb << 20, gguf=gguf,
                           packed_dir=packed_weights_dir() if settings.packed_weights else None)
    return backend, choice


def _file_type_name(value: object) -> str | None:
    """The file's own label for its quantization (llama.cpp's LLAMA_FTYPE names)."""
    if not isinstance(value, int):
        return None
    try:
        return gguf_constants.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"unknown ({value})"


def describe(gguf: GGUFFile, requested_backend: str = "auto", *, remote_url: str | None = None) -> dict[str, Any]:
    """What `assistant models info` reports about a GGUF file (`remote_url`: the server the
    remote backend would use; it is not asked anything here)."""
    arch = gguf.architecture or "unknown"
    quant = Counter(t.type_name for t in gguf.tensors.values())
    n_params = sum(t.n_elements for t in gguf.tensors.values())
    fim = detect_fim(special_tokens(gguf))
    choice = choose_backend(gguf, requested_backend, remote_url=remote_url)
    template = gguf.get("tokenizer.chat_template")
    return {
        "path": str(gguf.path),
        "name": gguf.get("general.name"),
        "architecture": arch,
        "parameters": n_params,
        "file_size": gguf.file_size,
        "file_type": _file_type_name(gguf.get("general.file_type")),
        "quant_types": dict(quant.most_common()),
        "context_length": gguf.get(f"{arch}.context_length"),
        "layers": gguf.get(f"{arch}.block_count"),
        "experts": gguf.get(f"{arch}.expert_count"),
        "experts_used": gguf.get(f"{arch}.expert_used_count"),
        "vocab_size": len(gguf.get("tokenizer.ggml.tokens") or []),
        "chat_template": "from the file" if template else "none in the file (ChatML is used)",
        "fim": fim.family if fim else None,
        "backend": choice.name,
        "backend_reason": choice.reason,
    }
