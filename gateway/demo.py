"""``tiergate demo``: the whole product on one machine with no servers and no API keys.

Starts simulated V4-Flash replicas (two), a V4-Pro replica and a simulated hosted
DeepSeek API, starts the gateway on the demo catalog, sends a mixed workload through the
official ``openai`` client (retired names, pinned tiers, ``auto``, streaming, a multi-turn
session that hits the prefix cache, a Flash outage that spills to the hosted API) and
prints what was served and what it cost, beside what hosted Pro would have charged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import select

from engines.asgi_thread import BackgroundServer, free_port
from gateway import admin_ops
from gateway.accounting import Settlement
from gateway.app import create_app
from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.db.models import LedgerRow
from gateway.settings import EXAMPLES, Settings
from policies.catalog import Catalog, VllmBackend, parse_catalog
from policies.pricing import PriceBook, usd_text
from policies.usage import Usage

DEMO_CONFIG = EXAMPLES / "demo.yaml"
PHYSICS = (
    "A 2.0 kg block slides down a frictionless incline of angle 30 degrees from a height of 5.0 m, "
    "then compresses a spring of constant 400 N/m. Find the maximum compression of the spring.\n"
    "A. 0.50 m\nB. 0.70 m\nC. 1.0 m\nD. 1.2 m\nE. 1.4 m"
)
SYSTEM_PROMPT = (
    "You are the support assistant of a company that sells routing gateways. "
    "Answer precisely, cite the relevant policy section, and keep answers short. " * 40
)


@dataclass(frozen=True, slots=True)
class Sent:
    label: str
    model: str
    route: str


def _localize(data: dict[str, Any]) -> dict[str, Any]:
    """Point every backend of a catalog document at a free loopback port."""
    for spec in data["backends"].values():
        if spec["kind"] == "vllm":
            spec["replicas"] = [f"http://127.0.0.1:{free_port()}" for _ in spec["replicas"]]
        else:
            spec["base_url"] = f"http://127.0.0.1:{free_port()}"
    return data


@contextmanager
def simulators(catalog: Catalog, *, latency_scale: float) -> Iterator[dict[str, list[str]]]:
    """Start one simulator per replica URL in the catalog, and one per hosted API."""
    from engines.sim.config import SimConfig
    from engines.sim.runner import SimServer

    urls: dict[str, list[str]] = {}
    with ExitStack() as stack:
        for name, spec in catalog.backends.items():
            if isinstance(spec, VllmBackend):
                preset = "pro" if spec.tier == "pro" else "flash"
                for i, url in enumerate(spec.replicas):
                    cfg = SimConfig.preset(
                        preset,
                        model=spec.served_model,
                        replica_id=f"{name}-{i}",
                        max_model_len=spec.max_model_len,
                    ).scaled(latency_scale)
                    stack.enter_context(SimServer(cfg, port=_port(url)))
                    urls.setdefault(name, []).append(url)
            else:
                cfg = SimConfig.preset("hosted", replica_id=name).scaled(latency_scale)
                stack.enter_context(SimServer(cfg, port=_port(spec.base_url)))
                urls[name] = [spec.base_url]
        yield urls


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def _workload(client: Any) -> list[Sent]:
    """A small, mixed day of traffic. Returns what was sent and the route the gateway chose."""
    sent: list[Sent] = []

    def call(label: str, model: str, messages: list[dict[str, Any]], **kw: Any) -> None:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=kw.pop("max_tokens", 64), **kw
        )
        if kw.get("stream"):
            for _ in raw.parse():
                pass
        else:
            raw.parse()
        sent.append(Sent(label, model, raw.headers.get("x-tiergate-route", "?")))

    user = [{"role": "user", "content": "Summarise our refund policy in one line."}]
    for _ in range(6):
        call("retired name deepseek-chat", "deepseek-chat", user)
    for _ in range(3):
        call("retired name deepseek-reasoner", "deepseek-reasoner", user)
    call("auto, easy", "auto", [{"role": "user", "content": "Write a two-line thank-you note."}])
    call(
        "auto, asks to reason",
        "auto",
        [{"role": "user", "content": "Explain step by step why ice floats."}],
    )
    call("auto, hard", "auto", [{"role": "user", "content": PHYSICS}])
    call("pinned Pro", "deepseek-v4-pro", user, extra_body={"thinking": {"type": "disabled"}})
    call(
        "streaming", "deepseek-v4-flash", user, stream=True, stream_options={"include_usage": True}
    )
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn in range(5):
        history.append(
            {"role": "user", "content": f"Question {turn}: which section covers refunds?"}
        )
        call("multi-turn session", "deepseek-chat", history)
        history.append({"role": "assistant", "content": f"Section {turn + 3}."})
    return sent


def _flash_outage(client: Any, replica_urls: list[str]) -> list[Sent]:
    """Make every Flash replica fail; the gateway spills to the hosted API and says why."""
    for url in replica_urls:
        httpx.post(url + "/sim/control", json={"fail_rate": 1.0, "fail_status": 503})
    sent = []
    try:
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="deepseek-chat",
                messages=[{"role": "user", "content": "Status of my order?"}],
                max_tokens=32,
            )
            raw.parse()
            sent.append(
                Sent("flash replicas down", "deepseek-chat", raw.headers["x-tiergate-route"])
            )
    finally:
        for url in replica_urls:
            httpx.post(url + "/sim/control", json={"fail_rate": 0.0})
    return sent


async def _provision(url: str) -> str:
    """A team with a daily budget and one key, as an admin would set them up."""
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as s:
            await admin_ops.create_team(s, "demo-team")
            await admin_ops.set_budget(s, "team", "demo-team", "day", "5", [0.5, 0.8])
            key = await admin_ops.create_key(s, "demo-team", name="demo")
    finally:
        await engine.dispose()
    return key.key


async def _ledger(url: str) -> list[Settlement]:
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:
            rows = (await session.scalars(select(LedgerRow).order_by(LedgerRow.id))).all()
    finally:
        await engine.dispose()
    fields = [f.name for f in dataclasses.fields(Settlement)]
    return [
        Settlement(**{f: getattr(r, f) for f in fields} | {"ts": r.ts.replace(tzinfo=UTC)})
        for r in rows
    ]


def _table(settled: list[Settlement], book: PriceBook) -> str:
    rows: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    for s in settled:
        usage = Usage(s.cache_hit_tokens, s.cache_miss_tokens, s.output_tokens, s.reasoning_tokens)
        pro = book.hosted_rate("pro", s.ts)
        r = rows[f"{s.tier}/{s.mode}/{s.backend}"]
        r[0] += 1
        r[1] += s.cache_hit_tokens
        r[2] += s.cache_miss_tokens
        r[3] += s.output_tokens
        r[4] += s.cost_nanos
        r[5] += pro.cost_nanos(usage) if pro else 0
    header = (
        f"{'option':34} {'reqs':>5} {'hit':>8} {'miss':>8} {'output':>8} "
        f"{'cost $':>14} {'hosted Pro $':>15}"
    )
    lines = [header, "-" * len(header)]
    total = [0] * 6
    for label in sorted(rows):
        r = rows[label]
        total = [a + b for a, b in zip(total, r, strict=True)]
        lines.append(_row(label, r))
    lines.append("-" * len(header))
    lines.append(_row("total", total))
    if total[5]:
        saved = 1 - total[4] / total[5]
        lines.append(f"\nsaved vs sending everything to hosted Pro: {saved:.1%}")
        lines.append(
            "(hosted Pro priced from the catalog at each request's time: cache hits, misses and\n"
            " output separately, peak windows included)"
        )
    return "\n".join(lines)


def _row(label: str, r: list[int]) -> str:
    cost, pro = usd_text(r[4]), usd_text(r[5])
    return f"{label:34} {r[0]:>5} {r[1]:>8} {r[2]:>8} {r[3]:>8} {cost:>14} {pro:>15}"


def run_demo(config: Path = DEMO_CONFIG, *, latency_scale: float = 0.05, port: int = 0) -> int:
    import openai

    os.environ.setdefault("DEEPSEEK_API_KEY", "sim-key")
    workdir = Path(tempfile.mkdtemp(prefix="tiergate-demo-"))
    db_url = f"sqlite+aiosqlite:///{workdir}/ledger.db"
    upgrade(db_url)  # the explicit migration step, as `tiergate db upgrade` does
    api_key = asyncio.run(_provision(db_url))
    try:
        catalog = parse_catalog(_localize(yaml.safe_load(config.read_text())), source=str(config))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        print(f"tiergate demo: cannot use {config}: {exc}", file=sys.stderr)
        return 2
    settings = Settings(config=config, log_level="warning", log_json=True, database_url=db_url)
    app = create_app(settings, catalog=catalog)
    with (
        simulators(catalog, latency_scale=latency_scale) as urls,
        BackgroundServer(app, port=port or None) as gw,
    ):
        print(f"gateway on {gw.base_url}; simulated backends: {dict(urls)}\n")
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0)
        sent = _workload(client)
        sent += _flash_outage(client, urls.get("flash-local", []))
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for s in sent:
        seen[(s.label, s.route)] += 1
    print("what was sent -> where the gateway sent it (and why)")
    for (label, route), n in seen.items():
        print(f"  {n:>2} x {label:32} -> {route}")
    print()
    # The gateway has stopped and flushed its ledger: the table is read back from it.
    settled = asyncio.run(_ledger(db_url))
    print(_table(settled, PriceBook(catalog)))
    print(f"\nledger: {db_url} ({len(settled)} rows)")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    return run_demo(Path(args.config), latency_scale=args.latency_scale, port=args.port)


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="offline demo: simulated replicas + hosted API, mixed workload")
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument(
        "--latency-scale",
        type=float,
        default=0.05,
        help="multiply the simulators' V4-like latencies (1.0 = realistic, 0 = none)",
    )
    p.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    p.set_defaults(func=_cmd)


if __name__ == "__main__":
    sys.exit(run_demo())
