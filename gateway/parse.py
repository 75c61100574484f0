"""Parsing client bodies into the one internal request type, with errors a person can act on.

The body stays a dict (unknown fields travel upstream untouched); parsing checks the
fields the gateway relies on and measures the prompt cheaply for reservations and
context checks.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from gateway.media import Media, MediaPolicy
from gateway.tools import (
    chat_tool_choice,
    chat_tools,
    check_json_schema,
    custom_tool_arguments,
)
from policies.errors import BodyTooLarge, InvalidRequest, json_type

Protocol = Literal["openai", "anthropic", "responses"]
Endpoint = Literal["chat", "completions"]

# A conservative bytes-per-token ratio: over-estimating the prompt keeps reservations safe.
_BYTES_PER_TOKEN = 3
# Per message: its role and the chat template's markers around it.
_MESSAGE_TOKENS = 4
# Per tool call in the history: the template's call markers, the word "function" and the
# fences or tags around the arguments.
_CALL_TOKENS = 16
# With tools: the template's instructions on how to call them, once, and each tool's
# heading around its JSON schema.
_TOOLS_TOKENS = 200
_TOOL_TOKENS = 8
# Once per request, in the prompt's bound: the template's own markers (begin of sentence,
# the thinking mode, the generation prompt, a system preamble).
_TEMPLATE_TOKENS = 32


@dataclass(slots=True)
class Call:
    """A request after parsing, whatever protocol it arrived in (OpenAI chat shape inside)."""

    protocol: Protocol
    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_tokens_est: int
    last_user_text: str
    prompt_chars: int
    has_tools: bool = False
    json_mode: bool = False
    choices: int = 1  # ``n``: each choice may produce the whole output limit
    # The field the client's output limit came in (``max_tokens``, ``max_completion_tokens``
    # or ``max_output_tokens``): an error about the limit names it.
    limit_field: str = "max_tokens"
    # What the protocol translation changed or left out (an image replaced by a note, a
    # server tool dropped): added to the route reason, the log line and a metric.
    notes: list[str] = field(default_factory=list)
    # What the protocol's renderer needs from its own request (opaque to the pipeline).
    context: Any = None

    @property
    def prompt_tokens_max(self) -> int:
        """The most prompt tokens the upstream can bill: a byte-level tokenizer makes at most
        one token per byte, and ``prompt_tokens_est`` counts a token per 3 bytes plus the
        template's tokens (per message, per tool call, for the tool instructions), so 3x it
        bounds the bytes and those markers, and a fixed allowance covers the markers said
        once per request. A
        hard budget reserves this, so a prompt that tokenizes badly (base64, rare scripts)
        cannot spend past it; the estimate stays the guess for rate windows and context."""
        return self.prompt_tokens_est * _BYTES_PER_TOKEN + _TEMPLATE_TOKENS


def load_json_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise BodyTooLarge(
            f"request body is {len(raw)} bytes, over this gateway's limit of {max_bytes} bytes"
        )
    if not raw.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {json_type(data)}")
    _check_depth(data)
    return data


# How deep a body's arrays and objects may nest. JSON schemas and tool arguments stay far
# below it; the JSON library reads 1,024 levels but writes only about 250, so a deeper body
# would fail only once it is being sent upstream, after its money was reserved.
MAX_JSON_DEPTH = 128


def _check_depth(data: Any) -> None:
    level: list[Any] = [data]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"request body nests arrays and objects more than {MAX_JSON_DEPTH} levels "
                "deep; flatten it"
            )
        nxt: list[Any] = []
        for node in level:
            values = node.values() if isinstance(node, dict) else node
            nxt.extend(v for v in values if isinstance(v, dict | list))
        level = nxt


# A model name travels into the ledger (a 200-character column), the route header and the
# logs: it is bounded and free of characters that could end a line or hide text there.
MAX_MODEL_CHARS = 200
# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned
# characters, and the line and paragraph separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_model(model: object) -> str:
    """The client's model name, or a 400 naming the field and what is wrong with it."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"'model' is {len(model)} characters long, over the limit of {MAX_MODEL_CHARS}",
            param="model",
        )
    for i, ch in enumerate(model):
        if unicodedata.category(ch) in INVISIBLE_CATEGORIES:
            raise InvalidRequest(
                f"'model' contains the control or invisible character U+{ord(ch):04X} at "
                f"position {i}; model names are printable text",
                param="model",
            )
    return model


