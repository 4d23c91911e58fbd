"""`assistant service install|uninstall`: unit files written into a temporary home, never systemctl."""

from __future__ import annotations

import contextlib
import io
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from assistant import service
from assistant.service import ServiceError

COMMAND = ["/opt/assistant/bin/assistant", "serve"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME with its own XDG_CONFIG_HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return tmp_path


class Recorder:
    """A stand-in for subprocess.run that records commands and answers with the given exit codes."""

    def __init__(self, failing: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.failing = failing or {}

    def __call__(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        code = next((c for word, c in self.failing.items() if word in cmd), 0)
        return subprocess.CompletedProcess(list(cmd), code, "", "Boot-out failed: 3: No such process" if code else "")


def never_run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"nothing may be run here, got {cmd}")


def has(*tools: str):
    return lambda name: f"/usr/bin/{name}" if name in tools else None


def exec_start(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_systemd_unit_goes_to_the_xdg_config_dir_and_runs_the_absolute_executable(home: Path) -> None:
    """On Linux the unit lands in $XDG_CONFIG_HOME/systemd/user and runs `assistant serve` by absolute path."""
    report = service.install(platform="linux", command=COMMAND, runner=never_run, which=has("systemctl"))
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    text = unit.read_text()
    assert exec_start(text) == "ExecStart=/opt/assistant/bin/assistant serve"
    assert "Restart=on-failure" in text.splitlines()
    assert "WantedBy=default.target" in text.splitlines()
    assert not [line for line in text.splitlines() if line.startswith(("After=", "Wants=", "Requires="))]
    assert report[0] == f"wrote {unit}"
    assert "systemctl --user enable --now assistant.service" in report[-1]


def test_systemd_unit_defaults_to_dot_config_without_xdg_config_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_CONFIG_HOME the unit goes to ~/.config/systemd/user, where systemd looks."""
    monkeypatch.delenv("XDG_CONFIG_HOME")
    service.install(platform="linux", command=COMMAND, runner=never_run, which=has())
    assert (home / ".config" / "systemd" / "user" / "assistant.service").is_file()


def test_launchd_plist_is_valid_and_keeps_the_daemon_alive(home: Path) -> None:
    """On macOS a valid plist in ~/Library/LaunchAgents runs the daemon at load and keeps it alive."""
    report = service.install(platform="darwin", command=COMMAND, runner=never_run, which=has("launchctl"))
    path = home / "Library" / "LaunchAgents" / "dev.assistant.serve.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "dev.assistant.serve"
    assert plist["ProgramArguments"] == COMMAND
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    logs = home / "Library" / "Logs" / "assistant"
    assert plist["StandardErrorPath"] == str(logs / "serve.err.log")
    assert logs.is_dir()
    assert report[0] == f"wrote {path}"
    assert "launchctl bootstrap gui/" in report[-1]


def test_paths_with_odd_characters_survive_both_formats(home: Path) -> None:
    """Spaces and % are escaped for systemd, and & < > for the plist, so the path reads back unchanged."""
    odd = ["/Users/a b/100% & <more>/$HOME/assistant", "serve"]
    service.install(platform="linux", command=odd, runner=never_run, which=has())
    line = exec_start((home / "xdg-config" / "systemd" / "user" / "assistant.service").read_text())
    assert line == 'ExecStart="/Users/a b/100%% & <more>/$HOME/assistant" serve'
    assert [a.replace("%%", "%") for a in shlex.split(line.removeprefix("ExecStart="))] == odd
    service.install(platform="darwin", command=odd, runner=never_run, which=has())
    plist = plistlib.loads((home / "Library" / "LaunchAgents" / "dev.assistant.serve.plist").read_bytes())
    assert plist["ProgramArguments"] == odd


def test_arguments_escape_dollar_signs_and_quote_spaces() -> None:
    """In ExecStart arguments (not the executable) $ becomes $$, since systemd expands variables there."""
    assert service.systemd_quote("serve") == "serve"
    assert service.systemd_quote("$HOME/x y", executable=False) == '"$$HOME/x y"'
    assert service.systemd_quote("$HOME/x", executable=True) == "$HOME/x"
    assert service.systemd_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'


def test_a_line_break_in_the_path_is_refused(home: Path) -> None:
    """A path holding a line break cannot go into a unit file, and nothing is written."""
    with pytest.raises(ServiceError, match="line break"):
        service.install(platform="linux", command=["/opt/a\nb/assistant", "serve"], runner=never_run, which=has())
    assert not (home / "xdg-config").exists()


def test_reinstall_is_idempotent_and_replaces_a_stale_unit(home: Path) -> None:
    """Installing twice leaves the file as it was; installing from a moved executable rewrites ExecStart."""
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    service.install(platform="linux", command=COMMAND, runner=never_run, which=has())
    first = unit.read_text()
    report = service.install(platform="linux", command=COMMAND, runner=never_run, which=has())
    assert report[0] == f"unchanged {unit}"
    assert unit.read_text() == first
    moved = ["/home/dev/.venv/bin/assistant", "serve"]
    report = service.install(platform="linux", command=moved, runner=never_run, which=has())
    assert report[0] == f"replaced {unit}"
    assert report[-1].endswith("systemctl --user restart assistant.service")
    assert exec_start(unit.read_text()) == "ExecStart=/home/dev/.venv/bin/assistant serve"
    assert sorted(p.name for p in unit.parent.iterdir()) == ["assistant.service"]


def test_dry_run_prints_the_unit_and_writes_nothing(home: Path) -> None:
    """--dry-run shows the path, the content and the commands --enable would run, and creates no file."""
    report = service.install(platform="linux", dry_run=True, enable=True, command=COMMAND, runner=never_run,
                             which=has("systemctl"))
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    assert report[0] == f"would write {unit}:"
    assert "ExecStart=/opt/assistant/bin/assistant serve" in report
    assert "would run: systemctl --user enable assistant.service" in report
    assert not (home / "xdg-config").exists()


def test_enable_reloads_enables_and_restarts_with_systemctl(home: Path) -> None:
    """--enable runs daemon-reload, enable and restart (which also starts it) when systemctl is there."""
    runner = Recorder()
    report = service.install(platform="linux", enable=True, command=COMMAND, runner=runner, which=has("systemctl"))
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "assistant.service"],
        ["systemctl", "--user", "restart", "assistant.service"],
    ]
    assert report[-1] == "ran: systemctl --user restart assistant.service"


def test_enable_without_systemctl_is_a_clear_error_after_writing(home: Path) -> None:
    """--enable where systemctl is missing says so in one line, and the unit is still written."""
    with pytest.raises(ServiceError) as e:
        service.install(platform="linux", enable=True, command=COMMAND, runner=never_run, which=has())
    assert "systemctl, which is not on PATH" in str(e.value) and "\n" not in str(e.value)
    assert (home / "xdg-config" / "systemd" / "user" / "assistant.service").is_file()


def test_enable_with_launchctl_tolerates_an_agent_that_was_not_loaded(home: Path) -> None:
    """On macOS --enable unloads any old agent (failing harmlessly when none ran) and bootstraps the new one."""
    runner = Recorder(failing={"bootout": 3})
    report = service.install(platform="darwin", enable=True, command=COMMAND, runner=runner, which=has("launchctl"))
    assert [c[1] for c in runner.calls] == ["bootout", "bootstrap"]
    assert any(line.startswith("  (not fatal: Boot-out failed") for line in report)


def test_uninstall_stops_then_removes_the_unit(home: Path) -> None:
    """Uninstall disables and stops the service with systemctl, removes the file, then reloads systemd."""
    service.install(platform="linux", command=COMMAND, runner=never_run, which=has())
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    runner = Recorder(failing={"disable": 1})  # a unit that was never enabled
    report = service.uninstall(platform="linux", runner=runner, which=has("systemctl"))
    assert not unit.exists()
    assert runner.calls == [["systemctl", "--user", "disable", "--now", "assistant.service"],
                            ["systemctl", "--user", "daemon-reload"]]
    assert f"removed {unit}" in report
    assert service.uninstall(platform="linux", runner=never_run, which=has("systemctl")) == [
        f"nothing to remove: {unit} does not exist"]


def test_uninstall_removes_the_plist_without_launchctl(home: Path) -> None:
    """Where launchctl is absent the plist is still removed, and nothing is run."""
    service.install(platform="darwin", command=COMMAND, runner=never_run, which=has())
    path = home / "Library" / "LaunchAgents" / "dev.assistant.serve.plist"
    assert service.uninstall(platform="darwin", runner=never_run, which=has()) == [f"removed {path}"]
    assert not path.exists()


def test_uninstall_dry_run_keeps_the_file(home: Path) -> None:
    """uninstall --dry-run names what it would run and remove, and leaves the unit in place."""
    service.install(platform="linux", command=COMMAND, runner=never_run, which=has())
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    report = service.uninstall(platform="linux", dry_run=True, runner=never_run, which=has("systemctl"))
    assert report == ["would run: systemctl --user disable --now assistant.service", f"would remove {unit}"]
    assert unit.is_file()


@pytest.mark.parametrize("platform", ["win32", "freebsd14", "cygwin"])
def test_unsupported_platforms_get_a_one_line_error(home: Path, platform: str) -> None:
    """Install and uninstall on a platform without systemd or launchd fail with one line naming it."""
    for action in (service.install, service.uninstall):
        with pytest.raises(ServiceError) as e:
            action(platform=platform, runner=never_run, which=has())
        message = str(e.value)
        assert f"platform '{platform}'" in message and "assistant serve" in message and "\n" not in message
    assert list(home.iterdir()) == []


def test_serve_command_prefers_the_assistant_being_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit runs the `assistant` that was invoked, made absolute, ahead of another one on PATH."""
    exe = tmp_path / "venv" / "bin" / "assistant"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    assert service.serve_command("venv/bin/assistant", which=has("assistant")) == [str(exe.resolve()), "serve"]


def test_serve_command_falls_back_to_path_then_to_this_interpreter() -> None:
    """Run as `python -m assistant.cli`, the unit uses `assistant` from PATH, else this Python with -m."""
    assert service.serve_command("/src/assistant/cli.py", which=has("assistant")) == ["/usr/bin/assistant", "serve"]
    assert service.serve_command("/src/assistant/cli.py", which=has()) == [
        str(Path(sys.executable).absolute()), "-m", "assistant.cli", "serve"]


def test_templates_are_package_data() -> None:
    """Both templates are read through importlib.resources, as they are from an installed wheel."""
    from importlib import resources

    names = {p.name for p in (resources.files("assistant") / "service_templates").iterdir()}
    assert {"assistant.service.jinja", "dev.assistant.serve.plist.jinja"} <= names


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(home: Path) -> None:
    """systemd's own checker accepts the unit, with an odd but real executable path in ExecStart."""
    odd_dir = home / "odd dir" / "100% $x"
    odd_dir.mkdir(parents=True)
    exe = odd_dir / "assistant"
    exe.symlink_to(sys.executable)
    service.install(platform="linux", command=[str(exe), "serve"], runner=never_run, which=has())
    unit = home / "xdg-config" / "systemd" / "user" / "assistant.service"
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def _cli_has_service() -> bool:
    from assistant.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["service", "install", "--dry-run"])
    except SystemExit:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the systemd path runs on Linux")
@pytest.mark.skipif(not _cli_has_service(), reason="assistant/cli.py has no `service` command wired yet")
def test_cli_service_install_dry_run_prints_the_unit(cli_env: dict[str, str], tmp_path: Path) -> None:
    """`assistant service install --dry-run` prints the unit with an absolute ExecStart and writes nothing."""
    env = {**cli_env, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "service", "install", "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"would write {tmp_path / 'cfg' / 'systemd' / 'user' / 'assistant.service'}:"
    start = shlex.split(exec_start(proc.stdout).removeprefix("ExecStart="))
    assert Path(start[0]).is_absolute() and start[-1] == "serve"
    assert not (tmp_path / "cfg").exists()
