"""The field a client's output limit came in, named by the errors about it: table-driven."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from gateway.accounting import Caller
from gateway.parse import Call, parse_chat, parse_completion
from gateway.pipeline import Pipeline
from gateway.protocols.anthropic import parse_messages
from gateway.protocols.responses import parse_responses
from policies.errors import InvalidRequest

USER = [{"role": "user", "content": "hi"}]


def chat(**body: Any) -> Call:
    raw = orjson.dumps({"model": "m", "messages": USER, **body})
    return parse_chat(raw, max_bytes=1 << 20, max_messages=10)


def completion(**body: Any) -> Call:
    return parse_completion(orjson.dumps({"model": "m", "prompt": "x", **body}), max_bytes=1 << 20)


def responses(**body: Any) -> Call:
    raw = orjson.dumps({"model": "m", "input": "hi", **body})
    return parse_responses(raw, max_bytes=1 << 20, max_messages=10)


def messages(**body: Any) -> Call:
    raw = orjson.dumps({"model": "m", "messages": USER, **body})
    return parse_messages(raw, max_bytes=1 << 20, max_messages=10)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (chat(), "max_tokens"),
        (chat(max_tokens=5), "max_tokens"),
        (chat(max_completion_tokens=5), "max_completion_tokens"),
        (chat(max_tokens=5, max_completion_tokens=6), "max_completion_tokens"),
        (chat(max_tokens=5, max_completion_tokens=None), "max_tokens"),
        (completion(max_tokens=5), "max_tokens"),
        (completion(max_completion_tokens=5), "max_completion_tokens"),
        (responses(), "max_output_tokens"),
        (responses(max_output_tokens=5), "max_output_tokens"),
        (messages(max_tokens=5), "max_tokens"),
    ],
)
def test_the_output_limit_field_is_recorded(call: Call, field: str) -> None:
    assert call.limit_field == field


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (chat(max_tokens=20), "max_tokens"),
        (chat(max_completion_tokens=20), "max_completion_tokens"),
        (chat(max_tokens=10, max_completion_tokens=20), "max_completion_tokens"),
        (completion(max_completion_tokens=20), "max_completion_tokens"),
        (responses(max_output_tokens=20), "max_output_tokens"),
        (messages(max_tokens=20), "max_tokens"),
    ],
)
def test_a_keys_ceiling_names_the_field_the_client_sent(call: Call, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        Pipeline._check_caller(cast(Pipeline, None), call, Caller(max_tokens_ceiling=16))
    assert info.value.param == field
    assert info.value.message == f"{field} 20 is over this key's ceiling of 16"
    assert call.max_tokens == 20  # refused, not lowered


def test_under_the_ceiling_an_unset_limit_becomes_the_ceiling() -> None:
    call = responses()
    Pipeline._check_caller(cast(Pipeline, None), call, Caller(max_tokens_ceiling=16))
    assert call.max_tokens == 16 and call.body["max_tokens"] == 16
