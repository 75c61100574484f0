"""Engine for a pool of self-hosted vLLM replicas (OpenAI-compatible HTTP).

- Discovery: static URLs from the catalog, or DNS A records refreshed on an interval.
- Health and load: each replica's ``/health`` and ``/metrics`` (running, waiting, KV usage,
  KV-cache size from ``vllm:cache_config_info``) polled on an interval, plus the gateway's
  own in-flight count per replica.
- Circuit breaker: consecutive failures open it for a cool-down; then one request probes
  (half-open); a failure re-opens it at once, a success closes it.
- Selection: ``policies.affinity`` (prefix affinity with bounded load, or least-loaded).
- Failover: connection errors and 5xx before the first byte go to the next replica.
- Gateway-side queue (``engines.admission``): with ``max_in_flight_per_replica`` set,
  requests beyond every replica's share wait in the gateway for a free slot, up to
  ``queue_timeout_s``.
- Saturation: when every usable replica's queue is at ``max_queue_depth``, or the gateway's
  own queue holds ``max_queued`` requests, the pool reports itself saturated, and the route
  plan spills to the hosted API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from engines.admission import Admission
from engines.base import EngineRequest, EngineResponse
from engines.http import error_for_status, new_session, read_json_object, translate_errors
from engines.sse_stream import SSEStream
from engines.translate import normalize_response, vllm_body
from policies.affinity import (
    PrefixIndex,
    ReplicaView,
    cache_blocks,
    engine_name,
    order,
    per_replica,
    pick_engine,
    prefix_chain,
)
from policies.catalog import VllmBackend
from policies.errors import (
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamRequestFailed,
    UpstreamStreamError,
    UpstreamUnavailable,
)

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: vLLM's per-request choice of data-parallel engine (``OpenAIServing._get_data_parallel_rank``)
DP_RANK_HEADER = "X-data-parallel-rank"
# The gateway has no tokenizer: 256 V4 tokens are about 1 KiB of English text, so prompts
# are cut into 1 KiB blocks. The rendezvous key covers the first 8 blocks; the prefix index
# follows up to 64 (about 16k tokens) so that growing conversations keep their replica.
_BLOCK_CHARS = 1024
_KEY_BLOCKS = 8
_MAX_BLOCKS = 64

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_a(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(i[4][0]) for i in infos})


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """One engine (data-parallel rank) of a replica, as polled."""

    running: int = 0
    waiting: int = 0
    cache_tokens: int | None = None  # this engine's KV cache; None: not reported


@dataclass(frozen=True, slots=True)
class Slot:
    """A request's hold on a replica (and on one of its engines): taken when it is sent,
    given back once when it ends."""

    rank: int | None  # the engine asked for; None: no header (one engine, or unknown)
    sent: float  # monotonic time it was sent


@dataclass(slots=True)
class Replica:
    url: str
    in_flight: int = 0
    failures: int = 0
    open_until: float = 0.0
    half_open: bool = False
    healthy: bool = True
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    cache_tokens: int | None = None  # KV-cache size reported by the replica
    poll_misses: int = 0  # polls in a row that got no answer in time
    # data parallelism: the engines the replica reports, by rank, as last polled (empty:
    # one engine), and the gateway's own requests in flight per engine
    engines: tuple[EngineMetrics, ...] = ()
    engine_in_flight: dict[int, int] = field(default_factory=dict)
    # when the poll that reported ``engines`` started (monotonic), and per engine the
    # gateway's own requests sent before it that have ended since (it may have counted
    # them running); the same for the poll under way, if any
    polled_at: float = 0.0
    engine_done: dict[int, int] = field(default_factory=dict)
    polling_since: float = 0.0
    pending_done: dict[int, int] = field(default_factory=dict)
    # when the gateway last dropped the engines as wrong (a stale rank): a poll that
    # started before then may describe the replica that was there before
    engines_dropped_at: float = 0.0

    def engine_loads(self) -> list[int]:
        """Each engine's load: requests running plus waiting. Running is as polled, less
        the gateway's own requests that poll saw and that have ended since (a poll is up
        to ``poll_interval_s`` old: without this an engine looks busy with the request it
        has just finished), or the gateway's own requests in flight to it if more (they
        may have started since the poll)."""
        return [
            max(e.running - self.engine_done.get(i, 0), self.engine_in_flight.get(i, 0), 0)
            + e.waiting
            for i, e in enumerate(self.engines)
        ]

    def take(self, rank: int | None) -> Slot:
        """Count a request sent to this replica (and engine ``rank``)."""
        self.in_flight += 1
        if rank is not None:
            self.engine_in_flight[rank] = self.engine_in_flight.get(rank, 0) + 1
        return Slot(rank, time.monotonic())

    def give(self, slot: Slot) -> None:
        """Count a request as ended (once per :meth:`take`)."""
        self.in_flight -= 1
        rank = slot.rank
        if rank is None:
            return
        left = self.engine_in_flight.get(rank, 0) - 1
        if left > 0:
            self.engine_in_flight[rank] = left
        else:
            self.engine_in_flight.pop(rank, None)
        # The last poll, and the one under way, may have counted it running: not any more.
        if slot.sent < self.polled_at:
            self.engine_done[rank] = self.engine_done.get(rank, 0) + 1
        if self.polling_since > self.polled_at and slot.sent < self.polling_since:
            self.pending_done[rank] = self.pending_done.get(rank, 0) + 1

    def poll_started(self, at: float) -> None:
        self.polling_since = at
        self.pending_done = {}

    def set_engines(self, engines: tuple[EngineMetrics, ...], polled_at: float) -> None:
        """The engines as a poll that started at ``polled_at`` reported them."""
        self.engines = engines
        self.polled_at = polled_at
        # those that ended while it was under way: counted, if the snapshot was taken
        # before they ended (else the gateway's own in flight bounds the load from below)
        self.engine_done = self.pending_done if polled_at == self.polling_since else {}
        self.pending_done = {}

    def drop_engines(self) -> None:
        """Forget the engines until the next poll: requests go without a rank header."""
        self.engines = ()
        self.engine_done = {}
        self.pending_done = {}
        self.engines_dropped_at = time.monotonic()

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.open_until

    @property
    def breaker(self) -> str:
        if self.open_until > time.monotonic():
            return "open"
        return "half-open" if self.half_open else "closed"

    def record_failure(self, now: float, cooldown_s: float, threshold: int) -> None:
        self.failures += 1
        if self.half_open or self.failures >= threshold:
            self.open_until = now + cooldown_s
            self.half_open = True  # after the cool-down, one probe decides

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.half_open = False


@dataclass(frozen=True, slots=True)
class PolledMetrics:
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    cache_tokens: int | None = None  # num_gpu_blocks x block_size; None: not reported
    # per engine, by rank, when the replica reports more than one (data parallelism)
    engines: tuple[EngineMetrics, ...] = ()


_LOAD = frozenset(
    (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    )
)


def _rank_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def parse_metrics(text: str) -> PolledMetrics:
    """Load and KV-cache size from a replica's Prometheus exposition.

    A data-parallel replica reports one sample per engine (label ``engine``): requests
    running and waiting are summed over its engines, KV-cache usage is their mean (each
    engine's share of its own cache; a sum would read up to 8.0 on eight engines). The
    cache size comes from the labels of the ``vllm:cache_config_info`` info gauge
    (``num_gpu_blocks`` x ``block_size`` tokens), the largest single engine's: each engine
    caches on its own, so a prefix is cached in one engine, not across the replica.

    With more than one engine, ``engines`` lists each one's load and cache size, in the
    order of their labels (numerically): position ``i`` is data-parallel rank ``i``, the
    value of the ``X-data-parallel-rank`` header that selects it.
    """
    values: dict[str, list[float]] = {}
    per: dict[str, dict[str, float]] = {}  # engine label -> load metric -> value
    sizes: dict[str, int] = {}  # engine label -> cache tokens
    tokens: int | None = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            engine = s.labels.get("engine", "")
            if s.name in _LOAD:
                values.setdefault(s.name, []).append(s.value)
                m = per.setdefault(engine, {})
                m[s.name] = m.get(s.name, 0.0) + s.value
            elif s.name == "vllm:cache_config_info":
                try:
                    t = int(s.labels["num_gpu_blocks"]) * int(s.labels["block_size"])
                except (KeyError, ValueError):  # "None" before the engine has profiled
                    continue
                if t > 0:
                    tokens = max(tokens or 0, t)
                    sizes[engine] = max(sizes.get(engine, 0), t)
    kv = values.get("vllm:kv_cache_usage_perc") or values.get("vllm:gpu_cache_usage_perc") or []
    engines: tuple[EngineMetrics, ...] = ()
    if len(per) > 1:
        engines = tuple(
            EngineMetrics(
                running=int(per[e].get("vllm:num_requests_running", 0)),
                waiting=int(per[e].get("vllm:num_requests_waiting", 0)),
                cache_tokens=sizes.get(e, sizes.get("")),  # unlabelled info: every engine's
            )
            for e in sorted(per, key=_rank_order)
        )
    return PolledMetrics(
        waiting=int(sum(values.get("vllm:num_requests_waiting", ()))),
        running=int(sum(values.get("vllm:num_requests_running", ()))),
        kv_usage=sum(kv) / len(kv) if kv else 0.0,
        cache_tokens=tokens,
        engines=engines,
    )


class StaleRank(UpstreamRequestFailed):
    """A data-parallel replica refused the rank the gateway asked for: it has fewer
    engines than last polled (it was replaced since). Handled inside the engine."""


def is_stale_rank(status: int, payload: bytes) -> bool:
    """Whether an answer is vLLM's refusal of an ``X-data-parallel-rank`` outside its
    engines: a 400 whose message says ``data_parallel_rank ... out of range``
    (``InputProcessor.process_inputs``: "data_parallel_rank 2 is out of range [0, 2).")."""
    if status != 400:
        return False
    text = payload[:2000].decode("utf-8", "replace").lower()
    return "data_parallel_rank" in text and "out of range" in text


def _prompt_parts(body: dict[str, Any]) -> list[str]:
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return parts
    prompt = body.get("prompt")
    return [prompt] if isinstance(prompt, str) else []


class VllmEngine:
    """All replicas of one self-hosted backend."""

    def __init__(
        self,
        name: str,
        spec: VllmBackend,
        session: aiohttp.ClientSession,
        *,
        metrics: Any = None,
        resolver: Resolver = resolve_a,
    ) -> None:
        self.name = name
        self.spec = spec
        self._session = session
        self._metrics = metrics
        self._resolver = resolver
        self._replicas = [Replica(u.rstrip("/")) for u in spec.replicas]
        self._rr = 0
        entries = spec.prefix_index_entries
        self._prefixes = PrefixIndex(entries) if entries and spec.selection == "affinity" else None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=spec.connect_timeout_s, sock_read=spec.timeout_s
        )
        self._poll_timeout = aiohttp.ClientTimeout(total=spec.poll_timeout_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._fresh: aiohttp.ClientSession | None = None
        self._admission = (
            Admission(
                name,
                self._free_slots,
                live=self.available,
                max_queued=spec.max_queued,
                timeout_s=spec.queue_timeout_s,
            )
            if spec.max_in_flight_per_replica
            else None
        )

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.spec.discovery is not None:
            await self.refresh_discovery()
            self._tasks.append(asyncio.create_task(self._discover_loop(), name=f"dns:{self.name}"))
        self._tasks.append(asyncio.create_task(self._poll_loop(), name=f"poll:{self.name}"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._fresh is not None:
            await self._fresh.close()

    # ---- discovery and polling ---------------------------------------------------------

    async def refresh_discovery(self) -> None:
        d = self.spec.discovery
        if d is None:
            return
        try:
            addrs = await self._resolver(d.dns, d.port)
        except OSError:
            return  # keep the last known set while DNS is away
        urls = {f"{d.scheme}://{a}:{d.port}" for a in addrs}
        keep = [r for r in self._replicas if r.url in urls]
        known = {r.url for r in keep}
        self._replicas = keep + [Replica(u) for u in sorted(urls - known)]
        if self._prefixes is not None:
            self._prefixes.retain(urls)
        if self._admission is not None:
            self._admission.wake_free()

    async def _discover_loop(self) -> None:
        assert self.spec.discovery is not None
        while True:
            await asyncio.sleep(self.spec.discovery.interval_s)
            await self.refresh_discovery()

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(r) for r in list(self._replicas)))
        if self._admission is not None:
            self._admission.wake_free()
        self._export()

    async def _scrape(self, r: Replica) -> str | None:
        """The replica's ``/metrics`` text; ``None`` when it is down (refused, or its
        ``/health`` is not 200); ``TimeoutError`` when it did not answer in time."""
        try:
            async with self._session.get(r.url + "/health", timeout=self._poll_timeout) as h:
                if h.status != 200:
                    return None
            async with self._session.get(r.url + "/metrics", timeout=self._poll_timeout) as m:
                return await m.text()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise TimeoutError from None
        except (aiohttp.ClientError, OSError):
            return None

    async def _poll(self, r: Replica) -> None:
        started = time.monotonic()
        r.poll_started(started)
        try:
            text = await self._scrape(r)
        except TimeoutError:
            # Slow, not gone: a busy replica answers late. Only misses in a row count.
            r.poll_misses += 1
            if r.poll_misses < self.spec.unhealthy_after_misses:
                return
            text = None
        else:
            r.poll_misses = 0
        r.healthy = text is not None
        if text is None:
            r.set_engines((), started)
            if self._prefixes is not None:
                self._prefixes.forget(r.url)  # it may come back with an empty cache
            return
        try:
            m = parse_metrics(text)
        except ValueError:  # not a Prometheus exposition: keep the last values
            return
        r.waiting, r.running, r.kv_usage = m.waiting, m.running, m.kv_usage
        r.cache_tokens = m.cache_tokens
        if started < r.engines_dropped_at:
            return  # maybe the replica that was there before: the next poll tells
        if len(m.engines) != len(r.engines) and self._prefixes is not None:
            # Restarted with another --data-parallel-size: ranks name other caches now.
            self._prefixes.forget(r.url)
        r.set_engines(m.engines, started)
        if self._prefixes is None:
            return
        if r.engines:  # each engine's own cache, under its own name
            for i, e in enumerate(r.engines):
                blocks = self._index_blocks(e.cache_tokens)
                self._prefixes.set_capacity(engine_name(r.url, i), blocks)
        else:
            self._prefixes.set_capacity(r.url, self._index_blocks(r.cache_tokens))

    def _index_blocks(self, tokens: int | None) -> int | None:
        """A KV cache in index blocks: reported, else configured, else unknown."""
        tokens = tokens or self.spec.kv_cache_tokens
        if tokens is None:
            return None
        return cache_blocks(tokens, self.spec.chars_per_token, _BLOCK_CHARS)

    async def _poll_loop(self) -> None:
        """Poll every replica each ``poll_interval_s``. A slow replica's poll (up to
        ``poll_timeout_s`` per request) runs on without holding up the others' rounds,
        and is not started again while it runs."""
        pending: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                started = time.monotonic()
                for r in list(self._replicas):
                    if r.url not in pending:
                        pending[r.url] = asyncio.create_task(self._poll(r))
                if pending:
                    await asyncio.wait(pending.values(), timeout=self.spec.poll_interval_s)
                for url, task in list(pending.items()):
                    if task.done():
                        del pending[url]
                        if not task.cancelled():
                            task.exception()  # retrieved; the next round polls again
                if self._admission is not None:
                    self._admission.wake_free()
                self._export()
                left = self.spec.poll_interval_s - (time.monotonic() - started)
                await asyncio.sleep(max(0.0, left))
        finally:
            for task in pending.values():
                task.cancel()

    def _export(self) -> None:
        m = self._metrics
        if m is None:
            return
        for r in self._replicas:
            m.replica_in_flight.labels(self.name, r.url).set(r.in_flight)
            m.replica_up.labels(self.name, r.url).set(1 if r.usable(time.monotonic()) else 0)
            m.replica_waiting.labels(self.name, r.url).set(r.waiting)
            state = r.breaker
            for s in ("closed", "half-open", "open"):
                m.replica_breaker.labels(self.name, r.url, s).set(1 if s == state else 0)
        m.pool_queued.labels(self.name).set(self._admission.queued if self._admission else 0)

    # ---- state for the route plan ------------------------------------------------------

    def available(self) -> bool:
        now = time.monotonic()
        return any(r.usable(now) for r in self._replicas)

    def saturated(self) -> bool:
        now = time.monotonic()
        if self._admission is not None and self._admission.full:
            return True
        live = [r for r in self._replicas if r.usable(now)]
        return bool(live) and all(r.waiting >= self.spec.max_queue_depth for r in live)

    def _free_slots(self) -> int:
        cap = self.spec.max_in_flight_per_replica or 0
        now = time.monotonic()
        return sum(max(0, cap - r.in_flight) for r in self._replicas if r.usable(now))

    def _release(self, replica: Replica, slot: Slot) -> None:
        replica.give(slot)
        if self._admission is not None:
            self._admission.wake(replica.url)

    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    # ---- dispatch --------------------------------------------------------------------------

    def _chain(self, req: EngineRequest) -> list[bytes]:
        if self.spec.selection != "affinity":
            return []
        return prefix_chain(
            req.option.tier + "/" + req.option.mode.label,
            _prompt_parts(req.body),
            _BLOCK_CHARS,
            _MAX_BLOCKS if self._prefixes is not None else _KEY_BLOCKS,
        )

    def _holders(self, chain: list[bytes]) -> list[str]:
        """The replicas holding the longest cached prefix of this chain (none: empty)."""
        if not chain or self._prefixes is None:
            return []
        matched = per_replica(self._prefixes.matched(chain))
        best = max(matched.values(), default=0)
        return [name for name, n in matched.items() if n == best]

    def _engine(self, replica: Replica, matched: dict[str, int]) -> tuple[int | None, str | None]:
        """The data-parallel rank to ask a replica for (None: it has one engine), and why."""
        if not replica.engines:
            return None, None
        return pick_engine(
            replica.url,
            replica.engine_loads(),
            matched,
            load_factor=self.spec.load_factor,
            rr=self._rr,
        )

    def _order(
        self, req: EngineRequest, chain: list[bytes]
    ) -> tuple[list[Replica], str, dict[str, int]]:
        """Replicas in the order to try them, why the first, and what each index name
        (replica, or engine of a data-parallel replica) holds of the chain."""
        now = time.monotonic()
        self._rr += 1
        cap = self.spec.max_in_flight_per_replica
        views = [
            ReplicaView(
                r.url,
                r.usable(now),
                r.in_flight,
                r.waiting,
                r.kv_usage,
                full=cap is not None and r.in_flight >= cap,
            )
            for r in self._replicas
        ]
        key = chain[min(len(chain), _KEY_BLOCKS) - 1] if chain else None
        matched = self._prefixes.matched(chain) if chain and self._prefixes is not None else {}
        idx, why = order(
            views,
            key,
            strategy=self.spec.selection,
            load_factor=self.spec.load_factor,
            rr=self._rr,
            matched=per_replica(matched),
        )
        return [self._replicas[i] for i in idx], why, matched

    async def _open(
        self, req: EngineRequest, stream: bool, skip: frozenset[str] = frozenset()
    ) -> tuple[aiohttp.ClientResponse, Replica, Slot]:
        """The accepted response, its replica, and its slot there (with the engine asked
        for, if any)."""
        if not self._replicas:
            raise UpstreamUnavailable(f"backend {self.name} has no replicas (discovery found none)")
        body = vllm_body(req.body, req.option.mode, self.spec.served_model, req.endpoint, stream)
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "X-Request-Id": req.request_id}
        chain = self._chain(req)
        if self._admission is not None:
            waited = await self._admission.admit(lambda: self._holders(chain))
            if self._metrics is not None:
                self._metrics.pool_queue_wait.labels(self.name).observe(waited)
        candidates, why, matched = self._order(req, chain)
        candidates = [r for r in candidates if r.url not in skip]
        last: UpstreamError | None = None
        for n, replica in enumerate(candidates):
            where = f"replica {replica.url} of {self.name}"
            # A data-parallel replica: ask for the engine that holds the prefix.
            rank, _ = self._engine(replica, matched)
            sent = headers if rank is None else {**headers, DP_RANK_HEADER: str(rank)}
            slot = replica.take(rank)
            try:
                try:
                    resp = await self._post(replica, req, data, sent, where)
                except StaleRank:
                    # The replica behind this address has fewer engines than last polled
                    # (replaced since): the gateway's mistake, not the request's nor the
                    # replica's. Forget its engines until the next poll counts them, and
                    # send the same request again there, without a rank. Nothing has
                    # reached the client, and nothing is billed until it is answered.
                    self._release(replica, slot)
                    self._drop_engines(replica)
                    if self._metrics is not None:
                        self._metrics.stale_rank_resends.labels(self.name).inc()
                    slot = replica.take(None)
                    resp = await self._post(replica, req, data, headers, where)
            except UpstreamRequestFailed as exc:
                # The request's own failure, not the replica's. Its siblings run the same
                # server and would refuse it alike: the plan's next backend may take it.
                self._release(replica, slot)
                req.request_faults += 1
                exc.attempts = req.request_faults
                exc.retryable = req.request_faults < 2
                raise
            except UpstreamError as exc:
                self._release(replica, slot)
                if not exc.retryable:
                    raise
                replica.record_failure(
                    time.monotonic(), self.spec.breaker_cooldown_s, self.spec.breaker_failures
                )
                last = exc
                continue
            except BaseException:  # cancelled while waiting: the slot must not leak
                self._release(replica, slot)
                raise
            replica.record_success()
            if chain and self._prefixes is not None:
                held = replica.url if slot.rank is None else engine_name(replica.url, slot.rank)
                self._prefixes.record(chain, held)
            if self._metrics is not None:
                self._metrics.replica_selections.labels(
                    self.name, replica.url, why if n == 0 else "retry"
                ).inc()
            return resp, replica, slot
        self._export()
        raise last or UpstreamUnavailable(f"backend {self.name} has no usable replica")

    def _drop_engines(self, replica: Replica) -> None:
        """Forget a replica's engines and what the prefix index holds for them."""
        replica.drop_engines()
        if self._prefixes is not None:
            self._prefixes.forget(replica.url)

    async def _post(
        self, replica: Replica, req: EngineRequest, data: bytes, headers: dict[str, str], where: str
    ) -> aiohttp.ClientResponse:
        """Send the request to one replica; a connection the replica closed before answering
        (an idle keep-alive connection it had just shut) is sent again once, on a fresh
        connection, without counting against the replica."""
        session = self._session
        for resend in (True, False):
            try:
                async with translate_errors(where):
                    resp = await session.post(
                        replica.url + _PATHS[req.endpoint],
                        data=data,
                        headers=headers,
                        timeout=self._timeout,
                    )
                    if resp.status != 200:
                        payload = await resp.read()
                        resp.release()
                        if DP_RANK_HEADER in headers and is_stale_rank(resp.status, payload):
                            raise StaleRank(f"{where} has no engine {headers[DP_RANK_HEADER]}")
                        raise error_for_status(
                            resp.status, payload, resp.headers, where, request_faults=True
                        )
                    return resp
            except UpstreamConnectionLost:
                if not resend:
                    raise
                if self._metrics is not None:
                    self._metrics.upstream_resends.labels(self.name).inc()
                session = self._fresh_session()
        raise AssertionError("unreachable")

    def _fresh_session(self) -> aiohttp.ClientSession:
        """A session that opens a new connection for every request (for resends)."""
        if self._fresh is None or self._fresh.closed:
            self._fresh = new_session(limit=64, force_close=True)
        return self._fresh

    async def complete(self, req: EngineRequest) -> EngineResponse:
        # Nothing has reached the client yet: a body that breaks off is retried elsewhere too.
        skip: set[str] = set()
        while True:
            resp, replica, slot = await self._open(req, stream=False, skip=frozenset(skip))
            try:
                body = await read_json_object(resp, f"replica {replica.url} of {self.name}")
            except UpstreamError as exc:
                if not exc.retryable or len(skip) + 1 >= len(self._replicas):
                    raise
                replica.record_failure(
                    time.monotonic(), self.spec.breaker_cooldown_s, self.spec.breaker_failures
                )
                skip.add(replica.url)
                continue
            finally:
                self._release(replica, slot)
            usage = normalize_response(body)
            return EngineResponse(body=body, usage=usage, replica=replica.url)

    async def stream(self, req: EngineRequest) -> SSEStream:
        # Up to the first token nothing has reached the client: a replica that fails
        # before it (closed, silent past the deadline) is left for the next one.
        include = bool((req.body.get("stream_options") or {}).get("include_usage"))
        skip: set[str] = set()
        while True:
            resp, replica, slot = await self._open(req, stream=True, skip=frozenset(skip))
            stream = SSEStream(
                resp,
                replica.url,
                include,
                f"replica {replica.url} of {self.name}",
                on_close=functools.partial(self._release, replica, slot),
            )
            try:
                await stream.wait_first_token(self.spec.first_token_timeout_s)
            except UpstreamError as exc:
                if not exc.retryable or len(skip) + 1 >= len(self._replicas):
                    raise
                if not isinstance(exc, UpstreamStreamError):  # may be the request's own
                    replica.record_failure(
                        time.monotonic(), self.spec.breaker_cooldown_s, self.spec.breaker_failures
                    )
                skip.add(replica.url)
                continue
            return stream

    async def health(self) -> bool:
        return self.available()
