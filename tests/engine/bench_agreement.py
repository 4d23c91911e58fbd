"""How long the native engine's greedy answers stay the same as llama.cpp's (not a test: run it by hand).

For each of a few standard-library files, the first 300 tokens are the prompt and both engines
continue greedily for 64 tokens; the figure is how many leading tokens agree, with one decoded
token through the integer kernels (the default on a CPU with AVX-512 VNNI) and through the float
ones (`transformer.ONE_TOKEN_INT8` off). A prompt whose first token already differs shows 0 for
both: the prompt runs the same kernels either way.

    .venv/bin/python -m tests.engine.bench_agreement MODEL.gguf [--files 9] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--files", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    a = ap.parse_args()

    from engine import transformer as T
    from engine.backend import SamplingParams
    from engine.llama import LlamaBackend
    from engine.native import NativeBackend

    stdlib = Path(os.__file__).parent
    files = sorted(stdlib.glob("*.py"))[:20 * a.files:20]
    native, reference = NativeBackend(a.model, n_ctx=2048, n_threads=2), LlamaBackend(a.model)
    params = SamplingParams(temperature=0.0, max_tokens=a.tokens)

    def greedy(backend, prompt: list[int]) -> list[int]:
        if hasattr(backend, "reset"):
            backend.reset()
        return [ev.token for ev in backend.generate(prompt, params) if ev.token is not None]

    agree: dict[str, list[int]] = {"integer": [], "float": []}
    for f in files:
        prompt = native.tokenize(f.read_text(errors="replace")[:4000], add_special=False)[:a.prompt_tokens]
        want = greedy(reference, prompt)
        for name, flag in (("integer", True), ("float", False)):
            T.ONE_TOKEN_INT8 = flag
            got = greedy(native, prompt)
            n = 0
            while n < min(len(got), len(want)) and got[n] == want[n]:
                n += 1
            agree[name].append(n)
        print(f"{f.name}: integer {agree['integer'][-1]}, float {agree['float'][-1]}", flush=True)
    for name, ns in agree.items():
        print(f"{name} one-token kernels: {statistics.mean(ns):.1f} tokens agree on average "
              f"({ns}, of {a.tokens})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
