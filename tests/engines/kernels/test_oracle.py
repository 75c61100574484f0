"""The reference and every kernel against the outside oracle (``oracle.py``).

The oracle is an independent float64 implementation of one V4 attention layer written from
DeepSeek's released inference code, taking the weights under the checkpoint's names and
the model's ``config.json`` keys. Here, at a tiny size (4 heads of 128 dims with 64 roped,
a 4-head x 128-dim indexer, window 8, top-k 4, hidden 64), for window, CSA and HCA layers:

* the shapes' RoPE and norm settings are the released config's;
* the reference's RoPE tables, per-token projections, compressed entries, indexer keys and
  selections, attention outputs and layer outputs equal the oracle's (float32 rounding);
* the kernels, decoding token by token from position 0 on the oracle's own per-token tensors
  (the compressor projections fed to the kernel exactly as the checkpoint's matrices produce
  them), write the oracle's entries and indexer keys, select the oracle's top-k, and give
  the oracle's attention outputs.

Kernel tolerances come from the storage rounding, as elsewhere: bf16 entries within 2 bf16
ulps (``BF16_ATOL``), FP8 entries within half an FP8 step of their block; attention outputs
within ``2**-5`` of the oracle (bf16 queries, cache rows and outputs). With FP8 caches the
oracle rounds the KV's non-rope dims to FP8 as the released code does before attention
(``fp8_kv``), which is the cache's format; the selection may differ from the oracle's only
between entries whose scores are within the error bf16 / FP8 storage can cause.
"""

from __future__ import annotations

from typing import Any

import pytest

from engines.kernels.compressor import compress_decode, new_state
from engines.kernels.fp8 import EntryFormat
from engines.kernels.indexer import index_topk
from engines.kernels.layer_decode import LayerCaches, LayerParams, TokenInputs, decode_step
from engines.kernels.paged import PagedEntries
from engines.kernels.reference_layer import (
    LayerWeights,
    attend_all,
    layer_tables,
    output_projection,
    project,
    select,
)
from engines.kernels.shapes import PRO, AttentionShape, LayerKind, visible_entries
from tests.engines.kernels.oracle import attend, attention_layer, rope_freqs
from tests.engines.kernels.util import BF16_ATOL, fp8_bound, randn, ref, torch

HIDDEN, Q_RANK, GROUPS, RANK = 64, 32, 2, 32
ROPE_SCALING = {
    "type": "yarn",
    "factor": 16,
    "original_max_position_embeddings": 65536,
    "beta_fast": 32,
    "beta_slow": 1,
}
# config.json keys for the tiny model (one window, one CSA, one HCA layer): the oracle reads
# them, and the project's shape is built from them
CONFIG: dict[str, Any] = {
    "num_hidden_layers": 3,
    "compress_ratios": [0, 4, 128],
    "num_attention_heads": 4,
    "head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-6,
    "sliding_window": 8,
    "rope_theta": 10000,
    "compress_rope_theta": 160000,
    "rope_scaling": ROPE_SCALING,
    "index_n_heads": 4,
    "index_head_dim": 128,
    "index_topk": 4,
    "o_groups": GROUPS,
    "o_lora_rank": RANK,
    "q_lora_rank": Q_RANK,
    "hidden_size": HIDDEN,
}
SHAPE = AttentionShape.from_config("oracle", CONFIG)
# The released V4-Pro config.json (attention keys; compress_ratios: 61 layers, then the MTP
# layer's 0)
PRO_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 61,
    "compress_ratios": [128, 128] + [4, 128] * 29 + [4, 0],
    "num_attention_heads": 128,
    "head_dim": 512,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-6,
    "sliding_window": 128,
    "rope_theta": 10000,
    "compress_rope_theta": 160000,
    "rope_scaling": ROPE_SCALING,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 1024,
}
LENGTH = {LayerKind.WINDOW: 20, LayerKind.CSA: 40, LayerKind.HCA: 260}
KINDS = [LayerKind.WINDOW, LayerKind.CSA, LayerKind.HCA]
KV_FMT, KEY_FMT = EntryFormat(dim=128, tail=64), EntryFormat(dim=128, tail=0)
ROWS = 2


