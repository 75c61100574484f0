"""Sparse decode attention (Triton): window + compressed entries + sink, split-K.

Each row (one query token) attends its sliding window of raw tokens and, depending on the
layer, the CSA entries the indexer chose or every visible HCA entry. The list of KV rows is
cut into tiles of ``BN`` rows; tiles are spread over ``splits`` programs per row and head
block. A program loads each KV tile once and uses it for all ``BH`` query heads of its block
as both K and V (the single shared KV head), keeping an online softmax (base-2 logits) in
registers. A second kernel merges the splits' partial results and folds in the per-head
sink, which adds ``exp(sink)`` to the denominator and nothing to the numerator.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import LayerKind
from engines.kernels.tl_entries import interpreted, load_entries, mma, to_bf16

LOG2E = 1.4426950408889634
_MODES = {LayerKind.WINDOW: 0, LayerKind.CSA: 1, LayerKind.HCA: 2}


@triton.jit
def _tile_slots(  # type: ignore[no-untyped-def]
    idx, valid, table_ptr, row, table_stride, block_size
):
    page = tl.load(table_ptr + row * table_stride + idx // block_size, mask=valid, other=0)
    return page.to(tl.int64) * block_size + idx % block_size


@triton.jit
def _decode_split_kernel(  # type: ignore[no-untyped-def]
    q_ptr,
    pos_ptr,
    sel_ptr,
    sel_stride,
    w_table,
    w_table_stride,
    w_block,
    w_capacity,
    w_body,
    w_tail,
    w_scale,
    w_stride,
    c_table,
    c_table_stride,
    c_block,
    c_body,
    c_tail,
    c_scale,
    c_stride,
    acc_ptr,
    ml_ptr,
    qk_scale,
    splits,
    H: tl.constexpr,
    D: tl.constexpr,
    TAIL: tl.constexpr,
    FP8: tl.constexpr,
    WINDOW: tl.constexpr,
    MODE: tl.constexpr,
    RATIO: tl.constexpr,
    K: tl.constexpr,
    BH: tl.constexpr,
    BN: tl.constexpr,
    F32: tl.constexpr,
):
    hb = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    pos = tl.load(pos_ptr + row)
    w_first = tl.maximum(pos - WINDOW + 1, 0)
    n_win_tiles = tl.cdiv(pos - w_first + 1, BN)
    n_vis = (pos + 1) // RATIO
    if MODE == 0:
        n_comp = 0
    elif MODE == 1:
        n_comp = K
    else:
        n_comp = n_vis
    n_tiles = n_win_tiles + tl.cdiv(n_comp, BN)
    per_split = tl.cdiv(n_tiles, splits)
    t_end = tl.minimum(per_split * (split + 1), n_tiles)

    h = hb * BH + tl.arange(0, BH)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + row * (H * D) + h[:, None] * D + d[None, :], mask=h[:, None] < H, other=0.0)
    q = q.to(tl.bfloat16)
    m = tl.full([BH], float("-inf"), dtype=tl.float32)
    lsum = tl.zeros([BH], dtype=tl.float32)
    acc = tl.zeros([BH, D], dtype=tl.float32)
    for t in range(per_split * split, t_end):
        n = tl.arange(0, BN)
        if t < n_win_tiles:
            tok = w_first + t * BN + n
            valid = tok <= pos
            slots = _tile_slots(tok % w_capacity, valid, w_table, row, w_table_stride, w_block)
            kv = load_entries(w_body, w_tail, w_scale, slots, valid, w_stride, D, TAIL, FP8)
        else:
            j = (t - n_win_tiles) * BN + n
            if MODE == 1:
                entry = tl.load(sel_ptr + row * sel_stride + j, mask=j < K, other=-1)
                valid = (entry >= 0) & (entry < n_vis)
            else:
                entry = j
                valid = j < n_vis
            slots = _tile_slots(entry, valid, c_table, row, c_table_stride, c_block)
            kv = load_entries(c_body, c_tail, c_scale, slots, valid, c_stride, D, TAIL, FP8)
        s = mma(q, tl.trans(kv), F32) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        lsum = lsum * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mma(p, kv, F32)
        m = m_new
    part = (row * splits + split) * H + h
    tl.store(acc_ptr + part[:, None] * D + d[None, :], acc, mask=h[:, None] < H)
    tl.store(ml_ptr + part * 2, m, mask=h < H)
    tl.store(ml_ptr + part * 2 + 1, lsum, mask=h < H)


@triton.jit
def _merge_kernel(  # type: ignore[no-untyped-def]
    acc_ptr,
    ml_ptr,
    sink_ptr,
    out_ptr,
    lse_ptr,
    splits,
    H: tl.constexpr,
    D: tl.constexpr,
    BH: tl.constexpr,
    S_PAD: tl.constexpr,
):
    hb = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    h = hb * BH + tl.arange(0, BH)
    hmask = h < H
    s = tl.arange(0, S_PAD)
    part = (row * splits + s[:, None]) * H + h[None, :]
    pmask = (s[:, None] < splits) & hmask[None, :]
    m = tl.load(ml_ptr + part * 2, mask=pmask, other=float("-inf"))
    lsum = tl.load(ml_ptr + part * 2 + 1, mask=pmask, other=0.0)
    sink = tl.load(sink_ptr + h, mask=hmask, other=0.0) * 1.4426950408889634
    top = tl.maximum(tl.max(m, axis=0), sink)
    weight = tl.exp2(m - top[None, :])
    denom = tl.sum(lsum * weight, axis=0) + tl.exp2(sink - top)
    d = tl.arange(0, D)
    out = tl.zeros([BH, D], dtype=tl.float32)
    for i in range(0, splits):
        w_i = tl.exp2(
            tl.load(ml_ptr + ((row * splits + i) * H + h) * 2, mask=hmask, other=0.0) - top
        )
        base = ((row * splits + i) * H + h)[:, None] * D + d[None, :]
        out += tl.load(acc_ptr + base, mask=hmask[:, None], other=0.0) * w_i[:, None]
    out = out / denom[:, None]
    tl.store(out_ptr + (row * H + h)[:, None] * D + d[None, :], to_bf16(out), mask=hmask[:, None])
    tl.store(lse_ptr + row * H + h, (top + tl.log2(denom)) / 1.4426950408889634, mask=hmask)


def default_splits(rows: int, head_blocks: int, n_tiles: int, device: torch.device) -> int:
    """Splits per (row, head block) so that about two waves of programs fill the GPU."""
    if device.type != "cuda":
        return max(1, min(n_tiles, 2))
    sms = int(torch.cuda.get_device_properties(device).multi_processor_count)
    return max(1, min(n_tiles, math.ceil(2 * sms / (rows * head_blocks))))


def default_tiles(rows: int, fp8: bool) -> tuple[int, int]:
    """``(block_h, block_n)``: query heads per program and KV rows per tile.

    Chosen from the launch-parameter sweep on an H200 at 128k (docs/kernels.md): with many
    rows, 32 heads per program read and dequantize each tile for twice the heads (up to 36%
    faster at batch 32); with few rows that halves the programs and the GPU idles, so 16 heads,
    with 64-row tiles for bf16 (fewer loop trips) and 32-row tiles for FP8 (the dequantized
    tile stays small). Batch 16 was not measured: it takes the large-batch tiles.
    """
    if rows >= 16:
        return 32, 32
    return (16, 32) if fp8 else (16, 64)


def sparse_decode(
    q: torch.Tensor,
    pos: torch.Tensor,
    sink: torch.Tensor,
    window: PagedEntries,
    kind: LayerKind,
    *,
    compressed: PagedEntries | None = None,
    selected: torch.Tensor | None = None,
    scale: float | None = None,
    window_size: int = 128,
    splits: int | None = None,
    block_h: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention for ``q [R, H, D]`` at ``pos [R]`` int32; returns ``(out, lse)``.

    ``out [R, H, D]`` bf16 is the attention output before inverse RoPE, ``lse [R, H]`` float32
    the natural log of each head's softmax denominator (sink included). ``window`` holds the
    raw tokens, token ``t`` at entry ``t % window.capacity`` (a ring of at least
    ``window_size`` entries, or room for the whole sequence), ``compressed`` the layer's
    entries, ``selected [R, K]`` int32 the CSA entries per row (-1: unused; entries not yet
    visible at ``pos`` are ignored). ``sink [H]`` are logits.
    """
    rows, heads, dim = q.shape
    if kind is not LayerKind.WINDOW and compressed is None:
        raise ValueError(f"{kind} attention needs the compressed cache")
    if kind is LayerKind.CSA and selected is None:
        raise ValueError("CSA attention needs the selected entries")
    comp = compressed if compressed is not None else window
    if (window.fmt is None) != (comp.fmt is None) or window.dim != dim or comp.dim != dim:
        raise ValueError("window and compressed caches must share the entry format and dim")
    sel = (
        selected if selected is not None else torch.empty(1, 1, dtype=torch.int32, device=q.device)
    )
    k = int(sel.shape[1]) if kind is LayerKind.CSA else 0
    max_entries = k if kind is LayerKind.CSA else (comp.capacity if kind is LayerKind.HCA else 0)
    tiles = default_tiles(rows, window.fmt is not None)
    block_h = max(16, min(block_h or tiles[0], triton.next_power_of_2(heads)))
    block_n = block_n or tiles[1]
    head_blocks = triton.cdiv(heads, block_h)
    n_tiles = triton.cdiv(window_size, block_n) + triton.cdiv(max_entries, block_n)
    if splits is None:
        splits = default_splits(rows, head_blocks, n_tiles, q.device)
    acc = torch.empty(rows, splits, heads, dim, dtype=torch.float32, device=q.device)
    ml = torch.empty(rows, splits, heads, 2, dtype=torch.float32, device=q.device)
    wa, ca = window.kernel_args(), comp.kernel_args()
    scale = dim**-0.5 if scale is None else scale
    _decode_split_kernel[(head_blocks, rows, splits)](
        q.contiguous(),
        pos,
        sel,
        sel.stride(0),
        window.block_table,
        window.block_table.stride(0),
        window.block_size,
        window.capacity,
        wa.body,
        wa.tail,
        wa.scales,
        wa.stride,
        comp.block_table,
        comp.block_table.stride(0),
        comp.block_size,
        ca.body,
        ca.tail,
        ca.scales,
        ca.stride,
        acc,
        ml,
        scale * LOG2E,
        splits,
        H=heads,
        D=dim,
        TAIL=window.fmt.tail if window.fmt else 0,
        FP8=window.fmt is not None,
        WINDOW=window_size,
        MODE=_MODES[kind],
        RATIO=max(kind.ratio, 1),
        K=max(k, 1),
        BH=block_h,
        BN=block_n,
        F32=interpreted(q.device),
        num_warps=num_warps,
    )
    out = torch.empty(rows, heads, dim, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(rows, heads, dtype=torch.float32, device=q.device)
    _merge_kernel[(head_blocks, rows)](
        acc,
        ml,
        sink.float().contiguous(),
        out,
        lse,
        splits,
        H=heads,
        D=dim,
        BH=block_h,
        S_PAD=triton.next_power_of_2(splits),
    )
    return out, lse
