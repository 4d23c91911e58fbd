"""Which paths of a workspace the index skips: anything `.gitignore`d (every `.gitignore` from
the root down, plus `.git/info/exclude`, matched with `pathspec`'s git semantics, deeper files
overriding shallower ones), version-control and tool directories, `node_modules`, virtualenvs
(any directory holding a `pyvenv.cfg`), files of no indexed language, files over the size
limit, and binary files (a NUL byte in their first 8 KiB). The same rules serve the initial
walk and the watcher's events, so both agree on what belongs to the index."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pathspec

from lsp.languages import indexed_extensions

MAX_FILE_BYTES = 1_000_000
SKIPPED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".idea", ".vscode", ".eggs", "bower_components",
})
_SNIFF_BYTES = 8192


class IgnoreRules:
    """The workspace's skip rules; `.gitignore` files are read once and cached per directory
    until `invalidate` (the watcher calls it when one changes)."""

    def __init__(self, root: Path, extra: Sequence[str] = (), max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self._extensions = indexed_extensions()
        self._extra = pathspec.GitIgnoreSpec.from_lines(list(extra)) if extra else None
        self._specs: dict[Path, pathspec.GitIgnoreSpec | None] = {}
        self._lock = threading.Lock()

    def invalidate(self, directory: Path | None = None) -> None:
        """Forget the cached `.gitignore` of `directory` (all of them when None)."""
        with self._lock:
            if directory is None:
                self._specs.clear()
            else:
                self._specs.pop(directory, None)

    def _spec(self, directory: Path) -> pathspec.GitIgnoreSpec | None:
        with self._lock:
            if directory in self._specs:
                return self._specs[directory]
        lines: list[str] = []
        sources = [directory / ".gitignore"]
        if directory == self.root:
            sources.append(directory / ".git" / "info" / "exclude")
        for source in sources:
            try:
                lines += source.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue  # no ignore file here: the common case
        spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        with self._lock:
            self._specs[directory] = spec
        return spec

    def _gitignored(self, path: Path, is_dir: bool, parent: Path) -> bool:
        """Whether the `.gitignore` files from the root down to `parent` exclude `path`."""
        verdict: bool | None = None
        rel = path.relative_to(self.root).as_posix()
        if self._extra is not None:
            verdict = self._extra.match_file(rel + "/" if is_dir else rel) or None
        chain = [parent]
        while chain[-1] != self.root and chain[-1] != chain[-1].parent:
            chain.append(chain[-1].parent)
        for directory in reversed(chain):
            spec = self._spec(directory)
            if spec is None:
                continue
            sub = path.relative_to(directory).as_posix()
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                verdict = result.include
        return bool(verdict)

    def skip_dir(self, path: Path) -> bool:
        """Whether the walk should not descend into `path` (its parent already walked)."""
        if path.name in SKIPPED_DIRS or (path / "pyvenv.cfg").exists():
            return True
        return path != self.root and self._gitignored(path, True, path.parent)

    def skip_file(self, path: Path, size: int | None = None) -> bool:
        """Whether `path` (its directory already walked) is not for the index: unknown
        language, gitignored, over the size limit or binary."""
        if path.suffix.lower() not in self._extensions or self._gitignored(path, False, path.parent):
            return True
        try:
            if size is None:
                size = path.stat().st_size
            if size > self.max_file_bytes:
                return True
            with path.open("rb") as handle:
                return b"\0" in handle.read(_SNIFF_BYTES)
        except OSError:
            return True

    def is_ignored(self, path: Path) -> bool:
        """Whether any part of `path` is skipped: the check for a watcher's event, which may
        come from deep inside an ignored directory."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return True
        current = self.root
        for part in rel.parts[:-1]:
            current = current / part
            if self.skip_dir(current):
                return True
        if path.is_dir():
            return self.skip_dir(path)
        return self.skip_file(path) if path.exists() else path.suffix.lower() not in self._extensions

    def walk(self) -> Iterator[tuple[Path, int, float]]:
        """Every indexed file under the root, with its size and mtime."""
        yield from self.walk_dir(self.root)

    def walk_dir(self, top: Path) -> Iterator[tuple[Path, int, float]]:
        """Every indexed file under `top`, which must itself not be skipped."""
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue  # vanished or unreadable: nothing to index there
            for entry in entries:
                path = directory / entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not self.skip_dir(path):
                            stack.append(path)
                    elif entry.is_file(follow_symlinks=False):
                        stat = entry.stat()
                        if not self.skip_file(path, stat.st_size):
                            yield path, stat.st_size, stat.st_mtime
                except OSError:
                    continue
