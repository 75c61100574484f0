"""DeepSeek V4 attention shapes (pure Python: no torch, no triton).

One layer of V4 attention is shared-KV MQA over a 512-dim latent (the last 64 dims roped),
a sliding window over the last 128 raw tokens, a per-head sink, and, depending on the layer
kind, compressed entries:

* ``CSA``: 4:1 compression with overlapping windows (each entry pools 8 tokens, stride 4);
  a lightning indexer picks the top-k visible entries.
* ``HCA``: 128:1 non-overlapping compression; every visible entry is attended.
* ``WINDOW``: the sliding window only.

Causality: a query at position ``i`` may use entry ``j`` of a layer with ratio ``r`` only when
``i >= r * j + r - 1``, i.e. when the last token the entry pools has been seen.

RoPE differs by layer kind (``AttentionShape.rope``): window-only layers use ``rope_theta``
without scaling; CSA and HCA layers use ``compress_rope_theta`` with YaRN frequency
interpolation. The numbers are the checkpoint's ``config.json`` values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class LayerKind(StrEnum):
    WINDOW = "window"
    CSA = "csa"
    HCA = "hca"

    @property
    def ratio(self) -> int:
        """Raw tokens per compressed entry (0: no compressed entries)."""
        return {LayerKind.WINDOW: 0, LayerKind.CSA: 4, LayerKind.HCA: 128}[self]

    @property
    def overlap(self) -> bool:
        """Whether an entry also pools the previous block (CSA: 8 tokens at stride 4)."""
        return self is LayerKind.CSA


@dataclass(frozen=True)
class RopeConfig:
    """RoPE frequencies of one layer: base ``theta`` and optional YaRN interpolation.

    ``original_max_pos == 0`` disables YaRN. With YaRN, frequency ``i`` of ``rope_dim // 2``
    is blended between ``f_i / factor`` (slow dims) and ``f_i`` (fast dims) by a linear ramp
    over the correction range given by ``beta_fast`` and ``beta_slow`` rotations within
    ``original_max_pos`` positions. The softmax scale is not changed.
    """

    theta: float = 10000.0
    factor: float = 1.0
    original_max_pos: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    @property
    def yarn(self) -> bool:
        return self.original_max_pos > 0


def visible_entries(pos: int, ratio: int) -> int:
    """Number of compressed entries a query at ``pos`` may use (entries ``0 .. n-1``)."""
    if ratio <= 0:
        return 0
    return (pos + 1) // ratio


def window_start(pos: int, window: int) -> int:
    """First raw token in the sliding window of a query at ``pos`` (the window ends at pos)."""
    return max(0, pos - window + 1)


@dataclass(frozen=True)
class AttentionShape:
    """Per-layer attention dimensions of one V4 model."""

    name: str
    n_heads: int
    index_topk: int
    window_layers: int
    csa_layers: int
    hca_layers: int
    head_dim: int = 512
    rope_dim: int = 64
    window: int = 128
    index_heads: int = 64
    index_dim: int = 128
    index_rope_dim: int = 64
    # RoPE (config.json: rope_theta, compress_rope_theta, rope_scaling) and RMSNorm eps
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rope_factor: float = 16.0
    rope_original_max_pos: int = 65536
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    norm_eps: float = 1e-6

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> AttentionShape:
        """The attention shape a model's ``config.json`` (Hugging Face keys) describes.

        Layer kinds come from ``compress_ratios`` (0: window only, 4: CSA, 128: HCA) over the
        first ``num_hidden_layers`` entries (later ones belong to the MTP layers); the
        indexer ropes ``qk_rope_head_dim`` dims like the layer."""
        ratios = list(config["compress_ratios"])[: config["num_hidden_layers"]]
        if set(ratios) - {0, 4, 128}:
            raise ValueError(f"unknown compress ratios {sorted(set(ratios) - {0, 4, 128})}")
        scaling = config.get("rope_scaling") or {}
        return cls(
            name=name,
            n_heads=config["num_attention_heads"],
            index_topk=config["index_topk"],
            window_layers=ratios.count(0),
            csa_layers=ratios.count(4),
            hca_layers=ratios.count(128),
            head_dim=config["head_dim"],
            rope_dim=config["qk_rope_head_dim"],
            window=config["sliding_window"],
            index_heads=config["index_n_heads"],
            index_dim=config["index_head_dim"],
            index_rope_dim=config["qk_rope_head_dim"],
            rope_theta=float(config["rope_theta"]),
            compress_rope_theta=float(config["compress_rope_theta"]),
            rope_factor=float(scaling.get("factor", 1.0)),
            rope_original_max_pos=int(scaling.get("original_max_position_embeddings", 0)),
            rope_beta_fast=float(scaling.get("beta_fast", 32)),
            rope_beta_slow=float(scaling.get("beta_slow", 1)),
            norm_eps=float(config["rms_norm_eps"]),
        )

    def rope(self, kind: LayerKind) -> RopeConfig:
        """The RoPE of a layer kind: plain ``rope_theta`` for window-only layers, else
        ``compress_rope_theta`` with YaRN. The indexer of a CSA layer uses its layer's."""
        if kind is LayerKind.WINDOW:
            return RopeConfig(theta=self.rope_theta)
        return RopeConfig(
            theta=self.compress_rope_theta,
            factor=self.rope_factor,
            original_max_pos=self.rope_original_max_pos,
            beta_fast=self.rope_beta_fast,
            beta_slow=self.rope_beta_slow,
        )

    @property
    def n_layers(self) -> int:
        return self.window_layers + self.csa_layers + self.hca_layers

    @property
    def softmax_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def layer_count(self, kind: LayerKind) -> int:
        return {
            LayerKind.WINDOW: self.window_layers,
            LayerKind.CSA: self.csa_layers,
            LayerKind.HCA: self.hca_layers,
        }[kind]


FLASH = AttentionShape(
    name="flash", n_heads=64, index_topk=512, window_layers=2, csa_layers=21, hca_layers=20
)
PRO = AttentionShape(
    name="pro", n_heads=128, index_topk=1024, window_layers=0, csa_layers=30, hca_layers=31
)
SHAPES = {s.name: s for s in (FLASH, PRO)}
