"""Shadow mode: the router learns from the team's own traffic (opt-in, ``routing.shadow``).

After a request the router sent to a cheaper option has been answered, a sampled share of
them is replayed, in the background, on the strong option; a judge compares both answers
and the verdict is stored in ``router_labels`` for ``tiergate router labels export``.

Money: every shadow and judge call is priced and written to the ledger as ``kind=shadow``
under the caller's team but no key, so no client budget (key or team) is charged; instead
each call reserves its worst case against the daily shadow budget first, and is skipped
when that does not fit. The client's response never waits for, or fails because of, any
of this.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select

from engines.base import Engine, EngineRequest, EngineResponse
from gateway.accounting import Accounting, Settlement
from gateway.budgets import BudgetExceeded, BudgetStore, MemoryBudgetStore, RedisBudgetStore
from gateway.budgets.base import Window
from gateway.db.models import LedgerRow, RouterLabel
from gateway.ledger import event_of
from gateway.metrics import Metrics
from gateway.tasks import stop
from policies.budget import BudgetSpec
from policies.catalog import Catalog
from policies.features import extract_features
from policies.options import NON_THINKING, Mode, Option
from policies.pricing import PriceBook
from policies.router.shadow import (
    MAX_TEXT_CHARS,
    Verdict,
    answer_text,
    features_to_json,
    is_cheaper,
    judge_messages,
    parse_verdict,
    should_sample,
)

if TYPE_CHECKING:
    from gateway.pipeline import Prepared
    from gateway.router_service import RouterTruth

log = structlog.get_logger("tiergate.shadow")

# Per message: role and chat-template tokens, on top of one token per byte at most.
_TEMPLATE_TOKENS = 32


def prompt_token_bound(messages: Any) -> int:
    """An upper bound on prompt tokens: a byte-level tokenizer never makes more tokens than
    bytes, plus a per-message allowance for the chat template."""
    raw = json.dumps(messages, ensure_ascii=False).encode()
    n = len(messages) if isinstance(messages, list) else 1
    return len(raw) + _TEMPLATE_TOKENS * (n + 1)


def label_of(option: Option) -> str:
    return f"{option.tier}/{option.mode.label}"


class ShadowService:
    def __init__(
        self,
        catalog: Catalog,
        engines: Mapping[str, Engine],
        accounting: Accounting,
        metrics: Metrics,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = catalog.routing.shadow
        self.catalog = catalog
        self.engines = dict(engines)
        self.metrics = metrics
        self.prices = PriceBook(catalog)
        self.rng = rng
        self.tasks: set[asyncio.Task[None]] = set()
        self.sessions = getattr(accounting, "sessions", None)
        self.enabled = self.cfg.enabled and self.sessions is not None
        if self.cfg.enabled and self.sessions is None:
            log.warning("shadow mode needs a database for its labels; it stays off")
        self.store: BudgetStore | None = None
        if self.enabled:
            self.store = self._budget_store(accounting)
        self.spec = BudgetSpec("shadow", "team", "shadow", "day", self.cfg.budget_nanos_per_day)
        self.truth: RouterTruth | None = None  # set by the app when the router runs

    def _budget_store(self, accounting: Any) -> BudgetStore:
        redis = getattr(accounting, "redis", None)
        if redis is not None:
            prefix = str(getattr(accounting, "prefix", "tg:"))
            store = RedisBudgetStore(redis, self._spent, prefix=prefix + "shadow:")
            store.stream = prefix + "ledger"  # settled events join the ledger stream
            return store
        return MemoryBudgetStore(self._spent, accounting.writer.put)

    async def _spent(self, w: Window) -> int:
        assert self.sessions is not None
        async with self.sessions() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(LedgerRow.cost_nanos), 0)).where(
                    LedgerRow.kind == "shadow", LedgerRow.ts >= w.start
                )
            )
        return int(total or 0)

    # ---- in the request path (cheap, never raises) ------------------------------------

    def pick(self, p: Prepared) -> bool:
        """Decide at planning time, so that a sampled stream keeps its events."""
        if not self.enabled or p.call.endpoint != "chat":
            return False
        primary = p.plan.primary
        cheaper = is_cheaper(
            primary.tier, primary.mode.thinking, self.cfg.strong_tier, self.cfg.strong_thinking
        )
        return should_sample(
            self.rng(),
            self.cfg.share,
            enabled=True,
            auto=p.plan.reason.startswith("auto"),
            cheaper=cheaper,
        )

    def submit(self, p: Prepared, weak_answer: str) -> None:
        """Start the shadow work for a sampled request that succeeded."""
        option = p.option or p.plan.primary
        if not is_cheaper(
            option.tier, option.mode.thinking, self.cfg.strong_tier, self.cfg.strong_thinking
        ):
            return
        if len(self.tasks) >= self.cfg.max_in_flight:
            self.metrics.shadow_requests.labels("busy").inc()
            return
        task = asyncio.create_task(self._guarded(p, option, weak_answer), name="shadow")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self, timeout_s: float = 5.0) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for task in pending:
                await stop(task)

    # ---- in the background -------------------------------------------------------------

    def _option(self, tier: str, mode: Mode) -> Option | None:
        for backend in self.catalog.backends_for_tier(tier):
            engine = self.engines.get(backend)
            available = getattr(engine, "available", None)
            if engine is None or not self.prices.has(backend, tier):
                continue
            if callable(available) and not available():
                continue
            return Option(tier, mode, backend)
        return None

    def _window(self, now: datetime) -> list[Window]:
        return [Window.of(self.spec, now, "UTC")]

    async def _guarded(self, p: Prepared, weak: Option, weak_answer: str) -> None:
        try:
            await self._run(p, weak, weak_answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never the client's problem; count it and move on
            self.metrics.shadow_requests.labels("failed").inc()
            log.warning("shadow sample failed", request_id=p.request_id, error=repr(exc))

    async def _run(self, p: Prepared, weak: Option, weak_answer: str) -> None:
        cfg, store = self.cfg, self.store
        assert store is not None
        now = datetime.now(UTC)
        strong = self._option(
            cfg.strong_tier,
            Mode(True, cfg.strong_effort) if cfg.strong_thinking else NON_THINKING,
        )
        judge = self._option(
            cfg.judge_tier, Mode(True, cfg.judge_effort) if cfg.judge_thinking else NON_THINKING
        )
        if strong is None or judge is None:
            self.metrics.shadow_requests.labels("failed").inc()
            return
        messages = p.call.body.get("messages")
        spec = self.catalog.tiers[strong.tier]
        out = min(p.call.max_tokens or spec.max_output_tokens, cfg.max_output_tokens)
        strong_worst = self.prices.rate(strong.backend, strong.tier, now).worst_case_nanos(
            prompt_token_bound(messages), out
        )
        # The judge sees the request and both answers, each clipped to MAX_TEXT_CHARS.
        judge_prompt = prompt_token_bound(
            judge_messages(p.call.last_user_text, weak_answer, "", weak_first=True)
        ) + 4 * (MAX_TEXT_CHARS + 64)
        judge_worst = self.prices.rate(judge.backend, judge.tier, now).worst_case_nanos(
            judge_prompt, cfg.judge_max_tokens
        )
        sid, jid = p.request_id + "-shadow", p.request_id + "-judge"
        windows = self._window(now)
        try:
            await store.reserve(sid, windows, strong_worst)
            try:
                await store.reserve(jid, windows, judge_worst)
            except BudgetExceeded:
                await store.release(sid, windows)
                raise
        except BudgetExceeded:
            self.metrics.shadow_requests.labels("over_budget").inc()
            return

        body = {
            k: v
            for k, v in p.call.body.items()
            if k not in ("stream", "stream_options", "max_tokens", "max_completion_tokens", "n")
        }
        body.update(max_tokens=out, stream=False)
        strong_resp = await self._call(sid, windows, p, strong, body, "shadow")
        if strong_resp is None:
            await store.release(jid, windows)
            return
        resp, strong_cost = strong_resp
        strong_answer = answer_text(resp.body)
        weak_first = self.rng() < 0.5
        judge_body: dict[str, Any] = {
            "messages": judge_messages(
                p.call.last_user_text, weak_answer, strong_answer, weak_first=weak_first
            ),
            "max_tokens": cfg.judge_max_tokens,
            "stream": False,
        }
        judged = await self._call(jid, windows, p, judge, judge_body, "judge")
        if judged is None:
            return
        jresp, judge_cost = judged
        verdict = parse_verdict(answer_text(jresp.body), weak_first=weak_first)
        await self._store_label(p, weak, strong, verdict, strong_cost, judge_cost, now)
        if verdict is not None and self.truth is not None:
            self.truth.labelled(verdict.label == "strong_needed", p.cost_nanos or 0, strong_cost)
        self.metrics.shadow_verdicts.labels(verdict.label if verdict else "invalid").inc()
        self.metrics.shadow_requests.labels("labelled" if verdict else "unparsed").inc()

    async def _call(
        self,
        call_id: str,
        windows: list[Window],
        p: Prepared,
        option: Option,
        body: dict[str, Any],
        what: str,
    ) -> tuple[EngineResponse, int] | None:
        """One priced call; settles its reservation with the actual cost, or releases it."""
        assert self.store is not None
        started, ts = time.perf_counter(), datetime.now(UTC)
        try:
            resp = await self.engines[option.backend].complete(
                EngineRequest(body=body, option=option, endpoint="chat", request_id=call_id)
            )
        except Exception as exc:
            await self.store.release(call_id, windows)
            self.metrics.shadow_requests.labels("failed").inc()
            log.warning(f"shadow {what} call failed", request_id=p.request_id, error=repr(exc))
            return None
        rate = self.prices.rate(option.backend, option.tier, ts)
        cost = rate.cost_nanos(resp.usage)
        hosted = self.prices.hosted_rate(option.tier, ts)
        usage = resp.usage
        s = Settlement(
            request_id=call_id,
            ts=ts,
            key_id=None,
            team_id=p.caller.team_id,
            protocol=p.call.protocol,
            requested_model=p.call.model,
            tier=option.tier,
            mode=option.mode.label,
            backend=option.backend,
            replica=resp.replica,
            route_reason=f"shadow:{what};of={p.request_id}",
            cache_hit_tokens=usage.cache_hit_tokens,
            cache_miss_tokens=usage.cache_miss_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            price_version=rate.version,
            cost_nanos=cost,
            hosted_equiv_nanos=hosted.cost_nanos(usage) if hosted else cost,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            status=200,
            kind="shadow",
        )
        await self.store.settle(call_id, windows, cost, event_of(s))
        self.metrics.shadow_spend.labels(what, p.caller.team_id or "none").inc(cost)
        return resp, cost

    async def _store_label(
        self,
        p: Prepared,
        weak: Option,
        strong: Option,
        verdict: Verdict | None,
        strong_cost: int,
        judge_cost: int,
        now: datetime,
    ) -> None:
        assert self.sessions is not None
        messages = p.call.body.get("messages")
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": p.call.last_user_text}]
        features = extract_features(messages, tools=p.call.has_tools, json_mode=p.call.json_mode)
        row = RouterLabel(
            request_id=p.request_id,
            ts=now,
            team_id=p.caller.team_id,
            weak=label_of(weak),
            strong=label_of(strong),
            verdict=verdict.label if verdict else "invalid",
            better=verdict.better if verdict else None,
            weak_ok=verdict.weak_ok if verdict else None,
            strong_ok=verdict.strong_ok if verdict else None,
            features=features_to_json(features),
            prompt=p.call.last_user_text if self.cfg.store_prompts else None,
            shadow_cost_nanos=strong_cost,
            judge_cost_nanos=judge_cost,
        )
        async with self.sessions() as s:
            s.add(row)
            await s.commit()
