"""Typed access to what the lifespan put on the app (no globals, nothing built at import)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from starlette.requests import Request

from engines.base import Engine
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.settings import Settings
from policies.catalog import Catalog


@dataclass(slots=True)
class AppState:
    settings: Settings
    catalog: Catalog
    metrics: Metrics
    session: aiohttp.ClientSession
    engines: dict[str, Engine]
    pipeline: Pipeline


def state_of(request: Request) -> AppState:
    st: AppState = request.app.state.tiergate
    return st


def pipeline_of(request: Request) -> Pipeline:
    return state_of(request).pipeline


def settings_of(request: Request) -> Settings:
    return state_of(request).settings