def _weights(kind: LayerKind) -> LayerWeights:
    return LayerWeights.random(
        SHAPE, kind, HIDDEN, q_rank=Q_RANK, groups=GROUPS, rank=RANK, seed=30 + KINDS.index(kind)
    )


def _inputs(kind: LayerKind, row: int = 0) -> torch.Tensor:
    return randn(LENGTH[kind], HIDDEN, seed=40 + 2 * KINDS.index(kind) + row)


def _tol(kind: LayerKind) -> float:
    """float32 against float64: rounding, plus the float32 RoPE angles (as the released code
    computes them), off by up to ``pos * 2**-24`` radians on values of magnitude up to 4."""
    return 1e-5 + 4 * LENGTH[kind] * 2.0**-24


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    err = float((got.double() - want.double().to(got.device)).abs().max())
    assert err <= atol, f"max error {err:.3g} > {atol:.3g}"


def test_shapes_carry_the_released_config() -> None:
    assert len(PRO_CONFIG["compress_ratios"]) == 62
    assert AttentionShape.from_config("pro", PRO_CONFIG) == PRO
    assert (SHAPE.window_layers, SHAPE.csa_layers, SHAPE.hca_layers) == (1, 1, 1)
    assert PRO.n_heads == PRO_CONFIG["num_attention_heads"]
    assert (PRO.head_dim, PRO.rope_dim) == (PRO_CONFIG["head_dim"], PRO_CONFIG["qk_rope_head_dim"])
    assert PRO.window == PRO_CONFIG["sliding_window"]
    assert (PRO.index_heads, PRO.index_dim) == (
        PRO_CONFIG["index_n_heads"],
        PRO_CONFIG["index_head_dim"],
    )
    assert PRO.index_rope_dim == PRO_CONFIG["qk_rope_head_dim"]  # the indexer ropes 64 dims too
    assert PRO.index_topk == PRO_CONFIG["index_topk"]
    assert PRO.norm_eps == PRO_CONFIG["rms_norm_eps"]
    assert PRO.rope(LayerKind.WINDOW).theta == PRO_CONFIG["rope_theta"]
    rope = PRO.rope(LayerKind.CSA)
    assert rope == PRO.rope(LayerKind.HCA)
    assert rope.theta == PRO_CONFIG["compress_rope_theta"]
    assert (rope.factor, rope.original_max_pos, rope.beta_fast, rope.beta_slow) == (
        ROPE_SCALING["factor"],
        ROPE_SCALING["original_max_position_embeddings"],
        ROPE_SCALING["beta_fast"],
        ROPE_SCALING["beta_slow"],
    )


@pytest.mark.parametrize("kind", KINDS)
def test_rope_tables_match_the_oracle(kind: LayerKind) -> None:
    freqs = rope_freqs(PRO_CONFIG, kind.ratio)
    got = ref.rope_frequencies(PRO.rope_dim, PRO.rope(kind))
    torch.testing.assert_close(got.double(), freqs, rtol=1e-6, atol=0)
    cos, sin = ref.rope_tables(4096, PRO.rope_dim, PRO.rope(kind))
    angle = torch.arange(4096, dtype=torch.float64)[:, None] * freqs
    # float32 angles (as the released code computes them) are off by at most pos * 2**-24
    _close(cos, angle.cos(), 4096 * 2.0**-23)
    _close(sin, angle.sin(), 4096 * 2.0**-23)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_layer_matches_the_oracle(kind: LayerKind) -> None:
    w = _weights(kind)
    x = _inputs(kind)
    want = attention_layer(x, w.state_dict(), CONFIG, kind.ratio)
    tables, itables = layer_tables(SHAPE, kind, LENGTH[kind])
    got = project(x, w, SHAPE, tables, itables)
    tol = _tol(kind)
    _close(got.q, want["q"], tol)
    _close(got.raw, want["kv"], tol)
    if kind is not LayerKind.WINDOW:
        assert got.entries is not None and got.comp_kv is not None
        _close(got.entries, want["entries"], tol)
        _close(got.comp_kv.flatten(1), want["comp_kv_proj"], tol)
    if kind is LayerKind.CSA:
        assert got.index_keys is not None and got.index_q is not None
        _close(got.index_keys, want["index_keys"], tol)
        _close(got.index_q, want["index_q"], tol)
        for pos in range(LENGTH[kind]):
            assert select(got, pos, SHAPE.index_topk).tolist() == want["selected"][pos].tolist()
    o = attend_all(got, w, SHAPE, *tables)
    _close(o, want["o"], tol)
    _close(output_projection(o, w), want["out"], 2 * tol)


