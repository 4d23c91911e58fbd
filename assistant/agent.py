"""One assistant turn with tools: render → generate → parse → approve → run → feed back, until
the model answers without calling a tool.

The conversation is rendered with the model's chat template and the tools' schemas, and the
answer streams as `TextDelta` events. Tool calls are decoded under the tools' JSON schema
(`assistant.toolcalls`) in two ways: the `<tool_call>` token arms the constraint at once; and
when a small model starts a call in another shape (a `{"name": ..., "arguments": ...}` object,
bare or in a ```json fence, whatever name it gives), generation is stopped there, the answer
is rewound to the prose before it (`Rewind`), and the call is decoded again after a
`<tool_call>` token, under the constraint, where the grammar picks a real tool's name. Either
way the saved message is in the model's native format. Each call is validated and decided on by the
toolbox; calls that need the user wait on `ask` (the worker thread blocks, the UI answers); a
rejected call ends the turn so the user can say what to do instead. When the conversation does
not fit the window, the oldest turns are dropped, then old tool outputs are cut, and a
`Notice` says so: never silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from assistant.approval import Approval, ApprovalRequest, Decision
from assistant.prompts import encode_text
from assistant.toolcalls import OPEN, ParsedTurn, ToolCallGrammar, assistant_message, parse_turn
from assistant.tools import ToolCall, ToolError, ToolResult, Toolbox
from engine.backend import ContextOverflowError, SamplingParams, Timings

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a coding assistant working in the user's project at {root}. You cannot see its files: "
    "before you answer about the code, call a tool to look (read_file, list_dir, search{symbol}). "
    "To change a file call apply_edit; to run a program call run_command; the user approves each "
    "change and command. Call one tool at a time and wait for its result. Answer in Markdown, with "
    "code in fenced blocks."
)
PLAIN_SYSTEM_PROMPT = "You are a helpful coding assistant. Answer in Markdown, with code in fenced blocks."
_TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")
_DROPPED_OUTPUT = "[tool output dropped to fit the context window]"
_REPEATED = ("error: this exact call already ran in this turn and its result is above; "
             "answer the user with it, or call something else")


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Rewind:
    """The answer's prose so far is now exactly `text` (a call in another shape was cut out)."""

    text: str


@dataclass(frozen=True)
class AnswerStarted:
    pass


@dataclass(frozen=True)
class AnswerDone:
    """An assistant message is complete (with its tool call, if any)."""

    message: dict[str, Any]
    finish_reason: str
    timings: Timings | None
    prompt_tokens: int
    n_ctx: int


@dataclass(frozen=True)
class ToolStarted:
    call: ToolCall
    decision: Decision | None
    request: ApprovalRequest | None


@dataclass(frozen=True)
class ToolFinished:
    call: ToolCall
    result: ToolResult
    message: dict[str, Any]


@dataclass(frozen=True)
class Notice:
    text: str


Event = TextDelta | Rewind | AnswerStarted | AnswerDone | ToolStarted | ToolFinished | Notice
Emit = Callable[[Event], None]
Ask = Callable[[ApprovalRequest], Approval]


class _Either:
    """Stops a generation when the user cancels or the agent wants it stopped."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def foreign_call_pattern() -> re.Pattern[str]:
    """A call written as a JSON object `{"name": ..., "arguments": ...` (bare, or opening a code
    fence) at a line's start: the shape of a tool call, whatever name the model gave it."""
    return re.compile(r'(?m)^[ \t]*(?:```[A-Za-z]*[ \t]*\n[ \t]*)?\{\s*"name"\s*:\s*"[^"\n]{0,100}"\s*,\s*"arguments"\s*:')


