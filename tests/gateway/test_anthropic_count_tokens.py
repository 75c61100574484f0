"""count_tokens over the same parse as ``/v1/messages``: its checks, and a count of what
goes upstream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.media import media_note
from gateway.parse import estimate_prompt_tokens
from gateway.protocols.anthropic import count_tokens, parse_messages
from policies.errors import InvalidRequest

ASK = {"role": "user", "content": "Reply in JSON"}


def parse(count_only: bool = False, media: Any = "note", **body: Any) -> Any:
    body = {"model": "claude-sonnet-4-5", **body}
    if not count_only:
        body.setdefault("max_tokens", 100)
    return parse_messages(
        orjson.dumps(body),
        max_bytes=1 << 20,
        max_messages=100,
        media=media,
        count_only=count_only,
    )


IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "A" * 300_000},
}


def test_count_tokens_counts_what_goes_upstream() -> None:
    """A 300 KB image is the media policy's note upstream, and that is what is counted: the
    pipeline's own prompt estimate, over the translated system, messages and tools."""
    tool = {"name": "Read", "input_schema": {"type": "object", "properties": {}}}
    call = parse(
        count_only=True,
        system="Be brief.",
        tools=[tool],
        messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}],
    )
    n = count_tokens(call)["input_tokens"]
    assert n == estimate_prompt_tokens(call.body["messages"], call.body["tools"])
    assert call.body["messages"][-1]["content"].endswith(media_note("image"))
    assert n < 500
    assert "max_tokens" not in call.body and call.max_tokens is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": "x"}, "messages"),
        ({"model": None, "messages": [ASK]}, "model"),
        ({"messages": [{"role": "bogus", "content": "x"}]}, "role"),
        ({"messages": [ASK], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_count_tokens_refuses_what_messages_refuses(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(count_only=True, **body)
    assert fragment in info.value.message


def test_count_tokens_refuses_media_under_the_reject_policy() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(count_only=True, media="reject", messages=[{"role": "user", "content": [IMAGE]}])
    assert "text only" in info.value.message