def _cache(capacity: int, fmt: EntryFormat | None, dim: int, device: str) -> PagedEntries:
    return PagedEntries.allocate(
        ROWS, capacity, dim, block_size=8, fmt=fmt, device=device, seed=capacity
    )


def _check_selection(run: dict[str, Any], p: int, chosen: torch.Tensor, fp8: bool) -> None:
    """``chosen`` is a top-k of the oracle's scores at ``p`` up to the score error that bf16
    queries and bf16 / FP8 keys may cause (``sum_h |w_h| sum_d |dq k| + |q dk|``)."""
    n_vis = visible_entries(p, 4)
    count = min(SHAPE.index_topk, n_vis)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and chosen.numel() == count
    if not count:
        return
    assert int(chosen.max()) < n_vis
    q, wts, keys = run["index_q"][p], run["index_w"][p], run["index_keys"][:n_vis]
    dq = q.abs() * 2.0**-8
    dk = fp8_bound(keys.float()).double() if fp8 else keys.abs() * 2.0**-8
    err = (wts.abs()[:, None] * (dq @ keys.abs().T + q.abs() @ dk.T)).sum(dim=0) + 1e-5
    scores = run["index_scores"][p, :n_vis]
    kth = scores.sort(descending=True).values[count - 1]
    assert float(scores[chosen].min()) >= float(kth) - 2 * float(err.max())


