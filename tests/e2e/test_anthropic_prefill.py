"""A prefilled final assistant turn continued, not answered, on either backend."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from .conftest import Gateway

ASK = {"role": "user", "content": "Reply in JSON"}


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_prefill_is_continued_on_either_backend(
    request: pytest.FixtureRequest, fixture: str, stream: bool
) -> None:
    """The prompt is the chat path's prefix completion (the prefix left open, no new turn),
    and only the continuation comes back."""
    gw: Gateway = request.getfixturevalue(fixture)
    prefill = {"role": "assistant", "content": '{"a":'}
    kw: Any = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [ASK, prefill],
        "extra_headers": {"x-tiergate-tier": "flash"},
    }
    if stream:
        with client(gw).messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client(gw).messages.create(**kw)
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert text and not text.startswith('{"a":')
    prompt = msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    chat = gw.client()
    opened = chat.chat.completions.create(
        model="deepseek-chat", max_tokens=16, messages=[ASK, {**prefill, "prefix": True}]
    ).usage
    turn = chat.chat.completions.create(
        model="deepseek-chat", max_tokens=16, messages=[ASK, prefill]
    ).usage
    assert opened is not None and turn is not None
    assert prompt == opened.prompt_tokens < turn.prompt_tokens


def test_a_prefill_with_thinking_is_refused(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gateway).messages.create(
            model="claude-sonnet-4-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[ASK, {"role": "assistant", "content": '{"a":'}],
        )
    assert "not allowed with thinking" in info.value.message
