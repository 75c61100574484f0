"""Simulator settings and V4-like presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Mode = Literal["vllm", "hosted"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    mode: Mode = "vllm"
    model: str = "deepseek-ai/DeepSeek-V4-Flash"
    models: tuple[str, ...] = ("deepseek-v4-flash", "deepseek-v4-pro", "deepseek-flash")
    replica_id: str = "sim-0"
    # latency model
    ttft_base_s: float = 0.0
    prefill_s_per_token: float = 0.0
    itl_s: float = 0.0
    # prefix cache: chained hashes of fixed-size token blocks, LRU, bounded
    block_size: int = 256
    cache_blocks: int = 4096
    # scheduler
    max_num_seqs: int = 256
    max_model_len: int = 1_048_576
    # output
    default_output_tokens: int = 24
    reasoning_tokens: int = 16
    reasoning_field: str = "reasoning"
    enable_prompt_tokens_details: bool = True
    keepalive_comments: bool = False
    # failure injection
    fail_rate: float = 0.0
    fail_status: int = 503
    fail_mode: str = ""
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def preset(name: str, **overrides: object) -> SimConfig:
        """V4-like defaults: ``flash`` and ``pro`` vLLM replicas, ``hosted`` DeepSeek API."""
        presets: dict[str, SimConfig] = {
            "flash": SimConfig(
                mode="vllm",
                model="deepseek-ai/DeepSeek-V4-Flash",
                ttft_base_s=0.030,
                prefill_s_per_token=0.000_02,
                itl_s=0.012,
            ),
            "pro": SimConfig(
                mode="vllm",
                model="deepseek-ai/DeepSeek-V4-Pro",
                ttft_base_s=0.060,
                prefill_s_per_token=0.000_05,
                itl_s=0.025,
                reasoning_tokens=32,
            ),
            "hosted": SimConfig(
                mode="hosted",
                model="deepseek-v4-flash",
                ttft_base_s=0.150,
                prefill_s_per_token=0.000_01,
                itl_s=0.015,
                block_size=64,
                cache_blocks=1_000_000,
                reasoning_field="reasoning_content",
                enable_prompt_tokens_details=True,
                keepalive_comments=True,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(presets)}")
        return replace(presets[name], **overrides)  # type: ignore[arg-type]

    def zero_latency(self) -> SimConfig:
        return replace(self, ttft_base_s=0.0, prefill_s_per_token=0.0, itl_s=0.0)

    def scaled(self, factor: float) -> SimConfig:
        return replace(
            self,
            ttft_base_s=self.ttft_base_s * factor,
            prefill_s_per_token=self.prefill_s_per_token * factor,
            itl_s=self.itl_s * factor,
        )

    @property
    def instant(self) -> bool:
        return self.ttft_base_s == 0 and self.prefill_s_per_token == 0 and self.itl_s == 0
