"""vLLM plugin entry point for tiergate's V4 attention kernels.

vLLM calls :func:`register` in every process (``vllm.general_plugins`` entry point) before
it builds the model. FlashMLA's sparse kernels, which vLLM uses for V4 attention, run on
Hopper and Blackwell only (compute capability 9.x / 10.x); on other GPUs (for example A100,
8.0) the Triton kernels are the way to serve V4. ``register`` then defines the custom ops
``torch.ops.tiergate.v4_sparse_decode``, ``v4_index_topk`` and ``v4_compress_decode``.

This module imports nothing heavy at import time: torch, triton and vLLM are loaded inside
:func:`register`, which never raises (a plugin that raises takes the server down); it logs
and returns the decision instead. ``TIERGATE_V4_KERNELS`` = ``auto`` (default), ``on``
(register even where FlashMLA runs, for testing) or ``off``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass

ENTRY_POINT_GROUP = "vllm.general_plugins"
ENTRY_POINT = "tiergate_v4_kernels = engines.kernels.plugin:register"
ENV_SWITCH = "TIERGATE_V4_KERNELS"
FLASHMLA_MAJORS = frozenset({9, 10})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    register: bool
    reason: str


def decide(mode: str, capability: tuple[int, int] | None, have_triton: bool) -> Decision:
    """Whether to register the kernels for a switch value and the GPU's compute capability."""
    mode = mode.strip().lower() or "auto"
    if mode not in {"auto", "on", "off"}:
        return Decision(False, f"{ENV_SWITCH}={mode!r} is not auto, on or off")
    if mode == "off":
        return Decision(False, f"disabled by {ENV_SWITCH}=off")
    if not have_triton:
        return Decision(False, "torch and triton are not installed")
    if mode == "on":
        return Decision(True, f"forced by {ENV_SWITCH}=on")
    if capability is None:
        return Decision(False, "no CUDA device")
    if capability[0] in FLASHMLA_MAJORS:
        return Decision(
            False, f"FlashMLA serves compute capability {capability[0]}.{capability[1]}"
        )
    return Decision(True, f"no FlashMLA for compute capability {capability[0]}.{capability[1]}")


def _capability() -> tuple[int, int] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # blocked or half-initialised module
        return False


def register() -> Decision:
    """vLLM plugin hook: define the custom ops where they are needed; never raises."""
    try:
        have = _installed("torch") and _installed("triton")
        mode = os.environ.get(ENV_SWITCH, "auto")
        capability = _capability() if have and mode.strip().lower() != "off" else None
        decision = decide(mode, capability, have)
        if decision.register:
            importlib.import_module("engines.kernels.ops")
        log.info(
            "tiergate V4 kernels: %s (%s)",
            "registered" if decision.register else "skipped",
            decision.reason,
        )
        return decision
    except Exception as exc:  # a failing plugin must not stop vLLM; it falls back to its own path
        log.exception("tiergate V4 kernels: registration failed")
        return Decision(False, f"registration failed: {exc}")
