"""Approval: which tool calls run at once, which wait for the user, and which are refused.

Reading tools run at once. `apply_edit` and `run_command` wait for the user unless a rule in
the user's approvals file allows them. A command rule is a list of patterns matched element by
element against the parsed argv, never against the command's text: a literal matches itself,
`*` any one argument, and `**` (last) any remaining arguments. So `["git", "status"]` allows
exactly `git status`, and `["pytest", "**"]` any pytest run. A command is refused outright
when it uses shell syntax (`;`, `&&`, `|`, `>`, `$(...)`, backticks, newlines), since it runs
without a shell and could only do something other than what it says, or when it names the
assistant's own configuration. An argv that runs other programs or writes where it was not
asked (`bash -c`, `env`, `xargs`, `find -exec`, `git --output`, `git -c`) or names a path
outside the workspace is never allowed by a rule: the user sees it with the reason and
decides. Rules come only from the approvals file and from the user's answers in the TUI; that
file lives in the protected config directory that no tool can read or write, so nothing the
model says or a file contains can add one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pathspec
import platformdirs

from assistant.sandbox import Workspace
from assistant.settings import config_path, state_dir

log = logging.getLogger(__name__)

Verdict = Literal["allow", "ask", "refuse"]

# Programs that run another program given in their arguments: a rule on them would allow anything.
_WRAPPERS = frozenset({
    "sh", "bash", "zsh", "dash", "ksh", "fish", "csh", "tcsh", "busybox", "env", "xargs", "sudo",
    "doas", "su", "nohup", "timeout", "nice", "ionice", "time", "watch", "strace", "ltrace",
    "parallel", "ssh", "script", "exec", "eval", "command", "builtin", "chroot", "setsid", "stdbuf",
})
# Interpreters, and the flags that make them run code given on the command line.
_INTERPRETERS = {"python": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",), "node": ("-e", "--eval", "-p", "--print"),
                 "php": ("-r",), "lua": ("-e",), "deno": ("eval",), "bun": ("-e", "--eval")}
_FIND_ACTIONS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"})
_GIT_OPTIONS = ("-c", "--config-env", "--exec-path", "-C", "--git-dir", "--work-tree", "--output", "--upload-pack",
                "--receive-pack", "--exec", "--ext-diff", "-o")
_GIT_RISKY_COMMANDS = frozenset({"config", "filter-branch", "submodule"})


@dataclass(frozen=True)
class Decision:
    """What happens to one tool call: run it, ask the user, or refuse it (and why)."""

    verdict: Verdict
    reason: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One allowance: a command's argv patterns, or a gitignore-style pattern of files to edit."""

    tool: Literal["run_command", "apply_edit"]
    argv: tuple[str, ...] = ()
    path: str = ""

    def allows_command(self, argv: Sequence[str]) -> bool:
        if self.tool != "run_command" or not self.argv:
            return False
        for i, pattern in enumerate(self.argv):
            if pattern == "**" and i == len(self.argv) - 1:
                return True
            if i >= len(argv) or (pattern != "*" and pattern != argv[i]):
                return False
        return len(argv) == len(self.argv)

    def allows_edit(self, relative_path: str) -> bool:
        if self.tool != "apply_edit" or not self.path:
            return False
        return pathspec.GitIgnoreSpec.from_lines([self.path]).match_file(relative_path)

    def describe(self) -> str:
        return " ".join(shlex.quote(a) if a not in ("*", "**") else a for a in self.argv) if self.argv else self.path


# --- where rules live, and what tools may never touch --------------------------------------------


def approvals_path() -> Path:
    """The user's approvals file, next to the settings file."""
    return config_path().parent / "approvals.toml"


def protected_paths() -> tuple[Path, ...]:
    """Directories and files no tool may read or write: settings, rules, sessions, logs."""
    return (config_path().parent, config_path(), approvals_path(),
            Path(platformdirs.user_data_dir("assistant")), state_dir())


class ApprovalRules:
    """The rules in the approvals file; the TUI adds one when the user says 'always'."""

    def __init__(self, path: Path, rules: Sequence[Rule] = ()) -> None:
        self.path = path
        self.rules: list[Rule] = list(rules)

    @classmethod
    def load(cls, path: Path | None = None) -> ApprovalRules:
        """Read the file (absent: no rules); a malformed entry is skipped and logged, never guessed at."""
        path = path or approvals_path()
        rules: list[Rule] = []
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            return cls(path)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"approvals file {path} cannot be read: {e}") from None
        for i, entry in enumerate(data.get("allow", [])):
            rule = _rule_from(entry)
            if rule is None:
                log.warning("approvals file %s: entry %d (%r) is not a rule; skipped", path, i + 1, entry)
            else:
                rules.append(rule)
        return cls(path, rules)

    def add(self, rule: Rule) -> None:
        """Keep `rule` and append it to the file (only the user's own answer calls this)."""
        if rule in self.rules:
            return
        self.rules.append(rule)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"\n[[allow]]\ntool = {json.dumps(rule.tool)}\n")
            if rule.argv:
                f.write(f"argv = [{', '.join(json.dumps(a) for a in rule.argv)}]\n")
            if rule.path:
                f.write(f"path = {json.dumps(rule.path)}\n")

    def command_rule(self, argv: Sequence[str]) -> Rule | None:
        return next((r for r in self.rules if r.allows_command(argv)), None)

    def edit_rule(self, relative_path: str) -> Rule | None:
        return next((r for r in self.rules if r.allows_edit(relative_path)), None)


