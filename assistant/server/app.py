"""The daemon's Starlette application: the OpenAI-compatible routes, status and metrics.

Routes validate their bodies into `schemas` models, render the prompt (chat template or FIM
format) in a worker thread, and hand a `Job` to the `Scheduler`; answers stream back as
server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. Every error is
OpenAI-shaped JSON (`{"error": {"message", "type", "param", "code"}}`): 4xx when the client asked
for something wrong, 5xx only for the daemon's own faults. Tool calls are the model's
`<tool_call>{json}</tool_call>` blocks, decoded under the tools' JSON schemas when the model has
those tags as special tokens (engine.constrained via assistant.toolcalls). `/v1/completions`
also takes a `grammar` (Lark text and trigger) that a client built against the same vocabulary:
that is how the TUI's tool calls stay constrained when it runs on the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from assistant.loader import LoadedModel
from assistant.prompts import encode_text, fim_prompt
from assistant.server.guard import Guard
from assistant.server.metrics import Metrics
from assistant.server.scheduler import PRIORITY_CHAT, PRIORITY_COMPLETION, Draining, Job, QueueFull, Scheduler
from assistant.server.schemas import ChatRequest, CompletionRequest, Message, NamedToolChoice
from assistant.settings import Settings
from engine.backend import ContextOverflowError, EngineError, GenerationEvent, SamplingParams
from engine.remote import RemoteError
from models.templates import TemplateError

log = logging.getLogger(__name__)


# How often a request waiting for the model checks that its client is still there.
_DISCONNECT_POLL_S = 0.1


class ApiError(Exception):
    """An answer that is an error: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class ServerState:
    """What every route needs: the model, its scheduler, the limits, and the daemon's identity."""

    model: LoadedModel
    settings: Settings
    token: str
    scheduler: Scheduler
    metrics: Metrics
    max_tokens_cap: int = 2048
    max_body_bytes: int = 1 << 20
    port: int = 0
    host: str = "127.0.0.1"
    token_file: Path | None = None
    started: float = field(default_factory=time.time)
    requests: int = 0
    _tool_grammar: Any = None
    _tool_grammar_error: str | None = None
    _vocabulary: Any = None
    _grammars: dict[tuple[str, str], Any] = field(default_factory=dict)
    _grammar_lock: threading.Lock = field(default_factory=threading.Lock)  # routes prepare in a thread pool

    @property
    def model_ids(self) -> set[str]:
        return {self.model.name, self.model.path.name, self.model.path.stem}


# --- request parsing --------------------------------------------------------------------------


async def _read_json(request: Request, cap: int) -> Any:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise ApiError(413, f"the body is {length} bytes; the daemon takes at most {cap}", code="body_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ApiError(413, f"the body is over {cap} bytes", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client closed the request before sending the body") from None
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body nests too deeply", code="invalid_json") from None


def _parse(model_cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        # Union members show up in the location ('prompt.str'); keep only field names and indexes.
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or p in _FIELD_NAMES) or "body"
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ApiError(400, f"'{where}': {first['msg']}{more}", param=where) from None


def _field_names() -> frozenset[str]:
    from assistant.server import schemas

    names: set[str] = set()
    for obj in vars(schemas).values():
        if isinstance(obj, type) and issubclass(obj, schemas.BaseModel):
            names.update(obj.model_fields)
    return frozenset(names)


_FIELD_NAMES = _field_names()


def _check_model(state: ServerState, name: str) -> None:
    if name not in state.model_ids:
        raise ApiError(404, f"the model '{name}' is not served here; this daemon serves '{state.model.name}'",
                       code="model_not_found", param="model")


def _sampling(state: ServerState, req: ChatRequest | CompletionRequest, n_prompt: int,
              extra_stops: tuple[str, ...] = (), constraint: Any = None) -> SamplingParams:
    s = state.settings
    n_ctx = state.model.backend.summary.n_ctx
    if n_prompt >= n_ctx:
        raise ApiError(400, f"the prompt is {n_prompt} tokens but the context holds {n_ctx}",
                       code="context_length_exceeded", param="messages")
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens or s.max_tokens

    def own(name: str, default: Any) -> Any:  # a completion request's extension field, if sent
        value = getattr(req, name, None)
        return default if value is None else value

    return SamplingParams(
        temperature=s.temperature if req.temperature is None else req.temperature,
        top_k=own("top_k", s.top_k),
        top_p=s.top_p if req.top_p is None else req.top_p,
        min_p=own("min_p", s.min_p),
        repeat_penalty=own("repeat_penalty", s.repeat_penalty),
        seed=s.seed if req.seed is None else req.seed,
        max_tokens=max(1, min(asked, state.max_tokens_cap, n_ctx - n_prompt)),
        stop=req.stops() + extra_stops,
        stop_tokens=tuple(own("stop_token_ids", ())),
        constraint=constraint,
        logprobs=_logprobs_wanted(req),
    )


