"""Decode-time compressor kernel: token-by-token equals the whole-sequence reference.

Entries are pooled, RMS-normalised with a learned weight and roped (interleaved pairs, the
layer's real RoPE: compress_rope_theta with YaRN). Tolerances: bf16 entries within 2 bf16
ulps of the float32 reference (``BF16_ATOL`` on values of magnitude about 1); FP8 entries
within half an FP8 step of their block (``fp8_bound``); the float32 state within 1e-5.
"""

from __future__ import annotations

import pytest

from engines.kernels.compressor import compress_decode, new_state
from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import FLASH, LayerKind
from tests.engines.kernels.util import BF16_ATOL, fp8_bound, fp8_format, randn, ref, torch

EPS = FLASH.norm_eps


def _inputs(kind: LayerKind, rows: int, t: int, dim: int, device: str, seed: int):  # type: ignore[no-untyped-def]
    parts = 2 if kind.overlap else 1
    kv = randn(rows, t, parts, dim, seed=seed, device=device)
    gate = randn(rows, t, parts, dim, seed=seed + 1, device=device)
    ape = randn(kind.ratio, parts, dim, seed=seed + 2, device=device, scale=0.5)
    norm = 1.0 + randn(dim, seed=seed + 3, device=device, scale=0.2)
    return kv, gate, ape, norm


def _tables(t: int, rope: int, kind: LayerKind, device: str):  # type: ignore[no-untyped-def]
    """The layer's real RoPE (compress_rope_theta with YaRN) for ``rope`` dims."""
    return ref.rope_tables(t, rope, FLASH.rope(kind), device=device)


def _check_entries(cache: PagedEntries, want: torch.Tensor, row: int) -> None:
    got = cache.read(row, torch.arange(want.shape[0]))
    bound = fp8_bound(want) if cache.fmt else BF16_ATOL
    assert ((got - want).abs() <= bound).all(), float((got - want).abs().max())


def _run(
    kind: LayerKind,
    rows: int,
    start: torch.Tensor,
    t: int,
    dim: int,
    rope: int,
    fp8: bool,
    device: str,
) -> None:
    kv, gate, ape, norm = _inputs(kind, rows, t, dim, device, seed=dim + rows)
    cos, sin = _tables(t, rope, kind, device)
    cache = PagedEntries.allocate(
        rows,
        t // kind.ratio + 1,
        dim,
        block_size=4,
        fmt=fp8_format(dim) if fp8 else None,
        device=device,
        seed=7,
    )
    state = new_state(rows + 1, dim, device)
    index = torch.arange(rows, 0, -1, dtype=torch.int32, device=device)  # rows use shuffled states
    for r in range(rows):
        s = int(start[r])
        state[index[r]] = ref.prefill_state(kv[r], gate[r], ape, kind, s)
        done = ref.compress(kv[r, :s], gate[r, :s], ape, norm, kind, cos, sin, EPS)
        cache.write(r, torch.arange(done.shape[0]), done)
    steps = int((t - start).min())
    for step in range(steps):
        pos = (start + step).to(torch.int32).to(device)
        tok_kv = torch.stack([kv[r, int(pos[r])] for r in range(rows)])
        tok_gate = torch.stack([gate[r, int(pos[r])] for r in range(rows)])
        compress_decode(
            tok_kv,
            tok_gate,
            ape,
            norm,
            pos,
            state,
            cache,
            kind,
            cos,
            sin,
            eps=EPS,
            state_index=index,
        )
    for r in range(rows):
        end = int(start[r]) + steps
        want = ref.compress(kv[r, :end], gate[r, :end], ape, norm, kind, cos, sin, EPS)
        _check_entries(cache, want, r)
        want_state = ref.prefill_state(kv[r], gate[r], ape, kind, end)
        got_state = state[index[r]]
        assert torch.equal(got_state[:, 0].isinf(), want_state[:, 0].isinf())
        assert torch.allclose(
            got_state.nan_to_num(neginf=0), want_state.nan_to_num(neginf=0), atol=1e-5
        )


@pytest.mark.parametrize("fp8", [False, True])
def test_csa_streaming_matches_reference(fp8: bool, device: str) -> None:
    # rows start at a block start, mid-block, just before and at a block end
    _run(LayerKind.CSA, 4, torch.tensor([0, 2, 3, 7]), 22, 128, 64, fp8, device)


@pytest.mark.parametrize("fp8", [False, True])
def test_hca_streaming_crosses_entry_boundaries(fp8: bool, device: str) -> None:
    # 123 -> 131 crosses position 127 (entry 0 closes); 250 -> 258 crosses 255
    _run(LayerKind.HCA, 2, torch.tensor([123, 250]), 259, 128, 64, fp8, device)


def test_real_layout_512_with_64_roped_dims(device: str) -> None:
    _run(LayerKind.CSA, 2, torch.tensor([5, 0]), 13, 512, 64, True, device)


def test_indexer_keys_128_dims_all_fp8(device: str) -> None:
    _run(LayerKind.CSA, 2, torch.tensor([1, 6]), 14, 128, 64, True, device)


def test_position_zero_starts_from_an_empty_state(device: str) -> None:
    kind, dim = LayerKind.CSA, 64
    kv, gate, ape, norm = _inputs(kind, 1, 8, dim, device, seed=40)
    cos, sin = _tables(8, 32, kind, device)
    cache = PagedEntries.allocate(1, 2, dim, block_size=2, device=device)
    state = randn(1, 2, 3, dim, seed=41, device=device)  # left over from another request
    for p in range(8):
        pos = torch.tensor([p], dtype=torch.int32, device=device)
        compress_decode(kv[:, p], gate[:, p], ape, norm, pos, state, cache, kind, cos, sin, eps=EPS)
    _check_entries(cache, ref.compress(kv[0], gate[0], ape, norm, kind, cos, sin, EPS), 0)


def test_rejects_parts_that_do_not_match_the_layer(device: str) -> None:
    kv, gate, ape, norm = _inputs(LayerKind.HCA, 1, 1, 64, device, seed=1)
    cos, sin = _tables(4, 32, LayerKind.HCA, device)
    cache = PagedEntries.allocate(1, 1, 64, block_size=1, device=device)
    with pytest.raises(ValueError):
        compress_decode(
            kv[:, 0],
            gate[:, 0],
            ape,
            norm,
            torch.zeros(1, dtype=torch.int32),
            new_state(1, 64),
            cache,
            LayerKind.CSA,
            cos,
            sin,
            eps=EPS,
        )
