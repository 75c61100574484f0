"""``tiergate db|teams|keys|budgets|limits|spend``: administration from the command line."""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import admin_ops
from gateway.cli_common import TIME_FORMAT, CliError, check_database, iso_time, reported
from gateway.cli_common import database_url as _checked_url
from gateway.settings import Settings


def _url(args: argparse.Namespace) -> str:
    url: str = args.database_url or Settings().database_url
    return url


def _run_db(
    fn: Callable[[Any], Awaitable[Any]],
    args: argparse.Namespace,
    columns: list[str] | None = None,
    empty: str = "",
) -> int:
    """Run ``fn`` on a session of the command's database and print what it returns: the one
    place the admin commands open the database, so a missing, unreachable or un-migrated one
    is one ``tiergate: ...`` line and exit status 2 (``reported``), never a traceback.
    ``columns``: the header printed over an empty list; ``empty``: a line for the person
    reading, on stderr, when the list is empty (stdout keeps the bare header)."""
    return reported(lambda a: _run_checked(fn, a, columns, empty))(args)


def _run_checked(
    fn: Callable[[Any], Awaitable[Any]],
    args: argparse.Namespace,
    columns: list[str] | None,
    empty: str,
) -> int:
    from gateway.db.engine import make_engine, make_sessions

    url = _checked_url(args)

    async def go() -> Any:
        engine = make_engine(url)
        try:
            async with make_sessions(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    result = asyncio.run(go())
    _print(result, getattr(args, "csv", False), columns)
    if empty and result == []:
        print(empty, file=sys.stderr)
    return 0


def _print(result: Any, as_csv: bool, columns: list[str] | None = None) -> None:
    """A list of rows as a table (CSV with ``as_csv``), anything else as JSON; money, a
    ``Decimal`` of dollars, in fixed notation with nine decimals in either."""
    cell = admin_ops.cell
    if isinstance(result, list) and not result and columns:
        result_cols = columns
    elif isinstance(result, list) and result and isinstance(result[0], dict):
        result_cols = list(result[0])
    else:
        result_cols = []
    if as_csv and isinstance(result, list):
        if result_cols:
            w = csv.DictWriter(sys.stdout, fieldnames=result_cols)
            w.writeheader()
            w.writerows({k: cell(v) for k, v in r.items()} for r in result)
        return
    if result_cols:
        cols = result_cols
        # over no rows (given their columns) the header alone, as over some, never a bare []
        rows = [[str(cell(r.get(c))) for c in cols] for r in result]
        widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        return
    print(admin_ops.dumps(result, indent=True).decode())


def _db(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url

    from gateway.db import migrate

    if args.action == "downgrade" and not args.revision:
        raise CliError(
            "db downgrade needs the revision to go down to, e.g. `tiergate db downgrade 0003`; "
            "`tiergate db downgrade base` drops every tiergate table and its data"
        )
    url = _url(args)
    if url in ("", "none"):
        # The gateway runs without a database then (no keys, no ledger): nothing to migrate.
        print("no database configured (TIERGATE_DATABASE_URL is empty): nothing to migrate")
        return 0
    check_database(url, migrated=False)
    try:
        if args.action == "upgrade":
            migrate.upgrade(url, args.revision or "head")
        elif args.action == "downgrade":
            migrate.downgrade(url, args.revision)
    except CommandError as exc:
        raise CliError(f"db {args.action}: {exc}") from None
    current = migrate.current_revision(url) or "none"
    where = make_url(url).render_as_string(hide_password=True)
    print(f"{where}: revision {current} (head {migrate.head_revision()})")
    return 0


async def _tell_gateways(args: argparse.Namespace, message: str) -> None:
    """Publish ``message`` (a revoked key's hash, or ``ALL_KEYS``) to running gateways over
    Redis, when there is one; they act at once instead of when their 5 s cache runs out."""
    redis_url = args.redis_url or Settings().redis_url
    if not redis_url:
        return
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from gateway.money import REVOKED_CHANNEL

    r = Redis.from_url(redis_url)
    try:
        await r.publish(Settings().redis_prefix + REVOKED_CHANNEL, message)
    except (RedisError, OSError) as exc:
        print(
            f"tiergate: warning: saved, but running gateways were not told ({exc}); "
            "they see the change within 5 s",
            file=sys.stderr,
        )
    finally:
        await r.aclose()


def _revoke(args: argparse.Namespace) -> int:
    async def go(s: Any) -> dict[str, Any]:
        digest = await admin_ops.revoke_key(s, args.key)
        await _tell_gateways(args, digest)
        return {"key": args.key, "revoked": True}

    return _run_db(go, args)


def _then_reload(change: Callable[[Any], Awaitable[Any]], args: argparse.Namespace) -> int:
    """A budget or limit change, then every running gateway reloads its keys."""
    from gateway.money import ALL_KEYS

    async def go(s: Any) -> Any:
        row = await change(s)
        await _tell_gateways(args, ALL_KEYS)
        return row

    return _run_db(go, args)


def _spend_report(args: argparse.Namespace) -> int:
    groups = [g for g in args.group_by.split(",") if g]

    def columns() -> list[str] | None:
        try:
            return admin_ops.spend_columns(groups)
        except admin_ops.Unprocessable:
            return None  # reported by spend_report itself, after the database checks

    return _run_db(
        lambda s: admin_ops.spend_report(s, groups, args.since, args.until), args, columns()
    )


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def parser(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        return p

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--database-url", help="default: $TIERGATE_DATABASE_URL or the embedded SQLite file"
        )
        return p

    def tell(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--redis-url", help="also tell running gateways at once (default: $TIERGATE_REDIS_URL)"
        )

    def window(p: argparse.ArgumentParser) -> None:
        p.add_argument("--since", type=iso_time, help=f"from this time on: {TIME_FORMAT}")
        p.add_argument("--until", type=iso_time, help=f"before this time: {TIME_FORMAT}")

    db = common(parser("db", "database migrations (run before serving; the app never migrates)"))
    db_actions = db.add_subparsers(dest="action", required=True)
    for action, revision in (
        ("upgrade", "revision to go up to (default: head)"),
        ("downgrade", "revision to go down to (required; `base` drops every tiergate table)"),
        ("current", None),
    ):
        p = db_actions.add_parser(action)
        # also after the action; SUPPRESS keeps a --database-url given before it
        p.add_argument(
            "--database-url", default=argparse.SUPPRESS, help="as before the action: either place"
        )
        if revision:
            p.add_argument("revision", nargs="?", help=revision)
        p.set_defaults(func=reported(_db), revision=None)

    teams = parser("teams", "create and list teams").add_subparsers(dest="action", required=True)
    p = common(teams.add_parser("create"))
    p.add_argument("name")
    p.set_defaults(func=lambda a: _run_db(lambda s: admin_ops.create_team(s, a.name), a))
    p = common(teams.add_parser("list"))
    p.set_defaults(
        func=lambda a: _run_db(
            admin_ops.list_teams,
            a,
            admin_ops.TEAM_COLUMNS,
            "no teams yet: create one with `tiergate teams create NAME`",
        )
    )

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
    p.set_defaults(
        func=lambda a: _run_db(
            lambda s: admin_ops.list_keys(s, a.team),
            a,
            admin_ops.KEY_COLUMNS,
            f"no API keys{f' for team {a.team}' if a.team else ''} yet: "
            f"create one with `tiergate keys create --team {a.team or 'TEAM'}`",
        )
    )
    p = common(keys.add_parser("revoke"))
    p.add_argument("key", help="key id or display prefix")
    tell(p)
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
    tell(p)
    p.set_defaults(
        func=lambda a: _then_reload(
            lambda s: admin_ops.set_budget(
                s, a.scope, a.scope_id, a.period, a.limit_usd, a.alert_at, a.downgrade_at
            ),
            a,
        )
    )
    p = common(budgets.add_parser("list"))
    p.set_defaults(
        func=lambda a: _run_db(
            admin_ops.list_budgets,
            a,
            admin_ops.BUDGET_COLUMNS,
            "no budgets yet: set one with `tiergate budgets set --scope team --id TEAM "
            "--period month --limit-usd 100`",
        )
    )

    limits = parser("limits", "rate limits per key").add_subparsers(dest="action", required=True)
    p = common(limits.add_parser("set"))
    p.add_argument("key_id")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    tell(p)
    p.set_defaults(
        func=lambda a: _then_reload(lambda s: admin_ops.set_limits(s, a.key_id, a.rpm, a.tpm), a)
    )

    spend = parser("spend", "spend reports and the savings figure").add_subparsers(
        dest="action", required=True
    )
    p = common(spend.add_parser("report"))
    p.add_argument(
        "--group-by", default="team", help="comma list of: team,key,model,option,backend,day"
    )
    window(p)
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=_spend_report)
    p = common(spend.add_parser("savings"))
    window(p)
    p.set_defaults(func=lambda a: _run_db(lambda s: admin_ops.savings(s, a.since, a.until), a))
