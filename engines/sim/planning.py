"""From a request body to a ``Generation``: validation, thinking, prefix cache, output.

Each check answers the way its backend does: a vLLM replica serves one model name (404
for others) and thinks only when ``chat_template_kwargs.thinking`` is true; the hosted
API accepts its aliases (400 for others), thinks unless ``thinking.type`` is
``disabled``, insists that tool-call turns carry their ``reasoning_content`` back in
thinking mode, and offers FIM and chat prefix completion on its ``/beta`` paths only.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from engines.sim.config import SimConfig
from engines.sim.errors import SimError
from engines.sim.generation import Generation, Kind, split_tokens, words
from engines.sim.prefix_cache import PrefixCache
from engines.sim.tokens import block_hashes, count_tokens, render_chat, render_fim

# The hosted API's thinking-mode guide: the efforts it accepts and what each becomes.
_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "max",
    "ultra": "max",
}
_MAX_STOPS = 16
_FIM_MAX_OUTPUT = 4096
# A user turn that asks for a tool by name ("use the get_weather tool", optionally
# 'with {"city": "Paris"}') gets that tool call when the tool is offered, as a model would.
_ASKED_TOOL = re.compile(r"use the (\w+) tool(?: with (\{.*?\})(?=\s*$|\s*\n))?", re.S)


def _int_header(headers: Mapping[str, str], name: str, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return max(0, int(raw))
    except ValueError as exc:
        raise SimError(400, f"header {name} must be a whole number, not {raw!r}") from exc


def _model(cfg: SimConfig, body: dict[str, Any]) -> str:
    model = body.get("model")
    if cfg.mode == "vllm":
        if model is None:
            return cfg.model
        if model != cfg.model:
            raise SimError(404, f"The model `{model}` does not exist.", param="model")
        return cfg.model
    if not isinstance(model, str) or model not in cfg.models:
        raise SimError(400, f"Model Not Exist: {model!r}", param="model")
    return model


def _thinking(cfg: SimConfig, body: dict[str, Any]) -> tuple[bool, str | None]:
    if cfg.mode == "vllm":
        kw = body.get("chat_template_kwargs") or {}
        if not isinstance(kw, dict):
            raise SimError(400, "chat_template_kwargs must be an object")
        effort = kw.get("reasoning_effort")
        # vLLM's V4 template and reasoning parser: `thinking or enable_thinking`
        on = bool(kw.get("thinking", False)) or bool(kw.get("enable_thinking", False))
        return on, effort if isinstance(effort, str) else None
    raw = body.get("thinking")
    if raw is None:
        enabled = True
    elif isinstance(raw, dict) and raw.get("type") in ("enabled", "disabled"):
        enabled = raw["type"] == "enabled"
    else:
        raise SimError(400, "thinking.type must be 'enabled' or 'disabled'", param="thinking")
    effort = body.get("reasoning_effort")
    if effort is None:
        return enabled, None
    if effort not in _EFFORTS:
        raise SimError(400, f"unknown reasoning_effort {effort!r}", param="reasoning_effort")
    return enabled, _EFFORTS[effort]


def _max_tokens(cfg: SimConfig, body: dict[str, Any]) -> int | None:
    """The output limit. vLLM takes ``max_completion_tokens or max_tokens``; the hosted
    API reads ``max_tokens`` first."""
    keys = ("max_tokens", "max_completion_tokens")
    if cfg.mode == "vllm":
        keys = keys[::-1]
    key = next((k for k in keys if body.get(k) is not None), None)
    if key is None:
        return None
    v = body[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise SimError(400, f"{key} must be a positive integer", param=key)
    return int(v)


def _stops(body: dict[str, Any]) -> list[str]:
    raw = body.get("stop")
    stops = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if raw is None:
        return []
    if stops is None or not all(isinstance(s, str) for s in stops) or len(stops) > _MAX_STOPS:
        raise SimError(400, f"stop must be a string or up to {_MAX_STOPS} strings", param="stop")
    return stops


def _check_common(cfg: SimConfig, body: dict[str, Any], prompt_tokens: int) -> int | None:
    n = body.get("n")
    if cfg.mode == "vllm":  # vLLM samples n choices; the hosted API answers one
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
            raise SimError(400, "n must be an integer from 1 to 128", param="n")
    elif n is not None and n != 1:
        raise SimError(400, "only n=1 is supported", param="n")
    max_tokens = _max_tokens(cfg, body)
    wanted = prompt_tokens + (max_tokens or 0)
    if wanted > cfg.max_model_len:
        raise SimError(
            400,
            f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
            f"requested {wanted} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens or 0} in the completion).",
        )
    return max_tokens


def _new(
    cfg: SimConfig, cache: PrefixCache, kind: Kind, model: str, text: str, thinking: bool
) -> Generation:
    prompt_tokens = count_tokens(text)
    if cfg.prompt_tokens_per_byte > 0:
        worst = math.ceil(len(text.encode("utf-8", "surrogatepass")) * cfg.prompt_tokens_per_byte)
        prompt_tokens = max(prompt_tokens, worst)
    hit_blocks = cache.match_and_insert(block_hashes(text, cfg.block_size))
    cached = min(hit_blocks * cfg.block_size, prompt_tokens)
    return Generation(
        mode=cfg.mode,
        kind=kind,
        model=model,
        replica=cfg.replica_id,
        thinking=thinking,
        reasoning_field="reasoning_content" if cfg.mode == "hosted" else cfg.reasoning_field,
        details=cfg.enable_prompt_tokens_details,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        prefill_s=cfg.ttft_base_s + (prompt_tokens - cached) * cfg.prefill_s_per_token,
    )


def _answer(gen: Generation, seed: bytes, n_tokens: int) -> list[str]:
    """The answer: who answered (model and replica), then deterministic words."""
    return [f" [{gen.model}@{gen.replica}]", *words(seed, max(0, n_tokens - 1))]


def _messages(cfg: SimConfig, body: dict[str, Any], thinking: bool) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages must be a non-empty list", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise SimError(400, "each message must be an object", param="messages")
    if cfg.mode == "vllm" and cfg.strict_encoder:
        _encodable(messages)
    if cfg.mode == "hosted" and thinking:
        for i, m in enumerate(messages):
            if (
                m.get("role") == "assistant"
                and m.get("tool_calls")
                and not m.get("reasoning_content")
            ):
                raise SimError(
                    400,
                    f"Missing `reasoning_content` field in the assistant message at message "
                    f"index {i}. In thinking mode the reasoning_content of tool-call turns "
                    "must be passed back.",
                    param="messages",
                )
    return messages


_V4_ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))


def _encodable(messages: list[dict[str, Any]]) -> None:
    """What vLLM's V4 message encoder refuses, as vLLM answers it: a role it has no
    rendering for raises ``NotImplementedError`` (501), and an empty ``developer``
    message fails an assertion (500, an ``InternalServerError`` body)."""
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in _V4_ROLES:
            raise SimError(501, f"Unknown role: {role}")
        if role == "developer" and not m.get("content"):
            raise SimError(500, f"AssertionError: developer message {i} has no content")


def _continues_last(
    cfg: SimConfig, body: dict[str, Any], messages: list[dict[str, Any]], beta: bool
) -> bool:
    last = messages[-1]
    if cfg.mode == "vllm":
        # vLLM knows no `prefix` on a message: it continues the last one when asked to,
        # and refuses that together with a generation prompt.
        wanted = body.get("continue_final_message") is True
        if wanted and body.get("add_generation_prompt", True) is not False:
            raise SimError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
    else:
        wanted = last.get("prefix") is True
    if not wanted:
        return False
    if last.get("role") != "assistant":
        raise SimError(400, "prefix completion needs the last message to be the assistant's")
    if cfg.mode == "hosted" and not beta:
        raise SimError(400, "chat prefix completion is only available at the /beta base URL")
    return True


def plan_chat(
    cfg: SimConfig,
    cache: PrefixCache,
    body: dict[str, Any],
    headers: Mapping[str, str],
    *,
    beta: bool = False,
) -> Generation:
    model = _model(cfg, body)
    thinking, effort = _thinking(cfg, body)
    messages = _messages(cfg, body, thinking)
    continue_last = _continues_last(cfg, body, messages, beta)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise SimError(400, "tools must be a list", param="tools")
    text = render_chat(
        messages, thinking=thinking, effort=effort, tools=tools, continue_last=continue_last
    )
    max_tokens = _check_common(cfg, body, count_tokens(text))
    stops = _stops(body)
    tool, asked_args = _tool_name(body, tools or [], headers), None
    if tool is None and body.get("tool_choice") != "none":
        tool, asked_args = _asked_tool(messages, tools or [])
    gen = _new(cfg, cache, "chat", model, text, thinking)
    seed = text[-512:].encode()
    if thinking:
        default = {"max": cfg.reasoning_tokens * 2, "low": cfg.reasoning_tokens // 2}.get(
            effort or "high", cfg.reasoning_tokens
        )
        gen.reasoning = words(seed + b"r", _int_header(headers, "x-sim-reasoning-tokens", default))
    gen.content = _answer(
        gen, seed, _int_header(headers, "x-sim-output-tokens", cfg.default_output_tokens)
    )
    if cfg.reply:
        gen.content = split_tokens(cfg.reply)
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema" and cfg.mode == "hosted":
        # the hosted API has JSON mode only
        raise SimError(400, "This response_format type is unavailable now", param="response_format")
    if kind in ("json_object", "json_schema"):  # vLLM decodes to the schema
        doc = {"answer": gen.text.strip(), "model": model, "replica": cfg.replica_id}
        gen.content = split_tokens(orjson.dumps(doc).decode())
    if tool:
        arg_chars = _int_header(headers, "x-sim-tool-arg-chars", cfg.tool_arg_chars)
        # parallel calls of the same tool (x-sim-tool-calls), their fragments in turns
        # with x-sim-interleave-tool-calls, as an OpenAI-shaped stream may send them
        for k in range(max(1, _int_header(headers, "x-sim-tool-calls", cfg.parallel_tool_calls))):
            _add_tool_call(gen, tool, seed + bytes([k % 256]) * k, arg_chars, asked_args)
        interleave = headers.get("x-sim-interleave-tool-calls")
        gen.interleave = cfg.interleave_tool_calls if interleave is None else interleave != "0"
    if gen.tool_call is None:
        gen.stop_at(stops)
    gen.cap(max_tokens)
    if gen.tool_call is not None:
        gen.content = []
        named = isinstance(body.get("tool_choice"), dict)
        # vLLM ends a call forced by a named tool_choice with "stop"
        stop = named and cfg.mode == "vllm" and cfg.named_tool_stop
        gen.finish_reason = "stop" if stop else "tool_calls"
        gen.tool_fragments = cfg.mode == "vllm" and cfg.tool_call_fragments
        if not cfg.tool_call_ids:
            for call in (gen.tool_call, *gen.more_calls):
                del call["id"]
    n = body.get("n") if cfg.mode == "vllm" else None
    for k in range(1, n if isinstance(n, int) else 1):
        other = replace(gen, id=gen.id, others=[])
        if other.content and other.tool_call is None and not cfg.reply:
            other.content = _answer(other, seed + bytes([k % 256]), len(gen.content))
        gen.others.append(other)
    return gen


def _tool_name(body: dict[str, Any], tools: list[Any], headers: Mapping[str, str]) -> str | None:
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise SimError(400, "tool_choice must name a function", param="tool_choice")
        return name
    forced = headers.get("x-sim-tool-call")
    if forced:
        return forced
    if choice == "required":
        if not tools:
            raise SimError(400, "tool_choice 'required' needs tools", param="tool_choice")
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = (first.get("function") or {}).get("name")
        return name if isinstance(name, str) and name else None
    return None


def _asked_tool(messages: list[Any], tools: list[Any]) -> tuple[str | None, str | None]:
    """The tool the last message (a user turn) asks for by name, and any arguments given."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None, None
    content = last.get("content")
    if isinstance(content, list):
        content = "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    match = _ASKED_TOOL.search(content) if isinstance(content, str) else None
    if match is None:
        return None, None
    offered = {(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)}
    return (match.group(1), match.group(2)) if match.group(1) in offered else (None, None)


