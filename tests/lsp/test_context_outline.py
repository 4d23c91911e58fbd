"""What the completion context shows of the file's imports beyond the names the cursor's code
uses: an outline of each imported workspace module (stable wherever the cursor is, in its share
of the budget, first in the prompt), and the definitions imported by name but not used yet."""

from __future__ import annotations

from lsp.context import OUTLINE_SHARE, build_context, render_files


def count_words(text: str) -> int:
    return len(text.split())


NODES = (
    "import typing as t\n\n"
    "LIMIT: int = 10_000  # the value is not the outline's business\n\n"
    "class Node:\n    \"\"\"Base of every node.\"\"\"\n\n    def __init__(self, lineno: int = 0) -> None:\n        self.lineno = lineno\n\n"
    "class Const(Node):\n    def __init__(self, value: t.Any) -> None:\n        self.value = value\n\n"
    "class Or(Node):\n    def __init__(self, left: Node, right: Node) -> None:\n        self.left, self.right = left, right\n\n"
    "class _Private(Node):\n    pass\n\n"
    "@t.overload\ndef walk(\n    node: Node,\n    depth: int = 0,\n) -> t.Iterator[Node]:\n    yield node\n"
)
FILES = {
    "pkg/__init__.py": "",
    "pkg/nodes.py": NODES,
    "pkg/lexer.py": "def describe(token):\n    return str(token)\n\ndef unused_yet(x):\n    return x\n",
    "pkg/parser.py": (
        "from . import nodes\n"
        "from .lexer import describe, unused_yet\n\n"
        "def parse_const(value):\n"
        "    node = nodes.Const(value)\n"
        "    <|>\n\n"
        "def far_below():\n" + "    x = 1\n" * 45 + "\n"
        "def parse_name(token):\n"
        "    return describe(token)\n"
    ),
}


def _at(index, text: str, needle: str, *, max_tokens: int = 2000):
    return build_context(index, "pkg/parser.py", text, text.index(needle), max_tokens=max_tokens,
                         count_tokens=count_words)


def test_imported_module_shows_as_an_outline_of_its_public_names(workspace, context_at) -> None:
    """`from . import nodes` outlines nodes.py, one line per public top-level definition (a
    signature on one line, no decorators, no values), so `nodes.Or` is there though the function
    uses only `nodes.Const`; the outline goes first in the prompt as a stub file."""
    index = workspace(FILES)
    context = context_at(index, FILES, "pkg/parser.py")
    outlines = [s for s in context.snippets if s.outline]
    assert [s.path.name for s in outlines] == ["nodes.py"]
    assert outlines[0].text.split("\n") == [
        "LIMIT: int = ...",
        "class Node: ...",
        "class Const(Node): ...",
        "class Or(Node): ...",
        "def walk(node: Node, depth: int = 0) -> t.Iterator[Node]: ...",
    ]
    assert "imported as nodes" in outlines[0].reason
    files = render_files(context)
    assert files[0] == ("pkg/nodes.pyi", outlines[0].text + "\n")
    assert [path for path, _ in files[1:]] == ["pkg/lexer.py", "pkg/nodes.py"]  # Const's definition after
    assert "class Const(Node):" in dict(files[1:])["pkg/nodes.py"]


def test_outline_is_the_same_wherever_the_cursor_is(workspace) -> None:
    """Two cursors in different functions use different names: the definitions differ, the
    outline and so the prompt's first file do not."""
    index = workspace(FILES)
    text = FILES["pkg/parser.py"].replace("<|>", "")
    first = _at(index, text, "\n\ndef far_below")
    second = _at(index, text, "    return describe")
    assert [s for s in first.snippets if s.outline] == [s for s in second.snippets if s.outline]
    assert render_files(first)[0] == render_files(second)[0]
    assert [s.text.split("(")[0] for s in first.snippets if not s.outline] == ["def describe", "def unused_yet", "class Const"]
    assert [s.text.split("(")[0] for s in second.snippets if not s.outline] == ["def describe", "def unused_yet"]
    assert render_files(first) != render_files(second)


def test_outline_takes_at_most_its_share_cut_to_whole_lines(workspace) -> None:
    """A module of 100 functions under a small budget: its outline keeps whole lines, in file
    order, within OUTLINE_SHARE of the budget, and says how many of them it shows."""
    many = "".join(f"def function_{i}(a, b):\n    return a + b + {i}\n\n" for i in range(100))
    files = {"lib/many.py": many, "main.py": "import lib.many\n\ndef run():\n    lib.many.function_3(1, 2)\n    <|>\n"}
    index = workspace(files)
    text = files["main.py"].replace("<|>", "")
    context = build_context(index, "main.py", text, text.index("\n", text.index("function_3")) + 5,
                            max_tokens=200, count_tokens=count_words)
    outline = next(s for s in context.snippets if s.outline)
    lines = outline.text.split("\n")
    assert 5 < len(lines) < 100
    assert lines == [f"def function_{i}(a, b): ..." for i in range(len(lines))]
    assert outline.tokens <= int(200 * OUTLINE_SHARE)
    assert f"({len(lines)} of 100 definitions)" in outline.reason
    assert context.tokens <= 200
    direct = [s for s in context.snippets if not s.outline]
    assert [s.text.split("(")[0] for s in direct] == ["def function_3"]


def test_names_imported_but_not_used_yet_rank_below_the_used_ones(workspace, context_at) -> None:
    """`unused_yet` is imported by name and not used near the cursor: it is shown, below what
    the cursor's code uses, and said to be unused so far; a budget for one keeps the used one."""
    index = workspace(FILES)
    text = FILES["pkg/parser.py"].replace("<|>", "")
    context = _at(index, text, "    return describe")
    by_name = {s.text.split("(")[0].removeprefix("def "): s for s in context.snippets if not s.outline}
    assert by_name["unused_yet"].score < by_name["describe"].score
    assert "not used here yet" in by_name["unused_yet"].reason
    assert "used 1x" in by_name["describe"].reason
    text = text.replace("from . import nodes\n", "")  # no outline: the whole budget is the definitions'
    small = build_context(index, "pkg/parser.py", text, text.index("    return describe"),
                          max_tokens=by_name["describe"].tokens + 1, count_tokens=count_words)
    kept = [s.text.split("(")[0] for s in small.snippets if not s.outline]
    assert kept == ["def describe"]
