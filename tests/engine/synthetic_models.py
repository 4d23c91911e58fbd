"""Tiny GGUF models with random weights for the native engine's parity tests, and llama.cpp as the oracle.

`build_model` writes an F32 file with the `gguf` package (`tokenizer.ggml.model = "no_vocab"`,
so token ids go straight in), `quantize_model` turns it into any file type with llama.cpp's own
`llama_model_quantize`, and `llama_logits` teacher-forces a token sequence through llama.cpp and
returns the logits of every position (float16 KV cache, llama.cpp's default and the native
engine's, and flash attention off, so the oracle rounds nothing beyond ggml's matrix products).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import llama_cpp as lc
import numpy as np

from engine.tokenizer import init_llama

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
FLASH_ATTN_DISABLED = 0

#: the file types the parity suite runs each architecture at
FTYPES = {
    "F16": lc.LLAMA_FTYPE_MOSTLY_F16,
    "Q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_K_M": lc.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_0": lc.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q6_K": lc.LLAMA_FTYPE_MOSTLY_Q6_K,
    # the remaining supported types, covered once each
    "Q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": lc.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q5_1": lc.LLAMA_FTYPE_MOSTLY_Q5_1,
    "Q5_K_M": lc.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "BF16": lc.LLAMA_FTYPE_MOSTLY_BF16,
}


@dataclass(frozen=True)
class Shape:
    """Hyperparameters of a synthetic model; the defaults make a ~3 MB F32 file."""

    arch: str
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 384
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 256
    n_ff_shexp: int = 384
    window: int = 0
    swa_pattern: int | list[bool] | None = None
    tied: bool = False
    rope_base: float = 10000.0
    extra: dict[str, object] = field(default_factory=dict)


MOE_ARCHS = {"qwen2moe", "qwen3moe", "olmoe"}


def default_shape(arch: str, **kw: object) -> Shape:
    """The parity suite's shape for `arch`: MoE archs get 8 experts, top-2; llama gets Mixtral experts with moe=True."""
    moe = kw.pop("moe", None)
    if moe if moe is not None else arch in MOE_ARCHS:
        kw = {"n_expert": 8, "n_expert_used": 2, **kw}
    if arch == "olmoe":
        kw = {"n_head_kv": kw.get("n_head", 4), **kw}  # llama.cpp sizes olmoe's k norm by n_embd: no GQA
    return Shape(arch=arch, **kw)  # type: ignore[arg-type]


