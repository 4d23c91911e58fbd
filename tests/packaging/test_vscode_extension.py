"""The VS Code extension builds, lints, passes its Node tests and packages into a .vsix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXT = Path(__file__).parents[2] / "packaging" / "vscode"


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_extension_ci_script(tmp_path: Path, cli_env: dict[str, str], qwen_path: Path) -> None:
    """`scripts/ci.sh` (npm ci, lint, node --test, vsce package) passes and leaves a .vsix."""
    vsix = EXT / "assistant.vsix"
    vsix.unlink(missing_ok=True)
    proc = subprocess.run(["bash", "scripts/ci.sh"], cwd=EXT, capture_output=True, text=True, timeout=900,
                          env=cli_env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "# fail 0" in proc.stdout
    assert vsix.is_file() and vsix.stat().st_size > 10_000
