"""Shared fixtures: an isolated user home for the CLI, and the bundled models, once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models import catalog


@pytest.fixture(scope="session")
def user_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """XDG dirs in a temporary home, so tests never read or write the developer's own settings."""
    root = tmp_path_factory.mktemp("home")
    env = {}
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        d = root / var.lower()
        d.mkdir(mode=0o700)  # platformdirs ignores a runtime dir that others can read
        env[var] = str(d)
    return env


@pytest.fixture(scope="session")
def cli_env(user_dirs: dict[str, str]) -> dict[str, str]:
    """The environment a CLI subprocess runs in: isolated home, no ASSISTANT_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(user_dirs)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def model_cache(user_dirs: dict[str, str]) -> Path:
    """The cache dir the CLI uses under the isolated home (bundled models are assembled here)."""
    return Path(user_dirs["XDG_CACHE_HOME"]) / "assistant" / "models"


@pytest.fixture(scope="session")
def smollm2_path(model_cache: Path) -> Path:
    return catalog.ensure_available(catalog.bundled("smollm2-135m"), model_cache)


@pytest.fixture(scope="session")
def qwen_path(model_cache: Path) -> Path:
    return catalog.ensure_available(catalog.bundled("qwen2.5-coder-0.5b"), model_cache)


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path):
    """SmolLM2-135M on the llama.cpp backend, shared by the backend tests."""
    from engine.llama import LlamaBackend

    backend = LlamaBackend(smollm2_path, n_ctx=1024, n_threads=2, architecture="llama")
    yield backend
    backend.close()
