"""Tokenizer and chat template: prefix-stable, mode-specific, block hashes on boundaries."""

from __future__ import annotations

from typing import Any

import pytest

from engines.sim.tokens import block_hashes, count_tokens, render_chat, render_fim

U1 = {"role": "user", "content": "hello there"}
A1 = {"role": "assistant", "content": "hi, how can I help?"}
U2 = {"role": "user", "content": "tell me more"}
SYSTEM = {"role": "system", "content": "You are terse."}
CALL = {
    "role": "assistant",
    "content": None,
    "reasoning_content": "call f",
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "42"}


@pytest.mark.parametrize(
    ("short", "longer", "kwargs"),
    [
        ([U1], [U1, A1, U2], {"thinking": False}),
        ([U1], [U1, A1, U2], {"thinking": True}),
        ([SYSTEM, U1], [SYSTEM, U1, A1, U2], {"thinking": True, "effort": "max"}),
        ([U1], [U1, CALL, TOOL], {"thinking": True}),
        ([U1], [U1, CALL, TOOL, U2], {"thinking": False, "tools": [{"type": "function"}]}),
    ],
)
def test_extending_a_conversation_keeps_its_rendering_as_prefix(
    short: list[dict[str, Any]], longer: list[dict[str, Any]], kwargs: dict[str, Any]
) -> None:
    assert render_chat(longer, **kwargs).startswith(render_chat(short, **kwargs))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"thinking": False}, {"thinking": True}),
        ({"thinking": True}, {"thinking": True, "effort": "max"}),
        ({"thinking": False}, {"thinking": False, "tools": [{"type": "function"}]}),
    ],
)
def test_modes_share_no_cache_block(a: dict[str, Any], b: dict[str, Any]) -> None:
    long = [{"role": "user", "content": "same words " * 500}]
    blocks_a = block_hashes(render_chat(long, **a), 256)
    blocks_b = block_hashes(render_chat(long, **b), 256)
    assert len(blocks_a) >= 4 and not set(blocks_a) & set(blocks_b)


def test_content_parts_render_like_plain_text() -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}],
    }
    assert render_chat([parts], thinking=False) == render_chat([U1], thinking=False)


def test_prefix_message_is_left_open_for_continuation() -> None:
    prefix = {"role": "assistant", "content": "```python\n", "prefix": True}
    text = render_chat([U1, prefix], thinking=False, continue_last=True)
    assert text.endswith("```python\n")
    assert render_chat([U1, prefix], thinking=False).endswith("<assistant>")


def test_fim_renders_prompt_then_suffix() -> None:
    text = render_fim("def f(", "):")
    assert text.index("def f(") < text.index("):")
    assert render_fim("def f(", "):").startswith(
        render_fim("def f(", None)[: len("<fim-prefix>def f(")]
    )


@pytest.mark.parametrize(
    ("chars", "tokens"),
    [(0, 1), (1, 1), (4, 1), (5, 2), (1024, 256), (1025, 257)],
)
def test_about_four_characters_per_token(chars: int, tokens: int) -> None:
    assert count_tokens("x" * chars) == tokens


@pytest.mark.parametrize(
    ("chars", "block_tokens", "blocks"),
    [(1023, 256, 0), (1024, 256, 1), (4096 + 100, 256, 4), (256, 64, 1), (1000, 64, 3)],
)
def test_only_full_blocks_are_hashed(chars: int, block_tokens: int, blocks: int) -> None:
    assert len(block_hashes("y" * chars, block_tokens)) == blocks


def test_block_hashes_are_chained() -> None:
    a = "a" * 1024 + "b" * 1024
    b = "c" * 1024 + "b" * 1024
    assert block_hashes(a, 256)[1] != block_hashes(b, 256)[1]  # same block, other history
    assert block_hashes(a + "z" * 1024, 256)[:2] == block_hashes(a, 256)