def _require_model(body: dict[str, Any]) -> str:
    return check_model(body.get("model"))


# ---- the prompt estimate -------------------------------------------------------------------


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _content_bytes(content: Any) -> int:
    """Bytes of a message's content as the model reads it: each part's text; a part with no
    text (an image, a file) counts as its JSON, as nobody here knows how it is read."""
    if isinstance(content, str):
        return _utf8(content)
    if not isinstance(content, list):
        return 0
    size = 0
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        size += _utf8(text) if isinstance(text, str) else len(orjson.dumps(part))
    return size


def _call_bytes(call: Any) -> int:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return 0
    name, args = fn.get("name"), fn.get("arguments")
    size = _utf8(name) if isinstance(name, str) else 0
    if isinstance(args, str):
        size += _utf8(args)
    elif args is not None:
        size += len(orjson.dumps(args))
    return size


def estimate_prompt_tokens(messages: Any, tools: Any = None, *texts: str) -> int:
    """Prompt tokens of an OpenAI-chat-shaped request, from the text the model sees: message
    contents (tool results included), reasoning sent back, tool calls' names and arguments,
    tool definitions, and ``texts`` (a completion's prompt and suffix). Fields that never
    reach the prompt (``user``, ``metadata``, ``stream_options``...) count for nothing.

    It prices a reservation, a rate-limit window, the context check, and the prompt of a
    stream that broke before its usage arrived; so it errs high: 3 bytes a token (English
    runs about 4 characters a token), and the template's own tokens: a few per message, more
    per tool call, and the tool-use instructions when tools are offered."""
    size, marks = 0, 1
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        marks += _MESSAGE_TOKENS
        size += _content_bytes(m.get("content"))
        for key in ("reasoning_content", "name"):
            if isinstance(m.get(key), str):
                size += _utf8(m[key])
        calls = m.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            size += _call_bytes(call)
            marks += _CALL_TOKENS
        if m.get("function_call") is not None:
            size += _call_bytes({"function": m["function_call"]})
            marks += _CALL_TOKENS
    if isinstance(tools, list) and tools:
        marks += _TOOLS_TOKENS
        for tool in tools:
            size += len(orjson.dumps(tool))  # name, description and parameter schema
            marks += _TOOL_TOKENS
    for text in texts:
        size += _utf8(text)
    return size // _BYTES_PER_TOKEN + marks


# ---- standard parameters ---------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def shown(value: Any) -> str:
    """A number as the client sent it (short), anything else by its JSON type."""
    if not _is_number(value):
        return json_type(value)
    text = repr(value)
    return text if len(text) <= 20 else f"{value:.3g}"


class Check(NamedTuple):
    """What a parameter must be: ``ok`` tests its JSON type (``what`` says it in words); a
    number must also lie from ``low`` to ``high``. The client's null means unset."""

    ok: Callable[[Any], bool]
    what: str
    low: float | None = None
    high: float | None = None


NUMBER = Check(_is_number, "a number")
INTEGER = Check(_is_integer, "an integer")
BOOLEAN = Check(lambda v: isinstance(v, bool), "true or false")
OBJECT = Check(lambda v: isinstance(v, dict), "an object")
STRINGS = Check(_is_strings, "a list of strings")
STOP = Check(lambda v: isinstance(v, str) or _is_strings(v), "a string or a list of strings")


def between(check: Check, low: float, high: float) -> Check:
    return check._replace(low=low, high=high)


