"""Anthropic Messages <-> the internal OpenAI-chat request, both ways, streaming included.

A ``/v1/messages`` body becomes a ``Call`` whose body is OpenAI chat (system prompt, text,
tool_use -> ``tool_calls``, tool_result -> ``tool`` messages, thinking blocks ->
``reasoning_content`` so the hosted API's thinking + tools round trip holds), and runs
the same pipeline as chat. The DeepSeek-shaped answer is turned back into a message or
Anthropic's event stream (message_start, content_block_start/delta/stop, message_delta
with usage, message_stop). Cache hits are reported as ``cache_read_input_tokens``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from gateway.errors import sse_error_event
from gateway.media import Media, MediaPolicy
from gateway.parse import (
    ANTHROPIC_PARAMS,
    MAX_OUTPUT_LIMIT,
    Call,
    check_id,
    check_model,
    check_params,
    estimate_prompt_tokens,
    load_json_object,
    over_output_limit,
    shown,
    stream_flag,
)
from gateway.pipeline import Prepared
from gateway.protocols.relay import translate_relayed
from gateway.protocols.tool_order import Args, Begin, InOrder, Step
from gateway.serve import Edge
from gateway.tools import ToolNames
from policies.errors import (
    InvalidRequest,
    TiergateError,
    UpstreamError,
    UpstreamUnavailable,
    json_type,
)
from policies.usage import Usage, usage_from_openai

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# DeepSeek's mid-generation failure: the answer is cut, so it must not look complete.
_CUT = "insufficient_system_resource"
_CUT_MESSAGE = (
    "the upstream model ran out of resources mid-answer (insufficient_system_resource); "
    "the answer was cut: retry the request"
)
# Anthropic tool types that run on Anthropic's servers (or need its fixed schemas); no V4
# backend can run them, so they are left out of the request and the route reason says so.
_SERVER_TOOL_PREFIXES = (
    "web_search_",
    "web_fetch_",
    "code_execution_",
    "bash_",
    "text_editor_",
    "computer_",
    "memory_",
    "tool_search_",
    "mcp_",
)


def signature_of(thinking: str) -> str:
    """An opaque, stable signature for a thinking block (clients send blocks back with it)."""
    return "tg1." + hashlib.blake2b(thinking.encode(), digest_size=16).hexdigest()


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _string(block: dict[str, Any], key: str, where: str) -> str:
    """A text or thinking block's string, or a 400 that says which field is wrong."""
    value = block.get(key)
    if not isinstance(value, str):
        raise _bad(
            f"{where}: '{key}' of a {key} block must be a string, not {json_type(value)}",
            "messages",
        )
    return value


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
        if kind == "text":
            text.append(_string(b, "text", where))
        elif kind == "thinking":
            reasoning.append(_string(b, "thinking", where))
        elif kind == "redacted_thinking":
            continue
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(f"{where}: a tool_use block needs string 'id' and 'name'", "messages")
            check_id(b["id"], f"{where}.id", "the id its tool_result answers")
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


def _media(media: Media, block: dict[str, Any], where: str) -> str:
    """An image or document block as text, per the media policy (gateway/media.py)."""
    kind = str(block.get("type"))
    source = block.get("source")
    if kind == "document" and isinstance(source, dict) and source.get("type") == "text":
        return str(source.get("data", ""))  # a plain-text document is just text
    return media.replace(kind, where, f"{kind} blocks", "messages")


def _search_result(block: dict[str, Any], where: str) -> str:
    """A ``search_result`` block (a search hit the client found: its source, title and text
    blocks) as the text the model reads."""
    source, title, content = block.get("source"), block.get("title"), block.get("content")
    if (
        not isinstance(source, str)
        or not isinstance(title, str)
        or not isinstance(content, list)
        or not content
    ):
        raise _bad(
            f"{where}: a search_result block needs a string 'source', a string 'title' and "
            "'content', a non-empty list of text blocks",
            "messages",
        )
    citations = block.get("citations")
    if citations is not None and not isinstance(citations, dict):
        raise _bad(
            f'{where}.citations must be an object like {{"enabled": true}}, not '
            f"{json_type(citations)}",
            "messages",
        )
    enabled = (citations or {}).get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise _bad(
            f"{where}.citations.enabled must be true or false, not {json_type(enabled)}",
            "messages",
        )
    texts = []
    for k, b in enumerate(content):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise _bad(
                f'{where}.content[{k}] must be a text block {{"type": "text", "text": ...}}',
                "messages",
            )
        texts.append(b["text"])
    return "\n".join([f"Search result: {title}", f"Source: {source}", *texts])


