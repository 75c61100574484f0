"""The admin API under /admin: master key only, separate from the data API's keys."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import admin_ops
from gateway.admin_ops import Unprocessable
from gateway.keys import master_key_matches
from gateway.money import MoneyAccounting
from gateway.openapi_bodies import BUDGET, KEY, LIMITS, TEAM
from gateway.openapi_bodies import body as json_body
from gateway.parse import load_json_object
from gateway.state import state_of
from policies.errors import AuthenticationFailed, InvalidRequest, ServiceUnavailable

router = APIRouter(prefix="/admin", tags=["admin"])


def _money(request: Request) -> MoneyAccounting:
    st = state_of(request)
    master = st.settings.master_key.get_secret_value() if st.settings.master_key else None
    if not master:
        raise AuthenticationFailed(
            "the admin API is disabled: set TIERGATE_MASTER_KEY on the gateway"
        )
    auth = request.headers.get("authorization", "")
    presented = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if not master_key_matches(presented, master):
        raise AuthenticationFailed(
            "admin API: wrong or missing master key (Authorization: Bearer <master key>)"
        )
    acc = st.pipeline.accounting
    if not isinstance(acc, MoneyAccounting):
        raise ServiceUnavailable("the admin API needs a database: set TIERGATE_DATABASE_URL")
    return acc


def _json(data: Any, status: int = 200) -> Response:
    return Response(admin_ops.dumps(data), status_code=status, media_type="application/json")


async def _body(request: Request, schema: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON object; a field ``schema`` does not name is a 422, never ignored
    (a misspelt ``max_tokens_ceiling`` would leave the key without its ceiling)."""
    body = load_json_object(await request.body(), 1_000_000)
    known = schema["properties"]
    for field in body:
        if field not in known:
            raise Unprocessable(
                f"unknown field '{field}'; this body takes: {', '.join(known)}", param=field
            )
    return body


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return admin_ops.parse_time(value)
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 time, e.g. 2026-11-01T00:00:00Z", param=name
        ) from None


@router.post("/teams", status_code=201, openapi_extra=json_body(TEAM))
async def create_team(request: Request) -> Response:
    money = _money(request)
    body = await _body(request, TEAM)
    async with money.sessions() as s:
        return _json(await admin_ops.create_team(s, body.get("name", "")), 201)


@router.get("/teams")
async def list_teams(request: Request) -> Response:
    async with _money(request).sessions() as s:
        return _json({"data": await admin_ops.list_teams(s)})


@router.post("/keys", status_code=201, openapi_extra=json_body(KEY))
async def create_key(request: Request) -> Response:
    money = _money(request)
    body = await _body(request, KEY)
    if not isinstance(body.get("team"), str):
        raise Unprocessable("'team' (id or name) is required", param="team")
    async with money.sessions() as s:
        k = await admin_ops.create_key(
            s,
            body["team"],
            name=body.get("name", ""),
            allowed_models=body.get("allowed_models"),
            may_override_tier=body.get("may_override_tier", False),
            max_tokens_ceiling=body.get("max_tokens_ceiling"),
        )
    return _json(
        {
            "id": k.id,
            "key": k.key,
            "prefix": k.prefix,
            "team_id": k.team_id,
            "note": "store this key now: it is not shown again",
        },
        201,
    )


@router.get("/keys")
async def list_keys(request: Request, team: str | None = None) -> Response:
    async with _money(request).sessions() as s:
        return _json({"data": await admin_ops.list_keys(s, team)})


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> Response:
    money = _money(request)
    async with money.sessions() as s:
        digest = await admin_ops.revoke_key(s, key_id)
    await money.publish_revocation(digest)
    return _json({"id": key_id, "revoked": True})


@router.put("/budgets", openapi_extra=json_body(BUDGET))
async def set_budget(request: Request) -> Response:
    money = _money(request)
    b = await _body(request, BUDGET)
    for required in ("scope", "scope_id", "period", "limit_usd"):
        if required not in b:
            raise Unprocessable(f"'{required}' is required", param=required)
    async with money.sessions() as s:
        row = await admin_ops.set_budget(
            s,
            b["scope"],
            str(b["scope_id"]),
            b["period"],
            b["limit_usd"],
            b.get("soft_thresholds"),
            b.get("downgrade_at"),
        )
    await money.publish_budget_change()
    return _json(row)


@router.get("/budgets")
async def list_budgets(request: Request) -> Response:
    async with _money(request).sessions() as s:
        return _json({"data": await admin_ops.list_budgets(s)})


@router.put("/limits/{key_id}", openapi_extra=json_body(LIMITS))
async def set_limits(request: Request, key_id: str) -> Response:
    money = _money(request)
    b = await _body(request, LIMITS)
    async with money.sessions() as s:
        row = await admin_ops.set_limits(
            s, key_id, b.get("requests_per_minute"), b.get("tokens_per_minute")
        )
    await money.publish_budget_change()
    return _json(row)


@router.get("/spend")
async def spend(
    request: Request,
    group_by: str = "team",
    since: str | None = None,
    until: str | None = None,
    team: str | None = None,
    format: str = "json",
) -> Response:
    money = _money(request)
    if format not in ("json", "csv"):
        raise InvalidRequest("'format' must be 'json' or 'csv'", param="format")
    groups = [g for g in group_by.split(",") if g]
    async with money.sessions() as s:
        rows = await admin_ops.spend_report(
            s, groups, _time(since, "since"), _time(until, "until"), team
        )
    if format == "csv":
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: admin_ops.cell(v) for k, v in row.items()} for row in rows)
        return Response(buf.getvalue(), media_type="text/csv")
    return _json({"data": rows})


@router.get("/savings")
async def savings(request: Request, since: str | None = None, until: str | None = None) -> Response:
    async with _money(request).sessions() as s:
        return _json(await admin_ops.savings(s, _time(since, "since"), _time(until, "until")))
