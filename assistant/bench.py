"""`assistant bench`: our backend next to llama.cpp on the same file, same threads, same prompt.

Each measurement runs in a fresh process (so peak RSS is that engine's own and no cache is
shared), our backend and the reference alternate, and the median of the runs is reported.
The prompt is real code: the start of a standard-library module, cut to the asked length.
Before it each engine evaluates three tokens and forgets them (ours does that as it loads, so
that Numba's kernels are loaded; llama.cpp's first evaluation maps its weights in), so the
prompt figures are an engine's steady speed; `--cold-start` times a first token from process
start, loading included.
The reference is llama-cpp-python's `Llama.eval` called one token at a time: pure llama.cpp
decoding with no sampling, the ceiling for any backend built on llama.cpp.

Workloads: `decode` (a prompt, then `gen_tokens` decoded; its prompt speed is the prefill
figure at that length), `prefill-2048` (a 2048-token prompt), `batch-8` (8 sequences
decoded together, aggregate decode tokens/s against our own single stream; the native
backend only) and `switch` (two 1024-token prompts A, B, then A again, as an editor moving
between two files: the time to answer A the second time, against llama-cpp-python with its
one sequence of KV). Around them the report puts what bounds decode on
this machine: the read bandwidth measured in the same run and the fraction of it each engine
reaches (bytes of weights one decoded token reads × tokens/s ÷ bandwidth), peak resident
memory against the file plus the KV cache, and with `--cold-start` the time to a first token
with Numba's on-disk cache and the native engine's kept packed weights (engine.packcache) empty,
then both warm, then the weights alone packed again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from assistant.settings import Settings

WORKLOADS = ("decode", "prefill-2048", "batch-8", "switch")


def prompt_text() -> str:
    """Tens of thousands of tokens of real Python source (the standard library's `argparse`)."""
    import argparse as mod

    return Path(mod.__file__).read_text(encoding="utf-8")


def prompt_tokens(path: str, tokenize: Any, n: int) -> list[int]:
    """The first n tokens of `prompt_text()`; for a file without a tokenizer (token ids only, as
    the MoE benchmark's synthetic files), its bytes taken as ids below the vocabulary size."""
    from models.gguf import read_gguf

    with read_gguf(path) as g:
        if g.get("tokenizer.ggml.model") == "no_vocab":
            n_vocab = int(g.get(f"{g.architecture}.vocab_size", 256))  # type: ignore[call-overload]
            return [1 + b % (n_vocab - 1) for b in prompt_text().encode()[:n]]
    return tokenize(prompt_text())[:n]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _since_process_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


# --- workers (run in their own process) ------------------------------------------------------


def _worker_ours(a: argparse.Namespace) -> dict[str, Any]:
    from assistant.loader import load_model
    from engine.backend import SamplingParams

    settings = Settings(model=a.path, backend=a.backend, threads=a.threads, context_length=a.n_ctx)
    t0 = time.perf_counter()
    model = load_model(settings)
    load_s = time.perf_counter() - t0
    prompt = prompt_tokens(a.path, lambda t: model.backend.tokenize(t, add_special=True, parse_special=False),
                           a.prompt_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=a.gen_tokens)
    timings = None
    started = _since_process_start()
    for ev in model.backend.generate(prompt, params, ignore_eos=True):
        timings = ev.timings or timings
    assert timings is not None and timings.generated_tokens == a.gen_tokens, timings
    out = {
        "load_s": load_s,
        "prompt_tok_s": timings.prompt_tok_s,
        "decode_tok_s": timings.decode_tok_s,
        "ttft_s": timings.ttft_s,
        "start_to_first_token_s": started + timings.ttft_s,
        "peak_rss_mb": _peak_rss_mb(),
    }
    backend = model.backend
    if hasattr(backend, "decode_bytes_per_token"):
        out["weight_bytes_per_token"] = backend.decode_bytes_per_token()
        out["kv_bytes"] = backend.state.kv_bytes
    return out


def _worker_batch(a: argparse.Namespace) -> dict[str, Any]:
    """`sequences` prompts (consecutive slices of the prompt text) decoded together by the native
    engine: aggregate tokens/s of the decode phase (after every sequence's first token)."""
    from engine.backend import SamplingParams
    from engine.native import NativeBackend

    backend = NativeBackend(a.path, n_ctx=a.n_ctx, n_threads=a.threads, n_slots=a.sequences)
    backend.warm_up()  # as engine.select opens it for the daemon
    text = prompt_tokens(a.path, lambda t: backend.tokenize(t, add_special=False, parse_special=False),
                         a.prompt_tokens * a.sequences)
    prompts = [text[i * a.prompt_tokens:(i + 1) * a.prompt_tokens] for i in range(a.sequences)]
    params = SamplingParams(temperature=0.0, max_tokens=a.gen_tokens)
    generated, after, started, t_decode = 0, 0, set(), 0.0
    t0 = time.perf_counter()
    for i, ev in backend.generate_batch([(p, params) for p in prompts], ignore_eos=True):
        if ev.token is None:
            continue
        generated += 1
        if len(started) == a.sequences:
            after += 1  # decoded while every sequence runs
        started.add(i)
        if len(started) == a.sequences and not t_decode:
            t_decode = time.perf_counter()
    t_end = time.perf_counter()
    assert generated == a.sequences * a.gen_tokens, generated
    return {
        "sequences": a.sequences,
        "prefill_s": t_decode - t0,
        "aggregate_decode_tok_s": after / (t_end - t_decode),
        "peak_rss_mb": _peak_rss_mb(),
        "kv_bytes": backend.state.kv_bytes,
    }


def _worker_switch(a: argparse.Namespace) -> dict[str, Any]:
    """An editor switching between two files: prompt A, then B, then A again, each answered with one
    token; the seconds each takes. Ours keeps A's KV blocks while B runs (engine.kvpool); the
    reference is llama-cpp-python with its own prompt cache (`LlamaRAMCache`, the state of each
    completion saved, the longest matching one loaded back)."""
    if a.side == "ours":
        from assistant.loader import load_model
        from engine.backend import SamplingParams

        model = load_model(Settings(model=a.path, backend=a.backend, threads=a.threads, context_length=a.n_ctx))
        params = SamplingParams(temperature=0.0, max_tokens=1)
        tokenize = lambda t: model.backend.tokenize(t, add_special=True, parse_special=False)  # noqa: E731

        def answer(prompt: list[int]) -> int:
            *_, last = model.backend.generate(prompt, params, ignore_eos=True)
            return last.timings.reused_tokens
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=a.path, n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                              n_batch=512, n_ubatch=512, verbose=False)
        tokenize = lambda t: llm.tokenize(t.encode(), add_bos=True, special=False)  # noqa: E731

        def answer(prompt: list[int]) -> int:
            # one sequence of KV: what the prompt shares with the last one stays, the rest is evaluated
            held = list(llm.input_ids[:llm.n_tokens])
            n = 0
            while n < min(len(held), len(prompt) - 1) and held[n] == prompt[n]:
                n += 1
            llm.n_tokens = n
            llm.eval(prompt[n:])
            return n
    text = prompt_tokens(a.path, tokenize, 3 * a.prompt_tokens)
    first, second = text[:a.prompt_tokens], text[2 * a.prompt_tokens:]
    times, reused = [], 0
    for prompt in (first, second, first):
        t0 = time.perf_counter()
        reused = answer(prompt)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "other_s": times[1], "return_s": times[2], "return_reused_tokens": reused}


