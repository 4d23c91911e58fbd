"""The Backend protocol over any OpenAI-compatible server (vLLM, llama-server, Ollama, or another
`assistant serve`), so that a bigger model on another machine answers the same clients.

The prompt is still built here: the chat template, the FIM format and the tokens come from a
local GGUF file that shares the remote model's vocabulary (the bundled Qwen2.5-Coder-0.5B for a
Qwen2.5-Coder-7B on vLLM), loaded vocabulary-only. The prompt goes to `/v1/completions` as token
ids (vLLM, llama-server and `assistant serve` take those, as OpenAI's API does), or, for a server
that takes only text (Ollama), as the text those ids spell: `prompt="auto"` sends ids and, when
the server answers 400, 422 or 500 to them, sends text and keeps doing so once that is answered.
Every sampler setting goes along (`top_k`, `min_p`, `repeat_penalty` and `stop_token_ids` as the
llama.cpp-server / vLLM extensions), and the answer streams back as server-sent events.
Cancelling closes the connection, which a server takes as the end of that generation.

Log-probabilities (`SamplingParams.logprobs`, at most 5 alternatives: OpenAI's cap) come back in
each chunk, in the legacy completions shape (`tokens`, `token_logprobs`, `top_logprobs`: vLLM and
`assistant serve`, asked for `token_id:N` names so that no token is guessed from its text) or in
llama-server's (`content`: entries with `id`, `logprob` and `top_logprobs`). Each token becomes an
event carrying its id, log-probability and best alternatives as an in-process backend's do; a
chunk of several tokens gives its text with the last of them.

A constraint (engine.constrained) cannot mask logits on another machine; a `GrammarText` (what a
grammar made without a vocabulary gives, so none is built in this process) or a
`GrammarConstraint` describes itself (`spec()`: its Lark text and trigger) and goes as the
`grammar` extension field, which `assistant serve` rebuilds against the same vocabulary. A server that does not say it
takes grammars (its `/v1/models` entry lists `"grammars": ["lark"]`) gets no constrained
request: that is refused here with a clear error.

`generate` opens its own connection per call, so several threads may generate at once (the
daemon's scheduler does, bounded by its slots: the remote batches them).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from engine.backend import EngineError, GenerationEvent, ModelSummary, SamplingParams, Timings
from engine.tokenizer import VocabFile, VocabText

log = logging.getLogger(__name__)

PromptMode = Literal["tokens", "text", "auto"]
# One generated token as a server reports it: its id (None: not known here), its log-probability,
# and the best alternatives (id, logprob), best first.
_TokenLogprob = tuple[int | None, float | None, tuple[tuple[int, float], ...]]

# Answers to a token-id prompt that may mean "this server wants text" in auto mode (then the same
# prompt goes again as text, and the mode stays text if that is answered): 400 and 422 as most
# servers say it, 500 as llama-cpp-python's server does (its request validation errors come back
# as 500s; tests/serve/test_remote_llama_server.py).
_REFUSED_IDS = (400, 422, 500)


class RemoteError(EngineError):
    """The server cannot be reached or answered with an error; `status` is its HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedModel:
    """What a server's `GET /v1/models` says about one model."""

    id: str
    max_model_len: int | None = None  # vLLM's field (assistant serve writes it too)
    grammars: tuple[str, ...] = ()  # grammar formats it takes in the `grammar` field


