"""Health, readiness, model listing and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.keys import master_key_matches
from gateway.state import AppState, state_of
from policies.errors import AuthenticationFailed, UnknownModel

router = APIRouter()


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    # Clients probe the base URL before their first request (Claude Code sends HEAD /).
    return _json({"name": "tiergate", "docs": "/docs"})


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return _json({"status": "ok"})


async def _ledger(st: AppState) -> dict[str, object]:
    """How far the ledger is behind; ``ok`` is false past ``TIERGATE_LEDGER_MAX_LAG_S``."""
    try:
        events, age = await asyncio.wait_for(st.pipeline.accounting.ledger_lag(), timeout=2.0)
    except Exception as exc:  # Redis away: the budget guard answers for that, not readiness
        return {"ok": True, "lag_events": None, "lag_seconds": None, "error": type(exc).__name__}
    limit = st.settings.ledger_max_lag_s
    return {
        "ok": not limit or age <= limit,
        "lag_events": events,
        "lag_seconds": round(age, 1),
        "max_lag_seconds": limit or None,
    }


@router.get(
    "/readyz",
    summary="Readiness: every tier has at least one usable backend and the ledger keeps up",
)
async def readyz(request: Request) -> Response:
    st = state_of(request)
    backends = {name: await engine.health() for name, engine in st.engines.items()}
    tiers = {
        tier: any(backends.get(b, False) for b in st.catalog.backends_for_tier(tier))
        for tier in st.catalog.tiers
    }
    ledger = await _ledger(st)
    ready = all(tiers.values()) and bool(ledger["ok"])
    return _json(
        {
            "status": "ready" if ready else "not ready",
            "tiers": tiers,
            "backends": backends,
            "ledger": ledger,
        },
        200 if ready else 503,
    )


def _model_item(st: AppState, name: str, now: int) -> dict[str, object]:
    entry = st.catalog.lookup_model(name)
    item: dict[str, object] = {
        "id": name,
        "object": "model",
        "created": now,
        "owned_by": "tiergate",
    }
    if entry is not None:
        item["tier"] = entry.tier
        if entry.thinking is not None:
            item["thinking"] = entry.thinking
        if entry.retired is not None:
            item["retired_upstream"] = entry.retired.isoformat()
    else:
        item["passthrough"] = True
    return item


@router.get("/v1/models", summary="Models and aliases this gateway serves")
async def list_models(request: Request) -> Response:
    st = state_of(request)
    caller = await st.pipeline.authenticate(request.headers)
    allowed = caller.allowed_models
    now = int(time.time())
    data = [
        _model_item(st, name, now)
        for name in st.catalog.public_model_names()
        if allowed is None or name in allowed
    ]
    return _json({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}", summary="One model or alias this gateway serves")
async def get_model(request: Request, model_id: str) -> Response:
    st = state_of(request)
    caller = await st.pipeline.authenticate(request.headers)
    allowed = caller.allowed_models
    public = st.catalog.public_model_names()
    # A name the catalog matches (e.g. by a claude-* glob) is served even when not listed.
    served = model_id in public or st.catalog.lookup_model(model_id) is not None
    if not model_id:
        err = UnknownModel(f"no route GET {request.url.path}; paths take no trailing slash")
        err.code = "not_found"
        st.pipeline.reject("openai", err)
        raise err
    if not served or (allowed is not None and model_id not in allowed):
        err = UnknownModel(f"model '{model_id}' is not served here; see GET /v1/models")
        st.pipeline.reject("openai", err)
        raise err
    return _json(_model_item(st, model_id, int(time.time())))


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    required = state_of(request).settings.metrics_key
    if required is not None:
        auth = request.headers.get("authorization", "")
        presented = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not master_key_matches(presented, required.get_secret_value()):
            raise AuthenticationFailed(
                "/metrics: wrong or missing metrics key (Authorization: Bearer <metrics key>)"
            )
    return Response(
        generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