def _worker_reference(a: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.path, n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
        n_batch=512, n_ubatch=512, verbose=False,
    )
    load_s = time.perf_counter() - t0
    prompt = prompt_tokens(a.path, lambda t: llm.tokenize(t.encode(), add_bos=True, special=False), a.prompt_tokens)
    # three tokens evaluated and forgotten first, as our engine's warm_up does when it loads (its
    # first evaluation maps every weight in)
    llm.eval(prompt[:3])
    llm.n_tokens = 0
    started = _since_process_start()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for i in range(a.gen_tokens - 1):
        llm.eval([prompt[i % len(prompt)]])
    t2 = time.perf_counter()
    return {
        "load_s": load_s,
        "prompt_tok_s": len(prompt) / (t1 - t0),
        "decode_tok_s": (a.gen_tokens - 1) / (t2 - t1) if a.gen_tokens > 1 else 0.0,
        "ttft_s": t1 - t0,
        "start_to_first_token_s": started + (t1 - t0),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _worker_bandwidth(a: argparse.Namespace) -> dict[str, Any]:
    """Read bandwidth of this machine with `threads` threads: the best of a few passes over 1 GiB."""
    import numba
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def read_all(x: np.ndarray, sums: np.ndarray) -> None:
        for r in prange(x.shape[0]):
            row = x[r]
            acc = np.float32(0.0)
            for i in range(row.shape[0]):
                acc += row[i]
            sums[r] = acc

    numba.set_num_threads(max(1, min(a.threads, numba.config.NUMBA_NUM_THREADS)))
    x = np.ones((1 << 18, 1 << 10), np.float32)  # 1 GiB, rows of 4 KiB
    sums = np.zeros(x.shape[0], np.float32)
    read_all(x[:8], sums)
    best = min(_timed(read_all, x, sums) for _ in range(5))
    return {"read_gbs": x.nbytes / best / 1e9}


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=("ours", "reference", "bandwidth", "batch", "switch"))
    p.add_argument("--side", choices=("ours", "reference"), default="ours")
    p.add_argument("--path", default="")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--n-ctx", type=int, default=0)
    p.add_argument("--prompt-tokens", type=int, default=0)
    p.add_argument("--gen-tokens", type=int, default=0)
    p.add_argument("--sequences", type=int, default=8)
    a = p.parse_args(argv)
    worker = {"ours": _worker_ours, "reference": _worker_reference, "bandwidth": _worker_bandwidth,
              "batch": _worker_batch, "switch": _worker_switch}[a.engine]
    sys.stdout.write(json.dumps(worker(a)) + "\n")
    return 0


