import pytest

from policies.catalog import load_catalog
from policies.errors import InvalidRequest, UnknownModel
from policies.options import NON_THINKING, Mode, requested_mode, resolve_target

from .test_catalog import EXAMPLES

CATALOG = load_catalog(EXAMPLES / "demo.yaml")


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        ({}, None),
        ({"thinking": {"type": "disabled"}}, NON_THINKING),
        ({"thinking": {"type": "enabled"}}, Mode(True, "high")),
        ({"thinking": {"type": "enabled"}, "reasoning_effort": "max"}, Mode(True, "max")),
        # the hosted API's guide: minimal/low -> low, medium/xhigh -> high, max/ultra -> max
        ({"reasoning_effort": "minimal"}, Mode(True, "low")),
        ({"reasoning_effort": "low"}, Mode(True, "low")),
        ({"reasoning_effort": "medium"}, Mode(True, "high")),
        ({"reasoning_effort": "xhigh"}, Mode(True, "high")),
        ({"reasoning_effort": "ultra"}, Mode(True, "max")),
        ({"reasoning_effort": "none"}, NON_THINKING),
        ({"chat_template_kwargs": {"thinking": True}}, Mode(True, "high")),
        (
            {"chat_template_kwargs": {"thinking": True, "reasoning_effort": "max"}},
            Mode(True, "max"),
        ),
        ({"chat_template_kwargs": {"thinking": False}}, NON_THINKING),
        # vLLM's V4 template thinks on `thinking or enable_thinking`
        ({"chat_template_kwargs": {"enable_thinking": False}}, NON_THINKING),
        ({"chat_template_kwargs": {"enable_thinking": True}}, Mode(True, "high")),
        (
            {"chat_template_kwargs": {"thinking": False, "enable_thinking": True}},
            Mode(True, "high"),
        ),
        ({"chat_template_kwargs": {"thinking": False, "enable_thinking": False}}, NON_THINKING),
        ({"chat_template_kwargs": {"enable_thinking": None}}, None),
        (
            {"thinking": {"type": "enabled"}, "chat_template_kwargs": {"enable_thinking": False}},
            Mode(True, "high"),
        ),
    ],
)
def test_requested_mode_dialects(body: dict, mode: Mode | None) -> None:
    assert requested_mode(body) == mode


@pytest.mark.parametrize("name", ["thinking", "enable_thinking"])
def test_a_template_flag_that_is_not_a_boolean_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match=f"chat_template_kwargs.{name}' must be true or false"):
        requested_mode({"chat_template_kwargs": {name: "no"}})


def test_the_effort_map_is_the_catalogs() -> None:
    custom = {"low": "high", "max": "max", "none": "off"}
    assert requested_mode({"reasoning_effort": "low"}, custom) == Mode(True, "high")
    assert requested_mode({"reasoning_effort": "none"}, custom) == NON_THINKING
    with pytest.raises(InvalidRequest, match="must be one of: low, max, none"):
        requested_mode({"reasoning_effort": "medium"}, custom)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"thinking": True}, "thinking"),
        ({"thinking": {"type": "on"}}, "thinking"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 3}, "reasoning_effort"),
    ],
)
def test_bad_thinking_fields_are_400s(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        requested_mode(body)
    assert exc.value.param == param


@pytest.mark.parametrize(
    ("model", "body", "tier", "mode", "rewritten"),
    [
        ("deepseek-chat", {}, "flash", NON_THINKING, "deepseek-chat"),
        # the alias fixes the mode even if the body asks otherwise
        (
            "deepseek-chat",
            {"thinking": {"type": "enabled"}},
            "flash",
            NON_THINKING,
            "deepseek-chat",
        ),
        ("deepseek-reasoner", {}, "flash", Mode(True, "high"), "deepseek-reasoner"),
        (
            "deepseek-reasoner",
            {"reasoning_effort": "max"},
            "flash",
            Mode(True, "max"),
            "deepseek-reasoner",
        ),
        ("deepseek-v4-pro", {}, "pro", None, None),
        ("deepseek-v4-pro", {"thinking": {"type": "disabled"}}, "pro", NON_THINKING, None),
        ("auto", {}, "auto", None, None),
        ("claude-opus-4-1", {}, "pro", None, None),
    ],
)
def test_resolve_target(model, body, tier, mode, rewritten) -> None:
    target = resolve_target(CATALOG, model, body)
    assert (target.tier, target.mode, target.rewritten_from) == (tier, mode, rewritten)


def test_unknown_model_lists_what_is_served() -> None:
    with pytest.raises(UnknownModel) as exc:
        resolve_target(CATALOG, "gpt-9", {})
    assert "gpt-9" in exc.value.message and "deepseek-chat" in exc.value.message
    assert exc.value.status == 404
