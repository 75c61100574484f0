"""A whole V4 attention layer in plain PyTorch: projections, compressors, indexer, attention.

The layer maps hidden states ``x [T, hidden]`` (a prefill, every token a query) to its
attention output ``[T, hidden]``:

1. queries ``[T, H, D]`` and the shared raw KV ``[T, D]``, roped at their positions;
2. compressed entries (CSA/HCA) from the compressor projections, see ``reference.compress``;
3. for CSA: indexer queries ``[T, Hi, Di]`` (roped), per-head weights ``[T, Hi]`` and indexer
   keys (compressed like the KV), then the top-k visible entries per query;
4. sparse attention with the sink, inverse RoPE on the output's roped dims;
5. the grouped low-rank output projection: heads in ``G`` groups, each group's outputs
   projected to ``rank`` dims, the concatenation projected back to ``hidden``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.kernels import reference as ref
from engines.kernels.shapes import AttentionShape, LayerKind, visible_entries


@dataclass(frozen=True)
class LayerWeights:
    kind: LayerKind
    wq: torch.Tensor  # [hidden, H * D]
    wkv: torch.Tensor  # [hidden, D]
    sink: torch.Tensor  # [H]
    wo_a: torch.Tensor  # [G, H / G * D, rank]
    wo_b: torch.Tensor  # [G * rank, hidden]
    wc: torch.Tensor | None = None  # compressor [hidden, 2 * P * D]: values then gate logits
    ape: torch.Tensor | None = None  # [ratio, P, D]
    wiq: torch.Tensor | None = None  # indexer queries [hidden, Hi * Di]
    wiw: torch.Tensor | None = None  # indexer head weights [hidden, Hi]
    wic: torch.Tensor | None = None  # indexer compressor [hidden, 2 * 2 * Di]
    iape: torch.Tensor | None = None  # [4, 2, Di]

    @classmethod
    def random(
        cls,
        shape: AttentionShape,
        kind: LayerKind,
        hidden: int,
        *,
        groups: int = 2,
        rank: int = 32,
        seed: int = 0,
    ) -> LayerWeights:
        gen = torch.Generator().manual_seed(seed)

        def w(*size: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*size, generator=gen) * scale

        h, d, p = shape.n_heads, shape.head_dim, 2 if kind.overlap else 1
        hi, di = shape.index_heads, shape.index_dim
        fan = hidden**-0.5
        extra: dict[str, torch.Tensor] = {}
        if kind is not LayerKind.WINDOW:
            extra["wc"] = w(hidden, 2 * p * d, scale=fan)
            extra["ape"] = w(kind.ratio, p, d, scale=0.5)
        if kind is LayerKind.CSA:
            extra["wiq"] = w(hidden, hi * di, scale=fan)
            extra["wiw"] = w(hidden, hi, scale=fan)
            extra["wic"] = w(hidden, 4 * di, scale=fan)
            extra["iape"] = w(4, 2, di, scale=0.5)
        return cls(
            kind=kind,
            wq=w(hidden, h * d, scale=fan),
            wkv=w(hidden, d, scale=fan),
            sink=w(h),
            wo_a=w(groups, h // groups * d, rank, scale=(h // groups * d) ** -0.5),
            wo_b=w(groups * rank, hidden, scale=(groups * rank) ** -0.5),
            **extra,
        )


@dataclass(frozen=True)
class LayerTensors:
    """Per-token tensors of a layer, as the decode path consumes them."""

    q: torch.Tensor  # [T, H, D] roped
    raw: torch.Tensor  # [T, D] roped
    comp_kv: torch.Tensor | None  # [T, P, D]
    comp_gate: torch.Tensor | None  # [T, P, D]
    entries: torch.Tensor | None  # [T // ratio, D]
    index_q: torch.Tensor | None  # [T, Hi, Di] roped
    index_w: torch.Tensor | None  # [T, Hi]
    index_kv: torch.Tensor | None  # [T, 2, Di]
    index_gate: torch.Tensor | None  # [T, 2, Di]
    index_keys: torch.Tensor | None  # [T // 4, Di]


def _split(x: torch.Tensor, parts: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    kv, gate = x.reshape(x.shape[0], 2, parts, dim).unbind(dim=1)
    return kv, gate


def project(
    x: torch.Tensor,
    weights: LayerWeights,
    shape: AttentionShape,
    tables: tuple[torch.Tensor, torch.Tensor],
    index_tables: tuple[torch.Tensor, torch.Tensor],
) -> LayerTensors:
    """Steps 1-3 of the layer for every token of ``x``."""
    kind, (cos, sin), (icos, isin) = weights.kind, tables, index_tables
    t, x = x.shape[0], x.float()
    pos = torch.arange(t, device=x.device)
    q = ref.apply_rope(
        (x @ weights.wq).reshape(t, shape.n_heads, shape.head_dim), pos[:, None], cos, sin
    )
    raw = ref.apply_rope(x @ weights.wkv, pos, cos, sin)
    comp_kv = comp_gate = entries = None
    if weights.wc is not None and weights.ape is not None:
        comp_kv, comp_gate = _split(x @ weights.wc, 2 if kind.overlap else 1, shape.head_dim)
        entries = ref.compress(comp_kv, comp_gate, weights.ape, kind, cos, sin)
    iq = iw = ikv = igate = ikeys = None
    if weights.wiq is not None and weights.wiw is not None and weights.wic is not None:
        hi, di = shape.index_heads, shape.index_dim
        iq = ref.apply_rope((x @ weights.wiq).reshape(t, hi, di), pos[:, None], icos, isin)
        iw = (x @ weights.wiw) * (hi**-0.5 * di**-0.5)
        ikv, igate = _split(x @ weights.wic, 2, di)
        assert weights.iape is not None
        ikeys = ref.compress(ikv, igate, weights.iape, LayerKind.CSA, icos, isin)
    return LayerTensors(q, raw, comp_kv, comp_gate, entries, iq, iw, ikv, igate, ikeys)


def select(tensors: LayerTensors, pos: int, topk: int) -> torch.Tensor:
    """The CSA entries a query at ``pos`` attends (ascending indices)."""
    assert tensors.index_q is not None and tensors.index_w is not None
    assert tensors.index_keys is not None
    n_vis = visible_entries(pos, LayerKind.CSA.ratio)
    scores = ref.index_scores(tensors.index_q[pos], tensors.index_w[pos], tensors.index_keys)
    return ref.select_topk(scores, n_vis, topk)


def attend_all(
    tensors: LayerTensors,
    weights: LayerWeights,
    shape: AttentionShape,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """Step 4 for every token: ``[T, H, D]`` after inverse RoPE."""
    t = tensors.q.shape[0]
    outs = []
    for pos in range(t):
        selected = select(tensors, pos, shape.index_topk) if weights.kind is LayerKind.CSA else None
        outs.append(
            ref.decode_attention(
                tensors.q[pos],
                pos,
                weights.kind,
                tensors.raw,
                tensors.entries,
                selected,
                weights.sink,
                shape.softmax_scale,
                shape.window,
            )
        )
    out = torch.stack(outs)
    return ref.apply_rope(out, torch.arange(t, device=out.device)[:, None], cos, sin, inverse=True)


def output_projection(o: torch.Tensor, weights: LayerWeights) -> torch.Tensor:
    """Step 5: grouped low-rank projection of ``o [T, H, D]`` to ``[T, hidden]``."""
    t, groups = o.shape[0], weights.wo_a.shape[0]
    low = torch.einsum("tgk,gkr->tgr", o.reshape(t, groups, -1), weights.wo_a)
    return low.reshape(t, -1) @ weights.wo_b


def layer_forward(
    x: torch.Tensor,
    weights: LayerWeights,
    shape: AttentionShape,
    tables: tuple[torch.Tensor, torch.Tensor],
    index_tables: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The whole layer: ``x [T, hidden] -> [T, hidden]``."""
    tensors = project(x, weights, shape, tables, index_tables)
    return output_projection(attend_all(tensors, weights, shape, *tables), weights)