def _tool_result_text(content: Any, where: str, media: Media) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of blocks", "messages")
    parts = []
    for k, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append(_string(b, "text", f"{where}[{k}]"))
        elif kind in ("image", "document"):
            parts.append(_media(media, b, f"{where}[{k}]"))
        elif kind == "search_result":
            parts.append(_search_result(b, f"{where}[{k}]"))
        else:
            raise _bad(
                f"{where}[{k}]: unsupported block type {kind!r} in a tool_result", "messages"
            )
    return "\n".join(parts)


def _user(blocks: list[Any], i: int, tool_ids: set[str], media: Media) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    text: list[str] = []
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            text.append(_string(b, "text", where))
        elif kind == "tool_result":
            tid = b.get("tool_use_id")
            check_id(tid, f"{where}.tool_use_id", "the id of the tool_use block it answers")
            if tid not in tool_ids:
                raise _bad(
                    f"{where}: tool_result refers to tool_use_id {tid!r}, which no earlier "
                    "assistant tool_use block declared",
                    "messages",
                )
            result = _tool_result_text(b.get("content", ""), f"{where}.content", media)
            if b.get("is_error"):
                result = "ERROR: " + result
            out.append({"role": "tool", "tool_call_id": tid, "content": result})
        elif kind == "image" or kind == "document":
            text.append(_media(media, b, where))
        elif kind == "search_result":
            text.append(_search_result(b, where))
        else:
            raise _bad(
                f"{where}: unsupported or malformed block type {kind!r} in a user turn", "messages"
            )
    if text:
        out.append({"role": "user", "content": "\n".join(text)})
    return out


def _tools(tools: Any, notes: list[str], offered: ToolNames) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    out = []
    for k, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools[{k}] needs a string 'name'", "tools")
        kind = t.get("type")
        if isinstance(kind, str) and kind.startswith(_SERVER_TOOL_PREFIXES):
            offered.add(t["name"], "server", f"tools[{k}]")
            notes.append(f"server-tool-dropped={kind}")
            continue
        if kind not in (None, "custom"):
            raise _bad(
                f"tools[{k}]: tool type {kind!r} is not supported; send a custom tool with "
                "'name' and 'input_schema'",
                "tools",
            )
        offered.add(t["name"], "function", f"tools[{k}]")
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


def _tool_choice(tc: Any, offered: ToolNames, notes: list[str]) -> Any:
    """The chat ``tool_choice``; a named tool must be in ``tools`` (one of the server tools,
    left out, makes the choice auto)."""
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
        if offered.choose(tc["name"], None, "tool_choice.name") == "server":
            notes.append(f"tool-choice-downgraded={tc['name']}")
            return "auto"
        return {"type": "function", "function": {"name": tc["name"]}}
    raise _bad("'tool_choice.type' must be auto, any, tool (with name) or none", "tool_choice")


_EFFORTS = ("low", "medium", "high", "max")
_MIN_BUDGET = 1024  # Anthropic's least thinking budget


def _check_budget(budget: Any) -> None:
    """``thinking.budget_tokens`` of an enabled thinking: an integer of at least 1024, as
    Anthropic's API requires. It is not held under ``max_tokens``: with interleaved
    thinking (Claude Code's beta) Anthropic allows a budget over it."""
    if budget is None:
        raise _bad("thinking.budget_tokens: Field required (an integer, at least 1024)", "thinking")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise _bad(
            f"thinking.budget_tokens: must be an integer, not {json_type(budget)}", "thinking"
        )
    if budget < _MIN_BUDGET:
        raise _bad(
            f"thinking.budget_tokens: must be at least {_MIN_BUDGET}, not {budget}", "thinking"
        )


