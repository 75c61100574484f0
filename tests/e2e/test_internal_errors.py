"""An unplanned failure inside the gateway still reaches the client in its protocol's shape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.accounting import Caller, OpenAccounting

from .conftest import Sims, demo_catalog, start_gateway


class BrokenAccounting(OpenAccounting):
    async def budget_view(self, caller: Caller, now: datetime) -> Any:
        raise RuntimeError("budget store exploded")


@pytest.fixture(scope="module")
def broken(sims: Sims) -> Iterator[str]:
    server, gw = start_gateway(demo_catalog(sims), BrokenAccounting(), log_level="error")
    yield gw.url
    server.stop()


def test_openai_client_gets_a_server_error_body(broken: str) -> None:
    client = openai.OpenAI(base_url=broken + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}]
        )
    body = exc.value.body
    assert isinstance(body, dict)
    assert body["type"] == "server_error" and "RuntimeError" in body["message"]
    assert "exploded" not in body["message"]  # details stay in the log


def test_anthropic_client_gets_an_api_error_body(broken: str) -> None:
    client = anthropic.Anthropic(base_url=broken, api_key="k", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(
            model="deepseek-v4-flash", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": exc.value.body["error"]["message"]},  # type: ignore[index]
    }


def test_the_gateway_keeps_serving_after_the_error(broken: str) -> None:
    assert httpx.get(broken + "/healthz").status_code == 200


class CountingAccounting(OpenAccounting):
    """Counts holds taken and given back (settled or released)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()

    async def reserve(self, caller: Caller, request_id: str, *a: Any, **kw: Any) -> Any:
        hold = await super().reserve(caller, request_id, *a, **kw)
        self.held.add(request_id)
        return hold

    async def settle(self, caller: Caller, s: Any, hold: Any, **kw: Any) -> None:
        self.held.discard(hold.request_id)
        await super().settle(caller, s, hold, **kw)

    async def release(self, caller: Caller, hold: Any) -> None:
        self.held.discard(hold.request_id)
        await super().release(caller, hold)


@pytest.mark.parametrize("stream", [False, True])
def test_a_bug_while_dispatching_gives_the_hold_back(
    sims: Sims, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A leaked hold would lock the team's budget until it expires (15 minutes)."""

    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("body builder exploded")

    monkeypatch.setattr("engines.vllm.vllm_body", explode)
    accounting = CountingAccounting()
    server, gw = start_gateway(demo_catalog(sims), accounting, log_level="error")
    try:
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
            | ({"stream": True} if stream else {}),
            timeout=30,
        )
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]["message"], r.text
        assert not accounting.held
    finally:
        server.stop()
