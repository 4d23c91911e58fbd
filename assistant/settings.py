"""The assistant's settings: one typed model read from a TOML file, overridden by the environment.

The file is `config.toml` in the user config dir (or the path in `ASSISTANT_CONFIG`); every
field can be overridden by an environment variable `ASSISTANT_<FIELD>` (nested tables with
`__`), and command-line flags override both. A bad value is reported with its key, the value
and the type that was expected, as one line; nothing else is read from the settings.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from models.catalog import DEFAULT_MODEL

BackendName = Literal["auto", "llama", "native", "remote"]


class SettingsError(Exception):
    """The settings file or an override holds a value the assistant cannot use."""


def config_path() -> Path:
    """Where the settings file is: `ASSISTANT_CONFIG`, else the user config dir."""
    env = os.environ.get("ASSISTANT_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("assistant")) / "config.toml"


def state_dir() -> Path:
    """Where logs and other state go (the user state dir)."""
    return Path(platformdirs.user_state_dir("assistant"))


class RemoteSettings(BaseModel):
    """Where `backend = "remote"` sends generation: any OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    """The server's base URL, e.g. http://gpu-box:8000 (vLLM), http://localhost:8080 (llama-server),
    http://localhost:11434 (Ollama); a trailing /v1 is fine."""

    model: str | None = None
    """The model's name on that server; unset means the first one its /v1/models lists."""

    api_key: SecretStr | None = None
    """The bearer token the server wants; unset means the variable api_key_env names, if set."""

    api_key_env: str = "ASSISTANT_REMOTE_API_KEY"
    """The environment variable that holds the API key when api_key is unset."""

    prompt: Literal["tokens", "text", "auto"] = "auto"
    """How prompts go: token ids (vLLM, llama-server, assistant serve), text (Ollama), or auto:
    ids, and text from the first time the server refuses ids."""

    def key(self) -> str | None:
        """The API key in effect: the setting, else the environment variable it names."""
        if self.api_key is not None:
            return self.api_key.get_secret_value() or None
        return os.environ.get(self.api_key_env) or None


class Settings(BaseSettings):
    """Everything a user can set. Field docstrings are what `assistant config show` explains."""

    model_config = SettingsConfigDict(
        env_prefix="ASSISTANT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    model: str = DEFAULT_MODEL
    """A bundled model's name, a name defined in [models], or a path to a .gguf file."""

    backend: BackendName = "auto"
    """Which engine runs the model: auto picks the best one for the file; llama is llama.cpp;
    native is the project's own Numba engine; remote forwards to the server in [remote] (the model
    file then gives the vocabulary and the prompt formats)."""

    threads: int | None = Field(default=None, ge=1, le=1024)
    """CPU threads for inference; unset means the number of physical cores."""

    context_length: int = Field(default=4096, ge=128, le=1 << 20)
    """Tokens of context the engine keeps (prompt plus answer)."""

    kv_cache_mb: int = Field(default=256, ge=0, le=1 << 20)
    """MiB of KV kept from earlier prompts (beyond each sequence's own context: blocks on the native
    engine, whole sequences' states on llama.cpp), so that a prompt starting like an earlier one is
    not evaluated again; 0 turns it off."""

    temperature: float = Field(default=0.2, ge=0.0, le=5.0)
    """Sampling temperature; 0 always picks the most likely token."""

    top_k: int = Field(default=40, ge=0)
    """Sample among the k most likely tokens (0: all)."""

    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling: the smallest set of tokens whose probability reaches p."""

    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    """Drop tokens less likely than min_p times the most likely one."""

    repeat_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    """Penalty on tokens seen in the last 64 (1.0: none)."""

    max_tokens: int = Field(default=1024, ge=1, le=1 << 20)
    """Most tokens in one answer."""

    seed: int | None = Field(default=None, ge=0, lt=1 << 32)
    """Random seed for sampling; unset means a new one each time."""

    models: dict[str, Path] = Field(default_factory=dict)
    """Your own model names: name = "/path/to/file.gguf"."""

    cache_dir: Path | None = None
    """Where assembled bundled models are kept; unset means the user cache dir."""

    packed_weights: bool = True
    """The native engine keeps each model's weights, repacked for its kernels, in the user cache
    dir (packed/, about the model file's size again) and maps them from there on the next start
    instead of repacking (1-1.6 s of the bundled Qwen2.5's start); false repacks every time."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """How much goes to the log file in the user state dir."""

    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    """The OpenAI-compatible server that backend = "remote" uses."""

    use_daemon: bool = True
    """When an `assistant serve` daemon runs with the same model file, the editor's completions
    use it instead of loading a second copy of the model."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_path()))


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(settings)"
    if err["type"] == "extra_forbidden":
        return f"unknown setting '{key}'"
    value = err.get("input")
    return f"setting '{key}' = {value!r}: {err['msg'].lower()}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings with `overrides` (from flags) on top; raise SettingsError on a bad value."""
    path = config_path()
    if path.exists():
        try:
            with open(path, "rb") as f:
                tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"settings file {path} is not valid TOML: {e}") from None
        except OSError as e:
            raise SettingsError(f"settings file {path} cannot be read: {e.strerror}") from None
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as e:
        problems = "; ".join(_describe(err) for err in e.errors())
        raise SettingsError(f"{problems} (settings file {path}, or ASSISTANT_* environment variables)") from None
