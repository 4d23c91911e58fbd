"""Fixtures of the native engine's tests: synthetic GGUF models built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic_models import Shape, build_model, default_shape, quantize_model


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """synthetic(key, ftype, **shape) -> a model file; "llama-moe" is llama with Mixtral experts.

    Files are built once per (key, shape) in F32 and quantized by llama.cpp once per file type.
    """
    root = tmp_path_factory.mktemp("synthetic")
    built: dict[tuple[str, str, str], Path] = {}

    def make(key: str, ftype: str = "F32", **kw: object) -> Path:
        tag = "-".join(f"{k}{v}" for k, v in sorted(kw.items())) or "base"
        name = (key, ftype, tag)
        if name in built:
            return built[name]
        f32 = (key, "F32", tag)
        if f32 not in built:
            arch = key.removesuffix("-moe")
            shape: Shape = default_shape(arch, moe=True, **kw) if key.endswith("-moe") else default_shape(arch, **kw)
            built[f32] = build_model(root / f"{key}-{tag}-F32.gguf", shape)
        if ftype != "F32":
            built[name] = quantize_model(built[f32], root / f"{key}-{tag}-{ftype}.gguf", ftype)
        return built[name]

    return make


@pytest.fixture(scope="session")
def native_smollm2(smollm2_path: Path):
    """SmolLM2-135M on the native backend, shared by the native backend tests."""
    from engine.native import NativeBackend

    backend = NativeBackend(smollm2_path, n_ctx=1024, n_threads=2, architecture="llama")
    yield backend
    backend.close()
