"""Strict reader for GGUF model files, run on every file before it reaches an inference engine.

`read_gguf(path)` parses the header (magic, version, metadata key-value pairs, tensor infos)
with bounded `struct.unpack_from` reads over a memory map, and checks everything an engine
later trusts: every count and length is bounded by the bytes left in the file before anything
is allocated or looped over, value and GGML types are known, shapes are sane, and every tensor's
data is aligned, inside the file and overlapping no other. Each failure is one `GGUFError`
naming the file, the field and the bad value. Tensor data is never read eagerly: `tensor_bytes`
and `tensor_array` are views into a `np.memmap` of the file. The limits follow llama.cpp's
`gguf_init_from_file_impl` (ggml/src/gguf.cpp) wherever it has one.
"""

from __future__ import annotations

import math
import mmap
import os
import pathlib
import stat
import struct
from dataclasses import dataclass, field

import gguf
import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 with the NUL; llama.cpp rejects names of 64 bytes or more
MAX_ARRAY_DEPTH = 4  # an array of arrays of ... at most this many levels deep
INT64_MAX = 2**63 - 1

# The smallest possible encodings, used to bound untrusted counts before any loop: a key-value
# pair is key length (8) + one key byte + value type (4) + a one-byte value; a tensor info is
# name length (8) + n_dims (4) + one dim (8) + GGML type (4) + offset (8).
_HEADER_BYTES = 24
_MIN_KV_BYTES = 13
_MIN_TENSOR_INFO_BYTES = 32

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
_SCALARS = {  # GGUF value type -> little-endian encoding of one fixed-size value
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d",
}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALARS.items()}
_MIN_ITEM_BYTES = {**{t: s.size for t, s in _SCALAR_STRUCTS.items()}, _STRING: 8, _ARRAY: 12}

# GGML types with a plain numpy view; BF16 comes back as its raw uint16 bits.
_Q = gguf.GGMLQuantizationType
_NUMPY_DTYPES = {
    _Q.F32: "<f4", _Q.F16: "<f2", _Q.BF16: "<u2", _Q.F64: "<f8",
    _Q.I8: "i1", _Q.I16: "<i2", _Q.I32: "<i4", _Q.I64: "<i8",
}


class GGUFError(ValueError):
    """One error type for every bad file; str(e) is "<file name>: <field> <what is wrong>"."""

    def __init__(self, path: str | os.PathLike[str], field: str, message: str, value: object = None):
        self.path = str(path)
        self.field = field
        self.message = message
        self.value = value
        super().__init__(f"{pathlib.Path(path).name}: {field} {message}")

    def __reduce__(self) -> tuple[type[GGUFError], tuple[str, str, str, object]]:
        return (GGUFError, (self.path, self.field, self.message, self.value))


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and what its bytes mean."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] first (the contiguous dimension)
    ggml_type: int  # raw GGML type id
    type_name: str  # e.g. "Q4_K", "F32"
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int
    n_elements: int


