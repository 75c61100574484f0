import pytest
import yaml

from policies.catalog import Catalog, load_catalog, parse_catalog
from policies.errors import InvalidRequest, ServiceUnavailable
from policies.options import NON_THINKING, Mode, resolve_target
from policies.routing import BackendState, RouteRequest, plan_route, simple_auto

from .test_catalog import EXAMPLES

CATALOG = load_catalog(EXAMPLES / "demo.yaml")


def req(model: str, body: dict | None = None, **kw) -> RouteRequest:
    target = resolve_target(CATALOG, model, body or {})
    auto = simple_auto(CATALOG, kw.pop("text", "hello"), 10) if target.tier == "auto" else None
    return RouteRequest(
        target=target,
        prompt_tokens=kw.pop("prompt", 100),
        max_output_tokens=kw.pop("out", 100),
        auto=auto,
        **kw,
    )


@pytest.mark.parametrize(
    ("model", "body", "label", "reason"),
    [
        ("deepseek-chat", {}, "flash/non-thinking/flash-local", "alias:deepseek-chat"),
        ("deepseek-reasoner", {}, "flash/think-high/flash-local", "alias:deepseek-reasoner"),
        ("deepseek-v4-pro", {}, "pro/think-high/pro-local", "pinned:deepseek-v4-pro"),
        (
            "deepseek-v4-flash",
            {"thinking": {"type": "disabled"}},
            "flash/non-thinking/flash-local",
            "pinned:deepseek-v4-flash",
        ),
    ],
)
def test_pinned_and_aliases_prefer_self_hosted(model, body, label, reason) -> None:
    plan = plan_route(CATALOG, req(model, body), {})
    assert plan.primary.label == label
    assert plan.reason == reason
    assert [o.backend for o in plan.fallbacks] == ["hosted"]


def test_down_backend_spills_to_hosted_with_reason() -> None:
    plan = plan_route(CATALOG, req("deepseek-chat"), {"flash-local": BackendState(available=False)})
    assert plan.primary.backend == "hosted"
    assert plan.reason == "alias:deepseek-chat;spill:flash-local:down"


def test_prompt_over_replica_context_goes_hosted() -> None:
    plan = plan_route(CATALOG, req("deepseek-v4-flash", prompt=300_000), {})
    assert plan.primary.backend == "hosted" and "flash-local:context" in plan.reason


def test_prompt_over_tier_context_is_a_clear_400() -> None:
    with pytest.raises(InvalidRequest, match="over the 1048576-token context"):
        plan_route(CATALOG, req("deepseek-v4-flash", prompt=2_000_000), {})


def test_nothing_usable_is_503_with_retry() -> None:
    states = {"flash-local": BackendState(available=False), "hosted": BackendState(saturated=True)}
    with pytest.raises(ServiceUnavailable) as exc:
        plan_route(CATALOG, req("deepseek-chat"), states)
    assert exc.value.retry_after == 1.0 and "hosted:saturated" in exc.value.message


def test_fim_is_always_non_thinking() -> None:
    plan = plan_route(CATALOG, req("deepseek-reasoner", is_fim=True), {})
    assert plan.primary.mode == NON_THINKING and plan.reason.endswith(";fim-non-thinking")


@pytest.mark.parametrize(
    ("text", "tier", "mode"),
    [
        ("hi there, what's the capital of France?", "flash", NON_THINKING),
        ("Prove that there are infinitely many primes.", "pro", Mode(True, "high")),
        ("x" * 5000, "pro", Mode(True, "high")),
    ],
)
def test_auto_rule(text: str, tier: str, mode: Mode) -> None:
    choice = simple_auto(CATALOG, text, len(text))
    assert (choice.tier, choice.mode) == (tier, mode)
    plan = plan_route(CATALOG, req("auto", text=text), {})
    assert plan.reason.startswith("auto:rule:")


@pytest.mark.parametrize(
    ("model", "history", "mode", "suffix"),
    [
        # auto picked thinking, but the conversation so far ran without it: it stays so.
        ("auto", True, NON_THINKING, ";history-non-thinking"),
        ("auto", False, Mode(True, "high"), ""),
        # A mode the client chose is the client's: the backend's own answer stands.
        ("deepseek-reasoner", True, Mode(True, "high"), ""),
    ],
)
def test_auto_keeps_a_non_thinking_conversation_non_thinking(model, history, mode, suffix) -> None:
    text = {"text": "Prove that there are infinitely many primes."} if model == "auto" else {}
    plan = plan_route(CATALOG, req(model, history_without_reasoning=history, **text), {})
    assert plan.primary.mode == mode
    assert all(o.mode == mode for o in plan.fallbacks)
    assert plan.reason.endswith(suffix)
    assert ("history-non-thinking" in plan.reason) == bool(suffix)


