"""A regular-expression search over lines of text, bounded in time.

Python's `re` backtracks: a pattern like `(a+)+$` on a line of a's that ends in another
character takes time exponential in the line's length, and a match holds the GIL the whole
time, so a search in a worker thread would freeze the app with it. The `search` tool's pattern
comes from the model, so the matching runs in a child Python process: this file run as a
script (standard library only, `-I -S`: no site-packages, no environment, nothing of the
workspace on its path). The caller's thread feeds it the files' text as JSON lines and kills it
at the deadline or on cancel; what it found until then comes back with the result.

Protocol: the first line to the child is `{"pattern", "max_matches", "max_chars"}`, then one
`[name, text]` line per file; the child answers one `[name, line_number, text]` line per match
and a last `{"more": bool}` line, `more` being true when it stopped at `max_matches`.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

_POLL_S = 0.02


@dataclass(frozen=True)
class Match:
    """One matching line: the file's name as given, its 1-based number, and its stripped text."""

    name: str
    line: int
    text: str


@dataclass
class SearchResult:
    """What a search found, and how it ended."""

    matches: list[Match] = field(default_factory=list)
    more: bool = False  # stopped at max_matches with more lines matching
    timed_out: bool = False
    cancelled: bool = False
    seconds: float = 0.0


class SearchError(Exception):
    """The child process failed (the pattern does not compile, or it ran out of memory)."""


def search(pattern: str, files: Iterable[tuple[str, str]], *, max_matches: int, max_chars: int,
           timeout: float, cancel: threading.Event | None = None) -> SearchResult:
    """Match `pattern` against each line of `files` ((name, text) pairs, taken lazily) and stop
    at `max_matches`, after `timeout` seconds, or when `cancel` is set."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-I", "-S", __file__], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stop = threading.Event()
    feed_errors: list[BaseException] = []
    out_lines: list[bytes] = []

    def feed() -> None:
        """Write the files to the child; its end (done, killed) shows as a broken pipe."""
        assert proc.stdin is not None
        try:
            head = {"pattern": pattern, "max_matches": max_matches, "max_chars": max_chars}
            proc.stdin.write(json.dumps(head).encode() + b"\n")
            for name, text in files:
                if stop.is_set():
                    break
                proc.stdin.write(json.dumps([name, text]).encode() + b"\n")
        except BrokenPipeError:
            return  # the child stopped reading: it has all the matches it wants, or it was killed
        except Exception as e:  # noqa: BLE001 - reading the files failed; the caller raises it
            feed_errors.append(e)
        finally:
            with contextlib.suppress(BrokenPipeError):  # a child that is gone needs no end of input
                proc.stdin.close()

    def drain() -> None:
        assert proc.stdout is not None
        out_lines.extend(proc.stdout)

    feeder = threading.Thread(target=feed, name="search-feed", daemon=True)
    reader = threading.Thread(target=drain, name="search-read", daemon=True)
    feeder.start()
    reader.start()
    result = SearchResult()
    while proc.poll() is None:
        if time.monotonic() - start > timeout:
            result.timed_out = True
        elif cancel is not None and cancel.is_set():
            result.cancelled = True
        else:
            time.sleep(_POLL_S)
            continue
        proc.kill()
        break
    stop.set()
    proc.wait()
    reader.join()
    feeder.join(timeout=1.0)
    err = proc.stderr.read().decode("utf-8", errors="replace").strip()
    proc.stderr.close()
    proc.stdout.close()
    result.seconds = time.monotonic() - start
    if feed_errors:
        raise feed_errors[0]
    finished = False
    for raw in out_lines:
        if not raw.endswith(b"\n"):
            continue  # cut short by the kill
        item = json.loads(raw)
        if isinstance(item, dict):
            result.more, finished = bool(item["more"]), True
        else:
            result.matches.append(Match(*item))
    if not finished and not (result.timed_out or result.cancelled):
        raise SearchError(err.splitlines()[-1] if err else f"the search process exited with {proc.returncode}")
    return result


# --- the child --------------------------------------------------------------------------------


def _child() -> None:
    """Read the pattern and the files from stdin; write each match as soon as it is found."""
    stdin, out = sys.stdin.buffer, sys.stdout
    head = json.loads(stdin.readline())
    regex = re.compile(head["pattern"])
    limit, width = head["max_matches"], head["max_chars"]
    found = 0
    for raw in stdin:
        name, text = json.loads(raw)
        for n, line in enumerate(text.splitlines(), 1):
            if regex.search(line):
                if found == limit:
                    out.write('{"more": true}\n')
                    return
                out.write(json.dumps([name, n, line.strip()[:width]]) + "\n")
                out.flush()  # a match found before a later line hangs still reaches the caller
                found += 1
    out.write('{"more": false}\n')


if __name__ == "__main__":
    _child()
