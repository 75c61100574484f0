"""Token usage as billed: cache-hit input, cache-miss input, output (reasoning included)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    cache_hit_tokens: int = 0
    cache_miss_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.cache_hit_tokens + self.cache_miss_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def to_deepseek(self) -> dict[str, Any]:
        """The usage object in the hosted DeepSeek API's shape."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_cache_hit_tokens": self.cache_hit_tokens,
            "prompt_cache_miss_tokens": self.cache_miss_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_hit_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_from_openai(u: Mapping[str, Any] | None) -> Usage | None:
    """Read usage in either DeepSeek's shape (hit/miss fields) or vLLM/OpenAI's (cached_tokens)."""
    if not u:
        return None
    prompt = _int(u.get("prompt_tokens"))
    output = _int(u.get("completion_tokens"))
    details = u.get("completion_tokens_details") or {}
    reasoning = _int(details.get("reasoning_tokens")) if isinstance(details, Mapping) else 0
    if "prompt_cache_hit_tokens" in u or "prompt_cache_miss_tokens" in u:
        hit = _int(u.get("prompt_cache_hit_tokens"))
        miss = _int(u.get("prompt_cache_miss_tokens"))
        if hit + miss != prompt and prompt:
            miss = max(prompt - hit, 0)
    else:
        pdetails = u.get("prompt_tokens_details") or {}
        hit = _int(pdetails.get("cached_tokens")) if isinstance(pdetails, Mapping) else 0
        hit = min(hit, prompt)
        miss = prompt - hit
    return Usage(hit, miss, output, reasoning)
