"""OpenAI Responses API (``POST /v1/responses``) <-> the internal OpenAI-chat request.

Codex CLI, the openai SDKs' ``responses`` methods and LangChain's ``use_responses_api``
speak this protocol. A body becomes a ``Call`` whose body is OpenAI chat (instructions and
developer messages -> the system prompt, ``function_call`` / ``custom_tool_call`` items ->
assistant ``tool_calls``, their outputs -> ``tool`` messages, ``reasoning`` items ->
``reasoning_content``) and runs the same pipeline as chat. The DeepSeek-shaped answer
comes back as a response object, or as the Responses event stream
(gateway/protocols/responses_stream.py).

Nothing is stored: ``previous_response_id`` is refused with a 400 that says to send the
conversation in ``input`` (as Codex does with ``store: false``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from engines.translate import json_schema_instruction
from gateway.media import Media, MediaPolicy
from gateway.parse import (
    RESPONSES_PARAMS,
    Call,
    check_id,
    check_model,
    check_params,
    estimate_prompt_tokens,
    load_json_object,
    positive_int,
    stream_flag,
)
from gateway.pipeline import Prepared
from gateway.serve import Edge, Events
from gateway.tools import (
    ToolKind,
    ToolNames,
    allowed_tools,
    check_custom_tool,
    check_json_schema,
    custom_tool_function,
    custom_tool_input,
    custom_tool_input_so_far,
)
from policies.errors import InvalidRequest, TiergateError, UpstreamUnavailable, json_type
from policies.usage import Usage, usage_from_openai

_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra")
# Built-in tools that OpenAI's servers run. ``web_search`` is only advisory (Codex offers it
# by default): it is left out, and the route reason says so. The others would make an
# agent wait for work nobody does, so they are refused.
_DROPPED_TOOLS = ("web_search", "web_search_preview")
_REFUSED_TOOLS = (
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
)
_SERVER_TOOLS = frozenset({*_DROPPED_TOOLS, *_REFUSED_TOOLS, "computer_use"})
_CUT_MESSAGE = (
    "the upstream model ran out of resources mid-answer (insufficient_system_resource); "
    "the answer was cut: retry the request"
)


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


@dataclass(slots=True)
class Context:
    """What rendering needs besides the chat answer: the request's own fields, echoed back."""

    echo: dict[str, Any]
    custom_tools: set[str] = field(default_factory=set)
    namespaces: dict[str, str] = field(default_factory=dict)  # tool name -> namespace
    encrypted_reasoning: bool = False


# ---- request --------------------------------------------------------------------------------


# Responses content parts the media policy applies to, and the kind each is counted as.
_MEDIA_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}


def _content_text(content: Any, where: str, media: Media) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", "input")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}[{j}].text must be a string", "input")
            parts.append(text)
        elif kind in _MEDIA_PARTS:
            what = _MEDIA_PARTS[kind]
            parts.append(media.replace(what, f"{where}[{j}]", f"{kind} parts", "input"))
        elif kind == "refusal":
            parts.append(str(part.get("refusal", "")))
        else:
            raise _bad(f"{where}[{j}]: unsupported content part type {kind!r}", "input")
    return "\n".join(parts)


def _output_text(output: Any, where: str, media: Media) -> str:
    return _content_text(output, f"{where}.output", media)


