"""Async engine and session factory; plain-URL helpers for Alembic and the CLI."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession  # noqa: PLC0414 (re-export)


def async_url(url: str) -> str:
    """Accept plain URLs too: sqlite:/// -> sqlite+aiosqlite:///, postgresql:// -> +psycopg."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    """The same database for synchronous use (Alembic); psycopg URLs work both ways."""
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def ensure_sqlite_dir(url: str) -> None:
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix) :]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> AsyncEngine:
    url = async_url(url)
    ensure_sqlite_dir(url)
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if not url.startswith("sqlite"):
        kwargs.update(pool_size=10, max_overflow=10)
    return create_async_engine(url, **kwargs)


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
