"""The `assistant` command as a person runs it: real models, real subprocesses, isolated home."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUESTION = "Write a Python function that returns the square of a number."
_QWEN = ("Here's a simple Python function to calculate the square of a number:\n\n```python\n"
         'def square(number):\n    """\n    Calculate the square of a given number.\n\n')
_SMOLLM2 = ("```python\ndef square_number(num):\n    return num ** 2\n```\n\n"
            "This function uses the built-in `**` operator to calculate the square of a number.\n")
#: (model, backend) -> the answer; the engines' last bits differ, and so does Qwen's word for the
#: docstring's section
GOLDEN = {
    ("qwen2.5-coder-0.5b", "llama"): _QWEN + "    Parameters:\n    number (int):\n",
    ("qwen2.5-coder-0.5b", "native"): _QWEN + "    Args:\n    number (int):\n",
    ("smollm2-135m", "llama"): _SMOLLM2,
    ("smollm2-135m", "native"): _SMOLLM2,
}


def _auto_backend() -> str:
    """What `--backend auto` picks for the bundled (dense) models on this machine."""
    from engine.int8 import VNNI
    from engine.matmul import INT8
    from engine.native import cuda_present

    return "native" if INT8 and VNNI and not cuda_present() else "llama"


def run(cli_env: dict[str, str], *args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "assistant.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, env={**cli_env, **(env or {})},
        cwd=Path(__file__).parents[2],
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("assistant: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0]


@pytest.mark.parametrize(("model", "backend"), [(m, b) for m, b in sorted(GOLDEN)] + [(m, "auto") for m, _ in sorted(GOLDEN)[::2]])
def test_golden_answer_at_temperature_zero(cli_env, model: str, backend: str, qwen_path, smollm2_path) -> None:
    """Each bundled model gives its fixed answer to a fixed prompt at temperature 0 on each engine
    (and on `auto`, the engine it picks here), on stdout only."""
    from engine.int8 import AVAILABLE

    if backend == "native" and not AVAILABLE:
        pytest.skip("the native golden answers are the integer kernels' (AVX2 or AVX-512 VNNI), which this CPU lacks")
    proc = run(cli_env, "chat", "--model", model, "--backend", backend, "--threads", "2", "--temperature", "0",
               "--max-tokens", "40", QUESTION)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == GOLDEN[model, _auto_backend() if backend == "auto" else backend]
    assert proc.stderr == ""


def test_native_chat_keeps_the_repacked_weights_unless_told_not_to(cli_env, smollm2_path, tmp_path) -> None:
    """The native engine writes a model's repacked weights under the user cache dir (a later start
    maps them: tests/engine/test_packcache.py); `packed_weights = false` keeps none. The answer is
    the same either way."""
    from engine.int8 import AVAILABLE

    if not AVAILABLE:
        pytest.skip("the native golden answers are the integer kernels' (AVX2 or AVX-512 VNNI), which this CPU lacks")
    args = ("chat", "--model", "smollm2-135m", "--backend", "native", "--threads", "2", "--temperature", "0",
            "--max-tokens", "40", QUESTION)
    cache = tmp_path / "cache"
    off = run(cli_env, *args, env={"XDG_CACHE_HOME": str(cache), "ASSISTANT_PACKED_WEIGHTS": "false"})
    assert off.returncode == 0 and off.stdout == GOLDEN["smollm2-135m", "native"], off.stderr
    assert not (cache / "assistant" / "packed").exists()
    on = run(cli_env, *args, env={"XDG_CACHE_HOME": str(cache)})
    assert on.returncode == 0 and on.stdout == GOLDEN["smollm2-135m", "native"], on.stderr
    (kept,) = (cache / "assistant" / "packed").iterdir()
    assert kept.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and kept.stat().st_size > 50 << 20


def test_chat_reads_stdin(cli_env, smollm2_path) -> None:
    """`assistant chat -` takes the message from standard input."""
    proc = run(cli_env, "chat", "--model", "smollm2-135m", "--threads", "2", "--temperature", "0",
               "--max-tokens", "40", "-", stdin=QUESTION)
    assert proc.returncode == 0 and proc.stdout == GOLDEN["smollm2-135m", _auto_backend()]


def test_complete_fills_the_middle(cli_env, qwen_path, tmp_path: Path) -> None:
    """`assistant complete FILE:LINE:COL` prints the body of the function at the cursor."""
    src = tmp_path / "words.py"
    src.write_text("def read_lines(path):\n    with open(path) as f:\n        return f.read().splitlines()\n\n\n"
                   "def count_lines(path):\n    \n")
    proc = run(cli_env, "complete", "--threads", "2", f"{src}:7:5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "with open(path) as f:\n        return len(f.readlines())\n"


def test_models_info_says_which_backend_and_why(cli_env, qwen_path, smollm2_path) -> None:
    """`models info --json` reports architecture, quant types, formats and the chosen backend."""
    qwen = json.loads(run(cli_env, "models", "info", "--json").stdout)
    assert qwen["architecture"] == "qwen2" and qwen["fim"] == "qwen" and qwen["vocab_size"] == 151936
    assert qwen["quant_types"]["Q5_0"] > 0 and qwen["context_length"] == 32768
    from engine.int8 import VNNI
    from engine.matmul import INT8
    from engine.native import cuda_present

    # auto: the native engine where it was measured faster (dense, AVX-512 VNNI, no GPU), else llama.cpp
    assert qwen["backend"] == ("native" if INT8 and VNNI and not cuda_present() else "llama")
    assert "auto" in qwen["backend_reason"]
    small = json.loads(run(cli_env, "models", "info", "smollm2-135m", "--json").stdout)
    assert small["architecture"] == "llama" and small["fim"] is None and small["quant_types"]["Q4_1"] == 210


def test_models_list_and_verify(cli_env, qwen_path, smollm2_path) -> None:
    """`models list` shows both bundled models ready; `models verify` re-hashes them and says ok."""
    listing = run(cli_env, "models", "list").stdout
    assert "* qwen2.5-coder-0.5b" in listing and "smollm2-135m" in listing and "ready" in listing
    proc = run(cli_env, "models", "verify")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("ok ") == 2


def test_config_show_names_the_files(cli_env) -> None:
    """`config show` prints where settings and logs live, and every setting with its value."""
    out = run(cli_env, "config", "show").stdout
    assert "config.toml" in out and "assistant.log" in out and 'model = "qwen2.5-coder-0.5b"' in out


def test_unknown_model(cli_env) -> None:
    """An unknown model name is one line naming the known ones."""
    assert_clean_error(run(cli_env, "chat", "--model", "nope", "hi"), "unknown model 'nope'", "smollm2-135m")


def test_truncated_model_file(cli_env, smollm2_path, tmp_path: Path) -> None:
    """A truncated GGUF file is rejected by the strict reader with the file and the field named."""
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(smollm2_path.read_bytes()[: 50_000_000])
    assert_clean_error(run(cli_env, "chat", "--model", str(bad), "hi"), "cut.gguf", "past the file's end")


def test_not_a_file(cli_env, tmp_path: Path) -> None:
    """A directory given as the model is refused in one line."""
    assert_clean_error(run(cli_env, "chat", "--model", str(tmp_path), "hi"), "is a directory")


def test_bad_settings_file(cli_env, tmp_path: Path) -> None:
    """A bad value in the settings file names the key and the expected type."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('threads = "many"\n')
    proc = run(cli_env, "chat", "hi", env={"ASSISTANT_CONFIG": str(cfg)})
    assert_clean_error(proc, "setting 'threads' = 'many'", "valid integer", str(cfg))


def test_prompt_longer_than_the_context_is_said(cli_env, smollm2_path) -> None:
    """A prompt over the context is refused with both sizes, not silently cut."""
    proc = run(cli_env, "chat", "--model", "smollm2-135m", "--context-length", "256", "-", stdin="word " * 400)
    assert_clean_error(proc, "tokens but the context holds 256")


def test_ctrl_c_mid_answer_keeps_what_was_said(cli_env, smollm2_path) -> None:
    """Ctrl-C while streaming exits 130 with one line; the text already streamed stays on stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "chat", "--model", "smollm2-135m", "--threads", "2",
         "--max-tokens", "4000", "--temperature", "0", "Tell me a very long story about a robot."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, cwd=Path(__file__).parents[2],
    )
    first = proc.stdout.read(20)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(first) == 20 and b"Traceback" not in err
    assert err.decode().strip() == "assistant: interrupted"


def test_usage_errors_are_one_line(cli_env, tmp_path: Path) -> None:
    """A bad FILE:LINE:COL or an empty message is a one-line error, not a traceback."""
    assert_clean_error(run(cli_env, "complete", "nowhere"), "is not FILE:LINE:COL")
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    assert_clean_error(run(cli_env, "complete", f"{f}:9:1"), "line 9 is outside the file")
    assert_clean_error(run(cli_env, "chat", "   "), "nothing to say")


def test_version(cli_env) -> None:
    """`--version` prints the version."""
    assert run(cli_env, "--version").stdout.startswith("assistant 0.1.0")


def test_bench_reports_both_engines_and_the_ratio(cli_env, smollm2_path) -> None:
    """`assistant bench --json` measures our backend and llama.cpp's raw loop in one run, with ratios."""
    proc = run(cli_env, "bench", "--model", "smollm2-135m", "--threads", "2", "--prompt-tokens", "32",
               "--gen-tokens", "8", "--runs", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for side in ("ours", "reference"):
        assert report[side]["decode_tok_s"] > 0 and report[side]["prompt_tok_s"] > 0
        assert report[side]["peak_rss_mb"] > 50 and report[side]["ttft_s"] > 0
    assert report["ratio"]["decode"] == report["ours"]["decode_tok_s"] / report["reference"]["decode_tok_s"]


def test_bench_times_a_file_switch(cli_env, smollm2_path) -> None:
    """The `switch` workload (prompts A, B, then A again) answers A the second time from the kept
    KV blocks on the native backend, while llama.cpp's one sequence evaluates it again."""
    proc = run(cli_env, "bench", "--model", "smollm2-135m", "--backend", "native", "--threads", "2",
               "--prompt-tokens", "32", "--gen-tokens", "4", "--runs", "1", "--workloads", "switch", "--json")
    assert proc.returncode == 0, proc.stderr
    w = json.loads(proc.stdout)["workloads"]["file switch: A, B, then A again"]
    assert w["ours"]["return_reused_tokens"] == 1008  # every whole block of the 1024 but the last token's
    assert w["reference"]["return_reused_tokens"] <= 1  # the BOS token
    assert w["speedup"] == w["reference"]["return_s"] / w["ours"]["return_s"]


def test_bench_names_an_unknown_workload(cli_env) -> None:
    """A workload `assistant bench` does not know is a one-line usage error naming the known ones."""
    assert_clean_error(run(cli_env, "bench", "--model", "smollm2-135m", "--workloads", "decode,warp-speed"),
                       "unknown workload 'warp-speed' (choose from decode, prefill-2048, batch-8, switch)")