def _logprobs_wanted(req: ChatRequest | CompletionRequest) -> int | None:
    try:
        return req.logprobs_wanted()
    except ValueError as e:
        raise ApiError(400, str(e), param="top_logprobs") from None


def _token_text(state: ServerState, token: int) -> tuple[str, bytes]:
    b = state.model.backend.token_bytes(token)
    return b.decode("utf-8", errors="replace"), b


def _chat_logprobs(state: ServerState, events: list[GenerationEvent]) -> list[dict[str, Any]]:
    """OpenAI chat `logprobs.content` entries for the tokens of `events` that carry one."""
    out = []
    for ev in events:
        if ev.logprob is None or ev.token is None:
            continue
        text, b = _token_text(state, ev.token)
        tops = []
        for tok, lp in ev.top_logprobs:
            t, tb = _token_text(state, tok)
            tops.append({"token": t, "logprob": lp, "bytes": list(tb)})
        out.append({"token": text, "logprob": ev.logprob, "bytes": list(b), "top_logprobs": tops})
    return out


def _completion_logprobs(state: ServerState, events: list[GenerationEvent], offset: int,
                         as_ids: bool = False) -> tuple[dict[str, Any], int]:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)
    and the text offset after its last token. `as_ids` writes each token as `token_id:N` (vLLM's
    `return_tokens_as_token_ids`), which a client maps back to its id where a token's text (a
    piece of a UTF-8 character, or a text two tokens share) would not say which."""
    def name(token: int, text: str) -> str:
        return f"token_id:{token}" if as_ids else text

    tokens, values, tops, offsets = [], [], [], []
    for ev in events:
        if ev.logprob is None or ev.token is None:
            continue
        text, _ = _token_text(state, ev.token)
        tokens.append(name(ev.token, text))
        values.append(ev.logprob)
        tops.append({name(t, _token_text(state, t)[0]): lp for t, lp in ev.top_logprobs})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}, offset


# --- chat -------------------------------------------------------------------------------------


class _ToolSpec:
    """An OpenAI function definition in the shape assistant.toolcalls builds grammars from."""

    def __init__(self, name: str, parameters: dict[str, Any]) -> None:
        self.name, self._parameters = name, parameters

    def parameters(self) -> dict[str, Any]:
        return self._parameters


def _template_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        calls = []
        for c in m.tool_calls:
            args = c.function.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except json.JSONDecodeError:
                    raise ApiError(400, f"the arguments of tool call '{c.id}' are not JSON", param="messages") from None
            calls.append({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}})
        out["tool_calls"] = calls
    return out


def _tool_constraint(state: ServerState, specs: list[_ToolSpec], lazy: bool) -> Any:
    """A schema constraint for the calls, or None when this model cannot be constrained."""
    from assistant.toolcalls import ToolCallGrammar

    if state._tool_grammar is None and state._tool_grammar_error is None:
        try:
            state._tool_grammar = ToolCallGrammar(state.model)
        except (ValueError, EngineError) as e:
            state._tool_grammar_error = str(e)
            log.info("tool calls are not constrained: %s", e)
    if state._tool_grammar is None:
        return None
    try:
        return state._tool_grammar.constraint(specs, lazy=lazy)
    except (EngineError, ValueError) as e:  # a schema llguidance does not take: the client's tools are at fault
        raise ApiError(400, f"the tools' JSON schemas cannot be used: {e}", param="tools") from None


_MAX_CACHED_GRAMMARS = 32


def _grammar_constraint(state: ServerState, lark: str, trigger: str, param: str, what: str) -> Any:
    """A constraint from a Lark grammar, compiled against the served vocabulary once per text
    (the last few are kept); one that does not compile is the client's fault (400). A daemon that
    forwards (backend remote) builds no vocabulary: it checks what it can of the grammar and
    passes its text on."""
    from engine.constrained import Grammar, masks_here, supports_constraints, vocabulary

    if not supports_constraints(state.model.backend):
        raise ApiError(400, f"{what} needs decoding under a grammar, which the server this daemon forwards to "
                       "does not take", param=param, code="grammar_unsupported")
    key = (lark, trigger)
    with state._grammar_lock:
        grammar = state._grammars.get(key)
        if grammar is None:
            if state._vocabulary is None and masks_here(state.model.backend):
                types = state.model.gguf.get("tokenizer.ggml.token_type") or []
                special = [i for i, t in enumerate(types) if int(t) in (3, 4)]
                state._vocabulary = vocabulary(state.model.backend, special)
            try:
                grammar = Grammar(state._vocabulary, lark, trigger=trigger.encode())
            except (EngineError, ValueError) as e:  # ValueError: llguidance rejects the grammar text itself
                raise ApiError(400, f"{what} cannot be used: {e}", param=param, code="invalid_grammar") from None
            if len(state._grammars) >= _MAX_CACHED_GRAMMARS:
                state._grammars.pop(next(iter(state._grammars)))
            state._grammars[key] = grammar
    return grammar.constraint(state.model.backend.token_bytes)


def _json_constraint(state: ServerState, schema: dict[str, Any]) -> Any:
    """A constraint that makes the whole answer one JSON value matching `schema`."""
    key = json.dumps(schema, sort_keys=True)
    return _grammar_constraint(state, f"start: %json {key}\n", "", "response_format", "the response_format schema")


def _prepare_chat(state: ServerState, req: ChatRequest) -> tuple[list[int], SamplingParams, bool, str]:
    """Tokens, sampling, whether tool calls are parsed, and the text the model was primed with."""
    from assistant.toolcalls import OPEN, supports_tools

    messages = [_template_message(m) for m in req.messages]
    choice = req.tool_choice or ("auto" if req.tools else "none")
    use_tools = bool(req.tools) and choice != "none"
    tools = specs = None
    primed = ""
    if use_tools:
        if not supports_tools(state.model.chat_template.source):
            raise ApiError(400, f"the chat template of '{state.model.name}' does not render tools", param="tools")
        tools = [t.model_dump() for t in req.tools]
        chosen = req.tools
        if isinstance(choice, NamedToolChoice):
            chosen = [t for t in req.tools if t.function.name == choice.function.name]
            if not chosen:
                raise ApiError(400, f"tool_choice names '{choice.function.name}', which is not in tools",
                               param="tool_choice")
        specs = [_ToolSpec(t.function.name, t.function.parameters) for t in chosen]
        if choice != "auto":  # the answer must be a call: open it for the model
            primed = OPEN
    try:
        text = state.model.chat_template.render(messages, tools=tools) + primed
    except TemplateError as e:
        raise ApiError(400, f"the chat template refused the conversation: {e}", param="messages") from None
    prompt = encode_text(state.model, text)
    schema = req.response_format.schema() if req.response_format else None
    if schema is not None and use_tools:
        raise ApiError(400, "response_format and tools cannot be combined", param="response_format")
    constraint = _tool_constraint(state, specs, lazy=not primed) if specs else None
    if schema is not None:
        constraint = _json_constraint(state, schema)
    return prompt, _sampling(state, req, len(prompt), constraint=constraint), use_tools, primed


def _split_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]], list[str]]:
    from assistant.toolcalls import parse_turn

    turn = parse_turn(text)
    calls = [{"id": c.id, "type": "function",
              "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
             for c in turn.calls]
    return (turn.text or None) if calls else text, calls, turn.errors


# --- running a job ----------------------------------------------------------------------------


def _submit(state: ServerState, prompt: list[int], params: SamplingParams, priority: int) -> Job:
    job = Job(prompt=prompt, params=params, priority=priority, loop=asyncio.get_running_loop())
    try:
        state.scheduler.submit(job)
    except QueueFull:
        raise ApiError(429, "the daemon's queue is full; try again shortly", "rate_limit_error",
                       "queue_full") from None
    except Draining:
        raise ApiError(503, "the daemon is shutting down", "server_error", "shutting_down") from None
    state.metrics.queue_depth.set(state.scheduler.queued)
    return job


async def _events(job: Job, request: Request) -> AsyncIterator[GenerationEvent]:
    """The job's events; cancels the generation when the client goes away or the consumer stops.

    Writing to a closed connection fails at the next token, but a job still waiting in the
    queue (or in a long prefill) writes nothing, so the connection is also polled.
    """
    try:
        while True:
            try:
                async with asyncio.timeout(_DISCONNECT_POLL_S):  # no task per token, unlike wait_for
                    item = await job.events.get()
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if item is None:
                return
            if isinstance(item, ContextOverflowError):
                raise ApiError(400, str(item), code="context_length_exceeded")
            if isinstance(item, Draining):
                raise ApiError(503, "the daemon is shutting down", "server_error", "shutting_down")
            if isinstance(item, RemoteError):  # the server this daemon forwards to (backend remote)
                if item.status in (400, 422):
                    raise ApiError(400, str(item), code="upstream_refused")
                raise ApiError(502, str(item), "server_error", "upstream_failed")
            if isinstance(item, BaseException):
                raise ApiError(500, f"generation failed: {item}", "server_error")
            yield item
    finally:
        job.cancel.set()


def _usage(ev: GenerationEvent | None) -> dict[str, Any]:
    t = ev.timings if ev is not None else None
    p, g, cached = (t.prompt_tokens, t.generated_tokens, t.reused_tokens) if t else (0, 0, 0)
    # cached: prompt tokens whose K/V came from the cache (OpenAI's prompt_tokens_details)
    return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish(reason: str | None) -> str:
    return "length" if reason in ("length", "context") else "stop"


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


# --- routes -----------------------------------------------------------------------------------


Handler = Callable[[Request, ServerState], Awaitable[Response]]


def _route(path: str, handler: Handler, state: ServerState, methods: list[str]) -> Route:
    async def endpoint(request: Request) -> Response:
        t0 = request.state.t0 = time.perf_counter()
        state.requests += 1
        try:
            response = await handler(request, state)
        except ApiError as e:
            response = e.response()
        except Exception:
            log.exception("%s failed", path)
            response = ApiError(500, "the daemon failed to answer; see its log", "server_error").response()
        state.metrics.requests.labels(path, str(response.status_code)).inc()
        if not isinstance(response, StreamingResponse):
            state.metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    return Route(path, endpoint, methods=methods)


async def health(request: Request, state: ServerState) -> Response:
    return JSONResponse({"status": "draining" if state.scheduler.draining else "ok"})


async def models(request: Request, state: ServerState) -> Response:
    # max_model_len as vLLM writes it, so a remote backend pointed here learns the context
    return JSONResponse({"object": "list", "data": [
        {"id": state.model.name, "object": "model", "created": int(state.started), "owned_by": "assistant",
         "max_model_len": state.model.backend.summary.n_ctx, "grammars": _grammars_taken(state)}]})


def _grammars_taken(state: ServerState) -> list[str]:
    """The grammar formats /v1/completions takes in its `grammar` field (a remote backend:
    only where its own server takes them)."""
    from engine.constrained import supports_constraints

    return ["lark"] if supports_constraints(state.model.backend) else []


async def status(request: Request, state: ServerState) -> Response:
    proc = psutil.Process(os.getpid())
    return JSONResponse({
        "model": state.model.name, "model_path": str(state.model.path), "backend": state.model.backend.name,
        "backend_reason": state.model.choice.reason, "context_length": state.model.backend.summary.n_ctx,
        "n_ctx_train": state.model.backend.summary.n_ctx_train, "n_vocab": state.model.backend.summary.n_vocab,
        "architecture": state.model.backend.summary.architecture,
        "host": state.host, "port": state.port, "pid": os.getpid(), "uptime_s": round(time.time() - state.started, 1),
        "requests": state.requests, "queued": state.scheduler.queued, "busy_slots": state.scheduler.busy,
        "slots": state.scheduler.slots, "rss_bytes": proc.memory_info().rss,
        "token_file": str(state.token_file) if state.token_file else None, "grammars": _grammars_taken(state),
        "tool_call_constraint": "json-schema (llguidance)" if state._tool_grammar is not None
        else f"none: {state._tool_grammar_error}" if state._tool_grammar_error else "not built yet",
        "kv_cache": _kv_memory(state),
    })


def _kv_memory(state: ServerState) -> dict[str, int] | None:
    """The backend's KV memory (slots, and what is kept from earlier prompts), where it says."""
    kv_memory = getattr(state.model.backend, "kv_memory", None)
    return kv_memory() if callable(kv_memory) else None


