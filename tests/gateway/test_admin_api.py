"""The admin API in process, on a migrated SQLite database: what it refuses and how."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

from .test_cli_output import _ledger

MASTER = {"Authorization": "Bearer master"}


@pytest.fixture
def admin(migrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr("gateway.app.configure_logging", lambda *a, **k: None)
    settings = Settings(
        database_url=migrated, master_key="master", redis_url=None, spool_dir=str(tmp_path)
    )
    with TestClient(create_app(settings), headers=MASTER) as client:
        assert client.post("/admin/teams", json={"name": "sp"}).status_code == 201
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body", "unknown"),
    [
        ("POST", "/admin/teams", {"name": "t2", "budget": 5}, "budget"),
        (
            "POST",
            "/admin/keys",
            {"team": "sp", "max_tokens": 5, "allowed_model": ["deepseek-chat"]},
            "max_tokens",
        ),
        (
            "PUT",
            "/admin/budgets",
            {"scope": "team", "scope_id": "sp", "period": "day", "limit_usd": 1, "alert_at": [0.5]},
            "alert_at",
        ),
        ("PUT", "/admin/limits/{key}", {"rpm": 10}, "rpm"),
    ],
    ids=["teams", "keys", "budgets", "limits"],
)
def test_an_unknown_field_is_a_422_naming_it(
    admin: TestClient, method: str, path: str, body: dict[str, Any], unknown: str
) -> None:
    key = admin.post("/admin/keys", json={"team": "sp"}).json()["id"]
    r = admin.request(method, path.format(key=key), json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == unknown
    assert error["message"].startswith(f"unknown field '{unknown}'; this body takes: ")
    # nothing was changed
    assert [t["name"] for t in admin.get("/admin/teams").json()["data"]] == ["sp"]
    assert len(admin.get("/admin/keys").json()["data"]) == 1
    assert admin.get("/admin/budgets").json()["data"] == []


def test_spend_takes_a_team_id_or_name(admin: TestClient, migrated: str) -> None:
    team_id = admin.get("/admin/teams").json()["data"][0]["id"]
    _ledger(migrated, [(team_id, 10_000, 20_000), ("team_other", 1, 1)])
    by_id = admin.get("/admin/spend", params={"team": team_id})
    by_name = admin.get("/admin/spend", params={"team": "sp"})
    assert by_id.status_code == by_name.status_code == 200, by_name.text
    assert by_name.json() == by_id.json()
    assert [(r["team_id"], r["cost_nanos"]) for r in by_name.json()["data"]] == [(team_id, 10_000)]
    csv = admin.get("/admin/spend", params={"team": "sp", "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and team_id in csv.text


def test_spend_of_an_unknown_team_is_a_404(admin: TestClient) -> None:
    r = admin.get("/admin/spend", params={"team": "delta"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == "no team 'delta' (give its id or name)"


@pytest.mark.parametrize("fmt", ["xml", "CSV", ""])
def test_spend_in_an_unknown_format_is_a_400(admin: TestClient, fmt: str) -> None:
    r = admin.get("/admin/spend", params={"format": fmt})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        **r.json()["error"],
        "param": "format",
        "message": "'format' must be 'json' or 'csv'",
    }


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("gamma ", "must not begin or end with whitespace"),
        (" gamma", "must not begin or end with whitespace"),
        ("ga\u202emma", "invisible character U+202E at position 2"),
        ("line\nbreak", "invisible character U+000A at position 4"),
        ("team_c0cfddb35b0afed8", "has the form of a team id"),
    ],
)
def test_a_team_name_people_could_misread_is_a_422(
    admin: TestClient, name: str, fragment: str
) -> None:
    r = admin.post("/admin/teams", json={"name": name})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"] and r.json()["error"]["param"] == "name"
    assert [t["name"] for t in admin.get("/admin/teams").json()["data"]] == ["sp"]
    r = admin.post("/admin/keys", json={"team": "sp", "name": name})
    if "team id" not in fragment:  # a key name may look like anything printable
        assert r.status_code == 422, r.text


def test_printable_names_of_any_script_are_taken(admin: TestClient) -> None:
    for name in ("Équipe données", "研究", "team-7 (eu)"):
        assert admin.post("/admin/teams", json={"name": name}).status_code == 201
