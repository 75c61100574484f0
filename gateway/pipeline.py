"""The request path: auth, rewrite, classify, route, reserve, dispatch, stream, settle.

Protocol routes parse their body into a ``Call`` and render what comes back; everything
between lives here, the same for every protocol. Decisions are delegated to ``policies``
(pure); model I/O to ``engines``; money to the ``Accounting`` implementation.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engines.base import Engine, EngineRequest, EngineResponse, EngineStream
from gateway.accounting import Accounting, Caller, Hold, Settlement
from gateway.inflight import InflightJournal
from gateway.keys import request_key
from gateway.logging import get_logger
from gateway.metrics import Metrics
from gateway.orphans import draft, entry_of
from gateway.parse import Call
from policies.catalog import Catalog
from policies.errors import (
    InvalidRequest,
    PermissionDenied,
    TiergateError,
    UpstreamError,
    UpstreamRequestFailed,
    UpstreamUnavailable,
)
from policies.features import task_messages
from policies.options import NON_THINKING, Option, resolve_target
from policies.pricing import NANOS_PER_USD, PriceBook
from policies.router.shadow import answer_text, is_cheaper, stream_text
from policies.routing import (
    AutoChoice,
    BackendState,
    RoutePlan,
    RouteRequest,
    plan_route,
    simple_auto,
)
from policies.usage import Usage

if TYPE_CHECKING:
    from gateway.router_service import RouterTruth
    from gateway.shadow import ShadowService

# (catalog, request, the caller's budget asks for cheaper options) -> what `auto` gets
Classifier = Callable[[Catalog, Call, bool], AutoChoice]
# (what `auto` got, whether the budget downgraded it): called once the request passed its
# reservation, so that only dispatched requests teach the router's calibration
Routed = Callable[[AutoChoice, bool], None]

# Characters of generated text per token, used only to bill a stream that broke before its
# usage chunk (``StreamOutcome.output_chars``: the text streamed, not the SSE envelope).
_STREAM_CHARS_PER_TOKEN = 4
_DONE = b"data: [DONE]\n\n"
# Events kept from a stream sampled for shadow mode; a longer answer is not sampled.
_SHADOW_STREAM_BYTES = 4 * 1024 * 1024
# Internal addresses (a replica's URL) in an upstream error: the log keeps them, clients
# get the message without them.
_URL = re.compile(r"\s*\bhttps?://[^\s'\"]+")


def public_message(message: str) -> str:
    return _URL.sub("", message)


def rule_classifier(catalog: Catalog, call: Call, downgrade: bool = False) -> AutoChoice:
    messages = call.body.get("messages")
    if isinstance(messages, list):  # the task, not the agent harness around it
        task = task_messages(messages)
        chars = sum(len(str(m.get("content") or "")) for m in task)
        last = next((str(m["content"]) for m in reversed(task) if m["role"] == "user"), "")
    else:
        chars, last = call.prompt_chars, call.last_user_text
    choice = simple_auto(catalog, last, chars)
    if downgrade and choice.tier != "flash":
        return AutoChoice("flash", choice.mode, choice.reason + ";budget-downgrade")
    return choice


@dataclass(slots=True)
class Prepared:
    """A request that passed auth, routing and reservation, ready to dispatch."""

    call: Call
    caller: Caller
    request_id: str
    plan: RoutePlan
    started: float
    started_at: datetime
    reserved: int = 0
    hold: Hold | None = None  # what the reservation took; settled or released with it
    option: Option | None = None
    replica: str | None = None
    reasons: list[str] = field(default_factory=list)
    shadow: bool = False  # sampled for shadow mode (gateway/shadow.py)
    shadow_events: list[bytes] | None = None
    stream_finished: bool = False  # a stream's settlement has begun (it runs once)
    cost_nanos: int | None = None  # set once settled (shadow mode compares it with Pro's)
    request_faults: int = 0  # backends that failed on the request's own content
    error: str = ""  # why a stream that had begun failed (for the log line)
    trying: Option | None = None  # the option being dispatched to now
    stream: EngineStream | None = None  # once opened: what it streamed so far
    answered: Usage | None = None  # a non-stream answer's usage, until it is settled

    @property
    def reason(self) -> str:
        return ";".join([self.plan.reason, *self.reasons])

    def route_header(self) -> str:
        option = self.option or self.plan.primary
        return header_value(f"{option.label}; reason={self.reason}")

    def estimated(self) -> Usage:
        """The usage when the upstream never reported it: the prompt estimate as cache
        miss, and the text streamed so far at four characters a token, rounded up, never
        more than the ``max_tokens`` the upstream was given (it cannot have generated more,
        and more would pass what was reserved)."""
        outcome = self.stream.outcome if self.stream is not None else None
        out = -(-outcome.output_chars // _STREAM_CHARS_PER_TOKEN) if outcome else 0
        thought = -(-outcome.reasoning_chars // _STREAM_CHARS_PER_TOKEN) if outcome else 0
        if self.call.max_tokens:
            out = min(out, self.call.max_tokens)
        return Usage(0, self.call.prompt_tokens_est, out, min(thought, out))


# Printable ASCII but '%': everything else in a header value is percent-encoded (UTF-8).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(text: str) -> str:
    """``text`` as a valid header value: a model name such as ``claude-opus-日本`` travels in
    ``x-tiergate-route``, and neither non-ASCII nor a line break may reach the wire raw."""
    return quote(text, safe=_HEADER_SAFE)


def _tool_turn_without_reasoning(body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict)
        and m.get("role") == "assistant"
        and m.get("tool_calls")
        and not m.get("reasoning_content")
        for m in messages
    )


def _json_schema(call: Call) -> bool:
    """A chat request asking for a ``json_schema`` answer, which the hosted API answers in
    JSON mode with the schema in the prompt (engines/translate.py ``hosted_body``)."""
    fmt = call.body.get("response_format")
    return call.endpoint == "chat" and isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def _check_model(call: Call, caller: Caller) -> None:
    """The key may use the model it asks for."""
    if caller.allowed_models is not None and call.model not in caller.allowed_models:
        raise PermissionDenied(
            f"this API key may not use model '{call.model}'; allowed: "
            + ", ".join(caller.allowed_models),
            param="model",
        )


class Pipeline:
    def __init__(
        self,
        catalog: Catalog,
        engines: Mapping[str, Engine],
        accounting: Accounting,
        metrics: Metrics,
        *,
        classifier: Classifier = rule_classifier,
        routed: Routed | None = None,
        log_prompts: bool = False,
    ) -> None:
        self.catalog = catalog
        self.engines = dict(engines)
        self.accounting = accounting
        self.metrics = metrics
        self.prices = PriceBook(catalog)
        self.classifier = classifier
        self.routed = routed
        self.log = get_logger("tiergate.request")
        self.log_prompts = log_prompts
        self.shadow: ShadowService | None = None
        self.truth: RouterTruth | None = None  # auto's quality kept / cost saved estimate
        self.settling = 0  # answered non-stream requests whose settlement has not ended
        # Running requests are journaled, so a dead process's get settled (gateway/orphans.py).
        self.journal: InflightJournal | None = None

    # ---- before dispatch ---------------------------------------------------------------

    def _states(self) -> dict[str, BackendState]:
        states = {}
        for name, engine in self.engines.items():
            available = getattr(engine, "available", None)
            saturated = getattr(engine, "saturated", None)
            states[name] = BackendState(
                available=available() if callable(available) else True,
                saturated=saturated() if callable(saturated) else False,
            )
        return states

    def reject(self, protocol: str, err: TiergateError, **fields: object) -> None:
        """A request refused before dispatch: counted by reason, with its log line."""
        self.metrics.rejections.labels(protocol, err.code).inc()
        self.log.info(
            "request",
            protocol=protocol,
            status=err.status,
            rejected=err.code,
            error=err.message,
            **fields,
        )

    async def authenticate(self, headers: Mapping[str, str], protocol: str = "openai") -> Caller:
        """First step of every request, before its body is read."""
        try:
            return await self.accounting.authenticate(request_key(headers))
        except TiergateError as err:
            self.reject(protocol, err)
            raise

    def parsed(self, parse: Callable[[bytes], Call], raw: bytes, protocol: str) -> Call:
        """The protocol's parser over the body; a refused body is counted and logged."""
        try:
            return parse(raw)
        except TiergateError as err:
            self.reject(protocol, err)
            raise

    async def prepare(self, call: Call, headers: Mapping[str, str], caller: Caller) -> Prepared:
        # Always our own id: it keys settlement idempotency, so a client must not choose it.
        request_id = uuid.uuid4().hex
        started, started_at = time.perf_counter(), datetime.now(UTC)
        try:
            self._check_caller(call, caller)
            rate = await self.accounting.check_rate(caller, call.prompt_tokens_est)
            view = await self.accounting.budget_view(caller, started_at)
            plan, auto = self._plan(call, caller, headers, view.downgrade)
            p = Prepared(call, caller, request_id, plan, started, started_at)
            out = self._output_limit(call, plan)
            p.reserved = self._worst_case(p, out)
            p.hold = await self.accounting.reserve(caller, request_id, p.reserved, started_at, rate)
        except TiergateError as err:
            self.reject(
                call.protocol,
                err,
                request_id=request_id,
                model=call.model,
                stream=call.stream,
                team=caller.team_id,
                key=caller.key_prefix,
            )
            err.headers.setdefault("x-request-id", request_id)
            raise
        if auto is not None and self.routed is not None:
            self.routed(auto, view.downgrade)
        for note in call.notes:
            p.reasons.append(note)
            self.metrics.adaptations.labels(call.protocol, note.split("=", 1)[0]).inc()
        how = plan.reason.split(":", 1)[0]
        self.metrics.route_decisions.labels(how, plan.primary.tier, plan.primary.mode.label).inc()
        if view.downgrade and how == "auto":
            self.metrics.budget_downgrades.labels(plan.primary.tier, plan.primary.mode.label).inc()
        for backend, why in plan.skipped:
            self.metrics.spillovers.labels(backend, why).inc()
        if self.shadow is not None:
            p.shadow = self.shadow.pick(p)
        if self.journal is not None:
            self.journal.track(request_id, lambda: draft(self, p))
        return p

    def check_model(self, call: Call, caller: Caller) -> None:
        """The model checks of ``prepare`` alone, for a request that is only measured
        (count_tokens): a model not served here or not allowed to the key is refused the
        same way."""
        try:
            _check_model(call, caller)
            resolve_target(self.catalog, call.model, call.body)
        except TiergateError as err:
            self.reject(call.protocol, err, model=call.model)
            raise

    def _check_caller(self, call: Call, caller: Caller) -> None:
        _check_model(call, caller)
        ceiling = caller.max_tokens_ceiling
        if ceiling is not None:
            if call.max_tokens is not None and call.max_tokens > ceiling:
                field = call.limit_field
                raise InvalidRequest(
                    f"{field} {call.max_tokens} is over this key's ceiling of {ceiling}",
                    param=field,
                )
            if call.max_tokens is None:
                call.body["max_tokens"] = ceiling
                call.max_tokens = ceiling

    def _plan(
        self, call: Call, caller: Caller, headers: Mapping[str, str], downgrade: bool = False
    ) -> tuple[RoutePlan, AutoChoice | None]:
        target = resolve_target(self.catalog, call.model, call.body)
        override = headers.get("x-tiergate-tier")
        if override and not caller.may_override_tier:
            raise PermissionDenied(
                "this API key may not choose the tier with x-tiergate-tier", param="x-tiergate-tier"
            )
        auto = self.classifier(self.catalog, call, downgrade) if target.tier == "auto" else None
        tier_guess = override or (auto.tier if auto else target.tier)
        max_out = call.max_tokens or self._default_max_output(tier_guess)
        req = RouteRequest(
            target=target,
            prompt_tokens=call.prompt_tokens_est,
            max_output_tokens=min(max_out, self._default_max_output(tier_guess)),
            is_fim=call.endpoint == "completions",
            auto=auto,
            tier_override=override or None,
            history_without_reasoning=_tool_turn_without_reasoning(call.body),
            choices=call.choices,
        )
        return plan_route(self.catalog, req, self._states()), auto

    def _default_max_output(self, tier: str) -> int:
        spec = self.catalog.tiers.get(tier)
        cap = self.catalog.routing.reservation_output_cap
        return min(spec.max_output_tokens, cap) if spec else cap

    def _output_limit(self, call: Call, plan: RoutePlan) -> int:
        """The output tokens (reasoning included) reserved for and asked of the upstream:
        the client's limit, or the reservation cap when it set none. It is written into the
        body as the one ``max_tokens`` the upstream sees, so nothing unreserved is spent."""
        tier = plan.primary.tier
        spec = self.catalog.tiers.get(tier)
        asked = call.max_tokens
        if asked is not None and spec is not None and asked > spec.max_output_tokens:
            field = call.limit_field
            raise InvalidRequest(
                f"{field} {asked} is over the {spec.max_output_tokens} output tokens "
                f"{tier} can produce; ask for at most {spec.max_output_tokens}",
                param=field,
            )
        out = asked or self._default_max_output(tier)
        if spec is None and asked is None:
            return out  # a pass-through model: its own provider's default, nothing reserved
        call.body.pop("max_completion_tokens", None)
        call.body["max_tokens"] = out
        call.max_tokens = out
        return out

    def _worst_case(self, p: Prepared, out: int) -> int:
        worst = 0
        for option in p.plan.options():
            if self.prices.has(option.backend, option.tier):
                rate = self.prices.rate(option.backend, option.tier, p.started_at)
                # n choices share the prompt; each may produce the whole output limit. The
                # prompt is its bound, not its estimate: what is reserved is what can be spent.
                outputs = out * p.call.choices
                worst = max(worst, rate.worst_case_nanos(p.call.prompt_tokens_max, outputs))
        return worst

    # ---- dispatch ----------------------------------------------------------------------

    def _engine_request(self, p: Prepared, option: Option) -> EngineRequest:
        return EngineRequest(
            body=p.call.body,
            option=option,
            endpoint=p.call.endpoint,
            request_id=p.request_id,
            request_faults=p.request_faults,
        )

    def _fallback_option(self, p: Prepared, option: Option) -> Option:
        """A failover to the hosted API in thinking mode, for a history whose tool-call turns
        lack their ``reasoning_content`` (replicas accept that, the hosted API answers 400):
        the turn is answered without thinking there, and the route reason says why."""
        backend = self.catalog.backends.get(option.backend)
        if (
            option is p.plan.primary
            or not option.mode.thinking
            or backend is None
            or backend.kind != "deepseek"
            or not _tool_turn_without_reasoning(p.call.body)
        ):
            return option
        p.reasons.append("non-thinking-on-hosted:tool-turn-without-reasoning")
        return Option(option.tier, NON_THINKING, option.backend)

    async def _dispatch(
        self, p: Prepared, opener: Callable[[Engine, EngineRequest], Awaitable[Any]]
    ) -> Any:
        last: UpstreamError | None = None
        options = p.plan.options()
        for i, planned in enumerate(options):
            option = self._fallback_option(p, planned)
            engine = self.engines[option.backend]
            req = self._engine_request(p, option)
            p.trying = option
            try:
                result = await opener(engine, req)
            except UpstreamError as exc:
                self.metrics.upstream_errors.labels(option.backend, exc.code).inc()
                p.option = option  # the backend whose answer the client gets, if this is the last
                if isinstance(exc, UpstreamRequestFailed):
                    # Tried once elsewhere at most: the next backend is the last try.
                    p.request_faults = max(req.request_faults, exc.attempts)
                    if p.request_faults >= 2:
                        exc.retryable = False
                if not exc.retryable:
                    raise
                last = exc
                # A failover only when there is a next option to go to; otherwise the
                # reason records the failure the client gets (``failed:``).
                what = "failover" if i + 1 < len(options) else "failed"
                p.reasons.append(f"{what}:{option.backend}:{exc.code}")
                continue
            if planned is not p.plan.primary:
                self.metrics.fallbacks.labels(p.plan.primary.backend, option.backend).inc()
            backend = self.catalog.backends.get(option.backend)
            if backend is not None and backend.kind == "deepseek" and _json_schema(p.call):
                p.reasons.append("json-schema-as-json-object")
            p.option = option
            return result
        raise last or UpstreamUnavailable("no backend could take the request")

    async def answer(self, p: Prepared) -> EngineResponse:
        """Dispatch a non-stream request. Its settlement is :meth:`finish`, which the caller
        runs once the response is on its way (``SettledResponse``): the reservation holds
        the worst case until then, so no budget can be overspent in between."""
        try:
            resp: EngineResponse = await self._dispatch(p, lambda e, r: e.complete(r))
        except TiergateError as err:
            await self.fail(p, err)
            raise
        except Exception as exc:
            raise await self._unexpected(p, exc) from exc
        p.replica = resp.replica
        p.answered = resp.usage
        self.settling += 1
        return resp

    async def finish(self, p: Prepared, resp: EngineResponse, status: int = 200) -> None:
        """Settle an answered request; never raises (the client already has its answer).
        ``status``: what the client got, where the answer could not be rendered as one (a
        hosted answer cut by ``insufficient_system_resource`` is a 503 to Anthropic and
        Responses clients, billed all the same)."""
        if status != 200 and resp.body.get("choices"):
            finish = (resp.body["choices"][0] or {}).get("finish_reason")
            if finish == "insufficient_system_resource":
                p.reasons.append("upstream-insufficient-resource")
        try:
            await self._settle(p, resp.usage, status, provider_cost_usd=resp.provider_cost_usd)
        except Exception as exc:
            self.metrics.settlement_failures.labels((p.option or p.plan.primary).backend).inc()
            self.log.error(
                "settlement failed",
                request_id=p.request_id,
                error=repr(exc),
                cache_hit=resp.usage.cache_hit_tokens,
                cache_miss=resp.usage.cache_miss_tokens,
                output=resp.usage.output_tokens,
            )
            return
        finally:
            self.settling -= 1
        if p.shadow:
            self._shadow_submit(p, lambda: answer_text(resp.body))

    async def open_stream(self, p: Prepared) -> EngineStream:
        try:
            stream: EngineStream = await self._dispatch(p, lambda e, r: e.stream(r))
        except TiergateError as err:
            await self.fail(p, err)
            raise
        except Exception as exc:
            raise await self._unexpected(p, exc) from exc
        p.replica = stream.replica
        p.stream = stream
        return stream

    async def relay(
        self, p: Prepared, stream: EngineStream, on_error: Callable[[TiergateError], bytes]
    ) -> AsyncGenerator[bytes, None]:
        """Yield the stream's events; on a failure mid-stream, end with one error event.

        Settles in all cases, and before the client sees the end of the stream (``[DONE]``
        or the error event): with the upstream's usage when it arrived, otherwise with an
        estimate of what was already streamed (the upstream bills those tokens too).
        """
        first = True
        option = p.option or p.plan.primary
        kept = 0
        try:
            if self.journal is not None:  # journaled now, not at the next flush
                self.journal.opened(p.request_id)
            done: bytes | None = None
            async for event in stream:
                if p.shadow:
                    kept += len(event)
                    if kept > _SHADOW_STREAM_BYTES:
                        p.shadow, p.shadow_events = False, None
                    else:
                        p.shadow_events = p.shadow_events or []
                        p.shadow_events.append(event)
                if first and not event.startswith(b":"):  # comments are no token
                    first = False
                    self.metrics.ttft.labels(
                        option.tier, option.mode.label, option.backend
                    ).observe(time.perf_counter() - p.started)
                if event == _DONE:
                    done = event
                    continue
                yield event
            await self._finish_stream(p, stream, 200)
            if p.shadow and stream.outcome.usage is not None:
                events = p.shadow_events or []
                self._shadow_submit(p, lambda: stream_text(events))
            if done is not None:
                yield done
        except TiergateError as err:
            self.metrics.upstream_errors.labels(option.backend, err.code).inc()
            p.reasons.append(f"stream-error:{err.code}")
            p.error = err.logged
            await self._finish_stream(p, stream, err.status)
            err.message = public_message(err.message)
            yield on_error(err)
        finally:
            await self._finish_stream(p, stream, 499)  # if the client went away mid-stream

    async def abandon(self, p: Prepared, stream: EngineStream) -> None:
        """Settle a stream whose relay may never have started (the client left before the
        first event was sent): a generator that never ran cannot run its own ``finally``.
        Does nothing when the relay settled it."""
        await self._finish_stream(p, stream, 499)

    async def _finish_stream(self, p: Prepared, stream: EngineStream, status: int) -> None:
        if p.stream_finished:
            return
        p.stream_finished = True
        await stream.aclose()
        usage = stream.outcome.usage
        if usage is None:
            p.reasons.append("usage=estimated")
            usage = p.estimated()
            if status == 200 and stream.outcome.finish_reason is None:
                status = 502  # ended without its end: an answer cut short
            # else a whole answer whose upstream sent no usage: served, billed as estimated
        if stream.outcome.finish_reason == "insufficient_system_resource":
            p.reasons.append("upstream-insufficient-resource")
        await self._settle(p, usage, status)

    # ---- after the response ------------------------------------------------------------

    def _shadow_submit(self, p: Prepared, answer: Callable[[], str]) -> None:
        """Hand a sampled, successful request to shadow mode; never affects the client."""
        try:
            if self.shadow is not None:
                self.shadow.submit(p, answer())
        except Exception as exc:
            self.log.warning("shadow submit failed", request_id=p.request_id, error=repr(exc))

    async def _unexpected(self, p: Prepared, exc: Exception) -> TiergateError:
        """A bug while dispatching: the hold is released like any failure's (a leaked one
        would lock the budget until it expires), the traceback logged, the client told."""
        self.log.exception("unhandled_error", request_id=p.request_id, error=repr(exc))
        err = TiergateError(
            f"internal error ({type(exc).__name__}); the gateway logged the details",
            detail=repr(exc),
        )
        await self.fail(p, err)
        return err

    async def fail(self, p: Prepared, err: TiergateError) -> None:
        err.headers.setdefault("x-request-id", p.request_id)
        err.headers.setdefault("x-tiergate-route", p.route_header())
        if self.journal is not None:  # before the release: a released request is never billed
            await self.journal.done(p.request_id)
        await self.accounting.release(p.caller, p.hold or Hold(p.request_id))
        self.metrics.requests.labels(
            p.call.protocol,
            p.plan.primary.tier,
            p.plan.primary.mode.label,
            p.plan.primary.backend,
            str(err.status),
            p.caller.team_id or "none",
        ).inc()
        self._log(p, p.option or p.plan.primary, Usage(), 0, err.status, error=err.logged)
        err.message = public_message(err.message)

    async def _settle(
        self, p: Prepared, usage: Usage, status: int, *, provider_cost_usd: float | None = None
    ) -> None:
        s, peak = self.settlement(p, usage, status, provider_cost_usd)
        journaled = None if self.journal is None else await self.journal.orphan_cost(p.request_id)
        try:
            replaced = await self.accounting.settle(
                p.caller, s, p.hold or Hold(p.request_id), replaces=journaled
            )
        finally:
            if self.journal is not None:
                # Without Redis, a journaled request's entry becomes its settlement until
                # the ledger row is written (a kill in between bills it from the entry).
                await self.journal.done(p.request_id, lambda: entry_of(p, s, peak))
        p.cost_nanos = s.cost_nanos
        option = p.option or p.plan.primary
        if self.truth is not None and p.plan.reason.startswith("auto"):
            # strong as shadow mode means it, so that the labels and the shares agree
            cfg = self.catalog.routing.shadow
            cheap = is_cheaper(
                option.tier, option.mode.thinking, cfg.strong_tier, cfg.strong_thinking
            )
            self.truth.settled(not cheap, s.cost_nanos)
        if replaced is None:
            self.record(s, p.caller.key_prefix, peak)
        else:
            # Settled from the journal while this process was stalled, and counted then:
            # the cost counter gets the difference (a counter cannot go down).
            m, lbl = self.metrics, (s.tier, s.mode, s.backend)
            m.cost.labels(
                *lbl, s.team_id or "none", p.caller.key_prefix or "none", "1" if peak else "0"
            ).inc(max(s.cost_nanos - replaced, 0))
        self._log(p, option, usage, s.cost_nanos, status, error=p.error)

    def settlement(
        self,
        p: Prepared,
        usage: Usage,
        status: int,
        provider_cost_usd: float | None = None,
        note: str = "",
    ) -> tuple[Settlement, bool]:
        """The ledger's record of a request ended with ``usage``, and whether at peak price."""
        option = p.option or p.trying or p.plan.primary
        if self.prices.has(option.backend, option.tier):
            rate = self.prices.rate(option.backend, option.tier, p.started_at)
            cost, version, peak = rate.cost_nanos(usage), rate.version, rate.peak
        else:
            cost = round((provider_cost_usd or 0.0) * NANOS_PER_USD)
            version, peak = "litellm-price-map", False
        hosted = self.prices.hosted_rate(option.tier, p.started_at)
        s = Settlement(
            request_id=p.request_id,
            ts=p.started_at,
            key_id=p.caller.key_id,
            team_id=p.caller.team_id,
            protocol=p.call.protocol,
            requested_model=p.call.model,
            tier=option.tier,
            mode=option.mode.label,
            backend=option.backend,
            replica=p.replica,
            route_reason=f"{p.reason};{note}" if note else p.reason,
            cache_hit_tokens=usage.cache_hit_tokens,
            cache_miss_tokens=usage.cache_miss_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            price_version=version,
            cost_nanos=cost,
            hosted_equiv_nanos=hosted.cost_nanos(usage) if hosted else cost,
            latency_ms=round((time.perf_counter() - p.started) * 1000, 3),
            status=status,
        )
        return s, peak

    def record(self, s: Settlement, key_prefix: str | None, peak: bool) -> None:
        """The metrics of a settled request."""
        usage = Usage(s.cache_hit_tokens, s.cache_miss_tokens, s.output_tokens, s.reasoning_tokens)
        cost, team = s.cost_nanos, s.team_id or "none"
        m, lbl = self.metrics, (s.tier, s.mode, s.backend)
        m.requests.labels(s.protocol, *lbl, str(s.status), team).inc()
        for kind, n in (
            ("cache_hit", usage.cache_hit_tokens),
            ("cache_miss", usage.cache_miss_tokens),
            ("output", usage.output_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if n:
                m.tokens.labels(kind, *lbl, team).inc(n)
        m.cost.labels(*lbl, team, key_prefix or "none", "1" if peak else "0").inc(cost)
        m.hosted_equivalent.labels(*lbl, team).inc(s.hosted_equiv_nanos)
        pro = self.prices.hosted_rate(self.catalog.strong_tier, s.ts)
        m.pro_equivalent.labels(*lbl, team).inc(pro.cost_nanos(usage) if pro else cost)
        if usage.cache_hit_tokens and self.prices.has(s.backend, s.tier):
            rate = self.prices.rate(s.backend, s.tier, s.ts)
            saved = rate.cost_nanos(Usage(0, usage.cache_hit_tokens, 0, 0)) - rate.cost_nanos(
                Usage(usage.cache_hit_tokens, 0, 0, 0)
            )
            m.cache_saved.labels(*lbl, team).inc(max(saved, 0))
        m.duration.labels(*lbl).observe(s.latency_ms / 1000)

    def _log(
        self, p: Prepared, option: Option, usage: Usage, cost: int, status: int, error: str = ""
    ) -> None:
        fields: dict[str, object] = {
            "request_id": p.request_id,
            "protocol": p.call.protocol,
            "model": p.call.model,
            "route": option.label,
            "reason": p.reason,
            "replica": p.replica,
            "status": status,
            "stream": p.call.stream,
            "team": p.caller.team_id,
            "key": p.caller.key_prefix,
            "cache_hit": usage.cache_hit_tokens,
            "cache_miss": usage.cache_miss_tokens,
            "output": usage.output_tokens,
            "reasoning": usage.reasoning_tokens,
            "cost_usd": cost / NANOS_PER_USD,
            "latency_ms": round((time.perf_counter() - p.started) * 1000, 2),
        }
        if error:
            fields["error"] = error
        if self.log_prompts:
            fields["prompt"] = p.call.last_user_text[:2000]
        self.log.info("request", **fields)