def _thinking(body: dict[str, Any], out: dict[str, Any]) -> None:
    """Anthropic's thinking switch and ``output_config.effort`` -> the DeepSeek fields.

    ``enabled`` thinks (``budget_tokens >= 32000`` or effort ``max`` asks for max effort);
    no ``thinking`` or ``disabled`` does not (Anthropic's default). ``adaptive`` lets the
    model decide, which here means the gateway does: effort ``low`` is non-thinking,
    ``max`` is thinking at max effort, and otherwise the mode is left to the router (the
    catalog's default for a pinned tier, the classifier for ``auto``).
    """
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _bad("'output_config' must be an object", "output_config")
    effort = (config or {}).get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise _bad("'output_config.effort' must be one of: " + ", ".join(_EFFORTS), "output_config")
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if thinking is not None and kind not in ("enabled", "disabled", "adaptive"):
        raise _bad(
            '\'thinking\' must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} '
            'or {"type": "disabled"}',
            "thinking",
        )
    if kind == "adaptive":
        if effort == "low":
            out["thinking"] = {"type": "disabled"}
        elif effort == "max":
            out["reasoning_effort"] = "max"
        return
    out["thinking"] = {"type": "enabled" if kind == "enabled" else "disabled"}
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if kind == "enabled":
        _check_budget(budget)
    if kind == "enabled" and (effort == "max" or (isinstance(budget, int) and budget >= 32_000)):
        out["reasoning_effort"] = "max"


def _system(system: Any, messages: list[Any]) -> list[str]:
    """The system prompt: the ``system`` field, then any ``role: system`` messages in order."""
    parts = [_text_blocks(system, "system")] if system is not None else []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "system":
            parts.append(_text_blocks(m.get("content"), f"messages[{i}].content"))
    return [p for p in parts if p]


def _prefill(chat: list[dict[str, Any]], body: dict[str, Any]) -> None:
    """A final assistant turn, as Anthropic reads it: a prefix the answer continues.

    Its text goes upstream as DeepSeek's chat prefix completion (``"prefix": true``; the
    engines send it to the hosted API's ``/beta`` base or ask vLLM to continue the final
    message), so the answer is only the continuation. An empty final turn is left out.
    Anthropic's rules hold: the text may not end in whitespace, a final turn may not hold
    tool_use blocks (no tool_result answers them), and thinking allows no prefill.
    """
    last = chat[-1] if chat else None
    if last is None or last["role"] != "assistant":
        return
    if last.get("tool_calls"):
        ids = ", ".join(c["id"] for c in last["tool_calls"])
        raise _bad(
            f"messages: tool_use ids were found without tool_result blocks immediately after: "
            f"{ids}. Each tool_use block must have a corresponding tool_result block in the "
            "next message",
            "messages",
        )
    text = last.get("content") or ""
    if not text:
        chat.pop()
        return
    if text != text.rstrip():
        raise _bad(
            "messages: final assistant content cannot end with trailing whitespace", "messages"
        )
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        raise _bad(
            "messages: a final assistant turn (prefill) is not allowed with thinking "
            f"(thinking.type {thinking['type']!r}): end with a user turn or disable thinking",
            "messages",
        )
    last.pop("reasoning_content", None)
    last["prefix"] = True


def _max_tokens(body: dict[str, Any], required: bool) -> int | None:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        if not required:
            return None
        raise _bad("max_tokens: Field required (a positive integer)", "max_tokens")
    if over_output_limit(max_tokens):
        raise _bad(
            f"max_tokens: {shown(max_tokens)} is too large: ask for at most "
            f"{MAX_OUTPUT_LIMIT} tokens (each model's own output limit is lower)",
            "max_tokens",
        )
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _bad(
            f"max_tokens: must be an integer, not {orjson.dumps(max_tokens).decode()[:40]}",
            "max_tokens",
        )
    if max_tokens < 1:
        raise _bad(f"max_tokens: must be at least 1, not {max_tokens}", "max_tokens")
    return max_tokens