def build_model(path: Path, shape: Shape, seed: int = 0, dtype: type = np.float32) -> Path:
    """Write a GGUF of `shape` with random weights at `path`: matrices in `dtype` (float32, or
    float16 for the large files of the MoE benchmark), vectors in float32."""
    rng = np.random.default_rng(seed)
    a, s = shape.arch, shape
    d = s.n_embd // s.n_head
    q_dim, kv_dim = s.n_head * d, s.n_head_kv * d

    def mat(rows: int, cols: int, *lead: int) -> np.ndarray:
        if dtype == np.float32:
            return (rng.standard_normal((*lead, rows, cols)) / np.sqrt(cols)).astype(np.float32)
        return (rng.standard_normal((*lead, rows, cols), np.float32) / np.float32(np.sqrt(cols))).astype(dtype)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), a)
    w.add_block_count(s.n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(s.rope_base)
    w.add_vocab_size(s.n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        if a in ("qwen2moe", "qwen3moe"):
            w.add_expert_feed_forward_length(s.n_ff_exp)
        if a == "qwen2moe":
            w.add_expert_shared_feed_forward_length(s.n_ff_shexp)
    if s.window:
        w.add_sliding_window(s.window)
        if s.swa_pattern is not None:
            key = f"{a}.attention.sliding_window_pattern"
            if isinstance(s.swa_pattern, list):
                w.add_array(key, s.swa_pattern)
            else:
                w.add_uint32(key, s.swa_pattern)
    for key, value in s.extra.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, int(value))  # type: ignore[arg-type]
    w.add_tokenizer_model("no_vocab")

    w.add_tensor("token_embd.weight", rng.standard_normal((s.n_vocab, s.n_embd)).astype(np.float32).astype(dtype))
    w.add_tensor("output_norm.weight", norm(s.n_embd))
    if not s.tied:
        w.add_tensor("output.weight", mat(s.n_vocab, s.n_embd))
    n_ff_exp = s.n_ff if a in ("llama", "olmoe") else s.n_ff_exp  # llama.cpp's width for each family
    for i in range(s.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(s.n_embd))
        w.add_tensor(p + "attn_q.weight", mat(q_dim, s.n_embd))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, s.n_embd))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, s.n_embd))
        w.add_tensor(p + "attn_output.weight", mat(s.n_embd, q_dim))
        if a == "qwen2":
            for name, n in (("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)):
                w.add_tensor(p + name, (0.5 * rng.standard_normal(n)).astype(np.float32))
        if a in ("qwen3", "qwen3moe"):
            w.add_tensor(p + "attn_q_norm.weight", norm(d))
            w.add_tensor(p + "attn_k_norm.weight", norm(d))
        if a == "olmoe":
            w.add_tensor(p + "attn_q_norm.weight", norm(q_dim))
            w.add_tensor(p + "attn_k_norm.weight", norm(kv_dim))
        w.add_tensor(p + "ffn_norm.weight", norm(s.n_embd))
        if s.n_expert:
            w.add_tensor(p + "ffn_gate_inp.weight", mat(s.n_expert, s.n_embd) * 4)
            w.add_tensor(p + "ffn_gate_exps.weight", mat(n_ff_exp, s.n_embd, s.n_expert))
            w.add_tensor(p + "ffn_up_exps.weight", mat(n_ff_exp, s.n_embd, s.n_expert))
            w.add_tensor(p + "ffn_down_exps.weight", mat(s.n_embd, n_ff_exp, s.n_expert))
            if a == "qwen2moe":
                w.add_tensor(p + "ffn_gate_inp_shexp.weight", mat(1, s.n_embd)[0])
                w.add_tensor(p + "ffn_gate_shexp.weight", mat(s.n_ff_shexp, s.n_embd))
                w.add_tensor(p + "ffn_up_shexp.weight", mat(s.n_ff_shexp, s.n_embd))
                w.add_tensor(p + "ffn_down_shexp.weight", mat(s.n_embd, s.n_ff_shexp))
        else:
            w.add_tensor(p + "ffn_gate.weight", mat(s.n_ff, s.n_embd))
            w.add_tensor(p + "ffn_up.weight", mat(s.n_ff, s.n_embd))
            w.add_tensor(p + "ffn_down.weight", mat(s.n_embd, s.n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_model(src: Path, dst: Path, ftype: str, n_threads: int = 2) -> Path:
    """`src` quantized to the llama.cpp file type `ftype` (a key of FTYPES) by llama.cpp itself."""
    init_llama()
    params = lc.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = n_threads
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {ftype}) failed with code {rc}")
    return dst


class _TensorHead(ctypes.Structure):
    """The leading fields of ggml.h's struct ggml_tensor: its type, buffer and shape."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4)]


_GGML = ctypes.CDLL(str(Path(lc.__file__).parent / "lib" / "libggml-base.so"))
_GGML.ggml_get_name.restype = ctypes.c_char_p
_GGML.ggml_get_name.argtypes = [ctypes.c_void_p]
_GGML.ggml_nbytes.restype = ctypes.c_size_t
_GGML.ggml_nbytes.argtypes = [ctypes.c_void_p]
_GGML.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]


def llama_logits(path: Path, tokens: list[int], n_threads: int = 2, capture: tuple[str, ...] = (),
                 window: int = 0, kv_f32: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """llama.cpp's logits (n_tokens, n_vocab) at every position of `tokens`, evaluated in one batch.

    With `capture`, also the graph's float32 tensors of those names (e.g. "l_out-0", the residual
    stream after layer 0, or "result_norm"), each as (n_tokens, width). With `window`, every
    layer attends only to the last `window` positions: llama.cpp does not read a sliding window
    for these families, so tokens go in one at a time and the positions that leave the window
    are removed from its KV cache before the next one. `kv_f32`: a float32 KV cache instead of
    llama.cpp's default float16.
    """
    states: dict[str, list[np.ndarray]] = {}

    @lc.ggml_backend_sched_eval_callback
    def grab(t: int, ask: bool, _user: int) -> bool:
        name = _GGML.ggml_get_name(t).decode()
        if ask:
            return name in capture
        head = _TensorHead.from_address(t)
        if name in capture and head.type == GGML_TYPE_F32:
            out = np.empty(_GGML.ggml_nbytes(t) // 4, np.float32)
            _GGML.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
            states.setdefault(name, []).append(out.reshape(-1, head.ne[0]))
        return True

    n = len(tokens)
    model, ctx = _open(path, n, n, n_threads, grab if capture else None, kv_f32)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))  # no_vocab: llama.cpp adds dummies
    # one batch of every token, or (window) one token per call so each finds its window already cached
    calls = [list(range(n))] if not window else [[i] for i in range(n)]
    batch = lc.llama_batch_init(n, 0, 1)
    mem = lc.llama_get_memory(ctx)
    out = np.empty((n, n_vocab), np.float32)
    try:
        for idx in calls:
            for b, i in enumerate(idx):
                batch.token[b] = tokens[i]
                batch.pos[b] = i
                batch.n_seq_id[b] = 1
                batch.seq_id[b][0] = 0
                batch.logits[b] = 1
            batch.n_tokens = len(idx)
            rc = lc.llama_decode(ctx, batch)
            assert rc == 0, f"llama_decode failed with code {rc}"
            for b, i in enumerate(idx):
                out[i] = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, b), shape=(n_vocab,))
            if window and idx[-1] - window + 2 > 0:  # the next token sees only the last `window` positions
                assert lc.llama_memory_seq_rm(mem, 0, 0, idx[-1] - window + 2)
        if capture:
            return out, {name: np.concatenate(parts) for name, parts in states.items()}
        return out
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)



def _open(path: Path, n_ctx: int, n_batch: int, n_threads: int, cb_eval: object = None,
          kv_f32: bool = False) -> tuple[object, object]:
    """A model and a context set up as the oracle: float16 KV cache (llama.cpp's default, as the native
    engine keeps it; float32 with `kv_f32`), flash attention off."""
    init_llama()
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(path).encode(), mparams)
    assert model, f"llama.cpp could not load {path}"
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = max(256, n_ctx)
    cparams.n_batch = cparams.n_ubatch = n_batch
    cparams.n_threads = cparams.n_threads_batch = n_threads
    cparams.type_k = cparams.type_v = GGML_TYPE_F32 if kv_f32 else GGML_TYPE_F16
    cparams.flash_attn_type = FLASH_ATTN_DISABLED
    cparams.no_perf = True
    if cb_eval is not None:
        cparams.cb_eval = cb_eval
    ctx = lc.llama_init_from_model(model, cparams)
    assert ctx, "llama.cpp could not make a context"
    return model, ctx


def llama_greedy(path: Path, prompt: list[int], n_tokens: int, n_threads: int = 2) -> list[int]:
    """llama.cpp's greedy continuation of `prompt`, set up as the oracle (float16 KV, no flash attention)."""
    model, ctx = _open(path, len(prompt) + n_tokens, len(prompt), n_threads)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    out: list[int] = []
    try:
        feed = list(prompt)
        while len(out) < n_tokens:
            arr = (lc.llama_token * len(feed))(*feed)
            assert lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(feed))) == 0
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            out.append(int(np.argmax(logits)))
            feed = [out[-1]]
        return out
    finally:
        lc.llama_free(ctx)
        lc.llama_model_free(model)


