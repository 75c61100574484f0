from datetime import UTC, datetime

import pytest

from policies.budget import BudgetSpec, crossed, period_window, pressure, should_downgrade


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "tz", "start", "end"),
    [
        ("day", "2026-11-23T15:00", "UTC", "2026-11-23T00:00", "2026-11-24T00:00"),
        # 02:00 UTC is still the 22nd in New York (UTC-5 in November)
        ("day", "2026-11-23T02:00", "America/New_York", "2026-11-22T05:00", "2026-11-23T05:00"),
        ("week", "2026-11-26T12:00", "UTC", "2026-11-23T00:00", "2026-11-30T00:00"),
        ("month", "2026-11-30T23:59", "UTC", "2026-11-01T00:00", "2026-12-01T00:00"),
        ("month", "2026-12-15T00:00", "UTC", "2026-12-01T00:00", "2027-01-01T00:00"),
        # DST ends 2026-11-01 in New York: the day is 25 hours long
        ("day", "2026-11-01T12:00", "America/New_York", "2026-11-01T04:00", "2026-11-02T05:00"),
        # Berlin month across the March DST change: starts at UTC+1, ends at UTC+2
        ("month", "2026-03-20T12:00", "Europe/Berlin", "2026-02-28T23:00", "2026-03-31T22:00"),
        ("total", "2026-03-20T12:00", "UTC", "1970-01-01T00:00", "9999-01-01T00:00"),
    ],
)
def test_period_windows(period, now, tz, start, end) -> None:
    assert period_window(period, utc(now), tz) == (utc(start), utc(end))


def test_pressure_thresholds_and_downgrade() -> None:
    spec = BudgetSpec("b", "team", "t", "day", 1000, (0.5, 0.8, 1.0), downgrade_at=0.8)
    assert pressure(250, 1000) == 0.25 and pressure(5, 0) == 1.0
    assert crossed(400, 850, 1000, spec.soft_thresholds) == [0.5, 0.8]
    assert crossed(850, 900, 1000, spec.soft_thresholds) == []
    assert not should_downgrade(spec, 799) and should_downgrade(spec, 800)


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata"])
def test_period_clock_agrees_with_period_window_moving_both_ways(tz: str) -> None:
    from datetime import timedelta

    from policies.budget import PeriodClock

    clock = PeriodClock(tz)
    # Around the New York DST end and a month end, forward then back (late settlements).
    moments = []
    for base in ("2026-10-31T03:00", "2026-11-30T21:00"):
        t0 = utc(base)
        moments += [t0 + timedelta(minutes=17 * i) for i in range(0, 800)]
    moments += list(reversed(moments))
    moments += [utc("2026-11-01T04:59:59.999999"), utc("2026-11-01T05:00"), utc("2026-11-01T04:00")]
    for now in moments:
        for period in ("day", "week", "month", "total"):
            assert clock.window(period, now) == period_window(period, now, tz), (period, now)
