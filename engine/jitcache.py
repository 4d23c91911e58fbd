"""Numba's on-disk cache of the engine's jitted functions, kept consistent across its modules.

Numba drops a cached function when its own source file changes, not when a function it calls in
another file does, though the callee is compiled into it: after an edit of `kernels.py` alone,
`fused.layer_one_token` would go on loading from the cache with the old attention inside (seen
on 2026-12-07: a checkout measured its own decode with a cached layer from hours before). So the
first engine module with cached functions to be imported compares a hash of all of their sources
with the one kept beside the cache, and where it differs deletes the cached functions of those
modules (they compile again as they are called) before any is loaded. The integer kernels' own
files (`engine.int8`, `int8-kernels-*.nbk`) carry a key of their sources already and stay.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os

#: the modules whose jitted functions Numba caches, and the IR helpers compiled into them
SOURCES = ("cuda_kernels.py", "fused.py", "int8.py", "kernels.py", "llvm_ir.py", "matmul.py", "quants.py")
STAMP = "engine-sources.stamp"


def sources_hash() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:20]


def cache_dir() -> str | None:
    """The directory Numba caches this package's functions in (NUMBA_CACHE_DIR, the package's
    __pycache__, or the user's cache); None where there is none it can write."""
    from numba.core.caching import CompileResultCacheImpl

    try:
        locator = CompileResultCacheImpl(sources_hash).locator
        locator.ensure_cache_path()
        return locator.get_cache_path()
    except (RuntimeError, OSError):
        return None


@functools.cache
def check() -> None:
    """Delete the cached functions of `SOURCES` if any of them changed since they were cached
    (once per process, before any is loaded)."""
    directory = cache_dir()
    if directory is None:
        return
    stamp = os.path.join(directory, STAMP)
    want = sources_hash()
    with contextlib.suppress(OSError), open(stamp) as f:
        if f.read().strip() == want:
            return
    for name in SOURCES:
        module = name.removesuffix(".py")
        for path in glob.glob(os.path.join(directory, f"{module}.*.nb[ic]")):
            with contextlib.suppress(OSError):
                os.unlink(path)
    write_atomically(stamp, (want + "\n").encode())


def write_atomically(path: str, data: bytes) -> None:
    """Write the file whole or not at all (another process may read it meanwhile); a cache file
    that cannot be written is only a slower next start (or, the stamp, checked again)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
