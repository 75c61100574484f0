"""Presets, validation and latency modes of SimConfig."""

from __future__ import annotations

import pytest

from engines.sim.config import SimConfig


@pytest.mark.parametrize(
    ("name", "mode", "model", "block_size"),
    [
        ("flash", "vllm", "deepseek-ai/DeepSeek-V4-Flash", 256),
        ("pro", "vllm", "deepseek-ai/DeepSeek-V4-Pro", 256),
        ("hosted", "hosted", "deepseek-v4-flash", 64),
    ],
)
def test_presets(name: str, mode: str, model: str, block_size: int) -> None:
    cfg = SimConfig.preset(name)
    assert (cfg.mode, cfg.model, cfg.block_size) == (mode, model, block_size)
    assert cfg.itl_s > 0 and cfg.prefill_s_per_token > 0 and not cfg.instant


def test_pro_is_slower_than_flash() -> None:
    flash, pro = SimConfig.preset("flash"), SimConfig.preset("pro")
    assert pro.itl_s > flash.itl_s and pro.prefill_s_per_token > flash.prefill_s_per_token


def test_overrides_and_latency_modes() -> None:
    cfg = SimConfig.preset("flash", replica_id="r9", cache_blocks=3)
    assert (cfg.replica_id, cfg.cache_blocks) == ("r9", 3)
    assert cfg.zero_latency().instant and cfg.scaled(0.0).instant
    assert cfg.scaled(2.0).itl_s == pytest.approx(cfg.itl_s * 2)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"mode": "other"}, "mode"),
        ({"fail_rate": 1.5}, "fail_rate"),
        ({"fail_status": 200}, "fail_status"),
        ({"fail_mode": "explode"}, "fail_mode"),
        ({"itl_s": -1.0}, "negative"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"reasoning_field": "thoughts"}, "reasoning_field"),
    ],
)
def test_invalid_configs_fail_with_the_reason(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SimConfig.preset("flash", **overrides)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        SimConfig.preset("turbo")
