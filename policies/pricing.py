"""Prices in force at a moment, and the exact cost of a request in integer nano-dollars.

A schedule is a list of price points with effective dates; the point in force at the
request's start time prices it, with the peak multiplier applied when that time falls in
a peak window. Old ledger rows keep the price version they were billed with, so an
operator can correct a price by adding a point with a later effective date.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from policies.catalog import WEEKDAYS, Catalog, HostedBackend, PricePoint, VllmBackend
from policies.usage import Usage

NANOS_PER_USD = 1_000_000_000
_NANOS_PER_TOKEN_AT_1USD_PER_M = NANOS_PER_USD // 1_000_000  # = 1000


def usd(nanos: int) -> Decimal:
    """``nanos`` nano-dollars as an exact amount of US dollars with nine decimal places
    (``10_000`` -> ``Decimal("0.000010000")``): how reports carry money. Print it with
    :func:`usd_text`'s format, ``f"{amount:f}"``, never ``str()``, which may use an exponent."""
    return Decimal(nanos).scaleb(-9)


def usd_text(nanos: int) -> str:
    """``nanos`` nano-dollars as US dollars in fixed notation, all nine decimal places
    (``10_000`` -> ``"0.000010000"``, ``-1`` -> ``"-0.000000001"``): exact, never an
    exponent. The one format money is printed in."""
    return f"{usd(nanos):f}"


@dataclass(frozen=True, slots=True)
class Rate:
    """Effective USD-per-1M-token prices at one moment (peak multiplier applied), exact:
    a catalog price is a decimal, a self-hosted one derived from GPU cost need not end
    (10 USD over 32.4M tokens), so both are kept as fractions."""

    cache_hit: Fraction
    cache_miss: Fraction
    output: Fraction
    version: str
    peak: bool
    # The three prices in nano-dollars per token over one common denominator, for
    # integer arithmetic per request.
    _nanos: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        per_token = [
            p * _NANOS_PER_TOKEN_AT_1USD_PER_M
            for p in (self.cache_hit, self.cache_miss, self.output)
        ]
        den = math.lcm(*(p.denominator for p in per_token))
        hit, miss, out = (p.numerator * (den // p.denominator) for p in per_token)
        object.__setattr__(self, "_nanos", (hit, miss, out, den))

    def cost_nanos(self, usage: Usage) -> int:
        """The exact cost, rounded half-even to a whole nano-dollar once, here."""
        hit, miss, out, den = self._nanos
        num = (
            hit * usage.cache_hit_tokens
            + miss * usage.cache_miss_tokens
            + out * usage.output_tokens
        )
        q, r = divmod(num, den)
        return q + 1 if 2 * r > den or (2 * r == den and q % 2) else q

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
    mult = Fraction(point.peak_multiplier) if peak else Fraction(1)
    label = point.version or point.effective.date().isoformat()
    return Rate(
        cache_hit=Fraction(point.cache_hit) * mult,
        cache_miss=Fraction(point.cache_miss) * mult,
        output=Fraction(point.output) * mult,
        version=f"{name}@{label}{'+peak' if peak else ''}",
        peak=peak,
    )


def _minute_aligned(point: PricePoint) -> bool:
    """Whether this point's start and peak edges all fall on whole UTC minutes."""
    times = [point.effective.astimezone(UTC).time()]
    for w in point.peak_windows:
        times += [w.start, w.end]
    return all(t.second == 0 and t.microsecond == 0 for t in times)


def self_hosted_rate(name: str, backend: VllmBackend) -> Rate:
    """A self-hosted pool's price from its GPU cost: dollars per hour over measured tokens
    per hour, per 1M tokens, exact (a fraction; no rounding before the request's cost)."""
    cost = backend.cost
    assert cost is not None
    per_hour = Fraction(cost.usd_per_gpu_hour) * cost.gpus_per_replica
    miss = per_hour / (Fraction(cost.prefill_tokens_per_second) * 3600) * 1_000_000
    out = per_hour / (Fraction(cost.output_tokens_per_second) * 3600) * 1_000_000
    return Rate(
        cache_hit=miss * Fraction(cost.cache_hit_fraction),
        cache_miss=miss,
        output=out,
        version=f"{name}@gpu",
        peak=False,
    )


class PriceBook:
    """Resolves the schedule that bills (backend, tier) and prices usage at a moment."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._schedules: dict[tuple[str, str], tuple[str, tuple[PricePoint, ...]]] = {}
        # Self-hosted pools priced from GPU cost: one rate at all times.
        self._fixed: dict[tuple[str, str], Rate] = {}
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
                self._fixed[(bname, backend.tier)] = self_hosted_rate(bname, backend)
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
        return (backend, tier) in self._schedules or (backend, tier) in self._fixed

    def rate(self, backend: str, tier: str, when: datetime) -> Rate:
        fixed = self._fixed.get((backend, tier))
        if fixed is not None:
            return fixed
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
