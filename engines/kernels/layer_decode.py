"""One decode step of a V4 attention layer on the Triton kernels.

Given the new token's projections (as ``reference_layer.project`` computes them), a step:

1. writes the token's roped KV into the window cache (entry ``pos % capacity``);
2. feeds the compressor (and, for CSA, the indexer-key compressor) one token;
3. for CSA, scores the visible indexer keys and selects the top-k entries;
4. runs sparse decode attention with the sink and rotates the output back (inverse RoPE,
   interleaved pairs, the layer's RoPE table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from engines.kernels import reference as ref
from engines.kernels.compressor import compress_decode
from engines.kernels.decode import sparse_decode
from engines.kernels.indexer import index_topk
from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import AttentionShape, LayerKind

T = TypeVar("T")


@dataclass(frozen=True)
class LayerCaches:
    """Per-layer decode caches of a batch of rows."""

    kind: LayerKind
    window: PagedEntries
    compressed: PagedEntries | None = None
    state: torch.Tensor | None = None  # compressor state [R, 2, 3, D]
    index_keys: PagedEntries | None = None
    index_state: torch.Tensor | None = None  # indexer-key compressor state [R, 2, 3, Di]


@dataclass(frozen=True)
class TokenInputs:
    """The new token's projections for every row (shapes as in ``reference_layer``)."""

    q: torch.Tensor  # [R, H, D] roped
    raw: torch.Tensor  # [R, D] roped
    comp_kv: torch.Tensor | None = None  # [R, P, D] (checkpoint order: CSA part 0 = next entry)
    comp_gate: torch.Tensor | None = None
    index_q: torch.Tensor | None = None  # [R, Hi, Di] roped
    index_w: torch.Tensor | None = None  # [R, Hi]
    index_kv: torch.Tensor | None = None  # [R, 2, Di]
    index_gate: torch.Tensor | None = None


@dataclass(frozen=True)
class LayerParams:
    shape: AttentionShape
    sink: torch.Tensor  # [H]
    ape: torch.Tensor | None  # [ratio, P, D]
    index_ape: torch.Tensor | None  # [4, 2, Di]
    tables: tuple[torch.Tensor, torch.Tensor]  # the layer's RoPE (shape.rope(kind)), rope_dim
    index_tables: tuple[torch.Tensor, torch.Tensor]  # the same RoPE, index_rope_dim
    norm: torch.Tensor | None = None  # compressor RMSNorm weight [D]
    index_norm: torch.Tensor | None = None  # indexer-key compressor RMSNorm weight [Di]


def decode_step(
    caches: LayerCaches, params: LayerParams, token: TokenInputs, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention output ``[R, H, D]`` (after inverse RoPE) and the CSA selection (or None)."""
    kind, shape = caches.kind, params.shape
    caches.window.write_rows(pos, token.raw)
    if kind is not LayerKind.WINDOW:
        compress_decode(
            _need(token.comp_kv, "comp_kv"),
            _need(token.comp_gate, "comp_gate"),
            _need(params.ape, "ape"),
            _need(params.norm, "norm"),
            pos,
            _need(caches.state, "state"),
            _need(caches.compressed, "compressed"),
            kind,
            *params.tables,
            eps=shape.norm_eps,
        )
    selected = None
    if kind is LayerKind.CSA:
        keys = _need(caches.index_keys, "index_keys")
        compress_decode(
            _need(token.index_kv, "index_kv"),
            _need(token.index_gate, "index_gate"),
            _need(params.index_ape, "index_ape"),
            _need(params.index_norm, "index_norm"),
            pos,
            _need(caches.index_state, "index_state"),
            keys,
            kind,
            *params.index_tables,
            eps=shape.norm_eps,
        )
        selected = index_topk(
            _need(token.index_q, "index_q"),
            _need(token.index_w, "index_w"),
            pos,
            keys,
            shape.index_topk,
        )
    out, _ = sparse_decode(
        token.q,
        pos,
        params.sink,
        caches.window,
        kind,
        compressed=caches.compressed,
        selected=selected,
        scale=shape.softmax_scale,
        window_size=shape.window,
    )
    cos, sin = params.tables
    return ref.apply_rope(out.float(), pos.long()[:, None], cos, sin, inverse=True), selected


def _need(value: T | None, name: str) -> T:
    if value is None:
        raise ValueError(f"this layer kind needs {name}")
    return value
