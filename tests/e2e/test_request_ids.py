"""Every response carries ``x-request-id``; a billed one carries the id of its ledger row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.accounting import ANONYMOUS, Caller, OpenAccounting
from policies.errors import AuthenticationFailed

from .conftest import Gateway, Sims, demo_catalog, start_gateway

GOOD_KEY = "good-key"
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}


class KeyedAccounting(OpenAccounting):
    """In-memory accounting that knows one key."""

    async def authenticate(self, raw_key: str | None) -> Caller:
        if raw_key not in (None, GOOD_KEY):
            raise AuthenticationFailed("invalid or revoked API key")
        return ANONYMOUS


@pytest.fixture(scope="module")
def small(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(
        demo_catalog(sims, backend_preference=["hosted", "self_hosted"]),
        KeyedAccounting(),
        max_body_bytes=64 * 1024,
    )
    yield gw
    server.stop()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/chat/completions", b"{", {}, 400),
        ("/v1/chat/completions", {**CHAT, "temperature": 5}, {}, 400),
        (
            "/v1/responses",
            {"model": "deepseek-chat", "input": "hi", "previous_response_id": "resp_1"},
            {},
            400,
        ),
        (
            "/v1/messages",
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "thinking": {"type": "enabled", "budget_tokens": 10},
                "messages": [{"role": "user", "content": "hi"}],
            },
            {},
            400,
        ),
        ("/v1/chat/completions", CHAT, {"authorization": "Bearer wrong"}, 401),
        ("/v1/messages", CHAT, {"x-api-key": "wrong"}, 401),
        ("/v1/chat/completions", b"x" * (65 * 1024), {}, 413),
        ("/v1/no/such/route", {}, {}, 404),
        ("/v1/models", None, {"authorization": "Bearer wrong"}, 401),
    ],
)
def test_every_error_carries_a_request_id(
    small: Gateway, path: str, body: Any, headers: dict[str, str], status: int
) -> None:
    if body is None:
        r = httpx.get(small.url + path, headers=headers, timeout=30)
    elif isinstance(body, bytes):
        r = httpx.post(small.url + path, content=body, headers=headers, timeout=30)
    else:
        r = httpx.post(small.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert len(r.headers.get("x-request-id", "")) == 32


def test_successful_answers_outside_the_pipeline_carry_one(small: Gateway) -> None:
    for path in ("/v1/models", "/healthz"):
        assert httpx.get(small.url + path, timeout=30).headers.get("x-request-id")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "deepseek-chat", "input": "hello"}),
        (
            "/v1/messages",
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello"}],
            },
        ),
    ],
)
def test_a_billed_cut_answer_carries_its_ledger_id(
    small: Gateway, sims: Sims, path: str, body: dict[str, Any]
) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_mode="insufficient")
    r = httpx.post(small.url + path, json=body, timeout=30)
    assert r.status_code == 503, r.text
    assert "insufficient_system_resource" in r.text
    billed = small.settled()[-1]
    assert billed.output_tokens > 0
    assert r.headers["x-request-id"] == billed.request_id
    # the ledger says what the client got (it said 200)
    assert billed.status == 503 and "upstream-insufficient-resource" in billed.route_reason
    assert r.headers["x-tiergate-route"]
