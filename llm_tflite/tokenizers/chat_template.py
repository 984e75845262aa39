"""Chat templates: a model's own Jinja prompt format, rendered as untrusted code.

A template comes from a file (a checkpoint's ``tokenizer_config.json``, a ``.tflite`` record, a
``.litertlm`` bundle), so it is rendered the way Hugging Face ``transformers`` renders it (Jinja's
``ImmutableSandboxedEnvironment``, ``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, the
``tojson`` filter, ``raise_exception`` and ``strftime_now``) and, beyond that, within limits:

- ``MAX_TEMPLATE_CHARS`` of source and ``MAX_TEXT_CHARS`` of output or of any one value it builds
  (a string, a list, a namespace attribute);
- ``RENDER_SECONDS`` of time (plus ``SECONDS_PER_MESSAGE`` per message) and ``MAX_RENDER_BYTES`` of memory growth, checked as it runs (a
  trace function), so a loop or a doubling string ends in ``ChatTemplateError``, not a hang;
- no Python internals (the sandbox), no ``%`` string formatting, no huge ``*``/``**`` results,
  no filter widths past the output limit.

Example:
    >>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    >>> t.render([{"role": "user", "content": "hi"}])
    '<user>hi'
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time

from llm_tflite.errors import ChatTemplateError, InvalidArgumentError
from llm_tflite.litert.metadata import MAX_CHAT_TEMPLATE_CHARS as MAX_TEMPLATE_CHARS
#: Longest output, and longest string or list a template may build (a 128K-token prompt is ~0.5M chars).
MAX_TEXT_CHARS = 2_000_000
RENDER_SECONDS = 0.5
#: Render time allowed per message beyond ``RENDER_SECONDS`` (long histories render longer), up to ``MAX_RENDER_SECONDS``.
SECONDS_PER_MESSAGE = 0.002
MAX_RENDER_SECONDS = 5.0
#: Resident memory a render may add before it is stopped.
MAX_RENDER_BYTES = 256 << 20
ROLES = ("system", "user", "assistant", "tool")


class _Abort(BaseException):
    """Raised by the guard inside a render; a BaseException so template code cannot swallow it."""


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Guard:
    """Time and memory limits of one compile or render, checked every few traced lines."""

    def __init__(self, what: str, seconds: float = RENDER_SECONDS):
        self.what, self.seconds = what, seconds

    def __enter__(self):
        self.deadline = time.monotonic() + self.seconds
        self.base = _resident_bytes()
        self.count = 0
        self.previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def _trace(self, frame, event, arg):
        self.count += 1
        if self.count % 16 == 0:
            if time.monotonic() > self.deadline:
                raise _Abort(f"{self.what} ran past {self.seconds:g} s")
            if self.base and _resident_bytes() - self.base > MAX_RENDER_BYTES:
                raise _Abort(f"{self.what} took more than {MAX_RENDER_BYTES >> 20} MB of memory")
        return self._trace

    def __exit__(self, kind, error, trace):
        sys.settrace(self.previous)
        return False


def _too_big(value) -> bool:
    return isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_TEXT_CHARS


def _check_size(value, what: str):
    if _too_big(value):
        raise ChatTemplateError(f"the chat template built a {what} of more than {MAX_TEXT_CHARS} characters")
    return value


#: A number this long in a format string is a width or precision no prompt needs.
_BIG_NUMBER = re.compile(r"\d{7,}")


def _size_of(value) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else len(str(value))


def _precheck(name: str, value, args: tuple, kwargs: dict) -> None:
    """Refuse, before it runs, a filter or string method that would build more than the output limit
    in one C call: a width past it, a format string with a huge width, a ``replace`` or ``join``
    whose result would pass it."""
    numbers = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if any(abs(n) > MAX_TEXT_CHARS for n in numbers):
        raise ChatTemplateError(f"the chat template's {name!r} was given a number past {MAX_TEXT_CHARS}")
    if name in ("format", "join", "replace", "ljust", "rjust", "center", "zfill", "expandtabs", "indent", "wordwrap",
                "truncate") and any(isinstance(t, str) and _BIG_NUMBER.search(t) for t in (value, *args)):
        raise ChatTemplateError(f"the chat template's {name!r} was given a huge width")
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = value.count(old) if old else len(value) + 1
        if len(value) + count * max(len(new) - len(old), 0) > MAX_TEXT_CHARS:
            raise ChatTemplateError(f"the chat template's 'replace' would build more than {MAX_TEXT_CHARS} characters")
    if name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        width = width if isinstance(width, int) else len(str(width))
        if len(value) + (value.count("\n") + 1) * abs(width) > MAX_TEXT_CHARS:
            raise ChatTemplateError(f"the chat template's 'indent' would build more than {MAX_TEXT_CHARS} characters")
    if name == "join":
        items, separator = (value, args[0] if args else "") if isinstance(value, (list, tuple)) else (
            (args[0], value) if args and isinstance(args[0], (list, tuple)) else ((), ""))
        total = sum(_size_of(x) for x in items) + len(str(separator)) * len(items)
        if total > MAX_TEXT_CHARS:
            raise ChatTemplateError(f"the chat template's 'join' would build more than {MAX_TEXT_CHARS} characters")


def _guarded_filter(name: str, func):
    """``func`` refusing widths past the output limit, and results past it."""
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # the context / environment jinja passes first

    def guarded(*args, **kwargs):
        value, rest = args[skip] if len(args) > skip else None, args[skip + 1:]
        _precheck(name, value, rest, kwargs)
        return _check_size(func(*args, **kwargs), f"'{name}' result")

    guarded.__name__ = getattr(func, "__name__", name)
    if skip:  # keep jinja's calling convention
        guarded.jinja_pass_arg = func.jinja_pass_arg
    return guarded


def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.runtime import Namespace
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedNamespace(Namespace):
        def __setitem__(self, name, value):
            super().__setitem__(name, _check_size(value, "namespace value"))

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                sequence, times = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
                if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) and \
                        len(sequence) * max(times, 0) > MAX_TEXT_CHARS:
                    raise ChatTemplateError(f"the chat template repeats a value past {MAX_TEXT_CHARS} characters")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                        right * abs(left).bit_length() > 4096:
                    raise ChatTemplateError("the chat template raises a number to a huge power")
            elif operator == "%" and isinstance(left, (str, bytes)):
                raise ChatTemplateError("the chat template formats a string with '%', which chat templates may not do")
            return _check_size(super().call_binop(context, operator, left, right), "value")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            for value in (*args, *kwargs.values()):
                _check_size(value, "call argument")
            # a string method (``s.ljust(n)``, ``s.replace(a, b)``, ``"{:>9}".format(x)``): checked as its filter is
            method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            _precheck(getattr(method, "__name__", "call"), getattr(method, "__self__", None), args, kwargs)
            return _check_size(super().call(__context, __obj, *args, **kwargs), "call result")

    def raise_exception(message):
        raise InvalidArgumentError(f"the chat template refused these messages: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(str(fmt)[:100])

    # optimized=False: no constant folding, which would run filters at compile time, outside the guard
    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], optimized=False)
    env.filters["tojson"] = tojson
    env.filters = {name: _guarded_filter(name, func) for name, func in env.filters.items()}
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, namespace=LimitedNamespace)
    return env


def _plain(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


class ChatTemplate:
    """A compiled chat template; ``render(messages)`` is the prompt text a model sees.

    Args:
        source: the Jinja text (a Hugging Face ``chat_template``).
        bos_token, eos_token: the strings templates insert as ``{{ bos_token }}`` / ``{{ eos_token }}``.
    """

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("a chat template must be a non-empty string")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"the chat template is {len(source)} characters; at most {MAX_TEMPLATE_CHARS} are read")
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        # Compiling runs none of the template's code (the sandbox folds no operator it intercepts, and
        # guarded filters refuse what they would refuse at run time), so only rendering is traced.
        self._template = self._run("compiling the chat template", lambda: _environment().from_string(source),
                                   guard=False)

    @staticmethod
    def _run(what: str, work, guard: bool = True, seconds: float = RENDER_SECONDS):
        try:
            if not guard:
                return work()
            with _Guard(what, seconds):
                return work()
        except _Abort as e:
            raise ChatTemplateError(f"{e}; the template is hostile or broken") from None
        except (ChatTemplateError, InvalidArgumentError):
            raise
        except RecursionError:
            raise ChatTemplateError(f"{what}: it recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError(f"{what}: it ran out of memory") from None
        except Exception as e:  # jinja2's TemplateSyntaxError, SecurityError, UndefinedError, TypeError, ...
            raise ChatTemplateError(f"{what} failed: {_plain(e)}") from None

    def render(self, messages, *, add_generation_prompt: bool = True, **variables) -> str:
        """The prompt for ``messages`` (checked by ``check_messages``); ``variables`` are passed on
        (``tools``, ``enable_thinking``, ``date_string``, ...)."""
        messages = check_messages(messages)
        context = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                   "bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **variables}

        def render():
            pieces, size = [], 0
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > MAX_TEXT_CHARS:
                    raise ChatTemplateError(f"the chat template's output passed {MAX_TEXT_CHARS} characters")
                pieces.append(piece)
            return "".join(pieces)

        seconds = min(RENDER_SECONDS + SECONDS_PER_MESSAGE * len(messages), MAX_RENDER_SECONDS)
        return self._run("rendering the chat template", render, seconds=seconds)


def check_messages(messages) -> list[dict]:
    """OpenAI-style messages as templates read them: a list of ``{"role", "content"}`` dicts, roles
    from ``ROLES``, content a string or a list of ``{"type": "text", "text"}`` parts (joined).
    Raises ``InvalidArgumentError`` naming the first bad message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out, size = [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidArgumentError(f"messages[{i}] must be a dict with 'role' and 'content', not "
                                       f"{type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}]['role'] must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise InvalidArgumentError(f"messages[{i}]['content'] parts must be {{'type': 'text', 'text': str}}; "
                                           "this runtime reads text only")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
        size += len(content)
        if size > MAX_TEXT_CHARS:
            raise InvalidArgumentError(f"the messages hold more than {MAX_TEXT_CHARS} characters")
        out.append({"role": role, "content": content})
    return out