# The standard parameters of each protocol, checked before anything goes upstream: their
# JSON type, the ranges the APIs document (OpenAI and DeepSeek: temperature 0 to 2,
# top_p 0 to 1, penalties -2 to 2; Anthropic: temperature and top_p 0 to 1), and the
# fields that must be objects (read as objects here or upstream). The output limits
# (max_tokens and its kin) and ``n`` have their own checks.
OPENAI_PARAMS: dict[str, Check] = {
    "temperature": between(NUMBER, 0, 2),
    "top_p": between(NUMBER, 0, 1),
    "presence_penalty": between(NUMBER, -2, 2),
    "frequency_penalty": between(NUMBER, -2, 2),
    "seed": INTEGER,
    "stop": STOP,
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "chat_template_kwargs": OBJECT,
    "response_format": OBJECT,
    "logit_bias": OBJECT,
    "metadata": OBJECT,
}
ANTHROPIC_PARAMS: dict[str, Check] = {
    "temperature": between(NUMBER, 0, 1),
    "top_p": between(NUMBER, 0, 1),
    "top_k": between(INTEGER, 0, 2**31 - 1),
    "stop_sequences": STRINGS,
    "stream": BOOLEAN,
    "metadata": OBJECT,
    "tool_choice": OBJECT,
    "output_config": OBJECT,
}
RESPONSES_PARAMS: dict[str, Check] = {
    "temperature": between(NUMBER, 0, 2),
    "top_p": between(NUMBER, 0, 1),
    "stream": BOOLEAN,
    "stream_options": OBJECT,
    "reasoning": OBJECT,
    "text": OBJECT,
    "metadata": OBJECT,
}


def _bound(x: float) -> str:
    """A range's end as a person reads it: 2147483647, not 2.14748e+09."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_params(body: Mapping[str, Any], params: Mapping[str, Check]) -> None:
    """A 400 naming the first standard parameter of the wrong JSON type or out of its range.
    Numbers sent as strings ("0.7") are refused, as OpenAI's and Anthropic's APIs refuse
    them."""
    for key, check in params.items():
        value = body.get(key)
        if value is None:
            continue
        if not check.ok(value):
            raise InvalidRequest(f"'{key}' must be {check.what}, not {json_type(value)}", param=key)
        if (
            check.low is not None
            and check.high is not None
            and not (check.low <= value <= check.high)
        ):
            raise InvalidRequest(
                f"'{key}' must be from {_bound(check.low)} to {_bound(check.high)}, "
                f"not {shown(value)}",
                param=key,
            )


# An output limit above this is no limit: no model writes 2 billion tokens (each tier's
# own limit is checked once the route is known, and named there).
MAX_OUTPUT_LIMIT = 2**31 - 1


def over_output_limit(value: Any) -> bool:
    """An integer over ``MAX_OUTPUT_LIMIT``. One too long for 64 bits arrives from the JSON
    parser as a float (1e+30): still an integer, to be called too large, not a non-integer."""
    integral = _is_integer(value) or (isinstance(value, float) and value.is_integer())
    return integral and value > MAX_OUTPUT_LIMIT


def positive_int(value: Any, key: str) -> int:
    """``value`` as an output limit, or a 400 that names ``key`` and what it was sent."""
    if over_output_limit(value):
        raise InvalidRequest(
            f"'{key}' is {shown(value)}, too large: ask for at most {MAX_OUTPUT_LIMIT} tokens "
            "(each model's own output limit is lower)",
            param=key,
        )
    if not _is_integer(value) or value < 1:
        got = str(value) if _is_integer(value) else json_type(value)
        raise InvalidRequest(f"'{key}' must be a positive integer, not {got}", param=key)
    return int(value)


def stream_flag(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest(
            f"'stream' must be true or false, not {json_type(stream)}", param="stream"
        )
    return stream


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The output limit asked for. With both fields, ``max_completion_tokens`` wins, as in
    OpenAI's API and vLLM; the pipeline forwards that one value alone, as ``max_tokens``."""
    value = None
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None:
            value = positive_int(v, key)
    return value


def _limit_field(body: dict[str, Any]) -> str:
    """The field the output limit came in (what ``_max_tokens`` read): errors name it."""
    if body.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    return "max_tokens"


_MAX_CHOICES = 128  # vLLM's own bound on n


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_CHOICES:
        raise InvalidRequest(f"'n' must be an integer from 1 to {_MAX_CHOICES}", param="n")
    return n


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    check_params(body, OPENAI_PARAMS)
    stream = stream_flag(body)
    opts = body.get("stream_options")
    return stream, bool(stream and opts and opts.get("include_usage"))


