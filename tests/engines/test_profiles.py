"""Launch profiles: the recipe's flags, the memory estimate, refusals, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.kernels.shapes import FLASH, PRO
from engines.profiles import ProfileError, build, kv_bytes_per_sequence
from gateway.cli_engine import main

GIB = 2**30


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_profile_carries_the_v4_recipe_flags() -> None:
    p = build("flash", "h200", 4)
    a = p.argv
    assert a[:3] == ["vllm", "serve", "deepseek-ai/DeepSeek-V4-Flash"]
    assert _flag(a, "--kv-cache-dtype") == "fp8"
    assert _flag(a, "--block-size") == "256"
    assert "--enable-expert-parallel" in a and _flag(a, "--data-parallel-size") == "4"
    assert "--tensor-parallel-size" not in a
    for parser in ("--tokenizer-mode", "--tool-call-parser", "--reasoning-parser"):
        assert _flag(a, parser) == "deepseek_v4"
    assert "--enable-auto-tool-choice" in a and "--enable-prompt-tokens-details" in a
    assert _flag(a, "--max-model-len") == "1048576"
    assert "--speculative-config" not in a
    assert p.env == {"TIERGATE_V4_KERNELS": "off"}
    assert p.warnings == []


def test_bf16_kv_of_pro_at_1m_is_about_9_6_gib() -> None:
    assert kv_bytes_per_sequence(PRO, 1 << 20, fp8=False) / GIB == pytest.approx(9.6, abs=0.05)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # 21 CSA x (584 + 132) / 4 + 20 HCA x 584 / 128 bytes per token, window 43 x 128 x 584
        (256, 21 * 64 * 716 + 20 * 2 * 584 + 43 * 128 * 584),
        (1, 21 * 64 * 716 + 20 * 2 * 584 + 43 * 128 * 584),  # one 256-token block
        (1 << 20, 21 * (1 << 18) * 716 + 20 * (1 << 13) * 584 + 43 * 128 * 584),
    ],
)
def test_fp8_kv_bytes_follow_the_v4_cache_layout(tokens: int, expected: int) -> None:
    assert kv_bytes_per_sequence(FLASH, tokens) == expected


def test_pro_on_h200_defaults_to_the_recipe_context() -> None:
    p = build("pro", "h200", 8)
    assert p.max_model_len == 800_000
    longer = build("pro", "h200", 8, max_model_len=1_000_000)
    assert any("recipe caps" in w for w in longer.warnings)


@pytest.mark.parametrize(
    ("model", "gpu", "gpus"),
    [("flash", "b200", 1), ("pro", "b200", 4), ("pro", "a100", 8), ("flash", "a100", 2)],
)
def test_configurations_that_cannot_fit_are_refused(model: str, gpu: str, gpus: int) -> None:
    with pytest.raises(ProfileError, match="needs"):
        build(model, gpu, gpus)


def test_refusal_names_the_longest_context_that_fits() -> None:
    # Pro on 8x H200 at 0.9: 120 GB static of 126.9 GB leaves room for about 1.2M tokens;
    # a lower utilization shrinks it below 1M.
    with pytest.raises(ProfileError, match=r"the longest that fits is \d+") as err:
        build("pro", "h200", 8, max_model_len=1 << 20, utilization=0.88)
    best = int(str(err.value).rsplit(" ", 1)[1])
    assert best % 256 == 0
    assert build("pro", "h200", 8, max_model_len=best, utilization=0.88).memory.fits
    with pytest.raises(ProfileError):
        build("pro", "h200", 8, max_model_len=best + 256, utilization=0.88)


def test_a100_uses_the_triton_kernels_and_says_so() -> None:
    p = build("flash", "a100", 4, max_model_len=200_000)
    assert p.env == {"TIERGATE_V4_KERNELS": "on"}
    assert any("FlashMLA" in w for w in p.warnings)
    assert any("'max'" in w for w in p.warnings)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_model_len": 0}, {"max_model_len": (1 << 20) + 1}, {"utilization": 1.0}],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ProfileError):
        build("flash", "h200", 4, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="unknown"):
        build("flash", "h100", 4)
    with pytest.raises(ProfileError, match="at least 1"):
        build("flash", "h200", 0)


def test_mtp_adds_a_speculative_config() -> None:
    argv = build("flash", "b200", 4, mtp_tokens=2).argv
    spec = json.loads(_flag(argv, "--speculative-config"))
    assert spec == {"method": "mtp", "num_speculative_tokens": 2}


def test_cli_prints_a_shell_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["engine", "profile", "flash", "--gpus", "4", "--gpu", "b200", "--port", "9000"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env bash\n")
    assert "export TIERGATE_V4_KERNELS=off" in out
    assert "exec vllm serve deepseek-ai/DeepSeek-V4-Flash \\\n" in out
    assert "  --port 9000" in out


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pro.json"
    argv = ["engine", "profile", "pro", "--gpus", "8", "--gpu", "b200", "--format", "json"]
    assert main([*argv, "--write", str(target)]) == 0
    data = json.loads(target.read_text())
    assert data["max_model_len"] == 1 << 20
    assert data["memory_gb"]["full_length_sequences_per_gpu"] >= 1
    assert "wrote" in capsys.readouterr().out


def test_cli_refusal_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engine", "profile", "pro", "--gpus", "2", "--gpu", "h200"]) == 2
    assert "needs" in capsys.readouterr().err
