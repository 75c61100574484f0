"""Simulator settings and V4-like presets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Mode = Literal["vllm", "hosted"]

#: Faults that are not an HTTP status: see ``engines.sim.faults``.
FAULT_KINDS = ("disconnect", "midstream", "insufficient", "stall", "error_event", "no_usage")


def fault_is_valid(fault: str) -> bool:
    """``""`` (none), a fault kind, or an HTTP error status such as ``"503"``."""
    if fault == "" or fault in FAULT_KINDS:
        return True
    return fault.isdigit() and 400 <= int(fault) <= 599


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated backend: a vLLM V4 replica (``mode="vllm"``) or the hosted API.

    Latency model: a request waits for a running slot (``max_num_seqs``), then takes
    ``ttft_base_s + prefill_s_per_token * uncached_prompt_tokens`` to its first token and
    ``itl_s`` per further token. With all three latencies at 0 nothing sleeps at all.
    """

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
    # scheduler and limits
    max_num_seqs: int = 256  # per engine
    # data-parallel engines in the replica, each with its own slots, prefix cache and
    # metrics samples (label ``engine``), as vLLM's --data-parallel-size; a request goes
    # to the engine its X-data-parallel-rank header names (outside 0..N-1: 400), else to
    # the least-loaded one
    data_parallel_size: int = 1
    max_model_len: int = 1_048_576
    # output
    default_output_tokens: int = 24
    reasoning_tokens: int = 16
    reasoning_field: str = "reasoning"
    # a fixed answer text for chat requests instead of generated words ("" = generate)
    reply: str = ""
    enable_prompt_tokens_details: bool = True
    # a tokenizer on text it compresses badly (base64, rare scripts): when above 0, the
    # prompt counts at least this many tokens per UTF-8 byte of its rendered text (1.0: a
    # byte-level tokenizer's worst case, one token per byte)
    prompt_tokens_per_byte: float = 0.0
    keepalive_comments: bool = False
    # vLLM's V4 encoder: unknown roles answer 501, an empty developer message 500
    strict_encoder: bool = True
    # a request on a connection idle longer than this is dropped unanswered, as when
    # vLLM's 5 s keep-alive closes it just as the client reuses it (0: off)
    idle_close_s: float = 0.0
    # the hosted API under overload: 200 at once, then ": keep-alive" comments (blank
    # lines when not streaming) every keepalive_every_s while the request waits queue_s
    # for inference; one still queued after queue_close_s is dropped (the API: ~10 min)
    queue_s: float = 0.0
    keepalive_every_s: float = 1.0
    queue_close_s: float = 600.0
    # the hosted API's per-account concurrency: a request arriving with this many
    # running or waiting answers 429 (0: no limit)
    concurrency_limit: int = 0
    # vLLM's tool calls: streamed as a header chunk (id, name) then argument fragments,
    # and a call forced by a named tool_choice finishes with "stop" (off: whole, "tool_calls")
    tool_call_fragments: bool = True
    named_tool_stop: bool = True
    # off: tool calls come without an "id" (some OpenAI-compatible servers send none)
    tool_call_ids: bool = True
    # at least this many characters of tool-call arguments (or header x-sim-tool-arg-chars)
    tool_arg_chars: int = 0
    # a tool call comes as this many parallel calls (or header x-sim-tool-calls), their
    # fragments in turns when interleaved (or x-sim-interleave-tool-calls: 1), as an
    # OpenAI-shaped stream may send them (call 0 goes on after call 1 began)
    parallel_tool_calls: int = 1
    interleave_tool_calls: bool = False
    # /health and /metrics answer after this long (a busy server answers polls late)
    poll_delay_s: float = 0.0
    # failure injection: fail_rate of requests fail with fail_mode if set, else fail_status
    fail_rate: float = 0.0
    fail_status: int = 503
    fail_mode: str = ""
    stall_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in ("vllm", "hosted"):
            problems.append(f"mode must be 'vllm' or 'hosted', not {self.mode!r}")
        if (
            min(self.ttft_base_s, self.prefill_s_per_token, self.itl_s, self.stall_s) < 0
            or min(self.idle_close_s, self.queue_s, self.poll_delay_s) < 0
        ):
            problems.append("latencies must not be negative")
        if self.concurrency_limit < 0:
            problems.append("concurrency_limit must be >= 0")
        if self.keepalive_every_s <= 0 or self.queue_close_s <= 0:
            problems.append("keepalive_every_s and queue_close_s must be > 0")
        if self.block_size < 1 or self.cache_blocks < 0:
            problems.append("block_size must be >= 1 and cache_blocks >= 0")
        if self.max_num_seqs < 1 or self.max_model_len < 1 or self.data_parallel_size < 1:
            problems.append("max_num_seqs, max_model_len and data_parallel_size must be >= 1")
        if self.default_output_tokens < 1 or self.reasoning_tokens < 0:
            problems.append("default_output_tokens must be >= 1 and reasoning_tokens >= 0")
        if self.reasoning_field not in ("reasoning", "reasoning_content"):
            problems.append("reasoning_field must be 'reasoning' or 'reasoning_content'")
        if not 0.0 <= self.fail_rate <= 1.0:
            problems.append("fail_rate must be within 0..1")
        if not 400 <= self.fail_status <= 599:
            problems.append("fail_status must be an HTTP error status (400..599)")
        if not fault_is_valid(self.fail_mode):
            problems.append(f"fail_mode must be '', a status or one of {', '.join(FAULT_KINDS)}")
        if self.mode == "hosted" and not self.models:
            problems.append("hosted mode needs at least one accepted model name")
        if problems:
            raise ValueError("invalid simulator config: " + "; ".join(problems))

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
                max_num_seqs=128,
                reasoning_tokens=32,
            ),
            "hosted": SimConfig(
                mode="hosted",
                model="deepseek-v4-flash",
                replica_id="hosted",
                ttft_base_s=0.150,
                prefill_s_per_token=0.000_01,
                itl_s=0.015,
                block_size=64,
                cache_blocks=1_000_000,
                max_num_seqs=2500,
                reasoning_field="reasoning_content",
                keepalive_comments=True,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(presets)}")
        return replace(presets[name], **overrides)  # type: ignore[arg-type]  # checked in init

    def zero_latency(self) -> SimConfig:
        """The same backend with no simulated latency: nothing on the request path sleeps."""
        return replace(self, ttft_base_s=0.0, prefill_s_per_token=0.0, itl_s=0.0)

    def scaled(self, factor: float) -> SimConfig:
        """All latencies multiplied by ``factor`` (0 gives the zero-latency mode)."""
        return replace(
            self,
            ttft_base_s=self.ttft_base_s * factor,
            prefill_s_per_token=self.prefill_s_per_token * factor,
            itl_s=self.itl_s * factor,
        )

    @property
    def instant(self) -> bool:
        return self.ttft_base_s == 0 and self.prefill_s_per_token == 0 and self.itl_s == 0
