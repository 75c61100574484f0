"""The kernels as torch custom ops (``torch.ops.tiergate.*``), for vLLM graphs.

Custom ops keep the Triton launches opaque to ``torch.compile`` and CUDA-graph capture and
give each a fake (shape-only) implementation. Caches cross the op boundary as plain tensors:
``data`` (bf16 ``[slots, dim]`` or uint8 FP8 entries), ``block_table`` int32 and the block
size; ``tail`` is the FP8 format's bf16 tail (ignored for bf16 data).
"""

from __future__ import annotations

import torch

from engines.kernels.compressor import compress_decode
from engines.kernels.decode import sparse_decode
from engines.kernels.fp8 import EntryFormat
from engines.kernels.indexer import index_topk
from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import LayerKind

NAMESPACE = "tiergate"


def _cache(
    data: torch.Tensor, table: torch.Tensor, block_size: int, dim: int, tail: int
) -> PagedEntries:
    fmt = EntryFormat(dim=dim, tail=tail) if data.dtype == torch.uint8 else None
    return PagedEntries(data=data, block_table=table, block_size=block_size, dim=dim, fmt=fmt)


@torch.library.custom_op(f"{NAMESPACE}::v4_sparse_decode", mutates_args=())
def v4_sparse_decode(
    q: torch.Tensor,
    pos: torch.Tensor,
    sink: torch.Tensor,
    window_data: torch.Tensor,
    window_table: torch.Tensor,
    window_block_size: int,
    comp_data: torch.Tensor | None,
    comp_table: torch.Tensor | None,
    comp_block_size: int,
    selected: torch.Tensor | None,
    kind: str,
    scale: float,
    window_size: int,
    tail: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = q.shape[-1]
    window = _cache(window_data, window_table, window_block_size, dim, tail)
    comp = None
    if comp_data is not None and comp_table is not None:
        comp = _cache(comp_data, comp_table, comp_block_size, dim, tail)
    return sparse_decode(
        q,
        pos,
        sink,
        window,
        LayerKind(kind),
        compressed=comp,
        selected=selected,
        scale=scale,
        window_size=window_size,
    )


@v4_sparse_decode.register_fake
def _(q: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
    rows, heads, dim = q.shape
    out = q.new_empty(rows, heads, dim, dtype=torch.bfloat16)
    return out, q.new_empty(rows, heads, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::v4_index_topk", mutates_args=())
def v4_index_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    pos: torch.Tensor,
    key_data: torch.Tensor,
    key_table: torch.Tensor,
    key_block_size: int,
    k: int,
    tail: int,
) -> torch.Tensor:
    keys = _cache(key_data, key_table, key_block_size, q.shape[-1], tail)
    return index_topk(q, weights, pos, keys, k)


@v4_index_topk.register_fake
def _(q: torch.Tensor, weights: torch.Tensor, pos: torch.Tensor, *args: object) -> torch.Tensor:
    k = args[3]
    assert isinstance(k, int)
    return q.new_empty(q.shape[0], k, dtype=torch.int32)


@torch.library.custom_op(f"{NAMESPACE}::v4_compress_decode", mutates_args=("state", "cache_data"))
def v4_compress_decode(
    kv: torch.Tensor,
    gate: torch.Tensor,
    ape: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    pos: torch.Tensor,
    state: torch.Tensor,
    cache_data: torch.Tensor,
    cache_table: torch.Tensor,
    cache_block_size: int,
    kind: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state_index: torch.Tensor | None,
    tail: int,
) -> None:
    cache = _cache(cache_data, cache_table, cache_block_size, kv.shape[-1], tail)
    compress_decode(
        kv,
        gate,
        ape,
        norm,
        pos,
        state,
        cache,
        LayerKind(kind),
        cos,
        sin,
        eps=eps,
        state_index=state_index,
    )


@v4_compress_decode.register_fake
def _(*args: object) -> None:
    return None


OPS = ("v4_sparse_decode", "v4_index_topk", "v4_compress_decode")
