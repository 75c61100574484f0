"""vLLM launch profiles for self-hosted DeepSeek V4 replicas, with a memory estimate.

A profile turns (model, GPU kind, GPU count, context length) into the ``vllm serve``
command line and environment that the vLLM recipes prescribe for V4: FP8 KV cache, block
size 256, data + expert parallelism, the ``deepseek_v4`` tokenizer/tool/reasoning parsers.
It refuses configurations whose memory estimate does not fit.

Memory model, per GPU (decimal GB):

* static footprint (weights and runtime buffers) split evenly over the replica's GPUs:
  about 170 GB for Flash and 960 GB for Pro per replica (the recipes' figures);
* KV cache for one sequence at ``max_model_len`` on each data-parallel rank, with vLLM's
  V4 layout: a CSA layer stores one 584-byte entry per 4 tokens plus a 132-byte FP8
  indexer key, an HCA layer one 584-byte entry per 128 tokens, and every layer a window of
  128 raw tokens (584 bytes each); tokens are allocated in 256-token blocks.

The budget is ``gpu_memory * gpu_memory_utilization``. Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from engines.kernels.shapes import FLASH, PRO, AttentionShape

GB = 1_000_000_000
BLOCK_SIZE = 256
ONE_MILLION = 1_048_576
MAX_EFFORT_MIN_LEN = 393_216
FP8_ENTRY_BYTES = 584
FP8_INDEX_KEY_BYTES = 132
BF16_ENTRY_BYTES = 1024
BF16_INDEX_KEY_BYTES = 256


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    flashmla: bool  # FlashMLA sparse kernels run here (Hopper / Blackwell)


GPUS = {
    "h200": Gpu("h200", 141.0, True),
    "b200": Gpu("b200", 180.0, True),
    "a100": Gpu("a100", 80.0, False),
}


@dataclass(frozen=True)
class Model:
    name: str
    hf_id: str
    served_name: str
    static_gb: float
    shape: AttentionShape
    recommended_gpus: int


MODELS = {
    "flash": Model("flash", "deepseek-ai/DeepSeek-V4-Flash", "deepseek-v4-flash", 170.0, FLASH, 4),
    "pro": Model("pro", "deepseek-ai/DeepSeek-V4-Pro", "deepseek-v4-pro", 960.0, PRO, 8),
}

# The recipes cap Pro on 8x H200 at this context length.
RECIPE_MAX_LEN = {("pro", "h200"): 800_000}


class ProfileError(ValueError):
    """A configuration that cannot be served (the message says why and what would fit)."""


def kv_bytes_per_sequence(shape: AttentionShape, tokens: int, *, fp8: bool = True) -> int:
    """KV cache bytes of one sequence of ``tokens`` tokens across all layers."""
    entry = FP8_ENTRY_BYTES if fp8 else BF16_ENTRY_BYTES
    key = FP8_INDEX_KEY_BYTES if fp8 else BF16_INDEX_KEY_BYTES
    padded = -(-tokens // BLOCK_SIZE) * BLOCK_SIZE
    csa = shape.csa_layers * (padded // 4) * (entry + key)
    hca = shape.hca_layers * (padded // 128) * entry
    window = shape.n_layers * min(shape.window, padded) * entry
    return csa + hca + window


@dataclass(frozen=True)
class MemoryEstimate:
    gpu_budget_gb: float
    static_per_gpu_gb: float
    kv_per_sequence_gb: float
    kv_budget_gb: float
    sequences_per_gpu: int

    @property
    def fits(self) -> bool:
        return self.sequences_per_gpu >= 1


def estimate(
    model: Model, gpu: Gpu, gpus: int, max_model_len: int, utilization: float
) -> MemoryEstimate:
    budget = gpu.memory_gb * utilization
    static = model.static_gb / gpus
    kv_seq = kv_bytes_per_sequence(model.shape, max_model_len) / GB
    kv_budget = budget - static
    seqs = int(kv_budget // kv_seq) if kv_budget > 0 else 0
    return MemoryEstimate(budget, static, kv_seq, kv_budget, seqs)


def largest_fitting_len(model: Model, gpu: Gpu, gpus: int, utilization: float) -> int:
    """Longest context (a multiple of 256) with room for one sequence per GPU; 0 if none."""
    lo, hi = 0, ONE_MILLION // BLOCK_SIZE
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(model, gpu, gpus, mid * BLOCK_SIZE, utilization).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo * BLOCK_SIZE


@dataclass(frozen=True)
class Profile:
    model: Model
    gpu: Gpu
    gpus: int
    max_model_len: int
    argv: list[str]
    env: dict[str, str]
    memory: MemoryEstimate
    warnings: list[str] = field(default_factory=list)

    def shell(self) -> str:
        lines = ["#!/usr/bin/env bash", f"# tiergate engine profile: {self._summary()}"]
        lines += [f"#   warning: {w}" for w in self.warnings]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        args = [shlex.quote(a) for a in self.argv]
        body, i = [args[0] + " " + args[1] + " " + args[2]], 3
        while i < len(args):
            take = 2 if i + 1 < len(args) and not args[i + 1].startswith("--") else 1
            body.append(" ".join(args[i : i + take]))
            i += take
        lines.append("exec " + " \\\n  ".join(body))
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        m = self.memory
        return {
            "model": self.model.name,
            "gpu": self.gpu.name,
            "gpus": self.gpus,
            "max_model_len": self.max_model_len,
            "argv": self.argv,
            "env": self.env,
            "memory_gb": {
                "budget_per_gpu": round(m.gpu_budget_gb, 2),
                "static_per_gpu": round(m.static_per_gpu_gb, 2),
                "kv_per_sequence": round(m.kv_per_sequence_gb, 3),
                "kv_budget_per_gpu": round(m.kv_budget_gb, 2),
                "full_length_sequences_per_gpu": m.sequences_per_gpu,
            },
            "warnings": self.warnings,
        }

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def _summary(self) -> str:
        m = self.memory
        return (
            f"{self.model.name} on {self.gpus}x {self.gpu.name}, max-model-len "
            f"{self.max_model_len}: {m.static_per_gpu_gb:.1f} GB static + "
            f"{m.kv_per_sequence_gb:.2f} GB KV per full-length sequence per GPU of "
            f"{m.gpu_budget_gb:.1f} GB; {m.sequences_per_gpu} full-length sequences per GPU"
        )


def build(
    model_name: str,
    gpu_name: str,
    gpus: int,
    *,
    max_model_len: int | None = None,
    utilization: float = 0.9,
    port: int = 8000,
    host: str = "0.0.0.0",
    model_path: str | None = None,
    mtp_tokens: int = 0,
) -> Profile:
    """The launch profile for one replica, or :class:`ProfileError` if it cannot fit."""
    model, gpu = _lookup(model_name, gpu_name)
    if gpus < 1:
        raise ProfileError("--gpus must be at least 1")
    if not 0.1 <= utilization <= 0.98:
        raise ProfileError("--gpu-memory-utilization must be within 0.1 .. 0.98")
    recipe_len = RECIPE_MAX_LEN.get((model.name, gpu.name))
    length = max_model_len if max_model_len is not None else (recipe_len or ONE_MILLION)
    if not 1 <= length <= ONE_MILLION:
        raise ProfileError(f"--max-model-len must be within 1 .. {ONE_MILLION}")
    memory = estimate(model, gpu, gpus, length, utilization)
    if not memory.fits:
        best = largest_fitting_len(model, gpu, gpus, utilization)
        hint = f"the longest that fits is {best}" if best else "use more or larger GPUs"
        raise ProfileError(
            f"{model.name} on {gpus}x {gpu.name} at max-model-len {length} needs "
            f"{memory.static_per_gpu_gb:.1f} GB static + {memory.kv_per_sequence_gb:.2f} GB KV "
            f"per GPU but has {memory.gpu_budget_gb:.1f} GB; {hint}"
        )
    warnings = _warnings(model, gpu, gpus, length, recipe_len)
    argv = _argv(model, gpus, length, utilization, host, port, model_path, mtp_tokens)
    env = {"TIERGATE_V4_KERNELS": "off" if gpu.flashmla else "on"}
    return Profile(model, gpu, gpus, length, argv, env, memory, warnings)


def _lookup(model_name: str, gpu_name: str) -> tuple[Model, Gpu]:
    try:
        model = MODELS[model_name]
    except KeyError:
        raise ProfileError(f"unknown model {model_name!r}; choose {sorted(MODELS)}") from None
    try:
        gpu = GPUS[gpu_name]
    except KeyError:
        raise ProfileError(f"unknown GPU {gpu_name!r}; choose {sorted(GPUS)}") from None
    return model, gpu


def _warnings(model: Model, gpu: Gpu, gpus: int, length: int, recipe_len: int | None) -> list[str]:
    out = []
    if length < MAX_EFFORT_MIN_LEN:
        out.append(
            f"max-model-len below {MAX_EFFORT_MIN_LEN}: reasoning effort 'max' is unavailable"
        )
    if recipe_len and length > recipe_len:
        out.append(f"the vLLM recipe caps {model.name} on {gpu.name} at {recipe_len} tokens")
    if gpus < model.recommended_gpus:
        out.append(f"the recipes run {model.name} on {model.recommended_gpus} GPUs per replica")
    if not gpu.flashmla:
        out.append(
            f"no FlashMLA on {gpu.name}: V4 attention runs on tiergate's Triton kernels "
            "(engines.kernels plugin); expect lower throughput than on Hopper/Blackwell"
        )
    return out


def _argv(
    model: Model,
    gpus: int,
    length: int,
    utilization: float,
    host: str,
    port: int,
    model_path: str | None,
    mtp_tokens: int,
) -> list[str]:
    argv = [
        "vllm", "serve", model_path or model.hf_id,
        "--served-model-name", model.served_name,
        "--kv-cache-dtype", "fp8",
        "--block-size", str(BLOCK_SIZE),
        "--enable-expert-parallel",
        "--data-parallel-size", str(gpus),
        "--tokenizer-mode", "deepseek_v4",
        "--tool-call-parser", "deepseek_v4",
        "--enable-auto-tool-choice",
        "--reasoning-parser", "deepseek_v4",
        "--enable-prompt-tokens-details",
        "--max-model-len", str(length),
        "--gpu-memory-utilization", f"{utilization:g}",
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    if mtp_tokens:
        spec = {"method": "mtp", "num_speculative_tokens": mtp_tokens}
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    return argv
