"""The app in a real terminal: tmux starts `assistant` with no arguments, a question is typed, and
the pane shows the answer the model streamed (the same text the sessions database holds)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (apt-get install -y tmux); the real-terminal test needs it")


def pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow
def test_assistant_in_tmux_streams_an_answer(cli_env: dict[str, str], user_dirs: dict[str, str],
                                             smollm2_path: Path, tmp_path: Path) -> None:
    """`assistant` opens the chat in a terminal; a typed question gets a streamed answer on screen."""
    exe = Path(sys.executable).with_name("assistant")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "assistant.cli"]
    workspace = tmp_path / "project"
    workspace.mkdir()
    env = {**cli_env, "ASSISTANT_MODEL": str(smollm2_path), "ASSISTANT_BACKEND": "llama", "ASSISTANT_THREADS": "2",
           "ASSISTANT_TEMPERATURE": "0", "ASSISTANT_MAX_TOKENS": "40", "ASSISTANT_CONTEXT_LENGTH": "1024",
           "TERM": "xterm-256color"}
    session = f"assistant-test-{int(time.time() * 1000)}"
    env_args = [arg for key, value in env.items() if key.startswith(("ASSISTANT_", "XDG_", "TERM", "PATH", "HOME"))
                for arg in ("-e", f"{key}={value}")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", "-c", str(workspace),
                    *env_args, *command], check=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while "(llama)" not in pane(session):  # the status bar names the backend once the model is loaded
            assert time.monotonic() < deadline, pane(session)
            time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "What is a Python list?"], check=True)
        time.sleep(0.5)  # typed text and Enter in one burst read as a paste, where Enter is a newline
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        while not re.search(r"\d+\.\d tok/s", pane(session)):
            assert time.monotonic() < deadline, pane(session)
            time.sleep(0.5)
        screen = pane(session)
    finally:
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=False)
        time.sleep(1.0)
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
    db = Path(user_dirs["XDG_DATA_HOME"]) / "assistant" / "sessions.sqlite3"
    with sqlite3.connect(db) as conn:
        answer = conn.execute("SELECT content FROM messages WHERE role = 'assistant' ORDER BY id DESC").fetchone()[0]
    assert "What is a Python list?" in screen
    first_words = " ".join(answer.split()[:3])
    assert first_words and first_words in " ".join(screen.split()), (answer, screen)
