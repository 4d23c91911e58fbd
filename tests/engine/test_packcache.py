"""Repacked weights kept on disk (engine.packcache): a later load maps them instead of repacking,
and gets the same numbers; a changed model file, a damaged file or a full disk fall back to
repacking, never to wrong weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine import packcache, quants
from engine import transformer as T
from engine.matmul import INT8
from models import arch as A
from models.gguf import read_gguf

TOKENS = [5, 17, 3, 250, 9, 77, 120, 31]


def _matrices(w: T.Weights) -> list[quants.Packed]:
    out = [v for lw in w.layers for v in vars(lw).values() if isinstance(v, quants.Packed)]
    return out + [w.output]


def _load(path: Path, packed_dir: Path | None) -> T.Weights:
    gguf = read_gguf(path)
    return T.load_weights(gguf, A.config_from_gguf(gguf), planes=INT8, packed_dir=packed_dir)


@pytest.fixture()
def model(synthetic, tmp_path: Path) -> Path:
    """A MoE file with K-quants (Q4_K, Q6_K: compact scales, bit planes) of this test's own, so
    that its modification time can change."""
    path = tmp_path / "model.gguf"
    shutil.copy(synthetic("llama-moe", "Q4_K_M"), path)
    return path


def test_a_second_load_maps_the_kept_file_and_gives_the_same_logits(model: Path, tmp_path: Path, monkeypatch) -> None:
    """The first load repacks and writes one file; the second repacks nothing (`quants.pack` is
    never called), its arrays are writeable views of that file equal to the repacked ones, and a
    teacher-forced pass gives the same logits to the bit."""
    from engine.native import NativeBackend

    packed = tmp_path / "packed"
    first = NativeBackend(model, n_ctx=32, n_threads=1, n_batch=8, packed_dir=packed)
    files = list(packed.iterdir())
    assert len(files) == 1 and files[0].suffix == packcache.SUFFIX
    want = first.eval_logits(TOKENS)

    def no_repacking(*a, **k):
        raise AssertionError("repacked although the packed weights were on disk")

    monkeypatch.setattr(quants, "pack", no_repacking)
    second = NativeBackend(model, n_ctx=32, n_threads=1, n_batch=8, packed_dir=packed)
    for a, b in zip(_matrices(first.weights), _matrices(second.weights), strict=True):
        assert a[:6] == b[:6]
        for x, y in zip(a[6:], b[6:]):
            assert x.dtype == y.dtype and np.array_equal(x, y)
            assert y.flags.writeable
    mapped = second.weights.layers[0].up_exps.q
    assert not mapped.flags.owndata  # a view of the mapped file, not a copy
    got = second.eval_logits(TOKENS)
    assert np.abs(want).max() > 0 and np.array_equal(got, want)
    monkeypatch.undo()
    third = NativeBackend(model, n_ctx=32, n_threads=1, n_batch=8)  # no cache: what repacking gives
    assert np.array_equal(third.eval_logits(TOKENS), want)
    for b in (first, second, third):
        b.close()


def test_a_changed_model_or_a_damaged_file_is_repacked_and_written_again(model: Path, tmp_path: Path) -> None:
    packed = tmp_path / "packed"
    want = _matrices(_load(model, packed))
    (kept,) = packed.iterdir()
    size = kept.stat().st_size

    def check() -> None:
        got = _matrices(_load(model, packed))
        assert all(np.array_equal(x, y) for a, b in zip(want, got) for x, y in zip(a[6:], b[6:]))
        assert [p.name for p in packed.iterdir()] == [kept.name] and kept.stat().st_size == size

    gguf = read_gguf(model)
    names = [f"blk.0.{n}.weight" for n in ("attn_q", "ffn_up_exps")]
    args = (packed, gguf, INT8, INT8, names)
    assert packcache.load(*args) is not None
    with open(kept, "r+b") as f:  # cut short: its header promises more bytes than are there
        f.truncate(size - 4096)
    assert packcache.load(*args) is None
    check()
    kept.write_bytes(b"not a file of packed weights")
    assert packcache.load(*args) is None
    check()
    meta = json.dumps({"key": packcache.cache_key(gguf, INT8, INT8), "data_bytes": {}}).encode()
    kept.write_bytes(packcache._HEAD.pack(packcache._MAGIC, len(meta)) + meta)  # the right key, a size not a number
    assert packcache.load(*args) is None
    check()
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the model file changed
    assert packcache.load(packed, read_gguf(model), INT8, INT8, names) is None
    check()
    assert packcache.load(packed, read_gguf(model), INT8, INT8, names + ["blk.9.no_such.weight"]) is None


def test_files_of_models_gone_are_deleted_and_no_file_is_kept_where_there_is_no_room(
        model: Path, tmp_path: Path, monkeypatch) -> None:
    packed = tmp_path / "packed"
    other = tmp_path / "other.gguf"
    shutil.copy(model, other)
    _load(other, packed)
    assert len(list(packed.iterdir())) == 1
    other.unlink()
    _load(model, packed)
    (kept,) = packed.iterdir()
    assert kept.name.startswith("model-")

    kept.unlink()
    monkeypatch.setattr(packcache.shutil, "disk_usage", lambda d: SimpleNamespace(total=1 << 40, used=1 << 40, free=4096))
    w = _load(model, packed)
    assert list(packed.iterdir()) == [] and w.layers[0].wq.q.flags.owndata

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    w = _load(model, not_a_dir / "packed")  # cannot be made: the weights are repacked and used all the same
    assert w.output.rows > 0
