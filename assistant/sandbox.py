"""The workspace sandbox: where tools may read and write, and how a command is run.

Every path a tool is given is resolved with `os.path.realpath` against the workspace root
(symlinks followed to their real target) and must land inside the root; `..`, absolute paths
elsewhere and symlinks that point out are refused with a `SandboxError` whose message goes
back to the model. Paths under a protected directory (the assistant's own settings and
approval rules, its data) may be read by no tool and written by none. An edit is read and
written through directory descriptors that never follow a link (`directory_of`), so a link
swapped in between the check and the write is refused, not followed. Commands run without a
shell, in the workspace, with stdin closed, a timeout that kills the whole process group, and
their output capped. The walk over the workspace skips what `.gitignore` files say (pathspec's
git semantics), version-control directories and virtualenvs.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pathspec

log = logging.getLogger(__name__)

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv",
                          ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
# Variables a command inherits; the rest of the assistant's environment stays out.
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TMPDIR", "USER", "LOGNAME",
             "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT")


class SandboxError(Exception):
    """A tool asked for something the sandbox does not allow; the message says what and why."""


@dataclass(frozen=True)
class Workspace:
    """The directory tools work in, and the directories no tool may touch."""

    root: Path
    protected: tuple[Path, ...] = ()

    @classmethod
    def open(cls, root: str | Path, protected: Sequence[str | Path] = ()) -> Workspace:
        real = Path(os.path.realpath(root))
        if not real.is_dir():
            raise SandboxError(f"workspace {root} is not a directory")
        return cls(real, tuple(Path(os.path.realpath(p)) for p in protected))

    def resolve(self, path: str, *, write: bool = False) -> Path:
        """The real path `path` names (relative to the root), refused unless it is inside."""
        if not isinstance(path, str) or not path.strip():
            raise SandboxError("the path is empty")
        if "\x00" in path:
            raise SandboxError(f"the path {path!r} holds a NUL byte")
        real = Path(os.path.realpath(self.root / path))
        if not self.contains(real):
            via = " (through a symbolic link)" if self._lexically_inside(path) else ""
            raise SandboxError(f"{path!r} resolves to {real}, outside the workspace {self.root}{via}")
        for guarded in self.protected:
            if real == guarded or guarded in real.parents:
                verb = "change" if write else "read"
                raise SandboxError(f"{path!r} is the assistant's own configuration or data: tools may not {verb} it")
        return real

    def contains(self, real: Path) -> bool:
        return real == self.root or self.root in real.parents

    def _lexically_inside(self, path: str) -> bool:
        joined = Path(os.path.normpath(self.root / path))
        return joined == self.root or self.root in joined.parents

    def relative(self, real: Path) -> str:
        """`real` as a workspace-relative POSIX path ('.' for the root)."""
        return real.relative_to(self.root).as_posix() or "."

    # --- walking ----------------------------------------------------------------------------

    def walk(self, top: Path | None = None) -> Iterator[Path]:
        """Every file under `top` (default the root) that `.gitignore` does not exclude, sorted."""
        ignore = GitIgnore(self.root)
        for dirpath, dirnames, filenames in os.walk(top or self.root):
            here = Path(dirpath)
            dirnames[:] = [d for d in sorted(dirnames) if not ignore.skip(here / d, is_dir=True)]
            for name in sorted(filenames):
                f = here / name
                if f.is_symlink() and not self.contains(Path(os.path.realpath(f))):
                    continue  # a link out of the workspace: not ours to show
                if not ignore.skip(f, is_dir=False):
                    yield f


class GitIgnore:
    """What a walk skips: version-control and tool directories, virtualenvs, and every path
    the `.gitignore` files from the root down exclude (deeper files win, as in git)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._specs: dict[Path, pathspec.GitIgnoreSpec | None] = {}

    def skip(self, path: Path, *, is_dir: bool) -> bool:
        if is_dir and (path.name in SKIPPED_DIRS or path.is_symlink() or (path / "pyvenv.cfg").exists()):
            return True
        verdict = False
        d = self.root
        parts = path.relative_to(self.root).parts
        for i in range(len(parts)):
            if d not in self._specs:
                self._specs[d] = _read_gitignore(d)
            spec = self._specs[d]
            if spec is not None:
                result = spec.check_file("/".join(parts[i:]) + ("/" if is_dir else ""))
                if result.include is not None:
                    verdict = result.include
            d = d / parts[i]
        return verdict


