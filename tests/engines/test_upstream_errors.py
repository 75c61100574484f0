"""How upstream answers become errors and events: statuses, error events, tool-call finishes,
long stream lines (the last over real HTTP, against the simulator)."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from engines.base import StreamOutcome
from engines.http import error_for_status
from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from engines.sse_stream import SSEStream
from engines.translate import SSENormalizer, normalize_response
from policies.errors import (
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRequestFailed,
    UpstreamStreamError,
    UpstreamUnavailable,
)

VLLM_500 = orjson.dumps(
    {"error": {"message": "AssertionError", "type": "InternalServerError", "code": 500}}
)
OLD_VLLM_501 = orjson.dumps({"object": "error", "message": "Unknown role", "code": 501})


@pytest.mark.parametrize(
    ("status", "body", "request_faults", "kind"),
    [
        (400, VLLM_500, True, UpstreamRequestFailed),  # refused by the replica's checks
        (422, b"{}", True, UpstreamRequestFailed),
        (400, VLLM_500, False, UpstreamBadRequest),  # the hosted API's 400: final
        (422, b"{}", False, UpstreamBadRequest),
        (404, b"{}", True, UpstreamBadRequest),  # a replica serving another model
        (500, VLLM_500, True, UpstreamRequestFailed),  # an assertion while encoding
        (501, OLD_VLLM_501, True, UpstreamRequestFailed),  # input vLLM does not support
        (501, b"", True, UpstreamRequestFailed),
        (500, b"", True, UpstreamError),  # the engine died: the replica's failure
        (500, b"Internal Server Error", True, UpstreamError),
        (500, VLLM_500, False, UpstreamError),  # the hosted API's 500 is its own
        (503, b"", True, UpstreamUnavailable),
        (401, b"{}", False, UpstreamError),  # the gateway's own key refused: a 502
        (403, b"{}", False, UpstreamError),
    ],
)
def test_statuses(status: int, body: bytes, request_faults: bool, kind: type) -> None:
    err = error_for_status(status, body, {}, "replica r", request_faults=request_faults)
    assert type(err) is kind
    assert err.retryable == (kind is not UpstreamBadRequest)
    assert f"answered {status}" in err.message
    assert err.status >= 500 or issubclass(kind, UpstreamBadRequest | UpstreamRequestFailed)
    if status in (401, 403):
        assert "operator must check its API key" in err.message


@pytest.mark.parametrize(
    "payload",
    [
        b'{"error": {"message": "boom", "type": "InternalServerError", "code": 500}}',
        b'{"object": "error", "message": "boom", "type": "BadRequestError", "code": 400}',
    ],
)
def test_an_error_event_raises_with_its_message(payload: bytes) -> None:
    out = StreamOutcome()
    norm = SSENormalizer(out, include_usage=False, where="replica r")
    with pytest.raises(UpstreamStreamError, match="replica r failed mid-stream: boom"):
        norm.feed(b"data: " + payload)
    assert out.error == "boom"


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]})


def test_a_streamed_tool_call_finishing_with_stop_finishes_with_tool_calls() -> None:
    out = StreamOutcome()
    norm = SSENormalizer(out, include_usage=False)
    norm.feed(_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]}))
    norm.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    last = norm.feed(_chunk({}, "stop"))
    assert last is not None and b'"finish_reason":"tool_calls"' in last
    assert out.finish_reason == "tool_calls"


def test_a_text_answer_finishing_with_stop_keeps_stop() -> None:
    out = StreamOutcome()
    norm = SSENormalizer(out, include_usage=False)
    norm.feed(_chunk({"content": "hi"}))
    assert norm.feed(_chunk({}, "stop")) == _chunk({}, "stop") + b"\n\n"


def test_a_non_stream_tool_call_finishing_with_stop_finishes_with_tool_calls() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "choices": [{"message": {"content": "", "tool_calls": [call]}, "finish_reason": "stop"}]
    }
    normalize_response(body)
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.fixture(scope="module")
def big() -> Iterator[SimServer]:
    cfg = SimConfig.preset("flash", tool_call_fragments=False, tool_arg_chars=300_000)
    with SimServer(cfg.zero_latency()) as server:
        yield server


async def _stream(url: str, max_line: int) -> list[bytes]:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + "/v1/chat/completions", json=body)
        stream = SSEStream(resp, None, False, "replica r", max_line_bytes=max_line)
        await stream.wait_first_token(5.0)
        return [event async for event in stream]


async def test_a_stream_line_over_128_kib_is_relayed(big: SimServer) -> None:
    events = await _stream(big.base_url, 16 * 1024 * 1024)
    assert max(len(e) for e in events) > 300_000 and events[-1] == b"data: [DONE]\n\n"


async def test_a_stream_line_over_the_limit_is_a_typed_error(big: SimServer) -> None:
    with pytest.raises(UpstreamError, match="sent a stream line over 100000 bytes"):
        await _stream(big.base_url, 100_000)
