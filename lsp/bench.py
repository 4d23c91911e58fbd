"""Benchmarks of completions: typing latency, and what the cross-file context is worth.

`python -m lsp.bench latency` replays a typing session on a real multi-file package installed
in the environment: lines of its code are erased and typed again one character at a time, and
each keystroke asks for a single-line completion through the same `Completer` the language
server uses; it reports p50/p95 latency with the KV prefix reused, and with the cache dropped
before every request. `python -m lsp.bench quality` cuts cases from the same package, or
several (`--package jinja2,rich`): a line that uses a name imported from another of its files,
the cursor at the line's first character (`--cut use`: right at the use, after `nodes.` in
`nodes.Or(...)`); with `--strict` only lines whose use of that name appears nowhere else in the
file, where only the other file can show it. It completes each with
the cross-file context on and off and reports next-line exact match and edit similarity.
`python -m lsp.bench coverage` takes the same cases and only builds their context (no
generation, seconds for hundreds of cases): for how many does the context name what the line
uses (`nodes.Or` needs `Or`, `loader.get_source(` needs `get_source`), the figure quality
depends on. Figures go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.settings import load_settings
from lsp.completer import Completer, Request
from lsp.config import parse_config
from lsp.context import render_files
from lsp.index import CodeIndex


def package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"no installed package named {name!r}")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Case:
    path: Path
    text: str  # the file with the line's content (from the cursor on) removed
    offset: int  # cursor: where the line's content was (or, cut at the use, inside it)
    expected: str  # the line's content from the cursor on
    line: str = ""  # the line's whole content


IMPORTED_USE = r"(?:\.\w+)*(?=[(.])"
"""What follows an imported name in a use the cases count: attributes, then a call or a dot."""


def cross_file_cases(index: CodeIndex, limit: int, seed: int, *, package: str = "", strict: bool = False,
                     cut: str = "line") -> list[Case]:
    """Lines inside functions that use a name the file imports from another file of the package
    (a relative import, or an absolute one of `package`). `strict`: only lines where such a use
    (`name(`, `name.attr`) appears nowhere else in the file, so the file itself cannot show it.
    `cut`: the cursor at the line's first character (`line`: what the line does is to be guessed
    too), or at the use (`use`: after `nodes.` in `nodes.Or(...)`, before a bare `describe(`; the
    code so far says what it wants, the rest of the line is how: where another file's API shows)."""
    cases: list[Case] = []
    for path in index.files():
        symbols = index.file_symbols(path)
        if symbols is None or path.suffix != ".py":
            continue
        imported = {imp.alias or imp.name for imp in symbols.imports
                    if (imp.alias or imp.name) and (imp.level > 0 or (package and imp.module.split(".")[0] == package))}
        if not imported:
            continue
        uses = _uses_of(imported)
        lines = path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            body = line.strip()
            if not line.startswith("    ") or len(body) < 12 or body.startswith(("#", '"', "'")):
                continue
            found = list(uses.finditer(body))
            if not found:
                continue
            rest = "\n".join(lines[:i] + lines[i + 1:])
            if strict:
                found = [m for m in found if m.group(0) not in rest]
                if not found:
                    continue
            at = 0
            if cut == "use":
                use = found[0].group(0)
                at = found[0].start() + (use.index(".") + 1 if "." in use else 0)
            indent = line[: len(line) - len(line.lstrip())]
            before = "\n".join(lines[:i]) + "\n" + indent + body[:at]
            after = "\n" + "\n".join(lines[i + 1 :])
            cases.append(Case(path, before + after, len(before), body[at:], body))
    random.Random(seed).shuffle(cases)
    return cases[:limit]


def _uses_of(names: set[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(names)) + r")" + IMPORTED_USE)


def _completer(index: CodeIndex, cross_file: bool, max_tokens: int = 48, context_tokens: int | None = None) -> Completer:
    completer = Completer(index, load_settings())
    context: dict[str, Any] = {"crossFile": cross_file}
    if context_tokens is not None:
        context["maxTokens"] = context_tokens
    completer.config = parse_config(
        {"context": context, "completion": {"maxTokens": max_tokens, "multiline": "never"}}
    ).config
    return completer


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_latency(index: CodeIndex, lines: int, seed: int, reuse: bool, stride: int = 1) -> dict[str, Any]:
    """Type `lines` lines again keystroke by keystroke; time every `stride`-th keystroke's completion."""
    completer = _completer(index, cross_file=True)
    cases = cross_file_cases(index, lines, seed)
    latencies: list[float] = []
    model_runs: list[float] = []  # the keystrokes the last suggestion did not already answer
    try:
        completer.model()  # load outside the timings
        for case in cases:
            for k in range(0, len(case.expected) + 1, stride):
                text = case.text[: case.offset] + case.expected[:k] + case.text[case.offset :]
                req = Request(uri=case.path.as_uri(), path=case.path, version=k, text=text, offset=case.offset + k)
                if not reuse:
                    completer.forget()
                served = completer.stats.served_from_last
                t0 = time.perf_counter()
                completer.complete(req)
                latencies.append((time.perf_counter() - t0) * 1000)
                if completer.stats.served_from_last == served:
                    model_runs.append(latencies[-1])
    finally:
        completer.close()
    return {
        "keystrokes": len(latencies),
        "lines": len(cases),
        "prefix_reuse": reuse,
        "every_nth_keystroke": stride,
        "p50_ms": _pct(latencies, 0.5),
        "p95_ms": _pct(latencies, 0.95),
        "mean_ms": statistics.fmean(latencies),
        "served_from_last_suggestion": completer.stats.served_from_last,
        "model_runs": completer.stats.started,
        "model_run_p50_ms": _pct(model_runs, 0.5) if model_runs else None,
        "model_run_p95_ms": _pct(model_runs, 0.95) if model_runs else None,
    }


def run_quality(indexes: dict[str, CodeIndex], n: int, seed: int, strict: bool,
                context_tokens: int | None = None, modes: tuple[bool, ...] = (True, False),
                cut: str = "line") -> dict[str, Any]:
    """`n` cases split evenly over the packages, each completed with the cross-file context on
    and/or off (`modes`; the cases of one file in a row, so the KV of what they share is reused)."""
    per = -(-n // len(indexes))
    picked = [(pkg, c) for pkg, index in indexes.items()
              for c in cross_file_cases(index, per, seed, package=pkg, strict=strict, cut=cut)][:n]
    picked.sort(key=lambda pc: (str(pc[1].path), pc[1].offset))
    out: dict[str, Any] = {"cases": len(picked), "strict": strict, "cut": cut,
                           "per_package": {pkg: sum(p == pkg for p, _ in picked) for pkg in indexes}}
    for cross_file in modes:
        scores: dict[str, list[tuple[bool, float]]] = {pkg: [] for pkg in indexes}
        for pkg, index in indexes.items():
            completer = _completer(index, cross_file, context_tokens=context_tokens)
            try:
                for i, (_, case) in enumerate(pc for pc in picked if pc[0] == pkg):
                    req = Request(uri=case.path.as_uri(), path=case.path, version=i, text=case.text, offset=case.offset)
                    result = completer.complete(req)
                    got = (result.text if result else "").strip()
                    scores[pkg].append((got == case.expected, difflib.SequenceMatcher(None, got, case.expected).ratio()))
            finally:
                completer.close()
        every = [x for rows in scores.values() for x in rows]
        key = "cross_file_on" if cross_file else "cross_file_off"
        out[key] = {"exact_match": sum(e for e, _ in every) / max(1, len(every)),
                    "edit_similarity": statistics.fmean(s for _, s in every) if every else 0.0,
                    "per_package": {pkg: {"exact_match": sum(e for e, _ in rows) / max(1, len(rows)),
                                          "edit_similarity": statistics.fmean(s for _, s in rows) if rows else 0.0}
                                    for pkg, rows in scores.items()}}
    return out


def _deepest_defined(index: CodeIndex, use: str) -> str:
    """The last part of `use` (`nodes.Const.from_untrusted`) that the workspace defines; a
    method of a builtin type (`DEFAULTS.copy`) is no definition the context could show."""
    parts = use.split(".")
    return next((p for p in reversed(parts[1:]) if index.definitions(p)), parts[0])


def run_coverage(indexes: dict[str, CodeIndex], n: int, seed: int, strict: bool,
                 context_tokens: int | None = None, cut: str = "line") -> dict[str, Any]:
    """For `n` cases, build the context the completion would get and check that it names the
    deepest part of every imported name the cut line uses that the workspace defines (the
    member it reaches for)."""
    per = -(-n // len(indexes))
    covered: dict[str, list[bool]] = {}
    tokens: list[int] = []
    misses: list[str] = []
    for pkg, index in indexes.items():
        completer = _completer(index, cross_file=True, context_tokens=context_tokens)
        try:
            for i, case in enumerate(cross_file_cases(index, per, seed, package=pkg, strict=strict, cut=cut)):
                symbols = index.file_symbols(case.path)
                names = {imp.alias or imp.name for imp in symbols.imports if imp.alias or imp.name} if symbols else set()
                wanted = {_deepest_defined(index, m.group(0)) for m in _uses_of(names).finditer(case.line)} if names else set()
                req = Request(uri=case.path.as_uri(), path=case.path, version=i, text=case.text, offset=case.offset)
                ctx = completer.context_for(req)
                shown = "\n".join(text for _, text in render_files(ctx)) if ctx is not None else ""
                hit = bool(wanted) and all(re.search(r"\b" + re.escape(w) + r"\b", shown) for w in wanted)
                covered.setdefault(pkg, []).append(hit)
                tokens.append(ctx.tokens if ctx is not None else 0)
                if not hit and len(misses) < 20:
                    misses.append(f"{index.relative(case.path)}: {case.line[:80]}")
        finally:
            completer.close()
    every = [h for rows in covered.values() for h in rows]
    return {"cases": len(every), "strict": strict, "cut": cut,
            "covered": sum(every) / max(1, len(every)),
            "per_package": {pkg: sum(rows) / max(1, len(rows)) for pkg, rows in covered.items()},
            "context_tokens_mean": statistics.fmean(tokens) if tokens else 0.0,
            "some_misses": misses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lsp.bench")
    p.add_argument("what", choices=("latency", "quality", "coverage"))
    p.add_argument("--package", default="jinja2",
                   help="installed multi-file package(s) to work on, comma-separated (quality splits its cases)")
    p.add_argument("--lines", type=int, default=8, help="latency: lines typed again")
    p.add_argument("--cold-stride", type=int, default=4,
                   help="latency without prefix reuse: time every N-th keystroke (each one evaluates the whole prompt)")
    p.add_argument("--cases", type=int, default=200, help="quality, coverage: cases cut from the package(s)")
    p.add_argument("--strict", action="store_true",
                   help="quality, coverage: only lines whose use of an imported name appears nowhere else in their file")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="quality, coverage: the context budget (context.maxTokens; default: the setting's default)")
    p.add_argument("--cross-file", choices=("both", "on", "off"), default="both",
                   help="quality: complete with the cross-file context on, off, or both")
    p.add_argument("--cut", choices=("line", "use"), default="line",
                   help="quality, coverage: the cursor at the line's start, or at the imported name's use in it")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    indexes = {}
    for name in [x.strip() for x in a.package.split(",") if x.strip()]:
        indexes[name] = CodeIndex(package_root(name))
        indexes[name].build()
    report: dict[str, Any] = {"package": a.package, "context_tokens": a.context_tokens, "files": sum(len(i) for i in indexes.values()),
                              "index_s": time.perf_counter() - t0}
    if a.what == "latency":
        index = next(iter(indexes.values()))
        report["with_reuse"] = run_latency(index, a.lines, a.seed, reuse=True)
        report["without_reuse"] = run_latency(index, a.lines, a.seed, reuse=False, stride=a.cold_stride)
    elif a.what == "coverage":
        report.update(run_coverage(indexes, a.cases, a.seed, a.strict, a.context_tokens, a.cut))
    else:
        modes = {"both": (True, False), "on": (True,), "off": (False,)}[a.cross_file]
        report.update(run_quality(indexes, a.cases, a.seed, a.strict, a.context_tokens, modes, a.cut))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
