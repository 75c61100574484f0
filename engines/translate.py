"""Request and response translation between the client's body and each backend's dialect.

Requests: the hosted API takes ``thinking: {"type": ...}`` and ``reasoning_effort`` (low,
high, max); vLLM takes ``chat_template_kwargs: {"thinking": ..., "enable_thinking": ...,
"reasoning_effort": ...}`` (high, max). In thinking mode the sampling parameters are
ignored upstream, so they are dropped here on every backend for identical behaviour.

Responses: everything leaves in DeepSeek's shape: ``reasoning_content`` (vLLM says
``reasoning``), ``tool_calls`` null rather than ``[]``, and usage with
``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import orjson

from engines.base import Endpoint, StreamOutcome
from policies.errors import UpstreamStreamError
from policies.options import Mode
from policies.usage import Usage, usage_from_openai

# A chunk is decoded only when one of these keys carries a non-null value; any other chunk
# passes through untouched. In JSON text an unescaped quote only delimits keys and strings,
# so these patterns cannot match inside message content.
_NEEDS_PARSE = re.compile(
    rb'"(?:usage|reasoning|tool_calls|finish_reason|error)"\s*:\s*(?!null)|"object"\s*:\s*"error"'
)

# A chunk that carries reasoning text (vLLM's ``reasoning`` or ``reasoning_content``, a
# non-empty string). vLLM sends one token per chunk and reports no reasoning tokens in
# usage, so these chunks are its reasoning-token count.
_REASONING_TEXT = re.compile(rb'"reasoning(?:_content)?"\s*:\s*"(?!")')

# The generated text of a chunk: message content, reasoning (vLLM's ``reasoning`` or
# ``reasoning_content``), a tool call's name and argument fragments, and a completion's
# ``text`` (FIM). Group 1 is the string as sent, JSON escapes included: never shorter than
# the text it decodes to. Matched at a key only, as ``_NEEDS_PARSE`` is.
_GENERATED_TEXT = re.compile(
    rb'"(content|reasoning_content|reasoning|text|name|arguments)"\s*:\s*'
    rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
)
_REASONING_KEYS = (b"reasoning_content", b"reasoning")

# Fields of ours or of another dialect that must not travel upstream.
_GATEWAY_FIELDS = ("thinking", "reasoning_effort", "chat_template_kwargs")
_IGNORED_WHEN_THINKING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _base_body(body: dict[str, Any], model: str, mode: Mode, stream: bool) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in _GATEWAY_FIELDS}
    out["model"] = model
    if mode.thinking:
        for k in _IGNORED_WHEN_THINKING:
            out.pop(k, None)
    if stream:
        out["stream"] = True
        opts = dict(out.get("stream_options") or {})
        opts["include_usage"] = True
        out["stream_options"] = opts
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)
    return out


def vllm_body(
    body: dict[str, Any], mode: Mode, served_model: str, endpoint: Endpoint, stream: bool
) -> dict[str, Any]:
    out = _base_body(body, served_model, mode, stream)
    if endpoint == "chat":
        kwargs = dict(body.get("chat_template_kwargs") or {})
        # vLLM's V4 template and reasoning parser think on `thinking or enable_thinking`,
        # and the default moved between releases: both are set, always.
        kwargs["thinking"] = mode.thinking
        kwargs["enable_thinking"] = mode.thinking
        if mode.thinking:
            # vLLM's V4 template knows high and max: the hosted API's low is high here
            kwargs["reasoning_effort"] = "max" if mode.effort == "max" else "high"
        else:
            kwargs.pop("reasoning_effort", None)
        out["chat_template_kwargs"] = kwargs
        messages = out.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant" and last.get("prefix"):
            # The hosted API's chat prefix completion, in vLLM's words: continue the last
            # message instead of opening a new assistant turn after it.
            out["continue_final_message"] = True
            out["add_generation_prompt"] = False
    return out


def json_schema_instruction(schema: Any) -> str:
    """What asks for a JSON schema's answer in JSON mode, which has no schema: the schema
    itself, in the system prompt."""
    if not isinstance(schema, dict):
        return "Answer with one JSON object only."
    return "Answer with one JSON object only, matching this JSON schema:\n" + (
        orjson.dumps(schema).decode()
    )


def _with_system(messages: Any, text: str) -> Any:
    """``messages`` (a new list) with ``text`` at the end of the system prompt."""
    if not isinstance(messages, list):
        return messages
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, str):
            joined = f"{content}\n\n{text}" if content else text
            return [{**first, "content": joined}, *messages[1:]]
        if isinstance(content, list):
            part = {"type": "text", "text": text}
            return [{**first, "content": [*content, part]}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _schema_as_json_mode(out: dict[str, Any]) -> None:
    """The hosted API has JSON mode (``json_object``), not ``json_schema``: the schema goes
    in the prompt, as for the Responses API's ``text.format`` (gateway/protocols/responses.py)."""
    fmt = out.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return
    spec = fmt.get("json_schema")
    out["response_format"] = {"type": "json_object"}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    out["messages"] = _with_system(out.get("messages"), json_schema_instruction(schema))


def hosted_body(
    body: dict[str, Any], mode: Mode, model: str, endpoint: Endpoint, stream: bool
) -> dict[str, Any]:
    out = _base_body(body, model, mode, stream)
    if endpoint == "chat":
        out["thinking"] = {"type": "enabled" if mode.thinking else "disabled"}
        if mode.thinking:
            out["reasoning_effort"] = mode.effort or "high"
        _schema_as_json_mode(out)
    return out