def parse_messages(
    raw: bytes,
    *,
    max_bytes: int,
    max_messages: int,
    media: MediaPolicy = "note",
    count_only: bool = False,
) -> Call:
    """A ``/v1/messages`` body as a chat ``Call``; ``count_only`` (count_tokens) makes
    ``max_tokens`` optional, as Anthropic's API does there."""
    body = load_json_object(raw, max_bytes)
    model = check_model(body.get("model"))
    max_tokens = _max_tokens(body, not count_only)
    check_params(body, ANTHROPIC_PARAMS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required (a non-empty list)", "messages")
    if len(messages) > max_messages:
        raise _bad(
            f"'messages' has {len(messages)} entries, over the limit of {max_messages}", "messages"
        )
    chat: list[dict[str, Any]] = []
    system = _system(body.get("system"), messages)
    if system:
        chat.append({"role": "system", "content": "\n\n".join(system)})
    tool_ids: set[str] = set()
    last_user = ""
    handler = Media(media)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise _bad(f"messages[{i}].role must be 'user', 'assistant' or 'system'", "messages")
        if m["role"] == "system":
            continue  # merged into the system prompt above
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise _bad(f"messages[{i}].content must be a string or a list of blocks", "messages")
        if m["role"] == "assistant":
            chat.append(_assistant(blocks, i, tool_ids))
        else:
            turn = _user(blocks, i, tool_ids, handler)
            chat.extend(turn)
            last_user = next(
                (t["content"] for t in reversed(turn) if t["role"] == "user"), last_user
            )
    _prefill(chat, body)
    if not any(m["role"] != "system" for m in chat):
        raise _bad("messages: at least one message with content is required", "messages")
    out: dict[str, Any] = {"model": model, "messages": chat}
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ):
        if body.get(src) is not None:
            out[dst] = body[src]
    notes = handler.notes()
    offered = ToolNames()
    if body.get("tools"):
        tools = _tools(body["tools"], notes, offered)
        if tools:
            out["tools"] = tools
    # Checked even with no tools to choose from: a malformed field is the client's bug.
    tc = body.get("tool_choice")
    choice = _tool_choice(tc, offered, notes) if tc is not None else None
    if choice is not None and out.get("tools"):
        out["tool_choice"] = choice
    _thinking(body, out)
    user = (body.get("metadata") or {}).get("user_id")
    if user is not None and not isinstance(user, str):
        raise _bad(f"metadata.user_id: must be a string, not {json_type(user)}", "metadata")
    if user is not None:
        out["user_id"] = user
    stream = stream_flag(body)
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
        prompt_tokens_est=estimate_prompt_tokens(chat, out.get("tools")),
        last_user_text=last_user[-4000:],
        prompt_chars=chars,
        has_tools=bool(out.get("tools")),
        notes=notes,
    )


def count_tokens(call: Call) -> dict[str, int]:
    """``/v1/messages/count_tokens`` for a body ``parse_messages`` took: the prompt estimate
    the gateway reserves for, over what goes upstream (system, messages, tools; media as
    the policy renders it). There is no tokenizer in the gateway, so it errs high."""
    return {"input_tokens": call.prompt_tokens_est}


def anthropic_usage(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.cache_miss_tokens,
        "cache_read_input_tokens": u.cache_hit_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": u.output_tokens,
    }


def _msg_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def _tool_use_id() -> str:
    """For a tool call that came without an id: the client answers it by this one."""
    return f"toolu_{uuid.uuid4().hex[:20]}"


