"""Architecture definitions, the Config read from GGUF metadata, and the choice of backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from synthetic_models import build_model, default_shape

from engine.backend import EngineError
from engine.select import choose_backend
from models.arch import config_from_gguf, layer_tensors
from models.gguf import read_gguf


@pytest.mark.parametrize(
    ("key", "neox", "qk_norm", "moe", "renorm", "shared"),
    [("llama", False, "none", False, False, False), ("llama-moe", False, "none", True, True, False),
     ("qwen2", True, "none", False, False, False), ("qwen2moe", True, "none", True, False, True),
     ("qwen3", True, "head", False, False, False), ("qwen3moe", True, "head", True, True, False),
     ("olmoe", True, "full", True, False, False)],
)
def test_config_reads_each_family(key: str, neox: bool, qk_norm: str, moe: bool, renorm: bool, shared: bool,
                                  synthetic: Callable[..., Path]) -> None:
    """Each family gets its RoPE layout, q/k norm, routing and shared expert, and widths from the file."""
    cfg = config_from_gguf(read_gguf(synthetic(key)))
    assert (cfg.rope_neox, cfg.qk_norm, cfg.is_moe, cfg.shared_expert) == (neox, qk_norm, moe, shared)
    assert cfg.n_layer == 2 and cfg.n_embd == 256 and cfg.head_dim == 64 and cfg.n_vocab == 384
    if moe:
        assert cfg.moe_renorm == renorm and cfg.n_expert == 8 and cfg.n_expert_used == 2
        assert cfg.n_ff_exp == (512 if key in ("llama-moe", "olmoe") else 256)
    names = {name for name, _ in layer_tensors(cfg, 1).values()}
    assert ("blk.1.ffn_gate_exps.weight" in names) == moe and ("blk.1.attn_q_norm.weight" in names) == (qk_norm != "none")


def test_window_pattern_period_array_and_default(tmp_path: Path) -> None:
    """A window applies to every layer, to all but the last of each period, or as a per-layer array says."""
    def swa(**kw: object) -> tuple[bool, ...]:
        p = build_model(tmp_path / f"w{len(list(tmp_path.iterdir()))}.gguf", default_shape("llama", n_layer=4, **kw))
        cfg = config_from_gguf(read_gguf(p))
        return cfg.swa_layers

    assert swa() == (False,) * 4
    assert swa(window=16) == (True,) * 4
    assert swa(window=16, swa_pattern=2) == (True, False, True, False)
    assert swa(window=16, swa_pattern=[False, True, True, False]) == (False, True, True, False)


def test_expert_weight_keys_are_honoured(tmp_path: Path) -> None:
    """expert_weights_scale and expert_weights_norm override a family's routing defaults."""
    shape = default_shape("qwen2moe", extra={"qwen2moe.expert_weights_scale": 2.5, "qwen2moe.expert_weights_norm": True})
    cfg = config_from_gguf(read_gguf(build_model(tmp_path / "m.gguf", shape)))
    assert cfg.expert_weights_scale == 2.5 and cfg.moe_renorm


def test_auto_picks_native_for_dense_files_where_it_is_faster(synthetic: Callable[..., Path]) -> None:
    """For a dense file, `auto` picks the native engine on a CPU whose integer kernels run and no
    GPU (where it was measured faster), llama.cpp elsewhere, and says why."""
    from engine.int8 import VNNI
    from engine.matmul import INT8
    from engine.native import cuda_present

    auto = choose_backend(read_gguf(synthetic("qwen2", "Q5_0")))
    if INT8 and VNNI and not cuda_present():
        assert auto.name == "native" and "measured faster" in auto.reason and "--backend llama" in auto.reason
    else:
        assert auto.name == "llama" and "--backend native" in auto.reason


def test_auto_names_the_native_engine_for_what_it_runs(synthetic: Callable[..., Path]) -> None:
    """For a MoE file native can run, `native` runs it; `auto` keeps llama.cpp (faster at prefill
    there) and says native could."""
    g = read_gguf(synthetic("qwen3moe", "Q4_K_M"))
    native = choose_backend(g, "native")
    assert native.name == "native" and "qwen3moe" in native.reason and "Q4_K" in native.reason
    auto = choose_backend(g)
    assert auto.name == "llama" and "--backend native" in auto.reason and "qwen3moe" in auto.reason
    assert choose_backend(g, "llama").name == "llama"


def _with_tensor_type(src: Path, dst: Path, name: str, qtype: gguf.GGMLQuantizationType) -> Path:
    """A copy of `src` with tensor `name` stored (random bytes) as `qtype`."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        data = np.array(t.data)
        if t.name == name:
            rows, k = data.shape
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = np.random.default_rng(0).integers(0, 256, (rows, k // block * size), dtype=np.uint8)
            w.add_tensor(t.name, data, raw_dtype=qtype)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_auto_falls_back_to_llama_with_the_reason(synthetic: Callable[..., Path], tmp_path: Path) -> None:
    """A tensor in a quant type the native engine lacks sends auto to llama.cpp, naming tensor and type;
    asking for native on it is an error with the same reason."""
    path = _with_tensor_type(synthetic("llama"), tmp_path / "q2k.gguf", "blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q2_K)
    g = read_gguf(path)
    choice = choose_backend(g)
    assert choice.name == "llama" and "'blk.0.ffn_up.weight' is Q2_K" in choice.reason
    with pytest.raises(EngineError, match="Q2_K"):
        choose_backend(g, "native")


def test_unknown_architecture_goes_to_llama(tmp_path: Path) -> None:
    """An architecture the native engine does not know is left to llama.cpp with its name in the reason."""
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    choice = choose_backend(read_gguf(tmp_path / "g.gguf"))
    assert choice.name == "llama" and "'gemma2'" in choice.reason
