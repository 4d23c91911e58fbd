"""What the chat runs on: a loaded model, and the agent with the workspace's tools.

Built in a worker thread (loading a model in this process, and indexing its vocabulary for
constrained decoding, take seconds; on the daemon neither happens here), then handed to the
screen. A model whose chat template has no tool format (SmolLM2) chats without tools; a model whose vocabulary lacks the `<tool_call>` token, or that
runs on a remote server taking no grammar, still gets tools, parsed from its text but not
constrained; `note` says which, for the status bar. On the daemon the grammar goes with each
request and the daemon decodes under it.

The code index behind `find_symbol` comes in as a builder (`CodeIndexBuilder`) from whoever
made the app: the `assistant` CLI wires lsp's tree-sitter index in, so tui/ never imports lsp/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assistant.agent import Agent
from assistant.approval import ApprovalRules
from assistant.sandbox import Workspace
from assistant.settings import Settings
from assistant.toolcalls import ToolCallGrammar, supports_tools
from assistant.tools import CodeIndexBuilder, Toolbox
from engine.backend import EngineError, SamplingParams

log = logging.getLogger(__name__)

Loader = Callable[[Settings], Any]


@dataclass
class Runtime:
    """A loaded model and the agent that talks to it."""

    model: Any
    agent: Agent
    note: str

    def close(self) -> None:
        self.model.close()


def sampling(settings: Settings) -> SamplingParams:
    return SamplingParams(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                          min_p=settings.min_p, repeat_penalty=settings.repeat_penalty, seed=settings.seed,
                          max_tokens=settings.max_tokens)


def build_runtime(settings: Settings, workspace: Workspace, rules: ApprovalRules, loader: Loader,
                  code_index: CodeIndexBuilder | None = None) -> Runtime:
    """Load the model the settings name and set up the agent for it (errors are for a person);
    without `code_index` the agent has no `find_symbol` tool."""
    model = loader(settings)
    try:
        template_source = getattr(model.chat_template, "source", "")
        if not supports_tools(template_source):
            agent = Agent(model, sampling(settings))
            log.info("%s: its chat template has no tool-call format; chat without tools", settings.model)
            return Runtime(model, agent, "chat only")
        toolbox = Toolbox(workspace, rules, symbols=code_index)
        try:
            grammar: ToolCallGrammar | None = ToolCallGrammar(model)
            note = "tools"
        except (ValueError, RuntimeError, EngineError) as e:
            log.warning("tool calls will not be constrained: %s", e)
            grammar, note = None, "tools (unconstrained)"
        return Runtime(model, Agent(model, sampling(settings), toolbox=toolbox, grammar=grammar), note)
    except BaseException:
        model.close()
        raise
