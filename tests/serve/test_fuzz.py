"""Body fuzz: whatever JSON (or not) a client sends, the daemon answers 4xx or 200, never 5xx."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                              inner, max_size=4),
                           max_leaves=12)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"])
message = st.fixed_dictionaries({"role": roles}, optional={
    "content": st.text(max_size=40) | json_values, "tool_calls": json_values, "name": json_values,
    "tool_call_id": json_values})
sampling = {"temperature": json_values | st.floats(-1, 3), "top_p": json_values | st.floats(0, 1.5),
            "max_tokens": json_values | st.integers(-5, 10**12), "stop": json_values | st.lists(st.text(max_size=3)),
            "seed": json_values | st.integers(-5, 2**40), "stream": st.booleans() | json_values,
            "n": st.integers(0, 3), "logprobs": json_values, "stream_options": json_values}
schemas = json_values | st.fixed_dictionaries({"type": st.sampled_from(["object", "string", "integer", "array", "x"])},
                                              optional={"properties": json_values, "items": json_values,
                                                        "required": json_values, "enum": json_values,
                                                        "$ref": st.text(max_size=8), "maxLength": json_values})
response_formats = json_values | st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])},
                                                       optional={"json_schema": st.fixed_dictionaries(
                                                           {"schema": schemas}, optional={"name": json_values})})
models = st.sampled_from(["smollm2-135m", "nope"]) | json_values
chat_bodies = st.fixed_dictionaries({"model": models}, optional={
    "messages": st.lists(message, max_size=3) | json_values, "tools": json_values, "tool_choice": json_values,
    "response_format": response_formats, "max_completion_tokens": json_values, **sampling})
completion_bodies = st.fixed_dictionaries({"model": models}, optional={
    "prompt": st.text(max_size=40) | json_values, "suffix": st.text(max_size=20) | json_values, "echo": json_values,
    **sampling})
# Well-formed bodies (so the fuzz reaches the template, the tokenizer and the model), then the
# same with one field replaced by any JSON value.
valid_sampling = {"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "max_tokens": st.integers(1, 10**6),
                  "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4), "seed": st.integers(0, 2**32 - 1),
                  "stream": st.booleans()}
valid_chat = st.fixed_dictionaries({"model": st.just("smollm2-135m"), "messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}), min_size=1, max_size=3)},
    optional={**valid_sampling, "response_format": response_formats})
# The grammar extension: Lark text from pieces of its syntax, so some of it compiles.
lark_text = st.lists(st.sampled_from(['start: ', '"a"', '"b"', " | ", "(", ")", "*", "+", "?", "x", "\n", "%json ",
                                      '{"type": "string"}', "/[0-9]+/", "<tool_call>", "::=", " "]), max_size=8).map("".join)
grammars = json_values | st.fixed_dictionaries({"lark": lark_text | st.text(max_size=20)},
                                               optional={"trigger": st.text(max_size=4) | json_values})
valid_completion = st.fixed_dictionaries({"model": st.just("smollm2-135m"), "prompt": st.text(min_size=1, max_size=40)},
                                         optional={**valid_sampling, "suffix": st.text(max_size=20), "grammar": grammars})


def mutated(bodies):
    keys = st.sampled_from(["model", "messages", "prompt", "suffix", "stop", "max_tokens", "temperature", "seed",
                            "stream", "tools", "tool_choice", "response_format", "n", "grammar"])
    return st.tuples(bodies, keys, json_values).map(lambda t: {**t[0], t[1]: t[2]})


raw_bodies = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())

def encoded(bodies):
    return bodies.map(lambda b: json.dumps(b).encode())


requests = (st.tuples(st.just("/v1/chat/completions"), encoded(chat_bodies | valid_chat | mutated(valid_chat)))
            | st.tuples(st.just("/v1/completions"), encoded(completion_bodies | valid_completion
                                                             | mutated(valid_completion)))
            | st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), raw_bodies))


# Status codes the fuzz saw, so the last test can check it reached both the parser's 400s and real answers.
SEEN: list[int] = []


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests)
def test_fuzzed_bodies_never_5xx(tight_daemon, req):
    """No body makes the daemon answer 5xx (tight_daemon caps answers at 4 tokens)."""
    path, body = req
    code, _, raw = tight_daemon.request("POST", path, body)
    SEEN.append(code)
    assert code < 500, (code, raw[:300])
    if code != 200:
        assert json.loads(raw)["error"]["message"]
    elif b"data: " in raw[:6]:
        assert raw.rstrip().endswith(b"data: [DONE]")
        assert b'"error"' not in raw, raw[-300:]


def test_health_after_fuzz(tight_daemon):
    """After the fuzz the daemon is healthy and idle, and the fuzz produced both answers and refusals."""
    assert 200 in SEEN and 400 in SEEN, sorted(set(SEEN))
    assert tight_daemon.request("GET", "/health", token=None)[0] == 200
    s = tight_daemon.wait_idle()
    assert s["queued"] == 0 and s["busy_slots"] == 0
