"""Ranking and budgeting of the completion context: what a small budget keeps and drops, the
stable order of what it keeps, and what counts toward a snippet's score."""

from __future__ import annotations

import time

from lsp.context import build_context, render_files


def count_words(text: str) -> int:
    return len(text.split())


HELPERS = "".join(
    f"def helper_{i}(value):\n    \"\"\"Helper number {i}.\"\"\"\n    return value + {i}\n\n" for i in range(6)
)
FILES = {
    "lib/a_helpers.py": HELPERS,
    "lib/z_more.py": "def far_away(x):\n    return x\n\ndef used_twice(x):\n    return x\n",
    "main.py": (
        "from lib.a_helpers import helper_0, helper_1, helper_2, helper_3, helper_4, helper_5\n"
        "from lib.z_more import far_away, used_twice\n\n"
        "def run(v):\n"
        "    a = far_away(v)\n"
        "    b = helper_5(v)\n"
        "    c = helper_4(v)\n"
        "    d = helper_3(v) + helper_2(v)\n"
        "    e = helper_1(v) + helper_0(v)\n"
        "    f = used_twice(v) + used_twice(v)\n"
        "    return <|>\n"
    ),
}


def test_small_budget_keeps_the_best_and_reports_the_rest(workspace, context_at) -> None:
    """With a budget for a few snippets, the highest-scored ones are kept and every other candidate is listed as dropped."""
    index = workspace(FILES)
    full = context_at(index, FILES, "main.py", max_tokens=10_000)
    assert len(full.snippets) == 8 and full.dropped == []
    ranked = sorted(full.snippets, key=lambda s: -s.score)
    budget = sum(s.tokens for s in ranked[:3]) + 2  # room for the three best (their files' headers included)
    small = context_at(index, FILES, "main.py", max_tokens=budget)
    assert small.tokens <= budget
    assert {s.text for s in small.snippets} == {s.text for s in ranked[:3]}
    assert {s.text for s in small.dropped} == {s.text for s in ranked[3:]}
    assert [s.score for s in small.dropped] == sorted((s.score for s in small.dropped), reverse=True)
    kept_names = {s.text.split("(")[0].removeprefix("def ") for s in small.snippets}
    assert kept_names == {"used_twice", "helper_0", "helper_1"}  # nearest the cursor, and used most


def test_kept_snippets_come_in_stable_path_then_position_order(workspace, context_at) -> None:
    """Kept snippets are sorted by path then position, and two requests give the same context and prompt files."""
    index = workspace(FILES)
    first = context_at(index, FILES, "main.py", max_tokens=10_000)
    second = context_at(index, FILES, "main.py", max_tokens=10_000)
    assert first.snippets == second.snippets
    order = [(s.path.as_posix(), s.start_byte) for s in first.snippets]
    assert order == sorted(order)
    files = render_files(first)
    assert [path for path, _ in files] == ["lib/a_helpers.py", "lib/z_more.py"]
    assert files[0][1].startswith("def helper_0(value):") and files[0][1].endswith("\n")
    assert files == render_files(second)


def test_recent_edit_raises_a_snippet(workspace) -> None:
    """Of two definitions used alike, the one whose file was just edited (update_file) scores higher."""
    files = {
        "one.py": "def first(x):\n    return x\n",
        "two.py": "def second(x):\n    return x\n",
        "main.py": "from one import first\nfrom two import second\n\ndef go():\n    return first(1) + second(2)\n",
    }
    index = workspace(files)
    text = files["main.py"]
    offset = text.index("return")

    def scores() -> dict[str, float]:
        ctx = build_context(index, "main.py", text, offset, max_tokens=1000, count_tokens=count_words,
                            now=time.time())
        return {s.path.name: s.score for s in ctx.snippets}

    before = scores()
    assert before["one.py"] == before["two.py"]
    index.update_file("two.py", files["two.py"])
    after = scores()
    assert after["two.py"] > after["one.py"] == before["one.py"]


def test_long_class_shows_as_an_outline(workspace, context_at) -> None:
    """A class too long to show whole is its signature, docstring and its members' signatures."""
    body = "".join(f"    def method_{i}(self, a: int) -> int:\n        x = a\n        return x * {i}\n\n" for i in range(8))
    files = {
        "model.py": f'class Model:\n    """A long model."""\n\n    name: str = ""\n\n{body}',
        "use.py": "from model import Model\n\ndef go():\n    m = Model()\n    m.<|>\n",
    }
    index = workspace(files)
    ctx = context_at(index, files, "use.py")
    text = ctx.snippets[0].text
    assert text.startswith('class Model:\n    """A long model."""\n    name: str = ""\n    def method_0(self, a: int) -> int:\n        ...')
    assert "return x" not in text and text.count("def method_") == 8


def test_nothing_for_unknown_languages_or_no_budget(workspace) -> None:
    """A file of no indexed language, or a zero budget, gets an empty context."""
    index = workspace(FILES)
    assert build_context(index, "notes.txt", "hello", 0, max_tokens=100, count_tokens=count_words).snippets == []
    text = FILES["main.py"].replace("<|>", "")
    assert build_context(index, "main.py", text, 10, max_tokens=0, count_tokens=count_words).snippets == []
