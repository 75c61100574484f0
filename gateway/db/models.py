"""Tables. Money is BigInteger nano-dollars; times are UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    may_override_tier: Mapped[bool] = mapped_column(Boolean, default=False)
    max_tokens_ceiling: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("scope", "scope_id", "period", name="uq_budget_scope_period"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8))  # "key" | "team"
    scope_id: Mapped[str] = mapped_column(String(64), index=True)
    period: Mapped[str] = mapped_column(String(8))  # day | week | month | total
    limit_nanos: Mapped[int] = mapped_column(BigInteger)
    soft_thresholds: Mapped[list[float]] = mapped_column(JSON, default=list)
    downgrade_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RateLimit(Base):
    __tablename__ = "rate_limits"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LedgerRow(Base):
    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_ts", "ts"),
        Index("ix_ledger_team_ts", "team_id", "ts"),
        Index("ix_ledger_key_ts", "key_id", "ts"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    team_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    protocol: Mapped[str] = mapped_column(String(16))
    requested_model: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(64))
    replica: Mapped[str | None] = mapped_column(String(300), nullable=True)
    route_reason: Mapped[str] = mapped_column(String(500))
    cache_hit_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_miss_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    price_version: Mapped[str] = mapped_column(String(200))
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    hosted_equiv_nanos: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    # "client" for served requests; "shadow" for shadow-mode calls (not in client budgets).
    kind: Mapped[str] = mapped_column(String(16), default="client", server_default="client")


class LedgerDeadLetter(Base):
    """A ledger stream entry the drainer could not write: kept here, out of the way of the
    others, for an operator to inspect (``tiergate_ledger_dead_letters_total`` counts them)."""

    __tablename__ = "ledger_dead_letters"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    stream_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    error: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)  # the entry as stored in the stream (JSON text)


class InflightRequest(Base):
    """A running request's journal entry, without Redis: what it would be billed if its
    process died now, with a heartbeat (gateway/inflight.py). Rows are short-lived."""

    __tablename__ = "inflight_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen: Mapped[float] = mapped_column(Float, index=True)  # heartbeat, epoch seconds
    payload: Mapped[str] = mapped_column(Text)  # the entry (JSON text)


class RouterLabel(Base):
    """One shadow-mode label: the weak and strong options' answers judged for one request."""

    __tablename__ = "router_labels"
    __table_args__ = (Index("ix_router_labels_team_ts", "team_id", "ts"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    team_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weak: Mapped[str] = mapped_column(String(200))
    strong: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(16))
    better: Mapped[str | None] = mapped_column(String(8), nullable=True)
    weak_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    strong_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    shadow_cost_nanos: Mapped[int] = mapped_column(BigInteger)
    judge_cost_nanos: Mapped[int] = mapped_column(BigInteger)


class SchemaFloor(Base):
    """The oldest code revision that still serves on this database (expand/contract rule).

    `tiergate db upgrade` writes it after every run: the newest migration up to the
    database's revision that does not only add. Code that finds a revision it does not
    know (a rollback, an older pod mid-rollout) serves when its own head is at or after
    this floor (gateway/db/migrate.py).
    """

    __tablename__ = "schema_floor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[str] = mapped_column(String(32))
