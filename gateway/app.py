"""``create_app()``: the FastAPI application and the lifespan that owns its resources.

Nothing is created at import time. The lifespan loads and validates the catalog, opens the
pooled upstream HTTP session, builds the engines and the accounting (budget store and
ledger), and closes all of them after ``yield``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engines.http import new_session
from engines.registry import build_engines
from gateway.accounting import Accounting, OpenAccounting
from gateway.catalog_file import read_catalog
from gateway.errors import error_response
from gateway.fastpath import TiergateApp, unexpected_error
from gateway.http_guard import BodyLimit, metric_protocol
from gateway.inflight import InflightJournal, hold_of
from gateway.inflight_entries import Entries, RedisEntries, RedisOrDatabase, SqlEntries
from gateway.logging import configure_logging, get_logger
from gateway.metrics import Metrics
from gateway.orphans import settle_orphan
from gateway.pipeline import Pipeline, rule_classifier
from gateway.router_service import RouterService, RouterTruth
from gateway.routes import admin as admin_routes
from gateway.routes import anthropic as anthropic_routes
from gateway.routes import openai as openai_routes
from gateway.routes import responses as responses_routes
from gateway.routes import system as system_routes
from gateway.settings import Settings, get_settings
from gateway.shadow import ShadowService
from gateway.state import AppState
from policies.catalog import Catalog
from policies.errors import InvalidRequest, ServiceUnavailable, TiergateError, UnknownModel
from policies.router import Router

log = get_logger("tiergate.app")

AccountingFactory = Callable[[Settings, Catalog, Metrics], Awaitable[Accounting]]


async def open_accounting(settings: Settings, catalog: Catalog, metrics: Metrics) -> Accounting:
    """Keys, budgets and the ledger from the configured database (and Redis, when set)."""
    if settings.database_url in ("", "none"):
        return OpenAccounting()
    from gateway.money import open_money

    return await open_money(settings, metrics)


async def open_journal(
    accounting: Accounting, pipeline: Pipeline, settings: Settings, metrics: Metrics
) -> InflightJournal | None:
    """The in-flight journal (gateway/inflight.py), in Redis when the processes share one,
    else in the database; none without a database. Without Redis, the requests a dead
    process was serving are held in this process's budgets until they are settled."""
    from gateway.budgets.memory import MemoryBudgetStore
    from gateway.money import MoneyAccounting

    if not isinstance(accounting, MoneyAccounting):
        return None
    entries: Entries = (
        SqlEntries(accounting.sessions)
        if accounting.redis is None
        else RedisOrDatabase(
            RedisEntries(accounting.redis, settings.redis_prefix), SqlEntries(accounting.sessions)
        )
    )
    journal = InflightJournal(
        entries,
        partial(settle_orphan, pipeline),
        interval_s=settings.inflight_interval_s,
        orphan_after_s=settings.inflight_orphan_s,
    )
    store = getattr(accounting, "store", None)
    if accounting.redis is None and isinstance(store, MemoryBudgetStore):

        async def hold(rid: str, entry: dict[str, Any]) -> None:
            h = hold_of(rid, entry["hold"])
            await store.adopt(rid, h.windows, h.amount_nanos)

        held = await journal.adopt(hold)
        if held:
            log.warning("budgets hold the requests of a dead gateway process", requests=held)
    journal.start()
    return journal


def _protocol(request: Request) -> str:
    path = request.url.path
    return "anthropic" if path.startswith(("/v1/messages", "/anthropic/")) else "openai"


def create_app(
    settings: Settings | None = None,
    *,
    catalog: Catalog | None = None,
    accounting_factory: AccountingFactory = open_accounting,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    # Validate the catalog before the server binds: a bad file fails start-up, loudly.
    loaded = catalog or read_catalog(settings.config)
    # The same for TIERGATE_ROUTER_WEIGHTS (WeightsError is a ConfigError), and before the
    # lifespan opens any session, so that a failure leaves nothing open.
    model_router = loaded.routing.classifier == "model"
    router = (
        Router.load(settings.router_weights) if model_router and settings.router_weights else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        session = new_session(
            limit=settings.upstream_connections, keepalive_s=settings.upstream_keepalive_s
        )
        engines = build_engines(loaded, session, metrics)
        for engine in engines.values():
            await engine.start()
        accounting = await accounting_factory(settings, loaded, metrics)
        await accounting.start()
        truth = RouterTruth(metrics) if model_router else None
        service = (
            RouterService(loaded, metrics, router, settings.router_weights)
            if model_router
            else None
        )
        pipeline = Pipeline(
            loaded,
            engines,
            accounting,
            metrics,
            classifier=service.classify if service else rule_classifier,
            routed=service.routed if service else None,
            log_prompts=settings.log_prompts,
        )
        pipeline.truth = truth
        if loaded.routing.shadow.enabled:
            pipeline.shadow = ShadowService(loaded, engines, accounting, metrics)
            pipeline.shadow.truth = truth
        pipeline.journal = await open_journal(accounting, pipeline, settings, metrics)
        app.state.tiergate = AppState(settings, loaded, metrics, session, engines, pipeline)
        try:
            yield
        finally:
            if pipeline.journal is not None:
                await pipeline.journal.close()
            if pipeline.shadow is not None:
                await pipeline.shadow.close()
            await accounting.close()
            for engine in engines.values():
                await engine.close()
            await session.close()

    app = TiergateApp(
        title="tiergate",
        version="0.1.0",
        summary="Cost-aware routing gateway for DeepSeek V4",
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
        # A redirect is no answer to a POST client: ``/v1/messages/`` is a 404 that says why.
        redirect_slashes=False,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Model requests skip FastAPI's middleware chain and router (gateway/fastpath.py).
    app.hot_routes(
        {
            "/v1/chat/completions": openai_routes.chat_completions,
            "/v1/completions": openai_routes.completions,
            "/v1/responses": responses_routes.create_response,
            **{p + "/v1/messages": anthropic_routes.messages for p in ("", "/anthropic")},
        }
    )
    app.include_router(system_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(admin_routes.router)

    @app.exception_handler(TiergateError)
    async def _tiergate_error(request: Request, exc: TiergateError) -> Response:
        return error_response(exc, _protocol(request), exc.headers.get("x-request-id"))  # type: ignore[arg-type]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        err: TiergateError
        if exc.status_code == 404:
            path = request.url.path
            hint = "; paths take no trailing slash" if path.endswith("/") and path != "/" else ""
            err = UnknownModel(f"no route {request.method} {path} on this gateway{hint}")
            err.code = "not_found"
        else:
            err = InvalidRequest(str(exc.detail))
            err.status = exc.status_code
        st = getattr(request.app.state, "tiergate", None)
        if st is not None:
            st.pipeline.reject(metric_protocol(request.url.path), err, path=request.url.path)
        return error_response(err, _protocol(request))  # type: ignore[arg-type]

    async def _database_down(request: Request, exc: Exception) -> Response:
        # The database is unreachable (the admin API and reports need it): a 503 to retry,
        # not a 500. Requests themselves keep flowing on cached keys (docs/money.md).
        err = ServiceUnavailable(
            "database unavailable: the gateway cannot reach its database right now; "
            "retry in a few seconds",
            retry_after=5,
        )
        return error_response(err, _protocol(request))  # type: ignore[arg-type]

    for kind in (OperationalError, InterfaceError):
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # A bug or an unplanned failure (a dependency timing out): the client still gets its
        # protocol's error shape, and the traceback goes to the log.
        return unexpected_error(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequest(str(exc.errors())), _protocol(request))  # type: ignore[arg-type]

    return app
