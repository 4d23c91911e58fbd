"""The agent's turn loop around the tools: fitting the context window out loud, not repeating a
call forever, and rewriting a call written in another shape into the native format."""

from __future__ import annotations

import threading
from pathlib import Path

from assistant.agent import Agent, Notice, Rewind, foreign_call_pattern
from assistant.approval import Approval, ApprovalRules
from assistant.sandbox import Workspace
from assistant.tools import Toolbox
from engine.backend import SamplingParams
from tests.tui.scripted import ScriptedBackend, ScriptedModel, tool_call


def toolbox(tmp_path: Path) -> Toolbox:
    (tmp_path / "a.py").write_text("x = 1\n")
    return Toolbox(Workspace.open(tmp_path), ApprovalRules(tmp_path / "rules.toml"))


def test_old_turns_are_dropped_with_a_notice(tmp_path: Path) -> None:
    """When the conversation outgrows the window, the oldest turns go and a Notice says so."""
    backend = ScriptedBackend(["fine"], n_ctx=6000)
    agent = Agent(ScriptedModel(backend), SamplingParams(max_tokens=256), toolbox=toolbox(tmp_path))
    history = []
    for i in range(8):
        history += [{"role": "user", "content": f"question {i} " + "x" * 400},
                    {"role": "assistant", "content": f"answer {i} " + "y" * 400}]
    history.append({"role": "user", "content": "last question"})
    events = []
    agent.run(history, events.append, lambda r: Approval(False), threading.Event())
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices and "left out to fit the 6000-token context window" in notices[0]
    assert "question 0" not in backend.prompts[0] and "last question" in backend.prompts[0]
    assert len(backend.prompts[0]) + 256 <= 6000


def test_a_repeated_call_is_not_run_again(tmp_path: Path) -> None:
    """A model that repeats the same call is told so, and the turn ends on the second repeat."""
    call = tool_call("read_file", path="a.py")
    backend = ScriptedBackend([call, call, call, "never reached"])
    agent = Agent(ScriptedModel(backend), SamplingParams(max_tokens=64), toolbox=toolbox(tmp_path))
    history = [{"role": "user", "content": "read a.py"}]
    agent.run(history, lambda e: None, lambda r: Approval(False), threading.Event())
    results = [m["content"] for m in history if m["role"] == "tool"]
    assert results[0].startswith("a.py (lines 1-1 of 1)")
    assert all("already ran" in r for r in results[1:]) and len(results) == 3
    assert len(backend.prompts) == 3


def test_a_fenced_json_call_is_rewritten_in_the_native_format(tmp_path: Path) -> None:
    """A call the model starts in a ```json fence is cut from the prose and decoded again natively."""

    class FakeGrammar:
        def constraint(self, specs, lazy=True):
            return None

    fenced = 'Let me look.\n```json\n{"name": "open_file", "arguments": {"path": "a.py"}}\n```'
    native = '\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
    backend = ScriptedBackend([fenced, native, "x is 1."])
    agent = Agent(ScriptedModel(backend), SamplingParams(max_tokens=64), toolbox=toolbox(tmp_path),
                  grammar=FakeGrammar())  # the scripted backend has no logits to mask
    history = [{"role": "user", "content": "what is x?"}]
    events = []
    agent.run(history, events.append, lambda r: Approval(False), threading.Event())
    assert [e.text for e in events if isinstance(e, Rewind)] == ["Let me look."]
    assert backend.prompts[1].endswith("<|im_start|>assistant\nLet me look.\n<tool_call>")
    assert history[1]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": {"path": "a.py"}}
    assert history[1]["content"] == "Let me look."
    assert history[-1]["content"] == "x is 1."


def test_the_foreign_call_pattern_needs_the_call_shape() -> None:
    """Plain JSON with a "name" key is not taken for a call; name plus arguments is."""
    pattern = foreign_call_pattern()
    assert not pattern.search('```json\n{"name": "Alice", "age": 3}\n```')
    assert pattern.search('```json\n{\n  "name": "anything",\n  "arguments": {')
    assert pattern.search('{"name": "read_file", "arguments": {"path": "a"}}')
