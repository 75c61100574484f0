"""Admin operations on teams, keys, budgets, limits and spend: shared by the admin API and CLI."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import ApiKey, Budget, LedgerRow, RateLimit, Team
from gateway.keys import generate_key, new_id
from gateway.parse import INVISIBLE_CATEGORIES
from policies.budget import PERIODS
from policies.errors import InvalidRequest, TiergateError
from policies.pricing import NANOS_PER_USD, usd

GROUPS = {
    "team": (LedgerRow.team_id,),
    "key": (LedgerRow.key_id,),
    "model": (LedgerRow.requested_model,),
    "option": (LedgerRow.tier, LedgerRow.mode, LedgerRow.backend),
    "backend": (LedgerRow.backend,),
}


class Unprocessable(InvalidRequest):
    """Well-formed JSON whose values cannot be used (HTTP 422)."""

    status = 422
    code = "invalid_value"


def parse_time(value: str) -> datetime:
    """A ``since``/``until`` bound as given to the admin API and CLI: an ISO 8601 date or
    time (``2026-11-01``, ``2026-11-01T00:00:00Z``), UTC when it names no zone; ``ValueError``
    otherwise."""
    t = datetime.fromisoformat(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def cell(value: Any) -> Any:
    """``value`` as a table or CSV cell shows it: money (a ``Decimal`` of US dollars, as
    :func:`policies.pricing.usd` gives) in fixed notation with its nine decimals, never
    ``1E-9``; anything else as it is."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, float):  # a fraction (an alert threshold): 0.00001, not 1e-05
        return f"{Decimal(repr(value)):f}"
    if isinstance(value, list):
        return "[" + ", ".join(str(cell(v)) for v in value) + "]"
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # a JSON number written as it is: 0.000010000, not 1e-05 (a float) or a string
        return orjson.Fragment(f"{value:f}")
    return str(value)


def dumps(data: Any, *, indent: bool = False) -> bytes:
    """``data`` as JSON, money (``Decimal``) as exact numbers in fixed notation."""
    return orjson.dumps(data, default=_json_default, option=orjson.OPT_INDENT_2 if indent else 0)


class NotFound(TiergateError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    key: str
    prefix: str
    team_id: str


# Column limits: a value past them is a 422, never a database error.
_INT32_MAX = 2**31 - 1
MAX_LIMIT_USD = 1_000_000_000


def _now() -> datetime:
    return datetime.now(UTC)


def text(value: Any, field: str, *, max_len: int = 200, empty: bool = True) -> str:
    """A string the database can store: no NUL character, at most ``max_len`` characters."""
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value):
        size = "a non-empty string" if not empty else "a string"
        raise Unprocessable(
            f"'{field}' must be {size} of at most {max_len} characters", param=field
        )
    if "\x00" in value:
        raise Unprocessable(f"'{field}' must not contain NUL characters", param=field)
    return value


def _positive_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _INT32_MAX:
        raise Unprocessable(
            f"'{field}' must be a positive integer of at most {_INT32_MAX}, or null", param=field
        )
    return value


def usd_to_nanos(value: Any, field: str) -> int:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Unprocessable(
            f"'{field}' must be a number of US dollars, e.g. 25 or 0.5", param=field
        ) from None
    if not d.is_finite() or d <= 0:
        raise Unprocessable(f"'{field}' must be a positive number of US dollars", param=field)
    if d > MAX_LIMIT_USD:
        raise Unprocessable(f"'{field}' must be at most {MAX_LIMIT_USD} US dollars", param=field)
    # Whole nano-dollars, the ledger's unit: 1.5 nanos rounds half-even, as costs do.
    nanos = int((d * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))
    if nanos < 1:
        # Money is counted in nano-dollars: a smaller amount would be stored as $0.
        raise Unprocessable(
            f"'{field}' {value} is below the smallest amount the ledger counts, "
            "0.000000001 US dollars (one nano-dollar)",
            param=field,
        )
    return nanos


# A team id: ``team_`` and 16 hex digits (gateway/keys.py ``new_id``).
_TEAM_ID = re.compile(r"team_[0-9a-f]{16}")


def display_name(value: Any, field: str, *, empty: bool = True) -> str:
    """A name people read in listings and logs and give to commands: ``text``, and no
    whitespace at either end (``gamma`` and ``gamma `` printed alike) and no control or
    invisible character (a bidi override reorders what is printed after it)."""
    name = text(value, field, empty=empty)
    if name != name.strip():
        raise Unprocessable(f"'{field}' must not begin or end with whitespace", param=field)
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in INVISIBLE_CATEGORIES:
            raise Unprocessable(
                f"'{field}' contains the control or invisible character U+{ord(ch):04X} at "
                f"position {i}; names are printable text",
                param=field,
            )
    return name


