"""The on-disk spool: round trip, a live owner keeps its file, a dead owner's file is taken over."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.budgets import Window
from gateway.spool import Spooled, SpoolFile, decode, encode
from policies.budget import BudgetSpec

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def item(n: int) -> Spooled:
    spec = BudgetSpec("b1", "team", "t1", "day", 10**9, soft_thresholds=(0.5, 0.8))
    w = Window.of(spec, NOW, "UTC")
    return Spooled(f"req-{n}", (w,), 1000 + n, {"request_id": f"req-{n}", "cost_nanos": 1000 + n})


def spool(directory: Path, name: str) -> SpoolFile:
    s = SpoolFile(directory)
    s.path = directory / f"{name}.jsonl"  # two "processes" in one test
    return s


def test_round_trip_keeps_windows_and_event() -> None:
    assert decode(encode(item(1))) == item(1)


def test_a_live_owner_keeps_its_file_and_a_dead_ones_file_is_taken_over(tmp_path: Path) -> None:
    first, second = spool(tmp_path, "first"), spool(tmp_path, "second")
    first.append([item(1), item(2)])
    assert second.adopt_orphans() == []  # first holds its lock: alive
    first.close()  # not empty: the file stays, unlocked, as after SIGKILL
    assert (tmp_path / "first.jsonl").exists()
    assert second.adopt_orphans() == [item(1), item(2)]
    assert not (tmp_path / "first.jsonl").exists()
    assert [decode(x) for x in (tmp_path / "second.jsonl").read_bytes().splitlines()] == [
        item(1),
        item(2),
    ]
    second.clear()
    second.close()
    assert list(tmp_path.glob("*.jsonl")) == []  # an empty spool leaves nothing behind
