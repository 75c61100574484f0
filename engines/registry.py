"""Build one engine per catalog backend (and per pass-through model)."""

from __future__ import annotations

from typing import Any

import aiohttp

from engines.base import Engine
from engines.deepseek import DeepSeekEngine
from engines.litellm_engine import LitellmEngine
from engines.vllm import VllmEngine
from policies.catalog import Catalog, HostedBackend


def build_engines(
    catalog: Catalog, session: aiohttp.ClientSession, metrics: Any = None
) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for name, spec in catalog.backends.items():
        if isinstance(spec, HostedBackend):
            engines[name] = (
                LitellmEngine(name, hosted=spec)
                if spec.client == "litellm"
                else DeepSeekEngine(name, spec, session)
            )
        else:
            engines[name] = VllmEngine(name, spec, session, metrics=metrics)
    for name, pt in catalog.passthrough.items():
        engines[name] = LitellmEngine(name, passthrough=pt)
    return engines
