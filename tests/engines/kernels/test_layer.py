"""A whole layer decoded on the kernels, step by step, against the reference layer.

The caches start from a reference prefill (entries and compressor states), then each step
runs the window write, both compressors, the indexer and the attention kernels. Tolerance:
outputs within 2**-5 of the float32 reference run on the values the caches give back
(bf16- or FP8-rounded window rows and compressed entries); the
CSA selection must pick entries whose reference scores are within 1e-2 of the k-th best
(bf16 indexer keys may swap near-ties).
"""

from __future__ import annotations

import pytest

from engines.kernels.compressor import new_state
from engines.kernels.fp8 import dequantize, quantize
from engines.kernels.layer_decode import LayerCaches, LayerParams, TokenInputs, decode_step
from engines.kernels.paged import PagedEntries
from engines.kernels.reference_layer import LayerTensors, LayerWeights, layer_tables, project
from engines.kernels.shapes import AttentionShape, LayerKind, visible_entries
from tests.engines.kernels.util import fp8_format, randn, ref, torch

TINY = AttentionShape(
    name="tiny", n_heads=4, index_topk=8, window_layers=0, csa_layers=1, hca_layers=1,
    head_dim=128, rope_dim=64, window=16, index_heads=4, index_dim=64, index_rope_dim=32,
)  # fmt: skip


def _cache(
    rows: int, entries: torch.Tensor | None, capacity: int, dim: int, fp8: bool, device: str
) -> PagedEntries:
    cache = PagedEntries.allocate(
        rows,
        capacity,
        dim,
        block_size=8,
        fmt=fp8_format(dim) if fp8 else None,
        device=device,
        seed=capacity,
    )
    if entries is not None:
        for r in range(rows):
            cache.write(r, torch.arange(entries.shape[1]), entries[r])
    return cache


def _prefill(
    ts: list[LayerTensors], w: LayerWeights, start: int, t: int, fp8: bool, device: str
) -> LayerCaches:
    rows, kind, d, di = len(ts), w.kind, TINY.head_dim, TINY.index_dim
    window = _cache(rows, None, 2 * TINY.window, d, fp8, device)
    for r, x in enumerate(ts):
        toks = torch.arange(max(0, start - TINY.window), start)
        window.write(r, toks % window.capacity, x.raw[toks])
    if kind is LayerKind.WINDOW:
        return LayerCaches(kind, window)
    n = start // kind.ratio
    comp = _cache(
        rows, torch.stack([x.entries[:n] for x in ts]), t // kind.ratio + 1, d, fp8, device
    )  # type: ignore[index]
    state = new_state(rows, d, device)
    for r, x in enumerate(ts):
        state[r] = ref.prefill_state(x.comp_kv, x.comp_gate, w.ape, kind, start)  # type: ignore[arg-type]
    if kind is LayerKind.HCA:
        return LayerCaches(kind, window, comp, state)
    keys = _cache(rows, torch.stack([x.index_keys[:n] for x in ts]), t // 4 + 1, di, fp8, device)  # type: ignore[index]
    istate = new_state(rows, di, device)
    for r, x in enumerate(ts):
        istate[r] = ref.prefill_state(x.index_kv, x.index_gate, w.index_ape, kind, start)  # type: ignore[arg-type]
    return LayerCaches(kind, window, comp, state, keys, istate)


def _stored(x: torch.Tensor, fp8: bool) -> torch.Tensor:
    """What a cache gives back for ``x``: bf16- or FP8-rounded values."""
    if not fp8:
        return x.bfloat16().float()
    fmt = fp8_format(x.shape[-1])
    return dequantize(quantize(x, fmt), fmt)


def _row(x: torch.Tensor | None, p: int) -> torch.Tensor | None:
    return None if x is None else x[p]


@pytest.mark.parametrize(
    ("kind", "start", "t", "fp8"),
    [
        (LayerKind.WINDOW, 20, 24, False),
        (LayerKind.CSA, 40, 48, False),
        (LayerKind.CSA, 38, 44, True),
        (LayerKind.HCA, 252, 258, True),
    ],
)
def test_decode_steps_match_the_reference_layer(
    kind: LayerKind, start: int, t: int, fp8: bool, device: str
) -> None:
    w = LayerWeights.random(TINY, kind, hidden=32, seed=11).to(device)
    tables, itables = layer_tables(TINY, kind, 512, device)
    ts = [
        project(randn(t, 32, seed=20 + r, device=device), w, TINY, tables, itables)
        for r in range(2)
    ]
    caches = _prefill(ts, w, start, t, fp8, device)
    params = LayerParams(
        TINY, w.attn_sink, w.ape, w.index_ape, tables, itables, w.comp_norm, w.idx_comp_norm
    )
    for p in range(start, t):
        token = TokenInputs(
            *(
                torch.stack([_row(getattr(x, f), p) for x in ts])
                if getattr(ts[0], f) is not None
                else None
                for f in (
                    "q",
                    "raw",
                    "comp_kv",
                    "comp_gate",
                    "index_q",
                    "index_w",
                    "index_kv",
                    "index_gate",
                )
            )
        )  # type: ignore[misc]
        pos = torch.full((2,), p, dtype=torch.int32, device=device)
        out, selected = decode_step(caches, params, token, pos)
        for r, x in enumerate(ts):
            chosen = None
            if selected is not None:
                chosen = selected[r][selected[r] >= 0].long()
                n_vis = visible_entries(p, 4)
                scores = ref.index_scores(x.index_q[p], x.index_w[p], x.index_keys[:n_vis])  # type: ignore[index]
                kth = scores.sort(descending=True).values[min(TINY.index_topk, n_vis) - 1]
                assert chosen.numel() == min(TINY.index_topk, n_vis)
                assert float(scores[chosen].min()) >= float(kth) - 1e-2
            entries = None if x.entries is None else _stored(x.entries, fp8)
            want = ref.decode_attention(
                x.q[p],
                p,
                kind,
                _stored(x.raw, fp8),
                entries,
                chosen,
                w.attn_sink,
                TINY.softmax_scale,
                TINY.window,
            )
            want = ref.apply_rope(want, torch.tensor(p, device=device), *tables, inverse=True)
            torch.testing.assert_close(out[r], want, atol=2.0**-5, rtol=0)
