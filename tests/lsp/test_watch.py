"""The file watcher: changes made on disk outside any editor reach the index shortly after."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lsp.index import CodeIndex
from lsp.watch import IndexWatcher

WAIT_S = 10.0


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `condition` until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_disk_changes_reach_the_index(tmp_path: Path, polling: bool) -> None:
    """Created, modified, moved and deleted files are seen by the index within a bounded wait."""
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "a.py").write_text("def original():\n    pass\n")
    index = CodeIndex(tmp_path)
    index.build()
    with IndexWatcher(index, debounce_s=0.05, polling=polling):
        (tmp_path / "a.py").write_text("def changed():\n    pass\n")
        assert wait_for(lambda: bool(index.definitions("changed")))
        assert index.definitions("original") == []

        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "new.py").write_text("def created():\n    pass\n")
        assert wait_for(lambda: bool(index.definitions("created")))

        (tmp_path / "pkg" / "new.py").rename(tmp_path / "pkg" / "moved.py")
        assert wait_for(lambda: [s.path.name for s in index.definitions("created")] == ["moved.py"])

        (tmp_path / "ignored").mkdir()
        (tmp_path / "ignored" / "x.py").write_text("def hidden():\n    pass\n")
        (tmp_path / "a.py").unlink()
        assert wait_for(lambda: index.definitions("changed") == [])
        assert index.definitions("hidden") == []
