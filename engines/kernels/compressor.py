"""Decode-time compressor update (Triton).

Every decode step feeds one new token per row into the layer's compressor. Each row keeps
an online-softmax state per dim for the (at most two) entries still being pooled:
``state [rows, 2, 3, D]`` float32, slot ``e % 2`` holding entry ``e`` as
``(max logit, sum of weights, weighted sum of values)``. A token's projections come in the
checkpoint's order: for CSA (two parts) part 0 feeds the next entry and part 1 the entry of
its own block; for HCA its single part feeds its own entry. A token at ``pos`` in block
``b = pos // ratio`` therefore adds its own part to entry ``b`` and, for CSA, part 0 to entry
``b + 1``. When the token closes its block, entry ``b`` is finished: it is divided out,
RMS-normalised with the learned weight, roped at ``ratio * b`` (interleaved pairs), written
to the paged cache (bf16 or FP8) and its slot is cleared. A row at ``pos == 0`` starts from
an empty state whatever the slot holds. One program handles a whole entry (the norm needs
every dim).

This matches ``reference.compress`` (a whole sequence at once) and
``reference.prefill_state`` (the state after a prefill).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import LayerKind
from engines.kernels.tl_entries import SCALE_BLOCK, store_fp8_blocks, to_bf16


def new_state(rows: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An empty compressor state ``[rows, 2, 3, dim]``."""
    state = torch.zeros(rows, 2, 3, dim, dtype=torch.float32, device=device)
    state[:, :, 0] = float("-inf")
    return state


@triton.jit
def _accumulate(  # type: ignore[no-untyped-def]
    state_ptr,
    kv_ptr,
    gate_ptr,
    ape_ptr,
    st_row,
    row,
    slot,
    part,
    offset,
    pos,
    d,
    D: tl.constexpr,
    P: tl.constexpr,
):
    base = state_ptr + st_row * (6 * D) + slot * (3 * D) + d
    fresh = pos == 0
    m = tl.where(fresh, float("-inf"), tl.load(base))
    lsum = tl.where(fresh, 0.0, tl.load(base + D))
    acc = tl.where(fresh, 0.0, tl.load(base + 2 * D))
    src = row * (P * D) + part * D + d
    z = tl.load(gate_ptr + src).to(tl.float32) + tl.load(ape_ptr + offset * (P * D) + part * D + d)
    v = tl.load(kv_ptr + src).to(tl.float32)
    m_new = tl.maximum(m, z)
    alpha = tl.exp(m - m_new)
    w = tl.exp(z - m_new)
    return m_new, lsum * alpha + w, acc * alpha + w * v


@triton.jit
def _store_state(state_ptr, st_row, slot, d, m, lsum, acc, D: tl.constexpr):  # type: ignore[no-untyped-def]
    base = state_ptr + st_row * (6 * D) + slot * (3 * D) + d
    tl.store(base, m)
    tl.store(base + D, lsum)
    tl.store(base + 2 * D, acc)


