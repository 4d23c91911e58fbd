"""The chat on the daemon: with a live `assistant serve` holding the same model file, the real app
(under Pilot) generates through it, tool calls included (their grammar goes along), says so in the
status bar, and loads the model itself once the daemon is gone, between turns or during one (killed:
the turn ends with one error line; stopped: the daemon drains, so the answer comes whole)."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import pytest

from assistant.approval import ApprovalRules
from assistant.loader import load_shared
from assistant.sandbox import Workspace
from assistant.sessions import SessionStore
from assistant.settings import load_settings
from tests.serve.conftest import Daemon, daemon_env, start_daemon
from tests.tui.scripted import wait_for
from tests.tui.test_chat import answers, chat, run, send
from tui.app import make_app
from tui.runtime import build_runtime


def completions_served(d: Daemon) -> float:
    """How many /v1/completions requests the daemon has answered (its Prometheus counter)."""
    code, _, body = d.request("GET", "/metrics")
    assert code == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("assistant_requests_total{") and 'route="/v1/completions"' in line)


@pytest.fixture
def own_daemon(cli_env, smollm2_path, tmp_path_factory, monkeypatch):
    """Start a daemon (extra serve flags) that this process, like the user's editor, can find."""
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        env = daemon_env(cli_env, tmp_path_factory.mktemp("daemon"))
        d = start_daemon(env, *extra)
        started.append(d)
        monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
        return d

    yield start
    for d in started:
        d.stop()


def test_the_chat_uses_the_daemon_and_falls_back_when_it_stops(own_daemon, smollm2_path: Path, workspace: Path,
                                                               tmp_path: Path) -> None:
    """With a daemon serving SmolLM2 the chat answers through it (its request counter goes up) and
    the status bar names it with its port; once the daemon stops, the next message loads the model
    in this process and is answered there."""
    d = own_daemon()
    settings = load_settings(model="smollm2-135m", backend="llama", threads=1, context_length=1024,
                             temperature=0.0, max_tokens=16)
    app = make_app(settings, workspace=workspace, store=SessionStore(tmp_path / "s.sqlite3"),
                   rules=ApprovalRules(tmp_path / "rules.toml"))

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = chat(app)
            await wait_for(pilot, lambda: app.runtime is not None, timeout=60)
            assert app.runtime.model.backend.name == "daemon"
            assert screen.status.backend == f"daemon :{d.port}"
            assert str(screen.status.render()).startswith(f"smollm2-135m (daemon :{d.port})")
            before = completions_served(d)
            await send(pilot, "What is a Python list?")
            await wait_for(pilot, lambda: answers(app) and not screen.busy, timeout=120)
            assert answers(app)[0].text.strip()
            assert completions_served(d) == before + 1

            await asyncio.to_thread(d.stop)
            await send(pilot, "And a tuple?")
            await wait_for(pilot, lambda: len(answers(app)) == 2 and not screen.busy and app.runtime is not None,
                           timeout=120)
            assert app.runtime.model.backend.name == "llama" and screen.status.backend == "llama"
            assert answers(app)[1].text.strip()
            assert [m["role"] for m in screen.history] == ["user", "assistant", "user", "assistant"]

    run(scenario())


LONG = "Write the numbers from 1 to 300, one per line."  # SmolLM2 answers at length: hundreds of tokens


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def _settings(max_tokens: int):
    return load_settings(model="smollm2-135m", backend="llama", threads=1, context_length=1024, temperature=0.0,
                         max_tokens=max_tokens)


def _app(max_tokens: int, workspace: Path, tmp_path: Path):
    return make_app(_settings(max_tokens), workspace=workspace, store=SessionStore(tmp_path / "s.sqlite3"),
                    rules=ApprovalRules(tmp_path / "rules.toml"))


async def _mid_answer(app, pilot):
    """Once the chat runs through the daemon, send LONG and wait for the answer's first words; the
    chat screen, still busy with the rest."""
    screen = chat(app)
    await wait_for(pilot, lambda: app.runtime is not None, timeout=60)
    assert app.runtime.model.backend.name == "daemon"
    await send(pilot, LONG)
    await wait_for(pilot, lambda: bool(answers(app) and answers(app)[0].text.strip()), timeout=60)
    assert screen.busy
    return screen


