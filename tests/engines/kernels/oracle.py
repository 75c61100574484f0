"""An outside oracle: one DeepSeek V4 attention layer, written from the released model's
semantics, independently of ``engines.kernels`` (nothing here imports it).

It takes the layer's weights as the checkpoint names and lays them out
(``layers.{i}.attn.<name>``, linear weights ``[out, in]``) and the model's ``config.json``
keys, runs a prefill (every token a query) in float64, and returns the intermediate
tensors along with the output, so each stage of the project's reference and kernels can be
compared with it. The semantics it encodes, each from DeepSeek's ``inference/model.py``:

* RoPE on the last ``qk_rope_head_dim`` dims, as complex rotations of interleaved pairs
  ``(2i, 2i + 1)``; frequencies ``theta ** (-2i / rope_dim)``; window-only layers
  (ratio 0) use ``rope_theta`` as is, compressing layers ``compress_rope_theta`` with YaRN
  (``rope_scaling``: factor, original length, beta_fast / beta_slow ramp); the indexer uses
  its layer's frequencies; the attention output is rotated back (conjugate) at the query's
  position.
* Queries: ``q_norm(wq_a x)`` (RMSNorm with weight), ``wq_b``, then every head RMS-normalised
  without weight, then RoPE. KV: ``kv_norm(wkv x)``, then RoPE.
* Compressor: ``wkv`` and ``wgate`` project each token to ``coff * head_dim`` (``coff = 2``
  for ratio 4, else 1); ``ape [ratio, coff * head_dim]`` is added to the gate logits by
  offset in the block. With overlap, entry ``j`` pools the *first* halves of block
  ``j - 1`` and the *second* halves of block ``j`` (a per-dim softmax over the 8 slots);
  without, the ``ratio`` tokens of block ``j``. Then RMSNorm (``compressor.norm``), then RoPE
  at position ``ratio * j``.
* Indexer (ratio 4 only): ``indexer.wq_b`` on the queries' low-rank latent, RoPE, and a
  normalised Hadamard rotation of queries and keys (orthogonal, so scores are unchanged);
  keys from the indexer's own compressor (``index_head_dim`` wide);
  ``score_j = sum_h w_h relu(q_h . k_j)`` with ``w = weights_proj x * Di**-0.5 * Hi**-0.5``;
  the ``index_topk`` best of the visible entries (``j < (i + 1) // 4``).
* Attention: the window (tokens ``max(0, i - W + 1) .. i``) plus the chosen (ratio 4) or all
  visible (``j < (i + 1) // ratio``) entries; ``softmax_scale = head_dim ** -0.5``; the sink
  ``exp(attn_sink_h)`` joins the denominator only.
* Output: heads in ``o_groups`` groups, ``wo_a`` (rows ``g * rank ..`` for group ``g``), then
  ``wo_b``.

With ``fp8_kv`` the oracle also rounds the KV's non-rope dims as the released code does
before attention (raw KV and compressed entries alike): blocks of 64 values, a power-of-two
scale ``2 ** ceil(log2(amax / 448))``, values rounded to FP8 e4m3; the roped dims stay
exact. Not modelled: the FP4 simulation of the indexer's queries and keys, and the bf16
roundings of intermediate values; otherwise the oracle is exact (float64) arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

import torch

F64 = torch.float64


def rope_freqs(cfg: dict[str, Any], ratio: int) -> torch.Tensor:
    """Angular frequency of each rotated pair, float64 ``[rope_dim // 2]``."""
    dim = cfg["qk_rope_head_dim"]
    base = cfg["compress_rope_theta"] if ratio else cfg["rope_theta"]
    exps = torch.tensor([2.0 * i / dim for i in range(dim // 2)], dtype=F64)
    freqs = base**-exps
    scaling = cfg.get("rope_scaling") or {}
    if not ratio or not scaling.get("original_max_position_embeddings"):
        return freqs
    orig, factor = scaling["original_max_position_embeddings"], scaling["factor"]

    def pair_for(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo = max(math.floor(pair_for(scaling["beta_fast"])), 0)
    hi = min(math.ceil(pair_for(scaling["beta_slow"])), dim - 1)
    if lo == hi:
        hi += 0.001
    out = []
    for i, f in enumerate(freqs.tolist()):
        interp = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep f, 1: f / factor
        out.append(f / factor * interp + f * (1 - interp))
    return torch.tensor(out, dtype=F64)


def rotate(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor, inverse: bool = False):  # type: ignore[no-untyped-def]
    """RoPE of the last ``2 * len(freqs)`` dims of ``x [..., D]`` at ``pos`` (broadcast to
    ``x``'s leading dims): pairs ``(2i, 2i + 1)`` as complex numbers times ``e^{i pos f}``."""
    n = 2 * freqs.shape[0]
    pairs = torch.view_as_complex(x[..., -n:].reshape(*x.shape[:-1], n // 2, 2).contiguous())
    angle = pos.to(F64)[..., None] * freqs
    turn = torch.polar(torch.ones_like(angle), -angle if inverse else angle)
    return torch.cat([x[..., :-n], torch.view_as_real(pairs * turn).flatten(-2)], dim=-1)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def hadamard(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return x @ h / math.sqrt(n)


def fp8_rounded(x: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """``x [..., D]`` with its first ``D - rope_dim`` values rounded to FP8 e4m3 in blocks of
    64 with power-of-two scales."""
    body = x[..., :-rope_dim].reshape(*x.shape[:-1], -1, 64)
    amax = body.abs().amax(dim=-1, keepdim=True).clamp_min(1e-4)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 448.0)))
    rounded = (body / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(F64) * scale
    return torch.cat([rounded.flatten(-2), x[..., -rope_dim:]], dim=-1)


def compressed_entries(
    x: torch.Tensor,
    w: dict[str, torch.Tensor],
    prefix: str,
    ratio: int,
    freqs: torch.Tensor,
    eps: float,
) -> dict[str, torch.Tensor]:
    """Entries ``[T // ratio, d]`` of the compressor ``prefix`` (``compressor.`` or
    ``indexer.compressor.``), with its projections."""
    kv, gate = x @ w[prefix + "wkv.weight"].T, x @ w[prefix + "wgate.weight"].T
    ape = w[prefix + "ape"]
    overlap = ratio == 4
    d = kv.shape[1] // (2 if overlap else 1)
    entries = []
    for j in range(x.shape[0] // ratio):
        vals, logits = [], []
        if overlap and j > 0:
            for t in range(ratio * (j - 1), ratio * j):  # previous block: first halves
                vals.append(kv[t, :d])
                logits.append(gate[t, :d] + ape[t - ratio * (j - 1), :d])
        for t in range(ratio * j, ratio * (j + 1)):  # own block: second halves
            vals.append(kv[t, -d:])
            logits.append(gate[t, -d:] + ape[t - ratio * j, -d:])
        weight = torch.softmax(torch.stack(logits), dim=0)
        pooled = (weight * torch.stack(vals)).sum(dim=0)
        normed = rmsnorm(pooled, w[prefix + "norm.weight"], eps)
        entries.append(rotate(normed, torch.tensor(ratio * j), freqs))
    out = torch.stack(entries) if entries else kv.new_zeros(0, d)
    return {"entries": out, "kv_proj": kv, "gate_proj": gate}


def attend(
    q: torch.Tensor,
    i: int,
    kv: torch.Tensor,
    entries: torch.Tensor | None,
    chosen: torch.Tensor | None,
    sink: torch.Tensor,
    cfg: dict[str, Any],
    ratio: int,
) -> torch.Tensor:
    """Attention output ``[H, D]`` (rotated back) of the query ``q [H, D]`` at position ``i``
    over its window of ``kv [T, D]`` and its compressed entries: ``chosen`` ones (ratio 4)
    or every visible one."""
    q, kv, sink = q.to(F64), kv.to(F64), sink.to(F64)
    keys = [kv[max(0, i - cfg["sliding_window"] + 1) : i + 1]]
    if entries is not None:
        entries = entries.to(F64)
        keys.append(entries[chosen] if ratio == 4 else entries[: (i + 1) // ratio])
    k = torch.cat(keys)
    logits = q @ k.T * cfg["head_dim"] ** -0.5  # [H, M]
    top = torch.maximum(logits.max(dim=1).values, sink)
    p = torch.exp(logits - top[:, None])
    denom = p.sum(dim=1) + torch.exp(sink - top)
    return rotate((p / denom[:, None]) @ k, torch.tensor(i), rope_freqs(cfg, ratio), inverse=True)


def attention_layer(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    ratio: int,
    *,
    fp8_kv: bool = False,
) -> dict[str, Any]:
    """Prefill of one attention layer of compress ratio ``ratio`` (0, 4 or 128).

    ``x [T, hidden]`` is the layer's normalised input; ``weights`` maps the checkpoint's
    names (relative to ``layers.{i}.attn.``) to tensors.
    """
    w = {k: v.to(F64) for k, v in weights.items()}
    x = x.to(F64)
    t = x.shape[0]
    heads, dim, eps = cfg["num_attention_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    freqs = rope_freqs(cfg, ratio)
    pos = torch.arange(t)

    latent = rmsnorm(x @ w["wq_a.weight"].T, w["q_norm.weight"], eps)
    q = rmsnorm((latent @ w["wq_b.weight"].T).reshape(t, heads, dim), None, eps)
    q = rotate(q, pos[:, None], freqs)
    kv = rotate(rmsnorm(x @ w["wkv.weight"].T, w["kv_norm.weight"], eps), pos, freqs)
    rope_dim = cfg["qk_rope_head_dim"]
    if fp8_kv:
        kv = fp8_rounded(kv, rope_dim)

    out: dict[str, Any] = {"freqs": freqs, "q": q, "kv": kv}
    entries = None
    if ratio:
        comp = compressed_entries(x, w, "compressor.", ratio, freqs, eps)
        entries = comp["entries"]
        if fp8_kv:
            entries = fp8_rounded(entries, rope_dim)
        out.update(entries=entries, comp_kv_proj=comp["kv_proj"], comp_gate_proj=comp["gate_proj"])

    selected: list[torch.Tensor] = []
    if ratio == 4:
        ih, idim = cfg["index_n_heads"], cfg["index_head_dim"]
        iq = rotate((latent @ w["indexer.wq_b.weight"].T).reshape(t, ih, idim), pos[:, None], freqs)
        iw = (x @ w["indexer.weights_proj.weight"].T) * (idim**-0.5 * ih**-0.5)
        icomp = compressed_entries(x, w, "indexer.compressor.", 4, freqs, eps)
        keys = icomp["entries"]
        scores = torch.relu(torch.einsum("thd,nd->thn", hadamard(iq), hadamard(keys)))
        scores = (scores * iw[:, :, None]).sum(dim=1)  # [T, n]
        for i in range(t):
            n_vis = (i + 1) // 4
            k = min(cfg["index_topk"], n_vis)
            order = torch.sort(scores[i, :n_vis], descending=True, stable=True).indices
            selected.append(order[:k].sort().values)
        out.update(
            index_q=iq,
            index_w=iw,
            index_keys=keys,
            index_scores=scores,
            selected=selected,
            index_kv_proj=icomp["kv_proj"],
            index_gate_proj=icomp["gate_proj"],
        )

    rows = [
        attend(
            q[i], i, kv, entries, selected[i] if ratio == 4 else None, w["attn_sink"], cfg, ratio
        )
        for i in range(t)
    ]
    o = torch.stack(rows)  # [T, H, D]

    groups = cfg["o_groups"]
    wo_a = w["wo_a.weight"]
    rank = wo_a.shape[0] // groups
    by_group = o.reshape(t, groups, heads * dim // groups)
    low = torch.stack(
        [by_group[:, g] @ wo_a[g * rank : (g + 1) * rank].T for g in range(groups)], dim=1
    )
    out.update(o=o, out=low.reshape(t, groups * rank) @ w["wo_b.weight"].T)
    return out