def _stop(finish: str | None, matched: Any, stops: list[str]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` from the upstream finish.

    vLLM names the stop string it hit in the choice's ``stop_reason``; the hosted API does
    not, so a stop-sequence hit there reads as ``end_turn``.
    """
    if finish == _CUT:
        raise UpstreamUnavailable(_CUT_MESSAGE)
    if finish in (None, "stop") and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return _STOP.get(finish or "stop", "end_turn"), None


def stop_list(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    return [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []


def to_message(resp: dict[str, Any], model: str, stops: list[str] | None = None) -> dict[str, Any]:
    choice = (resp.get("choices") or [{}])[0]
    stop_reason, stop_sequence = _stop(
        choice.get("finish_reason"), choice.get("stop_reason"), stops or []
    )
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        thought = msg["reasoning_content"]
        content.append(
            {"type": "thinking", "thinking": thought, "signature": signature_of(thought)}
        )
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw": fn.get("arguments")}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _tool_use_id(),
                "name": fn.get("name"),
                "input": args,
            }
        )
    usage = usage_from_openai(resp.get("usage")) or Usage()
    return {
        "id": _msg_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(usage),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


class StreamTranslator(InOrder):
    """OpenAI chat-completion chunks (DeepSeek-shaped) -> Anthropic stream events."""

    def __init__(self, model: str, stops: list[str] | None = None) -> None:
        super().__init__()  # blocks are written one after another
        self.model = model
        self.stops = stops or []
        self.index = -1
        self.open: str | None = None  # "thinking" | "text" | "tool"
        self.finish: str | None = None
        self.matched: Any = None
        self.usage = Usage()
        self.thought = hashlib.blake2b(digest_size=16)

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
        out = b""
        if self.open == "thinking":
            # A thinking block ends with its signature, whatever comes next (text, tool_use).
            signature = "tg1." + self.thought.hexdigest()
            out = _event(
                "content_block_delta",
                {"index": self.index, "delta": {"type": "signature_delta", "signature": signature}},
            )
        self.open = None
        return out + _event("content_block_stop", {"index": self.index})

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
                out += self._say("thinking", delta["reasoning_content"])
            if delta.get("content"):
                out += self._say("text", delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._tool_steps(self.calls.feed(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        return out

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if kind == "thinking":
            if self.open != "thinking":
                out += self._begin(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            self.thought.update(text.encode())
            delta = {"type": "thinking_delta", "thinking": text}
        else:
            if self.open != "text":
                out += self._begin("text", {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": text}
        return out + _event("content_block_delta", {"index": self.index, "delta": delta})

    def _tool_steps(self, steps: list[Step]) -> bytes:
        out = b""
        for step in steps:
            if isinstance(step, Begin):
                block = {
                    "type": "tool_use",
                    "id": step.id or _tool_use_id(),
                    "name": step.name,
                    "input": {},
                }
                out += self._begin("tool", block)
            elif isinstance(step, Args):
                out += _event(
                    "content_block_delta",
                    {
                        "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": step.text},
                    },
                )
            else:
                out += self._close()
        return out

    def end(self) -> bytes:
        try:
            stop, sequence = _stop(self.finish, self.matched, self.stops)
        except TiergateError as err:
            # A cut answer ends in an error event, never in a normal stop.
            return self._close() + sse_error_event(err, "anthropic")
        return (
            self._tool_steps(self.calls.finish())
            + self._release()
            + self._close()
            + _event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop, "stop_sequence": sequence},
                    "usage": anthropic_usage(self.usage),
                },
            )
            + _event("message_stop", {})
        )


def translate_stream(
    events: AsyncGenerator[bytes, None], model: str, stops: list[str] | None = None
) -> AsyncGenerator[bytes, None]:
    tr = StreamTranslator(model, stops)

    def fail(err: dict[str, Any]) -> bytes:
        return sse_error_event(UpstreamError(str(err.get("message", err))), "anthropic")

    return translate_relayed(events, tr.start, tr.feed, tr.end, fail)


def stream_error(err: TiergateError) -> bytes:
    """Mid-stream failure, in the OpenAI framing the translator reads back."""
    return b"data: " + orjson.dumps({"error": {"message": err.message, "type": err.type}}) + b"\n\n"


def _render(p: Prepared, body: dict[str, Any]) -> bytes:
    return orjson.dumps(to_message(body, p.call.model, stop_list(p.call.body)))


def _stream(p: Prepared, events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    return translate_stream(events, p.call.model, stop_list(p.call.body))


EDGE = Edge(
    render=_render,
    stream=_stream,
    stream_error=stream_error,
    headers=lambda p: {"request-id": p.request_id, "x-request-id": p.request_id},
)
