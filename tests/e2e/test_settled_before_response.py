"""A non-stream answer is settled before it is sent, and is sent even if settling fails.

An answer a client has received is always in the ledger and its budget: a process killed
between sending and settling cannot lose it. A failed settlement is logged and counted,
and the client still gets the answer the upstream produced (and billed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.accounting import Caller, Hold, OpenAccounting, Settlement
from gateway.settled import SettledResponse

from .conftest import Sims, demo_catalog, start_gateway


class GatedAccounting(OpenAccounting):
    """Settlements wait for ``gate``; one may be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail_next = False

    async def settle(self, caller: Caller, s: Settlement, hold: Hold, **kw: Any) -> None:
        await asyncio.to_thread(self.gate.wait, 30)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("ledger store exploded")
        await super().settle(caller, s, hold, **kw)


@pytest.fixture(scope="module")
def gated(sims: Sims) -> Iterator[tuple[str, GatedAccounting]]:
    accounting = GatedAccounting()
    server, gw = start_gateway(demo_catalog(sims), accounting)
    yield gw.url, accounting
    server.stop()


def _wait_for(cond: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        done.wait(0.02)
    raise AssertionError("condition not reached")


def test_answers_arrive_only_once_they_are_settled(
    gated: tuple[str, GatedAccounting],
) -> None:
    url, acct = gated
    acct.gate.clear()
    before = len(acct.settled)
    oa = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    an = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    got: dict[str, Any] = {}

    def ask_chat() -> None:
        got["chat"] = oa.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=16
        )
        got["settled_at_chat"] = len(acct.settled)

    def ask_messages() -> None:
        got["msg"] = an.messages.with_raw_response.create(
            model="deepseek-v4-flash", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        got["settled_at_msg"] = len(acct.settled)

    threads = [threading.Thread(target=ask_chat), threading.Thread(target=ask_messages)]
    for t in threads:
        t.start()
    # The upstream has answered (the simulator answers in milliseconds), but settlements are
    # held: neither client has its answer yet.
    threading.Event().wait(1.0)
    assert "chat" not in got and "msg" not in got
    assert len(acct.settled) == before
    acct.gate.set()
    for t in threads:
        t.join(30)
    chat, msg = got["chat"], got["msg"]
    assert chat.parse().choices[0].message.content
    assert msg.parse().content
    # Each answer reached its client after its own settlement was recorded.
    assert got["settled_at_chat"] >= before + 1 and got["settled_at_msg"] >= before + 1
    ids = {s.request_id for s in acct.settled[before:]}
    assert ids == {chat.headers["x-request-id"], msg.headers["x-request-id"]}
    assert all(s.status == 200 and s.output_tokens > 0 for s in acct.settled[before:])


def test_a_failed_settlement_is_counted_and_the_client_keeps_its_answer(
    gated: tuple[str, GatedAccounting],
) -> None:
    url, acct = gated
    acct.gate.set()
    acct.fail_next = True
    before = len(acct.settled)
    oa = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    r = oa.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=16
    )
    assert r.choices[0].message.content
    _wait_for(lambda: "tiergate_settlement_failures_total{" in httpx.get(url + "/metrics").text)
    metrics = httpx.get(url + "/metrics").text
    line = next(
        x for x in metrics.splitlines() if x.startswith("tiergate_settlement_failures_total{")
    )
    assert line.endswith(" 1.0")
    # the next request settles normally
    oa.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=16
    )
    _wait_for(lambda: len(acct.settled) == before + 1)


async def test_settlement_runs_even_when_the_client_is_gone() -> None:
    ran: list[str] = []

    async def after() -> None:
        ran.append("settled")

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("connection reset by peer")

    response = SettledResponse(b"{}", headers={}, after=after)
    with pytest.raises(OSError):
        await response({"type": "http", "method": "POST"}, receive, send)
    assert ran == ["settled"]