def _add_tool_call(
    gen: Generation, name: str, seed: bytes, arg_chars: int = 0, asked: str | None = None
) -> None:
    query = "".join(words(seed, 3)).strip()
    if arg_chars > len(query):  # a long argument (x-sim-tool-arg-chars)
        query = (query + " ") * (arg_chars // (len(query) + 1) + 1)
    args = asked or orjson.dumps({"query": query}).decode()
    call = {
        "id": "call_" + hashlib.blake2b(seed + name.encode(), digest_size=8).hexdigest(),
        "type": "function",
        "function": {"name": name, "arguments": args},
    }
    if gen.tool_call is None:
        gen.tool_call = call
    else:
        gen.more_calls.append(call)
    gen.tool_call_tokens += count_tokens(name + args)


def plan_completion(
    cfg: SimConfig,
    cache: PrefixCache,
    body: dict[str, Any],
    headers: Mapping[str, str],
) -> Generation:
    """A plain or fill-in-the-middle completion (``prompt`` and optional ``suffix``)."""
    model = _model(cfg, body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise SimError(400, "prompt must be a string", param="prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise SimError(400, "suffix must be a string", param="suffix")
    thinking = body.get("thinking")
    if cfg.mode == "hosted" and isinstance(thinking, dict) and thinking.get("type") == "enabled":
        raise SimError(400, "FIM completion is only available in non-thinking mode")
    text = render_fim(prompt, suffix)
    max_tokens = _check_common(cfg, body, count_tokens(text))
    stops = _stops(body)
    gen = _new(cfg, cache, "completions", model, text, False)
    seed = text[-512:].encode()
    gen.content = _answer(
        gen, seed, _int_header(headers, "x-sim-output-tokens", cfg.default_output_tokens)
    )
    gen.stop_at(stops)
    if cfg.mode == "hosted":  # the hosted FIM completion stops at 4K output tokens
        max_tokens = min(max_tokens or _FIM_MAX_OUTPUT, _FIM_MAX_OUTPUT)
    gen.cap(max_tokens)
    return gen
