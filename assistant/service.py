"""Service units for the daemon: a systemd user unit on Linux, a launchd agent on macOS.

`assistant service install` writes the unit for this platform, running `assistant serve` from the
absolute path of the `assistant` that was run (resolved at install time), and `uninstall` stops
and removes it. `--dry-run` reports what would be written, run or removed and touches nothing.
The units come from the templates in `service_templates/` (package data). Starting the service
is left to the user, with the command printed, unless `--enable` asks for it and the service
manager's tool is on PATH. Functions return the lines to report; the CLI prints them.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

SYSTEMD_UNIT = "assistant.service"
LAUNCHD_LABEL = "dev.assistant.serve"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Which = Callable[[str], "str | None"]


class ServiceError(Exception):
    """The service cannot be installed or removed as asked; the message says why, in one line."""


@dataclass(frozen=True)
class UnitFile:
    """One service file: where it goes, what it holds, and which service manager reads it."""

    manager: str  # "systemd" or "launchd"
    path: Path
    text: str


def service_manager(platform: str | None = None) -> str:
    """The service manager for `platform` (default: this one): systemd on Linux, launchd on macOS."""
    platform = sys.platform if platform is None else platform
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise ServiceError(
        f"no service manager for platform '{platform}': units exist for Linux (systemd) and macOS (launchd); "
        "run 'assistant serve' yourself instead"
    )


def serve_command(argv0: str | None = None, which: Which = shutil.which) -> list[str]:
    """`assistant serve` with the absolute path of the assistant being run, else the one on PATH."""
    ran = Path(sys.argv[0] if argv0 is None else argv0)
    if ran.name in ("assistant", "assistant.exe") and ran.is_file():
        return [str(ran.resolve()), "serve"]
    found = which("assistant")
    if found is not None:
        return [str(Path(found).absolute()), "serve"]
    # Run as `python -m assistant.cli` with no console script installed: the same interpreter.
    return [str(Path(sys.executable).absolute()), "-m", "assistant.cli", "serve"]


def unit_path(manager: str) -> Path:
    """Where the unit goes: the systemd user unit dir under XDG_CONFIG_HOME, or ~/Library/LaunchAgents."""
    if manager == "systemd":
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user" / SYSTEMD_UNIT
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def launchd_log_dir() -> Path:
    """Where launchd puts the daemon's stdout and stderr (the log file proper is the assistant's own)."""
    return Path.home() / "Library" / "Logs" / "assistant"


def _template(name: str, *, xml: bool) -> jinja2.Template:
    text = (resources.files("assistant") / "service_templates" / name).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=xml, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text)


def systemd_quote(arg: str, *, executable: bool = False) -> str:
    """One ExecStart word: specifiers (%) escaped, variables ($) too in arguments, quoted where needed.

    systemd expands `$VAR` in the arguments only, so a `$` in the executable's path stays as it is
    (checked with `systemd-analyze verify`).
    """
    if "\n" in arg or "\r" in arg:
        raise ServiceError(f"cannot put {arg!r} into a systemd unit: it holds a line break")
    arg = arg.replace("%", "%%")
    if not executable:
        arg = arg.replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(manager: str, command: Sequence[str]) -> UnitFile:
    """The unit file that runs `command` under `manager`."""
    if manager == "systemd":
        text = _template("assistant.service.jinja", xml=False).render(
            exec_start=" ".join(systemd_quote(a, executable=i == 0) for i, a in enumerate(command)))
    else:
        text = _template("dev.assistant.serve.plist.jinja", xml=True).render(
            label=LAUNCHD_LABEL, args=list(command), log_dir=str(launchd_log_dir()))
        plistlib.loads(text.encode("utf-8"))  # the template and escaping give a valid plist, or fail here
    return UnitFile(manager, unit_path(manager), text)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def start_commands(unit: UnitFile) -> list[list[str]]:
    """What enables and (re)starts the installed unit."""
    if unit.manager == "systemd":
        return [["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", SYSTEMD_UNIT],
                ["systemctl", "--user", "restart", SYSTEMD_UNIT]]
    return [["launchctl", "bootout", f"gui/{_uid()}", str(unit.path)],
            ["launchctl", "bootstrap", f"gui/{_uid()}", str(unit.path)]]


def stop_commands(manager: str, path: Path) -> list[list[str]]:
    """What stops and disables the unit before its file is removed."""
    if manager == "systemd":
        return [["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT]]
    return [["launchctl", "bootout", f"gui/{_uid()}", str(path)]]


def _run_all(commands: list[list[str]], runner: Runner, *, tolerate_first: bool = False) -> list[str]:
    lines = []
    for i, cmd in enumerate(commands):
        lines.append(f"ran: {shlex.join(cmd)}")
        try:
            done = runner(cmd)
        except OSError as e:
            raise ServiceError(f"{shlex.join(cmd)}: {e}") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout or "").strip().splitlines()
            detail = why[-1] if why else f"exit status {done.returncode}"
            if tolerate_first and i == 0:  # such as unloading what was never loaded
                lines.append(f"  (not fatal: {detail})")
                continue
            raise ServiceError(f"{shlex.join(cmd)} failed: {detail}")
    return lines


def _default_runner(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=60)


def install(*, platform: str | None = None, dry_run: bool = False, enable: bool = False,
            command: Sequence[str] | None = None, runner: Runner = _default_runner,
            which: Which = shutil.which) -> list[str]:
    """Write the unit for this platform (idempotent); with `enable`, start it. Returns the report."""
    manager = service_manager(platform)
    unit = render_unit(manager, serve_command(which=which) if command is None else command)
    tool = "systemctl" if manager == "systemd" else "launchctl"
    try:
        current = unit.path.read_text(encoding="utf-8") if unit.path.exists() else None
    except OSError as e:
        raise ServiceError(f"cannot read {unit.path}: {e}") from None
    if dry_run:
        verb = "unchanged" if current == unit.text else ("would replace" if current is not None else "would write")
        lines = [f"{verb} {unit.path}:", *unit.text.rstrip("\n").splitlines()]
        if enable:
            lines += [f"would run: {shlex.join(c)}" for c in start_commands(unit)]
        return lines
    if current == unit.text:
        lines = [f"unchanged {unit.path}"]
    else:
        try:
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            if manager == "launchd":
                launchd_log_dir().mkdir(parents=True, exist_ok=True)
            tmp = unit.path.with_name(unit.path.name + ".tmp")
            tmp.write_text(unit.text, encoding="utf-8")
            tmp.replace(unit.path)
        except OSError as e:
            raise ServiceError(f"cannot write {unit.path}: {e}") from None
        lines = [f"{'replaced' if current is not None else 'wrote'} {unit.path}"]
    if enable:
        if which(tool) is None:
            raise ServiceError(f"--enable needs {tool}, which is not on PATH; the unit is written at {unit.path}")
        lines += _run_all(start_commands(unit), runner, tolerate_first=manager == "launchd")
    elif manager == "systemd" and lines[0].startswith("replaced"):  # a running daemon keeps the old command
        lines.append("apply it: systemctl --user daemon-reload && "
                     f"systemctl --user enable {SYSTEMD_UNIT} && systemctl --user restart {SYSTEMD_UNIT}")
    elif manager == "systemd":
        lines.append("start it now and at every login: systemctl --user daemon-reload && "
                     f"systemctl --user enable --now {SYSTEMD_UNIT}")
    else:
        lines.append(f"it starts at your next login; to start it now: launchctl bootstrap gui/{_uid()} "
                     f"{shlex.quote(str(unit.path))}")
    return lines


def uninstall(*, platform: str | None = None, dry_run: bool = False, runner: Runner = _default_runner,
              which: Which = shutil.which) -> list[str]:
    """Stop the service where its manager is at hand, and remove the unit. Returns the report."""
    manager = service_manager(platform)
    path = unit_path(manager)
    if not path.exists():
        return [f"nothing to remove: {path} does not exist"]
    tool = "systemctl" if manager == "systemd" else "launchctl"
    stops = stop_commands(manager, path) if which(tool) is not None else []
    if dry_run:
        return [*(f"would run: {shlex.join(c)}" for c in stops), f"would remove {path}"]
    lines = []
    for cmd in stops:  # a unit that was never started is no reason to keep its file
        try:
            lines += _run_all([cmd], runner, tolerate_first=True)
        except ServiceError as e:
            lines.append(f"  ({e})")
    try:
        path.unlink()
    except OSError as e:
        raise ServiceError(f"cannot remove {path}: {e}") from None
    lines.append(f"removed {path}")
    if manager == "systemd" and stops:
        lines += _run_all([["systemctl", "--user", "daemon-reload"]], runner, tolerate_first=True)
    return lines
