"""``tiergate db|teams|keys|budgets|limits|spend``: administration from the command line."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from gateway import admin_ops
from gateway.settings import Settings
from policies.errors import ConfigError, TiergateError


def _url(args: argparse.Namespace) -> str:
    url: str = args.database_url or Settings().database_url
    return url


def _run_db(fn: Callable[[Any], Awaitable[Any]], args: argparse.Namespace) -> int:
    from gateway.db.engine import make_engine, make_sessions

    async def go() -> Any:
        engine = make_engine(_url(args))
        try:
            async with make_sessions(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(go())
    except TiergateError as exc:
        print(f"tiergate: {exc.message}", file=sys.stderr)
        return 2
    _print(result, getattr(args, "csv", False))
    return 0


def _print(result: Any, as_csv: bool) -> None:
    if as_csv and isinstance(result, list):
        if result:
            w = csv.DictWriter(sys.stdout, fieldnames=list(result[0]))
            w.writeheader()
            w.writerows(result)
        return
    if isinstance(result, list) and result and isinstance(result[0], dict):
        cols = list(result[0])
        widths = {c: max(len(c), *(len(str(r.get(c))) for r in result)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for r in result:
            print("  ".join(str(r.get(c)).ljust(widths[c]) for c in cols))
        return
    print(json.dumps(result, indent=2, default=str))


def _db(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from gateway.db import migrate

    url = _url(args)
    if url in ("", "none"):
        # The gateway runs without a database then (no keys, no ledger): nothing to migrate.
        print("no database configured (TIERGATE_DATABASE_URL is empty): nothing to migrate")
        return 0
    try:
        if args.action == "upgrade":
            migrate.upgrade(url, args.revision or "head")
        elif args.action == "downgrade":
            migrate.downgrade(url, args.revision or "base")
    except ConfigError as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    current = migrate.current_revision(url) or "none"
    where = make_url(url).render_as_string(hide_password=True)
    print(f"{where}: revision {current} (head {migrate.head_revision()})")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    async def go(s: Any) -> dict[str, Any]:
        digest = await admin_ops.revoke_key(s, args.key)
        redis_url = args.redis_url or Settings().redis_url
        if redis_url:
            from redis.asyncio import Redis

            from gateway.money import REVOKED_CHANNEL

            r = Redis.from_url(redis_url)
            await r.publish(Settings().redis_prefix + REVOKED_CHANNEL, digest)
            await r.aclose()
        return {"key": args.key, "revoked": True}

    return _run_db(go, args)


def _time(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def parser(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        return p

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--database-url", help="default: $TIERGATE_DATABASE_URL or the embedded SQLite file"
        )
        return p

    db = common(parser("db", "database migrations (run before serving; the app never migrates)"))
    db.add_argument("action", choices=("upgrade", "downgrade", "current"))
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=_db)

    teams = parser("teams", "create and list teams").add_subparsers(dest="action", required=True)
    p = common(teams.add_parser("create"))
    p.add_argument("name")
    p.set_defaults(func=lambda a: _run_db(lambda s: admin_ops.create_team(s, a.name), a))
    p = common(teams.add_parser("list"))
    p.set_defaults(func=lambda a: _run_db(admin_ops.list_teams, a))

    keys = parser("keys", "create, list and revoke API keys").add_subparsers(
        dest="action", required=True
    )
    p = common(keys.add_parser("create", help="prints the new key once"))
    p.add_argument("--team", required=True, help="team id or name")
    p.add_argument("--name", default="")
    p.add_argument("--allow-model", action="append", dest="models", help="repeat; default: all")
    p.add_argument("--may-override-tier", action="store_true")
    p.add_argument("--max-tokens", type=int)

    async def create(s: Any, a: argparse.Namespace) -> dict[str, Any]:
        k = await admin_ops.create_key(
            s,
            a.team,
            name=a.name,
            allowed_models=a.models,
            may_override_tier=a.may_override_tier,
            max_tokens_ceiling=a.max_tokens,
        )
        return {"id": k.id, "key": k.key, "team_id": k.team_id, "note": "shown once: store it now"}

    p.set_defaults(func=lambda a: _run_db(lambda s: create(s, a), a))
    p = common(keys.add_parser("list"))
    p.add_argument("--team")
    p.set_defaults(func=lambda a: _run_db(lambda s: admin_ops.list_keys(s, a.team), a))
    p = common(keys.add_parser("revoke"))
    p.add_argument("key", help="key id or display prefix")
    p.add_argument(
        "--redis-url", help="also tell running gateways at once (default: $TIERGATE_REDIS_URL)"
    )
    p.set_defaults(func=_revoke)

    budgets = parser("budgets", "set and list budgets").add_subparsers(dest="action", required=True)
    p = common(budgets.add_parser("set"))
    p.add_argument("--scope", choices=("team", "key"), required=True)
    p.add_argument("--id", dest="scope_id", required=True, help="team id/name or key id")
    p.add_argument("--period", choices=("day", "week", "month", "total"), required=True)
    p.add_argument("--limit-usd", required=True)
    p.add_argument(
        "--alert-at", type=float, action="append", help="soft threshold fraction; repeat"
    )
    p.add_argument("--downgrade-at", type=float)
    p.set_defaults(
        func=lambda a: _run_db(
            lambda s: admin_ops.set_budget(
                s, a.scope, a.scope_id, a.period, a.limit_usd, a.alert_at, a.downgrade_at
            ),
            a,
        )
    )
    p = common(budgets.add_parser("list"))
    p.set_defaults(func=lambda a: _run_db(admin_ops.list_budgets, a))

    limits = parser("limits", "rate limits per key").add_subparsers(dest="action", required=True)
    p = common(limits.add_parser("set"))
    p.add_argument("key_id")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.set_defaults(
        func=lambda a: _run_db(lambda s: admin_ops.set_limits(s, a.key_id, a.rpm, a.tpm), a)
    )

    spend = parser("spend", "spend reports and the savings figure").add_subparsers(
        dest="action", required=True
    )
    p = common(spend.add_parser("report"))
    p.add_argument(
        "--group-by", default="team", help="comma list of: team,key,model,option,backend,day"
    )
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--csv", action="store_true")
    p.set_defaults(
        func=lambda a: _run_db(
            lambda s: admin_ops.spend_report(
                s, [g for g in a.group_by.split(",") if g], _time(a.since), _time(a.until)
            ),
            a,
        )
    )
    p = common(spend.add_parser("savings"))
    p.add_argument("--since")
    p.add_argument("--until")
    p.set_defaults(
        func=lambda a: _run_db(lambda s: admin_ops.savings(s, _time(a.since), _time(a.until)), a)
    )
