"""All process settings in one pydantic-settings class, read through ``get_settings()``.

Environment variables use the ``TIERGATE_`` prefix (``TIERGATE_CONFIG``,
``TIERGATE_REDIS_URL``...). Upstream API keys are read from the environment variables the
catalog names, never from the catalog file itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Example catalogs shipped inside the package (the default catalog is the simulated demo).
EXAMPLES = Path(__file__).resolve().parent / "examples"

# Settings where an empty value means something of its own: no database, no spool file
# (settlements kept in memory), no Redis key prefix. Any other one set to "" (an env var
# like ``TIERGATE_ROUTER_WEIGHTS=``) means unset, its default applies.
EMPTY_MEANS_SOMETHING = frozenset({"database_url", "spool_dir", "redis_prefix"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIERGATE_", extra="ignore")

    config: Path = Field(default=EXAMPLES / "demo.yaml", description="catalog YAML file")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool | None = None
    log_prompts: bool = False
    # A pair model from `tiergate router train --data` for `auto`; none: the generic router.
    router_weights: Path | None = None

    database_url: str = "sqlite+aiosqlite:///./var/tiergate.db"
    redis_url: str | None = None
    redis_prefix: str = "tg:"
    # What requests do while Redis is unreachable: "closed" refuses them with 503,
    # "open" serves them with per-process budgets and rate limits (see docs/money.md).
    redis_failure_mode: Literal["closed", "open"] = "closed"
    # Settlements made while Redis is unreachable are also kept here (gateway/spool.py), so a
    # process killed during an outage loses none; "" keeps them in memory only.
    spool_dir: str = "var/spool"
    # Connections to Redis per gateway process; past it requests wait for a free one.
    redis_max_connections: int = Field(default=512, gt=0)
    # Budget leases (docs/money.md): each process reserves in Redis at most this share of a
    # budget's headroom for its own requests, which then reserve in process; 0 turns them off
    # and every request reserves in Redis.
    budget_lease_share: float = Field(default=0.05, ge=0, lt=1)
    # A reservation lives this long unless renewed; a running request's reservation is
    # renewed every third of it, so only the reservations of a dead process expire.
    reservation_ttl_s: int = Field(default=900, ge=1)
    # With Redis, every process records its running requests there this often (what a
    # stream has sent so far), and a request not heard of for inflight_orphan_s belongs to
    # a dead process: another process settles it (gateway/inflight.py, docs/money.md).
    inflight_interval_s: float = Field(default=2.0, gt=0)
    inflight_orphan_s: float = Field(default=60.0, gt=0)
    ledger_claim_idle_ms: int = Field(default=30_000, gt=0)
    # With Redis: "inline" drains the ledger stream into the database inside each gateway
    # process; "external" leaves it to `tiergate ledger drain` processes, so the batched
    # inserts never share the request path's event loop.
    ledger_drain: Literal["inline", "external"] = "inline"
    # /readyz answers 503 while the oldest settled ledger event not yet in the database is
    # older than this (a stalled drainer or database); 0 leaves the ledger out of readiness.
    ledger_max_lag_s: float = Field(default=300.0, ge=0)
    master_key: SecretStr | None = None
    # When set, /metrics needs 'Authorization: Bearer <metrics_key>' (it shows per-team spend).
    metrics_key: SecretStr | None = None
    require_api_key: bool = False
    budget_timezone: str = "UTC"

    graceful_shutdown_s: int = Field(default=30, gt=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_messages: int = Field(default=10_000, gt=0)
    # Image, audio, video, file and document parts, in every protocol (V4 reads text only):
    # "note" replaces each with a visible text note and counts it, "reject" refuses the
    # request with a 400 (gateway/media.py, docs/protocols.md).
    media_policy: Literal["note", "reject"] = "note"
    # Connection limits of `tiergate serve` (gateway/http_guard.py, uvicorn); see
    # docs/reliability.md for what they protect against and what needs a reverse proxy.
    max_header_bytes: int = Field(default=64 * 1024, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    # From a request's head to the end of its body (a body shorter than its Content-Length).
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_s: int = Field(default=5, gt=0)
    limit_concurrency: int | None = Field(default=None, gt=0)
    upstream_connections: int = Field(default=1024, gt=0)
    # How long an idle upstream connection is reused: keep it under the upstreams'
    # keep-alive (vLLM closes idle connections after 5 s), see docs/upstreams.md.
    upstream_keepalive_s: float = Field(default=4.0, gt=0)

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        # checked here, not at the first request under a budget
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("not a known IANA time zone, e.g. UTC or Europe/Paris") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, values: Any) -> Any:
        """An empty value (env var set to "") is the default, except where "" means something
        (``EMPTY_MEANS_SOMETHING``): ``TIERGATE_ROUTER_WEIGHTS=`` is the shipped router, not
        the weights file "."."""
        if not isinstance(values, dict):
            return values
        return {
            k: v
            for k, v in values.items()
            if not (isinstance(v, str) and v == "" and k not in EMPTY_MEANS_SOMETHING)
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
