"""The admin API in process, on a migrated SQLite database: what it refuses and how."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

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
