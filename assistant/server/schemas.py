"""The request bodies the daemon accepts, as pydantic models: anything else is a 400 that names the field.

Fields OpenAI clients commonly send and that change nothing here (`user`, penalties, ...) are
accepted and ignored; options that would change the answer and are not implemented (`n` > 1,
`echo`) are refused rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Body):
    name: StrictStr
    arguments: StrictStr | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionDef(_Body):
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: StrictStr = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: StrictStr


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: StrictBool = False


class JsonSchemaSpec(_Body):
    name: StrictStr = "answer"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match, or None for free text."""
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None:
            return {"type": "object"}
        return self.json_schema.schema_


# A tool-call grammar for the assistant's own tools is about 2.5 KB; JSON schemas of real APIs run
# to tens of KB.
MAX_GRAMMAR_CHARS = 64 * 1024


class GrammarSpec(_Body):
    """A constraint a client built against the same vocabulary (engine.constrained `spec()`): the
    answer must follow the Lark grammar from the moment it ends with `trigger` ("": at once)."""

    lark: StrictStr = Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)
    trigger: StrictStr = Field(default="", max_length=64)


class _Sampling(_Body):
    model: StrictStr
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(default=None, ge=0, lt=1 << 32)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if v == "" or (isinstance(v, list) and any(s == "" for s in v)):
            raise ValueError("a stop sequence cannot be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    def logprobs_wanted(self) -> int | None:
        """How many alternatives per token to report, or None for no log-probabilities."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    # text, or (as OpenAI allows) one prompt of token ids: the LSP sends the tokens it counted
    prompt: StrictStr | list[StrictStr] | list[StrictInt] = Field(min_length=1)
    suffix: StrictStr | None = None
    echo: Literal[False] = False
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    # llama.cpp server / vLLM extensions, so that a client can ask for its own sampler settings
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop_token_ids: list[StrictInt] | None = Field(default=None, max_length=64)
    # vLLM's: logprobs name tokens `token_id:N` instead of their text (what the remote backend asks)
    return_tokens_as_token_ids: StrictBool = False
    # this daemon's extension: decode under a grammar (what the TUI's tool calls need)
    grammar: GrammarSpec | None = None

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompt_ids(self) -> list[int] | None:
        """The prompt's token ids when it was sent as ids, else None."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], int):
            return list(self.prompt)  # type: ignore[arg-type]
        return None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("give one prompt per request")
        return self.prompt[0]