async def create_team(s: AsyncSession, name: str) -> dict[str, Any]:
    name = display_name(name, "name", empty=False)
    if _TEAM_ID.fullmatch(name):
        # Commands take a team's id or name: this one would read as another team's id.
        raise Unprocessable(
            f"'name' {name!r} has the form of a team id; choose another name", param="name"
        )
    team = Team(id=new_id("team"), name=name, created_at=_now())
    s.add(team)
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()
        raise Unprocessable(f"a team named '{name}' already exists", param="name") from None
    return {"id": team.id, "name": team.name}


#: The columns of :func:`list_teams`', :func:`list_keys`' and :func:`list_budgets`' rows, in
#: order (for a header over no rows).
TEAM_COLUMNS = ["id", "name"]
KEY_COLUMNS = ["id", "team_id", "name", "prefix", "allowed_models", "may_override_tier", "revoked"]
BUDGET_COLUMNS = [
    "id",
    "scope",
    "scope_id",
    "period",
    "limit_usd",
    "soft_thresholds",
    "downgrade_at",
]


async def list_teams(s: AsyncSession) -> list[dict[str, Any]]:
    return [
        {"id": t.id, "name": t.name}
        for t in (await s.scalars(select(Team).order_by(Team.name))).all()
    ]


async def _team(s: AsyncSession, team: str) -> Team:
    team = text(team, "team", max_len=200)
    row = await s.scalar(select(Team).where((Team.id == team) | (Team.name == team)))
    if row is None:
        raise NotFound(f"no team '{team}' (give its id or name)", param="team")
    return row


async def create_key(
    s: AsyncSession,
    team: str,
    *,
    name: str = "",
    allowed_models: list[str] | None = None,
    may_override_tier: bool = False,
    max_tokens_ceiling: int | None = None,
) -> CreatedKey:
    t = await _team(s, team)
    name = display_name(name, "name")
    if allowed_models is not None and not (
        isinstance(allowed_models, list)
        and all(isinstance(m, str) and m and "\x00" not in m for m in allowed_models)
    ):
        raise Unprocessable(
            "'allowed_models' must be a list of model names", param="allowed_models"
        )
    if not isinstance(may_override_tier, bool):
        raise Unprocessable("'may_override_tier' must be true or false", param="may_override_tier")
    max_tokens_ceiling = _positive_int(max_tokens_ceiling, "max_tokens_ceiling")
    raw, prefix, digest = generate_key()
    key = ApiKey(
        id=new_id("key"),
        team_id=t.id,
        name=name,
        key_hash=digest,
        prefix=prefix,
        allowed_models=allowed_models,
        may_override_tier=may_override_tier,
        max_tokens_ceiling=max_tokens_ceiling,
        created_at=_now(),
    )
    s.add(key)
    await s.commit()
    return CreatedKey(key.id, raw, prefix, t.id)


async def list_keys(s: AsyncSession, team: str | None = None) -> list[dict[str, Any]]:
    q = select(ApiKey).order_by(ApiKey.created_at)
    if team:
        q = q.where(ApiKey.team_id == (await _team(s, team)).id)
    return [
        {
            "id": k.id,
            "team_id": k.team_id,
            "name": k.name,
            "prefix": k.prefix,
            "allowed_models": k.allowed_models,
            "may_override_tier": k.may_override_tier,
            "revoked": k.revoked_at is not None,
        }
        for k in (await s.scalars(q)).all()
    ]


async def revoke_key(s: AsyncSession, key_id: str) -> str:
    """Revoke by id or display prefix; returns the key's hash (for cache invalidation)."""
    key_id = text(key_id, "key", max_len=64)
    key = await s.scalar(select(ApiKey).where((ApiKey.id == key_id) | (ApiKey.prefix == key_id)))
    if key is None:
        raise NotFound(f"no API key '{key_id}'", param="key")
    if key.revoked_at is None:
        key.revoked_at = _now()
        await s.commit()
    return key.key_hash


async def set_budget(
    s: AsyncSession,
    scope: str,
    scope_id: str,
    period: str,
    limit_usd: Any,
    soft_thresholds: list[float] | None = None,
    downgrade_at: float | None = None,
) -> dict[str, Any]:
    scope_id = text(scope_id, "scope_id", max_len=200)
    if scope not in ("key", "team"):
        raise Unprocessable("'scope' must be 'key' or 'team'", param="scope")
    if period not in PERIODS:
        raise Unprocessable(f"'period' must be one of: {', '.join(PERIODS)}", param="period")
    limit = usd_to_nanos(limit_usd, "limit_usd")
    thresholds = soft_thresholds or []
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1 for t in thresholds
    ):
        raise Unprocessable(
            "'soft_thresholds' must be fractions in (0, 1], e.g. [0.5, 0.8]",
            param="soft_thresholds",
        )
    if downgrade_at is not None and (
        not isinstance(downgrade_at, int | float)
        or isinstance(downgrade_at, bool)
        or not 0 < downgrade_at <= 1
    ):
        raise Unprocessable("'downgrade_at' must be a fraction in (0, 1]", param="downgrade_at")
    if scope == "team":
        scope_id = (await _team(s, scope_id)).id
    elif await s.get(ApiKey, scope_id) is None:
        raise NotFound(f"no API key with id '{scope_id}'", param="scope_id")
    row = await s.scalar(
        select(Budget).where(
            Budget.scope == scope, Budget.scope_id == scope_id, Budget.period == period
        )
    )
    if row is None:
        row = Budget(id=new_id("budget"), scope=scope, scope_id=scope_id, period=period)
        s.add(row)
    row.limit_nanos = limit
    row.soft_thresholds = sorted(float(t) for t in thresholds)
    row.downgrade_at = float(downgrade_at) if downgrade_at is not None else None
    await s.commit()
    return _budget(row)