# --- the driver ----------------------------------------------------------------------------


def _run_worker(engine: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    from engine.backend import EngineError

    proc = subprocess.run(
        [sys.executable, "-m", "assistant.bench", engine, *args],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise EngineError(f"the {engine} benchmark run failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def reference_bytes_per_token(path: Path) -> int:
    """Bytes of weights llama.cpp reads to decode one token of the file at `path`: every matrix
    but the embedding (looked up, unless it is also the output), the routed experts in the
    proportion a token uses them."""
    from models.gguf import read_gguf

    with read_gguf(path) as g:
        arch = g.get("general.architecture", "")
        n_expert = int(g.get(f"{arch}.expert_count", 0) or 0)  # type: ignore[call-overload]
        n_used = int(g.get(f"{arch}.expert_used_count", 0) or 0)  # type: ignore[call-overload]
        tied = "output.weight" not in g.tensors
        total = 0
        for info in g.tensors.values():
            if len(info.shape) < 2 or (info.name == "token_embd.weight" and not tied):
                continue
            size = info.n_bytes
            if "_exps." in info.name and n_expert:
                size = size * n_used // n_expert
            total += size
        return total


def run_bench(
    settings: Settings,
    *,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    runs: int = 3,
    reference: bool = True,
    workloads: tuple[str, ...] = ("decode",),
    cold_start: bool = False,
) -> dict[str, Any]:
    """Measure `runs` times per workload, alternating our backend and the reference; report
    medians, ratios and what bounds decode on this machine."""
    from assistant.loader import default_threads, resolve_path
    from engine.select import choose_backend
    from models.gguf import read_gguf

    from engine.backend import EngineError

    if settings.backend == "remote":
        raise EngineError("assistant bench measures an engine in this process next to llama.cpp; it does not "
                          "run against a remote server (use --backend llama, native or auto)")
    path = resolve_path(settings)
    with read_gguf(path) as gguf:
        choice = choose_backend(gguf, settings.backend)
        file_bytes = gguf.file_size
    threads = settings.threads or default_threads()

    def common(prompt: int, gen: int) -> list[str]:
        n_ctx = max(settings.context_length, prompt + gen + 16)
        return ["--path", str(path), "--backend", choice.name, "--threads", str(threads), "--n-ctx", str(n_ctx),
                "--prompt-tokens", str(prompt), "--gen-tokens", str(gen)]

    def measure(prompt: int, gen: int) -> dict[str, Any]:
        ours, ref = [], []
        for _ in range(runs):
            ours.append(_run_worker("ours", common(prompt, gen)))
            if reference:
                ref.append(_run_worker("reference", common(prompt, gen)))
        row: dict[str, Any] = {"prompt_tokens": prompt, "gen_tokens": gen, "ours": _median(ours), "ours_runs": ours}
        if reference:
            row["reference"] = {"name": "llama.cpp raw eval loop (llama-cpp-python Llama.eval)", **_median(ref)}
            row["reference_runs"] = ref
        return row

    report: dict[str, Any] = {
        "model": settings.model,
        "path": str(path),
        "backend": choice.name,
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d"),
        "workloads": {},
    }
    # decode (and prefill at the prompt's length) is always measured: the headline figures
    decode = measure(prompt_tokens, gen_tokens)
    report.update(ours=decode["ours"], ours_runs=decode["ours_runs"])
    if reference:
        report.update(reference=decode["reference"], reference_runs=decode["reference_runs"])
        report["ratio"] = {
            "decode": decode["ours"]["decode_tok_s"] / decode["reference"]["decode_tok_s"],
            "prompt": decode["ours"]["prompt_tok_s"] / decode["reference"]["prompt_tok_s"],
        }
    report["workloads"][f"decode after {prompt_tokens}"] = _workload(decode, "decode_tok_s", reference)
    report["workloads"][f"prefill {prompt_tokens}"] = _workload(decode, "prompt_tok_s", reference)
    if "prefill-2048" in workloads:
        report["workloads"]["prefill 2048"] = _workload(measure(2048, 2), "prompt_tok_s", reference)
    if "batch-8" in workloads and choice.name != "native":
        report["workloads"]["8 sequences decoded together"] = {
            "skipped": f"the {choice.name} backend decodes one sequence at a time"
        }
    elif "batch-8" in workloads:
        rows = [_run_worker("batch", common(prompt_tokens, gen_tokens) + ["--sequences", "8"]) for _ in range(runs)]
        batch = _median(rows)
        single = decode["ours"]["decode_tok_s"]
        report["workloads"]["8 sequences decoded together"] = {
            "ours_tok_s": batch["aggregate_decode_tok_s"],
            "vs_our_single_stream": batch["aggregate_decode_tok_s"] / single,
            "peak_rss_mb": batch["peak_rss_mb"], "runs": rows,
        }

    if "switch" in workloads:
        rows = {"ours": [], "reference": []}
        for _ in range(runs):
            for side in ("ours", "reference") if reference else ("ours",):
                rows[side].append(_run_worker("switch", common(1024, 1) + ["--side", side]))
        w: dict[str, Any] = {"prompt_tokens": 1024, "ours": _median(rows["ours"])}
        if reference:
            w["reference"] = {"name": "llama.cpp, one sequence of KV, shared prefix kept", **_median(rows["reference"])}
            w["speedup"] = w["reference"]["return_s"] / w["ours"]["return_s"]
        report["workloads"]["file switch: A, B, then A again"] = w

    bandwidth = _run_worker("bandwidth", ["--threads", str(threads)])["read_gbs"]
    report["bandwidth"] = {"read_gbs": bandwidth}
    sides = [("ours", decode["ours"].get("weight_bytes_per_token"))]
    if reference:
        sides.append(("reference", reference_bytes_per_token(path)))
    for side, per_token in sides:
        if per_token:
            gbs = per_token * decode[side]["decode_tok_s"] / 1e9
            report["bandwidth"][side] = {"weight_bytes_per_token": per_token, "achieved_gbs": gbs,
                                         "fraction_of_bound": gbs / bandwidth}
    kv = decode["ours"].get("kv_bytes", 0)
    rss = decode["ours"]["peak_rss_mb"] * 2**20
    report["memory"] = {"file_bytes": file_bytes, "kv_bytes": kv, "ours_peak_rss_bytes": rss,
                        "ours_vs_file_plus_kv": rss / (file_bytes + kv)}
    if reference:
        report["memory"]["reference_peak_rss_bytes"] = decode["reference"]["peak_rss_mb"] * 2**20

    if cold_start:
        with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache, \
                tempfile.TemporaryDirectory(prefix="user-cache-cold-") as user_cache:
            # Numba's cache and the user cache dir (the packed weights the native engine keeps) empty
            env = {**os.environ, "NUMBA_CACHE_DIR": cache, "XDG_CACHE_HOME": user_cache}
            cold = _run_worker("ours", common(32, 2), env)  # compiles every kernel, packs and keeps the weights
            warm = _run_worker("ours", common(32, 2), env)  # both now full
            shutil.rmtree(Path(user_cache, "assistant", "packed"), ignore_errors=True)
            repack = _run_worker("ours", common(32, 2), env)  # a model not run before: compiled, not packed
        report["cold_start"] = {
            "first_token_cache_empty_s": cold["start_to_first_token_s"],
            "first_token_cache_warm_s": warm["start_to_first_token_s"],
            "first_token_repacking_s": repack["start_to_first_token_s"],
            "compile_s": cold["start_to_first_token_s"] - warm["start_to_first_token_s"],
        }
    return report


def _workload(row: dict[str, Any], key: str, reference: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"ours_tok_s": row["ours"][key]}
    if reference:
        out["reference_tok_s"] = row["reference"][key]
        out["ratio"] = row["ours"][key] / row["reference"][key]
    return out


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
    lines.append("  workloads:")
    for name, w in r["workloads"].items():
        if "skipped" in w:
            lines.append(f"    {name:32s} not measured: {w['skipped']}")
        elif "prompt_tokens" in w:
            o = w["ours"]
            line = (f"    {name:32s} {w['prompt_tokens']}-token prompts: ours A {o['first_s'] * 1000:.0f} ms, "
                    f"B {o['other_s'] * 1000:.0f} ms, A again {o['return_s'] * 1000:.0f} ms")
            if "reference" in w:
                x = w["reference"]
                line += (f"; llama.cpp A {x['first_s'] * 1000:.0f} ms, B {x['other_s'] * 1000:.0f} ms, A again "
                         f"{x['return_s'] * 1000:.0f} ms; A again {w['speedup']:.1f}x faster")
            lines.append(line)
        elif "vs_our_single_stream" in w:
            lines.append(f"    {name:32s} ours {w['ours_tok_s']:8.1f} tok/s aggregate   "
                         f"{w['vs_our_single_stream']:.2f}x our single stream (target 4x)")
        elif "ratio" in w:
            lines.append(f"    {name:32s} ours {w['ours_tok_s']:8.1f} tok/s   llama.cpp {w['reference_tok_s']:8.1f} tok/s"
                         f"   ratio {w['ratio']:.2f}")
        else:
            lines.append(f"    {name:32s} ours {w['ours_tok_s']:8.1f} tok/s")
    bw = r["bandwidth"]
    lines.append(f"  read bandwidth {bw['read_gbs']:.1f} GB/s; decode reaches "
                 + ", ".join(f"{side} {bw[side]['fraction_of_bound']:.0%} ({bw[side]['achieved_gbs']:.1f} GB/s over "
                             f"{bw[side]['weight_bytes_per_token'] / 1e6:.0f} MB of weights per token)"
                             for side in ("ours", "reference") if side in bw))
    m = r["memory"]
    lines.append(f"  memory: peak RSS {m['ours_peak_rss_bytes'] / 2**20:.0f} MB = {m['ours_vs_file_plus_kv']:.2f}x "
                 f"(file {m['file_bytes'] / 2**20:.0f} MB + KV cache {m['kv_bytes'] / 2**20:.0f} MB)")
    if "cold_start" in r:
        c = r["cold_start"]
        lines.append(f"  first token from process start: {c['first_token_cache_warm_s']:.1f} s with Numba's cache and the "
                     f"packed weights kept, {c['first_token_repacking_s']:.1f} s packing them (a model not run before), "
                     f"{c['first_token_cache_empty_s']:.1f} s with both empty (compiling {c['compile_s']:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
