"""Prices in force at a moment, and the exact cost of a request in integer nano-dollars.

A schedule is a list of price points with effective dates; the point in force at the
request's start time prices it, with the peak multiplier applied when that time falls in
a peak window. Old ledger rows keep the price version they were billed with, so an
operator can correct a price by adding a point with a later effective date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from policies.catalog import WEEKDAYS, Catalog, HostedBackend, PricePoint, VllmBackend
from policies.usage import Usage

NANOS_PER_USD = 1_000_000_000
_NANOS_PER_TOKEN_AT_1USD_PER_M = Decimal(NANOS_PER_USD) / Decimal(1_000_000)  # = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rate:
    """Effective USD-per-1M-token prices at one moment (peak multiplier applied)."""

    cache_hit: Decimal
    cache_miss: Decimal
    output: Decimal
    version: str
    peak: bool

    def cost_nanos(self, usage: Usage) -> int:
        usd_millionths = (
            self.cache_hit * usage.cache_hit_tokens
            + self.cache_miss * usage.cache_miss_tokens
            + self.output * usage.output_tokens
        )
        exact = usd_millionths * _NANOS_PER_TOKEN_AT_1USD_PER_M
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    def worst_case_nanos(self, prompt_tokens: int, max_output_tokens: int) -> int:
        """Upper bound used for reservations: every prompt token a miss, full output."""
        return self.cost_nanos(Usage(0, prompt_tokens, max_output_tokens, 0))


def in_peak(point: PricePoint, when: datetime) -> bool:
    if point.peak_multiplier == 1 or not point.peak_windows:
        return False
    utc = when.astimezone(UTC)
    day = WEEKDAYS[utc.weekday()]
    t = utc.time()
    return any(day in w.days and w.start <= t < w.end for w in point.peak_windows)


def point_at(schedule: tuple[PricePoint, ...], when: datetime) -> PricePoint:
    current = schedule[0]
    for point in schedule:
        if point.effective <= when:
            current = point
        else:
            break
    return current


def rate_at(name: str, schedule: tuple[PricePoint, ...], when: datetime) -> Rate:
    point = point_at(schedule, when)
    peak = in_peak(point, when)
    mult = point.peak_multiplier if peak else Decimal(1)
    label = point.version or point.effective.date().isoformat()
    return Rate(
        cache_hit=point.cache_hit * mult,
        cache_miss=point.cache_miss * mult,
        output=point.output * mult,
        version=f"{name}@{label}{'+peak' if peak else ''}",
        peak=peak,
    )


def _minute_aligned(point: PricePoint) -> bool:
    """Whether this point's start and peak edges all fall on whole UTC minutes."""
    times = [point.effective.astimezone(UTC).time()]
    for w in point.peak_windows:
        times += [w.start, w.end]
    return all(t.second == 0 and t.microsecond == 0 for t in times)


def _self_hosted_schedule(backend: VllmBackend) -> tuple[PricePoint, ...]:
    cost = backend.cost
    assert cost is not None
    per_hour = cost.usd_per_gpu_hour * cost.gpus_per_replica
    miss = per_hour / (cost.prefill_tokens_per_second * 3600) * 1_000_000
    out = per_hour / (cost.output_tokens_per_second * 3600) * 1_000_000
    q = Decimal("0.000001")
    return (
        PricePoint(
            effective=_EPOCH,
            version="gpu",
            cache_hit=(miss * cost.cache_hit_fraction).quantize(q),
            cache_miss=miss.quantize(q),
            output=out.quantize(q),
        ),
    )


class PriceBook:
    """Resolves the schedule that bills (backend, tier) and prices usage at a moment."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._schedules: dict[tuple[str, str], tuple[str, tuple[PricePoint, ...]]] = {}
        for bname, backend in catalog.backends.items():
            if isinstance(backend, HostedBackend):
                for tier, hm in backend.models.items():
                    self._schedules[(bname, tier)] = (hm.prices, catalog.prices[hm.prices])
            elif backend.prices is not None:
                self._schedules[(bname, backend.tier)] = (
                    backend.prices,
                    catalog.prices[backend.prices],
                )
            else:
                self._schedules[(bname, backend.tier)] = (bname, _self_hosted_schedule(backend))
        for pname, pt in catalog.passthrough.items():
            if pt.prices is not None:
                self._schedules[(pname, pname)] = (pt.prices, catalog.prices[pt.prices])

        # Every price change and peak edge falls on a whole UTC minute in practice; then a
        # rate is the same for the whole minute and can be looked up once per minute.
        self._by_minute = all(
            _minute_aligned(p) for _, sched in self._schedules.values() for p in sched
        )
        self._memo: dict[tuple[str, str, int], Rate] = {}

    def has(self, backend: str, tier: str) -> bool:
        return (backend, tier) in self._schedules

    def rate(self, backend: str, tier: str, when: datetime) -> Rate:
        name, schedule = self._schedules[(backend, tier)]
        if not self._by_minute:
            return rate_at(name, schedule, when)
        key = (backend, tier, int(when.timestamp() // 60))
        rate = self._memo.get(key)
        if rate is None:
            if len(self._memo) >= 4096:
                self._memo.clear()
            rate = self._memo[key] = rate_at(name, schedule, when)
        return rate

    def hosted_rate(self, tier: str, when: datetime) -> Rate | None:
        """What the hosted API would charge for ``tier`` (the savings baseline)."""
        hosted = self._catalog.hosted_backend_for_tier(tier)
        if hosted is None:
            return None
        return self.rate(hosted, tier, when)
