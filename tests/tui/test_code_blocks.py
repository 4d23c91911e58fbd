"""Pilot tests of the code blocks in answers: each one copies on its own, by keys or by its
[copy] button, and Ctrl+T copies the focused block or else the last one."""

from __future__ import annotations

from tests.tui.scripted import wait_for
from tests.tui.test_chat import answers, chat, run, send
from tui.widgets.prompt import PromptInput

ANSWER = ("Print it:\n\n```python\nprint(1)\n```\n\nor, in the shell:\n\n```sh\necho two\necho three\n```\n\n"
          "Either works.")


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


def test_each_code_block_copies_on_its_own(make_scripted_app) -> None:
    """Every block of an answer is reachable with Shift+Tab and copies with Enter or c; Ctrl+T copies
    the focused block, or the last one from the prompt; the [copy] button copies its own block."""
    app, _ = make_scripted_app([ANSWER])

    async def scenario() -> None:
        async with app.run_test(size=(90, 40)) as pilot:
            await wait_for(pilot, lambda: app.runtime is not None)
            await send(pilot, "How do I print?")
            await wait_for(pilot, lambda: not chat(app).busy and answers(app)
                           and len(answers(app)[0].code_blocks()) == 2)
            first, second = answers(app)[0].code_blocks()
            assert (first.code, second.code) == ("print(1)", "echo two\necho three")
            assert isinstance(app.focused, PromptInput)

            await pilot.press("ctrl+t")  # from the prompt: the last block of the chat
            assert app.clipboard == "echo two\necho three"
            assert "copied the code block (2 lines)" in notices(app)

            await pilot.press("shift+tab")  # the blocks are in the focus chain, just above the prompt
            assert app.focused is second
            await pilot.press("shift+tab")
            assert app.focused is first
            await pilot.press("enter")
            assert app.clipboard == "print(1)"

            app.copy_to_clipboard("")
            await pilot.press("ctrl+t")  # a block has the focus: that one, not the last
            assert app.clipboard == "print(1)"
            await pilot.press("tab", "c")
            assert app.focused is second and app.clipboard == "echo two\necho three"

            app.copy_to_clipboard("")
            await wait_for(pilot, lambda: first.query_one(".copy").region.width > 0)
            await pilot.click(first.query_one("#code-content"))  # a click on the code selects, copies nothing
            assert app.focused is first and app.clipboard == ""
            await pilot.click(second.query_one(".copy-row"), offset=(1, 0))  # nor does the row beside the button
            assert app.clipboard == ""
            await pilot.click(second.query_one(".copy"))
            assert app.clipboard == "echo two\necho three"
            await pilot.click(first.query_one(".copy"))
            assert app.clipboard == "print(1)"

    run(scenario())


def test_code_blocks_of_a_reopened_chat_copy_too(make_scripted_app, tmp_path) -> None:
    """A chat opened from the store renders its answers' blocks as copyable blocks as well."""
    db = tmp_path / "kept.sqlite3"
    app, _ = make_scripted_app([ANSWER], db=db)

    async def first_run() -> None:
        async with app.run_test(size=(90, 40)) as pilot:
            await wait_for(pilot, lambda: app.runtime is not None)
            await send(pilot, "How do I print?")
            await wait_for(pilot, lambda: not chat(app).busy and answers(app))

    run(first_run())
    app2, _ = make_scripted_app([], db=db)

    async def second_run() -> None:
        async with app2.run_test(size=(90, 40)) as pilot:
            await wait_for(pilot, lambda: answers(app2) and len(answers(app2)[0].code_blocks()) == 2)
            button = answers(app2)[0].code_blocks()[0].query_one(".copy")
            await wait_for(pilot, lambda: button.region.width > 0)  # laid out, so a click lands on it
            await pilot.click(button)
            assert app2.clipboard == "print(1)"

    run(second_run())
