"""The repacked weights of a model kept on disk, so that a later start maps them in place of
repacking the GGUF file's matrices again (1-1.6 s of the bundled Qwen2.5's ~5 s start here).

One file per (model file, layout variant) in a directory the caller names: a header (magic, the
length of a JSON description, the JSON) padded to a page, then every array of every `Packed`
matrix, each at a 64-byte aligned offset. The JSON's `key` says what the bytes were made from:
the GGUF file (real path, size, modification time), the source of the repacking (engine/quants.py)
and the layout choices (`planes`, `compact`); a file whose key differs from the one asked for, or
whose size is not the one its header promises, is not used (the caller repacks and writes it
again). Files are written under a temporary name and renamed, so a reader never sees half of one.

Loaded files are mapped copy-on-write (`MAP_PRIVATE`): the arrays are writeable like the ones
repacking makes (Numba compiles one signature for both), the pages are the page cache's own until
written, and they count in resident memory as the pages of a file the kernel can drop and read
again, not as anonymous memory. Writing costs the packed size again on disk (Qwen2.5: ~500 MB);
a directory with less than twice that free is left alone."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.quants import Packed
from models.gguf import GGUFFile

log = logging.getLogger(__name__)

_MAGIC = b"ASSTPAK1"
_HEAD = struct.Struct("<8sQ")  # magic, length of the JSON that follows
_ALIGN = 64
_FIELDS = ("w32", "q", "s", "m")
SUFFIX = ".packed"


@functools.cache
def _code_hash() -> str:
    """What the packed bytes depend on in our own code: the repacking's source."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256((here / "quants.py").read_bytes()).hexdigest()[:20]


def _source_key(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(gguf: GGUFFile, planes: bool, compact: bool) -> dict[str, object]:
    """What a file of packed weights must have been made from to stand for `gguf`'s matrices."""
    return {**_source_key(Path(gguf.path).resolve()), "code": _code_hash(), "planes": planes,
            "compact": compact, "byteorder": np.dtype(np.float32).byteorder + sys.byteorder}


def cache_file(directory: Path, gguf: GGUFFile, planes: bool, compact: bool) -> Path:
    """Where `gguf`'s packed weights of this variant live in `directory` (one file per model and
    variant: a new key overwrites the old file)."""
    src = Path(gguf.path).resolve()
    tag = hashlib.sha256(f"{src}\0{planes}\0{compact}".encode()).hexdigest()[:12]
    return directory / f"{src.stem}-{tag}{SUFFIX}"


def _read_header(f) -> tuple[dict, int] | None:
    head = f.read(_HEAD.size)
    if len(head) != _HEAD.size:
        return None
    magic, n = _HEAD.unpack(head)
    if magic != _MAGIC or n > 64 << 20:
        return None
    try:
        meta = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (meta, _data_start(n)) if isinstance(meta, dict) else None


def _data_start(json_len: int) -> int:
    return -(-(_HEAD.size + json_len) // mmap.PAGESIZE) * mmap.PAGESIZE


def load(directory: Path, gguf: GGUFFile, planes: bool, compact: bool,
         names: list[str]) -> dict[str, Packed] | None:
    """The matrices `names` of `gguf` from `directory`'s file for this variant, as copy-on-write
    views of it; None when there is no such file, it was made from something else, or it lacks
    one of them."""
    path = cache_file(directory, gguf, planes, compact)
    try:
        with open(path, "rb") as f:
            got = _read_header(f)
            if got is None:
                log.info("packed weights %s: not a file of packed weights; repacking", path)
                return None
            meta, start = got
            if meta.get("key") != cache_key(gguf, planes, compact):
                return None
            size = os.fstat(f.fileno()).st_size
            if size != start + int(meta.get("data_bytes", -1)):
                log.info("packed weights %s: %d bytes where its header says %d; repacking", path, size,
                         start + int(meta.get("data_bytes", 0)))
                return None
            mats = meta.get("matrices", {})
            if any(n not in mats for n in names):
                return None
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # MAP_PRIVATE, readable and writeable
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:  # (TypeError: a header whose sizes are not numbers)
        log.info("packed weights %s unreadable (%s); repacking", path, e)
        return None
    if hasattr(mmap, "MADV_WILLNEED"):
        buf.madvise(mmap.MADV_WILLNEED)  # the kernel reads ahead; the first token's faults are cheap
    out = {}
    try:
        for name in names:
            d = mats[name]
            arrays = []
            for dtype, shape, offset in d["arrays"]:
                count = int(np.prod(shape))
                if count == 0:
                    arrays.append(np.empty(shape, dtype))
                else:
                    arrays.append(np.frombuffer(buf, dtype, count, start + offset).reshape(shape))
            out[name] = Packed(d["qtype"], d["kind"], d["act"], d["off"], d["rows"], d["k"], *arrays)
    except (KeyError, TypeError, ValueError) as e:
        log.info("packed weights %s: a damaged description (%s); repacking", path, e)
        return None
    return out


def save(directory: Path, gguf: GGUFFile, planes: bool, compact: bool, matrices: Mapping[str, Packed]) -> Path | None:
    """Write `matrices` (all of `gguf`'s, packed this way) to `directory`; the path, or None where
    the directory cannot take them (not writable, or too little free space: then the next start
    repacks, as without a cache). Files there made from model files that have since changed or
    gone are deleted."""
    arrays, entries, offset = [], {}, 0
    for name, p in matrices.items():
        desc = []
        for field in _FIELDS:
            a = getattr(p, field)
            if a.size:
                a = np.ascontiguousarray(a)
                offset = -(-offset // _ALIGN) * _ALIGN
                arrays.append((offset, a))
                desc.append([a.dtype.str, list(a.shape), offset])
                offset += a.nbytes
            else:
                desc.append([a.dtype.str, list(a.shape), 0])
        entries[name] = {"qtype": p.qtype, "kind": p.kind, "act": p.act, "off": p.off, "rows": p.rows,
                         "k": p.k, "arrays": desc}
    meta = json.dumps({"key": cache_key(gguf, planes, compact), "data_bytes": offset,
                       "matrices": entries}).encode()
    start = _data_start(len(meta))
    path = cache_file(directory, gguf, planes, compact)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _prune(directory)
        free = shutil.disk_usage(directory).free
        if free < 2 * (start + offset):
            log.info("packed weights not kept: %d MB free in %s for %d MB", free >> 20, directory,
                     (start + offset) >> 20)
            return None
        with open(tmp, "wb") as f:
            f.write(_HEAD.pack(_MAGIC, len(meta)) + meta)
            for off, a in arrays:
                f.seek(start + off)
                f.write(memoryview(a.reshape(-1).view(np.uint8)))
            f.truncate(start + offset)
        os.replace(tmp, path)
    except OSError as e:
        log.info("packed weights not kept in %s: %s", directory, e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return None
    return path


def _prune(directory: Path) -> None:
    """Delete the files made from model files that are no longer there as they were."""
    for p in directory.glob(f"*{SUFFIX}"):
        try:
            with open(p, "rb") as f:
                got = _read_header(f)
            key = got[0].get("key", {}) if got else {}
            src = Path(str(key.get("path", "")))
            stale = not got or not src.is_file() or {k: key.get(k) for k in ("path", "size", "mtime_ns")} != _source_key(src)
            if stale:
                p.unlink()
        except OSError:
            continue
