"""Property tests: any body, however malformed, parses or gets a clear client error (never a crash)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.parse import parse_chat, parse_completion
from gateway.protocols.anthropic import parse_messages
from policies.errors import TiergateError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "wizard", 3, None])
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking", "image", 7])},
    optional={
        "text": json_values,
        "id": json_values,
        "name": json_values,
        "tool_use_id": json_values,
        "input": json_values,
        "thinking": json_values,
        "content": json_values,
    },
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles}, optional={"content": st.one_of(json_values, st.lists(blocks, max_size=3))}
    ),
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "messages": st.one_of(messages, json_values),
        "max_tokens": json_values,
        "stream": json_values,
        "stream_options": json_values,
        "tools": json_values,
        "thinking": json_values,
        "tool_choice": json_values,
        "system": json_values,
        "prompt": json_values,
        "suffix": json_values,
    },
)


def _check(parse, raw: bytes) -> None:
    try:
        call = parse(raw)
    except TiergateError as err:
        assert 400 <= err.status < 500 and err.message
        return
    assert isinstance(call.body, dict) and isinstance(call.model, str)


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_chat_bodies(body: dict) -> None:
    _check(lambda raw: parse_chat(raw, max_bytes=100_000, max_messages=50), orjson.dumps(body))


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_anthropic_bodies(body: dict) -> None:
    _check(lambda raw: parse_messages(raw, max_bytes=100_000, max_messages=50), orjson.dumps(body))


@settings(max_examples=200, deadline=None)
@given(bodies)
def test_completion_bodies(body: dict) -> None:
    _check(lambda raw: parse_completion(raw, max_bytes=100_000), orjson.dumps(body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(lambda r: parse_chat(r, max_bytes=100_000, max_messages=50), raw)
    _check(lambda r: parse_messages(r, max_bytes=100_000, max_messages=50), raw)


def test_integers_beyond_64_bits_are_a_400() -> None:
    _check(
        lambda r: parse_chat(r, max_bytes=1000, max_messages=5),
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999999999999999}',
    )
