"""`CodeIndex`: the tree-sitter index of one workspace. `build` walks the workspace (skipping
what `lsp.ignore` skips), extracts each file (`lsp.extract`) and keeps its `FileSymbols`, with
lookups by definition name, by file name and by directory that import resolution
(`lsp.resolve`) and the context builder (`lsp.context`) need. Editors feed it through
`update_file(path, text)`: a buffer's text wins over the disk until `release_buffer`. One
writer and any number of readers may use it at once: parsing happens outside the lock, and
what readers get back are immutable records, so a snapshot never changes under them."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from tree_sitter import Tree

from lsp.extract import extract, reparse
from lsp.ignore import MAX_FILE_BYTES, IgnoreRules
from lsp.languages import language_for_path
from lsp.resolve import module_files
from lsp.symbols import FileSymbols, Import, Symbol


class CodeIndex:
    """Definitions, imports and references of every indexed file of the workspace at `root`.

    `ignore` adds gitignore-style patterns to the workspace's own (a user's exclude setting)."""

    def __init__(self, root: Path | str, *, ignore: Sequence[str] = (),
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.root = Path(root).resolve()
        self.rules = IgnoreRules(self.root, ignore, max_file_bytes)
        self._lock = threading.RLock()
        self._building = threading.Lock()
        self._files: dict[Path, FileSymbols] = {}
        self._by_name: dict[str, dict[Path, tuple[Symbol, ...]]] = {}
        self._by_basename: dict[str, set[Path]] = {}
        self._by_dir: dict[Path, set[Path]] = {}
        self._dirs_by_name: dict[str, set[Path]] = {}
        # Editor buffers' syntax trees and sources: the next version re-parses incrementally,
        # and the context builder reuses the tree of the text just indexed.
        self._trees: dict[Path, tuple[Tree, bytes]] = {}
        self.generation = 0
        """Bumped on every change, so callers can cache what they derive from the index."""

    # ---- writing ------------------------------------------------------------------------

    def build(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Index the workspace; safe to call again, when it only re-reads files whose size or
        mtime changed and drops files that are gone (buffers of open editors are kept). Builds
        from several threads (the first one, a watcher's rescan) run one after the other."""
        with self._building:
            self._build(progress)

    def _build(self, progress: Callable[[int, int], None] | None) -> None:
        found = list(self.rules.walk())
        total = len(found)
        seen: set[Path] = set()
        # The build allocates millions of short-lived objects next to a growing heap of
        # long-lived symbols, none of them in cycles: the cyclic collector would rescan that
        # heap again and again and double the build time (measured on the standard library).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for done, (path, size, mtime) in enumerate(found, 1):
                seen.add(path)
                known = self.file_symbols(path)
                if known is None or not (known.from_buffer or (known.size == size and known.mtime == mtime)):
                    self._index_disk_file(path, size, mtime, edited_at=None, keep_buffer=True)
                if progress is not None:
                    progress(done, total)
        finally:
            if collecting:
                gc.enable()
        # What the index holds now lives as long as the server: move it out of the collector's
        # sight, or every full collection rescans it (a 150 ms pause on the standard library,
        # landing in the middle of a completion request).
        gc.freeze()
        with self._lock:
            gone = [p for p, fs in self._files.items() if p not in seen and not fs.from_buffer]
            for path in gone:
                self._drop(path)
        if progress is not None and total == 0:
            progress(0, 0)

    def update_file(self, path: Path | str, text: str | None = None) -> FileSymbols | None:
        """Re-index one file from an editor's `text` (which then wins over the disk until
        `release_buffer`), or from the disk when `text` is None; record the time as its last
        edit. Returns the new symbols, or None when the file is not (or no longer) indexed."""
        path = self.normalize(path)
        spec = language_for_path(path)
        if spec is None:
            return None
        now = time.time()
        if text is None:
            return self._reread(path, edited_at=now)
        source = text.encode("utf-8", "surrogatepass")
        with self._lock:
            previous = self._trees.get(path)
        tree = reparse(spec, previous[0], previous[1], source) if previous is not None else None
        extraction = extract(path, source, spec, tree=tree)
        symbols = replace(extraction.symbols, edited_at=now, from_buffer=True)
        return self._store(symbols, (extraction.tree, source))

    def release_buffer(self, path: Path | str) -> FileSymbols | None:
        """The editor closed the file: the disk is the truth again."""
        path = self.normalize(path)
        return self._reread(path, edited_at=None)

    def remove_file(self, path: Path | str) -> None:
        """Forget a file, or every file under a directory."""
        path = self.normalize(path)
        with self._lock:
            if path in self._files:
                self._drop(path)
                return
            for known in [p for p in self._files if path in p.parents]:
                self._drop(known)

    def refresh(self, path: Path | str) -> None:
        """Bring whatever is at `path` (file or directory, present or gone) in step with the
        disk, leaving files held by editor buffers alone: the watcher's entry point."""
        path = self.normalize(path)
        if path.name == ".gitignore":
            self.rules.invalidate(path.parent)
            self.build()
            return
        if not path.exists() or self.rules.is_ignored(path):
            with self._lock:
                held = {p for p, fs in self._files.items() if fs.from_buffer}
            if path not in held:
                self.remove_file(path)
            return
        if path.is_dir():
            present = set()
            for file, size, mtime in self.rules.walk_dir(path):
                present.add(file)
                known = self.file_symbols(file)
                if known is None or not (known.from_buffer or (known.size == size and known.mtime == mtime)):
                    self._index_disk_file(file, size, mtime, edited_at=time.time(), keep_buffer=True)
            with self._lock:
                for file in [p for p in self._files if path in p.parents and p not in present]:
                    if not self._files[file].from_buffer:
                        self._drop(file)
            return
        known = self.file_symbols(path)
        if known is None or not known.from_buffer:
            self._reread(path, edited_at=time.time(), keep_buffer=True)

    def _reread(self, path: Path, edited_at: float | None, keep_buffer: bool = False) -> FileSymbols | None:
        try:
            stat = path.stat()
        except OSError:
            self.remove_file(path)
            return None
        if self.rules.skip_file(path, stat.st_size):
            self.remove_file(path)
            return None
        return self._index_disk_file(path, stat.st_size, stat.st_mtime, edited_at, keep_buffer)

    def _index_disk_file(self, path: Path, size: int, mtime: float, edited_at: float | None,
                         keep_buffer: bool = False) -> FileSymbols | None:
        spec = language_for_path(path)
        try:
            source = path.read_bytes()
        except OSError:
            self.remove_file(path)
            return None
        if spec is None:
            return None
        symbols = replace(extract(path, source, spec).symbols, size=size, mtime=mtime, edited_at=edited_at)
        return self._store(symbols, keep_buffer=keep_buffer)

    def _store(self, symbols: FileSymbols, tree: tuple[Tree, bytes] | None = None,
               keep_buffer: bool = False) -> FileSymbols:
        """Swap in one file's symbols; with `keep_buffer`, a version from an editor's buffer that
        arrived while the disk was being read stays (the build and the watcher race the editor)."""
        path = symbols.path
        by_name: dict[str, list[Symbol]] = {}
        for sym in symbols.definitions:
            by_name.setdefault(sym.name, []).append(sym)
        with self._lock:
            current = self._files.get(path)
            if current is not None and keep_buffer and current.from_buffer:
                return current
            if current is not None:
                self._drop(path)
            self._files[path] = symbols
            if tree is not None:
                self._trees[path] = tree
            for name, syms in by_name.items():
                self._by_name.setdefault(name, {})[path] = tuple(syms)
            self._by_basename.setdefault(path.name, set()).add(path)
            siblings = self._by_dir.setdefault(path.parent, set())
            if not siblings:
                self._dirs_by_name.setdefault(path.parent.name, set()).add(path.parent)
            siblings.add(path)
            self.generation += 1
        return symbols

    def _drop(self, path: Path) -> None:
        """Remove one file's entries; the caller holds the lock."""
        symbols = self._files.pop(path)
        self._trees.pop(path, None)
        for name in {sym.name for sym in symbols.definitions}:
            entries = self._by_name.get(name)
            if entries is not None:
                entries.pop(path, None)
                if not entries:
                    del self._by_name[name]
        self._by_basename.get(path.name, set()).discard(path)
        siblings = self._by_dir.get(path.parent)
        if siblings is not None:
            siblings.discard(path)
            if not siblings:
                del self._by_dir[path.parent]
                self._dirs_by_name.get(path.parent.name, set()).discard(path.parent)
        self.generation += 1

    # ---- reading ------------------------------------------------------------------------

    def normalize(self, path: Path | str) -> Path:
        """An absolute path, relative ones taken from the workspace root."""
        if not isinstance(path, Path):  # Path(a Path) parses it again: a cost on every lookup
            path = Path(path)
        return path if path.is_absolute() else self.root / path

    def relative(self, path: Path) -> str:
        """`path` relative to the root, with forward slashes (as prompts show it)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def file_symbols(self, path: Path | str) -> FileSymbols | None:
        with self._lock:
            return self._files.get(self.normalize(path))

    def buffer(self, path: Path | str) -> tuple[FileSymbols, Tree] | None:
        """The symbols and syntax tree of a file held by an editor's buffer, so a completion
        request on the text just indexed need not parse it again."""
        path = self.normalize(path)
        with self._lock:
            symbols, held = self._files.get(path), self._trees.get(path)
        return (symbols, held[0]) if symbols is not None and held is not None else None

    def definitions(self, name: str) -> list[Symbol]:
        """Every definition called `name`, top-level ones first, then by path and position."""
        with self._lock:
            entries = list(self._by_name.get(name, {}).values())
        found = [sym for syms in entries for sym in syms]
        found.sort(key=lambda s: (s.parent is not None, str(s.path), s.start_byte))
        return found

    def files(self) -> list[Path]:
        with self._lock:
            return sorted(self._files)

    def files_named(self, basename: str) -> list[Path]:
        """Indexed files with this file name, in any directory."""
        with self._lock:
            return sorted(self._by_basename.get(basename, ()))

    def files_in_dir(self, directory: Path) -> list[Path]:
        with self._lock:
            return sorted(self._by_dir.get(directory, ()))

    def dirs_named(self, name: str) -> list[Path]:
        """Directories holding indexed files whose own name is `name`."""
        with self._lock:
            return sorted(self._dirs_by_name.get(name, ()))

    def has_file(self, path: Path) -> bool:
        with self._lock:
            return path in self._files

    def resolve_import(self, from_file: Path | str, imp: Import) -> list[Path]:
        """The indexed files that the module of `imp`, written in `from_file`, stands for."""
        return module_files(self, self.normalize(from_file), imp)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)