def _read_gitignore(directory: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        lines = (directory / ".gitignore").read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:  # unreadable: it excludes nothing (a walk must not fail on one odd file)
        log.warning("cannot read %s/.gitignore: %s", directory, e.strerror)
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def read_text(path: Path, max_bytes: int = 2_000_000) -> str:
    """A workspace file's text; binary and oversized files are refused with a reason."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SandboxError(f"{path.name} is {size:,} bytes, past the {max_bytes:,} a tool reads")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SandboxError(f"{path.name}: no such file") from None
    except IsADirectoryError:
        raise SandboxError(f"{path.name} is a directory") from None
    except PermissionError:
        raise SandboxError(f"{path.name}: permission denied") from None
    return _decode(path.name, data)


def _decode(name: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise SandboxError(f"{name} is a binary file")
    return data.decode("utf-8", errors="replace")


# --- writing without following links -----------------------------------------------------------
#
# `Workspace.resolve` checks a path, but by the time an approved edit is written a directory on
# the way or the file itself may have become a symbolic link out of the workspace. So an edit is
# read and written through descriptors: each directory is opened from the root's descriptor with
# O_NOFOLLOW, the file is read with O_NOFOLLOW, and the new text goes to a fresh temporary file
# (O_CREAT | O_EXCL, which never follows a link) renamed over the name inside that directory
# (a rename replaces a link; it never writes through one).

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@contextmanager
def directory_of(workspace: Workspace, relative: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """A descriptor of the directory holding `relative` (a workspace-relative path `resolve` gave,
    free of links) and the file's name in it, reached from the root without following a link;
    `create` makes missing directories. A missing one without `create` is FileNotFoundError."""
    parts = PurePosixPath(relative).parts
    if not parts or relative == "." or parts[0] == "/" or ".." in parts:
        raise SandboxError(f"{relative!r} does not name a file inside the workspace")
    fd = os.open(workspace.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            if create:
                with suppress(FileExistsError):  # there already: opened (and checked) below
                    os.mkdir(name, dir_fd=fd)
            try:
                inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise SandboxError(f"{relative}: '{name}' is no longer a directory (a symbolic link was put "
                                       "in its place?); refused, nothing was written") from None
                raise
            os.close(fd)
            fd = inner
        yield fd, parts[-1]
    finally:
        os.close(fd)


def read_text_at(dir_fd: int, name: str, max_bytes: int = 2_000_000) -> str | None:
    """The text of the regular file `name` in the directory `dir_fd`, None when there is none;
    a symbolic link, a device or a pipe there is refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SandboxError(f"{name} is a symbolic link now; refused, nothing was read or written") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"{name} is not a regular file")
        if st.st_size > max_bytes:
            raise SandboxError(f"{name} is {st.st_size:,} bytes, past the {max_bytes:,} a tool reads")
        return _decode(name, f.read())


def write_text_at(dir_fd: int, name: str, text: str) -> None:
    """Write `name` in the directory `dir_fd` atomically, keeping the file's mode: a new temporary
    file renamed over it. A symbolic link in its place is refused."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        mode = None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"{name} is not a regular file now (a symbolic link?); refused, nothing was written")
        mode = stat.S_IMODE(st.st_mode)
    tmp = f".{name}.{secrets.token_hex(4)}.assistant-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if mode is not None:
                os.fchmod(f.fileno(), mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(FileNotFoundError):  # the rename may have happened before the failure
            os.unlink(tmp, dir_fd=dir_fd)
        raise


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """What a command did: exit code (None when killed at the timeout) and its capped output."""

    argv: tuple[str, ...]
    returncode: int | None
    output: str
    truncated: bool
    timed_out: bool
    seconds: float

    def summary(self) -> str:
        """The result as the model reads it."""
        head = (f"timed out after {self.seconds:.0f} s and was stopped" if self.timed_out
                else f"exit code {self.returncode}")
        tail = "\n[output truncated]" if self.truncated else ""
        return f"{head}\n{self.output}{tail}"


def find_program(name: str, workspace: Workspace) -> str:
    """The executable `name` runs: a workspace file for a path, else a PATH lookup."""
    if "/" in name:
        # An absolute path names a program wherever it is (as PATH would); a relative one is a
        # program of the workspace and must stay inside it.
        real = Path(name) if os.path.isabs(name) else workspace.resolve(name)
        if not os.access(real, os.X_OK) or real.is_dir():
            raise SandboxError(f"{name} is not an executable file")
        return str(real)
    found = shutil.which(name)
    if found is None:
        raise SandboxError(f"no program named {name!r} on PATH")
    return found


def run_argv(argv: Sequence[str], workspace: Workspace, *, timeout: float = 30.0,
             max_output: int = 16_000, cancel: threading.Event | None = None) -> CommandResult:
    """Run `argv` in the workspace without a shell; kill its process group at `timeout`."""
    if not argv:
        raise SandboxError("the command is empty")
    program = find_program(argv[0], workspace)
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [program, *argv[1:]], cwd=workspace.root, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as e:
        raise SandboxError(f"{argv[0]} could not start: {e.strerror}") from None
    chunks: list[bytes] = []
    total = 0

    def pump() -> None:
        # Read to the end (a full pipe would block the command) but keep only max_output bytes.
        nonlocal total
        assert proc.stdout is not None
        while block := proc.stdout.read1(65536):
            if total < max_output:
                chunks.append(block[: max_output - total])
            total += len(block)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    while proc.poll() is None:
        if time.monotonic() - start > timeout or (cancel is not None and cancel.is_set()):
            timed_out = True
            _kill_group(proc)
            break
        time.sleep(0.02)
    proc.wait()
    reader.join(timeout=2.0)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return CommandResult(tuple(argv), None if timed_out else proc.returncode, text, total > max_output,
                         timed_out, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # it ended between the check and the kill
