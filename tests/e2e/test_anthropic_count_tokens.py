"""count_tokens checked and counted as ``/v1/messages`` is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from .conftest import Gateway, Sims, demo_catalog, start_gateway

HEADERS = {"x-api-key": "test", "anthropic-version": "2023-06-01"}
ASK = {"role": "user", "content": "Reply in JSON"}
IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "A" * 300_000},
}


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "claude-sonnet-4-5", "messages": "x"}, "messages"),
        ({"messages": [ASK]}, "model"),
        ({"model": "claude-sonnet-4-5", "messages": [{"role": "bogus", "content": "x"}]}, "role"),
        ({"model": "claude-sonnet-4-5", "messages": []}, "messages"),
    ],
)
def test_count_tokens_refuses_what_messages_refuses(
    gateway: Gateway, body: dict[str, Any], fragment: str
) -> None:
    for path in ("/v1/messages/count_tokens", "/v1/messages"):
        r = httpx.post(gateway.url + path, json={**body, "max_tokens": 10}, headers=HEADERS)
        assert r.status_code == 400, (path, r.text)
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert fragment in err["error"]["message"]


def test_count_tokens_needs_no_max_tokens_and_knows_the_models(gateway: Gateway) -> None:
    c = client(gateway)
    assert c.messages.count_tokens(model="claude-sonnet-4-5", messages=[ASK]).input_tokens > 0
    with pytest.raises(anthropic.NotFoundError) as info:
        c.messages.count_tokens(model="gpt-17", messages=[ASK])  # type: ignore[list-item]
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "gpt-17" in info.value.message


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_an_image_counts_as_the_note_sent_upstream(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    """300 KB of base64 is a short note upstream: counted as such, a little over what the
    upstream bills for it (the estimate errs high), not the bytes of the image."""
    gw: Gateway = request.getfixturevalue(fixture)
    kw: Any = {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}],
    }
    counted = client(gw).messages.count_tokens(**kw).input_tokens
    usage = client(gw).messages.create(max_tokens=16, **kw).usage
    billed = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert billed <= counted < 3 * billed


@pytest.fixture(scope="module")
def strict_media(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims), media_policy="reject")
    yield gw
    server.stop()


def test_count_tokens_refuses_media_under_the_reject_policy(strict_media: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(strict_media).messages.count_tokens(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": [IMAGE]}],  # type: ignore[list-item]
        )
    assert "text only" in info.value.message
