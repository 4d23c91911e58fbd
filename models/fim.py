"""Fill-in-the-middle prompt formats, detected from a model's vocabulary, one per model family.

`detect_fim(vocab)` looks for each family's FIM tokens among the token strings of a GGUF's
`tokenizer.ggml.tokens` (the role of each string follows llama.cpp's FIM token detection in
`llama-vocab.cpp`) and returns the `FimFormat` of the family that matches the most of its tokens,
or None when the model has no FIM tokens (SmolLM2, for one, has none, only StarCoder's repo-level
tokens). `FimFormat.render` builds the prompt text, special tokens written as text for a
tokenizer that parses them: Qwen2.5-Coder and StarCoder2 get their trained repo-level layouts
for context files; the other families (and StarCoder without `<file_sep>`) get each context file
as a plain block, a line with its path then its text then a blank line, followed by the current
file's path line, all before the FIM tokens, as llama.cpp's infill does. CodeLlama and Codestral
use SentencePiece vocabularies, so their prefix is preceded by the space the tokenizer's dummy
prefix would add (`<PRE> {prefix} <SUF>{suffix} <MID>`, Mistral's `[SUFFIX]{suffix}[PREFIX] {prefix}`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FimFormat:
    """How one model family writes a fill-in-the-middle prompt, and the strings that end a fill."""

    family: str
    prefix: str
    """The prefix marker as written in prompt text (CodeLlama's vocab stores it as '▁<PRE>')."""
    suffix: str
    middle: str
    """The middle marker; Codestral's prompt ends with its prefix and never writes [MIDDLE]."""
    repo_name: str | None = None
    """Token that introduces the repository name: Qwen '<|repo_name|>', StarCoder '<repo_name>'."""
    file_sep: str | None = None
    """Token that starts each file of repo-level context: Qwen '<|file_sep|>', StarCoder '<file_sep>'."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion: the family's defaults, plus its optional ones the vocab has."""
    suffix_first: bool = False
    """Codestral puts [SUFFIX] before [PREFIX]."""

    def render(self, prefix: str, suffix: str, *, files: Sequence[tuple[str, str]] = (),
               repo: str | None = None, path: str | None = None) -> str:
        """The prompt for completing between `prefix` and `suffix` of the file at `path`, after the
        context `files` ((path, text) pairs) and, where the family has a token for it, `repo`."""
        if self.file_sep is None:
            return _plain_context(files, path) + self._fim(prefix, suffix)
        if self.family == "starcoder":
            # StarCoder2's training layout: <repo_name>r<file_sep>p\ntext<file_sep><fim_prefix>p\n...
            head = f"{self.repo_name}{repo}" if repo is not None and self.repo_name else ""
            head += "".join(f"{self.file_sep}{p}\n{text}" for p, text in files)
            if files or repo is not None or path is not None:
                head += self.file_sep
            return head + self._fim(prefix if path is None else f"{path}\n{prefix}", suffix)
        # Qwen2.5-Coder's layout: <|repo_name|>r\n<|file_sep|>p\ntext\n...<|file_sep|>p\n<|fim_prefix|>...
        head = f"{self.repo_name}{repo}\n" if repo is not None and self.repo_name else ""
        head += "".join(f"{self.file_sep}{p}\n{_ends_line(text)}" for p, text in files)
        if path is not None:
            head += f"{self.file_sep}{path}\n"
        elif files:
            head += self.file_sep
        return head + self._fim(prefix, suffix)

    def _fim(self, prefix: str, suffix: str) -> str:
        if self.family == "codellama":
            return f"{self.prefix} {prefix} {self.suffix}{suffix} {self.middle}"
        if self.suffix_first:
            return f"{self.suffix}{suffix}{self.prefix} {prefix}"
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"


@dataclass(frozen=True)
class _Family:
    """One family's FIM tokens as stored in a vocabulary, and what the prompt writes for them."""

    name: str
    vocab: tuple[str, str, str]  # prefix, suffix, middle tokens as the vocab stores them
    markers: tuple[str, str, str]  # the same as written in prompt text
    repo_name: tuple[str, ...] = ()  # candidates, first found wins
    file_sep: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()  # other tokens of the family: more present, more specific a match
    stop: tuple[str, ...] = ()  # always stop strings
    stop_if_present: tuple[str, ...] = ()
    suffix_first: bool = False


_QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
_STARCODER = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
_SANTACODER = ("<fim-prefix>", "<fim-suffix>", "<fim-middle>")
_CODELLAMA = ("<PRE>", "<SUF>", "<MID>")
_DEEPSEEK = ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
_CODESTRAL = ("[PREFIX]", "[SUFFIX]", "[MIDDLE]")

# Order breaks ties between equally specific matches.
_FAMILIES = (
    _Family("qwen", _QWEN, _QWEN, repo_name=("<|repo_name|>",), file_sep=("<|file_sep|>",),
            extras=("<|fim_pad|>",), stop=("<|endoftext|>",),
            stop_if_present=("<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|repo_name|>")),
    _Family("deepseek", _DEEPSEEK, _DEEPSEEK, stop=("<｜end▁of▁sentence｜>",), stop_if_present=("<|EOT|>",)),
    _Family("codestral", _CODESTRAL, _CODESTRAL, stop=("</s>",), suffix_first=True),
    _Family("codellama", ("▁<PRE>", "▁<SUF>", "▁<MID>"), _CODELLAMA, extras=("▁<EOT>",), stop=("<EOT>",)),
    _Family("codellama", _CODELLAMA, _CODELLAMA, extras=("<EOT>",), stop=("<EOT>",)),
    _Family("starcoder", _STARCODER, _STARCODER, repo_name=("<repo_name>", "<reponame>"), file_sep=("<file_sep>",),
            extras=("<fim_pad>", "<filename>"), stop=("<|endoftext|>",), stop_if_present=("<file_sep>",)),
    _Family("starcoder", _SANTACODER, _SANTACODER, extras=("<fim-pad>",), stop=("<|endoftext|>",)),
)


def detect_fim(vocab: Iterable[str]) -> FimFormat | None:
    """The FIM format of the family whose prefix, suffix and middle tokens are all in `vocab` and
    that has the most of its other tokens there too; None when no family's three are present."""
    tokens = vocab if isinstance(vocab, (set, frozenset)) else set(vocab)
    best: _Family | None = None
    best_score = 0
    for family in _FAMILIES:
        if not all(t in tokens for t in family.vocab):
            continue
        score = sum(t in tokens for t in (*family.repo_name, *family.file_sep, *family.extras))
        if best is None or score > best_score:
            best, best_score = family, score
    if best is None:
        return None
    present = [t for t in best.stop_if_present if t in tokens]
    return FimFormat(
        family=best.name,
        prefix=best.markers[0],
        suffix=best.markers[1],
        middle=best.markers[2],
        repo_name=next((t for t in best.repo_name if t in tokens), None),
        file_sep=next((t for t in best.file_sep if t in tokens), None),
        stop=tuple(dict.fromkeys((*best.stop, *present))),
        suffix_first=best.suffix_first,
    )


def render_prefix_only(prefix: str, *, files: Sequence[tuple[str, str]] = (), path: str | None = None) -> str:
    """The completion prompt for a model without FIM tokens: the context files as plain blocks,
    the current file's path line, then the text before the cursor (the suffix cannot be shown)."""
    return _plain_context(files, path) + prefix


def _plain_context(files: Sequence[tuple[str, str]], path: str | None) -> str:
    """Context files as '{path}\\n{text}\\n' blocks, each text ending its last line, then the
    current file's path line; no comment syntax, since the files' languages are not known here."""
    blocks = "".join(f"{p}\n{_ends_line(text)}\n" for p, text in files)
    return blocks + (f"{path}\n" if path is not None else "")


def _ends_line(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"