def _stream_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error event (``{"error": {...}}``, or older vLLM releases'
    ``{"object": "error", "message": ...}``); None for any other chunk."""
    if chunk.get("choices"):
        return None
    if "error" in chunk:
        err = chunk["error"]
    elif chunk.get("object") == "error":
        err = chunk
    else:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or "unknown error")
    return str(err)


def _finish(reason: Any, tool_calls: bool) -> Any:
    """vLLM ends a call forced by a named ``tool_choice`` with ``stop``; DeepSeek and
    OpenAI say ``tool_calls`` whenever calls were made, and clients loop on that."""
    return "tool_calls" if tool_calls and reason == "stop" else reason


def normalize_message(msg: dict[str, Any]) -> None:
    """vLLM -> DeepSeek field names, in place."""
    if "reasoning" in msg:
        reasoning = msg.pop("reasoning")
        if msg.get("reasoning_content") is None:
            msg["reasoning_content"] = reasoning
    if msg.get("tool_calls") == []:
        msg["tool_calls"] = None


def normalize_response(body: dict[str, Any]) -> Usage:
    """Normalize a non-stream response in place and return its usage."""
    for choice in body.get("choices") or ():
        if isinstance(choice, dict):
            msg = choice.get("message")
            if isinstance(msg, dict):
                normalize_message(msg)
                if choice.get("finish_reason"):
                    choice["finish_reason"] = _finish(
                        choice["finish_reason"], bool(msg.get("tool_calls"))
                    )
    usage = usage_from_openai(body.get("usage")) or Usage()
    usage = with_reasoning(usage, _reasoning_share(body, usage.output_tokens))
    body["usage"] = usage.to_deepseek()
    return usage


def with_reasoning(usage: Usage, counted: int) -> Usage:
    """Usage with the reasoning tokens the gateway counted, when the backend reported none."""
    if usage.reasoning_tokens or not counted:
        return usage
    return replace(usage, reasoning_tokens=min(counted, usage.output_tokens))


def _reasoning_share(body: dict[str, Any], output_tokens: int) -> int:
    """A non-stream answer's reasoning tokens, when the backend reports none: the output
    tokens split in proportion to the characters of reasoning and of everything else."""
    reasoning = other = 0
    for choice in body.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        text = msg.get("reasoning_content")
        reasoning += len(text) if isinstance(text, str) else 0
        content = msg.get("content")
        other += len(content) if isinstance(content, str) else 0
        other += len(orjson.dumps(msg.get("tool_calls"))) if msg.get("tool_calls") else 0
    if not reasoning:
        return 0
    return max(1, round(output_tokens * reasoning / (reasoning + other)))


def generated_chars(payload: bytes) -> int:
    """The length of the text a stream chunk (its JSON, as sent) carries to the client: what
    a stream that breaks before its usage chunk is billed on, never the chunk's envelope
    (ids, model name, indices, roles), which is most of a one-token chunk's bytes."""
    return sum(len(m.group(2)) for m in _GENERATED_TEXT.finditer(payload))


def count_generated(outcome: StreamOutcome, payload: bytes) -> None:
    """Add a chunk's generated text to ``outcome``: all of it, and the reasoning apart (a
    stream cut before its usage bills its reasoning tokens from it)."""
    for m in _GENERATED_TEXT.finditer(payload):
        n = len(m.group(2))
        outcome.output_chars += n
        if m.group(1) in _REASONING_KEYS:
            outcome.reasoning_chars += n


class SSENormalizer:
    """Turns upstream SSE lines into DeepSeek-shaped events with as little parsing as possible.

    Most chunks pass through after two byte searches; only the usage chunk (and any chunk
    that needs a field renamed) is decoded. ``include_usage`` says whether the client asked
    for the final usage chunk: upstream is always asked for it, so the gateway can bill.
    """

    def __init__(
        self, outcome: StreamOutcome, *, include_usage: bool, where: str = "the upstream"
    ) -> None:
        self.outcome = outcome
        self.include_usage = include_usage
        self.where = where
        self.done = False
        self.tool_calls: set[Any] = set()  # choices that streamed a tool call (``_finish``)
        self.reasoning_chunks = 0

    def feed(self, line: bytes) -> bytes | None:
        """One upstream line in (without its newline); one SSE event out, or None to drop."""
        if not line.startswith(b"data:"):
            # Comments (": keep-alive"), event names and blank separators: keep comments only.
            return line + b"\n\n" if line.startswith(b":") else None
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return b"data: [DONE]\n\n"
        if _REASONING_TEXT.search(payload) is not None:
            self.reasoning_chunks += 1
        if _NEEDS_PARSE.search(payload) is None:
            count_generated(self.outcome, payload)
            return b"data: " + payload + b"\n\n"
        return self._rewrite(payload)

    def _rewrite(self, payload: bytes) -> bytes | None:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.outcome.error = "upstream sent a malformed stream chunk"
            return None
        if not isinstance(chunk, dict):
            return None
        error = _stream_error(chunk)
        if error is not None:
            # vLLM reports a failure inside a stream as an error event, then [DONE].
            self.outcome.error = error
            raise UpstreamStreamError(f"{self.where} failed mid-stream: {error}")
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            index = choice.get("index", 0)
            if isinstance(delta, dict):
                if delta.get("tool_calls"):
                    self.tool_calls.add(index)
                normalize_message(delta)
            if choice.get("finish_reason"):
                choice["finish_reason"] = _finish(choice["finish_reason"], index in self.tool_calls)
                self.outcome.finish_reason = str(choice["finish_reason"])
        raw_usage = chunk.get("usage")
        if isinstance(raw_usage, dict):
            usage = with_reasoning(usage_from_openai(raw_usage) or Usage(), self.reasoning_chunks)
            self.outcome.usage = usage
            if not self.include_usage:
                if not chunk.get("choices"):
                    return None
                chunk.pop("usage", None)
            else:
                chunk["usage"] = usage.to_deepseek()
        count_generated(self.outcome, payload)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
