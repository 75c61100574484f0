"""Lightning indexer (Triton): score the visible compressed entries, select the top-k.

Scoring runs one program per tile of entries per row: the tile of indexer keys is read
once and multiplied against all index heads (``[BN, Di] x [Di, Hi]``), then
``score = sum_h w_h * relu(.)``. Selection is a radix select per row over the order-
preserving integer image of the float scores (four 8-bit passes with a histogram each),
followed by one pass that writes the chosen indices in ascending order; among equal scores
the lower index wins. Rows with no more visible entries than ``k`` take them all. Unused
output slots hold -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import LayerKind
from engines.kernels.tl_entries import interpreted, load_entries, mma


@triton.jit
def _score_kernel(  # type: ignore[no-untyped-def]
    q_ptr,
    w_ptr,
    pos_ptr,
    table_ptr,
    table_stride,
    block_size,
    body_ptr,
    tail_ptr,
    scale_ptr,
    stride,
    out_ptr,
    out_stride,
    HI: tl.constexpr,
    HI_PAD: tl.constexpr,
    DI: tl.constexpr,
    TAIL: tl.constexpr,
    FP8: tl.constexpr,
    RATIO: tl.constexpr,
    BN: tl.constexpr,
    F32: tl.constexpr,
):
    tile = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    pos = tl.load(pos_ptr + row)
    n_vis = (pos + 1) // RATIO
    if tile * BN < n_vis:
        j = tile * BN + tl.arange(0, BN)
        valid = j < n_vis
        page = tl.load(table_ptr + row * table_stride + j // block_size, mask=valid, other=0)
        slots = page.to(tl.int64) * block_size + j % block_size
        keys = load_entries(body_ptr, tail_ptr, scale_ptr, slots, valid, stride, DI, TAIL, FP8)
        h = tl.arange(0, HI_PAD)
        d = tl.arange(0, DI)
        q = tl.load(
            q_ptr + row * (HI * DI) + h[:, None] * DI + d[None, :], mask=h[:, None] < HI, other=0.0
        )
        w = tl.load(w_ptr + row * HI + h, mask=h < HI, other=0.0).to(tl.float32)
        logits = mma(keys, tl.trans(q.to(tl.bfloat16)), F32)
        score = tl.sum(tl.maximum(logits, 0.0) * w[None, :], axis=1)
        score = tl.where(score == 0.0, 0.0, score)  # -0.0 sorts with +0.0
        tl.store(out_ptr + row * out_stride + j, score, mask=valid)


@triton.jit
def _order_key(score):  # type: ignore[no-untyped-def]
    """Float32 -> uint32 whose unsigned order is the float order (+0.0 and -0.0 equal)."""
    bits = tl.where(score == 0.0, 0.0, score).to(tl.uint32, bitcast=True)
    neg = (bits >> 31) == 1
    return tl.where(neg, ~bits, bits | 0x80000000)


@triton.jit
def _topk_kernel(  # type: ignore[no-untyped-def]
    score_ptr,
    score_stride,
    pos_ptr,
    out_ptr,
    out_stride,
    n_max,
    K: tl.constexpr,
    K_PAD: tl.constexpr,
    RATIO: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + row)
    n = tl.minimum((pos + 1) // RATIO, n_max)
    scores = score_ptr + row * score_stride
    out = out_ptr + row * out_stride
    kk = tl.arange(0, K_PAD)
    if n <= K:
        tl.store(out + kk, tl.where(kk < n, kk, -1).to(tl.int32), mask=kk < K)
    else:
        prefix = tl.zeros([], dtype=tl.uint32)
        known = tl.zeros([], dtype=tl.uint32)  # mask of the key bits fixed so far
        need = tl.zeros([], dtype=tl.int32) + K  # how many still to take at or under prefix
        bins = tl.arange(0, 256)
        for p in tl.static_range(4):
            shift = 24 - 8 * p  # a constexpr: p is one (a static_range index)
            hist = tl.zeros([256], dtype=tl.int32)
            for start in range(0, n, BLOCK):
                j = start + tl.arange(0, BLOCK)
                key = _order_key(tl.load(scores + j, mask=j < n, other=0.0))
                match = (j < n) & ((key & known) == prefix)
                hist += tl.histogram(((key >> shift) & 0xFF).to(tl.int32), 256, mask=match)
            above = tl.cumsum(hist, 0, reverse=True)  # matching keys with digit >= bin
            digit = tl.max(tl.where(above >= need, bins, -1), axis=0)
            need -= tl.sum(tl.where(bins > digit, hist, 0), axis=0)
            prefix |= digit.to(tl.uint32) << shift
            known |= tl.full([], 0xFF, tl.uint32) << shift
        # Keys above the threshold are all taken; ties at it go to the lowest indices.
        taken = tl.zeros([], dtype=tl.int32)
        ties = tl.zeros([], dtype=tl.int32)
        for start in range(0, n, BLOCK):
            j = start + tl.arange(0, BLOCK)
            key = _order_key(tl.load(scores + j, mask=j < n, other=0.0))
            tie = (j < n) & (key == prefix)
            tie_rank = ties + tl.cumsum(tie.to(tl.int32), 0) - 1
            pick = (j < n) & ((key > prefix) | (tie & (tie_rank < need)))
            slot = taken + tl.cumsum(pick.to(tl.int32), 0) - 1
            tl.store(out + slot, j.to(tl.int32), mask=pick)
            taken += tl.sum(pick.to(tl.int32), axis=0)
            ties += tl.sum(tie.to(tl.int32), axis=0)


def index_scores(
    q: torch.Tensor,
    weights: torch.Tensor,
    pos: torch.Tensor,
    keys: PagedEntries,
    *,
    ratio: int = LayerKind.CSA.ratio,
    n_max: int | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """Scores ``[R, n_max]`` float32 of each row's visible entries (the rest left at -inf).

    ``q [R, Hi, Di]`` indexer queries (bf16), ``weights [R, Hi]`` float32 per-head weights
    (scales folded in), ``pos [R]`` int32 query positions, ``keys`` the indexer key cache.
    """
    rows, heads, dim = q.shape
    if keys.dim != dim:
        raise ValueError(f"indexer keys have {keys.dim} dims, queries {dim}")
    if n_max is None:
        n_max = keys.capacity
    out = torch.full((rows, n_max), float("-inf"), dtype=torch.float32, device=q.device)
    args = keys.kernel_args()
    grid = (triton.cdiv(n_max, block_n), rows)
    _score_kernel[grid](
        q.to(torch.bfloat16).contiguous(),
        weights.float().contiguous(),
        pos,
        keys.block_table,
        keys.block_table.stride(0),
        keys.block_size,
        args.body,
        args.tail,
        args.scales,
        args.stride,
        out,
        out.stride(0),
        HI=heads,
        HI_PAD=max(16, triton.next_power_of_2(heads)),
        DI=dim,
        TAIL=keys.fmt.tail if keys.fmt else 0,
        FP8=keys.fmt is not None,
        RATIO=ratio,
        BN=block_n,
        F32=interpreted(q.device),
    )
    return out


def select_topk(
    scores: torch.Tensor,
    pos: torch.Tensor,
    k: int,
    *,
    ratio: int = LayerKind.CSA.ratio,
    block: int = 1024,
) -> torch.Tensor:
    """Ascending indices ``[R, k]`` int32 of each row's ``k`` best visible scores (-1: unused)."""
    rows, n_max = scores.shape
    out = torch.full((rows, k), -1, dtype=torch.int32, device=scores.device)
    _topk_kernel[(rows,)](
        scores,
        scores.stride(0),
        pos,
        out,
        out.stride(0),
        n_max,
        K=k,
        K_PAD=triton.next_power_of_2(k),
        RATIO=ratio,
        BLOCK=block,
    )
    return out


def index_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    pos: torch.Tensor,
    keys: PagedEntries,
    k: int,
    *,
    n_max: int | None = None,
) -> torch.Tensor:
    """Indexer scores then top-k: the CSA entries ``[R, k]`` each row attends (-1: unused)."""
    scores = index_scores(q, weights, pos, keys, n_max=n_max)
    return select_topk(scores, pos, k)
