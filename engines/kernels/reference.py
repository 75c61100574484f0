"""Reference V4 attention for one layer, in plain PyTorch (float32 math, no tricks).

This is the specification the Triton kernels are tested against. Conventions (each follows
DeepSeek's released inference code for V4; docs/kernels.md lists them with their sources):

* RoPE rotates the last ``rope_dim`` dims in interleaved pairs ``(2i, 2i + 1)``
  (``a, b -> a c - b s, a s + b c``; not the rotate-half pairing ``(i, i + rope_dim / 2)``)
  with tables from :func:`rope_tables`, whose frequencies come from a
  :class:`~engines.kernels.shapes.RopeConfig` (theta, YaRN). A raw token is roped at its
  position, a compressed entry at the position of the first token of its own block
  (``ratio * j``).
* Compressor (gated pooling): every token carries ``P`` projections of values ``kv`` and gate
  logits ``gate`` (``[T, P, D]``, the checkpoint's ``[T, P * D]`` projection viewed as
  ``P`` halves). For CSA (``P = 2``) the first half (part 0) feeds the *next* entry and the
  second half (part 1) the entry of the token's own block; for HCA (``P = 1``) part 0 feeds its
  own entry. A learned bias ``ape[offset_in_block, part]`` is added to the logits. Entry ``j``
  is the per-dim softmax over its token slots of the logits, weighting the values; a CSA entry
  pools tokens ``4j-4 .. 4j+3`` (8 tokens, stride 4), an HCA entry tokens
  ``128j .. 128j+127``. The pooled entry is RMS-normalised with a learned weight, then roped.
* Indexer: ``score_s = sum_h w_h * relu(q_h . k_s)`` (the caller folds scales into ``w``); the
  top-k visible entries are taken, ties going to the lower index.
* Attention for a query at ``pos``: one softmax over the window tokens, the chosen entries and
  a per-head sink logit (which adds to the denominator only), with K = V = the shared entry.
  The output's roped dims are rotated back by the query position (inverse RoPE).
"""

from __future__ import annotations

import math

import torch

from engines.kernels.shapes import LayerKind, RopeConfig, visible_entries, window_start


