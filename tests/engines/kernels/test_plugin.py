"""The vLLM plugin: when it registers, and the custom ops it defines."""

from __future__ import annotations

import pytest

from engines.kernels import plugin
from engines.kernels.plugin import decide
from engines.kernels.shapes import FLASH, LayerKind
from tests.engines.kernels.util import filled_cache, randn, ref, torch


@pytest.mark.parametrize(
    ("mode", "capability", "have", "register"),
    [
        ("auto", (8, 0), True, True),  # A100: no FlashMLA
        ("auto", (8, 9), True, True),  # Ada
        ("auto", (9, 0), True, False),  # H100 / H200
        ("auto", (10, 0), True, False),  # B200
        ("auto", None, True, False),  # no GPU
        ("", (8, 0), True, True),
        ("on", (9, 0), True, True),
        ("on", None, True, True),
        ("off", (8, 0), True, False),
        ("auto", (8, 0), False, False),
        ("maybe", (8, 0), True, False),
    ],
)
def test_decision_table(
    mode: str, capability: tuple[int, int] | None, have: bool, register: bool
) -> None:
    decision = decide(mode, capability, have)
    assert decision.register is register
    assert decision.reason


def test_register_defines_the_ops_and_they_match_the_functions(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(plugin.ENV_SWITCH, "on")
    assert plugin.register().register
    for name in ("v4_sparse_decode", "v4_index_topk", "v4_compress_decode"):
        assert hasattr(torch.ops.tiergate, name)

    rows, heads, dim = 2, 4, 128
    pos = torch.tensor([40, 17], dtype=torch.int32, device=device)
    raw = filled_cache(randn(rows, 41, dim, seed=1, device=device), block_size=8, fp8=True, seed=1)
    ent = filled_cache(randn(rows, 11, dim, seed=2, device=device), block_size=4, fp8=True, seed=2)
    keys = filled_cache(randn(rows, 11, 64, seed=3, device=device), block_size=4, fp8=True, seed=3)
    q = randn(rows, heads, dim, seed=4, device=device).bfloat16()
    qi = randn(rows, 4, 64, seed=5, device=device).bfloat16()
    w = randn(rows, 4, seed=6, device=device)
    sink = randn(heads, seed=7, device=device)

    sel = torch.ops.tiergate.v4_index_topk(qi, w, pos, keys.data, keys.block_table, 4, 3, 0)
    for r in range(rows):
        n_vis = (int(pos[r]) + 1) // 4
        scores = ref.index_scores(qi[r], w[r], keys.read(r, torch.arange(11)))
        assert sel[r].cpu().tolist() == ref.select_topk(scores, n_vis, 3).tolist()

    out, lse = torch.ops.tiergate.v4_sparse_decode(
        q,
        pos,
        sink,
        raw.data,
        raw.block_table,
        8,
        ent.data,
        ent.block_table,
        4,
        sel,
        "csa",
        dim**-0.5,
        16,
        64,
    )
    for r in range(rows):
        kv = ref.attention_inputs(
            int(pos[r]),
            LayerKind.CSA,
            raw.read(r, torch.arange(41)),
            ent.read(r, torch.arange(11)),
            sel[r].long(),
            16,
        )
        want = ref.sparse_attention(q[r], kv, sink, dim**-0.5)
        torch.testing.assert_close(out[r].float(), want, atol=2.0**-5, rtol=0)
    assert lse.shape == (rows, heads)


def test_compress_op_mutates_state_and_cache(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugin.ENV_SWITCH, "on")
    plugin.register()
    from engines.kernels.compressor import new_state
    from engines.kernels.paged import PagedEntries

    dim = 64
    kv, gate = (
        randn(1, 4, 1, dim, seed=1, device=device),
        randn(1, 4, 1, dim, seed=2, device=device),
    )
    ape = torch.zeros(128, 1, dim, device=device)
    cos, sin = ref.rope_tables(256, 32, FLASH.rope(LayerKind.HCA), device=device)
    cache = PagedEntries.allocate(1, 2, dim, block_size=2, device=device)
    state = new_state(1, dim, device)
    pos = torch.tensor([0], dtype=torch.int32, device=device)
    torch.ops.tiergate.v4_compress_decode(
        kv[:, 0],
        gate[:, 0],
        ape,
        torch.ones(dim, device=device),
        1e-6,
        pos,
        state,
        cache.data,
        cache.block_table,
        2,
        "hca",
        cos,
        sin,
        None,
        0,
    )
    assert torch.isfinite(state[0, 0]).all()  # the first token now sits in slot 0
