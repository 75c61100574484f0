from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from policies.catalog import PricePoint, load_catalog
from policies.pricing import PriceBook, rate_at
from policies.usage import Usage

from .test_catalog import EXAMPLES

BOOK = PriceBook(load_catalog(EXAMPLES / "demo.yaml"))


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("backend", "tier", "when", "usage", "nanos", "version"),
    [
        # launch prices: 1M hit at 0.028 + 1M miss at 0.14 + 1M out at 0.28
        (
            "hosted",
            "flash",
            "2026-04-25T12:00",
            Usage(10**6, 10**6, 10**6),
            448_000_000,
            "deepseek-flash@launch",
        ),
        # after the cache-hit cut: hit 0.0028
        (
            "hosted",
            "flash",
            "2026-05-01T12:00",
            Usage(10**6, 0, 0),
            2_800_000,
            "deepseek-flash@hit-cut",
        ),
        # 2026-08-16 off-peak (Saturday 12:00 UTC)
        (
            "hosted",
            "flash",
            "2026-08-22T12:00",
            Usage(1000, 2000, 3000),
            2_427_000,
            "deepseek-flash@peak-pricing",
        ),
        # same mix at peak (Monday 02:00 UTC): twice the price
        (
            "hosted",
            "flash",
            "2026-08-24T02:00",
            Usage(1000, 2000, 3000),
            4_854_000,
            "deepseek-flash@peak-pricing+peak",
        ),
        # 10:00 is the end of the second window: off-peak again
        (
            "hosted",
            "flash",
            "2026-08-24T10:00",
            Usage(1000, 2000, 3000),
            2_427_000,
            "deepseek-flash@peak-pricing",
        ),
        # Pro promo: 1 hit token at 0.003625/1M = 3.625 nanos, rounded half-even to 4
        ("hosted", "pro", "2026-05-01T00:00", Usage(1, 0, 0), 4, "deepseek-pro@hit-cut"),
        # tiny requests are not rounded to zero
        (
            "hosted",
            "flash",
            "2026-10-03T12:00",
            Usage(7, 11, 13),
            9_471,
            "deepseek-flash@v4.1-flash",
        ),
    ],
)
def test_costs_to_the_nanodollar(backend, tier, when, usage, nanos, version) -> None:
    rate = BOOK.rate(backend, tier, t(when))
    assert rate.cost_nanos(usage) == nanos
    assert rate.version == version


def test_self_hosted_gpu_cost_per_token() -> None:
    # 4 GPUs x $2.50/h = $10/h; 9000 output tok/s -> 10 / (9000*3600) * 1e6 = 0.308642 $/1M
    rate = BOOK.rate("flash-local", "flash", t("2026-11-01T00:00"))
    assert rate.output == Decimal("0.308642")
    assert rate.cache_miss == Decimal("0.046296")
    assert rate.cache_hit == Decimal("0.004630")
    assert rate.version == "flash-local@gpu"


def test_old_rows_keep_their_price_after_a_correction() -> None:
    first = PricePoint(
        effective=t("2026-01-01T00:00"),
        cache_hit=Decimal("1"),
        cache_miss=Decimal("2"),
        output=Decimal("3"),
    )
    fixed = PricePoint(
        effective=t("2026-02-01T00:00"),
        cache_hit=Decimal("1"),
        cache_miss=Decimal("2"),
        output=Decimal("4"),
    )
    sched = (first, fixed)
    assert rate_at("x", sched, t("2026-01-15T00:00")).cost_nanos(Usage(0, 0, 1000)) == 3_000_000
    assert rate_at("x", sched, t("2026-02-15T00:00")).cost_nanos(Usage(0, 0, 1000)) == 4_000_000
    # before the first point the first point applies
    assert rate_at("x", sched, t("2025-12-01T00:00")).cost_nanos(Usage(0, 0, 1000)) == 3_000_000


def test_worst_case_prices_every_prompt_token_as_a_miss() -> None:
    rate = BOOK.rate("hosted", "pro", t("2026-08-22T12:00"))
    assert rate.worst_case_nanos(1000, 500) == rate.cost_nanos(Usage(0, 1000, 500))
    assert rate.worst_case_nanos(1000, 500) >= rate.cost_nanos(Usage(1000, 0, 500))


def test_hosted_rate_is_the_savings_baseline() -> None:
    when = t("2026-08-22T12:00")
    hosted = BOOK.hosted_rate("pro", when)
    assert hosted is not None and hosted.version.startswith("deepseek-pro")


def _edges() -> list[datetime]:
    """Instants around every price change and peak edge of the demo catalog, to the second."""
    out: list[datetime] = []
    for sched in load_catalog(EXAMPLES / "demo.yaml").prices.values():
        for point in sched:
            out.append(point.effective)
            for w in point.peak_windows:
                for day in range(24, 31):  # a whole week of 2026-08-24..30
                    for edge in (w.start, w.end):
                        out.append(t(f"2026-08-{day}T{edge.isoformat()}"))
    shifts = (-61, -60, -1, -0.000001, 0, 0.5, 1, 59, 59.999999, 60)
    return [e + timedelta(seconds=s) for e in out for s in shifts]


def test_rates_looked_up_once_a_minute_match_the_schedule_to_the_second() -> None:
    book = PriceBook(load_catalog(EXAMPLES / "demo.yaml"))
    assert book._by_minute  # the demo's edges are whole minutes, so the cache is on
    for when in _edges():
        for (backend, tier), (name, sched) in book._schedules.items():
            assert book.rate(backend, tier, when) == rate_at(name, sched, when), (backend, when)


def test_a_price_change_off_the_minute_turns_the_minute_cache_off() -> None:
    catalog = load_catalog(EXAMPLES / "demo.yaml")
    sched = catalog.prices["deepseek-flash"]
    odd = sched[-1].model_copy(
        update={"effective": t("2026-12-01T00:00:30"), "version": "odd", "output": Decimal(9)}
    )
    prices = {**catalog.prices, "deepseek-flash": (*sched, odd)}
    book = PriceBook(catalog.model_copy(update={"prices": prices}))
    assert not book._by_minute
    assert book.rate("hosted", "flash", t("2026-12-01T00:00:29")).version != "deepseek-flash@odd"
    assert book.rate("hosted", "flash", t("2026-12-01T00:00:31")).version == "deepseek-flash@odd"
