"""The transformer the native engine runs: its Weights, its RunState and the forward pass.

Three plain containers carry a model: the frozen `Config` (models.arch) from the metadata,
`Weights` (matrices repacked once at load by engine.quants, vectors as views into the memory
map) and a `RunState` of preallocated activations and the KV cache. `forward` reads top to
bottom like the paper for a chunk of tokens. Every matrix product first quantizes its input to
the weight's `vec_dot_type` exactly as ggml-cpu does (`Activations`), so the logits agree with
llama.cpp's on the same file to float32 rounding. The KV cache is float16, as llama.cpp's default
is (the jitted kernels read it as uint16 bits, engine.kernels `kv_view`); a layer with a sliding
window keeps a ring of `window + n_batch - 1` slots, a global layer the whole context.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from engine import fused as F
from engine import kernels as K
from engine import matmul as M
from engine import packcache, quants
from engine.matmul import matmul_packed
from engine.quants import Packed
from models import arch as A
from models.arch import Config
from models.gguf import GGUFFile

Device = Literal["cpu", "cuda"]

# ======================================================================================
# Weights: matrices repacked for the kernels, vectors as views into the memory map
# ======================================================================================


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray
    wq: Packed
    wk: Packed
    wv: Packed
    wo: Packed
    ffn_norm: np.ndarray
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    bo: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    ffn_gate: Packed | None = None  # dense FFN
    ffn_up: Packed | None = None
    ffn_down: Packed | None = None
    gate_inp: Packed | None = None  # router (n_expert, n_embd)
    gate_exps: Packed | None = None  # experts stacked: (n_expert * n_ff_exp, n_embd)
    up_exps: Packed | None = None
    down_exps: Packed | None = None  # (n_expert * n_embd, n_ff_exp)
    gate_inp_shexp: np.ndarray | None = None  # shared expert and its gate (n_embd,)
    gate_shexp: Packed | None = None
    up_shexp: Packed | None = None
    down_shexp: Packed | None = None


@dataclass(frozen=True)
class Weights:
    token_embd: np.ndarray  # raw rows (n_vocab, bytes per row): looked up, never multiplied
    token_embd_type: int
    output_norm: np.ndarray
    output: Packed  # the LM head: output.weight, or token_embd when tied
    rope_freqs: np.ndarray  # per-pair frequency divisors, empty when absent
    layers: tuple[LayerWeights, ...]

    @property
    def packed_bytes(self) -> int:
        """Memory the repacked matrices take (the vectors and the embedding stay in the file)."""
        total = self.output.nbytes
        for lw in self.layers:
            total += sum(v.nbytes for v in vars(lw).values() if isinstance(v, Packed))
        return total

    def decode_bytes(self, cfg: Config) -> int:
        """Bytes of packed weights one decoded token reads: every matrix and the LM head, the
        routed experts in the proportion a token uses them (the memory-bandwidth bound's numerator)."""
        total = self.output.nbytes
        for lw in self.layers:
            for name, v in vars(lw).items():
                if isinstance(v, Packed):
                    routed = name.endswith("_exps")
                    total += v.nbytes * cfg.n_expert_used // cfg.n_expert if routed else v.nbytes
        return total


def _vector(gguf: GGUFFile, name: str) -> np.ndarray:
    info = gguf.tensors[name]
    if info.ggml_type == quants.F32:
        return gguf.tensor_array(name).reshape(-1)
    return quants.dequantize(gguf.tensor_bytes(name), info.ggml_type).reshape(-1)


def _matrix(gguf: GGUFFile, name: str, planes: bool) -> Packed:
    info = gguf.tensors[name]
    k = info.shape[0]
    rows = info.n_elements // k  # experts stack: (n_expert * n_out) rows
    # as each step of rows is packed, the file's copy of them leaves resident memory (a looked-up
    # row faults back in from the page cache)
    return quants.pack(gguf.tensor_bytes(name).reshape(rows, -1), info.ggml_type, k, planes=planes,
                       compact=M.INT8, done=lambda r0, r1: gguf.release(name, (r0, r1)))


def load_weights(gguf: GGUFFile, cfg: Config, planes: bool = False, packed_dir: Path | None = None) -> Weights:
    """Repack every matrix of `gguf` once; vectors stay views into its memory map. `planes`: the 5-
    and 6-bit matrices as nibbles and bit planes where the integer kernels run (engine.quants
    PLANES: a third fewer bytes per decoded token; 10-15% more arithmetic when many tokens share
    each row, as in prefill and batched decode). Where they run, the K-quants' scales are kept
    compact as well (engine.quants `compact_byte`). `packed_dir`: where the repacked matrices are
    kept between runs (engine.packcache): mapped from there when a file made from this model and
    this code is found, else repacked and written there."""
    planes = planes and M.INT8
    fields: list[dict[str, str]] = []  # per layer: field -> tensor name
    vectors: set[str] = set()
    for i in range(cfg.n_layer):
        named = {field: name for field, (name, _required) in A.layer_tensors(cfg, i).items() if name in gguf.tensors}
        vectors.update(n for n in named.values() if len(gguf.tensors[n].shape) == 1)
        fields.append(named)
    out_name = "token_embd.weight" if cfg.tied_output else "output.weight"
    names = [n for named in fields for n in named.values() if n not in vectors] + [out_name]
    mats = packcache.load(packed_dir, gguf, planes, M.INT8, names) if packed_dir is not None else None
    if mats is None:
        mats = {name: _matrix(gguf, name, planes) for name in names}
        if packed_dir is not None:
            packcache.save(packed_dir, gguf, planes, M.INT8, mats)
    layers = [LayerWeights(**{f: _vector(gguf, n) if n in vectors else mats[n] for f, n in named.items()})
              for named in fields]
    emb = gguf.tensors["token_embd.weight"]
    return Weights(
        token_embd=gguf.tensor_bytes("token_embd.weight").reshape(emb.shape[1], -1),
        token_embd_type=emb.ggml_type,
        output_norm=_vector(gguf, "output_norm.weight"),
        output=mats[out_name],
        rope_freqs=_vector(gguf, "rope_freqs.weight") if "rope_freqs.weight" in gguf.tensors
        else np.empty(0, np.float32),
        layers=tuple(layers),
    )


# ======================================================================================
# RunState: preallocated activations and the KV cache
# ======================================================================================


class Activations:
    """One matmul input (T, K) and what it quantizes to per activation family, made on first use:
    the float values the dot product sees (xh, xs) and, for the int8 families on a CPU with integer
    dot products, the int8 form (xq, xd) of engine.int8."""

    def __init__(self, n_batch: int, k: int) -> None:
        self.x = np.zeros((n_batch, k), np.float32)
        self._bufs: dict[int, tuple[np.ndarray, ...]] = {}
        self._ready: set[int] = set()
        self._ready8: set[int] = set()  # of those, the ones whose int8 form is filled too
        self._rows: dict[int, tuple[np.ndarray, ...]] = {}  # the first _n rows of each family's buffers
        self._n = 0

    def view(self, n: int) -> np.ndarray:
        """The first n rows to write the input into; what was quantized before is forgotten."""
        if n != self._n:
            self._rows.clear()
        self._n = n
        self._ready.clear()
        self._ready8.clear()
        return self.x[:n]

    def _quantize(self, act: int, force: bool = False) -> tuple[np.ndarray, ...]:
        n_batch, k = self.x.shape
        ints = M.int8_activation(act, k)
        if act not in self._bufs:
            f32 = np.float32
            self._bufs[act] = (np.zeros((n_batch, k), f32), np.zeros((n_batch, k // 32), f32),
                               np.zeros((n_batch, k if ints else 0), np.int8),
                               np.zeros((n_batch, k // 32 if ints else 0), f32))
        bufs = self._rows.get(act)
        if bufs is None:  # (slicing four buffers each call was ~5% of a SmolLM2 decode step)
            bufs = self._rows[act] = tuple(b[: self._n] for b in self._bufs[act])
        if act not in self._ready or (ints and force and act not in self._ready8):
            if ints and (self._n > 1 or force):  # one token multiplies with the float kernels (linear)
                self._ready8.add(act)
                quants.quantize_activation8(act, self.x[: self._n], *bufs)
            else:
                quants.quantize_activation(act, self.x[: self._n], bufs[0], bufs[1])
            self._ready.add(act)
        return bufs

    def quantized(self, act: int) -> tuple[np.ndarray, np.ndarray]:
        """(xh, xs): the values llama.cpp's dot product sees and their sums per 32."""
        return self._quantize(act)[:2]

    def int8(self, act: int, force: bool = False) -> tuple[np.ndarray, ...]:
        """(xh, xs, xq, xd); the int8 form (the last two) is filled for several tokens (or
        one with `force`), and empty where integer dot products do not apply."""
        return self._quantize(act, force)


def linear(out: np.ndarray, w: Packed, inp: Activations, ints: bool = False) -> None:
    """out (T, rows) = inp (T, K) @ W.T, with inp quantized the way llama.cpp's dot product sees it.
    Several tokens go through the integer dot products where the CPU has them, one token through
    the float kernels unless `ints` (batched decode: every sequence gets the same arithmetic
    whether it runs alone or with others). A PLANES weight, or one with compact scales, always
    takes the integer kernels (those layouts are packed only where they run; their float kernel is
    a slow fallback)."""
    ints = ints or w.kind == quants.KIND_PLANES or w.compact
    xh, xs, xq, xd = inp.int8(w.act, ints)
    if (out.shape[0] > 1 or ints) and M.int8_weight(w):
        M.matmul_int8(out, w, xq, xd, xs)
    else:
        matmul_packed(out, w, xh, xs)


class RunState:
    """Buffers for up to n_batch tokens per forward call, and a KV cache of n_ctx positions for each
    of n_slots sequences (slot 0 is the one a single generation uses)."""

    def __init__(self, cfg: Config, n_ctx: int, n_batch: int, device: Device = "cpu", n_slots: int = 1,
                 kv_dtype: type = np.float16) -> None:
        self.n_ctx, self.n_batch, self.n_slots = n_ctx, n_batch, n_slots
        self.batched = False  # in forward_batch: every token through the batched kernels, even alone
        self.experts_alone = False  # in forward: one MoE token's experts through the one-token path
        self.fused = False  # in forward: one token, each layer in one jitted call (engine.fused)
        self.cuda = None  # engine.cuda_kernels.CudaOps when attention and routing run on the GPU
        if device == "cuda":
            from engine.cuda_kernels import CudaOps

            self.cuda = CudaOps()
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        f32 = np.float32
        self.x = np.zeros((n_batch, cfg.n_embd), f32)  # the residual stream
        self.attn_in = Activations(n_batch, cfg.n_embd)
        self.attn_out = Activations(n_batch, q_dim)
        self.ffn_in = Activations(n_batch, cfg.n_embd)
        self.head_in = Activations(n_batch, cfg.n_embd)
        self.q = np.zeros((n_batch, q_dim), f32)
        self.k = np.zeros((n_batch, kv_dim), f32)
        self.v = np.zeros((n_batch, kv_dim), f32)
        self.proj = np.zeros((n_batch, cfg.n_embd), f32)
        self._ffn: dict[int, tuple[np.ndarray, np.ndarray, Activations]] = {}
        self._one: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._grouped: tuple[Activations, np.ndarray, np.ndarray] | None = None
        widest = max(cfg.n_embd, q_dim, cfg.n_ff)
        # one token's quantized input (engine.fused): the values, sums per 32, int8 form and its scales
        self.one_xh, self.one_xs = np.zeros(widest, f32), np.zeros(widest // 32, f32)
        self.one_xq, self.one_xd = np.zeros(widest, np.int8), np.zeros(widest // 32, f32)
        # per layer: the parallel work-item sizes of wq, wk, wv, wo and a dense FFN's gate, up, down
        self.chunks: dict[int, np.ndarray] = {}
        self.int8_flags: dict[tuple[int, bool], np.ndarray] = {}  # (layer, batched): the same matrices' `ints`
        self.cos = np.zeros((n_batch, cfg.n_rot // 2), f32)
        self.sin = np.zeros((n_batch, cfg.n_rot // 2), f32)
        if cfg.is_moe:
            k_used = cfg.n_expert_used
            self.router = np.zeros((n_batch, cfg.n_expert), f32)
            self.selected = np.zeros((n_batch, k_used), np.int64)
            self.expert_w = np.zeros((n_batch, k_used), f32)
            self.counts = np.zeros(cfg.n_expert, np.int64)
            self.order = np.zeros(n_batch * k_used, np.int64)
            self.pair_tokens = np.zeros(n_batch * k_used, np.int64)  # the token of each pair in `order`
            self._gather: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            self._expert_rows: dict[int, np.ndarray] = {}  # `expert_outputs`
            self._expert_in: Activations | None = None  # `float_expert_in`
            self.routed = np.zeros((cfg.n_layer, cfg.n_expert), np.int64)  # tokens per expert, since reset
        # KV cache per layer (n_slots, cap, n_kv, d): a global layer holds every position, a windowed
        # one a ring of the window plus a chunk. float16, as llama.cpp keeps it by default: half the
        # bytes each decoded token's attention reads, and half the memory (the GPU path widens
        # what it copies to the device); float32 on request (llama.cpp's `type_k`/`type_v` f32)
        assert kv_dtype in (np.float16, np.float32), kv_dtype
        self.kv_dtype = kv_dtype
        self.k_slots, self.v_slots = [], []
        for layer in range(cfg.n_layer):
            window = cfg.window(layer)
            cap = min(n_ctx, window + n_batch - 1) if window else n_ctx
            self.k_slots.append(np.zeros((n_slots, cap, cfg.n_head_kv, cfg.head_dim), self.kv_dtype))
            self.v_slots.append(np.zeros((n_slots, cap, cfg.n_head_kv, cfg.head_dim), self.kv_dtype))
        self.k_cache = [a[0] for a in self.k_slots]  # slot 0's, per layer
        self.v_cache = [a[0] for a in self.v_slots]
        self.k_bits = [K.kv_view(a) for a in self.k_slots]  # the same caches as the jitted kernels take them
        self.v_bits = [K.kv_view(a) for a in self.v_slots]

    def one_token_buffers(self, k: int, width: int, n_out: int) -> tuple[np.ndarray, ...]:
        """For one token through k experts (or one dense FFN) of that width: mid, up scratch, mid
        quantized (xh, xs) and the experts' outputs (k, n_out)."""
        key = (k, width, n_out)
        if key not in self._one:
            f32 = np.float32
            self._one[key] = (np.zeros((k, width), f32), np.zeros((k, width), f32), np.zeros((k, width), f32),
                              np.zeros((k, width // 32), f32), np.zeros((k, n_out), f32))
        return self._one[key]

    def one_token_int8(self, k: int, width: int, ints: bool) -> tuple[np.ndarray, np.ndarray]:
        """The int8 form (values, scale per 32) of k experts' SwiGLU outputs of that width (empty
        unless `ints`)."""
        key = ("i8", k, width if ints else 0)
        if key not in self._one:
            w = key[2]
            self._one[key] = (np.zeros((k, w), np.int8), np.zeros((k, w // 32), np.float32))
        return self._one[key]

    def grouped_buffers(self, cfg: Config) -> tuple[Activations, np.ndarray, np.ndarray]:
        """For a batch's (token, expert) pairs, up to n_batch * k of them: the SwiGLU outputs,
        the up-projection scratch (n_ff_exp wide) and the down projections (n_embd wide)."""
        if self._grouped is None:
            m = self.n_batch * cfg.n_expert_used
            self._grouped = (Activations(m, cfg.n_ff_exp), np.zeros((m, cfg.n_ff_exp), np.float32),
                             np.zeros((m, cfg.n_embd), np.float32))
        return self._grouped

    def expert_outputs(self, cfg: Config, n: int) -> np.ndarray:
        """(n, k, n_embd): each (token, slot)'s expert output, for one token or (the float path) a
        batch; made on first use, one token's apart, so that what a path never uses is never
        mapped (`touch_scratch` writes every buffer made)."""
        rows = 1 if n == 1 else self.n_batch
        if rows not in self._expert_rows:
            self._expert_rows[rows] = np.zeros((rows, cfg.n_expert_used, cfg.n_embd), np.float32)
        return self._expert_rows[rows][:n]

    def float_expert_in(self, cfg: Config) -> Activations:
        """One expert's tokens, gathered (the float path's batches), made on first use."""
        if self._expert_in is None:
            self._expert_in = Activations(self.n_batch, cfg.n_embd)
        return self._expert_in

    def gather_buffers(self, act: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first m of n_batch * k rows for the MoE input's int8 form (xs, xq, xd), gathered
        in expert order, per activation family."""
        if act not in self._gather:
            rows, k = self.pair_tokens.shape[0], self.ffn_in.x.shape[1]
            self._gather[act] = (np.zeros((rows, k // 32), np.float32), np.zeros((rows, k), np.int8),
                                 np.zeros((rows, k // 32), np.float32))
        return tuple(b[:m] for b in self._gather[act])  # type: ignore[return-value]

    def ffn_buffers(self, width: int) -> tuple[np.ndarray, np.ndarray, Activations]:
        """gate, up (n_batch, width) and the SwiGLU output for an FFN of that width (dense, expert, shared)."""
        if width not in self._ffn:
            n = self.n_batch
            self._ffn[width] = (np.zeros((n, width), np.float32), np.zeros((n, width), np.float32),
                                Activations(n, width))
        return self._ffn[width]

    def touch_scratch(self) -> None:
        """Write every scratch buffer made so far (not the KV cache), so that the kernel maps their
        pages now: numpy's zeros are mapped on first write, which a first 256-token prompt of a
        MoE file paid as ~0.15 s of page faults. The KV cache, the work-item sizes (`chunks`) and
        the routing counts hold values, not scratch, and are left alone."""

        def touch(v: object) -> None:
            if isinstance(v, np.ndarray):
                if v.size and v.flags.writeable:
                    v.fill(0)
            elif isinstance(v, Activations):
                touch(vars(v))
            elif isinstance(v, dict):
                for x in v.values():
                    touch(x)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    touch(x)

        kept = ("k_slots", "v_slots", "k_cache", "v_cache", "k_bits", "v_bits", "chunks", "int8_flags", "routed")
        touch({k: v for k, v in vars(self).items() if k not in kept})

    @property
    def kv_bytes(self) -> int:
        return sum(a.nbytes for a in self.k_slots) + sum(a.nbytes for a in self.v_slots)


# ======================================================================================
# The forward pass
# ======================================================================================


_EMPTY = np.zeros(0, np.float32)  # an absent bias or norm, for the jitted one-token path
_QK_MODE = {"none": F.QK_NONE, "head": F.QK_HEAD, "full": F.QK_FULL}


_FUSED_MATRICES = ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down")  # engine.fused's order


def _fused_args(lw: LayerWeights, st: RunState, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's per-matrix work-item sizes and whether each takes the integer kernels (as
    `linear` would send it), for engine.fused; made once per layer (absent matrices: unused)."""
    chunks, ints = st.chunks.get(layer), st.int8_flags.get((layer, st.batched))
    if chunks is None or ints is None:
        mats = [getattr(lw, name) for name in _FUSED_MATRICES]
        chunks = st.chunks[layer] = np.array([M.work_chunk(w.rows if w is not None else 1) for w in mats])
        ints = st.int8_flags[(layer, st.batched)] = np.array(
            [w is not None and (st.batched or w.kind == quants.KIND_PLANES or w.compact) and M.int8_weight(w)
             for w in mats])
    return chunks, ints


def _layer_one_token(cfg: Config, lw: LayerWeights, st: RunState, layer: int, pos: int, slot: int) -> bool:
    """One token through the layer's attention block on the CPU and, where the integer kernels run
    it, its dense FFN, in one jitted call (engine.fused); whether the FFN was run too."""
    chunks, ints = _fused_args(lw, st, layer)
    e = _EMPTY
    dense = st.batched and not cfg.is_moe
    ffn = (lw.ffn_gate, lw.ffn_up, lw.ffn_down) if dense else (lw.wq, lw.wq, lw.wq)  # (else not read)
    gate, up, mid = st.ffn_buffers(lw.ffn_gate.rows) if dense else (st.q, st.q, st.attn_out)
    F.layer_one_token(
        st.x[:1], lw.attn_norm, cfg.rms_eps, lw.wq, lw.wk, lw.wv, lw.wo,
        e if lw.bq is None else lw.bq, e if lw.bk is None else lw.bk, e if lw.bv is None else lw.bv,
        e if lw.bo is None else lw.bo, e if lw.q_norm is None else lw.q_norm, e if lw.k_norm is None else lw.k_norm,
        _QK_MODE[cfg.qk_norm], st.cos[:1], st.sin[:1], cfg.rope_neox,
        st.k_bits[layer][slot], st.v_bits[layer][slot], pos, cfg.window(layer), 1.0 / math.sqrt(cfg.head_dim),
        st.attn_in.x[:1], st.q[:1], st.k[:1], st.v[:1], st.attn_out.x[:1], st.proj[:1],
        st.one_xh, st.one_xs, st.one_xq, st.one_xd, chunks, ints,
        dense, lw.ffn_norm, *ffn, st.ffn_in.x[:1], gate[:1], up[:1], mid.x[:1],
    )
    return dense


def attention_block(cfg: Config, lw: LayerWeights, st: RunState, layer: int, pos0: int, n: int, slot: int = 0,
                    batch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """x[:n] += the attention block of n tokens: positions pos0.. of sequence `slot`, or, with
    `batch` (slots, positions), token i at positions[i] of sequence slots[i] (see forward_batch)."""
    d, n_head, n_kv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
    x = st.x[:n]
    # pre-norm
    K.rmsnorm(st.attn_in.view(n), x, lw.attn_norm, cfg.rms_eps)
    # q, k, v projections (+ biases: qwen2)
    q, k, v = st.q[:n], st.k[:n], st.v[:n]
    linear(q, lw.wq, st.attn_in, st.batched)
    linear(k, lw.wk, st.attn_in, st.batched)
    linear(v, lw.wv, st.attn_in, st.batched)
    for out, bias in ((q, lw.bq), (k, lw.bk), (v, lw.bv)):
        if bias is not None:
            out += bias
    # q/k RMSNorm: over the whole projection (olmoe) or per head (qwen3)
    if cfg.qk_norm != "none":
        K.rmsnorm(q, q, lw.q_norm, cfg.rms_eps)
        K.rmsnorm(k, k, lw.k_norm, cfg.rms_eps)
    q3 = q.reshape(n, n_head, d)  # (n_tokens, n_head, head_dim)
    k3 = k.reshape(n, n_kv, d)  # (n_tokens, n_kv_heads, head_dim)
    # rotary position embedding
    K.rope(q3, st.cos[:n], st.sin[:n], cfg.rope_neox)
    K.rope(k3, st.cos[:n], st.sin[:n], cfg.rope_neox)
    att = st.attn_out.view(n).reshape(n, n_head, d)  # (n_tokens, n_head, head_dim)
    scale = 1.0 / math.sqrt(d)
    if batch is not None:
        # each k, v at its position in its own slot (all of them first), then attention over each slot
        slots, positions = batch
        kc, vc = st.k_slots[layer], st.v_slots[layer]
        rows = positions % kc.shape[1]
        kc[slots, rows] = k3  # (rounded to float16 on the CPU)
        vc[slots, rows] = v.reshape(n, n_kv, d)
        K.attention_slots(att, q3, st.k_bits[layer], st.v_bits[layer], slots, positions, cfg.window(layer), scale)
    else:
        # store k, v at their slots (a ring for windowed layers)
        kc, vc = st.k_slots[layer][slot], st.v_slots[layer][slot]
        rows = np.arange(pos0, pos0 + n) % kc.shape[0]
        kc[rows] = k3
        vc[rows] = v.reshape(n, n_kv, d)
        # softmax(q k^T / sqrt(d)) v over the window
        if st.cuda is not None:
            st.cuda.attention(att, q3, kc, vc, pos0, cfg.window(layer), scale)
        elif n >= K.GEMM_QUERIES and not st.batched:
            K.attention_gemm(att, q3, kc, vc, pos0, cfg.window(layer), scale, M.thread_pool())
        else:
            K.attention(att, q3, st.k_bits[layer][slot], st.v_bits[layer][slot], pos0, cfg.window(layer), scale)
    # output projection and residual
    o = st.proj[:n]
    linear(o, lw.wo, st.attn_out, st.batched)
    if lw.bo is not None:
        o += lw.bo
    x += o


def _experts_one_token(gate_w: Packed, up_w: Packed, down_w: Packed, inp: Activations, st: RunState,
                       sel: np.ndarray, width: int) -> np.ndarray:
    """One token through the experts `sel` of stacks of `width`-row experts (a dense FFN is the
    stack of one, sel [0]): their outputs (k, n_out), in two parallel regions."""
    k, n_out = sel.shape[0], down_w.rows // (gate_w.rows // width)  # rows per expert of the down stack
    mid, up, mid_h, mid_s, y = st.one_token_buffers(k, width, n_out)
    g, u, d = gate_w, up_w, down_w
    # the integer dot products where the rest of the token takes them (`forward`)
    ints = M.INT8 and ONE_TOKEN_INT8 and all(M.int8_weight(w) for w in (g, u, d))
    gx, ux = inp.int8(g.act, ints), inp.int8(u.act, ints)
    each = _each_row(k)
    M.experts_swiglu(mid, up, sel, each, g, u, gx, ux, ints, min(width, M.work_chunk(k * width)))
    mid_q, mid_d = st.one_token_int8(k, width, ints)
    if ints:
        quants.quantize_activation8(d.act, mid, mid_h, mid_s, mid_q, mid_d)
    else:
        quants.quantize_activation(d.act, mid, mid_h, mid_s)
    M.experts_down(y, sel, each, d, (mid_h, mid_s, mid_q, mid_d), ints, min(n_out, M.work_chunk(k * n_out)))
    return y


@functools.lru_cache(maxsize=None)
def _each_row(k: int) -> np.ndarray:
    """Row starts 0, 1, ..., k: each of k experts takes one row (one token through them)."""
    return np.arange(k + 1, dtype=np.int64)


#: one decoded token through the integer kernels (see `forward`); a benchmark,
#: tests/engine/bench_agreement.py, turns it off to compare
ONE_TOKEN_INT8 = True

_DENSE = np.zeros(1, np.int64)  # a dense FFN: expert 0 of a stack of one


def _swiglu_ffn(out: np.ndarray, gate_w: Packed, up_w: Packed, down_w: Packed, inp: Activations,
                st: RunState, n: int) -> None:
    """out (n, n_embd) = down(silu(gate(x)) * up(x))."""
    if n == 1 and st.cuda is None and not st.batched:
        out[0] = _experts_one_token(gate_w, up_w, down_w, inp, st, _DENSE, gate_w.rows)[0]
        return
    gate, up, mid = st.ffn_buffers(gate_w.rows)
    linear(gate[:n], gate_w, inp, st.batched)
    linear(up[:n], up_w, inp, st.batched)
    K.swiglu(mid.view(n), gate[:n], up[:n])
    linear(out, down_w, mid, st.batched)


def _moe_block(cfg: Config, lw: LayerWeights, st: RunState, layer: int, n: int, out: np.ndarray) -> None:
    """out (n, n_embd) = sum over each token's top-k experts of weight * expert(x) (build_moe_ffn)."""
    k_used, n_ff = cfg.n_expert_used, cfg.n_ff_exp
    # route: softmax over all experts, top-k, optional renormalisation and scale
    router = st.router[:n]
    linear(router, lw.gate_inp, st.ffn_in, st.batched)
    selected, weights = st.selected[:n], st.expert_w[:n]
    if st.cuda is not None:
        selected[:], weights[:] = st.cuda.route(router, k_used, cfg.moe_renorm, cfg.expert_weights_scale)
    else:
        K.route_experts(selected, weights, router, cfg.moe_renorm, cfg.expert_weights_scale)
    if n == 1 and st.cuda is None and (not st.batched or st.experts_alone):
        # (experts_alone: one decoded token outside continuous batching, see `forward`)
        # one token: every selected expert's rows in two parallel regions
        y = st.expert_outputs(cfg, 1)
        st.routed[layer, selected[0]] += 1
        y[0] = _experts_one_token(lw.gate_exps, lw.up_exps, lw.down_exps, st.ffn_in, st, selected[0], n_ff)
        y[0] *= weights[0][:, None]
    else:
        _group_by_expert(cfg, st, layer, n)
        g, u, d = lw.gate_exps, lw.up_exps, lw.down_exps
        if st.cuda is None and M.INT8 and all(M.int8_weight(w) for w in (g, u, d)):
            _experts_grouped_int8(cfg, lw, st, n, out)  # weighted and summed as below
            y = None
        else:
            y = st.expert_outputs(cfg, n)
            _experts_grouped(cfg, lw, st, n, y)
    if y is not None:  # sum the experts in slot order, as llama.cpp adds them
        out[:] = y[:, 0]
        for j in range(1, k_used):
            out += y[:, j]
    # shared expert, gated by sigmoid(w . x) (qwen2moe)
    if cfg.shared_expert:
        shared = np.empty((n, cfg.n_embd), np.float32)
        _swiglu_ffn(shared, lw.gate_shexp, lw.up_shexp, lw.down_shexp, st.ffn_in, st, n)
        gate_logit = st.ffn_in.quantized(quants.ACT_F32)[0] @ lw.gate_inp_shexp
        for t in range(n):
            out[t] += shared[t] * K.sigmoid(gate_logit[t])


def _group_by_expert(cfg: Config, st: RunState, layer: int, n: int) -> None:
    """st.counts: tokens per expert; st.order: the (token, slot) pairs expert by expert."""
    k_used = cfg.n_expert_used
    selected = st.selected[:n]
    if st.cuda is not None:
        st.counts[:], st.order[: n * k_used], _ = st.cuda.permute(selected, cfg.n_expert)
    else:
        K.group_by_expert(selected, cfg.n_expert, st.counts, st.order[: n * k_used])
    st.routed[layer] += st.counts


def _experts_grouped(cfg: Config, lw: LayerWeights, st: RunState, n: int, y: np.ndarray) -> None:
    """y[t, j] = weight * expert(x_t) for several tokens grouped by expert (`_group_by_expert`):
    one matmul per active expert over its tokens."""
    k_used, n_ff = cfg.n_expert_used, cfg.n_ff_exp
    weights = st.expert_w[:n]
    x_all = st.ffn_in.x[:n]
    expert_in = st.float_expert_in(cfg)
    start = 0
    for e in np.flatnonzero(st.counts):
        c = int(st.counts[e])
        pairs = st.order[start:start + c]
        start += c
        toks, slots = pairs // k_used, pairs % k_used
        expert_in.view(c)[:] = x_all[toks]
        rows = slice(e * n_ff, (e + 1) * n_ff)
        down_rows = slice(e * cfg.n_embd, (e + 1) * cfg.n_embd)
        ye = st.proj[:c]
        _swiglu_ffn(ye, lw.gate_exps.rows_slice(rows.start, rows.stop), lw.up_exps.rows_slice(rows.start, rows.stop),
                    lw.down_exps.rows_slice(down_rows.start, down_rows.stop), expert_in, st, c)
        y[toks, slots] = ye * weights[toks, slots][:, None]


def _experts_grouped_int8(cfg: Config, lw: LayerWeights, st: RunState, n: int, out: np.ndarray) -> None:
    """out (n, n_embd) = each token's experts weighted and summed, for several tokens grouped by
    expert, through the integer kernels, every expert at once: the input quantized once and its
    int8 rows gathered in expert order, then gate/up + SwiGLU for every active expert in one
    parallel region and down in another (per expert and matrix, the Python calls and the
    launches had cost as much as a fifth of a MoE prefill)."""
    k_used = cfg.n_expert_used
    g, u, d = lw.gate_exps, lw.up_exps, lw.down_exps
    m = n * k_used
    pairs = st.order[:m]  # (token, slot) pairs, expert by expert
    toks = np.floor_divide(pairs, k_used, out=st.pair_tokens[:m])
    active = np.flatnonzero(st.counts)
    starts = np.zeros(active.shape[0] + 1, np.int64)
    np.cumsum(st.counts[active], out=starts[1:])
    mid, up, ye = st.grouped_buffers(cfg)

    def gathered(act: int) -> tuple[np.ndarray, ...]:
        xh, xs, xq, xd = st.ffn_in.int8(act, True)
        to = st.gather_buffers(act, m)
        for src, dst in zip((xs, xq, xd), to):
            np.take(src, toks, axis=0, out=dst)
        return (xh[:1], *to)  # (xh is not read by the integer kernels)

    gx = gathered(g.act)
    ux = gx if u.act == g.act else gathered(u.act)
    n_ff = mid.x.shape[1]
    M.experts_swiglu(mid.view(m), up[:m], active, starts, g, u, gx, ux, True, M.group_chunk(n_ff))
    M.experts_down(ye[:m], active, starts, d, mid.int8(d.act, True), True, M.group_chunk(cfg.n_embd))
    K.sum_expert_rows(out, ye[:m], pairs, st.expert_w[:n])


def ffn_block(cfg: Config, lw: LayerWeights, st: RunState, layer: int, n: int) -> None:
    x = st.x[:n]
    # pre-norm
    K.rmsnorm(st.ffn_in.view(n), x, lw.ffn_norm, cfg.rms_eps)
    out = np.empty((n, cfg.n_embd), np.float32)
    if cfg.is_moe:
        _moe_block(cfg, lw, st, layer, n, out)
    else:
        _swiglu_ffn(out, lw.ffn_gate, lw.ffn_up, lw.ffn_down, st.ffn_in, st, n)
    # residual
    x += out


def embed(cfg: Config, w: Weights, st: RunState, tokens: np.ndarray, positions: np.ndarray) -> None:
    """The residual stream's start for `tokens`, and the rotary angles of their positions."""
    n = tokens.shape[0]
    # token embeddings (get_rows dequantizes the rows)
    st.x[:n] = quants.dequantize(w.token_embd[tokens], w.token_embd_type).reshape(n, cfg.n_embd)
    set_positions(cfg, w, st, positions)


def set_positions(cfg: Config, w: Weights, st: RunState, positions: np.ndarray) -> None:
    # rotary angles of these positions, shared by every layer
    n = positions.shape[0]
    K.rope_cache(st.cos[:n], st.sin[:n], positions, cfg.n_rot, cfg.rope_base, cfg.rope_freq_scale, w.rope_freqs)


def head_logits(cfg: Config, w: Weights, st: RunState, rows: np.ndarray) -> np.ndarray:
    """Final norm and LM head over `rows` (m, n_embd) of the residual stream: logits (m, n_vocab)."""
    K.rmsnorm(st.head_in.view(rows.shape[0]), rows, w.output_norm, cfg.rms_eps)
    logits = np.empty((rows.shape[0], cfg.n_vocab), np.float32)
    linear(logits, w.output, st.head_in, st.batched)
    return logits


def forward(cfg: Config, w: Weights, st: RunState, tokens: np.ndarray, pos0: int, all_logits: bool,
            slot: int = 0, uniform: bool = False) -> np.ndarray:
    """Run `tokens` (n <= n_batch) at positions pos0.. of sequence `slot` through the model, filling
    its KV cache; `uniform` runs even one token through the batched kernels (see forward_batch).

    Returns the logits (n, n_vocab) of every token when `all_logits`, else (1, n_vocab) of the last.
    """
    n = tokens.shape[0]
    assert 0 < n <= st.n_batch and pos0 + n <= st.n_ctx and 0 <= slot < st.n_slots, (n, pos0, slot, st.n_batch)
    embed(cfg, w, st, tokens, np.arange(pos0, pos0 + n))
    # One token through the integer kernels where the CPU has them: with two weight rows per step
    # they beat the float matrix-vector kernels at decode too (Qwen2.5-0.5B 77-78 against 73 tok/s,
    # SmolLM2 165-168 against 159-161, 2 threads), and their greedy answers follow llama.cpp's
    # (whose dot products are integer ones too) for longer: 64 tokens after 300 of 9 stdlib files
    # agree for 56.6 tokens on average against 50.3 with the float kernels (SmolLM2: 34.3 against
    # 24.0; tests/engine/bench_agreement.py). A MoE's experts keep their one-token path, which runs
    # only the selected experts' rows (the grouped integer path measured slower for them: OLMoE-
    # shaped 154-156 against 159-166 tok/s), while its attention, router and head take the integer
    # kernels (Qwen3-30B-A3B-shaped 95.0-96.7 against 91.8-93.1 tok/s all float).
    batched = uniform or (n == 1 and M.INT8 and ONE_TOKEN_INT8 and st.cuda is None)
    # only the rows whose logits are wanted go through the head
    alone = n == 1 and not uniform
    return _layers_and_head(cfg, w, st, n, batched, slice(0, n) if all_logits else slice(n - 1, n),
                            pos0=pos0, slot=slot, experts_alone=alone, fused=alone and st.cuda is None)


def forward_batch(cfg: Config, w: Weights, st: RunState, tokens: np.ndarray, slots: np.ndarray,
                  positions: np.ndarray, head_rows: np.ndarray | None = None) -> np.ndarray:
    """Tokens of several sequences in one pass (continuous batching): tokens[i] at positions[i]
    of sequence slots[i]: one token each of sequences that decode, and chunks of prompts (a
    sequence's tokens at consecutive positions: each row's keys and values are stored before any
    row attends, and a row sees only its own sequence's positions up to its own, so a chunk is
    causal as in `forward`). Every matrix is read once for all rows (engine.int8); one row's
    numbers do not depend on which others run with it (n = 1 included: the same kernels).
    Returns the logits (len(head_rows), n_vocab) of the rows `head_rows` (default: every row)."""
    n = tokens.shape[0]
    assert 0 < n <= st.n_batch and slots.shape == positions.shape == (n,), (n, slots.shape, positions.shape)
    assert int(positions.max()) < st.n_ctx, positions
    embed(cfg, w, st, tokens, positions)
    return _layers_and_head(cfg, w, st, n, True, slice(0, n) if head_rows is None else head_rows,
                            batch=(slots, positions))


def _layers_and_head(cfg: Config, w: Weights, st: RunState, n: int, batched: bool, rows: slice | np.ndarray, *,
                     pos0: int = 0, slot: int = 0, batch: tuple[np.ndarray, np.ndarray] | None = None,
                     experts_alone: bool = False, fused: bool = False) -> np.ndarray:
    """Every layer over the n embedded tokens, then the head over `rows` of them; `batched` holds
    for the whole pass (the batched kernels even for one token), `experts_alone` sends one token's
    MoE experts through their one-token path all the same, `fused` runs one token's attention block
    (and with `batched` a dense FFN) in one jitted call per layer (engine.fused: the same values)."""
    st.batched = batched
    st.experts_alone = experts_alone
    st.fused = fused
    try:
        for layer, lw in enumerate(w.layers):
            if not st.fused:
                attention_block(cfg, lw, st, layer, pos0, n, slot, batch)
            elif _layer_one_token(cfg, lw, st, layer, pos0, slot):  # its dense FFN too
                continue
            ffn_block(cfg, lw, st, layer, n)
        return head_logits(cfg, w, st, st.x[rows])
    finally:
        st.batched = False
        st.experts_alone = False
        st.fused = False
