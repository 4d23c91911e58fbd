"""Keeping the index in step with the disk: a `watchdog` observer on the workspace feeds
created, modified, deleted and moved paths to `CodeIndex.refresh`, which re-reads or forgets
them (files held by an editor's buffer stay as the editor has them). Events come in bursts (a
save writes a temporary file and renames it; a `git checkout` touches hundreds of files), so
they are collected and handled together once the workspace has been quiet for `debounce_s`.
Paths the index skips (gitignored, `.git`, `node_modules`, virtualenvs) are dropped on arrival,
before they cost a stat."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from lsp.ignore import SKIPPED_DIRS
from lsp.index import CodeIndex
from lsp.languages import indexed_extensions

log = logging.getLogger(__name__)


class IndexWatcher(FileSystemEventHandler):
    """Watches `index.root` and refreshes the index after each burst of changes. `polling`
    uses stat polling instead of the OS's notifications (network drives, containers without
    inotify)."""

    def __init__(self, index: CodeIndex, *, debounce_s: float = 0.2, polling: bool = False) -> None:
        super().__init__()
        self.index = index
        self.debounce_s = debounce_s
        self._observer = PollingObserver(timeout=0.5) if polling else Observer()
        self._pending: set[Path] = set()
        self._last_event = 0.0
        self._wake = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._drain, name="assistant-index-watch", daemon=True)
        self._extensions = indexed_extensions()

    def start(self) -> None:
        """Start watching; safe to call twice."""
        if self._worker.is_alive():
            return
        self._observer.schedule(self, str(self.index.root), recursive=True)
        self._observer.start()
        self._worker.start()

    def stop(self) -> None:
        """Stop watching and wait for the worker, dropping changes not yet handled."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def __enter__(self) -> IndexWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- watchdog's side -------------------------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        wanted = [Path(p if isinstance(p, str) else p.decode()) for p in paths if p]
        wanted = [p for p in wanted if self._may_matter(p, event.is_directory)]
        if not wanted:
            return
        with self._wake:
            self._pending.update(wanted)
            self._last_event = time.monotonic()
            self._wake.notify_all()

    def _may_matter(self, path: Path, is_dir: bool) -> bool:
        """A cheap first filter, without touching the disk; `refresh` applies the full rules."""
        try:
            rel = path.relative_to(self.index.root)
        except ValueError:
            return False
        if any(part in SKIPPED_DIRS for part in rel.parts):
            return False
        return is_dir or path.name == ".gitignore" or path.suffix.lower() in self._extensions

    # ---- the worker ------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                quiet = time.monotonic() - self._last_event
                if quiet < self.debounce_s:
                    self._wake.wait(self.debounce_s - quiet)
                    continue
                batch, self._pending = sorted(self._pending), set()
            for path in batch:
                try:
                    self.index.refresh(path)
                except Exception:  # one unreadable path must not stop the watcher
                    log.exception("could not refresh %s in the code index", path)
