"""Anthropic Messages <-> the internal OpenAI-chat request, both ways, streaming included.

A ``/v1/messages`` body becomes a ``Call`` whose body is OpenAI chat (system prompt, text,
tool_use -> ``tool_calls``, tool_result -> ``tool`` messages, thinking blocks ->
``reasoning_content`` so the hosted API's thinking + tools round trip holds), and runs
the same pipeline as chat. The DeepSeek-shaped answer is turned back into a message or
Anthropic's event stream (message_start, content_block_start/delta/stop, message_delta
with usage, message_stop). Cache hits are reported as ``cache_read_input_tokens``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson

from gateway.errors import sse_error_event
from gateway.parse import Call, load_json_object
from policies.errors import InvalidRequest, TiergateError, UpstreamError
from policies.usage import Usage, usage_from_openai

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "insufficient_system_resource": "end_turn",
}
_BYTES_PER_TOKEN = 3


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _text_blocks(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, b in enumerate(content):
            if (
                not isinstance(b, dict)
                or b.get("type") != "text"
                or not isinstance(b.get("text"), str)
            ):
                raise _bad(
                    f'{where}[{j}] must be a text block {{"type": "text", "text": ...}}', where
                )
            out.append(b["text"])
        return "\n".join(out)
    raise _bad(f"{where} must be a string or a list of text blocks", where)


def _assistant(blocks: list[Any], i: int, tool_ids: set[str]) -> dict[str, Any]:
    text, reasoning, calls = [], [], []
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "thinking" and isinstance(b.get("thinking"), str):
            reasoning.append(b["thinking"])
        elif kind == "redacted_thinking":
            continue
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(f"{where}: a tool_use block needs string 'id' and 'name'", "messages")
            tool_ids.add(b["id"])
            args = b.get("input", {})
            calls.append(
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": orjson.dumps(args).decode()},
                }
            )
        else:
            raise _bad(
                f"{where}: unsupported or malformed block type {kind!r} in an assistant turn",
                "messages",
            )
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _user(blocks: list[Any], i: int, tool_ids: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    text: list[str] = []
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_result":
            tid = b.get("tool_use_id")
            if tid not in tool_ids:
                raise _bad(
                    f"{where}: tool_result refers to tool_use_id {tid!r}, which no earlier "
                    "assistant tool_use block declared",
                    "messages",
                )
            content = b.get("content", "")
            result = (
                content if isinstance(content, str) else _text_blocks(content, f"{where}.content")
            )
            if b.get("is_error"):
                result = "ERROR: " + result
            out.append({"role": "tool", "tool_call_id": tid, "content": result})
        elif kind == "image" or kind == "document":
            raise _bad(
                f"{where}: {kind} blocks are not supported by DeepSeek V4; send text", "messages"
            )
        else:
            raise _bad(
                f"{where}: unsupported or malformed block type {kind!r} in a user turn", "messages"
            )
    if text:
        out.append({"role": "user", "content": "\n".join(text)})
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    out = []
    for k, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools[{k}] needs a string 'name'", "tools")
        out.append(
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
        )
    return out


def _tool_choice(tc: Any) -> Any:
    if not isinstance(tc, dict):
        raise _bad('\'tool_choice\' must be an object like {"type": "auto"}', "tool_choice")
    kind = tc.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(tc.get("name"), str):
        return {"type": "function", "function": {"name": tc["name"]}}
    raise _bad("'tool_choice.type' must be auto, any, tool (with name) or none", "tool_choice")


def parse_messages(raw: bytes, *, max_bytes: int, max_messages: int) -> Call:
    body = load_json_object(raw, max_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required (a non-empty string)", "model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("max_tokens: Field required (a positive integer)", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required (a non-empty list)", "messages")
    if len(messages) > max_messages:
        raise _bad(
            f"'messages' has {len(messages)} entries, over the limit of {max_messages}", "messages"
        )
    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _text_blocks(system, "system")})
    tool_ids: set[str] = set()
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role must be 'user' or 'assistant'", "messages")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise _bad(f"messages[{i}].content must be a string or a list of blocks", "messages")
        if m["role"] == "assistant":
            chat.append(_assistant(blocks, i, tool_ids))
        else:
            turn = _user(blocks, i, tool_ids)
            chat.extend(turn)
            last_user = next(
                (t["content"] for t in reversed(turn) if t["role"] == "user"), last_user
            )
    out: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ):
        if body.get(src) is not None:
            out[dst] = body[src]
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    thinking = body.get("thinking")
    if thinking is None:
        out["thinking"] = {"type": "disabled"}  # Anthropic's default: no extended thinking
    elif isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled", "adaptive"):
        out["thinking"] = {"type": "disabled" if thinking["type"] == "disabled" else "enabled"}
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget >= 32_000:
            out["reasoning_effort"] = "max"
    else:
        raise _bad(
            '\'thinking\' must be {"type": "enabled", "budget_tokens": N} or disabled', "thinking"
        )
    user = (
        (body.get("metadata") or {}).get("user_id")
        if isinstance(body.get("metadata"), dict)
        else None
    )
    if isinstance(user, str):
        out["user_id"] = user
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    chars = sum(len(str(m.get("content") or "")) for m in chat)
    return Call(
        protocol="anthropic",
        endpoint="chat",
        body=out,
        model=model,
        stream=stream,
        include_usage=stream,
        max_tokens=max_tokens,
        prompt_tokens_est=len(raw) // _BYTES_PER_TOKEN + 1,
        last_user_text=last_user[-4000:],
        prompt_chars=chars,
        has_tools=bool(body.get("tools")),
    )


def count_tokens(raw: bytes, *, max_bytes: int) -> dict[str, int]:
    """An estimate for ``/v1/messages/count_tokens`` (no tokenizer in the gateway)."""
    body = load_json_object(raw, max_bytes)
    text = orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")])
    return {"input_tokens": max(1, len(text) // 4)}


def anthropic_usage(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.cache_miss_tokens,
        "cache_read_input_tokens": u.cache_hit_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": u.output_tokens,
    }


def _msg_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def to_message(resp: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw": fn.get("arguments")}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args}
        )
    usage = usage_from_openai(resp.get("usage")) or Usage()
    return {
        "id": _msg_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class StreamTranslator:
    """OpenAI chat-completion chunks (DeepSeek-shaped) -> Anthropic stream events."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.index = -1
        self.open: str | None = None  # "thinking" | "text" | "tool"
        self.tool_index: dict[int, int] = {}
        self.finish: str | None = None
        self.usage = Usage()

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": _msg_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"index": self.index})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + _event("content_block_start", {"index": self.index, "content_block": block})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_openai(chunk["usage"]) or self.usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self.open != "thinking":
                    out += self._begin("thinking", {"type": "thinking", "thinking": ""})
                out += _event(
                    "content_block_delta",
                    {
                        "index": self.index,
                        "delta": {"type": "thinking_delta", "thinking": delta["reasoning_content"]},
                    },
                )
            if delta.get("content"):
                if self.open == "thinking":
                    out += _event(
                        "content_block_delta",
                        {
                            "index": self.index,
                            "delta": {"type": "signature_delta", "signature": ""},
                        },
                    )
                if self.open != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out += _event(
                    "content_block_delta",
                    {
                        "index": self.index,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    },
                )
            for call in delta.get("tool_calls") or ():
                k = call.get("index", 0)
                fn = call.get("function") or {}
                if k not in self.tool_index:
                    out += self._begin(
                        "tool",
                        {
                            "type": "tool_use",
                            "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:20]}",
                            "name": fn.get("name", ""),
                            "input": {},
                        },
                    )
                    self.tool_index[k] = self.index
                if fn.get("arguments"):
                    out += _event(
                        "content_block_delta",
                        {
                            "index": self.tool_index[k],
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        },
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        stop = _STOP.get(self.finish or "stop", "end_turn")
        return (
            self._close()
            + _event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": anthropic_usage(self.usage),
                },
            )
            + _event("message_stop", {})
        )


async def translate_stream(
    events: AsyncGenerator[bytes, None], model: str
) -> AsyncGenerator[bytes, None]:
    tr = StreamTranslator(model)
    async with aclosing(events):  # closing this stream early closes the relay too
        yield tr.start()
        async for raw in events:
            if not raw.startswith(b"data: "):
                continue  # keep-alive comments
            payload = raw[6:].strip()
            if payload == b"[DONE]":
                yield tr.end()
                return
            chunk = orjson.loads(payload)
            if "error" in chunk and not chunk.get("choices"):
                err = chunk["error"]
                yield sse_error_event(UpstreamError(str(err.get("message", err))), "anthropic")
                return
            out = tr.feed(chunk)
            if out:
                yield out


def stream_error(err: TiergateError) -> bytes:
    """Mid-stream failure, in the OpenAI framing the translator reads back."""
    return b"data: " + orjson.dumps({"error": {"message": err.message, "type": err.type}}) + b"\n\n"
