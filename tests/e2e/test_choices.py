"""``n`` choices: each may produce the whole output limit, so the reservation covers all."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from gateway.accounting import Caller, Hold, OpenAccounting, RateCharge

from .conftest import Sims, demo_catalog, start_gateway


class RecordingAccounting(OpenAccounting):
    """Remembers the worst case each request reserved."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: dict[str, int] = {}

    async def reserve(
        self,
        caller: Caller,
        request_id: str,
        amount_nanos: int,
        now: datetime,
        rate: RateCharge | None = None,
    ) -> Hold:
        self.reserved[request_id] = amount_nanos
        return await super().reserve(caller, request_id, amount_nanos, now, rate)


@pytest.fixture(scope="module")
def gw(sims: Sims) -> Iterator[tuple[str, RecordingAccounting]]:
    accounting = RecordingAccounting()
    server, gw = start_gateway(demo_catalog(sims), accounting)
    yield gw.url, accounting
    server.stop()


def _chat(url: str, **kw: Any) -> httpx.Response:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_the_reservation_grows_with_n(gw: tuple[str, RecordingAccounting]) -> None:
    url, acct = gw
    reserved = []
    # n > 1 is planned on the replicas only (the hosted API answers one choice), so the
    # requests compared here share their options and prices.
    for n in (2, 3, 4):
        r = _chat(url, n=n, max_tokens=16)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == n  # the replicas sample n choices, as vLLM does
        reserved.append(acct.reserved[r.headers["x-request-id"]])
    one_output = reserved[1] - reserved[0]
    assert one_output > 0
    # The prompt is reserved once; each choice adds the same worst-case output.
    assert abs((reserved[2] - reserved[1]) - one_output) <= 1
    assert reserved[0] > 2 * one_output  # ... and the prompt is in the first


@pytest.mark.parametrize("n", [0, -1, 129, "2", True, 1.5])
def test_a_bad_n_is_a_clear_400_before_any_upstream_call(
    gw: tuple[str, RecordingAccounting], n: Any
) -> None:
    url, acct = gw
    before = len(acct.reserved)
    r = _chat(url, n=n)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "n" and "from 1 to 128" in err["message"]
    assert len(acct.reserved) == before  # refused before anything was reserved or sent
