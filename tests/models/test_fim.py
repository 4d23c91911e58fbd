"""FIM formats: detection per family from vocabularies, and the exact prompts each family gets."""

from __future__ import annotations

import pytest

from models.fim import FimFormat, detect_fim, render_prefix_only

# Small synthetic vocabularies: each family's FIM tokens among ordinary BPE/SentencePiece pieces.
COMMON = ["a", "b", "def", "Ġreturn", "Ċ", "▁the", "PREFIX", "<unk>"]
QWEN = COMMON + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
STARCODER2 = COMMON + ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                       "<repo_name>", "<file_sep>", "<issue_start>"]
STARCODER1 = COMMON + ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                       "<filename>", "<gh_stars>", "<reponame>"]
CODELLAMA = COMMON + ["<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
DEEPSEEK = COMMON + ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
                     "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>"]
CODESTRAL = COMMON + ["<s>", "</s>", "[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"]
# SmolLM2-135M's special tokens, read from the bundled GGUF: StarCoder's repo-level ones, no FIM.
SMOLLM2 = COMMON + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                    "<filename>", "<gh_stars>", "<issue_start>", "<jupyter_code>", "<empty_output>"]

FILES = [("src/util.py", "def helper():\n    return 1\n"), ("src/const.py", "LIMIT = 3")]
PREFIX = "def total(xs):\n    "
SUFFIX = "\n    return s\n"


def test_detects_qwen() -> None:
    """Qwen2.5-Coder's tokens give the qwen format with repo-level tokens and its stop strings."""
    assert detect_fim(QWEN) == FimFormat(
        family="qwen", prefix="<|fim_prefix|>", suffix="<|fim_suffix|>", middle="<|fim_middle|>",
        repo_name="<|repo_name|>", file_sep="<|file_sep|>",
        stop=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|repo_name|>"),
    )


