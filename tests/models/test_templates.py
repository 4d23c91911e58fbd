"""Chat templates: the real templates of the bundled models render exactly, and the sandbox refuses
escapes and resource bombs quickly with a TemplateError that says why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.templates import ChatTemplate, TemplateError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "templates"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CONVERSATION = [
    {"role": "system", "content": "You are a terse code reviewer."},
    {"role": "user", "content": "Is `x = x + 1` idiomatic?"},
]
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file in the workspace",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}


@pytest.fixture(scope="module")
def smollm2() -> ChatTemplate:
    """SmolLM2-135M-Instruct's template, as stored in its GGUF's tokenizer.chat_template."""
    return ChatTemplate((FIXTURES / "smollm2.jinja").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def qwen() -> ChatTemplate:
    """Qwen2.5-Coder-0.5B-Instruct's template (with tools), as stored in its GGUF."""
    return ChatTemplate((FIXTURES / "qwen2.5-coder.jinja").read_text(encoding="utf-8"))


def refused(source: str, *, max_output_chars: int = 1_000_000, max_seconds: float = 5.0) -> str:
    """Render `source` expecting a TemplateError within a second; return its message."""
    start = time.monotonic()
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source, max_output_chars=max_output_chars, max_seconds=max_seconds).render([])
    assert time.monotonic() - start < 1.0
    return str(info.value)


# --- real templates -------------------------------------------------------------------------


