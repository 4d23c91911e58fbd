"""Prompt assembly: chat conversations through the model's template, code through its FIM format.

Both end as token ids for a backend. The chat template may write the BOS token itself; then
the tokenizer must not add a second one.
"""

from __future__ import annotations

from collections.abc import Sequence

from assistant.loader import LoadedModel
from models.fim import render_prefix_only


def encode_text(model: LoadedModel, text: str) -> list[int]:
    """Tokenize a fully formatted prompt, parsing its special tokens, with BOS exactly once."""
    starts_with_bos = bool(model.bos_text) and text.startswith(model.bos_text)
    return model.backend.tokenize(text, add_special=not starts_with_bos, parse_special=True)


def chat_prompt(
    model: LoadedModel,
    messages: Sequence[dict],
    *,
    tools: Sequence[dict] | None = None,
) -> list[int]:
    """The tokens of a conversation ready for the assistant's next turn."""
    text = model.chat_template.render(list(messages), tools=list(tools) if tools else None)
    return encode_text(model, text)


def fim_prompt(
    model: LoadedModel,
    prefix: str,
    suffix: str,
    *,
    path: str | None = None,
    files: Sequence[tuple[str, str]] = (),
) -> tuple[list[int], tuple[str, ...]]:
    """Tokens for a completion at the cursor, and the strings that end it.

    A model without FIM tokens sees only the prefix (and any context files before it).
    """
    if model.fim is None:
        return encode_text(model, render_prefix_only(prefix, files=files, path=path)), ()
    text = model.fim.render(prefix, suffix, files=files, path=path)
    return encode_text(model, text), model.fim.stop
