"""The kernels at real V4 shapes and long contexts, against the reference (CUDA only).

Flash (64 heads, top-k 512) and Pro (128 heads, top-k 1024), 512-dim entries with 64 roped
dims, 64-head x 128-dim indexer, contexts of 64k, 128k and 1M tokens, paged caches in
shuffled 64-entry blocks, bf16 and FP8 entries. Each case runs a few rows at once: the
last token of the context, the token before it (the newest compressed entry is not visible
yet) and a row halfway through (half the cached entries are in its future).

The reference runs in float32 on the GPU (``highest`` matmul precision, no TF32) on the
entries gathered from the same caches, so storage rounding is common to both sides and the
tolerances cover only the kernels' arithmetic:

* ``sparse_decode``: every output value within ``1.25 * 2**-8 * (|ref| + P @ |V|) + 1e-5``,
  where ``P`` are the reference probabilities (sink included) and ``V`` the gathered rows.
  On tensor cores the probabilities are rounded to bf16 before ``P @ V`` (relative error at
  most ``2**-8`` each, so at most ``2**-8 * P @ |V|`` on the output) and the output is
  rounded to bf16 (``2**-8 * |out|``); 1.25 is the margin for float32 summation order.
  ``lse`` (float32 throughout) within 5e-4 absolute: an entry carrying 0.05% of a row's
  probability mass, dropped or added, moves it by that much.
  Queries are scaled so that logits have a standard deviation of about 2 (peaked like real
  attention) and the sink logits sit near the largest ones, so they matter.
* ``index_scores``: within ``5e-5 * sum_h |w_h| sum_d |q_hd k_d| + 1e-6``. Products of bf16
  values are exact in float32; each side then rounds at most 193 times (128-term dots, the
  weight, a 64-head sum), ``2**-24`` each (``2**-23`` if the tensor cores truncate), so the
  two sides differ by at most about ``3.5e-5`` of that magnitude. The top-k equals the
  reference rule applied to the kernel's own scores exactly, and every chosen entry's
  reference score is within twice the bound of the k-th best.
* ``compress_decode``: bf16 entries within ``2**-7 * |ref| + 1e-5`` (one bf16 ulp: the
  rounding may fall either side of a midpoint), FP8 entries within half an FP8 step at the
  top of their block (``fp8_bound``), the float32 state within ``5e-5`` relative +
  ``1e-5`` absolute (GPU ``exp`` is approximate to a few ulps, over up to 128 slots).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.kernels.compressor import compress_decode, new_state
from engines.kernels.decode import sparse_decode
from engines.kernels.fp8 import INDEX_FORMAT, KV_FORMAT
from engines.kernels.indexer import index_scores, index_topk, select_topk
from engines.kernels.paged import PagedEntries
from engines.kernels.shapes import FLASH, PRO, AttentionShape, LayerKind, visible_entries
from tests.engines.kernels.util import fp8_bound, ref, torch

pytestmark = pytest.mark.gpu

CONTEXTS = {"64k": 64 * 1024, "128k": 128 * 1024, "1m": 1024 * 1024}
SHAPES = {"flash": FLASH, "pro": PRO}
BLOCK = 64  # entries per page, as vLLM pages V4 caches
RING = 256  # window ring capacity (two windows: the older half must be ignored)
ULP = 2.0**-8  # bf16 unit roundoff

# The compressor and indexer dims are the same in both models, so those tests run once.
assert (FLASH.head_dim, FLASH.rope_dim, FLASH.index_heads, FLASH.index_dim) == (
    PRO.head_dim,
    PRO.rope_dim,
    PRO.index_heads,
    PRO.index_dim,
)


@pytest.fixture(autouse=True)
def _exact_float32_matmul() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _randn(*shape: int, seed: int, device: str, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=device) * scale


def _positions(ctx: int, ratio: int) -> list[int]:
    """Last token, the one before (newest entry not visible), one just closing an entry mid-way."""
    return [ctx - 1, ctx - 2, ctx // 2 + ratio - 1]


def _cache(rows: int, n: int, dim: int, fp8: bool, device: str, seed: int) -> PagedEntries:
    """A shuffled paged cache with ``n`` random entries per row (``n * dim`` generated per row)."""
    fmt = (KV_FORMAT if dim == KV_FORMAT.dim else INDEX_FORMAT) if fp8 else None
    cache = PagedEntries.allocate(rows, n, dim, block_size=BLOCK, fmt=fmt, device=device, seed=seed)
    idx = torch.arange(n, device=device)
    for r in range(rows):
        cache.write(r, idx, _randn(n, dim, seed=seed * 100 + r, device=device))
    return cache


def run_decode(shape: AttentionShape, ctx: int, kind: LayerKind, fp8: bool, device: str) -> None:
    heads, dim, window, k = shape.n_heads, shape.head_dim, shape.window, shape.index_topk
    positions = _positions(ctx, kind.ratio)
    rows = len(positions)
    pos = torch.tensor(positions, dtype=torch.int32, device=device)
    wcache = PagedEntries.allocate(
        rows,
        RING,
        dim,
        block_size=BLOCK,
        fmt=KV_FORMAT if fp8 else None,
        device=device,
        seed=11,
    )
    for r, p in enumerate(positions):
        toks = torch.arange(p - RING + 1, p + 1, device=device)
        wcache.write(r, toks % RING, _randn(RING, dim, seed=20 + r, device=device))
    n_ent = ctx // kind.ratio
    ccache = _cache(rows, n_ent, dim, fp8, device, seed=12)
    q = _randn(rows, heads, dim, seed=13, device=device, scale=2.0).bfloat16()
    sink = _randn(heads, seed=14, device=device) + 4.0
    sel = None
    if kind is LayerKind.CSA:
        sel = torch.empty(rows, k, dtype=torch.int32, device=device)
        for r, p in enumerate(positions):
            n_vis = visible_entries(p, kind.ratio)
            gen = torch.Generator(device=device).manual_seed(30 + r)
            pick = torch.randperm(n_vis - 1, generator=gen, device=device)[: k - 1]
            newest = torch.tensor([n_vis - 1], device=device)  # the newest visible entry
            sel[r] = torch.cat([pick, newest]).sort().values.int()
        sel[1, 0] = visible_entries(positions[1], kind.ratio)  # cached, not visible: ignored
        sel[1, 1] = -1  # unused slot
    out, lse = sparse_decode(
        q,
        pos,
        sink,
        wcache,
        kind,
        compressed=ccache,
        selected=sel,
        scale=shape.softmax_scale,
        window_size=window,
    )
    for r, p in enumerate(positions):
        lo = max(0, p - window + 1)
        rows_ = [wcache.read(r, torch.arange(lo, p + 1, device=device) % RING)]
        n_vis = visible_entries(p, kind.ratio)
        if sel is not None:
            chosen = sel[r][(sel[r] >= 0) & (sel[r] < n_vis)]
            rows_.append(ccache.read(r, chosen))
        else:
            rows_.append(ccache.read(r, torch.arange(n_vis, device=device)))
        kv = torch.cat(rows_)
        logits = q[r].float() @ kv.T * shape.softmax_scale
        logits = torch.cat([logits, sink[:, None]], dim=1)
        probs = torch.softmax(logits, dim=1)[:, :-1]
        want = probs @ kv
        torch.testing.assert_close(want, ref.sparse_attention(q[r], kv, sink, shape.softmax_scale))
        bound = 1.25 * ULP * (want.abs() + probs @ kv.abs()) + 1e-5
        err = (out[r].float() - want).abs()
        assert bool((err <= bound).all()), (
            f"row {r} (pos {p}): max error {float(err.max()):.3g}, "
            f"worst error/bound {float((err / bound).max()):.3g}"
        )
        torch.testing.assert_close(lse[r], torch.logsumexp(logits, dim=1), atol=5e-4, rtol=0)


def run_index(shape: AttentionShape, ctx: int, fp8: bool, device: str) -> None:
    heads, dim, k = shape.index_heads, shape.index_dim, shape.index_topk
    ratio = LayerKind.CSA.ratio
    positions = [*_positions(ctx, ratio), ratio * k - 2]  # the last row sees k - 1 entries
    rows, n = len(positions), ctx // ratio
    pos = torch.tensor(positions, dtype=torch.int32, device=device)
    keys = _cache(rows, n, dim, fp8, device, seed=40)
    q = _randn(rows, heads, dim, seed=41, device=device).bfloat16()
    w = _randn(rows, heads, seed=42, device=device, scale=dim**-0.5)
    scores = index_scores(q, w, pos, keys)
    chosen = index_topk(q, w, pos, keys, k)
    assert torch.equal(chosen, select_topk(scores, pos, k))
    all_idx = torch.arange(n, device=device)
    for r, p in enumerate(positions):
        n_vis = visible_entries(p, ratio)
        kr = keys.read(r, all_idx[:n_vis])
        want = ref.index_scores(q[r], w[r], kr)
        mag = (kr.abs() @ q[r].float().abs().T) @ w[r].abs()
        tol = 5e-5 * mag + 1e-6
        err = (scores[r, :n_vis] - want).abs()
        assert bool((err <= tol).all()), f"row {r}: score error {float(err.max()):.3g}"
        assert bool((scores[r, n_vis:] == float("-inf")).all())
        rule = ref.select_topk(scores[r], n_vis, k)
        got = chosen[r]
        assert torch.equal(got[: rule.numel()], rule.int())
        assert bool((got[rule.numel() :] == -1).all())
        picked = got[got >= 0].long()
        assert picked.numel() == min(k, n_vis)
        kth = want.sort(descending=True).values[min(k, n_vis) - 1]
        assert float((want[picked] - kth + 2 * tol[picked]).min()) >= 0.0


def run_compress(ctx: int, kind: LayerKind, index_keys: bool, fp8: bool, device: str) -> None:
    """Decode the last ``2 * ratio + 1`` tokens of some rows into a cache at ``ctx`` positions.

    Tokens are generated for the last ``4 * ratio`` positions only. Pooling does not depend
    on absolute positions, so the reference pools these tokens as a sequence of their own
    (its first entry lacks the previous block: only later entries are compared), then
    normalises and ropes the entries at their real positions with the layer's real RoPE
    (``compress_rope_theta`` with YaRN). ``base // ratio`` is even, so the state slots of
    the local and the real entry numbers agree.
    """
    ratio, parts = kind.ratio, 2 if kind.overlap else 1
    dim = FLASH.index_dim if index_keys else FLASH.head_dim
    rope = FLASH.index_rope_dim if index_keys else FLASH.rope_dim
    length = 4 * ratio
    base = ctx - length
    assert base % (2 * ratio) == 0
    starts = [ratio, ratio + 1, 2 * ratio - 1, 2 * ratio - 2]  # local; block starts and ends
    steps = 2 * ratio + 1
    rows = len(starts)
    kv = _randn(rows, length, parts, dim, seed=50, device=device)
    gate = _randn(rows, length, parts, dim, seed=51, device=device)
    ape = _randn(ratio, parts, dim, seed=52, device=device, scale=0.5)
    norm = 1.0 + _randn(dim, seed=54, device=device, scale=0.2)
    cos, sin = ref.rope_tables(ctx, rope, FLASH.rope(kind), device=device)
    fmt = (KV_FORMAT if dim == KV_FORMAT.dim else INDEX_FORMAT) if fp8 else None
    cache = PagedEntries.allocate(
        rows, ctx // ratio, dim, block_size=BLOCK, fmt=fmt, device=device, seed=53
    )
    state = new_state(rows + 1, dim, device)
    index = torch.arange(rows, 0, -1, dtype=torch.int32, device=device)
    for r, s in enumerate(starts):
        state[index[r]] = ref.prefill_state(kv[r], gate[r], ape, kind, s)
    rr = torch.arange(rows, device=device)
    for step in range(steps):
        local = torch.tensor(starts, device=device) + step
        pos = (base + local).to(torch.int32)
        compress_decode(
            kv[rr, local],
            gate[rr, local],
            ape,
            norm,
            pos,
            state,
            cache,
            kind,
            cos,
            sin,
            eps=FLASH.norm_eps,
            state_index=index,
        )
    for r, s in enumerate(starts):
        end = s + steps
        first, last = s // ratio, end // ratio  # entries the decode steps finished
        pooled = ref.pool(kv[r, :end], gate[r, :end], ape, ratio, kind.overlap)[first:last]
        ent = torch.arange(first, last, device=device) + base // ratio
        want = ref.finish_entries(pooled, ent * ratio, norm, FLASH.norm_eps, cos, sin)
        got = cache.read(r, ent)
        bound = fp8_bound(want) if fp8 else 2.0**-7 * want.abs() + 1e-5
        err = (got - want).abs()
        assert bool((err <= bound).all()), f"row {r}: entry error {float(err.max()):.3g}"
        want_state = ref.prefill_state(kv[r], gate[r], ape, kind, end)
        got_state = state[index[r]]
        assert torch.equal(got_state[:, 0].isinf(), want_state[:, 0].isinf())
        torch.testing.assert_close(
            got_state.nan_to_num(neginf=0.0),
            want_state.nan_to_num(neginf=0.0),
            rtol=5e-5,
            atol=1e-5,
        )


def _ids(values: dict[str, object]) -> list[str]:
    return list(values)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("kind", [LayerKind.CSA, LayerKind.HCA], ids=["csa", "hca"])
@pytest.mark.parametrize("ctx", list(CONTEXTS.values()), ids=_ids(CONTEXTS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=_ids(SHAPES))
def test_sparse_decode_real_shapes(
    shape: AttentionShape, ctx: int, kind: LayerKind, fp8: bool, device: str
) -> None:
    run_decode(shape, ctx, kind, fp8, device)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("ctx", list(CONTEXTS.values()), ids=_ids(CONTEXTS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=_ids(SHAPES))
def test_index_topk_real_shapes(shape: AttentionShape, ctx: int, fp8: bool, device: str) -> None:
    run_index(shape, ctx, fp8, device)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize(
    ("kind", "index_keys"),
    [(LayerKind.CSA, False), (LayerKind.CSA, True), (LayerKind.HCA, False)],
    ids=["csa-kv", "csa-index-keys", "hca-kv"],
)
@pytest.mark.parametrize("ctx", list(CONTEXTS.values()), ids=_ids(CONTEXTS))
def test_compress_decode_real_shapes(
    ctx: int, kind: LayerKind, index_keys: bool, fp8: bool, device: str
) -> None:
    run_compress(ctx, kind, index_keys, fp8, device)
