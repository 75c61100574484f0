"""What one simulated request produces, and its response bodies in each backend's shape.

vLLM: reasoning under ``reasoning`` (or ``reasoning_content`` for older releases),
``tool_calls: []`` when there are none, ``usage.prompt_tokens_details.cached_tokens``.
Hosted DeepSeek API: ``reasoning_content``, ``tool_calls: null``, and cache usage as
``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens`` plus
``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engines.sim.config import Mode

Kind = Literal["chat", "completions"]

_SENTENCE = (
    "the gateway routes each request to the cheapest option that answers it well and prices "
    "every token exactly while replicas keep their prefix caches warm"
)
_WORDS = tuple(_SENTENCE.split())


def words(seed: bytes, n: int) -> list[str]:
    """``n`` deterministic word tokens (each with a leading space) chosen by ``seed``."""
    start = int.from_bytes(hashlib.blake2b(seed, digest_size=4).digest(), "big")
    return [" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n)]


def split_tokens(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass(slots=True)
class Generation:
    mode: Mode
    kind: Kind
    model: str
    replica: str
    thinking: bool
    reasoning_field: str
    details: bool
    prompt_tokens: int
    cached_tokens: int
    prefill_s: float
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_call: dict[str, Any] | None = None
    more_calls: list[dict[str, Any]] = field(default_factory=list)  # parallel calls after it
    tool_call_tokens: int = 0  # of all the calls
    engine: int = 0  # the data-parallel engine serving it
    others: list[Generation] = field(default_factory=list)  # choices 1..n-1 (vLLM's n)
    tool_fragments: bool = False  # stream the call as vLLM does: header, then fragments
    interleave: bool = False  # parallel calls' fragments in turns (index 0, 1, 0, 1, ...)
    finish_reason: str = "stop"
    stop_reason: str | None = None  # vLLM names the stop string that ended the answer
    id: str = field(default_factory=lambda: "sim-" + uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)

    @property
    def own_tokens(self) -> int:
        """This choice's output tokens."""
        return len(self.reasoning) + len(self.content) + self.tool_call_tokens

    @property
    def output_tokens(self) -> int:
        """Output tokens of every choice."""
        return self.own_tokens + sum(o.own_tokens for o in self.others)

    @property
    def text(self) -> str:
        return "".join(self.content)

    # ---- shaping the output ------------------------------------------------------------

    def stop_at(self, stops: Sequence[str]) -> None:
        """Cut the content before the first stop string (which is not returned)."""
        text = self.text
        cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
        if cut < 0:
            return
        kept: list[str] = []
        used = 0
        for tok in self.content:
            if used + len(tok) > cut:
                if cut > used:
                    kept.append(tok[: cut - used])
                break
            kept.append(tok)
            used += len(tok)
        self.content = kept
        self.tool_call, self.more_calls, self.tool_call_tokens = None, [], 0
        self.finish_reason = "stop"
        self.stop_reason = next(s for s in stops if s and text.find(s) == cut)

    def cap(self, max_tokens: int | None) -> None:
        """Enforce ``max_tokens`` over reasoning and answer together (finish ``length``)."""
        if max_tokens is None or self.own_tokens <= max_tokens:
            return
        self.reasoning = self.reasoning[:max_tokens]
        self.content = self.content[: max(0, max_tokens - len(self.reasoning))]
        self.tool_call, self.more_calls, self.tool_call_tokens = None, [], 0
        self.finish_reason = "length"

    def break_off(self) -> None:
        """The hosted API's mid-generation failure: part of the answer, then a special end."""
        self.content = self.content[: max(1, len(self.content) // 2)]
        self.tool_call, self.more_calls, self.tool_call_tokens = None, [], 0
        self.finish_reason = "insufficient_system_resource"

    # ---- bodies ------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
        }
        if self.mode == "hosted":
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            u["prompt_cache_hit_tokens"] = self.cached_tokens
            u["prompt_cache_miss_tokens"] = self.prompt_tokens - self.cached_tokens
            u["completion_tokens_details"] = {
                "reasoning_tokens": len(self.reasoning) + sum(len(o.reasoning) for o in self.others)
            }
        elif self.details:
            u["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return u

    def _tool_calls(self) -> list[dict[str, Any]] | None:
        if self.tool_call is None:
            return [] if self.mode == "vllm" else None
        return [self.tool_call, *self.more_calls]

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.thinking:
            msg[self.reasoning_field] = "".join(self.reasoning)
        elif self.mode == "vllm":
            msg[self.reasoning_field] = None
        msg["tool_calls"] = self._tool_calls()
        return msg

    def _choice(self, index: int) -> dict[str, Any]:
        choice: dict[str, Any]
        if self.kind == "completions":
            choice = {"index": index, "text": self.text}
        else:
            choice = {"index": index, "message": self.message()}
        choice["logprobs"] = None
        choice["finish_reason"] = self.finish_reason
        if self.mode == "vllm":
            choice["stop_reason"] = self.stop_reason
        return choice

    def response_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion" if self.kind == "completions" else "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [g._choice(i) for i, g in enumerate([self, *self.others])],
            "usage": self.usage(),
        }

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, index: int = 0
    ) -> dict[str, Any]:
        if self.kind == "completions":
            choice: dict[str, Any] = {"index": index, "text": delta.get("content", "")}
            obj = "text_completion"
        else:
            choice = {"index": index, "delta": delta}
            obj = "chat.completion.chunk"
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        if self.mode == "vllm":
            choice["stop_reason"] = self.stop_reason if finish else None
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The streamed chunks, one per token: role, reasoning, answer, then any tool call;
        with several choices, interleaved token by token as vLLM streams them."""
        if not self.others:
            yield from self._own_chunks(0)
            return
        streams = [g._own_chunks(i) for i, g in enumerate([self, *self.others])]
        while streams:
            for it in list(streams):
                chunk = next(it, None)
                if chunk is None:
                    streams.remove(it)
                else:
                    yield chunk

    def _own_chunks(self, i: int) -> Iterator[dict[str, Any]]:
        for chunk in self._choice_chunks():
            chunk["choices"][0]["index"] = i
            yield chunk

    def _choice_chunks(self) -> Iterator[dict[str, Any]]:
        if self.kind == "chat":
            yield self._chunk({"role": "assistant", "content": ""})
        for tok in self.reasoning:
            yield self._chunk({self.reasoning_field: tok})
        for tok in self.content:
            yield self._chunk({"content": tok})
        calls = self._tool_calls() or []
        if self.tool_fragments:
            streams = [self._fragments(k, call) for k, call in enumerate(calls)]
            if self.interleave:  # one fragment of each call in turn
                while streams:
                    for it in list(streams):
                        piece = next(it, None)
                        if piece is None:
                            streams.remove(it)
                        else:
                            yield self._chunk({"tool_calls": [piece]})
            else:
                for it in streams:
                    for piece in it:
                        yield self._chunk({"tool_calls": [piece]})
        elif calls:
            yield self._chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})

    @staticmethod
    def _fragments(k: int, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """vLLM's pieces of one call: a header (id, name), then the arguments in fragments."""
        fn = call["function"]
        yield {"index": k, **call, "function": {"name": fn["name"], "arguments": ""}}
        for part in split_tokens(fn["arguments"], 8):
            yield {"index": k, "function": {"arguments": part}}

    def final_chunks(self) -> list[dict[str, Any]]:
        """The chunks that end each choice."""
        return [g._chunk({}, g.finish_reason, i) for i, g in enumerate([self, *self.others])]

    def usage_chunk(self) -> dict[str, Any]:
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = self.usage()
        return chunk
