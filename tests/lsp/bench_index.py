"""Timings of the code index (not a test: run it by hand). Cold build of a workspace (by default
the Python standard library of the interpreter running it, site-packages excluded), a rebuild
with nothing changed, then a typing session: at cursors spread over the workspace's larger
files, a line is typed one keystroke at a time and each keystroke runs the completer's flow,
`update_file(path, text)` then `build_context` on that text.

    .venv/bin/python tests/lsp/bench_index.py [ROOT] [--ignore PATTERN ...] [--files N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sysconfig
import time

from lsp.context import build_context
from lsp.index import CodeIndex

TYPED = "result = helper(value)"


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.1f} ms, p95 {ms[int(len(ms) * 0.95)]:.1f} ms, max {ms[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--ignore", nargs="*", default=["site-packages/"])
    parser.add_argument("--files", type=int, default=10, help="files to type in")
    args = parser.parse_args()

    index = CodeIndex(args.root, ignore=args.ignore)
    start = time.perf_counter()
    index.build()
    print(f"cold build: {len(index)} files in {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    index.build()
    print(f"rebuild, nothing changed: {time.perf_counter() - start:.2f} s")

    rng = random.Random(0)
    sized = sorted((p.stat().st_size, p) for p in index.files() if p.suffix == ".py")
    files = [p for _, p in sized[len(sized) // 2:]]  # the larger half: where context costs most
    updates: list[float] = []
    contexts: list[float] = []
    for path in rng.sample(files, min(args.files, len(files))):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for _ in range(6):
            row = rng.randrange(len(lines))
            offset = sum(len(line) + 1 for line in lines[:row]) + len(lines[row]) - len(lines[row].lstrip())
            for typed in range(1, len(TYPED) + 1):
                buffer = text[:offset] + TYPED[:typed] + text[offset:]
                t0 = time.perf_counter()
                index.update_file(path, buffer)
                t1 = time.perf_counter()
                build_context(index, path, buffer, offset + typed, max_tokens=1024, count_tokens=lambda s: len(s) // 4)
                t2 = time.perf_counter()
                updates.append((t1 - t0) * 1000)
                contexts.append((t2 - t1) * 1000)
        index.release_buffer(path)
    print(f"typing: {len(updates)} keystrokes in {min(args.files, len(files))} files")
    print(f"  update_file(path, text): {percentiles(updates)}")
    print(f"  build_context:           {percentiles(contexts)}")
    print(f"  both:                    {percentiles([a + b for a, b in zip(updates, contexts)])}")


if __name__ == "__main__":
    main()
