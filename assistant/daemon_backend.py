"""The Backend protocol over a running `assistant serve`, so that the editor and the terminal share
the daemon's model instead of loading their own.

`load_model(..., use_daemon=True)` hands out a `DaemonBackend` when a live daemon serves the
same model file. Tokens are counted here with the file's own vocabulary (llama.cpp loaded
vocabulary-only, a few MB), so the prompt a client builds goes to the daemon as token ids
(`/v1/completions` takes those, as OpenAI's does) and every sampler setting goes with it. The
answer streams back as server-sent events; cancelling closes the connection, which the daemon
turns into the end of that generation at its next step. Constrained decoding (tool calls under a
grammar) is not forwarded: a request with a constraint is refused with a clear error.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from assistant.client import DaemonInfo
from engine.backend import EngineError, GenerationEvent, ModelSummary, SamplingParams, Timings
from engine.tokenizer import VocabFile, VocabText


class DaemonBackend(VocabText):
    """One daemon's model, reached over HTTP."""

    name = "daemon"

    def __init__(self, info: DaemonInfo, path: Path, status: dict[str, Any], *, timeout: float = 600.0) -> None:
        self.info = info
        self.timeout = timeout
        self.vocab = VocabFile(path)
        self.summary = ModelSummary(
            path=path,
            architecture=str(status.get("architecture") or ""),
            n_ctx=int(status["context_length"]),
            n_ctx_train=int(status.get("n_ctx_train") or status["context_length"]),
            n_vocab=int(status.get("n_vocab") or 0),
            eog_tokens=self.vocab.eog_tokens,
        )
        self.model_name = str(status["model"])
        self.served_by = str(status.get("backend") or "")

    def reset(self) -> None:
        """Nothing to drop here: the daemon keeps (and reuses) its own cache."""

    # --- generation -----------------------------------------------------------------------------

    def _body(self, prompt: Sequence[int], params: SamplingParams) -> dict[str, Any]:
        if params.constraint is not None:
            raise EngineError("constrained decoding is not forwarded to the daemon; run the model in-process")
        body: dict[str, Any] = {
            "model": self.model_name, "prompt": [int(t) for t in prompt], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max(1, params.max_tokens),
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
            "min_p": params.min_p, "repeat_penalty": params.repeat_penalty,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)[:4]
        if params.stop_tokens:
            body["stop_token_ids"] = list(params.stop_tokens)
        if params.logprobs is not None:
            body["logprobs"] = min(params.logprobs, 5)
        return body

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationEvent]:
        """Stream the daemon's continuation of `prompt`; see `engine.backend.Backend`."""
        if params.max_tokens == 0:
            yield GenerationEvent(finish_reason="length", timings=Timings(len(prompt), 0, 0.0, 0, 0.0, 0.0))
            return
        body = json.dumps(self._body(prompt, params)).encode()
        url = urlsplit(self.info.url)
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=self.timeout)
        try:
            try:
                conn.request("POST", "/v1/completions", body=body, headers={
                    "Authorization": f"Bearer {self.info.token}", "Content-Type": "application/json",
                    "Host": f"127.0.0.1:{url.port}"})
                resp = conn.getresponse()
            except OSError as e:
                raise EngineError(f"cannot reach the daemon at {self.info.url}: {e}") from None
            if resp.status != 200:
                raise EngineError(f"the daemon answered {resp.status}: {_error_message(resp.read())}")
            yield from self._events(resp, cancel, len(prompt), t0)
        finally:
            conn.close()  # also how a cancelled or abandoned stream tells the daemon to stop

    def _events(self, resp: http.client.HTTPResponse, cancel: threading.Event | None, n_prompt: int,
                t0: float) -> Iterator[GenerationEvent]:
        finish, usage, t_first, n_text = None, None, None, 0
        for raw in resp:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise EngineError(f"the daemon failed: {chunk['error'].get('message')}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                text = choice.get("text") or ""
                if text:
                    n_text += 1
                    t_first = t_first or time.perf_counter()
                    yield GenerationEvent(text=text)
                finish = choice.get("finish_reason") or finish
        t_end = time.perf_counter()
        generated = int(usage["completion_tokens"]) if usage else n_text
        t_first = t_first or t_end
        timings = Timings(prompt_tokens=n_prompt, reused_tokens=0, prompt_s=t_first - t0,
                          generated_tokens=generated, decode_s=t_end - t_first, ttft_s=t_first - t0)
        yield GenerationEvent(finish_reason=finish if finish in ("stop", "length", "cancelled") else "stop",
                              timings=timings)

    def close(self) -> None:
        if getattr(self, "vocab", None) is not None:
            self.vocab.close()
            self.vocab = None


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")
