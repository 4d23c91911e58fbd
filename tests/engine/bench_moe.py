"""MoE decode speed, native engine next to llama.cpp (not a test: run it by hand).

Writes Q4_K_M files whose layers have the real shapes of OLMoE-1B-7B (64 experts of 1024, top-8)
and Qwen3-30B-A3B (128 experts of 768, top-8), with fewer layers than the real models, plus for
each a dense file of the same total size (one FFN as wide as all the experts together). Then
`assistant bench` measures each file on both engines, and the report puts the MoE file's decode
speed next to its dense twin's: when cost follows the active parameters, the MoE file decodes
about total/active times faster than the dense one.

    .venv/bin/python -m tests.engine.bench_moe [--layers 2] [--runs 3] [--dir /tmp/moe-bench]

The random weights come from tests/engine/synthetic_models.py, quantized by llama.cpp's own
quantize. Qwen3-30B-A3B's attention (32 heads of 128 over a 2048-wide stream) is written as 16
heads of 128, since the builder derives the head width from n_embd / n_head.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from assistant.bench import format_report, run_bench
from assistant.settings import Settings
from tests.engine.synthetic_models import Shape, build_model, quantize_model

SHAPES = {
    "olmoe-1b-7b": dict(arch="olmoe", n_embd=2048, n_head=16, n_head_kv=16, n_ff=1024, n_expert=64,
                        n_expert_used=8, n_vocab=50304),
    "qwen3-30b-a3b": dict(arch="qwen3moe", n_embd=2048, n_head=16, n_head_kv=4, n_ff=6144, n_ff_exp=768,
                          n_expert=128, n_expert_used=8, n_vocab=151936),
}


def moe_and_dense(name: str, layers: int) -> tuple[Shape, Shape]:
    kw = dict(SHAPES[name])
    moe = Shape(n_layer=layers, **kw)  # type: ignore[arg-type]
    width = moe.n_ff if moe.arch == "olmoe" else moe.n_ff_exp
    dense = Shape(arch="llama", n_layer=layers, n_embd=moe.n_embd, n_head=moe.n_head, n_head_kv=moe.n_head_kv,
                  n_ff=width * moe.n_expert, n_vocab=moe.n_vocab)
    return moe, dense


def ensure(path: Path, shape: Shape) -> Path:
    """The Q4_K_M file of `shape` at `path`, written once (an F16 file first, then quantized)."""
    if not path.exists():
        f16 = path.with_suffix(".f16.gguf")
        build_model(f16, shape, dtype=np.float16)
        quantize_model(f16, path, "Q4_K_M")
        f16.unlink()
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", type=Path, default=Path("/tmp/moe-bench"))
    p.add_argument("--only", choices=sorted(SHAPES))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in [a.only] if a.only else SHAPES:
        moe_shape, dense_shape = moe_and_dense(name, a.layers)
        row = {}
        for kind, shape in (("moe", moe_shape), ("dense", dense_shape)):
            path = ensure(a.dir / f"{name}-{kind}-{a.layers}l-q4_k_m.gguf", shape)
            settings = Settings(model=str(path), backend="native", threads=a.threads, context_length=1024)
            report = run_bench(settings, prompt_tokens=512, gen_tokens=64, runs=a.runs)
            print(format_report(report), flush=True)
            row[kind] = report
        moe, dense = row["moe"], row["dense"]
        row["moe_over_dense"] = {
            side: moe[side]["decode_tok_s"] / dense[side]["decode_tok_s"] for side in ("ours", "reference")
        }
        row["bytes_dense_over_moe"] = (dense["bandwidth"]["ours"]["weight_bytes_per_token"]
                                       / moe["bandwidth"]["ours"]["weight_bytes_per_token"])
        print(f"{name}: MoE decodes {row['moe_over_dense']['ours']:.2f}x faster than its dense twin on the native "
              f"engine, {row['moe_over_dense']['reference']:.2f}x on llama.cpp; a token reads "
              f"{row['bytes_dense_over_moe']:.2f}x fewer weight bytes", flush=True)
        results[name] = row
    if a.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
