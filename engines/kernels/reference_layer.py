"""A whole V4 attention layer in plain PyTorch: projections, compressors, indexer, attention.

Weights come in the checkpoint's layout and names (:class:`LayerWeights`). The layer maps
normalised hidden states ``x [T, hidden]`` (a prefill, every token a query) to its attention
output ``[T, hidden]``:

1. queries: ``qr = rms_norm(x wq_a^T, q_norm)``, ``q = qr wq_b^T`` per head ``[T, H, D]``,
   each head RMS-normalised without weight, then roped; the shared raw KV
   ``rms_norm(x wkv^T, kv_norm)`` ``[T, D]``, roped (RoPE of the layer kind, see
   ``AttentionShape.rope``);
2. compressed entries (CSA/HCA) from the compressor projections, see ``reference.compress``;
3. for CSA: indexer queries ``qr indexer.wq_b^T`` ``[T, Hi, Di]`` (roped), per-head weights
   ``x indexer.weights_proj^T * Di**-0.5 * Hi**-0.5`` ``[T, Hi]`` and indexer keys
   (compressed like the KV, with their own compressor), then the top-k visible entries;
4. sparse attention with the sink, inverse RoPE on the output's roped dims;
5. the grouped low-rank output projection: heads in ``G`` groups, each group's outputs
   projected to ``rank`` dims by its slice of ``wo_a``, the concatenation by ``wo_b``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from engines.kernels import reference as ref
from engines.kernels.shapes import AttentionShape, LayerKind, visible_entries

# LayerWeights field -> tensor name in the checkpoint, under ``layers.{i}.attn.``
CHECKPOINT_NAMES = {
    "wq_a": "wq_a.weight",
    "q_norm": "q_norm.weight",
    "wq_b": "wq_b.weight",
    "wkv": "wkv.weight",
    "kv_norm": "kv_norm.weight",
    "attn_sink": "attn_sink",
    "wo_a": "wo_a.weight",
    "wo_b": "wo_b.weight",
    "comp_wkv": "compressor.wkv.weight",
    "comp_wgate": "compressor.wgate.weight",
    "comp_ape": "compressor.ape",
    "comp_norm": "compressor.norm.weight",
    "idx_wq_b": "indexer.wq_b.weight",
    "idx_weights_proj": "indexer.weights_proj.weight",
    "idx_comp_wkv": "indexer.compressor.wkv.weight",
    "idx_comp_wgate": "indexer.compressor.wgate.weight",
    "idx_comp_ape": "indexer.compressor.ape",
    "idx_comp_norm": "indexer.compressor.norm.weight",
}


@dataclass(frozen=True)
class LayerWeights:
    """One layer's attention weights, in the checkpoint's layout (linear weights ``[out, in]``).

    ``P = 2`` for CSA (the compressor's ``[P * D]`` outputs hold the next-entry half first),
    1 for HCA; window-only layers have no compressor, HCA layers no indexer.
    """

    kind: LayerKind
    wq_a: torch.Tensor  # [q_rank, hidden]
    q_norm: torch.Tensor  # [q_rank]
    wq_b: torch.Tensor  # [H * D, q_rank]
    wkv: torch.Tensor  # [D, hidden]
    kv_norm: torch.Tensor  # [D]
    attn_sink: torch.Tensor  # [H]
    wo_a: torch.Tensor  # [G * rank, H / G * D]
    wo_b: torch.Tensor  # [hidden, G * rank]
    comp_wkv: torch.Tensor | None = None  # [P * D, hidden]
    comp_wgate: torch.Tensor | None = None  # [P * D, hidden]
    comp_ape: torch.Tensor | None = None  # [ratio, P * D]
    comp_norm: torch.Tensor | None = None  # [D]
    idx_wq_b: torch.Tensor | None = None  # [Hi * Di, q_rank]
    idx_weights_proj: torch.Tensor | None = None  # [Hi, hidden]
    idx_comp_wkv: torch.Tensor | None = None  # [2 * Di, hidden]
    idx_comp_wgate: torch.Tensor | None = None  # [2 * Di, hidden]
    idx_comp_ape: torch.Tensor | None = None  # [4, 2 * Di]
    idx_comp_norm: torch.Tensor | None = None  # [Di]

    @property
    def parts(self) -> int:
        return 2 if self.kind.overlap else 1

    @property
    def ape(self) -> torch.Tensor | None:
        """The compressor's logit bias as ``[ratio, P, D]``."""
        if self.comp_ape is None:
            return None
        return self.comp_ape.reshape(self.comp_ape.shape[0], self.parts, -1)

    @property
    def index_ape(self) -> torch.Tensor | None:
        if self.idx_comp_ape is None:
            return None
        return self.idx_comp_ape.reshape(self.idx_comp_ape.shape[0], 2, -1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Checkpoint names (relative to ``layers.{i}.attn.``) -> tensors."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[CHECKPOINT_NAMES[f.name]] = value
        return out

    @classmethod
    def from_state_dict(cls, kind: LayerKind, tensors: dict[str, torch.Tensor]) -> LayerWeights:
        return cls(
            kind=kind,
            **{f: tensors[n] for f, n in CHECKPOINT_NAMES.items() if n in tensors},
        )

    def to(self, device: torch.device | str) -> LayerWeights:
        return LayerWeights.from_state_dict(
            self.kind, {k: v.to(device) for k, v in self.state_dict().items()}
        )

    @classmethod
    def random(
        cls,
        shape: AttentionShape,
        kind: LayerKind,
        hidden: int,
        *,
        q_rank: int = 32,
        groups: int = 2,
        rank: int = 32,
        seed: int = 0,
    ) -> LayerWeights:
        gen = torch.Generator().manual_seed(seed)

        def w(*size: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*size, generator=gen) * scale

        def norm(n: int) -> torch.Tensor:
            return 1.0 + w(n, scale=0.2)

        h, d, p = shape.n_heads, shape.head_dim, 2 if kind.overlap else 1
        hi, di = shape.index_heads, shape.index_dim
        fan = hidden**-0.5
        extra: dict[str, torch.Tensor] = {}
        if kind is not LayerKind.WINDOW:
            extra["comp_wkv"] = w(p * d, hidden, scale=fan)
            extra["comp_wgate"] = w(p * d, hidden, scale=fan)
            extra["comp_ape"] = w(kind.ratio, p * d, scale=0.5)
            extra["comp_norm"] = norm(d)
        if kind is LayerKind.CSA:
            extra["idx_wq_b"] = w(hi * di, q_rank, scale=q_rank**-0.5)
            extra["idx_weights_proj"] = w(hi, hidden, scale=fan)
            extra["idx_comp_wkv"] = w(2 * di, hidden, scale=fan)
            extra["idx_comp_wgate"] = w(2 * di, hidden, scale=fan)
            extra["idx_comp_ape"] = w(4, 2 * di, scale=0.5)
            extra["idx_comp_norm"] = norm(di)
        return cls(
            kind=kind,
            wq_a=w(q_rank, hidden, scale=fan),
            q_norm=norm(q_rank),
            wq_b=w(h * d, q_rank, scale=q_rank**-0.5),
            wkv=w(d, hidden, scale=fan),
            kv_norm=norm(d),
            attn_sink=w(h),
            wo_a=w(groups * rank, h // groups * d, scale=(h // groups * d) ** -0.5),
            wo_b=w(hidden, groups * rank, scale=(groups * rank) ** -0.5),
            **extra,
        )


def layer_tables(
    shape: AttentionShape, kind: LayerKind, max_pos: int, device: torch.device | str = "cpu"
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The layer's RoPE tables for its KV / queries and for its indexer (same frequencies
    source, each for its own rope dims)."""
    rope = shape.rope(kind)
    return (
        ref.rope_tables(max_pos, shape.rope_dim, rope, device),
        ref.rope_tables(max_pos, shape.index_rope_dim, rope, device),
    )


@dataclass(frozen=True)
class LayerTensors:
    """Per-token tensors of a layer, as the decode path consumes them."""

    q: torch.Tensor  # [T, H, D] roped
    raw: torch.Tensor  # [T, D] roped
    comp_kv: torch.Tensor | None  # [T, P, D] (checkpoint order)
    comp_gate: torch.Tensor | None  # [T, P, D]
    entries: torch.Tensor | None  # [T // ratio, D]
    index_q: torch.Tensor | None  # [T, Hi, Di] roped
    index_w: torch.Tensor | None  # [T, Hi]
    index_kv: torch.Tensor | None  # [T, 2, Di]
    index_gate: torch.Tensor | None  # [T, 2, Di]
    index_keys: torch.Tensor | None  # [T // 4, Di]


def _parts(y: torch.Tensor, parts: int) -> torch.Tensor:
    return y.reshape(y.shape[0], parts, -1)


def project(
    x: torch.Tensor,
    weights: LayerWeights,
    shape: AttentionShape,
    tables: tuple[torch.Tensor, torch.Tensor],
    index_tables: tuple[torch.Tensor, torch.Tensor],
) -> LayerTensors:
    """Steps 1-3 of the layer for every token of ``x``."""
    kind, (cos, sin), (icos, isin), eps = weights.kind, tables, index_tables, shape.norm_eps
    t, x = x.shape[0], x.float()
    pos = torch.arange(t, device=x.device)
    qr = ref.rms_norm(x @ weights.wq_a.T, weights.q_norm, eps)
    q = (qr @ weights.wq_b.T).reshape(t, shape.n_heads, shape.head_dim)
    q = ref.apply_rope(ref.rms_norm(q, None, eps), pos[:, None], cos, sin)
    raw = ref.apply_rope(ref.rms_norm(x @ weights.wkv.T, weights.kv_norm, eps), pos, cos, sin)
    comp_kv = comp_gate = entries = None
    if weights.comp_wkv is not None:
        assert weights.comp_wgate is not None and weights.ape is not None
        assert weights.comp_norm is not None
        comp_kv = _parts(x @ weights.comp_wkv.T, weights.parts)
        comp_gate = _parts(x @ weights.comp_wgate.T, weights.parts)
        entries = ref.compress(
            comp_kv, comp_gate, weights.ape, weights.comp_norm, kind, cos, sin, eps
        )
    iq = iw = ikv = igate = ikeys = None
    if weights.idx_wq_b is not None:
        assert weights.idx_weights_proj is not None and weights.idx_comp_wkv is not None
        assert weights.idx_comp_wgate is not None and weights.index_ape is not None
        assert weights.idx_comp_norm is not None
        hi, di = shape.index_heads, shape.index_dim
        iq = ref.apply_rope((qr @ weights.idx_wq_b.T).reshape(t, hi, di), pos[:, None], icos, isin)
        iw = (x @ weights.idx_weights_proj.T) * (di**-0.5 * hi**-0.5)
        ikv = _parts(x @ weights.idx_comp_wkv.T, 2)
        igate = _parts(x @ weights.idx_comp_wgate.T, 2)
        ikeys = ref.compress(
            ikv, igate, weights.index_ape, weights.idx_comp_norm, LayerKind.CSA, icos, isin, eps
        )
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
                weights.attn_sink,
                shape.softmax_scale,
                shape.window,
            )
        )
    out = torch.stack(outs)
    return ref.apply_rope(out, torch.arange(t, device=out.device)[:, None], cos, sin, inverse=True)


def output_projection(o: torch.Tensor, weights: LayerWeights) -> torch.Tensor:
    """Step 5: grouped low-rank projection of ``o [T, H, D]`` to ``[T, hidden]``.

    Group ``g`` is heads ``g * H / G ..``; its ``H / G * D`` outputs are projected by rows
    ``g * rank .. (g + 1) * rank`` of ``wo_a``; ``wo_b`` maps the ``G * rank`` results back."""
    t = o.shape[0]
    per_group = weights.wo_a.shape[1]
    groups = o[0].numel() // per_group
    wo_a = weights.wo_a.reshape(groups, -1, per_group)
    low = torch.einsum("tgk,grk->tgr", o.reshape(t, groups, per_group), wo_a)
    return low.reshape(t, -1) @ weights.wo_b.T


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
