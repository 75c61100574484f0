"""Shaping an answer (stop, max_tokens, break-off) and each backend's body shapes."""

from __future__ import annotations

from typing import Any

import pytest

from engines.sim.generation import Generation, split_tokens, words


def gen(mode: str = "vllm", *, thinking: bool = False, **kw: Any) -> Generation:
    g = Generation(
        mode=mode,  # type: ignore[arg-type]
        kind="chat",
        model="m",
        replica="r",
        thinking=thinking,
        reasoning_field="reasoning_content" if mode == "hosted" else "reasoning",
        details=True,
        prompt_tokens=300,
        cached_tokens=256,
        prefill_s=0.0,
    )
    g.content = kw.get("content", [" one", " two", " three", " four"])
    g.reasoning = kw.get("reasoning", [" r1", " r2"] if thinking else [])
    return g


@pytest.mark.parametrize(
    ("stops", "text", "finish"),
    [
        ([], " one two three four", "stop"),
        (["three"], " one two ", "stop"),
        (["tw", "one"], " ", "stop"),
        (["nowhere"], " one two three four", "stop"),
        ([""], " one two three four", "stop"),
    ],
)
def test_stop_cuts_before_the_first_stop_string(stops: list[str], text: str, finish: str) -> None:
    g = gen()
    g.stop_at(stops)
    assert (g.text, g.finish_reason) == (text, finish)


@pytest.mark.parametrize(
    ("max_tokens", "reasoning", "content", "finish"),
    [
        (None, 2, 4, "stop"),
        (6, 2, 4, "stop"),
        (5, 2, 3, "length"),
        (2, 2, 0, "length"),
        (1, 1, 0, "length"),
    ],
)
def test_max_tokens_caps_reasoning_and_answer_together(
    max_tokens: int | None, reasoning: int, content: int, finish: str
) -> None:
    g = gen(thinking=True)
    g.cap(max_tokens)
    assert (len(g.reasoning), len(g.content), g.finish_reason) == (reasoning, content, finish)
    assert g.output_tokens <= (max_tokens or 99)


def test_break_off_keeps_part_of_the_answer() -> None:
    g = gen()
    g.break_off()
    assert g.finish_reason == "insufficient_system_resource" and 0 < len(g.content) < 4


@pytest.mark.parametrize(
    ("mode", "thinking", "fields", "absent"),
    [
        ("vllm", False, {"reasoning": None, "tool_calls": []}, ["reasoning_content"]),
        ("vllm", True, {"reasoning": " r1 r2", "tool_calls": []}, ["reasoning_content"]),
        ("hosted", True, {"reasoning_content": " r1 r2", "tool_calls": None}, ["reasoning"]),
        ("hosted", False, {"tool_calls": None}, ["reasoning", "reasoning_content"]),
    ],
)
def test_message_shapes(
    mode: str, thinking: bool, fields: dict[str, Any], absent: list[str]
) -> None:
    msg = gen(mode, thinking=thinking).response_body()["choices"][0]["message"]
    for key, value in fields.items():
        assert msg[key] == value
    for key in absent:
        assert key not in msg


@pytest.mark.parametrize(
    ("mode", "details", "expected"),
    [
        ("vllm", True, {"prompt_tokens_details": {"cached_tokens": 256}}),
        ("vllm", False, {}),
        (
            "hosted",
            True,
            {
                "prompt_cache_hit_tokens": 256,
                "prompt_cache_miss_tokens": 44,
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        ),
    ],
)
def test_usage_shapes(mode: str, details: bool, expected: dict[str, Any]) -> None:
    g = gen(mode, thinking=True)
    g.details = details
    usage = g.usage()
    assert usage["prompt_tokens"] == 300 and usage["completion_tokens"] == 6
    assert usage["total_tokens"] == 306
    for key, value in expected.items():
        assert usage[key] == value
    if not details:
        assert "prompt_tokens_details" not in usage


def test_stream_chunks_are_role_reasoning_answer_then_usage() -> None:
    g = gen("hosted", thinking=True)
    deltas = [c["choices"][0]["delta"] for c in g.chunks()]
    assert deltas[0]["role"] == "assistant"
    assert [next(iter(d)) for d in deltas[1:]] == ["reasoning_content"] * 2 + ["content"] * 4
    assert g.final_chunks()[0]["choices"][0]["finish_reason"] == "stop"
    assert g.usage_chunk()["choices"] == [] and g.usage_chunk()["usage"]["total_tokens"] == 306


def test_words_are_deterministic_and_split_tokens_round_trips() -> None:
    assert words(b"seed", 5) == words(b"seed", 5) and len(words(b"seed", 5)) == 5
    assert "".join(split_tokens('{"a": 1}')) == '{"a": 1}'
