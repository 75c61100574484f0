"""Sparse decode kernel against the reference attention.

Tolerance: outputs within ``BF16_ATOL`` (2 bf16 ulps at magnitude 1) of the float32
reference computed from the same stored (bf16 or FP8) entries; ``lse`` within 1e-4.
"""

from __future__ import annotations

import pytest

from engines.kernels.decode import sparse_decode
from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import LayerKind, visible_entries
from tests.engines.kernels.util import BF16_ATOL, GPU_ATOL, filled_cache, randn, ref, torch


def _check(
    kind: LayerKind,
    positions: list[int],
    *,
    heads: int = 4,
    dim: int = 128,
    window: int = 16,
    fp8: bool = False,
    k: int = 8,
    splits: int | None = None,
    ring: bool = False,
    device: str = "cpu",
) -> None:
    rows, t = len(positions), max(positions) + 1
    pos = torch.tensor(positions, dtype=torch.int32, device=device)
    raw = randn(rows, t, dim, seed=t + dim, device=device)
    n_ent = t // max(kind.ratio, 1) + 2  # entries beyond the visible ones are present too
    ent = randn(rows, n_ent, dim, seed=n_ent, device=device)
    if ring:  # a ring of 2 * window entries: token t at t % capacity
        wcache = PagedEntries.allocate(
            rows,
            2 * window,
            dim,
            block_size=8,
            fmt=filled_cache(raw[:, :1], block_size=8, fp8=fp8, seed=0).fmt,
            device=device,
            seed=1,
        )
        for r in range(rows):
            toks = torch.arange(max(0, positions[r] - window + 1), positions[r] + 1)
            wcache.write(r, toks % wcache.capacity, raw[r, toks])
    else:
        wcache = filled_cache(raw, block_size=8, fp8=fp8, seed=1)
    ccache = filled_cache(ent, block_size=4, fp8=fp8, seed=2)
    q = randn(rows, heads, dim, seed=3, device=device).bfloat16()
    sink = randn(heads, seed=4, device=device)
    sel = None
    if kind is LayerKind.CSA:
        sel = torch.full((rows, k), -1, dtype=torch.int32)
        for r, p in enumerate(positions):
            n_vis = visible_entries(p, 4)
            pick = torch.randperm(n_vis, generator=torch.Generator().manual_seed(p))[:k]
            sel[r, : pick.numel()] = pick.int()
            if pick.numel() < k:
                sel[r, -1] = n_vis  # not visible yet: must be ignored
        sel = sel.to(device)
    out, lse = sparse_decode(
        q,
        pos,
        sink,
        wcache,
        kind,
        compressed=ccache,
        selected=sel,
        window_size=window,
        splits=splits,
        scale=dim**-0.5,
    )
    atol = GPU_ATOL if device == "cuda" else BF16_ATOL
    for r, p in enumerate(positions):
        raw_r = torch.zeros(t, dim, device=device)
        lo = max(0, p - window + 1)
        raw_r[lo : p + 1] = wcache.read(r, torch.arange(lo, p + 1) % wcache.capacity)
        ent_r = ccache.read(r, torch.arange(n_ent))
        chosen = None
        if sel is not None:
            chosen = sel[r][(sel[r] >= 0) & (sel[r] < visible_entries(p, 4))].long()
        kv = ref.attention_inputs(p, kind, raw_r, ent_r, chosen, window)
        want = ref.sparse_attention(q[r], kv, sink, dim**-0.5)
        torch.testing.assert_close(out[r].float(), want, atol=atol, rtol=0)
        logits = torch.cat([q[r].float() @ kv.T * dim**-0.5, sink[:, None]], dim=1)
        torch.testing.assert_close(lse[r], torch.logsumexp(logits, dim=1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fp8", [False, True])
def test_window_only_layer(fp8: bool, device: str) -> None:
    _check(LayerKind.WINDOW, [0, 5, 15, 16, 40], fp8=fp8, device=device)


@pytest.mark.parametrize("fp8", [False, True])
def test_csa_layer_with_causality_edges(fp8: bool, device: str) -> None:
    # 4j+2 (entry j not yet visible), 4j+3 (just visible), fewer visible entries than k
    _check(LayerKind.CSA, [2, 3, 30, 31, 66, 67, 150], fp8=fp8, device=device)


@pytest.mark.parametrize("fp8", [False, True])
def test_hca_layer_with_causality_edges(fp8: bool, device: str) -> None:
    _check(LayerKind.HCA, [126, 127, 254, 255, 300], fp8=fp8, device=device)


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 40])
def test_any_split_count_gives_the_same_result(splits: int, device: str) -> None:
    _check(LayerKind.CSA, [9, 99], k=24, splits=splits, device=device)


def test_ring_window_cache(device: str) -> None:
    _check(LayerKind.HCA, [20, 140, 300], ring=True, device=device)


def test_real_layout_512_dims_64_roped_16_heads(device: str) -> None:
    _check(LayerKind.CSA, [43, 200], heads=16, dim=512, window=32, k=16, fp8=True, device=device)


def test_entries_past_the_window_and_visibility_are_ignored(device: str) -> None:
    # The caches hold future tokens and entries: the outputs must not depend on them.
    dim, rows = 64, 1
    pos = torch.tensor([9], dtype=torch.int32, device=device)
    q = randn(rows, 4, dim, seed=1, device=device).bfloat16()
    sink = torch.zeros(4, device=device)
    outs = []
    for seed in (5, 6):
        raw = randn(rows, 40, dim, seed=2, device=device)
        raw[:, 10:] = randn(rows, 30, dim, seed=seed, device=device) * 100
        ent = randn(rows, 12, dim, seed=3, device=device)
        ent[:, 2:] = (
            randn(rows, 10, dim, seed=seed, device=device) * 100
        )  # entries >= 2 invisible at 9
        wc, cc = (
            filled_cache(raw, block_size=4, fp8=False, seed=1),
            filled_cache(ent, block_size=4, fp8=False, seed=2),
        )
        out, _ = sparse_decode(q, pos, sink, wc, LayerKind.HCA, compressed=cc, window_size=8)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
