"""The tools the model can call, each with a JSON schema, and the toolbox that checks and runs them.

`read_file`, `list_dir`, `search` and `find_symbol` only read the workspace and run at once;
`apply_edit` and `run_command` change it and go through the approval policy
(`assistant.approval`). There is no network tool. Arguments are validated strictly against
the tool's schema (a pydantic model, which also writes the schema the model is shown), every
path goes through the workspace sandbox, and every failure is a `ToolError` whose message is
returned to the model as the tool's result, never raised to the user.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assistant import regex_search
from assistant.approval import (
    Approval,
    ApprovalRequest,
    ApprovalRules,
    Decision,
    decide_command,
    decide_edit,
    parse_command,
)
from assistant.edits import EditError, FileEdit, make_edit
from assistant.sandbox import (
    GitIgnore,
    SandboxError,
    Workspace,
    directory_of,
    read_text,
    read_text_at,
    run_argv,
    write_text_at,
)

log = logging.getLogger(__name__)

MAX_READ_LINES = 400
MAX_LIST_ENTRIES = 300
MAX_MATCHES = 50
MAX_LINE_CHARS = 240


class ToolError(Exception):
    """A tool call that cannot run as asked; the message is the result the model reads."""


# --- schemas ------------------------------------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ReadFileArgs(_Args):
    path: str = Field(description="File path, relative to the workspace root.")
    start_line: int = Field(1, ge=1, description="First line to read (1-based).")
    end_line: int = Field(0, ge=0, description=f"Last line to read; 0 reads on (at most {MAX_READ_LINES} lines).")


class ListDirArgs(_Args):
    path: str = Field(".", description="Directory, relative to the workspace root.")


class SearchArgs(_Args):
    pattern: str = Field(min_length=1, description="Python regular expression to find in file lines.")
    path: str = Field(".", description="Directory or file to search, relative to the workspace root.")


class FindSymbolArgs(_Args):
    name: str = Field(min_length=1, description="Name of a function, class, method or variable.")


class ApplyEditArgs(_Args):
    path: str = Field(description="File to change, relative to the workspace root.")
    old: str = Field(description="Exact text to replace, copied from the file; empty to create a new file.")
    new: str = Field(description="Text to put in its place.")


class RunCommandArgs(_Args):
    command: str = Field(min_length=1, description="One program and its arguments, e.g. 'pytest -q tests'. "
                                                   "No shell: no pipes, redirection, && or $(...).")


Kind = Literal["read", "edit", "command"]


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, what it does, its arguments' model, and whether it changes anything."""

    name: str
    description: str
    args: type[_Args]
    kind: Kind

    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments, without pydantic's titles (they cost prompt tokens)."""
        return _strip_titles(self.args.model_json_schema())

    def definition(self) -> dict[str, Any]:
        """The tool in the OpenAI function format that chat templates render."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters()}}


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("read_file", "Read a text file of the workspace, or a range of its lines.", ReadFileArgs, "read"),
    ToolSpec("list_dir", "List the files and directories in a workspace directory.", ListDirArgs, "read"),
    ToolSpec("search", "Search the workspace's files for a regular expression (.gitignore respected); "
                       "gives file:line: text for each match.", SearchArgs, "read"),
    ToolSpec("find_symbol", "Find where a function, class or variable is defined in the workspace.",
             FindSymbolArgs, "read"),
    ToolSpec("apply_edit", "Change a file by replacing an exact piece of its text (the user reviews the diff).",
             ApplyEditArgs, "edit"),
    ToolSpec("run_command", "Run a program in the workspace (the user approves it first) and get its output.",
             RunCommandArgs, "command"),
)


# --- calls and results --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A call as the model wrote it: a tool name and its arguments (already JSON-decoded)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class ToolResult:
    """What a call gave: the text the model reads, and whether it worked."""

    ok: bool
    content: str


@dataclass
class PreparedCall:
    """A validated call with the policy's decision, and what the user would be asked."""

    call: ToolCall
    spec: ToolSpec
    args: _Args
    decision: Decision
    request: ApprovalRequest | None = None
    edit: FileEdit | None = None
    argv: tuple[str, ...] = ()


class SymbolIndex(Protocol):
    """What `find_symbol` needs from a code index (lsp's CodeIndex has it)."""

    def definitions(self, name: str) -> list[Any]: ...


# Builds the code index of a workspace root. assistant/ never imports lsp/: the composition root
# (`assistant.cli`) passes lsp's builder in, and the toolbox calls it once, on the first find_symbol.
CodeIndexBuilder = Callable[[Path], SymbolIndex]


