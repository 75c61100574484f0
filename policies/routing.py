"""The routing plan: which option serves a request, what to fall back to, and why.

Pure: the gateway hands in the resolved target, cheap request facts and the state of each
backend; this returns an ordered plan whose reason string travels into the
``x-tiergate-route`` header, the ledger and the log line.
Constraints come first (FIM is non-thinking only, context length vs each backend's
limit, backend health), then the catalog's backend preference (self-hosted before hosted
by default), with spill-over to the hosted API when the route allows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from policies.catalog import Catalog, HostedBackend, VllmBackend
from policies.errors import InvalidRequest, ServiceUnavailable
from policies.options import NON_THINKING, Mode, Option, Target, default_mode


@dataclass(frozen=True, slots=True)
class AutoChoice:
    """The classifier's pick for ``auto`` requests."""

    tier: str
    mode: Mode
    reason: str
    # The signals that lifted ``mode`` to thinking (``asked-to-reason``, ``long-context``),
    # the last part of ``reason``: left out of the route reason when the client set the mode.
    mode_signals: tuple[str, ...] = ()
    # The router's hardness score (None for the rule classifier); the calibration takes it
    # in only once the request is dispatched (``RouterService.routed``).
    score: float | None = None

    def reason_without_mode_signals(self) -> str:
        suffix = "".join(";" + s for s in self.mode_signals)
        if suffix and self.reason.endswith(suffix):
            return self.reason[: -len(suffix)]
        return self.reason


