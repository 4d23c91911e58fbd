"""Tool calls in the model's native format, parsed from its answer and constrained as it writes.

Qwen2.5 (and other Hermes-style templates) write a call as
`<tool_call>\\n{"name": "read_file", "arguments": {"path": "a.py"}}\\n</tool_call>`, where both
tags are single special tokens. `ToolCallGrammar` builds the constraint for one model and tool
set: free text until the `<tool_call>` token, then JSON that must match one of the tools'
schemas (the name picks the arguments' schema), the closing tag, and then only another call or
the end of the turn. So every call the model emits under the constraint parses and validates
by construction; `parse_turn` still checks each one (unconstrained runs, other models), and a
call that fails becomes an error message for the model, never an exception.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant.tools import ToolCall, ToolSpec

log = logging.getLogger(__name__)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
# GGUF token types that are not plain text: control (3) and user-defined (4).
_SPECIAL_TYPES = (3, 4)
# The separators Qwen was trained to write ({"name": "x", "arguments": {...}}).
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


@dataclass
class ParsedTurn:
    """An assistant answer split into its prose, its calls, and the calls that did not parse."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_turn(text: str) -> ParsedTurn:
    """Find the `<tool_call>` blocks in `text`; each one that is not a valid call is an error."""
    turn = ParsedTurn(text="")
    prose: list[str] = []
    pos = 0
    for n, m in enumerate(_CALL.finditer(text)):
        prose.append(text[pos : m.start()])
        pos = m.end()
        call, error = parse_call(m.group(1), n)
        if call is not None:
            turn.calls.append(call)
        else:
            turn.errors.append(error)
    rest = text[pos:]
    if OPEN in rest:  # cut off: the answer ended inside a call
        before, _, partial = rest.partition(OPEN)
        prose.append(before)
        turn.errors.append(f"the tool call was cut off before {CLOSE}: {partial.strip()[:200]!r}")
    else:
        prose.append(rest)
    turn.text = "".join(prose).strip()
    return turn


def parse_call(body: str, n: int = 0) -> tuple[ToolCall | None, str]:
    """One call's JSON, or why it is not a call."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"the tool call is not valid JSON ({e.msg} at character {e.pos}): {body.strip()[:200]!r}"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None, f'a tool call must be {{"name": ..., "arguments": {{...}}}}, not {body.strip()[:200]!r}'
    args = data.get("arguments", {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None, f"the arguments of {data['name']} are not a JSON object: {args[:200]!r}"
    if not isinstance(args, dict):
        return None, f"the arguments of {data['name']} must be a JSON object, not {type(args).__name__}"
    return ToolCall(data["name"], args, id=f"call_{n}_{secrets.token_hex(4)}"), ""


def assistant_message(turn: ParsedTurn) -> dict[str, Any]:
    """The turn as a chat-template message (OpenAI shape), calls included."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text}
    if turn.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in turn.calls
        ]
    return message


def supports_tools(template_source: str) -> bool:
    """Whether a chat template renders tools in the `<tool_call>` format."""
    return "tools" in template_source and OPEN in template_source


def call_schema(specs: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON schema of one call: the name of a tool and the arguments that tool takes."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": s.name}, "arguments": s.parameters()},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for s in specs
        ],
        "x-guidance": _JSON_STYLE,
    }


def call_grammar(specs: Sequence[ToolSpec]) -> str:
    """The Lark grammar of what follows the `<tool_call>` token: one call, then the end of the turn.

    One call per answer: the small models this runs loop on `</tool_call><tool_call>` when
    allowed more, and the result of each call is better seen before the next is chosen.
    """
    return f'start: "\\n" %json {json.dumps(call_schema(specs))} "\\n" {CLOSE}\n'



class ToolCallGrammar:
    """The constraint factory for one loaded model: its vocabulary, and a grammar per tool set.

    A model that decodes on a server (the daemon, a remote backend) gets each grammar's text
    (`engine.constrained.GrammarText`), and no vocabulary is built for it here: that took about
    0.6 s of the chat's start for Qwen's 152k tokens, and the server holds its own.
    """

    def __init__(self, model: Any) -> None:
        from engine.constrained import masks_here, supports_constraints, vocabulary

        self.model = model
        backend = model.backend
        if not supports_constraints(backend):
            raise ValueError(f"the {backend.name} backend's server takes no grammar")
        types = model.gguf.get("tokenizer.ggml.token_type") if getattr(model, "gguf", None) is not None else None
        if types is None:
            raise ValueError("the model file does not say which tokens are special")
        for tag in (OPEN, CLOSE):
            ids = backend.tokenize(tag, add_special=False, parse_special=True)
            if len(ids) != 1 or not 0 <= ids[0] < len(types) or int(types[ids[0]]) not in _SPECIAL_TYPES:
                raise ValueError(f"{tag} is not one special token of this model")
        self._trigger = backend.token_bytes(backend.tokenize(OPEN, add_special=False, parse_special=True)[0])
        self._tokenizer = None
        if masks_here(backend):
            self._tokenizer = vocabulary(backend, [i for i, t in enumerate(types) if int(t) in _SPECIAL_TYPES])
        self._grammars: dict[tuple[bool | str, ...], Any] = {}

    def constraint(self, specs: Sequence[ToolSpec], *, lazy: bool = True) -> Any:
        """A fresh constraint for one answer that may call `specs`: armed by the `<tool_call>`
        token when `lazy`, else from the first token (the prompt already ends with that token)."""
        from engine.constrained import Grammar

        key = (lazy, *(s.name for s in specs))
        grammar = self._grammars.get(key)
        if grammar is None:
            trigger = self._trigger if lazy else b""
            grammar = self._grammars[key] = Grammar(self._tokenizer, call_grammar(specs), trigger=trigger)
        return grammar.constraint(self.model.backend.token_bytes)