async def metrics(request: Request, state: ServerState) -> Response:
    state.metrics.queue_depth.set(state.scheduler.queued)
    state.metrics.busy_slots.set(state.scheduler.busy)
    usage = getattr(state.model.backend, "kv_usage", None)
    if usage is not None:
        held, capacity = usage()
        state.metrics.kv_tokens.set(held)
        state.metrics.kv_capacity.set(capacity)
    kv = _kv_memory(state)
    if kv is not None:
        state.metrics.kv_kept(kv["kept_bytes"], kv["kept_cap_bytes"], kv["kept_evictions"])
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def chat_completions(request: Request, state: ServerState) -> Response:
    req: ChatRequest = _parse(ChatRequest, await _read_json(request, state.max_body_bytes))
    _check_model(state, req.model)
    prompt, params, use_tools, primed = await run_in_threadpool(_prepare_chat, state, req)
    job = _submit(state, prompt, params, PRIORITY_CHAT)
    rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    base = {"id": rid, "created": created, "model": state.model.name, "system_fingerprint": None}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_chat_stream(state, request, job, base, use_tools, primed, include_usage,
                                              params.logprobs is not None),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    text, last, events = await _collect(state, request, job, "/v1/chat/completions")
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    logprobs = {"content": _chat_logprobs(state, events), "refusal": None} if params.logprobs is not None else None
    finish = _finish(last.finish_reason if last else None)
    if use_tools:
        content, calls, errors = _split_tool_calls(primed + text)
        _count_tool_calls(state, calls, errors)
        if calls:
            message = {"role": "assistant", "content": content, "refusal": None, "tool_calls": calls}
            finish = "tool_calls"
    return JSONResponse({**base, "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}], "usage": _usage(last)})


def _count_tool_calls(state: ServerState, calls: list, errors: list) -> None:
    if calls:
        state.metrics.tool_calls.labels("true").inc(len(calls))
    if errors:
        state.metrics.tool_calls.labels("false").inc(len(errors))


async def _collect(state: ServerState, request: Request, job: Job,
                   route: str) -> tuple[str, GenerationEvent | None, list[GenerationEvent]]:
    parts, last, first, events = [], None, None, []
    async for ev in _events(job, request):
        events.append(ev)
        if first is None and ev.text:
            first = time.perf_counter()
            state.metrics.ttft.labels(route).observe(first - request.state.t0)
        parts.append(ev.text)
        if ev.finish_reason is not None or ev.timings is not None:
            last = ev
    return "".join(parts), last, events


async def _chat_stream(state: ServerState, request: Request, job: Job, base: dict[str, Any], use_tools: bool,
                       primed: str, include_usage: bool, with_logprobs: bool = False) -> AsyncIterator[bytes]:
    from assistant.toolcalls import OPEN

    route, t0 = "/v1/chat/completions", time.perf_counter()
    held: list[GenerationEvent] = []  # tokens whose logprobs go out with the next chunk that has content

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        logprobs = None
        if with_logprobs and held:
            logprobs = {"content": _chat_logprobs(state, held), "refusal": None}
            held.clear()
        body = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
        if include_usage:
            body["usage"] = None
        return _sse(body)

    yield chunk({"role": "assistant", "content": ""})
    out, sent, last, first = "", 0, None, True
    in_call = bool(primed)
    try:
        async for ev in _events(job, request):
            if ev.text and first:
                first = False
                state.metrics.ttft.labels(route).observe(time.perf_counter() - t0)
            if ev.timings is not None:
                last = ev
            if ev.logprob is not None:
                held.append(ev)
            out += ev.text
            if not use_tools:
                if ev.text:
                    yield chunk({"content": ev.text})
                sent = len(out)
                continue
            # With tools, prose streams as it comes, but from a `<tool_call>` on the text is held
            # back and sent as tool_calls at the end (and so is a tail that may start one).
            if in_call:
                continue
            pending = out[sent:]
            if OPEN in pending:
                in_call = True
                pending = pending[: pending.index(OPEN)]
            else:
                keep = next((k for k in range(len(OPEN) - 1, 0, -1) if pending.endswith(OPEN[:k])), 0)
                pending = pending[: len(pending) - keep]
            if pending:
                yield chunk({"content": pending})
                sent += len(pending)
        finish = _finish(last.finish_reason if last else None)
        if use_tools:
            _, calls, errors = _split_tool_calls(primed + out)
            _count_tool_calls(state, calls, errors)
            if calls:
                for i, c in enumerate(calls):
                    yield chunk({"tool_calls": [{"index": i, **c}]})
                finish = "tool_calls"
            elif out[sent:]:  # no call parsed: the held-back text is plain content after all
                yield chunk({"content": out[sent:]})
        yield chunk({}, finish)
        if include_usage:
            yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(last)})
    except ApiError as e:
        yield _sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
    finally:
        state.metrics.latency.labels(route).observe(time.perf_counter() - t0)
    yield _sse("[DONE]")