@dataclass
class GGUFFile:
    """A validated GGUF header; tensor data stays on disk until asked for, as memmap views."""

    path: pathlib.Path
    version: int
    alignment: int
    data_offset: int  # absolute start of the tensor data section
    file_size: int
    metadata: dict[str, object]  # arrays come back as lists (nested arrays as lists of lists)
    tensors: dict[str, TensorInfo]  # in file order
    _data: np.memmap | None = field(default=None, init=False, repr=False, compare=False)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a uint8 view into the memory-mapped file (no copy)."""
        info = self.tensors[name]
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.file_size,))
        return self._data[info.offset : info.offset + info.n_bytes]

    def tensor_array(self, name: str) -> np.ndarray:
        """A typed view with numpy's axis order (ne[-1], ..., ne[0]), or (rows, bytes_per_row) blocks when quantized."""
        info = self.tensors[name]
        raw = self.tensor_bytes(name)
        dtype = _NUMPY_DTYPES.get(_Q(info.ggml_type))
        if dtype is not None:
            return raw.view(dtype).reshape(info.shape[::-1])
        rows = info.n_elements // info.shape[0]
        return raw.reshape(rows, info.n_bytes // rows)  # (rows, bytes_per_row)

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Tell the kernel the tensor's pages (or those of its `rows` r0..r1-1 of `tensor_array`'s
        rows) are not needed now (they were copied elsewhere): they leave resident memory and are
        read from disk again if touched. Whole pages only."""
        if self._data is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.tensors[name]
        first, size = info.offset, info.n_bytes
        if rows is not None:
            row_bytes = info.n_bytes // (info.n_elements // info.shape[0])
            first, size = info.offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
        page = mmap.PAGESIZE
        start = -(-first // page) * page
        end = (first + size) // page * page
        if end > start:
            self._data._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)  # type: ignore[attr-defined]

    def get(self, key: str, default: object = None) -> object:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def close(self) -> None:
        """Drop this file's memory map; views already handed out stay valid, and a later access maps it again."""
        self._data = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate the header of the GGUF file at `path`; raise GGUFError if anything is wrong."""
    p = pathlib.Path(path)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError(p, "path", "is not a regular file", str(p))
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except OSError as e:
        raise GGUFError(p, "path", f"cannot be read: {e.strerror or e}", str(p)) from e
    try:
        return _Parser(p, buf if buf is not None else b"", size).parse()
    finally:
        if buf is not None:
            buf.close()


class _Parser:
    """Bounds-checked little-endian reads over the header; every read past the end is a GGUFError."""

    def __init__(self, path: pathlib.Path, buf: mmap.mmap | bytes, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def error(self, field: str, message: str, value: object = None) -> GGUFError:
        return GGUFError(self.path, field, message, value)

    def need(self, n: int, field: str) -> None:
        if n > self.size - self.pos:
            raise self.error(field, f"is cut off: needs {n} bytes at byte {self.pos}, past the file's end ({self.size})", n)

    def scalar(self, st: struct.Struct, field: str) -> int | float:
        self.need(st.size, field)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, field: str) -> int:
        return int(self.scalar(_U32, field))

    def u64(self, field: str) -> int:
        return int(self.scalar(_U64, field))

    def raw_string(self, field: str) -> bytes:
        n = self.u64(field)
        if n > self.size - self.pos:
            raise self.error(field, f"has string length {n} at byte {self.pos - 8}, past the file's end ({self.size})", n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw

    def text(self, raw: bytes, field: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(field, f"is not valid UTF-8 ({e.reason} at byte {e.start}): {raw[:80]!r}", raw) from None

    # -- header and metadata ------------------------------------------------------------
    def parse(self) -> GGUFFile:
        self.need(4, "magic")
        magic = bytes(self.buf[0:4])
        self.pos = 4
        if magic != GGUF_MAGIC:
            raise self.error("magic", f"is {magic!r}, expected {GGUF_MAGIC!r}: not a GGUF file", magic)
        version = self.u32("version")
        if version not in SUPPORTED_VERSIONS:
            why = "GGUFv1 is no longer supported" if version == 1 else "this reader supports versions 2 and 3"
            if version & 0xFFFF == 0 and version:
                why = "the file looks byte-swapped (a big-endian GGUF?)"
            raise self.error("version", f"is {version}: {why}", version)
        n_tensors = self.u64("tensor_count")
        n_kv = self.u64("kv_count")
        left = self.size - self.pos
        if n_tensors > left // _MIN_TENSOR_INFO_BYTES:
            raise self.error("tensor_count", f"is {n_tensors}, but the {left} bytes after the header hold "
                             f"at most {left // _MIN_TENSOR_INFO_BYTES} tensor infos", n_tensors)
        left -= n_tensors * _MIN_TENSOR_INFO_BYTES
        if n_kv > left // _MIN_KV_BYTES:
            raise self.error("kv_count", f"is {n_kv}, but the {left} bytes left after the tensor infos' "
                             f"minimum hold at most {left // _MIN_KV_BYTES} key-value pairs", n_kv)
        metadata, types = self.metadata(n_kv)
        alignment = self.alignment(metadata, types)
        infos = self.tensor_infos(n_tensors, alignment)
        data_offset = -(-self.pos // alignment) * alignment
        if infos and data_offset > self.size:
            raise self.error("data_offset", f"is {data_offset}, past the file's end ({self.size})", data_offset)
        tensors = self.place(infos, data_offset)
        return GGUFFile(self.path, version, alignment, data_offset, self.size, metadata, tensors)

    def metadata(self, n_kv: int) -> tuple[dict[str, object], dict[str, int]]:
        metadata: dict[str, object] = {}
        types: dict[str, int] = {}
        for i in range(n_kv):
            raw = self.raw_string(f"key #{i}")
            if not raw:
                raise self.error(f"key #{i}", "is empty; keys must be non-empty", raw)
            key = self.text(raw, f"key #{i}")
            vfield = f"key {key!r}"
            if key in metadata:
                raise self.error(vfield, f"appears twice (again as key #{i})", key)
            types[key] = self.u32(vfield)
            metadata[key] = self.value(types[key], vfield, 0)
        return metadata, types

    def value(self, vtype: int, field: str, depth: int) -> object:
        st = _SCALAR_STRUCTS.get(vtype)
        if st is not None:
            v = self.scalar(st, field)
            return v != 0 if vtype == _BOOL else v
        if vtype == _STRING:
            return self.text(self.raw_string(field), field)
        if vtype == _ARRAY:
            return self.array(field, depth + 1)
        raise self.error(field, f"has unknown value type {vtype} (known: 0..12)", vtype)

    def array(self, field: str, depth: int) -> list[object]:
        if depth > MAX_ARRAY_DEPTH:
            raise self.error(field, f"nests arrays {depth} deep, more than {MAX_ARRAY_DEPTH}", depth)
        etype = self.u32(field)
        n = self.u64(field)
        item = _MIN_ITEM_BYTES.get(etype)
        if item is None:
            raise self.error(field, f"is an array of unknown value type {etype} (known: 0..12)", etype)
        left = self.size - self.pos
        if n > left // item:
            raise self.error(field, f"has array length {n}, but the {left} bytes left hold at most {left // item}", n)
        if etype in _SCALARS:
            raw = self.buf[self.pos : self.pos + n * item]
            self.pos += n * item
            values = np.frombuffer(raw, dtype=_SCALARS[etype])
            return (values != 0).tolist() if etype == _BOOL else values.tolist()
        if etype == _STRING:
            return self.strings(n, field)
        return [self.array(field, depth + 1) for _ in range(n)]

    def strings(self, n: int, field: str) -> list[object]:
        # The hot loop for tokenizer vocabularies (150k+ items): locals only, and no per-item
        # check for the 8-byte length itself, since unpack_from raises struct.error past the end.
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out: list[object] = []  # grows by one item per 8+ bytes read, so bounded by the file's size
        append = out.append
        try:
            for _ in range(n):
                length = unpack(buf, pos)[0]
                pos += 8
                if length > size - pos:
                    raise self.error(field, f"item {len(out)} has string length {length}, past the file's end ({size})",
                                     length)
                append(buf[pos : pos + length].decode("utf-8"))
                pos += length
        except struct.error:
            raise self.error(field, f"item {len(out)} is cut off at byte {pos}, past the file's end ({size})",
                             len(out)) from None
        except UnicodeDecodeError as e:
            raw = buf[pos : pos + length]
            raise self.error(field, f"item {len(out)} is not valid UTF-8 ({e.reason}): {raw[:80]!r}", raw) from None
        self.pos = pos
        return out

    def alignment(self, metadata: dict[str, object], types: dict[str, int]) -> int:
        if "general.alignment" not in metadata:
            return DEFAULT_ALIGNMENT
        value = metadata["general.alignment"]
        if types["general.alignment"] != _UINT32:
            # llama.cpp reads it with gguf_get_val_u32, which aborts on any other type
            name = gguf.GGUFValueType(types["general.alignment"]).name
            raise self.error("general.alignment", f"has type {name}, must be UINT32", value)
        assert isinstance(value, int)
        if value == 0 or value & (value - 1):
            raise self.error("general.alignment", f"is {value}, must be a non-zero power of two", value)
        return value

    # -- tensors --------------------------------------------------------------------------
    def tensor_infos(self, n_tensors: int, alignment: int) -> list[tuple[str, tuple[int, ...], _Q, int]]:
        infos: list[tuple[str, tuple[int, ...], _Q, int]] = []
        names: set[str] = set()
        for i in range(n_tensors):
            raw = self.raw_string(f"tensor #{i}")
            if not raw or len(raw) > MAX_NAME_BYTES:
                raise self.error(f"tensor #{i}", f"has a name of {len(raw)} bytes, must be 1 to {MAX_NAME_BYTES}: "
                                 f"{raw[:80]!r}", raw)
            name = self.text(raw, f"tensor #{i}")
            tfield = f"tensor {name!r}"
            if name in names:
                raise self.error(tfield, f"appears twice (again as tensor #{i})", name)
            names.add(name)
            n_dims = self.u32(tfield)
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.error(tfield, f"has {n_dims} dimensions, must be 1 to {MAX_DIMS}", n_dims)
            self.need(8 * n_dims, tfield)
            shape = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims
            if min(shape) < 1 or max(shape) > INT64_MAX:
                raise self.error(tfield, f"has shape {list(shape)}; each dimension must be 1 to {INT64_MAX}", shape)
            if math.prod(shape) >= INT64_MAX:  # llama.cpp's bound: the element count must fit int64
                raise self.error(tfield, f"has shape {list(shape)}, whose element count overflows int64", shape)
            type_id = self.u32(tfield)
            qtype = _Q._value2member_map_.get(type_id)
            if qtype is None or qtype not in gguf.GGML_QUANT_SIZES:
                raise self.error(tfield, f"has unknown GGML type {type_id}", type_id)
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if shape[0] % block:
                raise self.error(tfield, f"has {shape[0]} elements per row, not a multiple of the {qtype.name} "
                                 f"block size ({block})", shape[0])
            offset = self.u64(tfield)
            if offset % alignment:
                raise self.error(tfield, f"has offset {offset}, not a multiple of the alignment ({alignment})", offset)
            infos.append((name, shape, qtype, offset))
        return infos

    def place(self, infos: list[tuple[str, tuple[int, ...], _Q, int]], data_offset: int) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for name, shape, qtype, offset in infos:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n_elements = math.prod(shape)
            n_bytes = n_elements // block * type_size
            start = data_offset + offset
            if start + n_bytes > self.size:
                raise self.error(f"tensor {name!r}", f"ends at byte {start + n_bytes}, past the file's end ({self.size})",
                                 start + n_bytes)
            tensors[name] = TensorInfo(name, shape, int(qtype), qtype.name, start, n_bytes, n_elements)
        by_start = sorted(tensors.values(), key=lambda t: t.offset)
        for before, after in zip(by_start, by_start[1:]):
            if after.offset < before.offset + before.n_bytes:
                raise self.error(f"tensor {after.name!r}", f"starts at byte {after.offset}, inside tensor "
                                 f"{before.name!r} (bytes {before.offset} to {before.offset + before.n_bytes})",
                                 after.offset)
        return tensors
