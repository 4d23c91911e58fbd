"""Chat templates from GGUF metadata, rendered inside a sandbox that bounds what they can do.

A GGUF file carries its chat template as a Jinja2 string (`tokenizer.chat_template`, the text of
a Hugging Face `tokenizer_config.json`). The file is untrusted input, so `ChatTemplate` compiles
it once in jinja2's `ImmutableSandboxedEnvironment` with the settings and helpers HF transformers
gives templates (`trim_blocks`, `lstrip_blocks`, loop controls, `{% generation %}`,
`raise_exception`, `tojson`, `strftime_now`) and adds the limits the sandbox lacks: reaching an
unsafe attribute raises at once instead of yielding an undefined value; strings, lists and
integers built by operators, filters, calls or namespace assignments may not grow past the
output cap; `range` stops at jinja2's MAX_RANGE; the output stops at `max_output_chars`; and the
render stops after `max_seconds`, checked at every attribute access, call, operator, filter, range
step and output chunk (so only an empty loop over an already built list escapes the clock).
Every failure, at compile or render time, is one `TemplateError` that says why.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ (message['content'] or '') ~ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_MAX_INT_BITS = 1 << 16  # about 20000 decimal digits: far past any count a template needs
_DIGITS = re.compile(r"\d+")
# Filters whose integer arguments are sizes (widths, lengths, counts of items to make).
_SIZED_FILTERS = frozenset({"center", "wordwrap", "truncate", "batch", "slice"})


class TemplateError(ValueError):
    """A chat template failed to compile or render, or the sandbox refused what it tried."""


@dataclass(frozen=True)
class _Budget:
    """What one render may spend: the time it must end by and the characters a value may hold."""

    seconds: float
    deadline: float
    max_chars: int


_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise jinja2.exceptions.SecurityError(f"rendering took longer than {budget.seconds:g} s")


def _size(value: Any, limit: int) -> int:
    """Characters and items reachable from `value`, shared references counted each time they
    occur (the size it would have printed), counting stopped once past `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1  # at least its decimal digits
        elif isinstance(item, Namespace):
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += 1
    return total


def _refuse_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise jinja2.exceptions.SecurityError(f"{what} would make {size} characters or items, past the limit of {limit}")


def _ints(values: Iterable[Any]) -> int:
    return sum(abs(v) for v in values if isinstance(v, int))


def _formatted_size(fmt: str, args: Any, limit: int) -> int:
    """An upper bound on the length of `fmt` formatted with `args` by '%' or str.format: its text,
    each number in it as a padding width, int arguments as '*' widths, each field as all of `args`."""
    numbers = _DIGITS.findall(fmt)
    if any(len(n) > 9 for n in numbers):
        return 10**9
    values = args.values() if isinstance(args, dict) else args if isinstance(args, (tuple, list)) else (args,)
    fields = fmt.count("%") + fmt.count("{")
    return len(fmt) + sum(map(int, numbers)) + _ints(values) + fields * _size(args, limit)


def _bounded(items: Iterator[Any], limit: int) -> Iterator[Any]:
    total = 0
    for item in items:
        _tick()
        total += _size(item, limit)
        _refuse_size("an iterator", total, limit)
        yield item


class _Range(Sequence[int]):
    """`range` for templates: at most MAX_RANGE items, and stepping through it checks the clock."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        try:
            n = len(self._range)
        except OverflowError:
            n = MAX_RANGE + 1
        if n > MAX_RANGE:
            raise jinja2.exceptions.SecurityError(f"range{args} is too big: the sandbox allows {MAX_RANGE} items")

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __iter__(self) -> Iterator[int]:
        for i in self._range:
            _tick()
            yield i


class _Namespace(Namespace):
    """`namespace()` whose attributes may not hold values past the render's size limit."""

    def __setitem__(self, name: str, value: Any) -> None:
        budget = _budget.get()
        if budget is not None:
            _refuse_size(f"namespace attribute {name!r}", _size(value, budget.max_chars), budget.max_chars)
        super().__setitem__(name, value)


class _GenerationTag(Extension):
    """HF's `{% generation %}` block marks assistant text for training masks: render its body."""

    tags = frozenset({"generation"})

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template raised an error: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # HF transformers' tojson: unlike jinja2's own, no HTML escaping and keys keep their order.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with HF's template settings and size, range and time limits."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, max_chars: int) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                         extensions=[loopcontrols, _GenerationTag])
        self.max_chars = max_chars
        self.globals.pop("lipsum", None)  # lipsum(n) makes n paragraphs of text
        self.globals.update(range=_Range, namespace=_Namespace, raise_exception=_raise_exception,
                            strftime_now=self._strftime_now)
        self.filters["tojson"] = _tojson
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}

    def _strftime_now(self, fmt: str) -> str:
        _refuse_size("strftime_now's format", _formatted_size(fmt, (), self.max_chars), self.max_chars)
        return datetime.now().strftime(fmt)

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(func)  # keeps jinja2's pass_context/pass_eval_context marks
        def guarded(*args: Any, **kwargs: Any) -> Any:
            _tick()
            limit = self.max_chars
            if name in _SIZED_FILTERS:
                _refuse_size(f"the {name} filter", _ints([*args, *kwargs.values()]), limit)
            elif name == "format" and args and isinstance(args[0], str):  # do_format(value, *args, **kwargs)
                _refuse_size("the format filter", _formatted_size(args[0], [*args[1:], *kwargs.values()], limit), limit)
            elif name == "indent" and args and isinstance(args[0], str):  # do_indent(s, width=4, ...)
                width = args[1] if len(args) > 1 else kwargs.get("width", 4)
                pad = width if isinstance(width, int) else len(str(width))
                _refuse_size("the indent filter", len(args[0]) + (args[0].count("\n") + 1) * pad, limit)
            elif name == "join":  # do_join(eval_ctx, value, d="", attribute=None)
                items = list(args[1])
                self._check_join(items, args[2] if len(args) > 2 else kwargs.get("d", ""))
                args = (args[0], items, *args[2:])
            elif name == "replace":  # do_replace(eval_ctx, s, old, new, count=None)
                self._check_replace(*args[1:4])
            return self._bounded_result(f"the {name} filter", func(*args, **kwargs))

        return guarded

    def _check_join(self, items: list[Any], sep: Any) -> None:
        sep_chars = len(sep) if isinstance(sep, str) else 0
        _refuse_size("join", _size(items, self.max_chars) + sep_chars * max(len(items) - 1, 0), self.max_chars)

    def _check_replace(self, s: Any = "", old: Any = "", new: Any = "") -> None:
        if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
            grown = len(s) + s.count(old) * max(len(new) - len(old), 0)
            _refuse_size("replace", grown, self.max_chars)

    def _bounded_result(self, what: str, result: Any) -> Any:
        if isinstance(result, Iterator) and not isinstance(result, str):
            return _bounded(result, self.max_chars)
        _refuse_size(what, _size(result, self.max_chars), self.max_chars)
        return result

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an undefined value that prints as ''; refuse at once instead.
        kind = type(obj).__name__
        raise jinja2.exceptions.SecurityError(f"access to attribute {attribute!r} of {kind!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        value = super().getattr(obj, attribute)
        if attribute.startswith("_") and isinstance(value, jinja2.Undefined):
            self.unsafe_undefined(obj, attribute)  # private names are refused even where missing
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _refuse_size("str.format", _formatted_size(value.__self__, (), self.max_chars), self.max_chars)
        return wrapped

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        limit = self.max_chars
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise jinja2.exceptions.SecurityError("integer product too large")
            elif isinstance(left, int) or isinstance(right, int):
                count, seq = (left, right) if isinstance(left, int) else (right, left)
                _refuse_size(f"{type(seq).__name__} * {count}", _size(seq, limit) * max(count, 0), limit)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and left.bit_length() * right > _MAX_INT_BITS:
                raise jinja2.exceptions.SecurityError(f"{left} ** {right} is too large")
        elif operator == "%" and isinstance(left, str):
            _refuse_size("'%' formatting", _formatted_size(left, right, limit), limit)
        result = self.binop_table[operator](left, right)
        _refuse_size(f"'{operator}'", _size(result, limit), limit)
        return result

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _refuse_size("a call's arguments", _size([args, kwargs], __self.max_chars), __self.max_chars)
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):  # a str method: bound its result before making it
            name, limit = target.__name__, __self.max_chars
            if name == "join" and args:
                items = list(args[0])
                __self._check_join(items, owner)
                args = (items, *args[1:])
            elif name == "replace":
                __self._check_replace(owner, *args[:2])
            elif name in ("format", "format_map"):
                values = args[0] if name == "format_map" and args else [*args, *kwargs.values()]
                _refuse_size(f"str.{name}", _formatted_size(owner, values, limit), limit)
            elif name == "translate" and args and isinstance(args[0], dict):
                longest = max((_size(v, limit) for v in args[0].values()), default=1)
                _refuse_size("str.translate", len(owner) * max(longest, 1), limit)
            elif name == "expandtabs":
                _refuse_size("str.expandtabs", len(owner) + owner.count("\t") * _ints([*args, *kwargs.values()]), limit)
            else:  # center, ljust, rjust, zfill pad to an int width; the rest make no more than the string
                _refuse_size(f"str.{name}", len(owner) + _ints([*args, *kwargs.values()]), limit)
        result = super().call(__context, __obj, *args, **kwargs)
        return __self._bounded_result("a call", result)


class ChatTemplate:
    """A chat template compiled once in the sandbox; `render` turns messages into a prompt."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 max_output_chars: int = 1_000_000, max_seconds: float = 5.0) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_output_chars = max_output_chars
        self.max_seconds = max_seconds
        self._env = _SandboxEnvironment(max_output_chars)
        try:
            self._template = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template has a syntax error on line {exc.lineno}: {exc.message}") from exc
        except Exception as exc:
            raise TemplateError(f"chat template failed to compile: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def chatml(cls, **kwargs: Any) -> ChatTemplate:
        """The built-in template for GGUF files that carry none: plain ChatML."""
        return cls(CHATML, **kwargs)

    def render(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt for `messages` (and `tools`), with the assistant turn opened if asked."""
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **extra,
                   "messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt}
        token = _budget.set(_Budget(self.max_seconds, time.monotonic() + self.max_seconds, self.max_output_chars))
        chunks: list[str] = []
        total = 0
        stream = self._template.generate(context)
        try:
            for chunk in stream:
                total += len(chunk)
                if total > self.max_output_chars:
                    raise TemplateError(f"chat template output passed {self.max_output_chars} characters")
                chunks.append(chunk)
                _tick()
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"chat template refused: {exc}{_at_line(exc)}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}{_at_line(exc)}") from exc
        except Exception as exc:  # the template is untrusted code: any failure is its failure
            raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}{_at_line(exc)}") from exc
        finally:
            stream.close()
            _budget.reset(token)
        return "".join(chunks)


def _at_line(exc: BaseException) -> str:
    """' (template line N)' for the last template frame in the traceback jinja2 rewrote for `exc`."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f" (template line {line})"