def _rule_from(entry: object) -> Rule | None:
    if not isinstance(entry, dict):
        return None
    tool, argv, path = entry.get("tool"), entry.get("argv", []), entry.get("path", "")
    if tool == "run_command" and isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        if "**" in argv[:-1]:
            return None
        return Rule("run_command", argv=tuple(argv))
    if tool == "apply_edit" and isinstance(path, str) and path.strip():
        return Rule("apply_edit", path=path.strip())
    return None


# --- commands ---------------------------------------------------------------------------------


def shell_syntax(command: str) -> str | None:
    """The first piece of shell syntax in `command` that a shell would act on, or None."""
    quote: str | None = None
    i = 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            quote = None if c == "'" else quote
        elif c == "\\":
            i += 1  # the next character is escaped
        elif quote == '"':
            if c == '"':
                quote = None
            elif c == "`" or command.startswith("$(", i):
                return command[i : i + 2] if c == "$" else c
        elif c in "'\"":
            quote = c
        elif c in ";&|<>`\n":
            two = command[i : i + 2]
            return two if two in ("&&", "||", ">>", "<<") else ("newline" if c == "\n" else c)
        elif command.startswith("$(", i):
            return "$("
        i += 1
    return None


def parse_command(command: str) -> tuple[str, ...]:
    """The argv of `command`, split as a POSIX shell splits words; shell syntax raises ValueError."""
    found = shell_syntax(command)
    if found is not None:
        raise ValueError(
            f"commands run without a shell, so {found!r} cannot work here; run one program at a time "
            "(no pipes, redirection, chaining or substitution)"
        )
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise ValueError(f"the command cannot be split into arguments: {e}") from None
    if not argv:
        raise ValueError("the command is empty")
    return argv


def risks(argv: Sequence[str], workspace: Workspace) -> list[str]:
    """Why a rule may not allow `argv` by itself (empty: a rule may)."""
    found: list[str] = []
    program = os.path.basename(argv[0])
    base = program.rstrip("0123456789.")  # python3.11 -> python
    if "/" in argv[0] and not workspace.contains(Path(os.path.realpath(workspace.root / argv[0]))):
        found.append(f"{argv[0]} is a program outside the workspace")
    if program in _WRAPPERS:
        found.append(f"{program} runs other programs given in its arguments")
    if base in _INTERPRETERS and any(a in _INTERPRETERS[base] for a in argv[1:]):
        found.append(f"{program} runs code given on the command line")
    if program == "find" and (acts := sorted(_FIND_ACTIONS.intersection(argv[1:]))):
        found.append(f"find {' '.join(acts)} runs commands or changes files")
    if program == "git":
        opts = [a for a in argv[1:] if any(a == o or a.startswith(o + "=") or (o == "-c" and a.startswith("-c"))
                                            for o in _GIT_OPTIONS)]
        if opts:
            found.append(f"git {' '.join(opts)} can write files or run programs of its choosing")
        sub = next((a for a in argv[1:] if not a.startswith("-")), None)
        if sub in _GIT_RISKY_COMMANDS:
            found.append(f"git {sub} can change how git runs later")
    for arg in argv[1:]:
        for candidate in _path_like(arg):
            real = Path(os.path.realpath(workspace.root / os.path.expanduser(candidate)))
            if not workspace.contains(real):
                found.append(f"{arg!r} names {real}, outside the workspace")
                break
    return found


def _path_like(arg: str) -> list[str]:
    values = [arg]
    if arg.startswith("-") and "=" in arg:
        values.append(arg.split("=", 1)[1])
    return [v for v in values if v.startswith(("/", "~")) or ".." in Path(v).parts]


def touches_protected(argv: Sequence[str], workspace: Workspace) -> str | None:
    """The first argument naming the assistant's own configuration or data, if any."""
    for arg in argv[1:]:
        for value in {arg, arg.split("=", 1)[-1]}:
            real = Path(os.path.realpath(workspace.root / os.path.expanduser(value)))
            if any(real == p or p in real.parents for p in workspace.protected):
                return arg
    return None


def decide_command(argv: Sequence[str], workspace: Workspace, rules: ApprovalRules) -> Decision:
    """Refuse, ask or allow one parsed command."""
    protected = touches_protected(argv, workspace)
    if protected is not None:
        return Decision("refuse", f"{protected!r} is the assistant's own configuration or data; "
                                  "commands may not touch it")
    warnings = tuple(risks(argv, workspace))
    rule = rules.command_rule(argv)
    if rule is not None and not warnings:
        return Decision("allow", f"allowed by your rule: {rule.describe()}")
    if rule is not None:
        return Decision("ask", f"your rule '{rule.describe()}' matches, but this argv needs a look", warnings)
    return Decision("ask", "commands need your approval", warnings)


def decide_edit(relative_path: str, rules: ApprovalRules) -> Decision:
    rule = rules.edit_rule(relative_path)
    if rule is not None:
        return Decision("allow", f"allowed by your rule: {rule.describe()}")
    return Decision("ask", "edits need your approval")


@dataclass
class ApprovalRequest:
    """What the user is asked: a command's argv, or an edit's diff hunks."""

    tool: str
    summary: str
    argv: tuple[str, ...] = ()
    hunks: list[str] = field(default_factory=list)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Approval:
    """The user's answer: whether to run, which hunks to apply, and a rule to keep, if any."""

    approved: bool
    hunks: frozenset[int] = frozenset()
    remember: Rule | None = None
