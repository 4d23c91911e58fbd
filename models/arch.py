"""Architecture definitions: which GGUF tensors make a layer, and the frozen Config of a file.

The native engine runs the decoder-only families below, read the way llama.cpp reads them
(src/models/*.cpp): `llama` (dense, and Mixtral-style experts under `ffn_*_exps`), `qwen2`
(q/k/v biases), `qwen2moe` (routed experts without renormalisation plus a shared expert gated
by sigmoid(ffn_gate_inp_shexp . x)), `qwen3` (RMSNorm per head on q and k), `qwen3moe`
(renormalised top-k) and `olmoe` (RMSNorm over the whole q and k projections, no
renormalisation). `config_from_gguf` turns metadata into a `Config`, `layer_tensors` names a
layer's tensors, and `unsupported_reason` says in one sentence why a file cannot run natively.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.gguf import GGUFFile

QKNorm = Literal["none", "head", "full"]


class ArchError(ValueError):
    """A file's architecture or metadata is not one the native engine runs."""


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes one family's forward pass from the plain llama one."""

    rope_neox: bool  # rotate (i, i + n_rot/2) pairs instead of (2i, 2i+1)
    qk_norm: QKNorm = "none"
    moe_renorm: bool = False  # divide the top-k weights by their sum (llama.cpp's norm_w)
    shared_expert: bool = False
    moe_only: bool = False  # every layer routes (no dense fallback)


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_neox=False, moe_renorm=True),
    "qwen2": ArchSpec(rope_neox=True),
    "qwen2moe": ArchSpec(rope_neox=True, moe_renorm=False, shared_expert=True, moe_only=True),
    "qwen3": ArchSpec(rope_neox=True, qk_norm="head"),
    "qwen3moe": ArchSpec(rope_neox=True, qk_norm="head", moe_renorm=True, moe_only=True),
    "olmoe": ArchSpec(rope_neox=True, qk_norm="full", moe_renorm=False, moe_only=True),
}


@dataclass(frozen=True)
class Config:
    """Hyperparameters of one model file, from its GGUF metadata."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    n_ff: int  # dense FFN width (0 when every layer routes)
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    rope_neox: bool
    qk_norm: QKNorm
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ff_shexp: int
    moe_renorm: bool
    expert_weights_scale: float  # 0: no scaling
    shared_expert: bool
    sliding_window: int  # 0: none
    swa_layers: tuple[bool, ...]  # per layer: windowed?
    tied_output: bool

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    def window(self, layer: int) -> int:
        """The attention window of `layer` in tokens, 0 for full attention."""
        return self.sliding_window if self.swa_layers[layer] else 0


def _int(gguf: GGUFFile, key: str, default: int | None = None) -> int:
    value = gguf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise ArchError(f"the metadata lacks '{key}'")
        raise ArchError(f"'{key}' is {value!r}, expected an integer")
    return value


def _float(gguf: GGUFFile, key: str, default: float) -> float:
    value = gguf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"'{key}' is {value!r}, expected a number")
    return float(value)


def _swa_layers(gguf: GGUFFile, arch: str, n_layer: int, window: int) -> tuple[bool, ...]:
    """llama.cpp's set_swa_pattern: a per-layer array, or a period N whose last layer is global."""
    if not window:
        return (False,) * n_layer
    pattern = gguf.get(f"{arch}.attention.sliding_window_pattern")
    if pattern is None:
        return (True,) * n_layer
    if isinstance(pattern, list):
        if len(pattern) < n_layer:
            raise ArchError(f"'{arch}.attention.sliding_window_pattern' has {len(pattern)} entries "
                            f"for {n_layer} layers")
        return tuple(bool(v) for v in pattern[:n_layer])
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 0:
        raise ArchError(f"'{arch}.attention.sliding_window_pattern' is {pattern!r}")
    return tuple(pattern == 0 or (i % pattern) < pattern - 1 for i in range(n_layer))


