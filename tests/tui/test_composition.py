"""The chat's code index comes from the composition root: the `assistant` CLI hands lsp's
tree-sitter index to the app, and tui/ itself never imports lsp/ (ARCHITECTURE.md: tui/ may
import assistant/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.cli import code_index_builder
from tests.tui.scripted import wait_for
from tests.tui.test_chat import answers, chat, run, send
from tui.widgets.tool_call import ToolCallView

TUI = Path(__file__).parents[2] / "tui"


def test_find_symbol_answers_from_the_index_the_cli_wires_in(make_scripted_app) -> None:
    """With the CLI's builder the model is offered find_symbol, and a call answers from lsp's index."""
    build = code_index_builder()
    if build is None:
        pytest.skip("lsp.index (the code index) is not in this tree")
    call = '<tool_call>\n{"name": "find_symbol", "arguments": {"name": "div"}}\n</tool_call>'
    app, backend = make_scripted_app([call, "div is in src/calc.py."], code_index=build)

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.runtime is not None)
            await send(pilot, "Where is div defined?")
            await wait_for(pilot, lambda: not chat(app).busy and len(answers(app)) == 2)
            view = chat(app).query_one(ToolCallView)
            assert view.state == "done"
            assert view.result == "src/calc.py:16-17 function: def div(a, b):"

    run(scenario())
    assert '"name": "find_symbol"' in backend.prompts[0]


def test_without_a_code_index_there_is_no_find_symbol(make_scripted_app) -> None:
    """An app made without a code index builder does not offer find_symbol to the model."""
    app, backend = make_scripted_app(["Hello."])

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.runtime is not None)
            assert "find_symbol" not in app.runtime.agent.toolbox.specs
            await send(pilot, "Hi")
            await wait_for(pilot, lambda: not chat(app).busy and answers(app))

    run(scenario())
    assert '"name": "search"' in backend.prompts[0] and '"name": "find_symbol"' not in backend.prompts[0]


def test_tui_never_imports_lsp() -> None:
    """No module of tui/ names lsp in an import, and importing the whole app loads no lsp module."""
    for path in sorted(TUI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "lsp" or n.startswith("lsp.") for n in names), (path, node.lineno)
    code = ("import sys, tui.app, tui.runtime, tui.screens.chat, tui.screens.models; "
            "print(sorted(m for m in sys.modules if m == 'lsp' or m.startswith('lsp.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=TUI.parent).stdout
    assert out.strip() == "[]"
