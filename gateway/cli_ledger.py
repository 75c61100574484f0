"""``tiergate ledger drain``: write the Redis ledger stream into the database, outside the gateway.

With ``TIERGATE_LEDGER_DRAIN=external`` gateway processes only append ledger events to the
stream (inside the settle script, so the books stay exact); one or more drain processes
write them to the database in batches. Drainers share the stream's consumer group, claim
entries another drainer left pending, and insert idempotently on the request id, so any
number may run and any may be killed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from gateway.cli_common import check_database, reported
from gateway.ledger import StreamDrainer

log = structlog.get_logger("tiergate.ledger")


async def drain(database_url: str, redis_url: str, prefix: str, once: bool, claim_ms: int) -> int:
    from redis.asyncio import Redis

    from gateway.db.engine import make_engine, make_sessions
    from gateway.db.migrate import require_compatible

    await asyncio.to_thread(require_compatible, database_url)
    engine = make_engine(database_url)
    redis = Redis.from_url(redis_url)
    drainer = StreamDrainer(redis, make_sessions(engine), prefix + "ledger", claim_idle_ms=claim_ms)
    try:
        await drainer.ensure_group()
        if once:
            total = 0
            while done := await drainer.drain_once(block_ms=1):
                total += done
            print(f"wrote {drainer.written} ledger rows from {total} stream entries")
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        drainer.start()
        log.info("ledger drain started", stream=drainer.stream, consumer=drainer.consumer)
        await stop.wait()
        await drainer.stop()  # one last pass before exiting
        log.info("ledger drain stopped", written=drainer.written, failures=drainer.failures)
        return 0
    finally:
        await redis.aclose()
        await engine.dispose()


def _run(args: argparse.Namespace) -> int:
    from gateway.logging import configure_logging
    from gateway.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    database_url = args.database_url or settings.database_url
    redis_url = args.redis_url or settings.redis_url
    if not redis_url or not database_url or database_url == "none":
        print(
            "tiergate ledger drain: needs a Redis URL and a database URL"
            " (--redis-url/--database-url or TIERGATE_REDIS_URL/TIERGATE_DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    prefix = args.prefix if args.prefix is not None else settings.redis_prefix
    check_database(database_url)
    return asyncio.run(
        drain(database_url, redis_url, prefix, args.once, settings.ledger_claim_idle_ms)
    )


def add_ledger_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ledger = sub.add_parser("ledger", help="the ledger stream (Redis) and its writers")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    p = lsub.add_parser("drain", help="write the ledger stream into the database until stopped")
    p.add_argument("--database-url", help="default: TIERGATE_DATABASE_URL")
    p.add_argument("--redis-url", help="default: TIERGATE_REDIS_URL")
    p.add_argument("--prefix", help="Redis key prefix (default: TIERGATE_REDIS_PREFIX)")
    p.add_argument("--once", action="store_true", help="write what is there now, then exit")
    p.set_defaults(func=reported(_run))
