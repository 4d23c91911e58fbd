"""File edits as the user reviews them: a replacement becomes a unified diff cut into hunks, and
any subset of the hunks can be applied.

The model asks for `old` → `new` in one file; the edit is the whole file before and after, so
a replacement that changes two places far apart shows (and is approved) as two hunks. Hunks
come from difflib's grouped opcodes with three lines of context, as `diff -u` makes them, and
applying a subset takes the new lines of the accepted hunks and the old lines of the others.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

CONTEXT_LINES = 3


class EditError(ValueError):
    """The edit cannot be made as asked (text not found, found twice, file changed)."""


@dataclass(frozen=True)
class Hunk:
    """One contiguous change: its `@@` header and diff lines, and the opcodes it covers."""

    index: int
    header: str
    lines: tuple[str, ...]
    opcodes: tuple[tuple[str, int, int, int, int], ...]

    @property
    def text(self) -> str:
        return "\n".join((self.header, *self.lines))

    @property
    def added(self) -> int:
        return sum(1 for line in self.lines if line.startswith("+"))

    @property
    def removed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("-"))


@dataclass(frozen=True)
class FileEdit:
    """A proposed change to one workspace file, reviewable hunk by hunk."""

    path: Path
    relative: str
    before: str
    after: str
    hunks: tuple[Hunk, ...]
    creates: bool

    def diff(self) -> str:
        head = f"--- {'/dev/null' if self.creates else 'a/' + self.relative}\n+++ b/{self.relative}"
        return "\n".join((head, *(h.text for h in self.hunks)))

    def apply(self, accepted: set[int] | frozenset[int]) -> str:
        """The file's text with the accepted hunks applied and the others left as they were."""
        a, b = _lines(self.before), _lines(self.after)
        chosen = {op for h in self.hunks if h.index in accepted for op in h.opcodes}
        out: list[str] = []
        for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            tag, i1, i2, j1, j2 = op
            out.extend(b[j1:j2] if tag != "equal" and op in chosen else a[i1:i2])
        return "".join(out)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def replace_once(text: str, old: str, new: str, relative: str) -> str:
    """`text` with the one occurrence of `old` replaced by `new`."""
    if not old:
        raise EditError(f"'old' is empty; give the exact text in {relative} to replace")
    count = text.count(old)
    if count == 0:
        hint = " (it differs only in indentation or line endings)" if _loose(old) in _loose(text) else ""
        raise EditError(f"the 'old' text is not in {relative}{hint}; read the file and copy the text exactly")
    if count > 1:
        raise EditError(f"the 'old' text occurs {count} times in {relative}; include more lines so it is unique")
    return text.replace(old, new, 1)


def _loose(text: str) -> str:
    return " ".join(text.split())


def make_edit(path: Path, relative: str, before: str | None, old: str, new: str) -> FileEdit:
    """The edit replacing `old` by `new` in the file (`before` None: a new file holding `new`)."""
    if before is None:
        if old:
            raise EditError(f"{relative} does not exist; to create it, leave 'old' empty")
        after, creates, before = new, True, ""
    else:
        after, creates = replace_once(before, old, new, relative), False
    if after == before:
        raise EditError(f"the edit leaves {relative} unchanged ('old' and 'new' are the same)")
    return FileEdit(path, relative, before, after, tuple(_hunks(before, after)), creates)


def _hunks(before: str, after: str) -> list[Hunk]:
    a, b = _lines(before), _lines(after)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    hunks = []
    for index, group in enumerate(matcher.get_grouped_opcodes(CONTEXT_LINES)):
        first, last = group[0], group[-1]
        header = f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@"
        lines: list[str] = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines += [" " + _shown(x) for x in a[i1:i2]]
                continue
            lines += ["-" + _shown(x) for x in a[i1:i2]]
            lines += ["+" + _shown(x) for x in b[j1:j2]]
        changes = tuple(op for op in group if op[0] != "equal")
        hunks.append(Hunk(index, header, tuple(lines), changes))
    return hunks


def _shown(line: str) -> str:
    return line[:-1] if line.endswith("\n") else line + "\n\\ No newline at end of file"


def _range(start: int, stop: int) -> str:
    # As difflib.unified_diff writes it: 1-based start, and the length when it is not one.
    length = stop - start
    if length == 1:
        return f"{start + 1}"
    return f"{start + 1 if length else start},{length}"