@triton.jit
def _rope(entry, d, pos, cos_ptr, sin_ptr, D: tl.constexpr, ROPE: tl.constexpr):  # type: ignore[no-untyped-def]
    # Interleaved pairs (2k, 2k + 1) of the last ROPE dims; D - ROPE is even, so a dim's
    # partner is d ^ 1, fetched from the same program's vector with tl.gather.
    half: tl.constexpr = ROPE // 2
    i = d - (D - ROPE)
    in_rope = i >= 0
    even = (i % 2) == 0
    local = tl.arange(0, D)
    partner = tl.where(in_rope, local ^ 1, local)
    other = tl.gather(entry, partner, 0)
    k = tl.where(in_rope, i // 2, 0)
    c = tl.load(cos_ptr + pos * half + k, mask=in_rope, other=1.0)
    s = tl.load(sin_ptr + pos * half + k, mask=in_rope, other=0.0)
    rot = tl.where(even, entry * c - other * s, entry * c + other * s)
    return tl.where(in_rope, rot, entry)


@triton.jit
def _compress_decode_kernel(  # type: ignore[no-untyped-def]
    kv_ptr,
    gate_ptr,
    ape_ptr,
    norm_ptr,
    eps,
    pos_ptr,
    state_idx_ptr,
    state_ptr,
    cos_ptr,
    sin_ptr,
    table_ptr,
    table_stride,
    block_size,
    body_ptr,
    tail_ptr,
    scale_ptr,
    stride,
    D: tl.constexpr,
    P: tl.constexpr,
    RATIO: tl.constexpr,
    ROPE: tl.constexpr,
    TAIL: tl.constexpr,
    FP8: tl.constexpr,
):
    row = tl.program_id(0)
    pos = tl.load(pos_ptr + row)
    st = tl.load(state_idx_ptr + row).to(tl.int64)
    blk = pos // RATIO
    offset = pos % RATIO
    d = tl.arange(0, D)
    # the last part feeds the token's own entry (CSA: part 1; HCA: its only part)
    m0, l0, a0 = _accumulate(
        state_ptr, kv_ptr, gate_ptr, ape_ptr, st, row, blk % 2, P - 1, offset, pos, d, D, P
    )
    if P == 2:
        # part 0 feeds the next entry
        m1, l1, a1 = _accumulate(
            state_ptr, kv_ptr, gate_ptr, ape_ptr, st, row, (blk + 1) % 2, 0, offset, pos, d, D, P
        )
        _store_state(state_ptr, st, (blk + 1) % 2, d, m1, l1, a1, D)
    if offset == RATIO - 1:
        empty = tl.zeros([D], dtype=tl.float32)
        _store_state(state_ptr, st, blk % 2, d, empty - float("inf"), empty, empty, D)
        entry = a0 / l0
        inv_rms = 1.0 / tl.sqrt(tl.sum(entry * entry, axis=0) / D + eps)
        entry = entry * inv_rms * tl.load(norm_ptr + d)
        if ROPE > 0:
            entry = _rope(entry, d, blk * RATIO, cos_ptr, sin_ptr, D, ROPE)
        page = tl.load(table_ptr + row.to(tl.int64) * table_stride + blk // block_size)
        slot = page.to(tl.int64) * block_size + blk % block_size
        if FP8:
            nb: tl.constexpr = D // SCALE_BLOCK
            ids = tl.arange(0, nb)
            blocks = tl.reshape(entry, (nb, SCALE_BLOCK))
            store_fp8_blocks(
                body_ptr, scale_ptr, slot, blocks, ids, ids < (D - TAIL) // SCALE_BLOCK, stride
            )
            if TAIL > 0:
                tail_d = tl.where(d >= D - TAIL, d - (D - TAIL), 0)
                tl.store(
                    tail_ptr + slot * (stride // 2) + tail_d,
                    to_bf16(entry),
                    mask=d >= D - TAIL,
                )
        else:
            tl.store(body_ptr + slot * stride + d, to_bf16(entry))
    else:
        _store_state(state_ptr, st, blk % 2, d, m0, l0, a0, D)


def compress_decode(
    kv: torch.Tensor,
    gate: torch.Tensor,
    ape: torch.Tensor,
    norm: torch.Tensor,
    pos: torch.Tensor,
    state: torch.Tensor,
    cache: PagedEntries,
    kind: LayerKind,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float,
    state_index: torch.Tensor | None = None,
) -> None:
    """Feed one token per row into the compressor; finished entries go to ``cache``.

    ``kv, gate [R, P, D]`` are the token's compressor projections in the checkpoint's order
    (``P = 2`` for CSA: part 0 feeds the next entry, part 1 the token's own), ``ape
    [ratio, P, D]`` the learned logit bias, ``norm [D]`` the RMSNorm weight applied to a
    finished entry (with ``eps``), ``pos [R]`` int32 the token positions, ``state [S, 2, 3,
    D]`` float32 (rows pick their state with ``state_index [R]``, default ``arange(R)``),
    ``cos, sin [max_pos, rope_dim // 2]`` float32 (``reference.rope_tables``). Updates
    ``state`` and ``cache`` in place.
    """
    rows, n_parts, dim = kv.shape
    if kind is LayerKind.WINDOW or n_parts != (2 if kind.overlap else 1):
        raise ValueError(f"{kind} layers take {2 if kind.overlap else 1} parts, got {n_parts}")
    if cache.dim != dim or state.shape[1:] != (2, 3, dim) or state.dtype != torch.float32:
        raise ValueError("state must be float32 [S, 2, 3, D] and the cache of dim D")
    if norm.shape != (dim,):
        raise ValueError(f"norm weight must be [{dim}]")
    rope = 2 * cos.shape[1]
    if dim & (dim - 1) or dim < max(rope, SCALE_BLOCK.value) or (dim - rope) % 2:
        raise ValueError(f"dim {dim} must be a power of two holding the {rope} roped dims")
    if state_index is None:
        state_index = torch.arange(rows, dtype=torch.int32, device=kv.device)
    args = cache.kernel_args()
    tail = cache.fmt.tail if cache.fmt else 0
    _compress_decode_kernel[(rows,)](
        kv.contiguous(),
        gate.contiguous(),
        ape.float().contiguous(),
        norm.float().contiguous(),
        float(eps),
        pos,
        state_index,
        state,
        cos,
        sin,
        cache.block_table,
        cache.block_table.stride(0),
        cache.block_size,
        args.body,
        args.tail,
        args.scales,
        args.stride,
        D=dim,
        P=n_parts,
        RATIO=kind.ratio,
        ROPE=rope,
        TAIL=tail,
        FP8=cache.fmt is not None,
    )
