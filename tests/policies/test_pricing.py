from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from policies.catalog import PricePoint, load_catalog
from policies.pricing import PriceBook, Rate, rate_at
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
    # 4 GPUs x $2.50/h = $10/h; 9000 output tok/s -> 10 / (9000*3600) * 1e6 = 25/81 $/1M,
    # kept exact: 0.308641975..., not rounded to 0.308642
    rate = BOOK.rate("flash-local", "flash", t("2026-11-01T00:00"))
    assert rate.output == Fraction(25, 81)
    assert rate.cache_miss == Fraction(10 * 10**6, 60000 * 3600) == Fraction(5, 108)
    assert rate.cache_hit == Fraction(5, 108) / 10
    assert rate.version == "flash-local@gpu"
    assert not rate.peak


# The demo pool in nano-dollars per token: hit 125/27, miss 1250/27, output 25000/81.
# "rounded 1e-6" is what pricing from prices rounded to 6 decimals per 1M tokens charged.
@pytest.mark.parametrize(
    ("usage", "nanos", "rounded_1e6"),
    [
        (Usage(0, 0, 1), 309, 309),  # 308.64
        (Usage(0, 0, 81), 25_000, 25_000),  # whole
        (Usage(216, 0, 0), 1_000, 1_000),
        (Usage(0, 108, 0), 5_000, 5_000),
        (Usage(7, 11, 13), 4_554, 4_554),  # 4554.012
        (Usage(0, 65, 30), 12_269, 12_268),  # 12268.52: a nano off before
        (Usage(0, 78, 24), 11_019, 11_018),  # 11018.52
        (Usage(0, 91, 18), 9_769, 9_768),  # 9768.52
        (Usage(0, 0, 10**6), 308_641_975, 308_642_000),  # 308641975.31
        (Usage(0, 10**6, 0), 46_296_296, 46_296_000),  # 46296296.30
        (Usage(10**6, 0, 0), 4_629_630, 4_630_000),  # 4629629.63
    ],
)
def test_self_hosted_costs_are_exact(usage: Usage, nanos: int, rounded_1e6: int) -> None:
    rate = BOOK.rate("flash-local", "flash", t("2026-11-01T00:00"))
    exact = (
        Fraction(125, 27) * usage.cache_hit_tokens
        + Fraction(1250, 27) * usage.cache_miss_tokens
        + Fraction(25000, 81) * usage.output_tokens
    )
    assert rate.cost_nanos(usage) == nanos == round(exact)
    old = rate_at("x", (_six_decimals(rate),), t("2026-11-01T00:00")).cost_nanos(usage)
    assert old == rounded_1e6


def _six_decimals(rate: Rate) -> PricePoint:
    def q(f: Fraction) -> Decimal:
        return (Decimal(f.numerator) / Decimal(f.denominator)).quantize(Decimal("0.000001"))

    return PricePoint(
        effective=t("1970-01-01T00:00"),
        cache_hit=q(rate.cache_hit),
        cache_miss=q(rate.cache_miss),
        output=q(rate.output),
    )


@pytest.mark.parametrize(
    ("tokens", "nanos"),
    # half a nano-dollar per output token: ties round to the even nano-dollar
    [(0, 0), (1, 0), (2, 1), (3, 2), (5, 2), (7, 4), (9, 4), (10**9 + 1, 500_000_000)],
)
def test_a_cost_is_rounded_half_even_once(tokens: int, nanos: int) -> None:
    zero = Fraction(0)
    rate = Rate(zero, zero, Fraction(1, 2000), "half", peak=False)
    assert rate.cost_nanos(Usage(0, 0, tokens)) == nanos


def test_self_hosted_costs_match_the_fraction_over_a_grid() -> None:
    rate = BOOK.rate("flash-local", "flash", t("2026-11-01T00:00"))
    for hit in range(0, 300, 37):
        for miss in range(0, 3000, 311):
            for out in range(0, 1000, 97):
                exact = (rate.cache_hit * hit + rate.cache_miss * miss + rate.output * out) * 1000
                assert rate.cost_nanos(Usage(hit, miss, out)) == round(exact), (hit, miss, out)


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