def test_a_daemon_killed_mid_answer_is_reported_and_the_next_turn_runs_here(own_daemon, workspace: Path,
                                                                            tmp_path: Path) -> None:
    """The daemon dies while the answer streams (killed once its first words are on screen): the
    turn ends with one error line naming the daemon, the words that came stay as an interrupted
    answer, the chat says it loads the model in this process and does, and the next message is
    answered here."""
    d = own_daemon()
    app = _app(600, workspace, tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await _mid_answer(app, pilot)  # hundreds of tokens are still to come
            # Killed and reaped in one step on the UI thread, so that no UI callback sees the dead
            # process as a zombie (a detached daemon has no parent here to leave one behind).
            d.proc.kill()
            d.proc.wait()
            await wait_for(pilot, lambda: "the daemon stopped: loading the model in this process" in notes(app),
                           timeout=60)
            failed = [m for m in notes(app) if f"the daemon at {d.url} stopped answering" in m]
            assert len(failed) == 1 and "\n" not in failed[0] and "Traceback" not in failed[0], notes(app)
            broken = answers(app)[0]
            assert broken.note == "interrupted" and broken.text.strip()
            await wait_for(pilot, lambda: app.runtime is not None, timeout=120)
            assert app.runtime.model.backend.name == "llama" and screen.status.backend == "llama"

            await send(pilot, "What is a Python list?")
            await wait_for(pilot, lambda: len(answers(app)) == 2 and not screen.busy, timeout=120)
            assert answers(app)[1].text.strip() and answers(app)[1].note == ""
            assert screen.history[-1]["role"] == "assistant" and screen.history[-1]["content"].strip()

    run(scenario())


def test_a_daemon_stopped_mid_answer_finishes_it_and_the_next_turn_runs_here(own_daemon, workspace: Path,
                                                                             tmp_path: Path) -> None:
    """`assistant stop` (SIGTERM) while the answer streams: the daemon drains, so the answer comes
    whole; once its process has exited the next message loads the model in this process, says so,
    and is answered here."""
    d = own_daemon()
    app = _app(120, workspace, tmp_path)

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await _mid_answer(app, pilot)
            d.proc.send_signal(signal.SIGTERM)
            await wait_for(pilot, lambda: not screen.busy, timeout=120)
            assert d.proc.wait(timeout=60) == 0
            done = screen.history[-1]
            assert done["role"] == "assistant" and done.get("status") != "stopped"
            assert answers(app)[0].note == "" and answers(app)[0].text == done["content"]
            assert not [m for m in notes(app) if "stopped answering" in m or "shutting down" in m], notes(app)

            await send(pilot, "What is a Python list?")
            # (the note is a toast that goes after a while: look for it before the answer, which on a
            # slow or busy machine can come after it has gone)
            await wait_for(pilot, lambda: "the daemon stopped: loading the model in this process" in notes(app),
                           timeout=60)
            await wait_for(pilot, lambda: len(answers(app)) == 2 and not screen.busy and app.runtime is not None,
                           timeout=120)
            assert app.runtime.model.backend.name == "llama" and answers(app)[1].text.strip()

    run(scenario())


REQUEST = "Show me the contents of src/calc.py."


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_tool_call_through_the_daemon_is_the_in_process_one(own_daemon, qwen_path: Path, workspace: Path,
                                                             tmp_path: Path) -> None:
    """With Qwen2.5-Coder on the daemon the chat's tool call is decoded there under the grammar the
    chat sends, and at temperature 0 it is the call the same model makes in-process."""
    d = own_daemon("--model", str(qwen_path), "--context-length", "2048")
    settings = load_settings(model=str(qwen_path), backend="llama", threads=1, context_length=2048,
                             temperature=0.0, max_tokens=48)
    rules = ApprovalRules(tmp_path / "rules.toml")
    app = make_app(settings, workspace=workspace, store=SessionStore(tmp_path / "s.sqlite3"), rules=rules)
    seen: dict = {}

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = chat(app)
            await wait_for(pilot, lambda: app.runtime is not None, timeout=120)
            assert app.runtime.model.backend.name == "daemon" and app.runtime.note == "tools"  # constrained
            before = completions_served(d)
            await send(pilot, REQUEST)
            await wait_for(pilot, lambda: any(m.get("tool_calls") for m in screen.history), timeout=600)
            seen["call"] = next(m for m in screen.history if m.get("tool_calls"))["tool_calls"][0]["function"]
            await pilot.press("escape")  # the answer to the file's text is not what this test is about
            await wait_for(pilot, lambda: not screen.busy)
            assert completions_served(d) > before

    run(scenario())
    local = build_runtime(settings.model_copy(update={"use_daemon": False}), Workspace.open(workspace), rules,
                          load_shared)
    try:
        assert local.model.backend.name == "llama" and local.note == "tools"
        turn, _ = local.agent.answer([{"role": "user", "content": REQUEST}], lambda e: None, threading.Event())
    finally:
        local.close()
    assert turn.calls, turn
    assert (seen["call"]["name"], seen["call"]["arguments"]) == (turn.calls[0].name, turn.calls[0].arguments)
    assert seen["call"]["name"] == "read_file" and seen["call"]["arguments"]["path"].endswith("calc.py")
