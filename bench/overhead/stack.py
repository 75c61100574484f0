"""The processes an overhead benchmark runs against: simulator(s), the gateway, LiteLLM's proxy.

The gateway is pinned to core 0; simulators and the load generator share core 1. With
``database_url`` (and ``redis_url``) the gateway runs its whole money path: API keys,
budgets in Redis, the ledger in SQL, as in production. A local Redis or PostgreSQL server
is moved to core 1 for the run (and back after): in production they run on other machines,
and on the gateway's core each command's wake-up of the server would preempt the gateway
and be counted as its own latency.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
import yaml
from serial import LITELLM_KEY, free_port, litellm_proxy, provision, start, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SIM_MODEL = "deepseek-ai/DeepSeek-V4-Flash"
SERVICES = ("redis-server", "postgres")


def local_service_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in SERVICES:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def move_off_core(pids: list[int], core: int) -> dict[int, set[int]]:
    """Pin these processes to every core but ``core``; returns their old affinities."""
    old: dict[int, set[int]] = {}
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return old
    for pid in pids:
        try:
            before = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, (before - {core}) or before)
            old[pid] = before
        except OSError:
            continue
    return old


def restore_affinity(old: dict[int, set[int]]) -> None:
    for pid, cores in old.items():
        try:
            os.sched_setaffinity(pid, cores)
        except OSError:
            continue


class Stack:
    def __init__(
        self,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        litellm: bool = False,
        sim_args: tuple[str, ...] = ("--zero-latency",),
        external_drain: bool = False,
    ) -> None:
        self.sim_port, self.gw_port, self.ll_port = free_port(), free_port(), free_port()
        self.database_url, self.redis_url, self.litellm = database_url, redis_url, litellm
        self.sim_args = sim_args
        self.external_drain = external_drain
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway_headers: dict[str, str] = {}
        self.litellm_headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
        self.gateway: subprocess.Popen[bytes] | None = None
        self._affinity: dict[int, set[int]] = {}

    def url(self, who: str) -> str:
        port = {"direct": self.sim_port, "tiergate": self.gw_port, "litellm": self.ll_port}[who]
        return f"http://127.0.0.1:{port}"

    def headers(self, who: str) -> dict[str, str]:
        return {"tiergate": self.gateway_headers, "litellm": self.litellm_headers}.get(who, {})

    def __enter__(self) -> Stack:
        if self.database_url or self.redis_url:
            self._affinity = move_off_core(local_service_pids(), 0)
        catalog = yaml.safe_load((ROOT / "gateway" / "examples" / "demo.yaml").read_text())
        catalog["backends"]["flash-local"]["replicas"] = [self.url("direct")]
        tmp = Path(tempfile.mkdtemp())
        (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
        env = {
            **os.environ,
            "DEEPSEEK_API_KEY": "sim",
            "TIERGATE_LOG_LEVEL": "warning",
            "TIERGATE_DATABASE_URL": "none",
        }
        if self.database_url:
            env["TIERGATE_DATABASE_URL"] = self.database_url
            env["TIERGATE_REQUIRE_API_KEY"] = "true"
            if self.redis_url:
                env["TIERGATE_REDIS_URL"] = self.redis_url
                env["TIERGATE_REDIS_PREFIX"] = f"tgbench{os.getpid()}:"
            self.gateway_headers = {"Authorization": "Bearer " + provision(self.database_url)}
            if self.redis_url and self.external_drain:
                # Ledger inserts in their own process (on the client's core), not the gateway's.
                env["TIERGATE_LEDGER_DRAIN"] = "external"
                self.procs.append(
                    start([sys.executable, "-m", "gateway.cli", "ledger", "drain"], 1, env)
                )
        py = sys.executable
        sim = [py, "-m", "gateway.cli", "sim", "--mode", "vllm", "--preset", "flash"]
        sim += [*self.sim_args, "--model", SIM_MODEL, "--port", str(self.sim_port)]
        self.procs.append(start(sim, 1, env))
        serve = [py, "-m", "gateway.cli", "serve", "--config", str(tmp / "catalog.yaml")]
        self.gateway = start([*serve, "--port", str(self.gw_port)], 0, env)
        self.procs.append(self.gateway)
        if self.litellm:
            self.procs.append(litellm_proxy(self.sim_port, self.ll_port, env))
        try:
            wait_ready(self.url("direct") + "/health")
            wait_ready(self.url("tiergate") + "/healthz")
            self._wait_routable()
            if self.litellm:
                wait_ready(self.url("litellm") + "/health/liveliness", timeout=300)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_routable(self, timeout: float = 30.0) -> None:
        """Until the gateway's first health poll has seen the replica, requests would spill."""
        body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.post(
                self.url("tiergate") + "/v1/chat/completions",
                json={**body, "max_tokens": 1},
                headers=self.gateway_headers,
                timeout=10,
            )
            if r.status_code == 200 or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        restore_affinity(self._affinity)
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def direct_body(body: dict[str, object]) -> dict[str, object]:
    """The request the gateway would send upstream: the simulator's model, thinking off."""
    return {**body, "model": SIM_MODEL, "chat_template_kwargs": {"thinking": False}}
