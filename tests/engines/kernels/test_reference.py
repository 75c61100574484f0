"""The PyTorch reference itself: windows, causality, sink, ties, compressor state."""

from __future__ import annotations

import math

import pytest

from engines.kernels.shapes import (
    FLASH,
    PRO,
    AttentionShape,
    LayerKind,
    RopeConfig,
    visible_entries,
    window_start,
)
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
    cos, sin = ref.rope_tables(64, 16, FLASH.rope(LayerKind.CSA))
    x = randn(5, 3, 48, seed=4)
    pos = torch.tensor([0, 7, 13, 40, 63])[:, None]
    y = ref.apply_rope(x, pos, cos, sin)
    assert torch.equal(y[..., :32], x[..., :32])
    assert torch.allclose(ref.apply_rope(y, pos, cos, sin, inverse=True), x, atol=1e-5)
    assert torch.equal(ref.apply_rope(x[:1], pos[:1], cos, sin), x[:1])  # position 0


def test_rope_rotates_interleaved_pairs() -> None:
    # pair i is dims (2i, 2i + 1) of the roped tail, turned by pos * f_i as a complex number
    cos, sin = ref.rope_tables(16, 8, RopeConfig(theta=10000.0))
    x = randn(2, 12, seed=11)
    pos = torch.tensor([3, 9])
    y = ref.apply_rope(x, pos, cos, sin)
    f = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    z = torch.view_as_complex(x[:, 4:].double().reshape(2, 4, 2).contiguous())
    want = torch.view_as_real(
        z * torch.polar(torch.ones(2, 4, dtype=torch.float64), pos[:, None] * f)
    )
    assert torch.allclose(y[:, 4:].double(), want.flatten(-2), atol=1e-5)
    assert torch.equal(y[:, :4], x[:, :4])
    # a vector living in one pair stays in that pair (rotate-half would move it to dim i + 4)
    e = torch.zeros(1, 8)
    e[0, 2] = 1.0
    turned = ref.apply_rope(e, torch.tensor([5]), cos, sin)
    assert set(turned[0].nonzero().flatten().tolist()) == {2, 3}


def test_rope_frequencies_without_yarn_are_the_plain_theta_powers() -> None:
    for theta in (10000.0, 160000.0):
        f = ref.rope_frequencies(64, RopeConfig(theta=theta)).double()
        want = theta ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
        assert torch.allclose(f, want, rtol=1e-6)


def test_yarn_keeps_fast_pairs_and_divides_slow_pairs_by_the_factor() -> None:
    rope = FLASH.rope(LayerKind.CSA)
    assert (rope.theta, rope.factor, rope.original_max_pos) == (160000.0, 16.0, 65536)
    assert (rope.beta_fast, rope.beta_slow) == (32.0, 1.0)
    plain = ref.rope_frequencies(64, RopeConfig(theta=160000.0)).double()
    yarn = ref.rope_frequencies(64, rope).double()
    # correction range for 64 dims, theta 160000, 65536 positions: pairs 15 .. 25
    low = math.floor(64 * math.log(65536 / (32 * 2 * math.pi)) / (2 * math.log(160000)))
    high = math.ceil(64 * math.log(65536 / (1 * 2 * math.pi)) / (2 * math.log(160000)))
    assert (low, high) == (15, 25)
    assert torch.allclose(yarn[: low + 1], plain[: low + 1], rtol=1e-6)
    assert torch.allclose(yarn[high:], plain[high:] / 16, rtol=1e-6)
    ramp = (torch.arange(32, dtype=torch.float64) - low) / (high - low)
    mix = ramp.clamp(0, 1)
    assert torch.allclose(yarn, plain / 16 * mix + plain * (1 - mix), rtol=1e-6)
    # the tables rotate pair i by pos * f_i
    cos, sin = ref.rope_tables(1000, 64, rope)
    angle = torch.tensor(999.0, dtype=torch.float64) * yarn
    assert torch.allclose(cos[999].double(), angle.cos(), atol=1e-4)
    assert torch.allclose(sin[999].double(), angle.sin(), atol=1e-4)


