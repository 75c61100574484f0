"""Indexer kernels: scores against the reference, top-k exactly as the reference rule.

Tolerances: scores within 1e-4 relative + 1e-4 absolute of the float32 reference computed
from the same (bf16- or FP8-stored) keys; selection is compared exactly, on the kernel's
own scores, because near-ties may legitimately order differently across summation orders.
"""

from __future__ import annotations

import pytest

from engines.kernels.indexer import index_scores, index_topk, select_topk
from tests.engines.kernels.util import filled_cache, randn, ref, torch


def _keys(rows: int, n: int, dim: int, fp8: bool, device: str):  # type: ignore[no-untyped-def]
    return filled_cache(
        randn(rows, n, dim, seed=n + dim, device=device), block_size=16, fp8=fp8, seed=3
    )


@pytest.mark.parametrize("fp8", [False, True])
def test_scores_match_reference_and_stop_at_the_visible_entries(fp8: bool, device: str) -> None:
    rows, heads, dim, n = 4, 6, 64, 120
    keys = _keys(rows, n, dim, fp8, device)
    q = randn(rows, heads, dim, seed=1, device=device).bfloat16()
    w = randn(rows, heads, seed=2, device=device)
    pos = torch.tensor([2, 3, 258, 4 * n - 1], dtype=torch.int32, device=device)
    scores = index_scores(q, w, pos, keys)
    for r in range(rows):
        n_vis = (int(pos[r]) + 1) // 4
        want = ref.index_scores(q[r], w[r], keys.read(r, torch.arange(n)))
        torch.testing.assert_close(scores[r, :n_vis], want[:n_vis], rtol=1e-4, atol=1e-4)
        assert bool((scores[r, n_vis:] == float("-inf")).all())


@pytest.mark.parametrize("k", [1, 8, 31])
@pytest.mark.parametrize("n_vis", [0, 1, 7, 8, 9, 30, 31, 32, 33, 300])
def test_topk_equals_reference_rule(k: int, n_vis: int, device: str) -> None:
    scores = randn(2, 300, seed=k * 1000 + n_vis, device=device)
    scores[1] = scores[1].round()  # many ties, and zeros of both signs
    scores[1, ::7] = -0.0
    pos = torch.full((2,), 4 * n_vis + 2, dtype=torch.int32, device=device)  # edge: 4j+2
    got = select_topk(scores, pos, k, block=64)
    for r in range(2):
        want = ref.select_topk(scores[r].cpu(), n_vis, k)
        assert got[r, : want.numel()].cpu().tolist() == want.tolist()
        assert bool((got[r, want.numel() :] == -1).all())


def test_topk_handles_extreme_and_negative_scores(device: str) -> None:
    scores = torch.tensor(
        [[-3.0e38, 1e-40, -1e-40, 5.0, -5.0, 3.0e38, float("-inf"), 0.0, -0.0, 2.0] * 30],
        device=device,
    )
    pos = torch.tensor([4 * 300 - 1], dtype=torch.int32, device=device)
    got = select_topk(scores, pos, 40, block=128)
    assert got[0].cpu().tolist() == ref.select_topk(scores[0].cpu(), 300, 40).tolist()


def test_index_topk_selects_entries_with_the_best_reference_scores(device: str) -> None:
    rows, heads, dim, n, k = 3, 4, 64, 200, 16
    keys = _keys(rows, n, dim, False, device)
    q = randn(rows, heads, dim, seed=5, device=device).bfloat16()
    w = randn(rows, heads, seed=6, device=device).abs()
    pos = torch.tensor([4 * n - 1, 4 * 17 + 3, 4 * 17 + 2], dtype=torch.int32, device=device)
    chosen = index_topk(q, w, pos, keys, k)
    for r in range(rows):
        n_vis = (int(pos[r]) + 1) // 4
        want = ref.index_scores(q[r], w[r], keys.read(r, torch.arange(n)))[:n_vis]
        picked = chosen[r][chosen[r] >= 0].long().cpu()
        assert picked.numel() == min(k, n_vis)
        assert int(picked.max()) < n_vis
        kth = want.sort(descending=True).values[min(k, n_vis) - 1]
        assert float(want[picked].min()) >= float(kth) - 1e-4
