"""llama.cpp's tokenizer, shared by both backends.

The vocabulary, merges and pre-tokenizer rules of every GGUF family already live in llama.cpp,
so the assistant borrows them instead of carrying its own BPE. `Vocab` wraps the vocabulary of
a loaded llama.cpp model (the llama.cpp backend's own); `VocabFile` loads a GGUF file
vocabulary-only (`vocab_only`: the tokenizer keys and no tensors, a few MB and milliseconds)
for the native engine. This module also sets llama.cpp up once per process and sends its log
to Python's logging.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as lc

from engine.backend import EngineError

log = logging.getLogger(__name__)

# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation. Its info is a page per load,
# so it goes to the log only at DEBUG.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}


@lc.llama_log_callback
def _log_to_python(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp writes to stderr unless told otherwise; stdout and stderr belong to the UI.
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        log.log(_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", msg)


@functools.cache
def init_llama() -> None:
    """Set up llama.cpp once per process (safe to call again)."""
    lc.llama_log_set(_log_to_python, ctypes.c_void_p(0))
    lc.llama_backend_init()


class Vocab:
    """Tokenize and detokenize with a llama.cpp vocabulary (`llama_model_get_vocab`)."""

    def __init__(self, vocab: lc.llama_vocab_p) -> None:
        self._vocab = vocab
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        # a "no_vocab" file (token ids only, as test and benchmark models are) has no tokenizer:
        # llama.cpp aborts the process if asked to tokenize with it
        self.has_tokenizer = lc.llama_vocab_type(self._vocab) != lc.LLAMA_VOCAB_TYPE_NONE
        self.eog_tokens = tuple(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        if not self.has_tokenizer:
            raise EngineError("this model file has no tokenizer (tokenizer.ggml.model is 'no_vocab'): "
                              "it takes token ids, not text")
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # added specials can outnumber the bytes; retry at the size asked for
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        if not self.has_tokenizer:
            return b""  # token ids only: no text to show
        key = token if not special else -1 - token
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = buf.raw[:n]
            self._pieces[key] = piece
        return piece

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special) for t in tokens).decode("utf-8", "replace")



class VocabText:
    """The Backend protocol's text <-> token verbs, answered by the backend's `vocab` (a `Vocab`)."""

    vocab: Vocab

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        return self.vocab.token_bytes(token, special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return self.vocab.detokenize(tokens, special=special)


class VocabFile(Vocab):
    """The vocabulary of one GGUF file, loaded without its tensors."""

    def __init__(self, path: str | Path) -> None:
        init_llama()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise EngineError(f"llama.cpp could not read the vocabulary of {path} (see the log for its reason)")
        super().__init__(lc.llama_model_get_vocab(self._model))

    def close(self) -> None:
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
