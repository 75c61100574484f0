"""``model: auto`` keeps the configured Pro share when many requests score the same."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import Gateway, Sims, demo_catalog, start_gateway


@pytest.fixture
def fresh(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """A gateway of its own: the calibration window starts empty."""
    server, gw = start_gateway(demo_catalog(sims, auto_pro_share=0.2, auto_think_share=0.3))
    yield gw
    server.stop()


def _tiers(gw: Gateway, texts: list[str]) -> list[str]:
    out = []
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for text in texts:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "auto",
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": 4,
                },
            )
            assert r.status_code == 200, r.text
            out.append(r.headers["x-tiergate-route"].split("/")[0])
    return out


def test_identical_requests_and_the_traffic_after_them_keep_the_pro_share(fresh: Gateway) -> None:
    burst = _tiers(fresh, ["hi"] * 300)
    # The first 200 use the training thresholds (nothing this short is Pro); then the
    # window is all one score, and only the target share of the tied requests goes up.
    assert burst[:200].count("pro") == 0
    assert burst[200:].count("pro") <= 0.2 * 100 + 2
    words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
    ]
    mixed = [" ".join(words[: 1 + i % 10]) * (1 + i % 7) for i in range(150)]
    after = _tiers(fresh, mixed)
    # A `>=` rule on a line sitting on the tied score sent ~90% of these to Pro.
    assert after.count("pro") / len(after) <= 0.5
    assert after[-50:].count("pro") / 50 <= 0.35


def _scored(gw: Gateway) -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("tiergate_router_score_count"))
    return float(line.split()[-1])


def test_refused_requests_do_not_move_the_calibration(fresh: Gateway) -> None:
    """A request refused after routing (here: an output limit over the tier's) never ran:
    its score must not enter the window that other teams' requests are measured against,
    or a client could push everyone's Pro share around with requests it is refused."""
    with httpx.Client(base_url=fresh.url, timeout=30) as c:
        for _ in range(30):
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "auto",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 10**7,
                },
            )
            assert r.status_code == 400, r.text
    assert _scored(fresh) == 0
    _tiers(fresh, ["hi"] * 5)
    assert _scored(fresh) == 5