def moe_from_dense(src: Path, dst: Path, n_expert: int = 8, n_used: int = 2, noise: float = 0.05,
                   seed: int = 0) -> Path:
    """A Mixtral-layout MoE made from the dense llama model at `src`: each layer's FFN becomes
    `n_expert` copies perturbed by `noise` (relative, Gaussian), quantized to Q4_0, under a random
    F32 router picking `n_used` per token. The experts differ, so routing changes the result."""
    rng = np.random.default_rng(seed)
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1] if len(f.types) > 1 else None
            w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
        else:
            w.add_key_value(f.name, f.contents(), vtype)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    n_embd = 0
    for t in reader.tensors:
        name, qtype = t.name, gguf.GGMLQuantizationType(t.tensor_type)
        kind = next((k for k in ("ffn_gate", "ffn_up", "ffn_down") if name.endswith(f".{k}.weight")), None)
        if kind is None:
            raw = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            w.add_tensor(name, np.array(t.data), raw_dtype=qtype if raw else None)
            if name == "token_embd.weight":
                n_embd = int(t.shape[0])
            continue
        dense = gguf.quants.dequantize(np.array(t.data), qtype)  # (rows, k)
        experts = dense[None] * (1.0 + noise * rng.standard_normal((n_expert, *dense.shape))).astype(np.float32)
        layer = name[: -len(f"{kind}.weight")]
        q = gguf.quants.quantize(experts.astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
        w.add_tensor(f"{layer}{kind}_exps.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        if kind == "ffn_gate":
            router = (rng.standard_normal((n_expert, dense.shape[1])) * 8 / np.sqrt(dense.shape[1])).astype(np.float32)
            w.add_tensor(f"{layer}ffn_gate_inp.weight", router)
    assert n_embd
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
