"""Tool calls through the daemon with Qwen2.5-Coder (its template renders tools; `<tool_call>` is one token)."""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import start_daemon

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris, in Celsius? Use the tool."}]


@pytest.fixture(scope="module")
def qwen_client(serve_env, qwen_path):
    d = start_daemon(serve_env(), "--model", "qwen2.5-coder-0.5b", "--threads", "2")
    yield openai.OpenAI(base_url=f"{d.url}/v1", api_key=d.token, max_retries=0, timeout=300), d
    d.stop()


@pytest.mark.slow
def test_tool_call_is_parsed_and_valid(qwen_client):
    """The model's `<tool_call>` comes back as OpenAI tool_calls whose arguments match the schema."""
    client, d = qwen_client
    r = client.chat.completions.create(model="qwen2.5-coder-0.5b", messages=ASK, tools=[WEATHER],
                                       tool_choice="required", max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("C", "F") and isinstance(args["city"], str)
    assert d.metric("assistant_tool_calls_total") >= 1
    assert d.status()["tool_call_constraint"] == "json-schema (llguidance)"


@pytest.mark.slow
def test_tool_call_streams_as_tool_call_deltas(qwen_client):
    """Streamed, the call arrives as a tool_calls delta and the stream ends with finish_reason tool_calls."""
    client, _ = qwen_client
    chunks = list(client.chat.completions.create(model="qwen2.5-coder-0.5b", messages=ASK, tools=[WEATHER],
                                                 tool_choice="auto", max_tokens=60, temperature=0, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if calls:
        assert finish == ["tool_calls"] and calls[0].function.name == "get_weather"
        json.loads(calls[0].function.arguments)
    else:  # the model chose to answer in prose, which `auto` allows
        assert finish in (["stop"], ["length"]) and content


@pytest.mark.slow
def test_tool_result_round_trip(qwen_client):
    """A conversation holding a call and its result renders and gets an answer."""
    client, _ = qwen_client
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "C"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"},
    ]
    r = client.chat.completions.create(model="qwen2.5-coder-0.5b", messages=messages, tools=[WEATHER],
                                       max_tokens=30, temperature=0)
    assert r.choices[0].message.content or r.choices[0].message.tool_calls
