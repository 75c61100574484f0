"""What the admin commands print: money as fixed-decimal dollars, exact to the nano-dollar,
never in exponent notation (tables, CSV and JSON); and an empty list as its table's header
on stdout, with a line on stderr saying how to make the first one."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from gateway import admin_ops
from gateway.cli import main
from gateway.db.models import LedgerRow
from policies.pricing import usd, usd_text


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.logging.configure_logging", lambda *a, **k: None)


@pytest.fixture
def db(migrated: str) -> str:
    return migrated


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert main([*args]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out, err


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0.000000000"),
        (1, "0.000000001"),
        (-1, "-0.000000001"),
        (10_000, "0.000010000"),
        (999_999_999, "0.999999999"),
        (25 * 10**9, "25.000000000"),
        (-1_500_000_000, "-1.500000000"),
        (123_456_789_123_456_789, "123456789.123456789"),
        (10**18, "1000000000.000000000"),
    ],
)
def test_usd_text_is_fixed_and_exact(nanos: int, text: str) -> None:
    assert usd_text(nanos) == text
    assert f"{usd(nanos):f}" == text == admin_ops.cell(usd(nanos))
    assert usd(nanos) == Decimal(nanos) / 10**9
    # JSON: a number in the same fixed notation, read back exactly
    assert admin_ops.dumps({"usd": usd(nanos)}) == f'{{"usd":{text}}}'.encode()
    assert json.loads(admin_ops.dumps(usd(nanos)), parse_float=Decimal) == usd(nanos)


# --limit-usd as given -> the table cell and JSON number printed
LIMITS = [
    ("0.00001", "0.000010000"),
    ("0.000000001", "0.000000001"),
    ("25", "25.000000000"),
    ("0.1", "0.100000000"),
    ("123456789.123456789", "123456789.123456789"),
    ("1e-5", "0.000010000"),
]


@pytest.mark.parametrize(("limit", "printed"), LIMITS)
def test_budget_limits_print_in_fixed_notation(
    db: str, capsys: pytest.CaptureFixture[str], limit: str, printed: str
) -> None:
    run(capsys, "teams", "create", "acme", "--database-url", db)
    out, _ = run(
        capsys,
        "budgets",
        "set",
        "--scope",
        "team",
        "--id",
        "acme",
        "--period",
        "day",
        "--limit-usd",
        limit,
        "--database-url",
        db,
    )
    assert f'"limit_usd": {printed},' in out, out
    assert json.loads(out, parse_float=Decimal)["limit_usd"] == Decimal(printed)
    assert json.loads(out)["limit_usd"] == float(printed)  # still a JSON number

    out, _ = run(capsys, "budgets", "list", "--database-url", db)
    header, row = out.splitlines()
    assert header.split() == admin_ops.BUDGET_COLUMNS
    cells = row.split()
    assert cells[1:5] == ["team", cells[2], "day", printed]
    assert "e-" not in out.lower() and "e+" not in out.lower()


def _ledger(url: str, costs: list[tuple[str, int, int]]) -> None:
    engine = create_engine(url)
    with Session(engine) as s:
        for i, (team, cost, hosted) in enumerate(costs):
            s.add(
                LedgerRow(
                    request_id=f"req-{i}",
                    ts=datetime(2026, 11, 2, 12, i, tzinfo=UTC),
                    key_id=None,
                    team_id=team,
                    protocol="openai",
                    requested_model="deepseek-chat",
                    tier="flash",
                    mode="non-thinking",
                    backend="flash-local",
                    replica=None,
                    route_reason="test",
                    cache_hit_tokens=0,
                    cache_miss_tokens=10,
                    output_tokens=5,
                    reasoning_tokens=0,
                    price_version="x@gpu",
                    cost_nanos=cost,
                    hosted_equiv_nanos=hosted,
                    latency_ms=1.0,
                    status=200,
                )
            )
        s.commit()
    engine.dispose()


# team, cost, hosted-equivalent (nano-dollars) -> cost_usd, hosted_equiv_usd printed
SPEND = [
    ("team_a", 10_000, 20_000, "0.000010000", "0.000020000"),
    ("team_b", 1, 3, "0.000000001", "0.000000003"),
    ("team_c", 0, 0, "0.000000000", "0.000000000"),
    ("team_d", 123_456_789_123_456_789, 10**18, "123456789.123456789", "1000000000.000000000"),
]


def test_spend_report_csv_table_and_savings_print_exact_dollars(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _ledger(db, [(t, c, h) for t, c, h, _, _ in SPEND])

    out, _ = run(capsys, "spend", "report", "--csv", "--database-url", db)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["team_id"], r["cost_usd"], r["hosted_equiv_usd"]) for r in rows] == [
        (t, c, h) for t, _, _, c, h in SPEND
    ]
    assert [int(r["cost_nanos"]) for r in rows] == [c for _, c, _, _, _ in SPEND]

    out, _ = run(capsys, "spend", "report", "--database-url", db)
    lines = out.splitlines()
    cols = lines[0].split()
    assert cols == admin_ops.spend_columns(["team"])
    for line, (team, _, _, cost, hosted) in zip(lines[1:], SPEND, strict=True):
        cells = dict(zip(cols, line.split(), strict=True))
        assert (cells["team_id"], cells["cost_usd"], cells["hosted_equiv_usd"]) == (
            team,
            cost,
            hosted,
        )

    out, _ = run(capsys, "spend", "savings", "--database-url", db)
    total_cost = sum(c for _, c, _, _, _ in SPEND)
    total_hosted = sum(h for _, _, h, _, _ in SPEND)
    assert f'"cost_usd": {usd_text(total_cost)},' in out
    assert f'"saved_usd": {usd_text(total_hosted - total_cost)},' in out
    got = json.loads(out, parse_float=Decimal)
    assert got["saved_nanos"] == total_hosted - total_cost
    assert got["saved_usd"] == usd(total_hosted - total_cost)  # negative here, still exact
    assert got["hosted_equiv_usd"] == usd(total_hosted)
    for text in (out, *(line for line in out.splitlines())):
        assert "e-" not in text and "e+" not in text


# command -> the header printed over no rows, and the hint on stderr
EMPTY = [
    (["teams", "list"], admin_ops.TEAM_COLUMNS, "`tiergate teams create NAME`"),
    (["keys", "list"], admin_ops.KEY_COLUMNS, "`tiergate keys create --team TEAM`"),
    (["budgets", "list"], admin_ops.BUDGET_COLUMNS, "`tiergate budgets set --scope team"),
]


@pytest.mark.parametrize(
    ("command", "columns", "hint"), EMPTY, ids=[" ".join(c) for c, *_ in EMPTY]
)
def test_an_empty_list_prints_its_header_and_a_hint(
    db: str, capsys: pytest.CaptureFixture[str], command: list[str], columns: list[str], hint: str
) -> None:
    out, err = run(capsys, *command, "--database-url", db)
    assert out.splitlines() == ["  ".join(columns)]
    assert "[]" not in out
    assert len(err.splitlines()) == 1 and hint in err, err


def test_an_empty_key_list_for_one_team_names_it(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "teams", "create", "acme", "--database-url", db)
    out, err = run(capsys, "keys", "list", "--team", "acme", "--database-url", db)
    assert out.splitlines() == ["  ".join(admin_ops.KEY_COLUMNS)]
    assert "no API keys for team acme yet" in err
    assert "`tiergate keys create --team acme`" in err


def test_lists_with_rows_have_the_same_columns_and_no_hint(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "teams", "create", "acme", "--database-url", db)
    key = json.loads(run(capsys, "keys", "create", "--team", "acme", "--database-url", db)[0])
    run(
        capsys,
        *("budgets", "set", "--scope", "key", "--id", key["id"], "--period", "total"),
        *("--limit-usd", "5", "--database-url", db),
    )
    for command, columns, _ in EMPTY:
        out, err = run(capsys, *command, "--database-url", db)
        lines = out.splitlines()
        assert lines[0].split() == columns and len(lines) == 2, out
        assert err == ""
    out, _ = run(capsys, "teams", "list", "--database-url", db)
    assert out.splitlines()[1].split()[1] == "acme"


@pytest.mark.parametrize(
    ("given", "nanos"),
    [("0.0000000015", 2), ("0.0000000025", 2), ("0.0000000014", 1), ("1.23456789049", 1234567890)],
)
def test_a_limit_rounds_half_even_to_whole_nanos(given: str, nanos: int) -> None:
    assert admin_ops.usd_to_nanos(given, "limit_usd") == nanos


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1e-05, "0.00001"), ([1e-05, 0.5], "[0.00001, 0.5]"), (1e-07, "0.0000001"), ("x", "x")],
)
def test_fractions_in_a_table_never_print_an_exponent(value: object, shown: str) -> None:
    assert str(admin_ops.cell(value)) == shown


def test_a_closed_pipe_ends_the_report_quietly(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tiergate spend report --csv | head -1`: the reader is gone before the report is."""
    _ledger(db, [(f"team-{i}", 1, 1) for i in range(50)])
    read, write = os.pipe()
    os.close(read)
    out = os.fdopen(write, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(["spend", "report", "--csv", "--database-url", db]) == 0
    finally:
        out.close()