class _History:
    """Input items -> chat messages; consecutive assistant items join one assistant turn."""

    def __init__(self, media: MediaPolicy) -> None:
        self.media = Media(media)
        self.system: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self.call_ids: set[str] = set()
        self.last_user = ""
        self.reasoning: list[str] = []  # reasoning items waiting for their assistant turn

    def _assistant(self) -> dict[str, Any]:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        if self.reasoning:
            last["reasoning_content"] = (last.get("reasoning_content") or "") + "".join(
                self.reasoning
            )
            self.reasoning = []
        return last

    def _call(self, call_id: Any, name: Any, arguments: str, where: str) -> None:
        check_id(call_id, f"{where}.call_id", "the id its output item answers")
        if not isinstance(name, str):
            raise _bad(f"{where} needs string 'call_id' and 'name'", "input")
        self.call_ids.add(call_id)
        turn = self._assistant()
        turn.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )

    def _output(self, item: dict[str, Any], where: str) -> None:
        call_id = item.get("call_id")
        check_id(call_id, f"{where}.call_id", "the call_id of the call it answers")
        if call_id not in self.call_ids:
            raise _bad(
                f"{where}: call_id {call_id!r} matches no earlier function_call or "
                "custom_tool_call item in 'input' (this gateway stores no responses: send the "
                "whole conversation)",
                "input",
            )
        output = item.get("output")
        if not isinstance(output, str | list):
            raise _bad(
                f"{where}.output must be a string or a list of content parts, not "
                f"{json_type(output)}",
                "input",
            )
        text = _output_text(output, where, self.media)
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def add(self, item: Any, i: int) -> None:
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            text = _content_text(item.get("content"), f"{where}.content", self.media)
            if role in ("system", "developer"):
                self.system.append(text)
            elif role == "user":
                self.messages.append({"role": "user", "content": text})
                self.last_user = text
            elif role == "assistant":
                turn = self._assistant()
                turn["content"] = (turn.get("content") or "") + text
            else:
                raise _bad(
                    f"{where}.role must be one of user, assistant, system, developer", "input"
                )
        elif kind == "reasoning":
            text = _content_text(item.get("content"), f"{where}.content", self.media)
            if not text and isinstance(item.get("encrypted_content"), str):
                text = item["encrypted_content"]  # ours: the reasoning text itself
            if not text:
                # a summary stands in for content that was not sent: its parts are not counted
                summary = Media(self.media.policy)
                text = _content_text(item.get("summary"), f"{where}.summary", summary)
            self.reasoning.append(text)
        elif kind == "function_call":
            args = item.get("arguments", "")
            if not isinstance(args, str):
                # OpenAI's API requires the arguments as JSON text, as the model wrote them.
                raise _bad(
                    f"{where}.arguments must be a JSON string (the arguments as JSON text), "
                    f"not {json_type(args)}",
                    "input",
                )
            self._call(item.get("call_id"), item.get("name"), args, where)
        elif kind == "custom_tool_call":
            raw = item.get("input", "")
            if not isinstance(raw, str):
                raise _bad(f"{where}.input must be a string, not {json_type(raw)}", "input")
            args = orjson.dumps({"input": raw}).decode()
            self._call(item.get("call_id"), item.get("name"), args, where)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, where)
        elif kind == "item_reference":
            raise _bad(
                f"{where}: item_reference needs stored responses, which this gateway "
                "does not keep; send the items themselves",
                "input",
            )
        else:
            raise _bad(f"{where}: input item type {kind!r} is not supported here", "input")


def _tools(
    tools: Any, ctx: Context, notes: list[str], offered: ToolNames, where: str = "tools"
) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad(f"'{where}' must be a list", "tools")
    out: list[dict[str, Any]] = []
    for k, t in enumerate(tools):
        at = f"{where}[{k}]"
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "namespace" and isinstance(t.get("tools"), list):
            for inner in _tools(t["tools"], ctx, notes, offered, f"{at}.tools"):
                ctx.namespaces[inner["function"]["name"]] = str(t.get("name", ""))
                out.append(inner)
            continue
        if kind in _DROPPED_TOOLS:
            notes.append(f"server-tool-dropped={kind}")
            continue
        if kind in _REFUSED_TOOLS:
            raise _bad(
                f"{at}: the built-in tool {kind!r} runs on OpenAI's servers and no "
                "backend of this gateway can run it; offer a function tool instead",
                "tools",
            )
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"{at} needs a 'type' of function or custom and a string 'name'", "tools")
        if kind == "function":
            offered.add(t["name"], "function", at)
            params = t.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _bad(
                    f"{at}.parameters must be a JSON schema object, not {json_type(params)}",
                    "tools",
                )
            fn = {"name": t["name"], "description": t.get("description") or ""}
            fn["parameters"] = params or {"type": "object", "properties": {}}
            if t.get("strict") is not None:
                fn["strict"] = t["strict"]
            out.append({"type": "function", "function": fn})
        elif kind == "custom":
            check_custom_tool(t.get("description"), t.get("format"), at, nested=False)
            offered.add(t["name"], "custom", at)
            ctx.custom_tools.add(t["name"])
            out.append(custom_tool_function(t["name"], t.get("description"), t.get("format")))
        else:
            raise _bad(f"{at}: tool type {kind!r} is not supported", "tools")
    return out


