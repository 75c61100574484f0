"""Budget arithmetic: calendar-aligned periods in a timezone, pressure, thresholds.

Pure: the budget store and the router call these with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "total")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    id: str
    scope: Literal["key", "team"]
    scope_id: str
    period: Period
    limit_nanos: int
    soft_thresholds: tuple[float, ...] = ()
    downgrade_at: float | None = None


def period_window(period: Period, now: datetime, tz: str = "UTC") -> tuple[datetime, datetime]:
    """[start, reset) of the period containing ``now``, aligned to the calendar in ``tz``."""
    if period == "total":
        return _EPOCH, _FAR
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    # Attach the zone after the arithmetic so DST changes inside the period are respected.
    return start.replace(tzinfo=zone).astimezone(UTC), end.replace(tzinfo=zone).astimezone(UTC)


class PeriodClock:
    """``period_window`` for one timezone, remembering the last window of each period.

    Periods tile time, so the remembered window answers every moment inside it; any other
    moment (the next period, or an earlier request settling late) is computed afresh.
    """

    def __init__(self, tz: str = "UTC") -> None:
        self.tz = tz
        self._last: dict[Period, tuple[datetime, datetime]] = {}

    def window(self, period: Period, now: datetime) -> tuple[datetime, datetime]:
        span = self._last.get(period)
        if span is None or not span[0] <= now < span[1]:
            span = self._last[period] = period_window(period, now, self.tz)
        return span


def pressure(spent_nanos: int, limit_nanos: int) -> float:
    if limit_nanos <= 0:
        return 1.0
    return max(0.0, spent_nanos / limit_nanos)


def crossed(
    before: int, after: int, limit_nanos: int, thresholds: tuple[float, ...]
) -> list[float]:
    """Soft thresholds crossed by moving spend from ``before`` to ``after``."""
    return [t for t in thresholds if before < t * limit_nanos <= after]


def should_downgrade(spec: BudgetSpec, spent_nanos: int) -> bool:
    return (
        spec.downgrade_at is not None
        and pressure(spent_nanos, spec.limit_nanos) >= spec.downgrade_at
    )