async def completions(request: Request, state: ServerState) -> Response:
    req: CompletionRequest = _parse(CompletionRequest, await _read_json(request, state.max_body_bytes))
    _check_model(state, req.model)
    ids = req.prompt_ids()
    n_vocab = state.model.backend.summary.n_vocab
    if ids is not None and (req.suffix is not None or not all(0 <= t < n_vocab for t in ids)):
        raise ApiError(400, "a prompt of token ids takes no suffix, and each id must be below the "
                       f"vocabulary size {n_vocab}", param="prompt")
    if req.stop_token_ids and not all(0 <= t < n_vocab for t in req.stop_token_ids):
        raise ApiError(400, f"stop_token_ids must be below the vocabulary size {n_vocab}", param="stop_token_ids")
    try:
        prefix = req.prompt_text() if ids is None else ""
    except ValueError as e:
        raise ApiError(400, str(e), param="prompt") from None

    def prepare() -> tuple[list[int], SamplingParams]:
        constraint = None
        if req.grammar is not None:
            constraint = _grammar_constraint(state, req.grammar.lark, req.grammar.trigger, "grammar", "the grammar")
        if ids is not None:
            return ids, _sampling(state, req, len(ids), constraint=constraint)
        if req.suffix is not None:
            tokens, stops = fim_prompt(state.model, prefix, req.suffix)
        else:
            tokens, stops = encode_text(state.model, prefix), ()
        return tokens, _sampling(state, req, len(tokens), extra_stops=tuple(stops), constraint=constraint)

    prompt, params = await run_in_threadpool(prepare)
    job = _submit(state, prompt, params, PRIORITY_COMPLETION)
    base = {"id": f"cmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": state.model.name,
            "system_fingerprint": None}
    as_ids = req.return_tokens_as_token_ids
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_completion_stream(state, request, job, base, params.logprobs is not None,
                                                    include_usage, as_ids),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, last, events = await _collect(state, request, job, "/v1/completions")
    logprobs = _completion_logprobs(state, events, 0, as_ids)[0] if params.logprobs is not None else None
    return JSONResponse({**base, "object": "text_completion", "choices": [
        {"index": 0, "text": text, "finish_reason": _finish(last.finish_reason if last else None),
         "logprobs": logprobs}], "usage": _usage(last)})