def config_from_gguf(gguf: GGUFFile) -> Config:
    """The Config of a file the native engine can run; ArchError says what is missing or wrong."""
    arch = gguf.architecture or "unknown"
    spec = ARCHS.get(arch)
    if spec is None:
        raise ArchError(f"the native engine does not run the '{arch}' architecture "
                        f"(it runs {', '.join(ARCHS)})")
    n_layer = _int(gguf, f"{arch}.block_count")
    n_embd = _int(gguf, f"{arch}.embedding_length")
    n_head = _int(gguf, f"{arch}.attention.head_count")
    n_head_kv = _int(gguf, f"{arch}.attention.head_count_kv", n_head)
    head_dim = _int(gguf, f"{arch}.attention.key_length", n_embd // n_head)
    if _int(gguf, f"{arch}.attention.value_length", head_dim) != head_dim:
        raise ArchError("keys and values of different widths are not supported")
    n_rot = _int(gguf, f"{arch}.rope.dimension_count", head_dim)
    if n_rot != head_dim:
        raise ArchError(f"partial rotary embeddings ({n_rot} of {head_dim} dims) are not supported")
    if n_head % n_head_kv:
        raise ArchError(f"{n_head} query heads do not group evenly over {n_head_kv} key/value heads")
    scaling = gguf.get(f"{arch}.rope.scaling.type", "none")
    factor = _float(gguf, f"{arch}.rope.scaling.factor", 1.0)
    if scaling not in ("none", "linear") and factor != 1.0:
        raise ArchError(f"rope scaling '{scaling}' is not supported (only linear)")
    n_expert = _int(gguf, f"{arch}.expert_count", 0)
    if spec.moe_only and not n_expert:
        raise ArchError(f"'{arch}' needs '{arch}.expert_count'")
    n_expert_used = _int(gguf, f"{arch}.expert_used_count", 0) if n_expert else 0
    if n_expert and not 0 < n_expert_used <= n_expert:
        raise ArchError(f"'{arch}.expert_used_count' is {n_expert_used} for {n_expert} experts")
    n_ff = _int(gguf, f"{arch}.feed_forward_length", 0)
    # expert widths: llama.cpp's defaults differ per family (n_ff, or n_ff / k), the tensors say
    up_exps = gguf.tensors.get("blk.0.ffn_up_exps.weight")
    n_ff_exp = up_exps.shape[1] if up_exps is not None and len(up_exps.shape) == 3 else 0
    up_shexp = gguf.tensors.get("blk.0.ffn_up_shexp.weight")
    n_ff_shexp = up_shexp.shape[1] if spec.shared_expert and up_shexp is not None else 0
    window = _int(gguf, f"{arch}.attention.sliding_window", 0)
    renorm = gguf.get(f"{arch}.expert_weights_norm", spec.moe_renorm)
    tokens = gguf.get("tokenizer.ggml.tokens")
    emb = gguf.tensors.get("token_embd.weight")
    n_vocab = emb.shape[1] if emb is not None else len(tokens) if isinstance(tokens, list) else 0
    return Config(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_rot=n_rot,
        n_ff=n_ff,
        n_vocab=n_vocab,
        n_ctx_train=_int(gguf, f"{arch}.context_length", 0),
        rms_eps=_float(gguf, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_base=_float(gguf, f"{arch}.rope.freq_base", 10000.0),
        rope_freq_scale=1.0 / factor if scaling == "linear" else 1.0,
        rope_neox=spec.rope_neox,
        qk_norm=spec.qk_norm,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_ff_exp=n_ff_exp,
        n_ff_shexp=n_ff_shexp,
        moe_renorm=bool(renorm),
        expert_weights_scale=_float(gguf, f"{arch}.expert_weights_scale", 0.0),
        shared_expert=spec.shared_expert,
        sliding_window=window,
        swa_layers=_swa_layers(gguf, arch, n_layer, window),
        tied_output="output.weight" not in gguf.tensors,
    )


# Per-layer tensor names: field -> (GGUF name suffix, required?)
_ATTN = {
    "attn_norm": ("attn_norm.weight", True),
    "wq": ("attn_q.weight", True), "wk": ("attn_k.weight", True), "wv": ("attn_v.weight", True),
    "wo": ("attn_output.weight", True),
    "bq": ("attn_q.bias", False), "bk": ("attn_k.bias", False), "bv": ("attn_v.bias", False),
    "bo": ("attn_output.bias", False),
    "ffn_norm": ("ffn_norm.weight", True),
}
_QK_NORM = {"q_norm": ("attn_q_norm.weight", True), "k_norm": ("attn_k_norm.weight", True)}
_DENSE = {"ffn_gate": ("ffn_gate.weight", True), "ffn_up": ("ffn_up.weight", True),
          "ffn_down": ("ffn_down.weight", True)}
_MOE = {"gate_inp": ("ffn_gate_inp.weight", True), "gate_exps": ("ffn_gate_exps.weight", True),
        "up_exps": ("ffn_up_exps.weight", True), "down_exps": ("ffn_down_exps.weight", True)}
_SHARED = {"gate_inp_shexp": ("ffn_gate_inp_shexp.weight", True), "gate_shexp": ("ffn_gate_shexp.weight", True),
           "up_shexp": ("ffn_up_shexp.weight", True), "down_shexp": ("ffn_down_shexp.weight", True)}
GLOBAL_TENSORS = {"token_embd": "token_embd.weight", "output_norm": "output_norm.weight",
                  "output": "output.weight", "rope_freqs": "rope_freqs.weight"}


def layer_tensors(cfg: Config, layer: int) -> dict[str, tuple[str, bool]]:
    """Field name -> (GGUF tensor name, required?) for one layer of `cfg`'s architecture."""
    table = dict(_ATTN)
    if cfg.qk_norm != "none":
        table.update(_QK_NORM)
    table.update(_MOE if cfg.is_moe else _DENSE)
    if cfg.shared_expert:
        table.update(_SHARED)
    return {field: (f"blk.{layer}.{suffix}", req) for field, (suffix, req) in table.items()}


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """GGUF shapes (ne order) the forward pass relies on, for the tensors of every layer."""
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    per_layer = {
        "attn_norm": (cfg.n_embd,), "ffn_norm": (cfg.n_embd,),
        "wq": (cfg.n_embd, q_dim), "wk": (cfg.n_embd, kv_dim), "wv": (cfg.n_embd, kv_dim),
        "wo": (q_dim, cfg.n_embd), "bq": (q_dim,), "bk": (kv_dim,), "bv": (kv_dim,), "bo": (cfg.n_embd,),
        "q_norm": (cfg.head_dim,) if cfg.qk_norm == "head" else (q_dim,),
        "k_norm": (cfg.head_dim,) if cfg.qk_norm == "head" else (kv_dim,),
        "ffn_gate": (cfg.n_embd, cfg.n_ff), "ffn_up": (cfg.n_embd, cfg.n_ff), "ffn_down": (cfg.n_ff, cfg.n_embd),
        "gate_inp": (cfg.n_embd, cfg.n_expert),
        "gate_exps": (cfg.n_embd, cfg.n_ff_exp, cfg.n_expert), "up_exps": (cfg.n_embd, cfg.n_ff_exp, cfg.n_expert),
        "down_exps": (cfg.n_ff_exp, cfg.n_embd, cfg.n_expert),
        "gate_inp_shexp": (cfg.n_embd,), "gate_shexp": (cfg.n_embd, cfg.n_ff_shexp),
        "up_shexp": (cfg.n_embd, cfg.n_ff_shexp), "down_shexp": (cfg.n_ff_shexp, cfg.n_embd),
    }
    return per_layer


def unsupported_reason(gguf: GGUFFile, supported_types: frozenset[int]) -> str | None:
    """One sentence on why the native engine cannot run `gguf`, or None when it can."""
    try:
        cfg = config_from_gguf(gguf)
    except ArchError as e:
        return str(e)
    shapes = expected_shapes(cfg)
    for i in range(cfg.n_layer):
        if f"blk.{i}.attn_qkv.weight" in gguf.tensors:
            return "fused attn_qkv tensors are not supported"
        for field, (name, required) in layer_tensors(cfg, i).items():
            info = gguf.tensors.get(name)
            if info is None:
                if required:
                    return f"tensor '{name}' is missing"
                continue
            if info.shape != shapes[field]:
                return f"tensor '{name}' has shape {list(info.shape)}, expected {list(shapes[field])}"
    for info in gguf.tensors.values():
        if info.ggml_type not in supported_types:
            return f"tensor '{info.name}' is {info.type_name}, a quant type the native engine does not run"
    if "token_embd.weight" not in gguf.tensors or "output_norm.weight" not in gguf.tensors:
        return "token_embd.weight or output_norm.weight is missing"
    return None
