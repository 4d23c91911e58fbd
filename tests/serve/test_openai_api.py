"""The official `openai` client against a real daemon: chat, streaming, completions with suffix, errors."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.token, max_retries=0, timeout=120)


def test_models_lists_the_loaded_model(client):
    """GET /v1/models names the one model the daemon holds."""
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]


def test_chat_answers_and_counts_tokens(client):
    """A chat completion has the assistant's text, a finish reason and usage."""
    r = client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=12, temperature=0, seed=1)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_stream_matches_the_whole_answer(client):
    """Streamed deltas at temperature 0 add up to the non-streamed answer, and end with a finish reason."""
    kw = dict(model="smollm2-135m", messages=CHAT, max_tokens=12, temperature=0, seed=1)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12


def test_stop_sequence_ends_the_answer(client):
    """A stop string cuts the answer just before it and finishes with 'stop'."""
    kw = dict(model="smollm2-135m", messages=CHAT, max_tokens=16, temperature=0, seed=3)
    full = client.chat.completions.create(**kw).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    r = client.chat.completions.create(stop=[stop], **kw)
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completion_with_suffix(client):
    """/v1/completions takes a prompt and a suffix (fill-in-the-middle) and returns text."""
    r = client.completions.create(model="smollm2-135m", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                  max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8


def test_completion_stream(client):
    """Streamed completions deliver text chunks and one finish reason."""
    chunks = list(client.completions.create(model="smollm2-135m", prompt="import os\n", max_tokens=6, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] in (["length"], ["stop"])


def test_unknown_model_is_404(client):
    """A model the daemon does not hold is a 404 with an OpenAI error body."""
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=CHAT, max_tokens=1)
    assert e.value.body["code"] == "model_not_found"


def test_prompt_over_the_context_is_400(client):
    """A prompt longer than the context is the client's fault: 400 context_length_exceeded."""
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2-135m", prompt="word " * 3000, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"


def test_tools_on_a_model_without_tool_template_is_400(client):
    """SmolLM2's template cannot render tools, which is said, not ignored."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2-135m", messages=CHAT, tools=tools, max_tokens=1)
    assert "tools" in e.value.message


def test_response_format_json_schema(client):
    """response_format json_schema decodes the answer under the schema: it parses and validates."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Give a person's name and age as JSON."}],
        max_tokens=60, temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"} and isinstance(data["name"], str) and isinstance(data["age"], int)


def test_response_format_bad_schema_is_400(client):
    """A schema that cannot be compiled is the client's fault."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "bogus"}}})
    assert e.value.body["param"] == "response_format"


def test_chat_logprobs_describe_each_token(client):
    """logprobs with top_logprobs: one entry per generated token whose texts add up to the answer;
    at temperature 0 each token is its own most likely alternative."""
    r = client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=10, temperature=0,
                                       logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == r.usage.completion_tokens - (choice.finish_reason == "stop")
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-9
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token
    streamed = list(client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=10,
                                                   temperature=0, logprobs=True, top_logprobs=3, stream=True))
    got = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in got] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_in_the_legacy_shape(client):
    """/v1/completions logprobs=2: tokens, their logprobs, the alternatives and each token's offset."""
    r = client.completions.create(model="smollm2-135m", prompt="def add(a, b):\n", max_tokens=8, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=2, top_logprobs=2)
