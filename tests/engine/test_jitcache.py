"""Numba's cache of the engine's jitted functions is dropped when any of their modules changes
(engine.jitcache): a function that compiled another module's function into itself never runs
with that callee's old code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine import jitcache

SCRIPT = """
import numpy as np
from engine import kernels as K
x = np.ones((1, 64), np.float32)
K.rmsnorm(np.empty_like(x), x, np.ones(64, np.float32), 1e-5)
print(K.rmsnorm.stats.cache_hits.total(), K.rmsnorm.stats.cache_misses.total())
"""


def _run(cache: Path) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
                          cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits, misses = proc.stdout.split()
    return int(hits), int(misses)


def test_a_changed_engine_source_drops_the_engine_modules_cached_functions(tmp_path: Path) -> None:
    assert _run(tmp_path) == (0, 1)  # compiled and cached
    assert _run(tmp_path) == (1, 0)  # loaded
    (directory,) = {p.parent for p in tmp_path.rglob("kernels.rmsnorm-*.nbi")}
    stamp = directory / jitcache.STAMP
    assert stamp.read_text().strip() == jitcache.sources_hash()
    others = [directory / "fused.layer_one_token-1.py311.nbi", directory / "elsewhere.f-1.py311.nbi",
              directory / "int8-kernels-l0-0123.nbk"]
    for p in others:
        p.write_bytes(b"")
    stamp.write_text("sources of another version\n")  # as after an edit of any one of them
    assert _run(tmp_path) == (0, 1)  # compiled again
    assert stamp.read_text().strip() == jitcache.sources_hash()
    assert [p.exists() for p in others] == [False, True, True]  # the engine's, not others' or the kernels' files
