"""Grammars over HTTP: `/v1/completions` takes a `grammar` (Lark text and trigger, what
`GrammarConstraint.spec()` gives), builds the same constraint against the served vocabulary, and
refuses one that does not compile; the daemon backend sends it, so a constrained generation
through the daemon writes what it writes in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.loader import LoadedModel, chat_template_of, load_model
from assistant.server.schemas import MAX_GRAMMAR_CHARS
from assistant.settings import Settings
from engine.backend import EngineError, SamplingParams
from engine.constrained import Grammar, vocabulary
from engine.remote import Endpoint, RemoteBackend
from engine.select import BackendChoice
from models.gguf import read_gguf
from tests.serve.conftest import start_daemon

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["city", "days"], "additionalProperties": False}
LARK = f"start: %json {json.dumps(SCHEMA)}\n"
PROMPT = "Tell me a story about a dragon."


def _special(path: Path) -> list[int]:
    with read_gguf(path) as gguf:
        return [i for i, t in enumerate(gguf.get("tokenizer.ggml.token_type")) if int(t) in (3, 4)]


def _complete(daemon, **body) -> tuple[int, dict]:
    code, _, raw = daemon.request("POST", "/v1/completions", {"model": "smollm2-135m", "max_tokens": 40,
                                                               "temperature": 0, **body})
    return code, json.loads(raw)


def test_completions_decode_under_a_grammar(daemon) -> None:
    """A `grammar` holds the answer to it from the first token, or from its trigger on; the
    daemon says it takes Lark grammars."""
    code, out = _complete(daemon, prompt="Is the sky blue? Answer:", grammar={"lark": 'start: " maybe" | " never"'})
    assert code == 200, out
    assert out["choices"][0]["text"] in (" maybe", " never") and out["choices"][0]["finish_reason"] == "stop"
    code, out = _complete(daemon, prompt=PROMPT, grammar={"lark": LARK})
    assert code == 200, out
    answer = json.loads(out["choices"][0]["text"])
    assert set(answer) == {"city", "days"} and 1 <= answer["days"] <= 9
    code, out = _complete(daemon, prompt="1, 2, 3, 4,", max_tokens=12,
                          grammar={"lark": 'start: " done"', "trigger": " 7"})
    assert code == 200, out
    text = out["choices"][0]["text"]
    assert text.endswith(" 7 done") and text.startswith(" 5, 6,"), text  # free until the trigger, then held
    code, _, raw = daemon.request("GET", "/v1/models")
    assert json.loads(raw)["data"][0]["grammars"] == ["lark"] and daemon.status()["grammars"] == ["lark"]


@pytest.mark.parametrize(("grammar", "message"), [
    ({"lark": "start: (((("}, "the grammar cannot be used"),
    ({"lark": 'start: "a" missing_rule'}, "the grammar cannot be used"),
    ({"lark": "x" * (MAX_GRAMMAR_CHARS + 1)}, f"'grammar.lark': String should have at most {MAX_GRAMMAR_CHARS}"),
    ("root ::= \"yes\"", "'grammar': Input should be a valid dictionary"),
    ({"lark": 'start: "a"', "trigger": "t" * 65}, "'grammar.trigger'"),
])
def test_a_bad_grammar_is_400(daemon, grammar, message: str) -> None:
    """A grammar that does not compile, one over the size cap, llama-server's GBNF string and an
    overlong trigger are refused with 400 and a message that says which."""
    code, out = _complete(daemon, prompt="x", grammar=grammar)
    assert code == 400, out
    assert message in out["error"]["message"], out
    assert out["error"]["param"] in ("grammar", "grammar.lark", "grammar.trigger")


@pytest.fixture
def near_daemon(daemon, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", daemon.env["XDG_RUNTIME_DIR"])
    return daemon


def test_the_daemon_backend_forwards_a_grammar(near_daemon, smollm2_path: Path) -> None:
    """A grammar constraint given to the daemon backend is rebuilt by the daemon: the answer is
    the one the same constraint gives in-process at temperature 0."""
    settings = Settings(model="smollm2-135m", backend="llama", threads=1, context_length=1024)
    answers = []
    for use_daemon in (True, False):
        model = load_model(settings, use_daemon=use_daemon)
        try:
            assert model.backend.name == ("daemon" if use_daemon else "llama")
            grammar = Grammar(vocabulary(model.backend, _special(smollm2_path)), LARK)
            constraint = grammar.constraint(model.backend.token_bytes)
            assert constraint.spec() == {"lark": LARK, "trigger": ""}
            prompt = model.backend.tokenize(PROMPT, add_special=True)
            params = SamplingParams(temperature=0.0, max_tokens=60, constraint=constraint)
            answers.append("".join(ev.text for ev in model.backend.generate(prompt, params)))
        finally:
            model.close()
    assert answers[0] == answers[1]
    assert set(json.loads(answers[0])) == {"city", "days"}


def test_a_server_without_grammars_gets_no_constrained_request(daemon, smollm2_path: Path) -> None:
    """A remote backend whose server does not list grammars refuses a constraint with a clear
    error, and the tool-call grammar is not built for it (calls are then parsed from text)."""
    from assistant.toolcalls import ToolCallGrammar

    backend = RemoteBackend(Endpoint(daemon.url, api_key=daemon.token), smollm2_path, model="smollm2-135m",
                            n_ctx=1024, grammars=())
    try:
        grammar = Grammar(vocabulary(backend, _special(smollm2_path)), LARK)
        params = SamplingParams(temperature=0.0, max_tokens=8, constraint=grammar.constraint(backend.token_bytes))
        with pytest.raises(EngineError, match="takes no grammar, so tool calls and JSON answers cannot be constrained"):
            list(backend.generate(backend.tokenize(PROMPT), params))

        gguf = read_gguf(smollm2_path)
        model = LoadedModel(name="smollm2-135m", path=smollm2_path, gguf=gguf, choice=BackendChoice("remote", "asked"),
                            backend=backend, chat_template=chat_template_of(gguf), fim=None, bos_text="")
        try:
            with pytest.raises(ValueError, match="takes no grammar"):
                ToolCallGrammar(model)
        finally:
            gguf.close()
    finally:
        backend.close()


@pytest.fixture(scope="module")
def qwen_daemon(serve_env, qwen_path: Path):
    """A daemon serving Qwen2.5-Coder, whose `<tool_call>` is a special token."""
    d = start_daemon(serve_env(), "--model", str(qwen_path), "--context-length", "2048")
    yield d
    d.stop()


@pytest.mark.slow
def test_tool_calls_on_the_daemon_build_no_vocabulary_here(qwen_daemon, qwen_path: Path, monkeypatch) -> None:
    """Through the daemon the tool-call grammar goes as text and llguidance's vocabulary is never
    built in this process, yet the daemon decodes under it: the same greedy prompt held to
    list_dir gives a list_dir call, and held to read_file a read_file call."""
    from assistant.prompts import encode_text
    from assistant.toolcalls import OPEN, ToolCallGrammar, parse_turn
    from assistant.tools import SPECS
    from engine.constrained import GrammarText

    monkeypatch.setenv("XDG_RUNTIME_DIR", qwen_daemon.env["XDG_RUNTIME_DIR"])  # this process finds it
    model = load_model(Settings(model=str(qwen_path), backend="llama", threads=1, context_length=2048),
                       use_daemon=True)
    try:
        assert model.backend.name == "daemon"
        grammar = ToolCallGrammar(model)
        messages = [{"role": "user", "content": "Show me the contents of src/calc.py."}]
        prompt = encode_text(model, model.chat_template.render(messages, tools=[s.definition() for s in SPECS]) + OPEN)

        def call_held_to(name: str) -> tuple[str, dict]:
            constraint = grammar.constraint([s for s in SPECS if s.name == name], lazy=False)
            assert isinstance(constraint, GrammarText) and constraint.trigger == b""
            params = SamplingParams(temperature=0.0, max_tokens=40, constraint=constraint)
            turn = parse_turn(OPEN + "".join(ev.text for ev in model.backend.generate(prompt, params)))
            assert len(turn.calls) == 1, turn
            return turn.calls[0].name, turn.calls[0].arguments

        listed, read = call_held_to("list_dir"), call_held_to("read_file")
        assert grammar._tokenizer is None  # no vocabulary was built here, before or after the requests
    finally:
        model.close()
    assert listed[0] == "list_dir" and set(listed[1]) <= {"path"}
    assert read[0] == "read_file" and read[1]["path"].endswith("calc.py")
