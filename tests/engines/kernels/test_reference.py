"""The PyTorch reference itself: windows, causality, sink, ties, compressor state."""

from __future__ import annotations

import math

import pytest

from engines.kernels.shapes import AttentionShape, LayerKind, visible_entries, window_start
from tests.engines.kernels.util import randn, ref, torch

TINY = AttentionShape(
    name="tiny",
    n_heads=4,
    index_topk=8,
    window_layers=0,
    csa_layers=1,
    hca_layers=1,
    head_dim=128,
    rope_dim=64,
    window=16,
    index_heads=4,
    index_dim=64,
    index_rope_dim=32,
)


@pytest.mark.parametrize(
    ("pos", "ratio", "visible"),
    [
        (0, 4, 0),
        (2, 4, 0),
        (3, 4, 1),
        (6, 4, 1),
        (7, 4, 2),
        (126, 128, 0),
        (127, 128, 1),
        (254, 128, 1),
        (255, 128, 2),
        (10, 0, 0),
    ],
)
def test_visible_entries_follow_the_causality_rule(pos: int, ratio: int, visible: int) -> None:
    assert visible_entries(pos, ratio) == visible
    if ratio:
        # entry j is visible iff pos >= ratio * j + ratio - 1
        assert visible == sum(1 for j in range(pos + 1) if pos >= ratio * j + ratio - 1)


@pytest.mark.parametrize(("pos", "start"), [(0, 0), (127, 0), (128, 1), (1000, 873)])
def test_window_is_the_last_128_tokens(pos: int, start: int) -> None:
    assert window_start(pos, 128) == start


@pytest.mark.parametrize("kind", [LayerKind.CSA, LayerKind.HCA])
def test_each_entry_pools_exactly_its_tokens(kind: LayerKind) -> None:
    parts, dim, t = (2 if kind.overlap else 1), 8, 3 * kind.ratio
    kv, gate = randn(t, parts, dim, seed=1), randn(t, parts, dim, seed=2)
    ape = randn(kind.ratio, parts, dim, seed=3)
    base = ref.pool(kv, gate, ape, kind.ratio, kind.overlap)
    for tok in range(t):
        bumped = kv.clone()
        bumped[tok] += 1.0
        changed = (ref.pool(bumped, gate, ape, kind.ratio, kind.overlap) != base).any(dim=1)
        blk = tok // kind.ratio
        want = {blk, blk + 1} if kind.overlap else {blk}
        assert set(changed.nonzero().flatten().tolist()) == {e for e in want if e < 3}


def test_pooling_is_a_softmax_weighted_mean() -> None:
    kv = torch.ones(4, 1, 3) * torch.tensor([1.0, 2.0, 3.0])
    gate = torch.zeros(4, 1, 3)
    ape = torch.zeros(4, 1, 3)
    out = ref.pool(kv * torch.arange(1.0, 5.0)[:, None, None], gate, ape, 4, False)
    assert torch.allclose(out, torch.tensor([[2.5, 5.0, 7.5]]))


def test_rope_inverse_round_trips_and_keeps_the_unroped_dims() -> None:
    cos, sin = ref.rope_tables(64, 16)
    x = randn(5, 3, 48, seed=4)
    pos = torch.tensor([0, 7, 13, 40, 63])[:, None]
    y = ref.apply_rope(x, pos, cos, sin)
    assert torch.equal(y[..., :32], x[..., :32])
    assert torch.allclose(ref.apply_rope(y, pos, cos, sin, inverse=True), x, atol=1e-5)
    assert torch.equal(ref.apply_rope(x[:1], pos[:1], cos, sin), x[:1])  # position 0


def test_sink_only_adds_to_the_denominator() -> None:
    q, kv = randn(3, 16, seed=5), randn(7, 16, seed=6)
    plain = torch.softmax(q @ kv.T * 0.25, dim=1) @ kv
    no_sink = ref.sparse_attention(q, kv, torch.full((3,), -math.inf), 0.25)
    assert torch.allclose(no_sink, plain, atol=1e-6)
    sink = torch.tensor([0.0, 2.0, 50.0])
    with_sink = ref.sparse_attention(q, kv, sink, 0.25)
    denom = torch.logsumexp(q @ kv.T * 0.25, dim=1)
    share = torch.sigmoid(denom - sink)  # probability mass left to the real rows
    assert torch.allclose(with_sink, plain * share[:, None], atol=1e-6)


def test_topk_breaks_ties_by_lower_index_and_ignores_invisible_entries() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, -0.0, 3.0, 9.0])
    assert ref.select_topk(scores, 6, 2).tolist() == [1, 2]
    assert ref.select_topk(scores, 6, 5).tolist() == [0, 1, 2, 3, 5]
    assert ref.select_topk(scores, 3, 8).tolist() == [0, 1, 2]


@pytest.mark.parametrize("kind", [LayerKind.CSA, LayerKind.HCA])
@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, 127, 128, 130])
def test_prefill_state_finishes_into_the_same_entries(kind: LayerKind, cut: int) -> None:
    parts, dim, t = (2 if kind.overlap else 1), 8, 2 * kind.ratio + 3
    kv, gate = randn(t, parts, dim, seed=7), randn(t, parts, dim, seed=8)
    ape = randn(kind.ratio, parts, dim, seed=9)
    cut = min(cut, t)
    state = ref.prefill_state(kv, gate, ape, kind, cut)
    e = cut // kind.ratio
    end = (e + 1) * kind.ratio
    if end > t:
        return
    # finishing entry e from the state with the rest of its block gives the pooled entry
    m, lsum, acc = state[e % 2]
    offs = torch.arange(cut - e * kind.ratio, kind.ratio)
    z = gate[cut:end, 0] + ape[offs, 0]
    top = torch.maximum(m, z.max(dim=0).values)
    w_old, w_new = torch.exp(m - top), torch.exp(z - top)
    entry = (acc * w_old + (w_new * kv[cut:end, 0]).sum(0)) / (lsum * w_old + w_new.sum(0))
    want = ref.pool(kv, gate, ape, kind.ratio, kind.overlap)[e]
    assert torch.allclose(entry, want, atol=1e-5)


@pytest.mark.parametrize("kind", [LayerKind.WINDOW, LayerKind.CSA, LayerKind.HCA])
def test_layer_is_causal(kind: LayerKind) -> None:
    from engines.kernels.reference_layer import LayerWeights, layer_forward

    weights = LayerWeights.random(TINY, kind, hidden=32, seed=3)
    tables, itables = ref.rope_tables(512, 64), ref.rope_tables(512, 32)
    t = 136 if kind is LayerKind.HCA else 40
    x = randn(t, 32, seed=10)
    base = layer_forward(x, weights, TINY, tables, itables)
    tok = t - 9 if kind is LayerKind.HCA else 21
    bumped = x.clone()
    bumped[tok] += 1.0
    out = layer_forward(bumped, weights, TINY, tables, itables)
    assert torch.equal(out[:tok], base[:tok])
    assert not torch.allclose(out[tok], base[tok])