def _stack(runs: list[dict[str, Any]], key: str, p: int, parts: int = 0) -> torch.Tensor:
    """Row tensors of the oracle's ``key`` at position ``p``, as float32 (``parts``: view the
    checkpoint's ``[parts * d]`` projection as ``[parts, d]``, as the kernels take it)."""
    rows = [run[key][p].float() for run in runs]
    if parts:
        rows = [r.reshape(parts, -1) for r in rows]
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("kind", "fp8"),
    [
        (LayerKind.WINDOW, False),
        (LayerKind.CSA, False),
        (LayerKind.CSA, True),
        (LayerKind.HCA, False),
        (LayerKind.HCA, True),
    ],
)
def test_kernels_decode_the_oracle_layer(kind: LayerKind, fp8: bool, device: str) -> None:
    """Every kernel, token by token from position 0, against the oracle's prefill."""
    w = _weights(kind).to(device)
    t = LENGTH[kind]
    sd = _weights(kind).state_dict()
    runs = [attention_layer(_inputs(kind, r), sd, CONFIG, kind.ratio) for r in range(ROWS)]
    # what the attention sees: with FP8 caches, the KV's non-rope dims rounded as the
    # released code rounds them (the same blocks and scales as the cache format)
    seen = [
        attention_layer(_inputs(kind, r), sd, CONFIG, kind.ratio, fp8_kv=True) if fp8 else run
        for r, run in enumerate(runs)
    ]
    tables, itables = layer_tables(SHAPE, kind, t, device)
    d, di = SHAPE.head_dim, SHAPE.index_dim
    kv_fmt, key_fmt = (KV_FMT, KEY_FMT) if fp8 else (None, None)
    window = _cache(2 * SHAPE.window, kv_fmt, d, device)
    comp = keys = state = istate = None
    if kind is not LayerKind.WINDOW:
        comp, state = _cache(t // kind.ratio + 1, kv_fmt, d, device), new_state(ROWS, d, device)
    if kind is LayerKind.CSA:
        keys, istate = _cache(t // 4 + 1, key_fmt, di, device), new_state(ROWS, di, device)
    caches = LayerCaches(kind, window, comp, state, keys, istate)
    params = LayerParams(
        SHAPE, w.attn_sink, w.ape, w.index_ape, tables, itables, w.comp_norm, w.idx_comp_norm
    )
    p_count = 2 if kind.overlap else 1
    # HCA: the kernels compress every token, attention runs for the last positions only
    first_attended = t - 6 if kind is LayerKind.HCA else 0
    for p in range(t):
        pos = torch.full((ROWS,), p, dtype=torch.int32, device=device)
        token = TokenInputs(
            q=_stack(runs, "q", p).to(device),
            raw=_stack(runs, "kv", p).to(device),
        )
        if kind is not LayerKind.WINDOW:
            token = TokenInputs(
                q=token.q,
                raw=token.raw,
                comp_kv=_stack(runs, "comp_kv_proj", p, p_count).to(device),
                comp_gate=_stack(runs, "comp_gate_proj", p, p_count).to(device),
                index_q=_stack(runs, "index_q", p).to(device) if keys else None,
                index_w=_stack(runs, "index_w", p).to(device) if keys else None,
                index_kv=_stack(runs, "index_kv_proj", p, 2).to(device) if keys else None,
                index_gate=_stack(runs, "index_gate_proj", p, 2).to(device) if keys else None,
            )
        if p < first_attended:
            window.write_rows(pos, token.raw)
            assert comp is not None and state is not None and w.ape is not None
            assert w.comp_norm is not None and token.comp_kv is not None
            assert token.comp_gate is not None
            compress_decode(
                token.comp_kv, token.comp_gate, w.ape, w.comp_norm, pos, state, comp, kind,
                *tables, eps=SHAPE.norm_eps,
            )  # fmt: skip
            continue
        out, selected = decode_step(caches, params, token, pos)
        for r, run in enumerate(runs):
            chosen = None
            if selected is not None:
                chosen = selected[r][selected[r] >= 0].long().cpu()
                _check_selection(run, p, chosen, fp8)
            # the oracle's attention over the entries the kernels chose (the oracle's own
            # choice but for near-ties that storage rounding may swap)
            sink = w.attn_sink.cpu()
            kv, entries = seen[r]["kv"], seen[r].get("entries")
            want = attend(run["q"][p], p, kv, entries, chosen, sink, CONFIG, kind.ratio)
            # bf16 queries, rows and output, as in test_layer
            _close(out[r], want, 2.0**-5)
    # the kernels' compressed entries and indexer keys are the oracle's
    for r, run in enumerate(runs):
        if comp is not None:
            n = t // kind.ratio
            got = comp.read(r, torch.arange(n))
            want = run["entries"].float().to(got.device)
            bound = fp8_bound(want) if fp8 else BF16_ATOL
            assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())
        if keys is not None:
            got = keys.read(r, torch.arange(t // 4))
            want = run["index_keys"].float().to(got.device)
            bound = fp8_bound(want) if fp8 else BF16_ATOL
            assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


def test_indexer_kernel_selects_the_oracle_top_k(device: str) -> None:
    """``index_topk`` on the oracle's indexer queries, weights and keys (bf16 cache)."""
    kind, t = LayerKind.CSA, LENGTH[LayerKind.CSA]
    runs = [attention_layer(_inputs(kind, r), _weights(kind).state_dict(), CONFIG, 4)
            for r in range(ROWS)]  # fmt: skip
    keys = _cache(t // 4, None, SHAPE.index_dim, device)
    for r, run in enumerate(runs):
        keys.write(r, torch.arange(t // 4), run["index_keys"].float().to(device))
    for p in (3, 11, 20, 39):
        pos = torch.full((ROWS,), p, dtype=torch.int32, device=device)
        q = _stack(runs, "index_q", p).to(device)
        wts = _stack(runs, "index_w", p).to(device)
        got = index_topk(q, wts, pos, keys, SHAPE.index_topk)
        for r, run in enumerate(runs):
            chosen = got[r][got[r] >= 0].cpu()
            want = run["selected"][p]
            scores = run["index_scores"][p]
            if chosen.tolist() != want.tolist():  # only a near-tie under bf16 keys may differ
                kth = scores[want].min()
                assert float(scores[chosen].min()) >= float(kth) - 1e-2
            assert chosen.numel() == want.numel()
