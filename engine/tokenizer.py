"""llama.cpp's tokenizer for the native engine, loaded from the GGUF file vocabulary-only.

The vocabulary, merges and pre-tokenizer rules of every GGUF family already live in llama.cpp,
so the native engine borrows them instead of carrying its own BPE: `llama_model_load_from_file`
with `vocab_only` reads the tokenizer keys and no tensors (a few MB and milliseconds), and the
text <-> token calls below are the ones the llama.cpp backend makes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as lc

from engine.backend import EngineError
from engine.llama import _init_llama


class Vocab:
    """Tokenize and detokenize with the vocabulary of one GGUF file."""

    def __init__(self, path: str | Path) -> None:
        _init_llama()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise EngineError(f"llama.cpp could not read the vocabulary of {path} (see the log for its reason)")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.eog_tokens = tuple(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
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

    def close(self) -> None:
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()