class Endpoint:
    """One server's base URL and credentials: JSON requests and streams with the stdlib only."""

    def __init__(self, url: str, *, api_key: str | None = None, headers: Mapping[str, str] | None = None,
                 label: str | None = None) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"'{url}' is not an http(s) URL of a server (e.g. http://gpu-box:8000)")
        self.url = url.strip().rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        # A base URL copied from an OpenAI client ends with /v1; the routes add it themselves.
        self.base_path = parts.path.rstrip("/").removesuffix("/v1")
        self.api_key = api_key or None
        self.headers = dict(headers or {})
        self.label = label or f"the server at {self.url}"

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def _headers(self, with_body: bool) -> dict[str, str]:
        h = {"Accept": "application/json, text/event-stream"}
        if with_body:
            h["Content-Type"] = "application/json"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(self.headers)
        return h

    def open(self, method: str, route: str, body: Any = None, *,
             timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request; the caller reads the response and closes the connection."""
        data = json.dumps(body).encode() if body is not None else None
        conn = self.connection(timeout)
        try:
            conn.request(method, self.base_path + route, body=data, headers=self._headers(data is not None))
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RemoteError(f"cannot reach {self.label}: {_reason(e)}") from None

    def get_json(self, route: str, *, timeout: float = 10.0) -> Any:
        conn, resp = self.open("GET", route, timeout=timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"{self.label} stopped answering: {_reason(e)}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise self.error(resp.status, raw, route)
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteError(f"{self.label} answered GET {route} with something that is not JSON: "
                              f"{raw[:80]!r}", resp.status) from None

    def error(self, status: int, raw: bytes, route: str) -> RemoteError:
        """A person's reading of an error answer."""
        detail = _error_message(raw)
        if status == 401 or status == 403:
            hint = ("the API key was refused" if self.api_key else "it wants an API key") + \
                   " (set remote.api_key, or the variable remote.api_key_env names)"
            return RemoteError(f"{self.label} answered {status} to {route}: {hint}: {detail}", status)
        if status == 404 and route == "/v1/models":
            return RemoteError(f"{self.label} has no {self.base_path}/v1/models (404): is it an "
                               "OpenAI-compatible server, and is the URL its base?", status)
        return RemoteError(f"{self.label} answered {status}: {detail}", status)

    def models(self) -> list[ServedModel]:
        """The models the server lists, in its order."""
        data = self.get_json("/v1/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise RemoteError(f"{self.label} answered /v1/models without a 'data' list: {str(data)[:120]}")
        out = []
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("id"), str):
                continue
            length = e.get("max_model_len")
            grammars = e.get("grammars") if isinstance(e.get("grammars"), list) else []
            out.append(ServedModel(e["id"], int(length) if isinstance(length, int) and length > 0 else None,
                                   tuple(str(g) for g in grammars)))
        return out


class RemoteBackend(VocabText):
    """A model on an OpenAI-compatible server; tokens are counted with the local `vocab_path`."""

    name = "remote"

    def __init__(self, endpoint: Endpoint, vocab_path: Path, *, model: str, n_ctx: int,
                 prompt: PromptMode = "auto", grammars: Sequence[str] = (), architecture: str = "",
                 n_ctx_train: int | None = None, timeout: float = 600.0) -> None:
        if prompt not in ("tokens", "text", "auto"):
            raise EngineError(f"remote prompt mode '{prompt}': choose tokens, text or auto")
        self.endpoint = endpoint
        self.model_name = model
        self.prompt_mode: PromptMode = prompt
        self.takes_constraints = "lark" in grammars
        self.timeout = timeout
        self.vocab = VocabFile(vocab_path)
        self.summary = ModelSummary(path=Path(vocab_path), architecture=architecture, n_ctx=n_ctx,
                                    n_ctx_train=n_ctx_train or n_ctx, n_vocab=self.vocab.n_vocab,
                                    eog_tokens=self.vocab.eog_tokens)
        bos = self.vocab.tokenize("", add_special=True, parse_special=False) if self.vocab.has_tokenizer else []
        self._bos = tuple(bos)
        self._mode_lock = threading.Lock()
        self._unmatched_said = False

    @classmethod
    def connect(cls, url: str, vocab_path: Path, *, model: str | None = None, api_key: str | None = None,
                prompt: PromptMode = "auto", n_ctx: int = 4096, architecture: str = "",
                timeout: float = 600.0) -> RemoteBackend:
        """Ask the server at `url` what it serves (`GET /v1/models`) and open its `model` (default:
        the first it lists). The context is `n_ctx`, or less when the server says its model holds
        less. Raise RemoteError, for a person, when it cannot be reached or refuses."""
        endpoint = Endpoint(url, api_key=api_key)
        served = endpoint.models()
        if model is None:
            if not served:
                raise RemoteError(f"{endpoint.label} lists no model at /v1/models")
            entry = served[0]
        else:
            entry = next((m for m in served if m.id == model), None)
            if entry is None:
                # llama-server answers under any name; a server that does not says so at the first request
                log.warning("%s does not list '%s' (it lists: %s)", endpoint.label, model,
                            ", ".join(m.id for m in served) or "nothing")
                entry = ServedModel(model)
        if entry.max_model_len is not None and entry.max_model_len < n_ctx:
            log.info("%s holds %d tokens of context for %s: using that, not %d", endpoint.label,
                     entry.max_model_len, entry.id, n_ctx)
            n_ctx = entry.max_model_len
        log.info("remote model %s at %s (prompt as %s, grammars: %s)", entry.id, endpoint.url, prompt,
                 ", ".join(entry.grammars) or "none")
        return cls(endpoint, vocab_path, model=entry.id, n_ctx=n_ctx, prompt=prompt, grammars=entry.grammars,
                   architecture=architecture, n_ctx_train=entry.max_model_len, timeout=timeout)

    def reset(self) -> None:
        """Nothing to drop here: the server keeps (and reuses) its own cache."""

    # --- the request ----------------------------------------------------------------------------

    def _prompt_text(self, prompt: Sequence[int]) -> str:
        """The text that the server tokenizes back into `prompt` (it adds BOS itself)."""
        ids = list(prompt)
        if self._bos and tuple(ids[: len(self._bos)]) == self._bos:
            ids = ids[len(self._bos):]
        return self.vocab.detokenize(ids, special=True)

    def _body(self, prompt: Sequence[int], params: SamplingParams, as_text: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name, "stream": True, "stream_options": {"include_usage": True},
            "prompt": self._prompt_text(prompt) if as_text else [int(t) for t in prompt],
            "max_tokens": max(1, params.max_tokens), "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k, "min_p": params.min_p,
        }
        if params.repeat_penalty != 1.0:
            body["repeat_penalty"] = body["repetition_penalty"] = params.repeat_penalty  # llama.cpp's, vLLM's
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)[:4]
        if params.stop_tokens:
            body["stop_token_ids"] = list(params.stop_tokens)
        if params.logprobs is not None:
            body["logprobs"] = min(params.logprobs, 5)
            body["return_tokens_as_token_ids"] = True  # vLLM's (and assistant serve's): tokens as "token_id:N"
        if params.constraint is not None:
            body["grammar"] = self._grammar(params.constraint)
        return body

    def _grammar(self, constraint: Any) -> dict[str, Any]:
        spec = getattr(constraint, "spec", None)
        if spec is None:
            raise EngineError(f"this constraint ({type(constraint).__name__}) cannot be sent to {self.endpoint.label}: "
                              "only grammar constraints describe themselves")
        if not self.takes_constraints:
            raise EngineError(f"{self.endpoint.label} takes no grammar, so tool calls and JSON answers cannot be "
                              "constrained there (assistant serve takes grammars; vLLM, llama-server and Ollama "
                              "take none of ours)")
        return spec()

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationEvent]:
        """Stream the server's continuation of `prompt`; see `engine.backend.Backend`."""
        if params.max_tokens == 0:
            yield GenerationEvent(finish_reason="length", timings=Timings(len(prompt), 0, 0.0, 0, 0.0, 0.0))
            return
        t0 = time.perf_counter()
        mode = self.prompt_mode
        conn, resp = self.endpoint.open("POST", "/v1/completions", self._body(prompt, params, mode == "text"),
                                        timeout=self.timeout)
        try:
            if resp.status in _REFUSED_IDS and mode == "auto":
                first = resp.read()
                conn.close()
                conn, resp = self.endpoint.open("POST", "/v1/completions", self._body(prompt, params, True),
                                                timeout=self.timeout)
                if resp.status == 200:
                    with self._mode_lock:
                        if self.prompt_mode == "auto":
                            log.info("%s refused a prompt of token ids (%s); sending text from now on",
                                     self.endpoint.label, _error_message(first))
                            self.prompt_mode = "text"
            if resp.status != 200:
                raise self.endpoint.error(resp.status, resp.read(), "/v1/completions")
            done = threading.Event()
            if cancel is not None:
                _hang_up_on(cancel, conn, done)
            try:
                yield from self._events(resp, cancel, len(prompt), t0, params.logprobs)
            finally:
                done.set()
        finally:
            conn.close()  # also how a cancelled or abandoned stream tells the server to stop

    def _events(self, resp: http.client.HTTPResponse, cancel: threading.Event | None, n_prompt: int,
                t0: float, n_top: int | None) -> Iterator[GenerationEvent]:
        finish, usage, t_first, n_text, raw, ended = None, None, None, 0, b"", False
        try:
            for raw in resp:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    ended = True
                    break
                chunk = json.loads(payload)
                error = chunk.get("error") or (chunk if chunk.get("object") == "error" else None)
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else error
                    raise RemoteError(f"{self.endpoint.label} failed mid-answer: {message}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = choice.get("text") or ""
                    tokens = self._token_logprobs(choice.get("logprobs"), n_top) if n_top is not None else []
                    if text or tokens:
                        n_text += max(1, len(tokens))
                        t_first = t_first or time.perf_counter()
                    for i, (token, logprob, top) in enumerate(tokens):
                        last = i == len(tokens) - 1
                        yield GenerationEvent(text=text if last else "", token=token, logprob=logprob,
                                              top_logprobs=top)
                    if text and not tokens:
                        yield GenerationEvent(text=text)
                    finish = choice.get("finish_reason") or finish
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not (cancel is not None and cancel.is_set()):  # else: the hang-up below was ours
                if isinstance(e, ValueError):
                    raise RemoteError(f"{self.endpoint.label} sent an event that is not JSON: {raw[:80]!r}") from None
                raise RemoteError(f"{self.endpoint.label} stopped answering: {_reason(e)}") from None
        if cancel is not None and cancel.is_set() and finish not in ("stop", "length"):
            finish = "cancelled"
        elif not ended and finish is None:
            # A server that dies between two chunks closes the connection, and http.client ends a
            # chunked body cut there quietly, as if it were whole: without [DONE] or a finish reason
            # the answer did not end, the server did.
            raise RemoteError(f"{self.endpoint.label} stopped answering: the stream ended before the answer did")
        t_end = time.perf_counter()
        generated = int(usage.get("completion_tokens") or n_text) if usage else n_text
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") if usage else None
        t_first = t_first or t_end
        timings = Timings(prompt_tokens=n_prompt, reused_tokens=int(cached or 0), prompt_s=t_first - t0,
                          generated_tokens=generated, decode_s=t_end - t_first, ttft_s=t_first - t0)
        yield GenerationEvent(finish_reason=finish if finish in ("stop", "length", "cancelled") else "stop",
                              timings=timings)

    # --- log-probabilities ------------------------------------------------------------------------

    def _token_logprobs(self, logprobs: Any, n_top: int) -> list[_TokenLogprob]:
        """The tokens of one chunk's `logprobs`, each as (id, log-probability, the `n_top` best
        alternatives best first); [] when the server sent none."""
        if not isinstance(logprobs, dict):
            return []
        out: list[_TokenLogprob] = []
        content = logprobs.get("content")
        if isinstance(content, list):  # llama-server: [{id, token, logprob, top_logprobs: [{id, token, logprob}]}]
            for entry in content:
                if isinstance(entry, dict):
                    tops = entry.get("top_logprobs") if isinstance(entry.get("top_logprobs"), list) else []
                    alternatives = [(self._token_id(t.get("id"), t.get("token")), t.get("logprob"))
                                    for t in tops if isinstance(t, dict)]
                    out.append((self._token_id(entry.get("id"), entry.get("token")), _number(entry.get("logprob")),
                                _best(alternatives, n_top)))
            return out
        tokens, values, tops = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
        if not isinstance(tokens, list):
            return []
        values = values if isinstance(values, list) else []
        tops = tops if isinstance(tops, list) else []
        for i, name in enumerate(tokens):
            top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            out.append((self._token_id(None, name), _number(values[i]) if i < len(values) else None,
                        _best([(self._token_id(None, k), v) for k, v in top.items()], n_top)))
        return out

    def _token_id(self, token_id: Any, name: Any) -> int | None:
        """A token's id from the server's `id`, its `token_id:N` name, or else its text where that
        is exactly one token here (a server that names tokens by text only: OpenAI's own shape)."""
        n_vocab = self.summary.n_vocab
        if isinstance(token_id, int) and not isinstance(token_id, bool):
            return token_id if 0 <= token_id < n_vocab else None
        if not isinstance(name, str):
            return None
        digits = name.removeprefix("token_id:")
        if digits != name and digits.isdigit():
            return int(digits) if int(digits) < n_vocab else None
        ids = self.tokenize(name, add_special=False, parse_special=True) if self.vocab is not None else []
        if len(ids) == 1:
            return ids[0]
        if not self._unmatched_said:
            self._unmatched_said = True
            log.warning("%s named a token by a text that is not one token here (%r): its log-probability "
                        "is kept without its id", self.endpoint.label, name[:40])
        return None

    def close(self) -> None:
        if getattr(self, "vocab", None) is not None:
            self.vocab.close()
            self.vocab = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _best(alternatives: list[tuple[int | None, Any]], n: int) -> tuple[tuple[int, float], ...]:
    """The `n` most likely of (id, logprob) pairs, best first, leaving out any whose id is not
    known (vLLM adds the sampled token to its `n` alternatives, so it may send one more)."""
    known = [(t, v) for t, v in ((t, _number(v)) for t, v in alternatives) if t is not None and v is not None]
    known.sort(key=lambda tv: -tv[1])
    return tuple(known[:n])


def _hang_up_on(cancel: Any, conn: http.client.HTTPConnection, done: threading.Event) -> None:
    """Shut the connection's socket down once `cancel` is set (checked every 50 ms until `done`),
    so that a read waiting for the server's next line (a queued request, a long prefill) ends at
    once rather than at the next token. `cancel` may be anything with `is_set()`."""
    def watch() -> None:
        while not done.wait(0.05):
            if cancel.is_set():
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed by the reader: nothing left to stop
                return

    threading.Thread(target=watch, name="remote-cancel", daemon=True).start()


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-shaped error body ({"error": {"message"}}, vLLM's {"message"},
    Ollama's {"error": "..."}), else the body's start."""
    try:
        data = json.loads(raw)
        err = data.get("error", data)
        return str(err["message"] if isinstance(err, dict) else err)
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw[:200].decode(errors="replace").strip() or "(no message)"