def test_detects_starcoder2() -> None:
    """StarCoder2's tokens give the starcoder format with <repo_name> and <file_sep>."""
    fim = detect_fim(STARCODER2)
    assert fim is not None and (fim.family, fim.prefix, fim.suffix, fim.middle) == (
        "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    assert (fim.repo_name, fim.file_sep, fim.stop) == ("<repo_name>", "<file_sep>", ("<|endoftext|>", "<file_sep>"))


def test_detects_starcoder1_without_file_separator() -> None:
    """StarCoder 1 has <reponame> but no <file_sep>, so it gets no file separator and one stop."""
    fim = detect_fim(STARCODER1)
    assert fim is not None and fim.family == "starcoder"
    assert (fim.repo_name, fim.file_sep, fim.stop) == ("<reponame>", None, ("<|endoftext|>",))


def test_detects_codellama_from_sentencepiece_tokens() -> None:
    """CodeLlama's vocab stores '▁<PRE>' etc.; the format writes the markers without the ▁."""
    assert detect_fim(CODELLAMA) == FimFormat(family="codellama", prefix="<PRE>", suffix="<SUF>", middle="<MID>",
                                              stop=("<EOT>",))


def test_detects_deepseek() -> None:
    """DeepSeek-Coder's full-width-bar tokens give the deepseek format, stopping at end of sentence and EOT."""
    assert detect_fim(DEEPSEEK) == FimFormat(
        family="deepseek", prefix="<｜fim▁begin｜>", suffix="<｜fim▁hole｜>", middle="<｜fim▁end｜>",
        stop=("<｜end▁of▁sentence｜>", "<|EOT|>"),
    )


def test_detects_codestral_as_suffix_first() -> None:
    """Codestral's [PREFIX]/[SUFFIX]/[MIDDLE] give a suffix-first format."""
    assert detect_fim(CODESTRAL) == FimFormat(family="codestral", prefix="[PREFIX]", suffix="[SUFFIX]",
                                              middle="[MIDDLE]", stop=("</s>",), suffix_first=True)


@pytest.mark.parametrize("vocab", [COMMON, SMOLLM2, QWEN[:-6]], ids=["plain", "smollm2", "qwen-without-fim"])
def test_no_fim_tokens_gives_none(vocab: list[str]) -> None:
    """A vocab without a family's three FIM tokens (SmolLM2's included) has no FIM format."""
    assert detect_fim(vocab) is None


def test_most_specific_family_wins() -> None:
    """A vocab holding two families' FIM tokens goes to the one with more of its tokens present."""
    fim = detect_fim(set(QWEN) | {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"})
    assert fim is not None and fim.family == "qwen"
    fim = detect_fim(set(STARCODER2) | {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"})
    assert fim is not None and fim.family == "starcoder"


def test_qwen_plain_prompt() -> None:
    """Without context Qwen's prompt is prefix, suffix, middle."""
    fim = detect_fim(QWEN)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX) == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"


def test_qwen_repo_level_prompt_with_two_files() -> None:
    """Qwen's repo-level prompt names the repo, then each file after <|file_sep|>, then the current file."""
    fim = detect_fim(QWEN)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX, files=FILES, repo="shop", path="src/cart.py") == (
        "<|repo_name|>shop\n"
        "<|file_sep|>src/util.py\ndef helper():\n    return 1\n"
        "<|file_sep|>src/const.py\nLIMIT = 3\n"
        "<|file_sep|>src/cart.py\n"
        "<|fim_prefix|>def total(xs):\n    <|fim_suffix|>\n    return s\n<|fim_middle|>"
    )


def test_starcoder2_repo_level_prompt() -> None:
    """StarCoder2 follows its training layout: no newline after the repo, current path inside the prefix."""
    fim = detect_fim(STARCODER2)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX, files=FILES, repo="shop", path="src/cart.py") == (
        "<repo_name>shop"
        "<file_sep>src/util.py\ndef helper():\n    return 1\n"
        "<file_sep>src/const.py\nLIMIT = 3"
        "<file_sep><fim_prefix>src/cart.py\ndef total(xs):\n    <fim_suffix>\n    return s\n<fim_middle>"
    )


def test_starcoder1_puts_context_files_as_plain_blocks() -> None:
    """Without <file_sep>, context files are path-line blocks before the FIM tokens; the repo is not written."""
    fim = detect_fim(STARCODER1)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX, files=FILES[:1], repo="shop", path="src/cart.py") == (
        "src/util.py\ndef helper():\n    return 1\n\n"
        "src/cart.py\n"
        "<fim_prefix>def total(xs):\n    <fim_suffix>\n    return s\n<fim_middle>"
    )


def test_codellama_prompt() -> None:
    """CodeLlama's prompt is '<PRE> {prefix} <SUF>{suffix} <MID>', context files as plain blocks first."""
    fim = detect_fim(CODELLAMA)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX) == "<PRE> def total(xs):\n     <SUF>\n    return s\n <MID>"
    assert fim.render("x = ", "", files=FILES, path="src/cart.py") == (
        "src/util.py\ndef helper():\n    return 1\n\n"
        "src/const.py\nLIMIT = 3\n\n"
        "src/cart.py\n"
        "<PRE> x =  <SUF> <MID>"
    )


def test_deepseek_prompt() -> None:
    """DeepSeek-Coder's prompt is begin, prefix, hole, suffix, end."""
    fim = detect_fim(DEEPSEEK)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX) == (
        "<｜fim▁begin｜>def total(xs):\n    <｜fim▁hole｜>\n    return s\n<｜fim▁end｜>"
    )


def test_codestral_prompt_puts_suffix_first() -> None:
    """Codestral's prompt is '[SUFFIX]{suffix}[PREFIX] {prefix}' and the model writes the middle next."""
    fim = detect_fim(CODESTRAL)
    assert fim is not None
    assert fim.render(PREFIX, SUFFIX) == "[SUFFIX]\n    return s\n[PREFIX] def total(xs):\n    "
    assert fim.render("x = ", "", files=FILES[1:]) == "src/const.py\nLIMIT = 3\n\n[SUFFIX][PREFIX] x = "


def test_prefix_only_prompt() -> None:
    """A model without FIM gets the context blocks, the current path line, then the prefix."""
    assert render_prefix_only(PREFIX) == PREFIX
    assert render_prefix_only(PREFIX, files=FILES[1:], path="src/cart.py") == (
        "src/const.py\nLIMIT = 3\n\nsrc/cart.py\ndef total(xs):\n    "
    )