def rope_frequencies(rope_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Float32 ``[rope_dim // 2]`` angular frequencies (radians per position) of pair ``i``.

    Computed in float32 as the released inference code does: ``theta ** (-2i / rope_dim)``,
    then, with YaRN, blended towards ``f_i / factor`` by a ramp over the correction range.
    """
    half = rope_dim // 2
    freqs = 1.0 / (rope.theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))
    if not rope.yarn:
        return freqs

    def correction_dim(rotations: float) -> float:
        # the pair index whose wavelength fits ``rotations`` times into the original length
        turns = rope.original_max_pos / (rotations * 2 * math.pi)
        return rope_dim * math.log(turns) / (2 * math.log(rope.theta))

    low = max(math.floor(correction_dim(rope.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rope.beta_slow)), rope_dim - 1)
    span = (high - low) if high != low else 0.001
    ramp = ((torch.arange(half, dtype=torch.float32) - low) / span).clamp(0, 1)
    keep = 1 - ramp  # 1: fast dims keep their frequency; 0: slow dims are interpolated
    return freqs / rope.factor * (1 - keep) + freqs * keep


def rope_tables(
    max_pos: int, rope_dim: int, rope: RopeConfig, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` float32 ``[max_pos, rope_dim // 2]``: column ``i`` rotates pair ``i``.

    Angles are ``pos * f_i`` in float32, as the released inference code computes them.
    """
    freqs = rope_frequencies(rope_dim, rope)
    ang = torch.outer(torch.arange(max_pos, dtype=torch.float32), freqs)
    return ang.cos().to(device), ang.sin().to(device)


def apply_rope(
    x: torch.Tensor,
    pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    inverse: bool = False,
) -> torch.Tensor:
    """Rotate the last ``2 * cos.shape[1]`` dims of ``x [..., D]`` by ``pos [...]``.

    The roped dims form interleaved pairs ``(2i, 2i + 1)``, pair ``i`` turning by
    ``pos * f_i`` (``-pos * f_i`` with ``inverse``).
    """
    half = cos.shape[1]
    c, s = cos[pos].to(x.dtype), sin[pos].to(x.dtype)
    if inverse:
        s = -s
    head, rot = x[..., : -2 * half], x[..., -2 * half :]
    a, b = rot[..., 0::2], rot[..., 1::2]
    turned = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    return torch.cat([head, turned], dim=-1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x**2) + eps) * weight`` over the last dim (float32)."""
    x = x.float()
    y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight.float()


def parts(kind: LayerKind) -> tuple[int, int | None]:
    """``(own, next)``: which part of a token's projection feeds the entry of its own block
    and which the next entry (``None`` for HCA). The checkpoint's CSA projection
    ``[2 * D]`` holds the next-entry half first."""
    return (1, 0) if kind.overlap else (0, None)


def _slots(
    kv: torch.Tensor, gate: torch.Tensor, ape: torch.Tensor, ratio: int, overlap: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and logits of every entry's token slots: ``[n, slots, D]`` each."""
    n, dim = kv.shape[0] // ratio, kv.shape[-1]
    own = 1 if overlap else 0
    cur_v = kv[: n * ratio, own].reshape(n, ratio, dim)
    cur_z = gate[: n * ratio, own].reshape(n, ratio, dim) + ape[:, own]
    if not overlap:
        return cur_v, cur_z
    prev_v = kv[: n * ratio, 0].reshape(n, ratio, dim).roll(1, dims=0)
    prev_z = gate[: n * ratio, 0].reshape(n, ratio, dim).roll(1, dims=0) + ape[:, 0]
    prev_z[:1] = -math.inf  # entry 0 has no previous block
    return torch.cat([prev_v, cur_v], dim=1), torch.cat([prev_z, cur_z], dim=1)


def pool(
    kv: torch.Tensor, gate: torch.Tensor, ape: torch.Tensor, ratio: int, overlap: bool
) -> torch.Tensor:
    """Gated pooling of ``kv, gate [T, P, D]`` into ``[T // ratio, D]`` entries (no norm, no
    RoPE)."""
    vals, logits = _slots(kv.float(), gate.float(), ape.float(), ratio, overlap)
    return (torch.softmax(logits, dim=1) * vals).sum(dim=1)


def finish_entries(
    pooled: torch.Tensor,
    first: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """Pooled entries ``[n, D]`` whose blocks start at ``first [n]``: RMSNorm, then RoPE."""
    return apply_rope(rms_norm(pooled, norm, eps), first, cos, sin)


def compress(
    kv: torch.Tensor,
    gate: torch.Tensor,
    ape: torch.Tensor,
    norm: torch.Tensor,
    kind: LayerKind,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Compressed entries of a layer: pooled, RMS-normalised (weight ``norm [D]``), then
    roped at ``ratio * j``."""
    entries = pool(kv, gate, ape, kind.ratio, kind.overlap)
    pos = torch.arange(entries.shape[0], device=kv.device) * kind.ratio
    return finish_entries(entries, pos, norm, eps, cos, sin)


def _accumulate(vals: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Online-softmax accumulator ``[3, D]`` (max, sum, weighted values) over slots dim 0."""
    dim = vals.shape[-1]
    if vals.shape[0] == 0:
        inf = torch.full((dim,), -math.inf)
        return torch.stack([inf, torch.zeros(dim), torch.zeros(dim)]).to(vals.device)
    m = logits.max(dim=0).values
    w = torch.exp(logits - m)
    return torch.stack([m, w.sum(dim=0), (w * vals).sum(dim=0)])


def prefill_state(
    kv: torch.Tensor, gate: torch.Tensor, ape: torch.Tensor, kind: LayerKind, length: int
) -> torch.Tensor:
    """Decode-time compressor state ``[2, 3, D]`` after tokens ``0 .. length - 1``.

    Slot ``e % 2`` accumulates entry ``e`` as ``(max logit, sum of weights, weighted sum)``
    per dim; an empty slot is ``(-inf, 0, 0)``. This is what the decode kernel keeps.
    """
    ratio, dim = kind.ratio, kv.shape[-1]
    own, nxt = parts(kind)
    kv, gate, ape = kv.float(), gate.float(), ape.float()
    e, start = length // ratio, (length // ratio) * ratio
    offs = torch.arange(length - start, device=kv.device)
    empty = _accumulate(kv.new_zeros(0, dim), kv.new_zeros(0, dim))
    state = torch.stack([empty, empty])
    cur_v, cur_z = kv[start:length, own], gate[start:length, own] + ape[offs, own]
    if nxt is not None and e > 0:
        prev = slice(start - ratio, start)
        cur_v = torch.cat([kv[prev, nxt], cur_v])
        cur_z = torch.cat([gate[prev, nxt] + ape[:, nxt], cur_z])
    state[e % 2] = _accumulate(cur_v, cur_z)
    if nxt is not None:
        state[(e + 1) % 2] = _accumulate(
            kv[start:length, nxt], gate[start:length, nxt] + ape[offs, nxt]
        )
    return state


def index_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Lightning-indexer scores ``[N]`` for ``q [Hi, Di]``, ``w [Hi]``, ``keys [N, Di]``."""
    return (torch.relu(keys.float() @ q.float().T) * w.float()).sum(dim=-1)


def select_topk(scores: torch.Tensor, n_visible: int, k: int) -> torch.Tensor:
    """Ascending indices of the ``k`` best of the first ``n_visible`` scores (ties: low index)."""
    order = torch.sort(scores[:n_visible], descending=True, stable=True).indices
    return order[:k].sort().values


def sparse_attention(
    q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention of ``q [H, D]`` over ``kv [M, D]`` (K = V) plus a sink per head."""
    logits = (q.float() @ kv.float().T) * scale
    logits = torch.cat([logits, sink.float()[:, None]], dim=1)
    probs = torch.softmax(logits, dim=1)
    return probs[:, :-1] @ kv.float()


def attention_inputs(
    pos: int,
    kind: LayerKind,
    raw: torch.Tensor,
    entries: torch.Tensor | None,
    selected: torch.Tensor | None,
    window: int,
) -> torch.Tensor:
    """The KV rows a query at ``pos`` attends: its window, then its visible entries."""
    rows = [raw[window_start(pos, window) : pos + 1]]
    n_vis = visible_entries(pos, kind.ratio)
    if kind is LayerKind.CSA:
        if entries is None or selected is None:
            raise ValueError("CSA attention needs entries and selected indices")
        if bool((selected >= n_vis).any()):
            raise ValueError(f"selected entries beyond the {n_vis} visible at position {pos}")
        rows.append(entries[selected])
    elif kind is LayerKind.HCA:
        if entries is None:
            raise ValueError("HCA attention needs entries")
        rows.append(entries[:n_vis])
    return torch.cat([r.float() for r in rows])


def decode_attention(
    q: torch.Tensor,
    pos: int,
    kind: LayerKind,
    raw: torch.Tensor,
    entries: torch.Tensor | None,
    selected: torch.Tensor | None,
    sink: torch.Tensor,
    scale: float,
    window: int,
) -> torch.Tensor:
    """Attention output ``[H, D]`` (before inverse RoPE) of one query at ``pos``."""
    kv = attention_inputs(pos, kind, raw, entries, selected, window)
    return sparse_attention(q, kv, sink, scale)