def test_smollm2_system_and_user_with_generation_prompt(smollm2: ChatTemplate) -> None:
    """SmolLM2 keeps a given system prompt and opens the assistant turn."""
    assert smollm2.render(CONVERSATION) == (
        "<|im_start|>system\nYou are a terse code reviewer.<|im_end|>\n"
        "<|im_start|>user\nIs `x = x + 1` idiomatic?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_default_system_prompt_without_generation_prompt(smollm2: ChatTemplate) -> None:
    """SmolLM2 adds its own system prompt when none is given, and no assistant turn when not asked."""
    out = smollm2.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert out == f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_qwen_system_and_user_with_generation_prompt(qwen: ChatTemplate) -> None:
    """Qwen renders a system and a user turn in ChatML and opens the assistant turn."""
    assert qwen.render(CONVERSATION) == (
        "<|im_start|>system\nYou are a terse code reviewer.<|im_end|>\n"
        "<|im_start|>user\nIs `x = x + 1` idiomatic?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_default_system_prompt(qwen: ChatTemplate) -> None:
    """Qwen supplies its default system prompt when the conversation has none."""
    out = qwen.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert out == f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_qwen_tools_tool_call_and_tool_response(qwen: ChatTemplate) -> None:
    """With tools, Qwen lists their schemas (HF tojson: key order kept, no escaping), renders the
    assistant's tool call and wraps consecutive tool results in one user turn."""
    messages = [
        {"role": "user", "content": "What is in a.py and b.py?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}},
                {"type": "function", "function": {"name": "read_file", "arguments": {"path": "b.py"}}},
            ],
        },
        {"role": "tool", "content": "x = 1"},
        {"role": "tool", "content": "print('é')"},
    ]
    assert qwen.render(messages, tools=[READ_FILE]) == (
        "<|im_start|>system\n"
        f"{QWEN_SYSTEM}\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "read_file", "description": "Read a file in the workspace", '
        '"parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}\n'
        "</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\nWhat is in a.py and b.py?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "b.py"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        "<tool_response>\nx = 1\n</tool_response>\n"
        "<tool_response>\nprint('é')\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_fallback() -> None:
    """The built-in ChatML template renders every turn as is, a missing content as empty."""
    out = ChatTemplate.chatml().render(CONVERSATION + [{"role": "assistant", "content": None}])
    assert out == (
        "<|im_start|>system\nYou are a terse code reviewer.<|im_end|>\n"
        "<|im_start|>user\nIs `x = x + 1` idiomatic?<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_hf_helpers_and_extras() -> None:
    """Templates get HF's helpers (loop controls, generation tag, strftime_now, tojson), the special
    tokens, and extra keyword arguments."""
    source = (
        "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
        "|{{ strftime_now('%Y')|length }}|{{ {'b': 1, 'a': 'é'}|tojson }}|{{ date_string }}{{ eos_token }}"
    )
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    out = template.render([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], date_string="today")
    assert out == '<s>one|4|{"b": 1, "a": "é"}|today</s>'


# --- sandbox ------------------------------------------------------------------------------------


def test_reaching_class_of_a_string_is_refused() -> None:
    """`''.__class__` is refused at once rather than printed as an empty undefined."""
    assert "access to attribute '__class__' of 'str' object is unsafe" in refused("{{ ''.__class__ }}")


def test_reaching_globals_of_a_function_is_refused() -> None:
    """`f.__globals__` is refused for functions and macros alike."""
    assert "'__globals__' of 'function' object is unsafe" in refused("{{ raise_exception.__globals__ }}")
    assert "'__globals__' of 'Macro' object is unsafe" in refused("{% macro x() %}{% endmacro %}{{ x.__globals__ }}")


def test_reaching_globals_through_cycler_is_refused() -> None:
    """The classic `cycler.__init__.__globals__` escape stops at `__init__`."""
    assert "'__init__' of 'type' object is unsafe" in refused("{{ cycler.__init__.__globals__.os }}")


def test_reaching_the_render_context_through_self_is_refused() -> None:
    """`self._TemplateReference__context` (the whole render context) is refused."""
    message = refused("{{ self._TemplateReference__context }}")
    assert "'_TemplateReference__context' of 'TemplateReference' object is unsafe" in message


def test_mutating_a_list_is_refused() -> None:
    """The immutable sandbox refuses methods that modify lists."""
    assert "'append' of 'list' object is unsafe" in refused("{% set l = [] %}{{ l.append(1) }}")


def test_huge_range_is_refused() -> None:
    """`range(10**9)` fails before any iteration."""
    assert "range(1000000000,) is too big" in refused("{% for i in range(10**9) %}{% endfor %}")


def test_huge_string_multiplication_is_refused() -> None:
    """`'x' * 10**9` is refused before the string is built, and so is a list of big strings."""
    assert "str * 1000000000 would make 1000000000 characters" in refused("{{ 'x' * 10**9 }}")
    assert "list * 1000" in refused("{{ ['x' * 999999] * 1000 }}")


def test_huge_integer_power_is_refused() -> None:
    """An integer power with millions of digits is refused before it is computed."""
    assert "2 ** 10000000 is too large" in refused("{{ 2 ** 10000000 }}")


def test_output_past_the_cap_stops_the_render() -> None:
    """A loop printing more than max_output_chars stops with an error as soon as it passes the cap."""
    message = refused("{% for i in range(10**5) %}{{ 'x' * 10**5 }}{% endfor %}")
    assert message == "chat template output passed 1000000 characters"


def test_doubling_a_string_is_refused() -> None:
    """Strings doubled through a namespace or through macro recursion stop at the size cap."""
    ns = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    assert "namespace attribute 's' would make" in refused(ns)
    macro = "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('x', 64) }}"
    assert "a call's arguments would make" in refused(macro)


def test_padding_and_joining_past_the_cap_are_refused() -> None:
    """Filters and string methods that pad, join or replace into huge strings are refused up front."""
    for source in (
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ '%1000000000d' % 1 }}",
        "{{ range(99999)|join('x' * 999999) }}",
        "{{ ('x' * 1000)|replace('', 'y' * 10000) }}",
    ):
        assert "past the limit of 1000000" in refused(source)


def test_slow_render_is_stopped() -> None:
    """Nested loops that print nothing still stop at max_seconds."""
    message = refused("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", max_seconds=0.2)
    assert "rendering took longer than 0.2 s" in message


def test_syntax_error_names_the_line() -> None:
    """A template that does not parse fails at construction, naming the line."""
    with pytest.raises(TemplateError, match=r"syntax error on line 2: unexpected '}'"):
        ChatTemplate("{{ messages }}\n{{ foo( }}")


def test_raise_exception_reaches_the_caller() -> None:
    """`raise_exception(msg)` in a template becomes a TemplateError carrying msg."""
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('bad role') }}{% endif %}"
    with pytest.raises(TemplateError, match="^chat template raised an error: bad role$"):
        ChatTemplate(source).render([{"role": "tool", "content": ""}])


def test_runtime_failures_name_the_reason_and_line() -> None:
    """Undefined values and Python errors inside a template become TemplateErrors with the line."""
    assert refused("\n{{ foo.bar }}") == "chat template failed: 'foo' is undefined (template line 2)"
    assert "TypeError: can only concatenate str" in refused("{{ 'a' + none }}")