def _hosted_first() -> Catalog:
    data = yaml.safe_load((EXAMPLES / "demo.yaml").read_text())
    data["routing"]["backend_preference"] = ["hosted", "self_hosted"]
    return parse_catalog(data)


def test_a_pinned_thinking_mode_on_a_history_without_reasoning_avoids_the_hosted_400() -> None:
    # The hosted API refuses thinking on such a history; a replica thinks on (empty thought).
    history = {"history_without_reasoning": True}
    hosted_first = _hosted_first()
    target = resolve_target(hosted_first, "deepseek-reasoner", {})
    plan = plan_route(hosted_first, RouteRequest(target, 100, 100, **history), {})
    assert plan.primary.label == "flash/think-high/flash-local"
    assert [o.label for o in plan.fallbacks] == ["flash/think-high/hosted"]
    assert plan.reason == "alias:deepseek-reasoner"
    # Only the hosted API can serve: it answers without thinking, and the reason says so.
    down = {"flash-local": BackendState(available=False)}
    plan = plan_route(CATALOG, req("deepseek-reasoner", **history), down)
    assert plan.primary.label == "flash/non-thinking/hosted" and not plan.fallbacks
    assert plan.reason.endswith(";history-non-thinking")
    # With its reasoning sent back, the same request goes where the catalog prefers.
    plan = plan_route(hosted_first, RouteRequest(target, 100, 100), {})
    assert plan.primary.label == "flash/think-high/hosted"


def test_several_choices_go_where_they_can_be_sampled() -> None:
    # The hosted API answers n=1 only: with a replica up, n>1 goes there first, whatever
    # the preference; with none, the hosted API's own 400 says what it supports.
    hosted_first = _hosted_first()
    target = resolve_target(hosted_first, "deepseek-chat", {})
    plan = plan_route(hosted_first, RouteRequest(target, 100, 100, choices=3), {})
    assert plan.primary.backend == "flash-local" and not plan.fallbacks
    assert plan.reason.endswith(";spill:hosted:n") and plan.skipped == (("hosted", "n"),)
    down = {"flash-local": BackendState(available=False)}
    plan = plan_route(hosted_first, RouteRequest(target, 100, 100, choices=3), down)
    assert plan.primary.backend == "hosted"
    plan = plan_route(hosted_first, RouteRequest(target, 100, 100, choices=1), {})
    assert plan.primary.backend == "hosted"


def test_auto_leaves_a_mode_the_client_set() -> None:
    body = {"thinking": {"type": "enabled"}}
    plan = plan_route(CATALOG, req("auto", body, history_without_reasoning=True, text="hi"), {})
    assert plan.primary.mode.thinking and "history-non-thinking" not in plan.reason


@pytest.mark.parametrize(
    ("body", "thinking", "suffix"),
    [
        ({}, True, ""),  # auto's own choice
        ({"thinking": {"type": "enabled"}}, True, ""),  # the same mode: nothing to say
        ({"thinking": {"type": "disabled"}}, False, ";request-mode"),
        ({"reasoning_effort": "none"}, False, ";request-mode"),
    ],
)
def test_a_mode_the_request_fixed_is_named_in_the_reason(
    body: dict[str, object], thinking: bool, suffix: str
) -> None:
    text = "Prove that there are infinitely many primes, step by step."
    plan = plan_route(CATALOG, req("auto", body, text=text), {})
    assert plan.primary.mode.thinking == thinking
    assert plan.reason.startswith("auto:") and plan.reason.endswith(suffix or plan.reason)
    assert ("request-mode" in plan.reason) == bool(suffix)


def test_override_header_wins_and_unknown_tier_is_400() -> None:
    plan = plan_route(CATALOG, req("deepseek-chat", tier_override="pro"), {})
    assert plan.primary.tier == "pro" and plan.reason == "override:pro"
    with pytest.raises(InvalidRequest, match="not a tier"):
        plan_route(CATALOG, req("deepseek-chat", tier_override="ultra"), {})


def test_passthrough_models_are_served_as_asked() -> None:
    catalog = load_catalog(EXAMPLES / "hosted.yaml")
    target = resolve_target(catalog, "gpt-4o-mini", {"thinking": {"type": "enabled"}})
    plan = plan_route(
        catalog, RouteRequest(target=target, prompt_tokens=10, max_output_tokens=10), {}
    )
    assert plan.primary.label == "gpt-4o-mini/non-thinking/gpt-4o-mini"
    assert plan.reason == "passthrough:gpt-4o-mini" and plan.fallbacks == ()
