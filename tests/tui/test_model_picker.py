"""Pilot test of the model picker (Ctrl+O): it lists the bundled models, loads the one chosen
(by name or by a .gguf path) with the real loader, and the status bar follows."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, OptionList

from assistant.loader import load_model
from models import catalog
from tests.tui.scripted import wait_for
from tests.tui.test_chat import chat, run
from tui.screens.chat import ChatScreen
from tui.screens.models import ModelPicker


def test_picker_switches_to_a_bundled_model_and_to_a_path(make_scripted_app, smollm2_path: Path) -> None:
    """Choosing SmolLM2 in the list loads it for real and the status bar names it and its backend; a
    typed path loads that file; a path that is no file keeps the picker open and the model as it was."""
    app, backend = make_scripted_app([], loader=load_model, backend="llama", threads=2, context_length=1024)

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = chat(app)
            await wait_for(pilot, lambda: app.runtime is not None)
            assert screen.status.model == catalog.DEFAULT_MODEL and screen.status.backend == "scripted"
            first = app.runtime

            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            choices = app.screen.query_one(OptionList)
            ids = [choices.get_option_at_index(i).id for i in range(choices.option_count)]
            assert ids[: len(catalog.BUNDLED)] == [m.name for m in catalog.BUNDLED]
            assert str(choices.get_option_at_index(0).prompt).startswith("● ")  # the model in use
            choices.focus()
            await pilot.press("home", *["down"] * ids.index("smollm2-135m"), "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await wait_for(pilot, lambda: app.runtime is not first, timeout=120)
            assert screen.status.model == "smollm2-135m" and screen.status.backend == "llama"
            assert screen.status.note == "chat only"  # SmolLM2's template has no tool format
            assert str(screen.status.render()).startswith("smollm2-135m (llama)")
            assert app.settings.model == "smollm2-135m" and backend.closed  # the old model was closed
            assert app.runtime.model.path == smollm2_path
            second = app.runtime

            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
            assert str(app.screen.query_one(OptionList).get_option_at_index(ids.index("smollm2-135m")).prompt
                       ).startswith("● ")
            path_input = app.screen.query_one(Input)
            path_input.focus()
            path_input.value = str(smollm2_path.parent / "no-such-model.gguf")
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert isinstance(app.screen, ModelPicker) and app.runtime is second

            path_input.value = str(smollm2_path)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.runtime is not second, timeout=120)
            assert screen.status.model == smollm2_path.stem and screen.status.backend == "llama"
            assert app.settings.model == str(smollm2_path)

    run(scenario())