# Content part types of OpenAI's chat API (``text``, ``image_url``, ``input_audio``,
# ``file``; ``refusal`` in an assistant's content), those vLLM adds, and, for those that
# are not text, the kind the media policy (gateway/media.py) counts them as.
_MEDIA_PARTS = {
    "image_url": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "video_url": "video",
    "file": "file",
}
_PART_TYPES = frozenset({"text", "refusal", *_MEDIA_PARTS})


def _text_of(content: Any, index: int, media: Media) -> str:
    """A message's content as the model reads it. Parts that are not text go through the
    media policy: each is replaced, in the body, by a text part with its note, or refused."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{index}].content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"{where} must be an object with a 'type'", param=where)
            kind = part["type"]
            if kind not in _PART_TYPES:
                raise InvalidRequest(
                    f"{where}.type {kind!r} is not a content part type; use one of: "
                    f"{', '.join(sorted(_PART_TYPES))}",
                    param=f"{where}.type",
                )
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
                parts.append(text)
            elif kind in _MEDIA_PARTS:
                note = media.replace(_MEDIA_PARTS[kind], where, f"{kind} parts", where)
                content[j] = {"type": "text", "text": note}
                parts.append(note)
        return "\n".join(parts)
    raise InvalidRequest(
        f"messages[{index}].content must be a string or a list of content parts",
        param=f"messages[{index}].content",
    )


def check_id(value: Any, where: str, what: str) -> None:
    """A tool call's id, or the id a tool result answers: a non-empty string, as OpenAI's
    and Anthropic's APIs require; without it the result matches no call."""
    if value is None:
        raise InvalidRequest(f"{where} is required: {what}", param=where)
    if not isinstance(value, str) or not value:
        shown_as = "an empty string" if value == "" else json_type(value)
        raise InvalidRequest(
            f"{where} must be a non-empty string ({what}), not {shown_as}", param=where
        )


def _tool_calls(calls: Any, index: int) -> None:
    """An assistant message's ``tool_calls``: a list of {id, type, function: {name,
    arguments}} with the arguments as a JSON string, as OpenAI's API and vLLM require. A
    custom tool's call ({id, type: custom, custom: {name, input}}) becomes a function call
    whose one argument is the input, as its tool is offered upstream."""
    where = f"messages[{index}].tool_calls"
    if calls is None:
        return
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where} must be a list, not {json_type(calls)}", param=where)
    for k, call in enumerate(calls):
        if isinstance(call, dict) and call.get("type") == "custom":
            custom = call.get("custom")
            if (
                not isinstance(custom, dict)
                or not isinstance(custom.get("name"), str)
                or not isinstance(custom.get("input"), str)
            ):
                raise InvalidRequest(
                    f'{where}[{k}] must be an object like {{"id": ..., "type": "custom", '
                    '"custom": {"name": ..., "input": "<string>"}}',
                    param=where,
                )
            _call_id(call, where, k)
            calls[k] = {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": custom["name"], "arguments": custom_tool_arguments(custom)},
            }
            continue
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(
                f'{where}[{k}] must be an object like {{"id": ..., "type": "function", '
                '"function": {"name": ..., "arguments": "<JSON string>"}}',
                param=where,
            )
        args = fn.get("arguments")
        if args is not None and not isinstance(args, str):
            raise InvalidRequest(
                f"{where}[{k}].function.arguments must be a JSON string, not {json_type(args)}",
                param=where,
            )
        _call_id(call, where, k)


def _call_id(call: dict[str, Any], where: str, k: int) -> None:
    check_id(call.get("id"), f"{where}[{k}].id", "the id its tool message answers")