@pytest.mark.parametrize("shape", [FLASH, PRO])
def test_layer_kinds_take_their_rope(shape: AttentionShape) -> None:
    assert shape.rope(LayerKind.WINDOW) == RopeConfig(theta=10000.0)
    for kind in (LayerKind.CSA, LayerKind.HCA):
        rope = shape.rope(kind)
        assert rope.yarn and rope.theta == 160000.0
    window = ref.rope_frequencies(64, shape.rope(LayerKind.WINDOW))
    csa = ref.rope_frequencies(64, shape.rope(LayerKind.CSA))
    assert float(window[1]) != float(csa[1])  # theta differs
    assert float(csa[-1]) < float(ref.rope_frequencies(64, RopeConfig(theta=160000.0))[-1])


def test_entries_are_rms_normalised_before_rope() -> None:
    kind, dim = LayerKind.HCA, 64
    kv, gate = randn(256, 1, dim, seed=12), randn(256, 1, dim, seed=13)
    ape = randn(128, 1, dim, seed=14)
    norm = 1.0 + randn(dim, seed=15, scale=0.2)
    cos, sin = ref.rope_tables(256, 32, FLASH.rope(kind))
    entries = ref.compress(kv, gate, ape, norm, kind, cos, sin, 1e-6)
    pooled = ref.pool(kv, gate, ape, 128, False)
    unroped = ref.apply_rope(entries, torch.tensor([0, 128]), cos, sin, inverse=True)
    want = pooled / pooled.pow(2).mean(dim=1, keepdim=True).add(1e-6).sqrt() * norm
    assert torch.allclose(unroped, want, atol=1e-5)


def test_csa_first_half_feeds_the_next_entry() -> None:
    # checkpoint order: the first D values of a token's [2 * D] projection feed entry b + 1
    dim = 4
    kv, gate = torch.zeros(12, 2, dim), torch.zeros(12, 2, dim)
    ape = torch.zeros(4, 2, dim)
    kv[0:4, 0] = 1.0  # first halves of block 0
    kv[4:8, 1] = 2.0  # second halves of block 1
    pooled = ref.pool(kv, gate, ape, 4, True)
    # entry 1 averages block 0's first halves (1) and block 1's second halves (2)
    assert torch.allclose(pooled[1], torch.full((dim,), 1.5))
    assert torch.allclose(pooled[0], torch.zeros(dim))  # block 0's second halves are 0
    assert torch.allclose(pooled[2], torch.zeros(dim))  # block 1's first halves are 0


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
    own = 1 if kind.overlap else 0  # the part feeding the token's own entry
    offs = torch.arange(cut - e * kind.ratio, kind.ratio)
    z = gate[cut:end, own] + ape[offs, own]
    top = torch.maximum(m, z.max(dim=0).values)
    w_old, w_new = torch.exp(m - top), torch.exp(z - top)
    entry = (acc * w_old + (w_new * kv[cut:end, own]).sum(0)) / (lsum * w_old + w_new.sum(0))
    want = ref.pool(kv, gate, ape, kind.ratio, kind.overlap)[e]
    assert torch.allclose(entry, want, atol=1e-5)


@pytest.mark.parametrize("kind", [LayerKind.WINDOW, LayerKind.CSA, LayerKind.HCA])
def test_layer_is_causal(kind: LayerKind) -> None:
    from engines.kernels.reference_layer import LayerWeights, layer_forward, layer_tables

    weights = LayerWeights.random(TINY, kind, hidden=32, seed=3)
    tables, itables = layer_tables(TINY, kind, 512)
    t = 136 if kind is LayerKind.HCA else 40
    x = randn(t, 32, seed=10)
    base = layer_forward(x, weights, TINY, tables, itables)
    tok = t - 9 if kind is LayerKind.HCA else 21
    bumped = x.clone()
    bumped[tok] += 1.0
    out = layer_forward(bumped, weights, TINY, tables, itables)
    assert torch.equal(out[:tok], base[:tok])
    assert not torch.allclose(out[tok], base[tok])