@dataclass
class Toolbox:
    """The tools of one workspace, its approval rules, and the limits commands run under."""

    workspace: Workspace
    rules: ApprovalRules
    symbols: CodeIndexBuilder | None = None
    command_timeout: float = 60.0
    search_timeout: float = 10.0
    max_output: int = 16_000
    _index: SymbolIndex | None = field(default=None, repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def specs(self) -> dict[str, ToolSpec]:
        return {s.name: s for s in SPECS if s.name != "find_symbol" or self.symbols is not None}

    def definitions(self) -> list[dict[str, Any]]:
        return [s.definition() for s in self.specs.values()]

    def prepare(self, call: ToolCall) -> PreparedCall:
        """Validate `call` and decide what happens to it; raise ToolError when it cannot run."""
        spec = self.specs.get(call.name)
        if spec is None:
            raise ToolError(f"there is no tool named {call.name!r}; the tools are: {', '.join(self.specs)}")
        try:
            args = spec.args.model_validate(call.arguments)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors())
            raise ToolError(f"invalid arguments for {call.name}: {problems}") from None
        try:
            if isinstance(args, ApplyEditArgs):
                return self._prepare_edit(call, spec, args)
            if isinstance(args, RunCommandArgs):
                return self._prepare_command(call, spec, args)
        except (SandboxError, EditError, ValueError) as e:
            raise ToolError(str(e)) from None
        return PreparedCall(call, spec, args, Decision("allow", "reading tools run at once"))

    def _prepare_edit(self, call: ToolCall, spec: ToolSpec, args: ApplyEditArgs) -> PreparedCall:
        real = self.workspace.resolve(args.path, write=True)
        rel = self.workspace.relative(real)
        try:
            with directory_of(self.workspace, rel) as (dir_fd, name):
                before = read_text_at(dir_fd, name)
        except FileNotFoundError:
            before = None  # a directory on the way is missing too: the edit would create it
        edit = make_edit(real, rel, before, args.old, args.new)
        decision = decide_edit(rel, self.rules)
        verb = "create" if edit.creates else "change"
        request = ApprovalRequest("apply_edit", f"{verb} {rel}", hunks=[h.text for h in edit.hunks])
        return PreparedCall(call, spec, args, decision, request, edit=edit)

    def _prepare_command(self, call: ToolCall, spec: ToolSpec, args: RunCommandArgs) -> PreparedCall:
        argv = parse_command(args.command)
        decision = decide_command(argv, self.workspace, self.rules)
        request = ApprovalRequest("run_command", "run " + " ".join(argv), argv=argv, warnings=decision.warnings)
        return PreparedCall(call, spec, args, decision, request, argv=argv)

    def run(self, prepared: PreparedCall, approval: Approval | None = None,
            cancel: threading.Event | None = None) -> ToolResult:
        """Run a prepared call; `approval` is the user's answer where the decision was 'ask'."""
        decision = prepared.decision
        if decision.verdict == "refuse":
            return ToolResult(False, f"refused: {decision.reason}")
        if decision.verdict == "ask" and (approval is None or not approval.approved):
            return ToolResult(False, f"the user rejected this {prepared.spec.name} call")
        try:
            return self._run(prepared, approval, cancel)
        except (ToolError, SandboxError, EditError) as e:
            return ToolResult(False, str(e))
        except OSError as e:
            return ToolResult(False, f"{prepared.spec.name} failed: {e.strerror or e}")

    def _run(self, prepared: PreparedCall, approval: Approval | None, cancel: threading.Event | None) -> ToolResult:
        args = prepared.args
        if isinstance(args, ReadFileArgs):
            return ToolResult(True, self.read_file(args))
        if isinstance(args, ListDirArgs):
            return ToolResult(True, self.list_dir(args))
        if isinstance(args, SearchArgs):
            return ToolResult(True, self.search(args, cancel))
        if isinstance(args, FindSymbolArgs):
            return ToolResult(True, self.find_symbol(args))
        if isinstance(args, ApplyEditArgs):
            assert prepared.edit is not None
            accepted = set(range(len(prepared.edit.hunks))) if approval is None or prepared.decision.verdict == "allow" \
                else set(approval.hunks)
            return self.apply_edit(prepared.edit, accepted)
        if isinstance(args, RunCommandArgs):
            result = run_argv(prepared.argv, self.workspace, timeout=self.command_timeout,
                              max_output=self.max_output, cancel=cancel)
            return ToolResult(result.returncode == 0, result.summary())
        raise ToolError(f"{prepared.spec.name} has no implementation")

    # --- the tools ------------------------------------------------------------------------------

    def read_file(self, args: ReadFileArgs) -> str:
        real = self.workspace.resolve(args.path)
        lines = read_text(real).splitlines()
        start = args.start_line
        end = min(args.end_line or len(lines), len(lines), start + MAX_READ_LINES - 1)
        if start > max(len(lines), 1):
            raise ToolError(f"{args.path} has {len(lines)} lines; start_line {start} is past its end")
        body = "\n".join(lines[start - 1 : end])
        more = f"\n[lines {end + 1}-{len(lines)} not shown]" if end < len(lines) else ""
        return f"{self.workspace.relative(real)} (lines {start}-{end} of {len(lines)}):\n{body}{more}"

    def list_dir(self, args: ListDirArgs) -> str:
        real = self.workspace.resolve(args.path)
        if not real.is_dir():
            raise ToolError(f"{args.path} is not a directory")
        ignore = GitIgnore(self.workspace.root)
        entries = []
        for entry in sorted(os.scandir(real), key=lambda e: e.name):
            path = Path(entry.path)
            is_dir = entry.is_dir()
            if ignore.skip(path, is_dir=is_dir):
                continue
            entries.append(entry.name + ("/" if is_dir else ""))
        shown = entries[:MAX_LIST_ENTRIES]
        more = f"\n[{len(entries) - len(shown)} more entries]" if len(entries) > len(shown) else ""
        rel = self.workspace.relative(real)
        return f"{rel}/ ({len(entries)} entries):\n" + "\n".join(shown) + more if entries else f"{rel}/ is empty"

    def search(self, args: SearchArgs, cancel: threading.Event | None = None) -> str:
        try:
            re.compile(args.pattern)
        except re.error as e:
            raise ToolError(f"the pattern {args.pattern!r} is not a valid regular expression: {e}") from None
        real = self.workspace.resolve(args.path)
        paths: Iterable[Path] = [real] if real.is_file() else self.workspace.walk(real)

        def texts() -> Iterator[tuple[str, str]]:
            for f in paths:
                try:
                    yield self.workspace.relative(f), read_text(f, max_bytes=1_000_000)
                except SandboxError:
                    continue  # binary or oversized: search skips it, as grep -I does

        try:
            found = regex_search.search(args.pattern, texts(), max_matches=MAX_MATCHES, max_chars=MAX_LINE_CHARS,
                                        timeout=self.search_timeout, cancel=cancel)
        except regex_search.SearchError as e:
            raise ToolError(f"the search for {args.pattern!r} failed: {e}") from None
        lines = [f"{m.name}:{m.line}: {m.text}" for m in found.matches]
        if found.timed_out or found.cancelled:
            why = (f"took longer than {self.search_timeout:g} s and was stopped; nested repetition such as "
                   "(a+)+ can backtrack for ever on some lines: use a simpler pattern or a narrower path"
                   if found.timed_out else "was stopped")
            so_far = "\nmatches found before it stopped:\n" + "\n".join(lines) if lines else ""
            raise ToolError(f"the search for {args.pattern!r} {why}{so_far}")
        if not lines:
            return f"no matches for {args.pattern!r}"
        tail = f"\n[more than {MAX_MATCHES} matches; narrow the pattern or the path]" if found.more else ""
        return "\n".join(lines) + tail

    def find_symbol(self, args: FindSymbolArgs) -> str:
        index = self._symbol_index()
        found = []
        for sym in index.definitions(args.name)[:20]:
            path = Path(sym.path)
            try:
                rel = self.workspace.relative(Path(os.path.realpath(path)))
            except ValueError:
                continue  # indexed outside the workspace (cannot happen with a workspace index)
            found.append(f"{rel}:{sym.start_line + 1}-{sym.end_line + 1} {sym.kind}: {sym.signature.strip()}")
        return "\n".join(found) if found else f"no definition named {args.name!r} in the workspace"

    def _symbol_index(self) -> SymbolIndex:
        if self.symbols is None:
            raise ToolError("find_symbol is not available: no code index")
        with self._index_lock:
            if self._index is None:
                self._index = self.symbols(self.workspace.root)
            return self._index

    def apply_edit(self, edit: FileEdit, accepted: set[int]) -> ToolResult:
        if not accepted:
            return ToolResult(False, f"the user rejected every hunk of the edit to {edit.relative}; nothing changed")
        changed = ToolError(f"{edit.relative} changed since the edit was proposed; read it again")
        try:
            # Through the directory's descriptor, never the path: a link put in place of the file
            # or of a directory on its way since the check is refused, not followed out.
            with directory_of(self.workspace, edit.relative, create=edit.creates) as (dir_fd, name):
                current = read_text_at(dir_fd, name)
                if (current is None and not edit.creates) or (current is not None and current != edit.before):
                    raise changed
                write_text_at(dir_fd, name, edit.apply(accepted))
        except FileNotFoundError:
            raise changed from None
        total = len(edit.hunks)
        if len(accepted) == total:
            return ToolResult(True, f"{'created' if edit.creates else 'edited'} {edit.relative} ({total} hunk(s) applied)")
        kept = ", ".join(str(i + 1) for i in sorted(accepted))
        return ToolResult(True, f"edited {edit.relative}: the user applied hunk(s) {kept} of {total}, rejected the rest")
