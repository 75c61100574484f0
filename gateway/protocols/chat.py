"""OpenAI chat completions and (FIM) completions: DeepSeek's shape passes through.

Parsing is gateway/parse.py (the internal request is OpenAI chat already); rendering puts
back the model name the client asked for, in the answer and in every stream chunk, gives
a tool call that came without an id one (the client answers the call by it), and turns
the calls of a custom tool (offered upstream as a function taking its input as one string
argument) back into custom tool calls.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import sse_error_event
from gateway.pipeline import Prepared
from gateway.protocols.responses import new_id
from gateway.serve import Edge, Events
from gateway.tools import custom_tool_input

# The first "model" key of a chunk: in JSON text an unescaped quote only delimits keys and
# strings, so this cannot match inside generated text.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def _custom_names(p: Prepared) -> frozenset[str]:
    ctx = p.call.context
    return ctx if isinstance(ctx, frozenset) else frozenset()


def _custom_call(call_id: Any, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "custom",
        "custom": {"name": name, "input": custom_tool_input(arguments)},
    }


def _restore_custom_calls(body: dict[str, Any], names: frozenset[str]) -> None:
    for choice in body.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if not isinstance(calls, list):
            continue
        for k, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and fn.get("name") in names:
                calls[k] = _custom_call(call.get("id"), fn["name"], fn.get("arguments") or "")


def _name_calls(body: dict[str, Any]) -> None:
    for choice in body.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and not call.get("id"):
                call["id"] = new_id("call")


def _chat_render(p: Prepared, body: dict[str, Any]) -> bytes:
    body["model"] = p.call.model  # the name the client asked for, whichever option served it
    _name_calls(body)
    names = _custom_names(p)
    if names:
        _restore_custom_calls(body, names)
    return orjson.dumps(body)


class _CallIds:
    """A streamed tool call that came without an id gets one in its first fragment, the
    one a client reads the id from (the argument fragments after it carry none anyway)."""

    def __init__(self) -> None:
        self.seen: set[tuple[Any, Any]] = set()  # (choice index, tool index)

    def feed(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            for call in calls if isinstance(calls, list) else ():
                if not isinstance(call, dict):
                    continue
                key = (choice.get("index", 0), call.get("index", 0))
                if key not in self.seen:
                    self.seen.add(key)
                    if not call.get("id"):
                        call["id"] = new_id("call")


class _CustomCalls:
    """A stream's custom tool calls: a custom call's argument fragments are held back and
    the call is sent whole, as a custom call, in its choice's finishing chunk."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.held: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> tool index -> call
        self.envelope: dict[str, Any] = {"object": "chat.completion.chunk"}

    def _take(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        if not isinstance(delta, dict) or not isinstance(calls, list):
            return
        held = self.held.setdefault(choice.get("index", 0), {})
        kept = []
        for call in calls:
            if not isinstance(call, dict):
                kept.append(call)
                continue
            k = call.get("index", 0)
            function = call.get("function")
            fn: dict[str, Any] = function if isinstance(function, dict) else {}
            if k not in held and fn.get("name") in self.names:
                held[k] = {"id": call.get("id"), "name": fn["name"], "args": []}
            if k in held:
                held[k]["args"].append(fn.get("arguments") or "")
            else:
                kept.append(call)
        if kept:
            delta["tool_calls"] = kept
        else:
            del delta["tool_calls"]

    def _release(self, index: int) -> list[dict[str, Any]]:
        return [
            {"index": k, **_custom_call(c["id"], c["name"], "".join(c["args"]))}
            for k, c in sorted(self.held.pop(index, {}).items())
        ]

    def feed(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "object", "created", "model"):
            if key in chunk:
                self.envelope[key] = chunk[key]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            self._take(choice)
            if choice.get("finish_reason"):
                ready = self._release(choice.get("index", 0))
                if ready:
                    delta = choice.setdefault("delta", {})
                    delta["tool_calls"] = [*(delta.get("tool_calls") or ()), *ready]

    def rest(self) -> dict[str, Any] | None:
        """A chunk with the calls of choices that never finished (a stream cut short)."""
        choices = []
        for i in list(self.held):
            ready = self._release(i)
            if ready:
                choices.append({"index": i, "delta": {"tool_calls": ready}})
        return {**self.envelope, "choices": choices} if choices else None


async def _chat_stream(p: Prepared, events: Events) -> Events:
    name = b'"model":' + orjson.dumps(p.call.model)
    names = _custom_names(p)
    calls = _CustomCalls(names) if names else None
    ids = _CallIds()
    async for event in events:
        if event[:6] != b"data: ":
            yield event
            continue
        if calls is not None or b'"tool_calls"' in event:
            event = _tool_event(ids, calls, event)
        yield _MODEL_FIELD.sub(lambda _: name, event, count=1)


def _tool_event(ids: _CallIds, calls: _CustomCalls | None, event: bytes) -> bytes:
    payload = event[6:].strip()
    if payload == b"[DONE]":
        rest = calls.rest() if calls is not None else None
        return event if rest is None else b"data: " + orjson.dumps(rest) + b"\n\n" + event
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return event
    ids.feed(chunk)
    if calls is not None:
        calls.feed(chunk)
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


EDGE = Edge(
    render=_chat_render,
    stream=_chat_stream,
    stream_error=lambda err: sse_error_event(err, "openai"),
    headers=lambda p: {"x-request-id": p.request_id},
)
