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
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buf[:cut]
        hold = 0
        for s in self.stops:
            # the longest suffix of buf that is a proper prefix of s
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation, what was held back is plain text after all."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
