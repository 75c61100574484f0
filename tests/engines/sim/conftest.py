"""Simulators on loopback ports, shared by the HTTP tests of this package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

FLASH = "deepseek-ai/DeepSeek-V4-Flash"
HOSTED_MODEL = "deepseek-v4-flash"
MSG = [{"role": "user", "content": "hello there"}]
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="package")
def vllm() -> Iterator[SimServer]:
    with SimServer(SimConfig.preset("flash", replica_id="r1").zero_latency()) as server:
        yield server


@pytest.fixture(scope="package")
def hosted() -> Iterator[SimServer]:
    with SimServer(SimConfig.preset("hosted", replica_id="h1").zero_latency()) as server:
        yield server


def post(
    server: SimServer,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=timeout)


def control(server: SimServer, **changes: Any) -> httpx.Response:
    return httpx.post(server.base_url + "/sim/control", json=changes, timeout=5)


def chat_path(server: SimServer) -> str:
    return "/v1/chat/completions" if server.config.mode == "vllm" else "/chat/completions"


def chat_body(server: SimServer, **extra: Any) -> dict[str, Any]:
    model = FLASH if server.config.mode == "vllm" else HOSTED_MODEL
    return {"model": model, "messages": MSG, **extra}


def sse_events(lines: list[str]) -> list[str]:
    """The payloads of ``data:`` lines."""
    return [line[6:] for line in lines if line.startswith("data: ")]
