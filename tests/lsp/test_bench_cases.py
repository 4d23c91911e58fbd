"""The cases `python -m lsp.bench quality` and `coverage` cut from a package: which lines count
as cross-file, `--strict`, and where `--cut use` puts the cursor."""

from __future__ import annotations

from lsp.bench import cross_file_cases

FILES = {
    "pkg/__init__.py": "",
    "pkg/nodes.py": "class Const:\n    pass\n\nclass Or:\n    pass\n",
    "pkg/parser.py": (
        "from . import nodes\n\n"
        "def parse(a, b):\n"
        "    first = nodes.Const(a)\n"
        "    second = nodes.Const(b)\n"
        "    either = nodes.Or(first, second)\n"
        "    return either\n"
    ),
}


def test_strict_keeps_only_uses_found_nowhere_else_in_the_file(workspace) -> None:
    """`nodes.Const` appears on two lines, so neither is strict; `nodes.Or` on one."""
    index = workspace(FILES)
    every = cross_file_cases(index, 10, 0, package="pkg")
    assert sorted(c.line for c in every) == ["either = nodes.Or(first, second)", "first = nodes.Const(a)",
                                             "second = nodes.Const(b)"]
    strict = cross_file_cases(index, 10, 0, package="pkg", strict=True)
    assert [c.line for c in strict] == ["either = nodes.Or(first, second)"]


def test_cut_at_the_line_start_or_at_the_use(workspace) -> None:
    """`line` leaves the whole line to complete; `use` leaves what follows `nodes.`, and the
    text with the expected part put back at the cursor is the file again."""
    index = workspace(FILES)
    source = FILES["pkg/parser.py"]
    for cut, expected, before in (("line", "either = nodes.Or(first, second)", "    "),
                                  ("use", "Or(first, second)", "    either = nodes.")):
        (case,) = cross_file_cases(index, 10, 0, package="pkg", strict=True, cut=cut)
        assert case.expected == expected
        assert case.text[: case.offset].endswith("\n" + before)
        assert case.text[: case.offset] + case.expected + case.text[case.offset:] == source
