"""The language server's settings, section `assistant`, from the client.

Clients send them in `initializationOptions` and `workspace/didChangeConfiguration`, either
nested (`{"context": {"crossFile": false}}`, as VS Code does for dotted settings) or with dotted
keys (`{"context.crossFile": false}`). Each bad value is reported by key and replaced by its
default; the rest still apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ContextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    cross_file: bool = Field(default=True, alias="crossFile")
    """Put definitions from other files, found by the code index, into the prompt."""

    max_tokens: int = Field(default=1024, ge=0, le=32768, alias="maxTokens")
    """Token budget for those definitions."""


class CompletionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_tokens: int = Field(default=96, ge=1, le=2048, alias="maxTokens")
    """Most tokens in one completion."""

    multiline: Literal["auto", "always", "never"] = "auto"
    """auto: a block where the cursor opens one, else a line."""

    enabled: bool = True
    """Answer completion requests at all (the editor's toggle)."""


class LspConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = None
    """A model name or .gguf path; unset means the one in the assistant's settings."""

    backend: Literal["auto", "llama", "native", "remote"] | None = None
    """Which engine runs the model (remote: the server in the settings' [remote]); unset means the
    assistant's settings."""

    context: ContextConfig = Field(default_factory=ContextConfig)
    completion: CompletionConfig = Field(default_factory=CompletionConfig)


@dataclass
class Parsed:
    config: LspConfig
    problems: list[str] = field(default_factory=list)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Turn dotted keys into nested dicts; nested input passes through."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    node: Any = data
    for p in loc[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def parse_config(raw: Any, base: LspConfig | None = None) -> Parsed:
    """Validate client settings over `base`; bad keys fall back to their defaults and are listed."""
    if isinstance(raw, dict) and isinstance(raw.get("assistant"), dict):
        raw = raw["assistant"]
    if raw is None:
        return Parsed(base or LspConfig())
    if not isinstance(raw, dict):
        return Parsed(base or LspConfig(), [f"settings must be an object, got {type(raw).__name__}"])
    data = (base or LspConfig()).model_dump(by_alias=True)
    for key, value in _nest(raw).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    problems: list[str] = []
    for _ in range(32):  # each round drops the keys that failed; a bounded number of rounds
        try:
            return Parsed(LspConfig.model_validate(data), problems)
        except ValidationError as e:
            for err in e.errors():
                key = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown setting 'assistant.{key}' ignored")
                else:
                    problems.append(
                        f"setting 'assistant.{key}' = {err.get('input')!r}: {err['msg'].lower()}; the default applies"
                    )
                _drop(data, tuple(err["loc"]))
    return Parsed(LspConfig(), problems)