class Agent:
    """Runs turns for one loaded model and toolbox (toolbox None: plain chat without tools)."""

    def __init__(self, model: Any, params: SamplingParams, *, toolbox: Toolbox | None = None,
                 grammar: ToolCallGrammar | None = None, constrain: bool = True,
                 system_prompt: str | None = None, max_rounds: int = 8) -> None:
        self.model = model
        self.params = params
        self.toolbox = toolbox
        self.grammar = grammar if constrain else None
        self.max_rounds = max_rounds
        if system_prompt is None:
            if toolbox is None:
                system_prompt = PLAIN_SYSTEM_PROMPT
            else:
                symbol = ", find_symbol" if "find_symbol" in toolbox.specs else ""
                system_prompt = SYSTEM_PROMPT.format(root=toolbox.workspace.root, symbol=symbol)
        self.system_prompt = system_prompt
        self._foreign = foreign_call_pattern() if toolbox else None
        self._dropped_said = 0

    @property
    def n_ctx(self) -> int:
        return self.model.backend.summary.n_ctx

    # --- the turn -------------------------------------------------------------------------------

    def run(self, history: list[dict[str, Any]], emit: Emit, ask: Ask, cancel: threading.Event) -> None:
        """Answer the last user message of `history`, appending every new message to it."""
        done: set[tuple[str, str]] = set()
        repeats = 0
        for _ in range(self.max_rounds):
            turn, message = self.answer(history, emit, cancel)
            history.append(message)
            if cancel.is_set() or self.toolbox is None:
                return
            if turn.errors and not turn.calls:
                feedback = {"role": "tool", "name": "error", "content": "error: " + "; ".join(turn.errors)}
                history.append(feedback)
                emit(ToolFinished(ToolCall("(unparsed)", {}), ToolResult(False, feedback["content"]), feedback))
                continue
            if not turn.calls:
                return
            for call in turn.calls:
                key = (call.name, json.dumps(call.arguments, sort_keys=True))
                if key in done:  # small models repeat a call instead of reading its result
                    repeats += 1
                    result, stop = ToolResult(False, _REPEATED), repeats > 1
                else:
                    done.add(key)
                    result, stop = self._call(call, emit, ask, cancel)
                tool_message = {"role": "tool", "name": call.name, "tool_call_id": call.id, "content": result.content}
                history.append(tool_message)
                emit(ToolFinished(call, result, tool_message))
                if stop:
                    return
        emit(Notice(f"stopped after {self.max_rounds} tool calls in one turn; say how to go on"))

    def _call(self, call: ToolCall, emit: Emit, ask: Ask, cancel: threading.Event) -> tuple[ToolResult, bool]:
        """Run one call; the flag says the turn ends here (the user said no, or cancelled)."""
        assert self.toolbox is not None
        try:
            prepared = self.toolbox.prepare(call)
        except ToolError as e:
            emit(ToolStarted(call, None, None))
            return ToolResult(False, f"error: {e}"), False
        emit(ToolStarted(call, prepared.decision, prepared.request))
        approval: Approval | None = None
        if prepared.decision.verdict == "ask":
            assert prepared.request is not None
            approval = ask(prepared.request)
            if cancel.is_set() or not approval.approved:
                return ToolResult(False, f"the user rejected this {call.name} call"), True
        result = self.toolbox.run(prepared, approval, cancel)
        return result, cancel.is_set()

    def answer(self, history: list[dict[str, Any]], emit: Emit,
               cancel: threading.Event) -> tuple[ParsedTurn, dict[str, Any]]:
        """Generate one assistant message for `history` (streamed through `emit`)."""
        text, prompt = self._fit(history, emit)
        emit(AnswerStarted())
        specs = list(self.toolbox.specs.values()) if self.toolbox else []
        constraint = self.grammar.constraint(specs, lazy=True) if self.grammar and specs else None
        stop = threading.Event()
        raw, shown = "", ""
        finish, timings = "stop", None
        for ev in self.model.backend.generate(prompt, self._params(constraint), cancel=_Either(cancel, stop)):
            if ev.finish_reason is not None:
                finish, timings = ev.finish_reason, ev.timings
            if stop.is_set():
                continue  # the rest of a call in another shape: decoded again below
            raw += ev.text
            prose = raw.split(OPEN, 1)[0]
            m = self._foreign.search(prose) if self._foreign and self.grammar and OPEN not in raw else None
            if m is not None:
                stop.set()  # the backend stops before its next token
                raw = prose = raw[: m.start()].rstrip()
                emit(Rewind(prose))
                shown = prose
            if len(prose) > len(shown):
                emit(TextDelta(prose[len(shown):]))
                shown = prose
        if stop.is_set() and not cancel.is_set() and self.grammar is not None:
            # Decode the call again, natively and under the schema, after the prose.
            lead = raw + ("\n" if raw else "") + OPEN
            tokens = encode_text(self.model, text + lead)
            constraint = self.grammar.constraint(specs, lazy=False)
            tail = ""
            for ev in self.model.backend.generate(tokens, self._params(constraint), cancel=cancel):
                tail += ev.text
                if ev.finish_reason is not None:
                    finish, timings = ev.finish_reason, ev.timings
            raw = lead + tail
        turn = parse_turn(raw)
        message = assistant_message(turn)
        if not turn.calls and turn.errors:
            message["content"] = raw.strip()
        if cancel.is_set():
            message["status"] = "stopped"
        emit(AnswerDone(message, finish, timings, len(prompt), self.n_ctx))
        return turn, message

    def _params(self, constraint: Any) -> SamplingParams:
        return dataclasses.replace(self.params, constraint=constraint)

    # --- fitting the window -----------------------------------------------------------------------

    def render(self, history: Sequence[dict[str, Any]]) -> str:
        messages = [{"role": "system", "content": self.system_prompt}]
        messages += [{k: m[k] for k in _TEMPLATE_KEYS if k in m} for m in history]
        defs = self.toolbox.definitions() if self.toolbox else None
        return self.model.chat_template.render(messages, tools=defs)

    def _fit(self, history: list[dict[str, Any]], emit: Emit) -> tuple[str, list[int]]:
        """The prompt text and tokens, with old turns dropped (and said) until the answer fits."""
        reserve = min(self.params.max_tokens, self.n_ctx // 4)
        msgs = list(history)
        dropped, cut_outputs = 0, 0
        while True:
            text = self.render(msgs)
            tokens = encode_text(self.model, text)
            if len(tokens) + reserve <= self.n_ctx:
                break
            cut = next((i for i in range(1, len(msgs)) if msgs[i]["role"] == "user"), None)
            if cut is not None:
                dropped += cut
                msgs = msgs[cut:]
                continue
            old = next((i for i, m in enumerate(msgs) if m["role"] == "tool" and m["content"] != _DROPPED_OUTPUT), None)
            if old is None:
                raise ContextOverflowError(
                    f"the last message needs {len(tokens)} tokens plus {reserve} for the answer, but the context "
                    f"window is {self.n_ctx}; shorten it or raise context_length in the settings")
            msgs[old] = {**msgs[old], "content": _DROPPED_OUTPUT}
            cut_outputs += 1
        if dropped and dropped != self._dropped_said:
            emit(Notice(f"{dropped} earlier message(s) left out to fit the {self.n_ctx}-token context window"))
            self._dropped_said = dropped
        if cut_outputs:
            emit(Notice(f"{cut_outputs} earlier tool output(s) cut to fit the {self.n_ctx}-token context window"))
        return text, tokens