def _check_message(msg: dict[str, Any], index: int, call_ids: set[str]) -> None:
    """One message of a chat history; ``call_ids``: the tool call ids of the assistant
    messages before it, which a tool message must answer (as the Responses and Anthropic
    parsers check their tool results), extended by an assistant message's calls."""
    role = msg["role"]
    if msg.get("content") is None and role not in ("assistant", "function"):
        raise InvalidRequest(
            f"messages[{index}].content is required for a {role} message: a string or a list "
            "of content parts",
            param=f"messages[{index}].content",
        )
    if role == "assistant":
        calls = msg.get("tool_calls")
        _tool_calls(calls, index)
        call_ids.update(call["id"] for call in calls or ())
    elif role == "tool":
        where = f"messages[{index}].tool_call_id"
        tid = msg.get("tool_call_id")
        check_id(tid, where, "the id of the assistant tool call it answers")
        if tid not in call_ids:
            raise InvalidRequest(
                f"{where} {tid!r} matches no tool call of an earlier assistant message: a "
                "tool message answers the 'id' of a 'tool_calls' entry before it",
                param=where,
            )


_FORMATS = ("text", "json_object", "json_schema")


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind not in _FORMATS:
        raise InvalidRequest(
            "'response_format.type' must be one of: " + ", ".join(_FORMATS),
            param="response_format",
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                "'response_format.json_schema' must be an object with the format's 'name' and "
                "'schema', for type json_schema",
                param="response_format",
            )
        check_json_schema(spec, "response_format.json_schema", "response_format")


def _check_logit_bias(bias: Any) -> None:
    for token, value in (bias or {}).items():
        if not _is_number(value) or not -100 <= value <= 100:
            raise InvalidRequest(
                f"'logit_bias' values must be numbers from -100 to 100; {token!r} has "
                f"{shown(value)}",
                param="logit_bias",
            )


def _legacy_functions(body: dict[str, Any]) -> tuple[str, ...]:
    """The deprecated ``functions`` field's definitions, which reach the prompt like tools."""
    functions = body.get("functions")
    return (orjson.dumps(functions).decode(),) if isinstance(functions, list) else ()


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_chat(
    raw: bytes, *, max_bytes: int, max_messages: int, media: MediaPolicy = "note"
) -> Call:
    body = load_json_object(raw, max_bytes)
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is required: a list of {role, content}", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list of {role, content}", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages")
    if len(messages) > max_messages:
        raise InvalidRequest(
            f"'messages' has {len(messages)} entries, over the limit of {max_messages}",
            param="messages",
        )
    last_user = ""
    chars = 0
    call_ids: set[str] = set()
    handler = Media(media)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}",
                param=f"messages[{i}].role",
            )
        _check_message(msg, i, call_ids)
        text = _text_of(msg.get("content"), i, handler)
        chars += len(text)
        if role == "user":
            last_user = text
    stream, include_usage = _stream_flags(body)
    notes = handler.notes()
    tools, offered = chat_tools(body.get("tools"), notes)
    if tools is not None:
        body["tools"] = tools
    chat_tool_choice(body, offered, notes)
    custom_tools = offered.custom()
    tools = body.get("tools")
    fmt = body.get("response_format")
    _check_response_format(fmt)
    _check_logit_bias(body.get("logit_bias"))
    return Call(
        protocol="openai",
        endpoint="chat",
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(body),
        prompt_tokens_est=estimate_prompt_tokens(messages, tools, *_legacy_functions(body)),
        last_user_text=last_user,
        prompt_chars=chars,
        has_tools=bool(tools),
        json_mode=isinstance(fmt, dict) and fmt.get("type") == "json_object",
        choices=_choices(body),
        limit_field=_limit_field(body),
        notes=notes,
        context=custom_tools or None,
    )


def parse_completion(raw: bytes, *, max_bytes: int) -> Call:
    """Legacy completions and FIM (``prompt`` + optional ``suffix``)."""
    body = load_json_object(raw, max_bytes)
    model = _require_model(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' is required and must be a string", param="prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise InvalidRequest("'suffix' must be a string", param="suffix")
    stream, include_usage = _stream_flags(body)
    return Call(
        protocol="openai",
        endpoint="completions",
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(body),
        prompt_tokens_est=estimate_prompt_tokens(None, None, prompt, suffix or ""),
        last_user_text=prompt[-4000:],
        prompt_chars=len(prompt) + len(suffix or ""),
        choices=_choices(body),
        limit_field=_limit_field(body),
    )
