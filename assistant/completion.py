"""Code completion at a cursor: where it stops and how it is trimmed.

A completion is one line when the cursor sits inside a line of code, and a block when the
cursor is on an empty line or right after a line that opens a block; a block ends when a line
dedents below the cursor's indentation, or at two blank lines. Text already after the cursor
is never repeated. The generation is cut as soon as the end is known, so no tokens are spent
past it. The LSP server refines the block decision with the syntax tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from engine.backend import GenerationEvent, Timings

_OPENERS = (":", "{", "(", "[", "=>", "->", " do", "then")


@dataclass(frozen=True)
class Cursor:
    prefix: str
    suffix: str

    @property
    def line_before(self) -> str:
        return self.prefix.rsplit("\n", 1)[-1]

    @property
    def line_after(self) -> str:
        return self.suffix.split("\n", 1)[0]


def split_at(text: str, line: int, col: int) -> Cursor:
    """Split `text` at 1-based `line` and `col` (col counts characters; past the end clamps)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"line {line} is outside the file (1..{len(lines)})")
    if col < 1:
        raise ValueError(f"column {col} must be 1 or more")
    offset = sum(len(s) + 1 for s in lines[: line - 1]) + min(col - 1, len(lines[line - 1]))
    return Cursor(text[:offset], text[offset:])


def window(cur: Cursor, prefix_chars: int = 4000, suffix_chars: int = 128) -> Cursor:
    """The part of the file the prompt shows: whole lines before the cursor, a little after it.

    Every token of the suffix is evaluated again after each keystroke (it follows the prefix in
    the prompt), so the suffix is kept short; the prefix is mostly reused from the KV cache.
    """
    prefix, suffix = cur.prefix, cur.suffix
    if len(prefix) > prefix_chars:
        prefix = prefix[_stable_cut(prefix, prefix_chars):]
    if len(suffix) > suffix_chars:
        cut = suffix.rfind("\n", 0, suffix_chars)
        suffix = suffix[: cut + 1] if cut > 0 else suffix[:suffix_chars]
    return Cursor(prefix, suffix)


_CUT_LINES = 32  # the prefix's first line moves in steps of this many lines


def _stable_cut(prefix: str, prefix_chars: int) -> int:
    """Where the prefix's window starts: a line start at most `prefix_chars` before the cursor,
    on a line whose number is a multiple of _CUT_LINES (as few as needed past that), so that the
    start stays put while the user types and every keystroke reuses the cached prompt up to the
    cursor (a window sliding one character per keystroke would change the prompt's first tokens)."""
    starts = [0] + [i + 1 for i, ch in enumerate(prefix) if ch == "\n"]
    first = next((n for n, at in enumerate(starts) if len(prefix) - at <= prefix_chars), None)
    if first is None:  # the cursor's own line is longer than the window
        return len(prefix) - prefix_chars
    snapped = -(-first // _CUT_LINES) * _CUT_LINES
    return starts[snapped] if snapped < len(starts) else starts[first]


def wants_block(cur: Cursor) -> bool:
    """A block is wanted on an empty line, or right after a line that opens one."""
    if cur.line_after.strip():
        return False
    if not cur.line_before.strip():
        return True
    return cur.line_before.rstrip().endswith(_OPENERS)


def _indent(s: str) -> int:
    return len(s) - len(s.lstrip(" \t"))


class NaturalEnd:
    """Accumulates streamed text and says when the completion has reached its natural end."""

    def __init__(self, cur: Cursor, multiline: bool, max_lines: int = 24) -> None:
        self.cur = cur
        self.multiline = multiline
        self.max_lines = max_lines
        self.base = self._base_indent(cur)
        self.text = ""
        self.done = False

    @staticmethod
    def _base_indent(cur: Cursor) -> int:
        """Lines of the block may not dedent below this; the body of an opener sits deeper."""
        before = cur.line_before
        if before.strip():
            opener = before
        else:
            previous = [ln for ln in cur.prefix.split("\n")[:-1] if ln.strip()]
            opener = previous[-1] if previous else ""
            if not opener.rstrip().endswith(_OPENERS):
                return len(before)
        return _indent(opener) + (1 if opener.rstrip().endswith(_OPENERS) else 0)

    def feed(self, delta: str) -> None:
        self.text += delta
        lines = self.text.split("\n")
        if not self.multiline:
            if len(lines) > 1:
                self.text, self.done = lines[0], True
            return
        # Only whole lines (all but the last) are judged; the first continues the cursor's line.
        keep = [lines[0]]
        blank_run = 0
        for ln in lines[1:-1]:
            if ln.strip() and _indent(ln) < self.base:
                self.text, self.done = "\n".join(keep), True
                return
            blank_run = blank_run + 1 if not ln.strip() else 0
            if blank_run >= 2 or len(keep) >= self.max_lines:
                self.text, self.done = "\n".join(keep), True
                return
            keep.append(ln)

    def result(self) -> str:
        text = self.text.rstrip() if self.multiline else self.text.rstrip("\r")
        return trim_overlap(text, self.cur.line_after)


def trim_overlap(completion: str, line_after: str) -> str:
    """Drop the end of the completion that repeats what already follows the cursor."""
    tail = line_after.rstrip()
    if not tail:
        return completion
    for k in range(min(len(tail), len(completion)), 0, -1):
        if completion.endswith(tail[:k]) and (k == len(tail) or tail[:k].strip()):
            return completion[: len(completion) - k]
    return completion


@dataclass(frozen=True)
class Completion:
    text: str
    timings: Timings | None


def complete(
    events: Iterator[GenerationEvent],
    cur: Cursor,
    *,
    multiline: bool | None = None,
) -> Completion:
    """Consume a generation until its natural end and return the trimmed completion.

    Leaving the loop early closes the generator, which stops the backend at once.
    """
    end = NaturalEnd(cur, wants_block(cur) if multiline is None else multiline)
    timings = None
    try:
        for ev in events:
            if ev.text:
                end.feed(ev.text)
            if ev.timings is not None:
                timings = ev.timings
            if end.done:
                break
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return Completion(end.result(), timings)