@dataclass(frozen=True, slots=True)
class RouteRequest:
    target: Target
    prompt_tokens: int
    max_output_tokens: int
    is_fim: bool = False
    auto: AutoChoice | None = None
    tier_override: str | None = None
    # The history has assistant tool-call turns without their reasoning: a conversation held
    # without thinking so far. The hosted API refuses to continue it in thinking mode, so a
    # mode the gateway picks (``auto``) stays non-thinking on every backend the plan may use.
    history_without_reasoning: bool = False
    # ``n``: the hosted API answers one choice only (400 for more); vLLM samples n.
    choices: int = 1


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the gateway knows about a backend right now."""

    available: bool = True
    saturated: bool = False


@dataclass(frozen=True, slots=True)
class RoutePlan:
    primary: Option
    fallbacks: tuple[Option, ...]
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()  # (backend, why) passed over: down, saturated...

    def options(self) -> tuple[Option, ...]:
        return (self.primary, *self.fallbacks)


def _choose_tier_and_mode(catalog: Catalog, req: RouteRequest) -> tuple[str, Mode, str]:
    target = req.target
    if req.tier_override is not None:
        if req.tier_override not in catalog.tiers:
            raise InvalidRequest(
                f"x-tiergate-tier '{req.tier_override}' is not a tier; use one of: "
                + ", ".join(catalog.tiers),
                param="x-tiergate-tier",
            )
        mode = target.mode or (req.auto.mode if req.auto else default_mode(catalog.routing))
        return req.tier_override, mode, f"override:{req.tier_override}"
    if target.tier == "auto":
        if req.auto is None:
            raise InvalidRequest("model 'auto' needs the classifier, which is not configured")
        reason = f"auto:{req.auto.reason}"
        if target.mode is not None and target.mode != req.auto.mode:
            # the request fixed the mode (thinking, reasoning_effort, or its protocol's
            # default): the reason says so rather than leave auto's choice unexplained
            reason += ";request-mode"
        return req.auto.tier, target.mode or req.auto.mode, reason
    mode = target.mode or default_mode(catalog.routing)
    if target.rewritten_from is not None:
        return target.tier, mode, f"alias:{target.rewritten_from}"
    return target.tier, mode, f"pinned:{target.requested}"


def _fits(catalog: Catalog, backend: str, tier: str, tokens: int) -> bool:
    b = catalog.backends[backend]
    if isinstance(b, VllmBackend):
        return tokens <= b.max_model_len
    return tokens <= catalog.tiers[tier].context_length


def plan_route(
    catalog: Catalog, req: RouteRequest, states: Mapping[str, BackendState]
) -> RoutePlan:
    if req.target.passthrough:
        # Another provider's model: served as asked, by its own backend, never re-routed.
        name = req.target.requested
        return RoutePlan(Option(name, NON_THINKING, name), (), f"passthrough:{name}")
    tier, mode, reason = _choose_tier_and_mode(catalog, req)
    if req.is_fim and mode.thinking:
        mode = NON_THINKING
        reason += ";fim-non-thinking"
    picked_by_auto = req.auto is not None and req.target.mode is None
    if picked_by_auto and req.history_without_reasoning and mode.thinking:
        mode = NON_THINKING
        reason += ";history-non-thinking"
    auto = req.auto
    if (
        auto is not None
        and auto.mode_signals
        and (req.target.mode is not None or not mode.thinking)
    ):
        # The signals lifted auto's mode, but the client's mode (or FIM, or the history)
        # decided it: the reason does not claim them.
        reason = reason.replace(f"auto:{auto.reason}", f"auto:{auto.reason_without_mode_signals()}")
    needed = req.prompt_tokens + req.max_output_tokens
    limit = catalog.tiers[tier].context_length
    if req.prompt_tokens > limit:
        raise InvalidRequest(
            f"the prompt is about {req.prompt_tokens} tokens, over the {limit}-token context of "
            f"tier '{tier}'; shorten the conversation",
            param="messages",
        )
    usable: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in catalog.backends_for_tier(tier):
        state = states.get(name, BackendState())
        if not _fits(catalog, name, tier, needed):
            skipped.append((name, "context"))
        elif not state.available:
            skipped.append((name, "down"))
        elif state.saturated:
            skipped.append((name, "saturated"))
        else:
            usable.append(name)
    preferred = catalog.backends_for_tier(tier)
    local_first = bool(preferred) and not isinstance(catalog.backends[preferred[0]], HostedBackend)
    if local_first and not catalog.routing.spill_to_hosted:
        usable = [n for n in usable if not isinstance(catalog.backends[n], HostedBackend)]
    if req.choices > 1:
        many = [n for n in usable if not isinstance(catalog.backends[n], HostedBackend)]
        if many:  # else the hosted API's own 400 says what it supports
            skipped += [(n, "n") for n in usable if n not in many]
            usable = many
    passed = [f"{name}:{why}" for name, why in skipped]
    if not usable:
        why = ", ".join(passed) or "no backend configured"
        raise ServiceUnavailable(
            f"no backend can serve tier '{tier}' right now ({why}); retry shortly",
            retry_after=1.0,
        )
    if skipped:
        reason += ";spill:" + ",".join(passed)
    options = tuple(Option(tier, mode, name) for name in usable)
    if req.history_without_reasoning and mode.thinking:
        options, reason = _without_lost_reasoning(catalog, options, reason)
    return RoutePlan(options[0], options[1:], reason, tuple(skipped))


def _without_lost_reasoning(
    catalog: Catalog, options: tuple[Option, ...], reason: str
) -> tuple[tuple[Option, ...], str]:
    """A thinking mode the client chose, on a history whose tool-call turns lost their
    reasoning (LangChain and most SDK helpers drop ``reasoning_content``): vLLM renders an
    empty thought and thinks on, the hosted API refuses the request (400). So self-hosted
    options come first; with none, the hosted API answers in non-thinking mode, which it
    does serve, and the reason says so. (A hosted fallback behind a replica is switched
    when it is tried: ``Pipeline._fallback_option``.)"""
    local = [o for o in options if not isinstance(catalog.backends[o.backend], HostedBackend)]
    if local:
        return (*local, *(o for o in options if o not in local)), reason
    hosted = tuple(Option(o.tier, NON_THINKING, o.backend) for o in options)
    return hosted, reason + ";history-non-thinking"


_HARD_MARKERS = (
    "prove",
    "step by step",
    "derive",
    "theorem",
    "algorithm",
    "optimi",
    "debug",
    "refactor",
    "architecture",
)


def simple_auto(catalog: Catalog, last_user_text: str, prompt_chars: int) -> AutoChoice:
    """A transparent rule for ``auto``: long or reasoning-heavy prompts go to Pro thinking."""
    text = last_user_text[:4000].lower()
    hits = [m for m in _HARD_MARKERS if m in text]
    tiers = list(catalog.tiers)
    strong = catalog.strong_tier
    weak = "flash" if "flash" in catalog.tiers else tiers[0]
    if hits or prompt_chars > catalog.routing.auto_hard_chars:
        why = f"marker={hits[0]}" if hits else f"long={prompt_chars}"
        return AutoChoice(strong, Mode(True, "high"), f"rule:{why}")
    return AutoChoice(weak, NON_THINKING, "rule:easy")