def _server_tool(kind: Any) -> bool:
    """A built-in tool type that OpenAI's servers run (``web_search`` and its dated kin)."""
    return isinstance(kind, str) and (
        kind in _SERVER_TOOLS or kind.startswith(("web_search", "computer_use"))
    )


@dataclass(slots=True)
class _Allowed:
    """``tool_choice: allowed_tools``, checked: applied once ``tools`` is translated."""

    mode: Any
    names: list[str]
    kinds: list[ToolKind]


@dataclass(slots=True)
class _Named:
    """A ``tool_choice`` naming one tool: checked against ``tools`` once they are read."""

    kind: ToolKind
    name: str


_CHOICE_HELP = (
    "'tool_choice' must be auto, none, required, "
    '{"type": "function", "name": ...}, {"type": "custom", "name": ...}, a built-in tool '
    '(such as {"type": "web_search"}) or {"type": "allowed_tools", "mode": "auto" or '
    '"required", "tools": [{"type": "function", "name": ...}, ...]}'
)


def _allowed(tc: dict[str, Any]) -> _Allowed:
    entries = tc.get("tools")
    if not isinstance(entries, list) or not entries:
        raise _bad(
            "'tool_choice.tools' must be a non-empty list of the allowed tools, for type "
            "allowed_tools",
            "tool_choice",
        )
    names = []
    kinds: list[ToolKind] = []
    for k, entry in enumerate(entries):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if _server_tool(kind):
            continue  # left out of 'tools' too, with a note there
        name = entry.get("name") if isinstance(entry, dict) else None
        if kind not in ("function", "custom") or not isinstance(name, str):
            raise _bad(
                f'\'tool_choice.tools[{k}]\' must be {{"type": "function", "name": ...}}, '
                '{"type": "custom", "name": ...} or a built-in tool',
                "tool_choice",
            )
        names.append(name)
        kinds.append(kind)
    return _Allowed(tc.get("mode"), names, kinds)


def _tool_choice(tc: Any, notes: list[str]) -> Any:
    """The chat ``tool_choice`` for the Responses one (an ``_Allowed`` for allowed_tools).
    A built-in tool's choice becomes auto, as its tool is left out or refused."""
    if tc in ("auto", "none", "required"):
        return tc
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind in ("function", "custom") and isinstance(tc.get("name"), str):
        return _Named(kind, tc["name"])
    if kind == "allowed_tools":
        return _allowed(tc)
    if _server_tool(kind):
        notes.append(f"tool-choice-downgraded={kind}")
        return "auto"
    raise _bad(_CHOICE_HELP, "tool_choice")


