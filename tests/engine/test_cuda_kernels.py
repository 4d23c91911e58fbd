"""The numba.cuda kernels equal the CPU kernels on tiny shapes, under Numba's CUDA simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_results() -> dict[str, float]:
    """Every check of cuda_sim_checks.py, run once in a process where the simulator is on from the start."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cuda_sim_checks.py"))],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gate_topk_equals_cpu_routing(sim_results: dict[str, float]) -> None:
    """The gating kernel picks the same experts as the CPU and weighs them alike, with and without renorm/scale."""
    assert sim_results["route"] < 1e-6


def test_token_permutation_equals_cpu_grouping(sim_results: dict[str, float]) -> None:
    """The permutation groups (token, slot) pairs by expert in the CPU's order, and its inverse undoes it."""
    assert sim_results["permute"] == 0.0


def test_gather_and_weighted_unpermute_rebuild_the_moe_sum(sim_results: dict[str, float]) -> None:
    """Gathering rows by expert and un-permuting with the routing weights gives the per-token weighted sum."""
    assert sim_results["gather_unpermute"] < 1e-6


def test_prefill_attention_equals_cpu(sim_results: dict[str, float]) -> None:
    """Prefill attention over a causal context and over a window in a wrapped ring equals the CPU kernel."""
    assert sim_results["attention_prefill"] < 1e-5


def test_split_decode_attention_equals_cpu(sim_results: dict[str, float]) -> None:
    """Split (flash-decoding) attention for one query equals the CPU kernel, long context and window alike."""
    assert sim_results["attention_decode"] < 1e-5


def test_backend_on_the_gpu_path_equals_the_cpu(sim_results: dict[str, float]) -> None:
    """A MoE model with a sliding window gives the same logits with attention and routing on the GPU path,
    in a prefill and token by token, to float16 rounding: both read the same float16 KV cache with q
    rounded to float16, but the GPU's softmax weights stay float32 (`CudaOps.attention`)."""
    assert sim_results["backend"] < 1e-3
