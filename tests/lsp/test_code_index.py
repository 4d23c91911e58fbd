"""The code index itself: what the walk skips, what one file's symbols hold, and how editor
buffers, disk re-reads, removals and rebuilds change it."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from lsp.extract import extract
from lsp.index import CodeIndex
from lsp.languages import language_for_path

SKIPS = {
    ".gitignore": "build/\n*.gen.py\n!keep.gen.py\n",
    "src/app.py": "def kept():\n    return 1\n",
    "src/keep.gen.py": "def negated():\n    pass\n",
    "src/skip.gen.py": "def generated():\n    pass\n",
    "build/out.py": "def built():\n    pass\n",
    "src/vendor/.gitignore": "*.py\n",
    "src/vendor/lib.py": "def vendored():\n    pass\n",
    "node_modules/pkg/index.js": "export function fromNodeModules() {}\n",
    "env/pyvenv.cfg": "home = /usr/bin\n",
    "env/lib/site.py": "def in_virtualenv():\n    pass\n",
    ".git/hooks/hook.py": "def in_git():\n    pass\n",
    "src/blob.py": b"def binary():\n    pass\n\x00\x01\x02",
    "src/huge.py": "def huge():\n    pass\n" + "# padding\n" * 110_000,
    "README.md": "# not a language the index reads\n",
}


def test_walk_skips_ignored_binary_and_large_files(workspace) -> None:
    """Gitignored (root and nested, with negation), binary, >1 MB, node_modules, virtualenv and .git files are not indexed."""
    index = workspace(SKIPS)
    assert [index.relative(p) for p in index.files()] == ["src/app.py", "src/keep.gen.py"]
    for name in ("generated", "built", "vendored", "fromNodeModules", "in_virtualenv", "in_git", "binary", "huge"):
        assert index.definitions(name) == [], name


def test_extra_ignore_patterns(tmp_path: Path) -> None:
    """Patterns passed to CodeIndex(ignore=...) exclude paths like the workspace's own .gitignore."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("def t():\n    pass\n")
    (tmp_path / "m.py").write_text("def m():\n    pass\n")
    index = CodeIndex(tmp_path, ignore=["tests/"])
    index.build()
    assert [p.name for p in index.files()] == ["m.py"]


def test_file_symbols_hold_signatures_docstrings_and_imports(workspace) -> None:
    """A file's symbols carry kind, signature up to the body, docstring, parent, line range, imports and reference counts."""
    index = workspace({"pkg/mod.py": (
        "from .base import Base\n\n"
        "LIMIT = 10\n\n"
        "class Shape(Base):\n"
        '    """A shape."""\n\n'
        "    def area(self,\n             scale: float = 1.0) -> float:\n"
        '        """Area, scaled."""\n'
        "        return LIMIT * scale\n"
    )})
    symbols = index.file_symbols("pkg/mod.py")
    assert symbols is not None and symbols.language == "python"
    by_name = {s.name: s for s in symbols.definitions}
    assert by_name["LIMIT"].kind == "variable"
    assert by_name["Shape"].signature == "class Shape(Base):"
    assert by_name["Shape"].docstring == '"""A shape."""'
    area = by_name["area"]
    assert (area.kind, area.parent, area.start_line, area.end_line) == ("method", "Shape", 7, 10)
    assert area.signature == "def area(self,\n         scale: float = 1.0) -> float:"
    assert area.docstring == '"""Area, scaled."""'
    assert [(i.module, i.name, i.alias, i.level) for i in symbols.imports] == [("base", "Base", "Base", 1)]
    assert symbols.references["LIMIT"] == 2
    assert [s.name for s in index.definitions("area")] == ["area"]


def test_buffer_text_wins_over_disk_until_released(workspace) -> None:
    """update_file(path, text) indexes the editor's text; refresh and rebuild keep it; update_file(path) and release re-read the disk."""
    index = workspace({"a.py": "def on_disk():\n    pass\n"})
    index.update_file("a.py", "def in_buffer():\n    pass\n")
    assert index.definitions("on_disk") == [] and len(index.definitions("in_buffer")) == 1
    index.refresh(index.root / "a.py")  # a watcher event while the editor holds the file
    (index.root / "a.py").write_text("def on_disk():\n    return 2\n")
    index.build()  # a rebuild while the editor holds the file
    assert len(index.definitions("in_buffer")) == 1 and index.definitions("on_disk") == []
    index.release_buffer("a.py")
    assert len(index.definitions("on_disk")) == 1 and index.definitions("in_buffer") == []
    index.update_file("a.py", "def again():\n    pass\n")
    index.update_file("a.py")
    assert len(index.definitions("on_disk")) == 1 and index.definitions("again") == []
    assert index.file_symbols("a.py").edited_at is not None


def test_remove_file_and_directory(workspace) -> None:
    """remove_file forgets one file, or every file under a directory."""
    index = workspace({"a.py": "def a():\n    pass\n", "d/b.py": "def b():\n    pass\n", "d/e/c.py": "def c():\n    pass\n"})
    index.remove_file("a.py")
    assert index.definitions("a") == []
    index.remove_file(index.root / "d")
    assert len(index) == 0 and index.definitions("c") == []


def test_rebuild_picks_up_changes_and_reports_progress(workspace) -> None:
    """A second build re-reads changed files, drops deleted ones and reports (done, total) up to the total."""
    index = workspace({"a.py": "def a():\n    pass\n", "b.py": "def b():\n    pass\n"})
    (index.root / "a.py").write_text("def a2():\n    pass\n\n\n")
    (index.root / "b.py").unlink()
    (index.root / "c.py").write_text("def c():\n    pass\n")
    seen: list[tuple[int, int]] = []
    index.build(progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2, 2)
    assert [p.name for p in index.files()] == ["a.py", "c.py"]
    assert index.definitions("a") == [] and len(index.definitions("a2")) == 1


def test_readers_see_whole_files_while_a_writer_updates(workspace) -> None:
    """Lookups from other threads during updates always see one file's version whole, never a mix."""
    index = workspace({"a.py": "def one():\n    pass\ndef two():\n    pass\n"})
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            names = {s.name for s in index.file_symbols("a.py").definitions}
            if names not in ({"one", "two"}, {"three", "four"}):
                errors.append(str(names))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    for i in range(50):
        index.update_file("a.py", "def three():\n    pass\ndef four():\n    pass\n" if i % 2 else
                          "def one():\n    pass\ndef two():\n    pass\n")
    done.set()
    for r in readers:
        r.join()
    assert errors == []


def test_buffer_edits_reparse_incrementally_to_the_same_tree(workspace) -> None:
    """Successive buffer versions, re-parsed from the previous tree, give the tree and symbols a fresh parse gives."""
    text = "import os\n\nclass Box:\n    def area(self, w, h):\n        return w * h\n\ndef top():\n    return Box()\n"
    index = workspace({"m.py": text})
    spec = language_for_path("m.py")
    rng = random.Random(7)
    for _ in range(40):
        at = rng.randrange(len(text) + 1)
        cut = rng.randrange(0, 6)
        text = text[:at] + rng.choice(["", "x", "é", "\n    ", "def f():\n    pass\n", "(", "'"]) + text[at + cut:]
        symbols = index.update_file("m.py", text)
        held = index.buffer("m.py")
        fresh = extract(symbols.path, text.encode(), spec)
        assert held is not None and str(held[1].root_node) == str(fresh.tree.root_node)
        assert symbols.definitions == fresh.symbols.definitions and symbols.imports == fresh.symbols.imports