def _reasoning(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``reasoning.effort``: none -> non-thinking; any other effort -> thinking at that
    effort (``reasoning_effort``, mapped by the catalog); absent -> the router decides."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise _bad("'reasoning' must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return
    if effort not in _EFFORTS:
        raise _bad("'reasoning.effort' must be one of: " + ", ".join(_EFFORTS), "reasoning")
    if effort == "none":
        out["thinking"] = {"type": "disabled"}
    else:
        out["reasoning_effort"] = effort


def _text_format(
    body: dict[str, Any], out: dict[str, Any], system: list[str], notes: list[str]
) -> bool:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return False
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return False
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
        return True
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        check_json_schema(fmt, "text.format", "text")
        # V4 has JSON mode, not schema-constrained decoding: the schema goes in the prompt.
        notes.append("json-schema-as-json-object")
        out["response_format"] = {"type": "json_object"}
        system.append(json_schema_instruction(fmt["schema"]))
        return True
    raise _bad(
        "'text.format.type' must be text, json_object or json_schema (with 'schema')", "text"
    )


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    reasoning: dict[str, Any] = body.get("reasoning") or {}
    text: dict[str, Any] = body.get("text") or {}
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = text if isinstance(text, dict) else {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def parse_responses(
    raw: bytes, *, max_bytes: int, max_messages: int, media: MediaPolicy = "note"
) -> Call:
    body = load_json_object(raw, max_bytes)
    model = check_model(body.get("model"))
    check_params(body, RESPONSES_PARAMS)
    if body.get("previous_response_id") is not None:
        raise _bad(
            "previous_response_id is not supported: this gateway stores no responses; send "
            "the whole conversation in 'input' (with store: false, as Codex does)",
            "previous_response_id",
        )
    if body.get("conversation") is not None:
        raise _bad(
            "'conversation' is not supported: send the conversation in 'input'", "conversation"
        )
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("'input' is required: a string or a non-empty list of items", "input")
    if len(items) > max_messages:
        raise _bad(f"'input' has {len(items)} items, over the limit of {max_messages}", "input")
    history = _History(media)
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise _bad("'instructions' must be a string", "instructions")
        history.system.append(body["instructions"])
    for i, item in enumerate(items):
        history.add(item, i)
    ctx = Context(echo=_echo(body))
    include = body.get("include")
    ctx.encrypted_reasoning = isinstance(include, list) and "reasoning.encrypted_content" in include
    notes = history.media.notes()
    out: dict[str, Any] = {"model": model}
    # Checked even with no tools to choose from: a malformed field is the client's bug.
    tc = body.get("tool_choice")
    choice = _tool_choice(tc, notes) if tc is not None else None
    offered = ToolNames()
    tools = _tools(body["tools"], ctx, notes, offered) if body.get("tools") else []
    if isinstance(choice, _Named):
        offered.choose(choice.name, choice.kind, "tool_choice.name")
        choice = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, _Allowed):
        for k, (kind, name) in enumerate(zip(choice.kinds, choice.names, strict=True)):
            offered.same_kind(name, kind, f"tool_choice.tools[{k}]")
    if tools:
        out["tools"] = tools
        if isinstance(choice, _Allowed):
            allowed_tools(out, choice.mode, choice.names, notes, "tool_choice")
        elif choice is not None:
            out["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    if isinstance(choice, _Allowed) and "tools" not in out:
        allowed_tools(out, choice.mode, choice.names, notes, "tool_choice")
    json_mode = _text_format(body, out, history.system, notes)
    system = [s for s in history.system if s]
    out["messages"] = ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + (
        history.messages
    )
    if not history.messages:
        raise _bad("'input' has no user, assistant or tool item to answer", "input")
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        max_tokens = positive_int(max_tokens, "max_output_tokens")
        out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        out["user_id"] = user
    _reasoning(body, out)
    stream = stream_flag(body)
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return Call(
        protocol="responses",
        endpoint="chat",
        body=out,
        model=model,
        stream=stream,
        include_usage=stream,
        max_tokens=max_tokens,
        limit_field="max_output_tokens",
        prompt_tokens_est=estimate_prompt_tokens(out["messages"], out.get("tools")),
        last_user_text=history.last_user[-4000:],
        prompt_chars=sum(len(str(m.get("content") or "")) for m in out["messages"]),
        has_tools=bool(out.get("tools")),
        json_mode=json_mode,
        notes=notes,
        context=ctx,
    )


# ---- response -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def responses_usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_hit_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


def response_status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "insufficient_system_resource":
        raise UpstreamUnavailable(_CUT_MESSAGE)
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class Renderer:
    """Builds the output items and the response object of one request."""

    def __init__(self, ctx: Context, model: str) -> None:
        self.ctx = ctx
        self.model = model
        self.id = new_id("resp")
        self.created = int(time.time())

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        *,
        incomplete: dict[str, str] | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "previous_response_id": None,
            "store": False,
            "truncation": "disabled",
            "usage": responses_usage(usage) if usage is not None else None,
            **self.ctx.echo,
        }

    def reasoning(
        self, text: str, item_id: str | None = None, status: str = "completed"
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "type": "reasoning",
            "id": item_id or new_id("rs"),
            "status": status,
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
        }
        if self.ctx.encrypted_reasoning:
            # Opaque to the client, which sends it back; V4 needs the text itself again.
            item["encrypted_content"] = text
        return item

    @staticmethod
    def message(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
        return {
            "type": "message",
            "id": item_id or new_id("msg"),
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }

    def call(
        self,
        call_id: str,
        name: str,
        arguments: str,
        item_id: str | None = None,
        status: str = "completed",
    ) -> dict[str, Any]:
        """A function or custom tool call. An ``incomplete`` one was cut off: a custom
        call's input is then what the model wrote of it (never the raw ``{"input": ...``
        wrapper its function is called with upstream)."""
        if name in self.ctx.custom_tools:
            cut = status == "incomplete"
            return {
                "type": "custom_tool_call",
                "id": item_id or new_id("ctc"),
                "status": status,
                "call_id": call_id,
                "name": name,
                "input": custom_tool_input_so_far(arguments)
                if cut
                else custom_tool_input(arguments),
            }
        item = {
            "type": "function_call",
            "id": item_id or new_id("fc"),
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
        if name in self.ctx.namespaces:
            item["namespace"] = self.ctx.namespaces[name]
        return item


def to_response(resp: dict[str, Any], call: Call) -> dict[str, Any]:
    r = Renderer(call.context, call.model)
    choice = (resp.get("choices") or [{}])[0]
    status, incomplete = response_status(choice.get("finish_reason"))
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        output.append(r.reasoning(msg["reasoning_content"]))
    if msg.get("content"):
        output.append(r.message(msg["content"]))
    calls = msg.get("tool_calls") or ()
    for k, tc in enumerate(calls):
        fn = tc.get("function") or {}
        # A response cut short ends in the item it was writing: that one is incomplete.
        last = status == "incomplete" and k == len(calls) - 1
        output.append(
            r.call(
                tc.get("id") or new_id("call"),
                fn.get("name", ""),
                fn.get("arguments") or "",
                status="incomplete" if last else "completed",
            )
        )
    if status == "incomplete" and output and output[-1]["type"] in ("reasoning", "message"):
        output[-1]["status"] = "incomplete"  # cut while it was written
    usage = usage_from_openai(resp.get("usage")) or Usage()
    return r.response(status, output, usage, incomplete=incomplete)


def _stream_error(err: TiergateError) -> bytes:
    """Mid-stream failure, in the OpenAI framing the translator reads back."""
    body = {"error": {"message": err.message, "type": err.type, "code": err.code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _translate_stream(p: Prepared, events: Events) -> Events:
    # Imported here: the stream module builds its items with this module's Renderer.
    from gateway.protocols.responses_stream import translate_stream

    return translate_stream(events, p.call)


EDGE = Edge(
    render=lambda p, body: orjson.dumps(to_response(body, p.call)),
    stream=_translate_stream,
    stream_error=_stream_error,
    headers=lambda p: {"x-request-id": p.request_id},
)