def _budget(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "scope": b.scope,
        "scope_id": b.scope_id,
        "period": b.period,
        "limit_usd": usd(b.limit_nanos),
        "soft_thresholds": b.soft_thresholds,
        "downgrade_at": b.downgrade_at,
    }


async def list_budgets(s: AsyncSession) -> list[dict[str, Any]]:
    return [_budget(b) for b in (await s.scalars(select(Budget).order_by(Budget.scope_id))).all()]


async def set_limits(
    s: AsyncSession, key_id: str, rpm: int | None, tpm: int | None
) -> dict[str, Any]:
    rpm = _positive_int(rpm, "requests_per_minute")
    tpm = _positive_int(tpm, "tokens_per_minute")
    key_id = text(key_id, "key_id", max_len=64)
    if await s.get(ApiKey, key_id) is None:
        raise NotFound(f"no API key with id '{key_id}'", param="key_id")
    row = await s.get(RateLimit, key_id) or RateLimit(key_id=key_id)
    row.requests_per_minute, row.tokens_per_minute = rpm, tpm
    s.add(row)
    await s.commit()
    return {"key_id": key_id, "requests_per_minute": rpm, "tokens_per_minute": tpm}


_SUMS = (
    "requests",
    "cache_hit_tokens",
    "cache_miss_tokens",
    "output_tokens",
    "cost_nanos",
    "hosted_equiv_nanos",
)


def _group_columns(group_by: list[str]) -> list[Any]:
    cols: list[Any] = []
    for g in dict.fromkeys(group_by):  # each grouping once, in the order asked
        if g == "day":
            cols.append(func.date(LedgerRow.ts).label("day"))
        elif g in GROUPS:
            cols.extend(GROUPS[g])
        else:
            raise Unprocessable(
                f"cannot group by '{g}'; use any of: {', '.join([*GROUPS, 'day'])}",
                param="group_by",
            )
    return cols


def spend_columns(group_by: list[str]) -> list[str]:
    """The columns of :func:`spend_report`'s rows, in order (for a header over no rows)."""
    return [str(c.key) for c in _group_columns(group_by)] + [
        *_SUMS,
        "cost_usd",
        "hosted_equiv_usd",
    ]


async def spend_report(
    s: AsyncSession,
    group_by: list[str],
    since: datetime | None = None,
    until: datetime | None = None,
    team: str | None = None,
) -> list[dict[str, Any]]:
    cols = _group_columns(group_by)
    names = [str(c.key) for c in cols]
    q = select(
        *cols,
        func.count().label("requests"),
        func.sum(LedgerRow.cache_hit_tokens).label("cache_hit_tokens"),
        func.sum(LedgerRow.cache_miss_tokens).label("cache_miss_tokens"),
        func.sum(LedgerRow.output_tokens).label("output_tokens"),
        func.sum(LedgerRow.cost_nanos).label("cost_nanos"),
        func.sum(LedgerRow.hosted_equiv_nanos).label("hosted_equiv_nanos"),
    )
    if since is not None:
        q = q.where(LedgerRow.ts >= since)
    if until is not None:
        q = q.where(LedgerRow.ts < until)
    if team is not None:
        q = q.where(LedgerRow.team_id == (await _team(s, team)).id)
    if cols:
        q = q.group_by(*cols).order_by(*cols)
    out = []
    for row in (await s.execute(q)).all():
        d = dict(zip([*names, *_SUMS], row, strict=True))
        for k in _SUMS:
            d[k] = int(d[k] or 0)
        if "day" in d and d["day"] is not None:
            d["day"] = str(d["day"])
        d["cost_usd"] = usd(d["cost_nanos"])
        d["hosted_equiv_usd"] = usd(d["hosted_equiv_nanos"])
        out.append(d)
    return out


async def savings(
    s: AsyncSession, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    rows = await spend_report(s, [], since, until)
    total = rows[0] if rows else {"cost_nanos": 0, "hosted_equiv_nanos": 0, "requests": 0}
    saved = total["hosted_equiv_nanos"] - total["cost_nanos"]
    return {
        "requests": total["requests"],
        "cost_usd": usd(total["cost_nanos"]),
        "hosted_equiv_usd": usd(total["hosted_equiv_nanos"]),
        "saved_usd": usd(saved),
        "saved_nanos": saved,
    }