async def _completion_stream(state: ServerState, request: Request, job: Job, base: dict[str, Any],
                             with_logprobs: bool = False, include_usage: bool = False,
                             as_ids: bool = False) -> AsyncIterator[bytes]:
    route, t0, last, first = "/v1/completions", time.perf_counter(), None, True
    held: list[GenerationEvent] = []
    offset = 0

    def chunk(text: str, finish: str | None = None) -> bytes:
        nonlocal offset
        logprobs = None
        if with_logprobs and held:
            logprobs, offset = _completion_logprobs(state, held, offset, as_ids)
            held.clear()
        return _sse({**base, "object": "text_completion",
                     "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
                     **({"usage": None} if include_usage else {})})

    try:
        async for ev in _events(job, request):
            if ev.text and first:
                first = False
                state.metrics.ttft.labels(route).observe(time.perf_counter() - t0)
            if ev.timings is not None:
                last = ev
            if ev.logprob is not None:
                held.append(ev)
            if ev.text:
                yield chunk(ev.text)
        yield chunk("", _finish(last.finish_reason if last else None))
        if include_usage:
            yield _sse({**base, "object": "text_completion", "choices": [], "usage": _usage(last)})
    except ApiError as e:
        yield _sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
    finally:
        state.metrics.latency.labels(route).observe(time.perf_counter() - t0)
    yield _sse("[DONE]")


async def _not_found(request: Request, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 404)
    message = "no such route" if code == 404 else "method not allowed" if code == 405 else str(exc)
    return ApiError(code, f"{request.method} {request.url.path}: {message}").response()


def create_app(state: ServerState) -> Guard:
    """The application for one loaded model, behind the guard."""
    routes = [
        _route("/health", health, state, ["GET"]),
        _route("/v1/models", models, state, ["GET"]),
        _route("/v1/status", status, state, ["GET"]),
        _route("/metrics", metrics, state, ["GET"]),
        _route("/v1/chat/completions", chat_completions, state, ["POST"]),
        _route("/v1/completions", completions, state, ["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    extra = frozenset() if state.host in ("127.0.0.1", "::1", "localhost") else frozenset({state.host})
    return Guard(app, token=state.token, extra_hosts=extra, draining=lambda: state.scheduler.draining)
