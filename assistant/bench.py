"""`assistant bench`: prompt and decode speed of a backend next to llama.cpp's raw eval loop.

Each measurement runs in a fresh process (so peak RSS is that engine's own and no cache is
shared), our backend and the reference alternate, and the median of the runs is reported.
The prompt is real code: the start of a standard-library module, cut to the asked length.
The reference is llama-cpp-python's `Llama.eval` called one token at a time: pure llama.cpp
decoding with no sampling, the ceiling for any backend built on llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from assistant.settings import Settings


def prompt_text() -> str:
    """A few thousand tokens of real Python source (the standard library's `argparse`)."""
    import argparse as mod

    return Path(mod.__file__).read_text(encoding="utf-8")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- workers (run in their own process) ------------------------------------------------------


def _worker_ours(a: argparse.Namespace) -> dict[str, Any]:
    from assistant.loader import load_model
    from engine.backend import SamplingParams

    settings = Settings(model=a.path, backend=a.backend, threads=a.threads, context_length=a.n_ctx)
    t0 = time.perf_counter()
    model = load_model(settings)
    load_s = time.perf_counter() - t0
    prompt = model.backend.tokenize(prompt_text(), add_special=True, parse_special=False)[: a.prompt_tokens]
    params = SamplingParams(temperature=0.0, max_tokens=a.gen_tokens)
    timings = None
    for ev in model.backend.generate(prompt, params, ignore_eos=True):
        timings = ev.timings or timings
    assert timings is not None and timings.generated_tokens == a.gen_tokens, timings
    return {
        "load_s": load_s,
        "prompt_tok_s": timings.prompt_tok_s,
        "decode_tok_s": timings.decode_tok_s,
        "ttft_s": timings.ttft_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _worker_reference(a: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.path, n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
        n_batch=512, n_ubatch=512, verbose=False,
    )
    load_s = time.perf_counter() - t0
    prompt = llm.tokenize(prompt_text().encode(), add_bos=True, special=False)[: a.prompt_tokens]
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for i in range(a.gen_tokens - 1):
        llm.eval([prompt[i % len(prompt)]])
    t2 = time.perf_counter()
    return {
        "load_s": load_s,
        "prompt_tok_s": len(prompt) / (t1 - t0),
        "decode_tok_s": (a.gen_tokens - 1) / (t2 - t1),
        "ttft_s": t1 - t0,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=("ours", "reference"))
    p.add_argument("--path", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--prompt-tokens", type=int, required=True)
    p.add_argument("--gen-tokens", type=int, required=True)
    a = p.parse_args(argv)
    result = _worker_ours(a) if a.engine == "ours" else _worker_reference(a)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# --- the driver ----------------------------------------------------------------------------


def _run_worker(engine: str, common: list[str]) -> dict[str, Any]:
    from engine.backend import EngineError

    proc = subprocess.run(
        [sys.executable, "-m", "assistant.bench", engine, *common],
        capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise EngineError(f"the {engine} benchmark run failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def run_bench(
    settings: Settings,
    *,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    runs: int = 3,
    reference: bool = True,
) -> dict[str, Any]:
    """Measure `runs` times, alternating our backend and the reference; report medians and ratios."""
    from assistant.loader import default_threads, resolve_path
    from engine.select import choose_backend
    from models.gguf import read_gguf

    path = resolve_path(settings)
    with read_gguf(path) as gguf:
        choice = choose_backend(gguf, settings.backend)
    threads = settings.threads or default_threads()
    n_ctx = max(settings.context_length, prompt_tokens + gen_tokens + 16)
    common = ["--path", str(path), "--backend", choice.name, "--threads", str(threads), "--n-ctx", str(n_ctx),
              "--prompt-tokens", str(prompt_tokens), "--gen-tokens", str(gen_tokens)]
    ours, ref = [], []
    for _ in range(runs):
        ours.append(_run_worker("ours", common))
        if reference:
            ref.append(_run_worker("reference", common))
    report: dict[str, Any] = {
        "model": settings.model,
        "path": str(path),
        "backend": choice.name,
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "ours": _median(ours),
        "ours_runs": ours,
    }
    if reference:
        report["reference"] = {"name": "llama.cpp raw eval loop (llama-cpp-python Llama.eval)", **_median(ref)}
        report["reference_runs"] = ref
        report["ratio"] = {
            "decode": report["ours"]["decode_tok_s"] / report["reference"]["decode_tok_s"],
            "prompt": report["ours"]["prompt_tok_s"] / report["reference"]["prompt_tok_s"],
        }
    return report


def format_report(r: dict[str, Any]) -> str:
    o = r["ours"]
    lines = [
        f"model {r['model']} ({r['path']}), backend {r['backend']}, {r['threads']} threads, "
        f"{r['prompt_tokens']}-token prompt, {r['gen_tokens']} generated, median of {r['runs']} runs",
        f"  ours:      prompt {o['prompt_tok_s']:8.1f} tok/s   decode {o['decode_tok_s']:7.1f} tok/s   "
        f"first token {o['ttft_s'] * 1000:6.0f} ms   peak RSS {o['peak_rss_mb']:7.1f} MB   load {o['load_s']:.2f} s",
    ]
    if "reference" in r:
        x = r["reference"]
        lines.append(
            f"  reference: prompt {x['prompt_tok_s']:8.1f} tok/s   decode {x['decode_tok_s']:7.1f} tok/s   "
            f"first token {x['ttft_s'] * 1000:6.0f} ms   peak RSS {x['peak_rss_mb']:7.1f} MB   load {x['load_s']:.2f} s"
        )
        lines.append(f"  ratio ours/reference: decode {r['ratio']['decode']:.3f}, prompt {r['ratio']['prompt']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
