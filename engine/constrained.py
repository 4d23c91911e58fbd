"""Constrained decoding: a grammar decides which tokens may come next, and the logits of all the
others are set to -inf before the sampler sees them.

llguidance compiles a grammar (Lark, with JSON schemas embedded as `%json {...}`) against the
model's vocabulary and computes the next-token mask (one bit per token, 152k tokens for Qwen)
in tens of microseconds. A `GrammarConstraint` is lazy, like llama.cpp's tool-call grammars: the
model writes freely until its output ends with a trigger (Qwen's `<tool_call>` token), and from
there on every token must keep the text inside the grammar, up to the end of generation. A
backend honours a `TokenConstraint` passed as `SamplingParams.constraint`: `apply(logits)` right
before each sample, `accept(token)` right after it. A constraint holds state, so it serves one
`generate` call.

A backend that runs the model elsewhere (engine.remote) cannot mask logits itself: a
`GrammarConstraint` describes itself with `spec()` (its Lark text and trigger), which is all a
server holding the same vocabulary needs to build the same constraint, and such a backend says
whether its server takes one (`takes_constraints`). For such a backend no vocabulary is built
here at all (`masks_here`): a `Grammar` made without one is checked as far as that goes (its
syntax, its JSON schemas; the server checks the names of special tokens) and gives a
`GrammarText`, the description alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import llguidance
import numpy as np

from engine.backend import Backend, EngineError

log = logging.getLogger(__name__)

# llguidance marks special tokens (written `<name>` in a grammar) with a leading 0xFF byte.
_SPECIAL_MARK = b"\xff"


class ConstraintError(EngineError):
    """A grammar does not compile against the model's vocabulary."""


def supports_constraints(backend: Backend) -> bool:
    """Whether `backend` honours `SamplingParams.constraint`: every in-process backend does; a
    remote one only where its server takes grammars."""
    return bool(getattr(backend, "takes_constraints", True))


def masks_here(backend: Backend) -> bool:
    """Whether `backend` masks logits in this process, and so needs llguidance's vocabulary; a
    backend with `takes_constraints` (engine.remote) sends a grammar's text to its server instead."""
    return not hasattr(backend, "takes_constraints")


@runtime_checkable
class TokenConstraint(Protocol):
    """What a backend calls around each sampled token."""

    def apply(self, logits: np.ndarray) -> None:
        """Mask the next token's logits in place; `logits` has shape (n_vocab,), float32."""

    def accept(self, token: int) -> None:
        """Record the token that was sampled."""


class _VocabSource:
    """The object llguidance's TokenizerWrapper reads: token bytes, EOS, and an encoder."""

    def __init__(self, backend: Backend, tokens: list[bytes], special: list[int], eos: int) -> None:
        self.eos_token_id = eos
        self.bos_token_id = None
        self.tokens = tokens
        self.special_token_ids = special
        self._backend = backend

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._backend.tokenize(text, add_special=False, parse_special=False)


