"""The real thing, small: simulator processes' servers on loopback and the gateway in front.

Simulators run in zero-latency mode; each test module gets the gateway on a free port with
the demo catalog pointed at them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from engines.asgi_thread import BackgroundServer
from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from gateway.accounting import OpenAccounting, Settlement
from gateway.app import create_app
from gateway.settings import Settings
from policies.catalog import Catalog, parse_catalog

DEMO = Path(__file__).resolve().parents[2] / "gateway" / "examples" / "demo.yaml"


@dataclass
class Sims:
    flash: list[str]
    pro: list[str]
    hosted: str

    def control(self, url: str, **body: Any) -> None:
        httpx.post(url + "/sim/control", json=body, timeout=5).raise_for_status()

    def reset(self) -> None:
        for url in [*self.flash, *self.pro, self.hosted]:
            self.control(
                url,
                healthy=True,
                fail_rate=0.0,
                fail_mode="",
                parallel_tool_calls=1,
                interleave_tool_calls=False,
            )


@pytest.fixture(scope="session")
def sims() -> Iterator[Sims]:
    servers = [
        SimServer(
            SimConfig.preset(
                "flash", model="deepseek-ai/DeepSeek-V4-Flash", replica_id="flash-0"
            ).zero_latency()
        ),
        SimServer(
            SimConfig.preset(
                "flash", model="deepseek-ai/DeepSeek-V4-Flash", replica_id="flash-1"
            ).zero_latency()
        ),
        SimServer(
            SimConfig.preset(
                "pro", model="deepseek-ai/DeepSeek-V4-Pro", replica_id="pro-0"
            ).zero_latency()
        ),
        SimServer(SimConfig.preset("hosted", replica_id="hosted").zero_latency()),
    ]
    for s in servers:
        s.start()
    try:
        yield Sims(
            [servers[0].base_url, servers[1].base_url], [servers[2].base_url], servers[3].base_url
        )
    finally:
        for s in servers:
            s.stop()


def demo_catalog(sims: Sims, **routing: Any) -> Catalog:
    data = yaml.safe_load(DEMO.read_text())
    data = copy.deepcopy(data)
    data["backends"]["flash-local"]["replicas"] = sims.flash
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    data["routing"].update(routing)
    return parse_catalog(data)


@dataclass
class Gateway:
    url: str
    accounting: OpenAccounting
    app: Any = None

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="test", max_retries=0, **kw)

    def settled(self) -> list[Settlement]:
        """Settlements so far, once those of the answers already received have ended.

        A non-stream answer is sent before its settlement (gateway/settled.py); the
        pipeline counts the settlements still running.
        """
        pipeline = self.app.state.tiergate.pipeline
        deadline = time.monotonic() + 10
        while pipeline.settling and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not pipeline.settling, "settlements did not finish within 10 s"
        return self.accounting.settled


def start_gateway(
    catalog: Catalog, accounting: OpenAccounting | None = None, **settings: Any
) -> tuple[BackgroundServer, Gateway]:
    """A gateway on a loopback port with in-memory accounting (this one, if given)."""
    accounting = accounting or OpenAccounting()

    async def factory(*_: Any) -> OpenAccounting:
        return accounting

    app = create_app(
        Settings(**{"log_level": "warning", "log_json": True, **settings}),
        catalog=catalog,
        accounting_factory=factory,
    )
    server = BackgroundServer(app).start()
    return server, Gateway(server.base_url, accounting, app)


@pytest.fixture(scope="module")
def gateway(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims))
    yield gw
    server.stop()


@pytest.fixture(scope="module")
def hosted_first(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims, backend_preference=["hosted", "self_hosted"]))
    yield gw
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    mp.setenv("DEEPSEEK_API_KEY", "sim-key")
    yield mp
    mp.undo()


@pytest.fixture(autouse=True)
def _reset_sims(sims: Sims) -> Iterator[None]:
    yield
    sims.reset()
