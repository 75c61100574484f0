"""What a simulated request produces: tokens, cache hits, timing, and the response bodies.

The contract follows the published shapes: vLLM (``reasoning`` field, ``tool_calls: []``,
``prompt_tokens_details.cached_tokens``, thinking via ``chat_template_kwargs``, off by
default) and the hosted DeepSeek API (``reasoning_content``, ``tool_calls: null``,
``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``, thinking on by default).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from engines.sim.state import SimState
from engines.sim.tokens import block_hashes, count_tokens, render_chat

_WORDS = [
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "the",
    "cheapest",
    "option",
    "that",
    "answers",
    "it",
    "well",
    "and",
    "prices",
    "every",
    "token",
    "exactly",
    "while",
    "replicas",
    "keep",
    "their",
    "prefix",
    "caches",
    "warm",
]


class SimError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _words(seed: bytes, n: int) -> list[str]:
    start = int.from_bytes(hashlib.blake2b(seed, digest_size=4).digest(), "big")
    return [" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n)]


def _int_header(headers: Mapping[str, str], name: str, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        return default


@dataclass
class Generation:
    state_mode: str
    kind: str
    model: str
    replica: str
    thinking: bool
    reasoning_field: str
    details: bool
    prompt_tokens: int
    cached_tokens: int
    prefill_s: float
    reasoning: list[str] = field(default_factory=list)
    content_tokens: list[str] = field(default_factory=list)
    tool_call: dict[str, Any] | None = None
    finish_reason: str = "stop"
    id: str = field(default_factory=lambda: "sim-" + uuid.uuid4().hex[:20])
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)

    @property
    def output_tokens(self) -> int:
        return len(self.reasoning) + len(self.content_tokens) + (1 if self.tool_call else 0)

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
        }
        if self.state_mode == "hosted":
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            u["prompt_cache_hit_tokens"] = self.cached_tokens
            u["prompt_cache_miss_tokens"] = self.prompt_tokens - self.cached_tokens
            u["completion_tokens_details"] = {"reasoning_tokens": len(self.reasoning)}
        elif self.details:
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return u

    def _tool_calls(self) -> list[dict[str, Any]] | None:
        if self.tool_call is None:
            return [] if self.state_mode == "vllm" else None
        return [self.tool_call]

    def response_body(self) -> dict[str, Any]:
        if self.kind == "completions":
            choice: dict[str, Any] = {
                "index": 0,
                "text": "".join(self.content_tokens),
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
            obj = "text_completion"
        else:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(self.content_tokens) or None,
            }
            if self.thinking or self.state_mode == "vllm":
                message[self.reasoning_field] = "".join(self.reasoning) if self.thinking else None
            message["tool_calls"] = self._tool_calls()
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
            obj = "chat.completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.kind == "completions":
            return {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "text": delta.get("content", ""),
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            }
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def chunks(self) -> Iterator[dict[str, Any]]:
        if self.kind == "chat":
            yield self._chunk({"role": "assistant", "content": ""})
        for tok in self.reasoning:
            yield self._chunk({self.reasoning_field: tok})
        for tok in self.content_tokens:
            yield self._chunk({"content": tok})
        if self.tool_call is not None:
            yield self._chunk({"tool_calls": [{"index": 0, **self.tool_call}]})

    def final_chunk(self) -> dict[str, Any]:
        return self._chunk({}, self.finish_reason)

    def usage_chunk(self) -> dict[str, Any]:
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = self.usage()
        return chunk


def _thinking(state: SimState, body: dict[str, Any]) -> tuple[bool, str | None]:
    if state.config.mode == "vllm":
        kw = body.get("chat_template_kwargs") or {}
        if not isinstance(kw, dict):
            raise SimError(400, "chat_template_kwargs must be an object")
        return bool(kw.get("thinking", False)), kw.get("reasoning_effort")
    raw = body.get("thinking")
    if raw is None:
        enabled = True
    elif isinstance(raw, dict) and raw.get("type") in ("enabled", "disabled"):
        enabled = raw["type"] == "enabled"
    else:
        raise SimError(400, "thinking.type must be 'enabled' or 'disabled'")
    effort = body.get("reasoning_effort")
    return enabled, effort if isinstance(effort, str) else None


def _check_model(state: SimState, body: dict[str, Any]) -> str:
    cfg = state.config
    model = body.get("model")
    if cfg.mode == "vllm":
        if model != cfg.model:
            raise SimError(404, f"The model `{model}` does not exist.")
        return cfg.model
    if model not in cfg.models:
        raise SimError(400, f"Model Not Exist: {model}")
    return str(model)


def _cache(state: SimState, text: str, prompt_tokens: int) -> tuple[int, float]:
    cfg = state.config
    hit_blocks = state.cache.match_and_insert(block_hashes(text, cfg.block_size))
    cached = min(hit_blocks * cfg.block_size, prompt_tokens)
    prefill = cfg.ttft_base_s + (prompt_tokens - cached) * cfg.prefill_s_per_token
    return cached, prefill


def _outputs(
    gen: Generation, seed: bytes, n_reason: int, n_content: int, max_tokens: int | None
) -> None:
    gen.reasoning = _words(seed + b"r", n_reason) if gen.thinking else []
    gen.content_tokens = [f" [{gen.model}@{gen.replica}]", *_words(seed, max(0, n_content - 1))]
    if max_tokens is not None and gen.output_tokens > max_tokens:
        keep_r = min(len(gen.reasoning), max_tokens)
        gen.reasoning = gen.reasoning[:keep_r]
        gen.content_tokens = gen.content_tokens[: max(0, max_tokens - keep_r)]
        gen.tool_call = None
        gen.finish_reason = "length"


def _max_tokens(body: dict[str, Any]) -> int | None:
    v = body.get("max_tokens", body.get("max_completion_tokens"))
    if v is None:
        return None
    if not isinstance(v, int) or v < 1:
        raise SimError(400, "max_tokens must be a positive integer")
    return v


def plan_chat(state: SimState, body: dict[str, Any], headers: Mapping[str, str]) -> Generation:
    cfg = state.config
    model = _check_model(state, body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages must be a non-empty list")
    thinking, effort = _thinking(state, body)
    if cfg.mode == "hosted" and thinking:
        for m in messages:
            if (
                isinstance(m, dict)
                and m.get("role") == "assistant"
                and m.get("tool_calls")
                and not m.get("reasoning_content")
            ):
                raise SimError(
                    400,
                    "Missing `reasoning_content` field in the assistant message at message index "
                    f"{messages.index(m)}. In thinking mode the reasoning_content must be passed back.",
                )
    tools = body.get("tools") if isinstance(body.get("tools"), list) else None
    text = render_chat(
        [m for m in messages if isinstance(m, dict)], thinking=thinking, effort=effort, tools=tools
    )
    prompt_tokens = count_tokens(text)
    max_tokens = _max_tokens(body)
    if prompt_tokens + (max_tokens or 0) > cfg.max_model_len:
        raise SimError(
            400,
            f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
            f"requested {prompt_tokens + (max_tokens or 0)} tokens.",
        )
    cached, prefill = _cache(state, text, prompt_tokens)
    gen = Generation(
        state_mode=cfg.mode,
        kind="chat",
        model=model,
        replica=cfg.replica_id,
        thinking=thinking,
        reasoning_field="reasoning_content" if cfg.mode == "hosted" else cfg.reasoning_field,
        details=cfg.enable_prompt_tokens_details,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        prefill_s=prefill,
    )
    n_reason = _int_header(
        headers, "x-sim-reasoning-tokens", cfg.reasoning_tokens * (2 if effort == "max" else 1)
    )
    n_content = _int_header(headers, "x-sim-output-tokens", cfg.default_output_tokens)
    seed = text[-512:].encode()
    fmt = body.get("response_format")
    _maybe_tool_call(gen, body, tools, headers, seed)
    _outputs(gen, seed, n_reason, n_content, max_tokens)
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and gen.finish_reason != "length":
        doc = orjson.dumps({"answer": "".join(gen.content_tokens).strip(), "model": model}).decode()
        gen.content_tokens = [doc[i : i + 4] for i in range(0, len(doc), 4)]
    if gen.tool_call is not None:
        gen.content_tokens = []
        gen.finish_reason = "tool_calls"
    return gen


def _maybe_tool_call(
    gen: Generation,
    body: dict[str, Any],
    tools: list[Any] | None,
    headers: Mapping[str, str],
    seed: bytes,
) -> None:
    if not tools:
        return
    choice = body.get("tool_choice")
    name = headers.get("x-sim-tool-call")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or name
    elif choice == "required" and name is None:
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = (first.get("function") or {}).get("name")
    if not name:
        return
    args = orjson.dumps({"query": "".join(_words(seed, 3)).strip()}).decode()
    gen.tool_call = {
        "id": "call_" + hashlib.blake2b(seed + name.encode(), digest_size=8).hexdigest(),
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def plan_completion(
    state: SimState, body: dict[str, Any], headers: Mapping[str, str]
) -> Generation:
    cfg = state.config
    model = _check_model(state, body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise SimError(400, "prompt must be a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise SimError(400, "suffix must be a string")
    text = "<fim>" + prompt + ("<fim-suffix>" + suffix if suffix else "")
    prompt_tokens = count_tokens(text)
    max_tokens = _max_tokens(body)
    cached, prefill = _cache(state, text, prompt_tokens)
    gen = Generation(
        state_mode=cfg.mode,
        kind="completions",
        model=model,
        replica=cfg.replica_id,
        thinking=False,
        reasoning_field=cfg.reasoning_field,
        details=cfg.enable_prompt_tokens_details,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        prefill_s=prefill,
    )
    _outputs(
        gen,
        text[-512:].encode(),
        0,
        _int_header(headers, "x-sim-output-tokens", cfg.default_output_tokens),
        max_tokens,
    )
    return gen
