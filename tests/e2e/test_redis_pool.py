"""More concurrent requests than Redis connections: requests wait for one, nobody gets a 503."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Sims
from .test_money_e2e import Gateways, admin, drop_keys, money_env, new_key, sims_catalog

POOL = 3


@pytest.fixture(scope="module")
def small_pool(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("pool"))
    prefix = f"tgp:{os.getpid()}:"
    env = money_env(pg_url, redis_url, prefix, TIERGATE_REDIS_MAX_CONNECTIONS=str(POOL))
    gw = Gateways(env, config)
    gw.start(1)
    yield gw
    gw.stop()
    drop_keys(redis_url, prefix)


def test_a_burst_past_the_pool_waits_instead_of_failing(small_pool: Gateways) -> None:
    _, _, key = new_key(small_pool, "burst-team")
    r = admin(
        small_pool,
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": "burst-team", "period": "day", "limit_usd": 100},
    )
    assert r.status_code == 200

    async def burst() -> list[httpx.Response]:
        body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=60)) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        small_pool.urls[0] + "/v1/chat/completions",
                        json={**body, "max_tokens": 8},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    for _ in range(60)
                )
            )

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert statuses == [200] * 60, statuses
    metrics = httpx.get(small_pool.urls[0] + "/metrics").text
    assert 'tiergate_degraded{component="redis"} 0.0' in metrics