def vocabulary(backend: Backend, special: Iterable[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a loaded model's vocabulary.

    `special` are the ids of control and user-defined tokens (from the GGUF token types); a
    grammar names them as `<tool_call>`, and plain text never produces them. Building it reads
    every token's bytes (about 0.6 s for 152k tokens): do it once per loaded model.
    """
    n_vocab = backend.summary.n_vocab
    special_ids = sorted({t for t in special if 0 <= t < n_vocab})
    special_set = set(special_ids)
    tokens: list[bytes] = []
    for t in range(n_vocab):
        if t in special_set:
            # The backend renders a control token as b"" unless asked; its name is its text.
            piece = _special_piece(backend, t)
            tokens.append(_SPECIAL_MARK + piece if piece else b"")
        else:
            tokens.append(backend.token_bytes(t))
    eog = list(backend.summary.eog_tokens)
    if not eog:
        raise ConstraintError(f"{backend.summary.path} names no end-of-generation token")
    source = _VocabSource(backend, tokens, special_ids, eog[0])
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(source), n_vocab=n_vocab, eos_token=eog)


def _special_piece(backend: Backend, token: int) -> bytes:
    token_bytes = backend.token_bytes
    try:
        return token_bytes(token, True)  # type: ignore[call-arg]  # LlamaBackend: special=True
    except TypeError:
        return token_bytes(token)


class Grammar:
    """A grammar checked against one vocabulary; `constraint()` makes a fresh matcher for it.

    Without a vocabulary (`tokenizer` None: the model decodes on a server) it is checked as far
    as that goes, in well under a millisecond, and `constraint()` gives its `GrammarText`.
    """

    def __init__(self, tokenizer: llguidance.LLTokenizer | None, lark: str, *, trigger: bytes = b"") -> None:
        self.tokenizer = tokenizer
        self.trigger = trigger
        self.lark = lark
        self._grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self._grammar, tokenizer)
        if is_error:
            raise ConstraintError(f"the grammar does not compile: {'; '.join(messages)}")
        for warning in messages:
            if tokenizer is None and warning.startswith("no tokenizer"):
                continue  # "can't validate <special_token>": the server that holds the vocabulary does
            log.warning("grammar: %s", warning)

    def constraint(self, token_bytes: Callable[[int], bytes]) -> GrammarConstraint | GrammarText:
        """A constraint for one generation; `token_bytes` renders a token (to spot the trigger)."""
        if self.tokenizer is None:
            return GrammarText(self.lark, self.trigger)
        return GrammarConstraint(llguidance.LLMatcher(self.tokenizer, self._grammar), self.trigger, token_bytes,
                                 lark=self.lark)


@dataclass(frozen=True)
class GrammarText:
    """A grammar as a backend that decodes on a server takes it (engine.remote): its Lark text
    and its trigger, with nothing to mask in this process, so made without a vocabulary."""

    lark: str
    trigger: bytes = b""

    def spec(self) -> dict[str, str]:
        """What the server rebuilds the constraint from (see `GrammarConstraint.spec`)."""
        return {"lark": self.lark, "trigger": self.trigger.decode("utf-8", "replace")}


class GrammarConstraint:
    """Masks logits to a grammar from the moment the output ends with `trigger` (at once if empty)."""

    def __init__(self, matcher: llguidance.LLMatcher, trigger: bytes, token_bytes: Callable[[int], bytes], *,
                 lark: str | None = None) -> None:
        if matcher.is_error():
            raise ConstraintError(f"the grammar does not compile: {matcher.get_error()}")
        self._matcher = matcher
        self._lark = lark
        self._trigger = trigger
        self._token_bytes = token_bytes
        self._tail = b""
        self._mask: np.ndarray | None = None
        self.active = not trigger
        self.constrained_tokens = 0
        self.error: str | None = None

    def apply(self, logits: np.ndarray) -> None:
        if not self.active or self.error is not None:
            return
        n = logits.shape[0]
        if self._mask is None:
            self._mask = np.zeros((n + 31) // 32, dtype=np.int32)  # (n_words,) one bit per token
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if self._matcher.is_error():
            self.error = self._matcher.get_error()
            log.warning("constraint: %s", self.error)
            return
        allowed = np.unpackbits(self._mask.view(np.uint8), count=n, bitorder="little")  # (n_vocab,)
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        if self.error is not None:
            return
        if self.active:
            self.constrained_tokens += 1
            if not self._matcher.consume_token(token):
                self.error = self._matcher.get_error() or f"token {token} is outside the grammar"
                log.warning("constraint: %s", self.error)
            return
        self._tail = (self._tail + self._token_bytes(token))[-len(self._trigger):]
        if self._tail == self._trigger:
            self.active = True

    def spec(self) -> dict[str, str]:
        """What rebuilds this constraint on a server with the same vocabulary: the grammar's Lark
        text and the trigger's text ("": constrained from the first token). It is what
        `assistant serve` takes as the `grammar` field of /v1/completions."""
        if self._lark is None:
            raise ConstraintError("this constraint was built without its grammar's text, so it cannot be sent")
        return {"lark": self._lark, "trigger": self._trigger.decode("utf-8", "replace")}

    @property
    def accepting(self) -> bool:
        """True when the text since the trigger is a complete sentence of the grammar."""
        return self.active and self._matcher.is_accepting()
