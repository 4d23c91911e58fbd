"""Streaming text out of tokens: incremental UTF-8 and stop strings.

Tokens carry bytes, and a character may be split across two tokens (emoji, CJK in byte-level
BPE), so bytes are fed to an incremental decoder that holds an unfinished character back
until its last byte arrives. Stop strings are matched across token boundaries: text that could
still be the start of a stop string is held back, and released when it turns out not to be.
Both are shared by every backend.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Bytes in, complete characters out; invalid bytes become U+FFFD, never an exception."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds the first stop string in streamed text, holding back only what may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit; after a stop string is seen, nothing more."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._pending + text
        cut = self._first_stop(buf)
        hold = self._open_start(buf)
        if cut >= 0 and (hold < 0 or cut <= hold):
            self.stopped = True
            self._pending = ""
            return buf[:cut]
        # a longer stop string may still complete before a shorter one found further on
        keep = hold if hold >= 0 else len(buf)
        self._pending = buf[keep:]
        return buf[:keep]

    def flush(self) -> str:
        """At the end of generation, what was held back is text, up to any stop string in it."""
        buf, self._pending = self._pending, ""
        if self.stopped:
            return ""
        cut = self._first_stop(buf)
        if cut >= 0:
            self.stopped = True
            return buf[:cut]
        return buf

    def _first_stop(self, buf: str) -> int:
        return min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)

    def _open_start(self, buf: str) -> int:
        """Where the earliest stop string that `buf` ends in the middle of begins (-1: none)."""
        start = -1
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    j = len(buf) - k
                    start = j if start < 0 else min(start, j)
                    break
        return start
