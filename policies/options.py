"""What a request asks for (tier and thinking mode) and the options that can serve it.

An option is (tier, mode, backend): e.g. ``flash/non-thinking/flash-local`` or
``pro/think-max/hosted``. Resolving the requested model name through the catalog turns
aliases such as the retired ``deepseek-chat`` / ``deepseek-reasoner`` into a tier and a
fixed mode; otherwise the request's own thinking fields decide, with the hosted API's
defaults (thinking on, effort high).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.catalog import DEFAULT_EFFORT_MAP, Catalog, EffortName, RoutingDefaults
from policies.errors import InvalidRequest, UnknownModel, json_type

Effort = EffortName


@dataclass(frozen=True, slots=True)
class Mode:
    thinking: bool
    effort: Effort | None = None

    @property
    def label(self) -> str:
        if not self.thinking:
            return "non-thinking"
        return f"think-{self.effort or 'high'}"


NON_THINKING = Mode(False, None)


@dataclass(frozen=True, slots=True)
class Option:
    tier: str
    mode: Mode
    backend: str

    @property
    def label(self) -> str:
        return f"{self.tier}/{self.mode.label}/{self.backend}"


@dataclass(frozen=True, slots=True)
class Target:
    """The requested model after alias resolution. ``tier == "auto"`` lets the router choose.

    ``mode`` is None when neither the alias nor the request fixed it (the router or the
    defaults decide). ``rewritten_from`` records an alias rewrite for the route header.
    """

    requested: str
    tier: str
    mode: Mode | None
    rewritten_from: str | None = None
    passthrough: bool = False


_TEMPLATE_FLAGS = ("thinking", "enable_thinking")


def requested_mode(
    body: Mapping[str, Any], effort_map: Mapping[str, str] = DEFAULT_EFFORT_MAP
) -> Mode | None:
    """The thinking mode the request body asks for, in any of the dialects clients use.

    ``effort_map`` (the catalog's ``routing.effort_map``) maps the effort names clients
    send onto V4's efforts, or ``off``."""
    thinking: bool | None = None
    effort: Effort | None = None
    raw = body.get("thinking")
    if raw is not None:
        if not isinstance(raw, Mapping) or raw.get("type") not in ("enabled", "disabled"):
            raise InvalidRequest(
                '\'thinking\' must be an object like {"type": "enabled"} or {"type": "disabled"}',
                param="thinking",
            )
        thinking = raw.get("type") == "enabled"
    kwargs = body.get("chat_template_kwargs")
    # vLLM's V4 template thinks on ``thinking or enable_thinking`` (the latter is the name
    # Qwen-style clients send): either one given, as a boolean, asks for a mode.
    flags = [kwargs.get(k) for k in _TEMPLATE_FLAGS] if isinstance(kwargs, Mapping) else []
    for name, flag in zip(_TEMPLATE_FLAGS, flags, strict=False):
        if flag is not None and not isinstance(flag, bool):
            raise InvalidRequest(
                f"'chat_template_kwargs.{name}' must be true or false, not {json_type(flag)}",
                param=f"chat_template_kwargs.{name}",
            )
    if isinstance(kwargs, Mapping) and any(isinstance(f, bool) for f in flags):
        thinking = any(f is True for f in flags) if thinking is None else thinking
        kw_effort = kwargs.get("reasoning_effort")
        if isinstance(kw_effort, str) and effort_map.get(kw_effort, "off") != "off":
            effort = _effort(effort_map[kw_effort])
    raw_effort = body.get("reasoning_effort")
    if raw_effort is not None:
        if not isinstance(raw_effort, str) or raw_effort not in effort_map:
            allowed = ", ".join(effort_map)
            raise InvalidRequest(
                f"'reasoning_effort' must be one of: {allowed}", param="reasoning_effort"
            )
        mapped = None if effort_map[raw_effort] == "off" else _effort(effort_map[raw_effort])
        if mapped is None:
            thinking = False if thinking is None else thinking
        else:
            effort = mapped
    if thinking is None and effort is None:
        return None
    if thinking is False:
        return NON_THINKING
    return Mode(True, effort or "high")


def _effort(name: str) -> Effort:
    if name == "low":
        return "low"
    return "max" if name == "max" else "high"


def resolve_target(catalog: Catalog, model: str, body: Mapping[str, Any]) -> Target:
    """Map the client's model name and thinking fields to a tier and (maybe) a mode."""
    entry = catalog.lookup_model(model)
    if entry is None:
        if model in catalog.passthrough:
            return Target(requested=model, tier=model, mode=NON_THINKING, passthrough=True)
        known = ", ".join(sorted(catalog.public_model_names()))
        raise UnknownModel(
            f"model '{model}' is not served here; use one of: {known}", param="model"
        )
    asked = requested_mode(body, catalog.routing.effort_map)
    if entry.thinking is not None:
        # An alias with a fixed mode wins over the body (deepseek-chat is always non-thinking).
        mode: Mode | None = (
            Mode(True, entry.effort or (asked.effort if asked else None) or "high")
            if entry.thinking
            else NON_THINKING
        )
    else:
        mode = asked
        if mode is not None and mode.thinking and entry.effort is not None:
            mode = Mode(True, entry.effort)
    rewritten = model if (entry.thinking is not None or entry.retired is not None) else None
    return Target(requested=model, tier=entry.tier, mode=mode, rewritten_from=rewritten)


def default_mode(defaults: RoutingDefaults) -> Mode:
    return Mode(True, defaults.default_effort) if defaults.default_thinking else NON_THINKING
