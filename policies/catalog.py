"""The versioned catalog: tiers, backends, client-facing model names, prices, routing defaults.

The catalog is data in one YAML file, parsed strictly (unknown keys are errors) and
validated as a whole at startup, so a bad file fails ``tiergate serve`` with a message that
names the offending key. Prices and model names never appear in code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Hashable, Mapping
from datetime import datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.errors import ConfigError

CATALOG_VERSION = 1
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


#: V4's reasoning efforts (the hosted API: low, high, max; vLLM's V4 template: high, max).
EffortName = Literal["low", "high", "max"]

DEFAULT_EFFORT_MAP: dict[str, Literal["off", "low", "high", "max"]] = {
    "none": "off",
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "max",
    "ultra": "max",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeakWindow(_Strict):
    """A recurring window in UTC during which peak prices apply."""

    days: tuple[Weekday, ...] = WEEKDAYS
    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> PeakWindow:
        if self.end <= self.start:
            raise ValueError(f"peak window end {self.end} must be after start {self.start}")
        return self


class PricePoint(_Strict):
    """Prices in USD per 1M tokens, in force from ``effective`` until the next point."""

    effective: datetime
    version: str = ""
    cache_hit: Decimal = Field(ge=0)
    cache_miss: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    peak_multiplier: Decimal = Field(default=Decimal(1), ge=1)
    peak_windows: tuple[PeakWindow, ...] = ()

    @field_validator("effective")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("effective must carry a timezone, e.g. 2026-08-16T00:00:00Z")
        return v


class SelfHostedCost(_Strict):
    """GPU cost of a self-hosted pool turned into per-token prices."""

    usd_per_gpu_hour: Decimal = Field(gt=0)
    gpus_per_replica: int = Field(gt=0)
    prefill_tokens_per_second: Decimal = Field(gt=0)
    output_tokens_per_second: Decimal = Field(gt=0)
    cache_hit_fraction: Decimal = Field(default=Decimal("0.1"), ge=0, le=1)


class TierSpec(_Strict):
    display: str = ""
    context_length: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)


class HostedModel(_Strict):
    name: str
    prices: str


class HostedBackend(_Strict):
    """The hosted DeepSeek API (or anything speaking its contract), called through litellm."""

    kind: Literal["deepseek"]
    base_url: str
    client: Literal["direct", "litellm"] = "direct"
    api_key_env: str = "DEEPSEEK_API_KEY"
    models: dict[str, HostedModel]
    timeout_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    # A stream's first token (keep-alive comments do not count) must come within this,
    # else the request fails over, or fails with a 504 (None: no deadline).
    first_token_timeout_s: float | None = Field(default=60.0, gt=0)


class Discovery(_Strict):
    """Replicas from DNS A records, e.g. a Kubernetes headless Service."""

    dns: str
    port: int = Field(default=8000, gt=0, le=65535)
    scheme: Literal["http", "https"] = "http"
    interval_s: float = Field(default=10.0, gt=0)


class VllmBackend(_Strict):
    """A pool of self-hosted vLLM replicas serving one tier."""

    kind: Literal["vllm"]
    tier: str
    served_model: str
    replicas: tuple[str, ...] = ()
    discovery: Discovery | None = None
    max_model_len: int = Field(gt=0)
    cost: SelfHostedCost | None = None
    prices: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    # As for the hosted API; None: a long prefill may take as long as it needs.
    first_token_timeout_s: float | None = Field(default=None, gt=0)
    selection: Literal["affinity", "least_loaded", "round_robin"] = "affinity"
    load_factor: float = Field(default=1.25, ge=1.0)
    # Prefixes remembered per replica for affinity (chain elements, ~256 tokens each): the
    # ceiling, and the bound when a replica's KV-cache size is unknown; 0: no index.
    prefix_index_entries: int = Field(default=65_536, ge=0)
    # A replica's KV cache in tokens when its /metrics lacks vllm:cache_config_info
    # (None: prefix_index_entries bounds it), and the characters per token assumed to
    # convert it to the index's 1 KiB blocks.
    kv_cache_tokens: int | None = Field(default=None, gt=0)
    chars_per_token: float = Field(default=4.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # A busy replica answers its polls slowly: a poll unanswered within poll_timeout_s is
    # a miss, and only this many misses in a row mark it unhealthy (a refused connection
    # or a /health other than 200 does at once).
    poll_timeout_s: float = Field(default=5.0, gt=0)
    unhealthy_after_misses: int = Field(default=3, gt=0)
    max_queue_depth: int = Field(default=32, gt=0)
    # The gateway's own queue: at most this many requests in flight per replica (None: no
    # cap; each replica's scheduler queues the excess), the rest waiting in the gateway up
    # to queue_timeout_s, at most max_queued of them (more spill or are refused).
    max_in_flight_per_replica: int | None = Field(default=None, gt=0)
    queue_timeout_s: float = Field(default=5.0, gt=0)
    max_queued: int = Field(default=256, gt=0)
    breaker_failures: int = Field(default=2, gt=0)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _priced(self) -> VllmBackend:
        if (self.cost is None) == (self.prices is None):
            raise ValueError("a vllm backend needs exactly one of 'cost' (GPU cost) or 'prices'")
        if not self.replicas and self.discovery is None:
            raise ValueError("a vllm backend needs replica URLs or a 'discovery' section")
        return self


class PassthroughModel(_Strict):
    """Any other provider's model, served through litellm as-is (no routing)."""

    litellm_model: str
    api_key_env: str | None = None
    api_base: str | None = None
    prices: str | None = None


class ModelEntry(_Strict):
    """A client-facing model name (or glob pattern such as ``claude-opus*``)."""

    tier: str
    thinking: bool | None = None
    effort: EffortName | None = None
    retired: datetime | None = None
    note: str = ""


class ShadowMode(_Strict):
    """Opt-in shadow mode: a sampled share of cheap-routed requests is replayed on the strong
    option in the background, a judge compares the two answers, and the verdict becomes a
    training label for the router. Shadow spend is capped per day (UTC) in nano-dollars."""

    enabled: bool = False
    share: float = Field(default=0.02, ge=0, le=1)
    budget_nanos_per_day: int = Field(default=1_000_000_000, ge=0)
    strong_tier: str = "pro"
    strong_thinking: bool = True
    strong_effort: EffortName = "high"
    judge_tier: str = "pro"
    judge_thinking: bool = True
    judge_effort: EffortName = "high"
    max_output_tokens: int = Field(default=8192, gt=0)
    judge_max_tokens: int = Field(default=4096, gt=0)
    store_prompts: bool = False
    max_in_flight: int = Field(default=4, gt=0)


class RoutingDefaults(_Strict):
    default_thinking: bool = True
    default_effort: EffortName = "high"
    # The effort names clients send, onto V4's efforts ("off": thinking off). The hosted
    # API's thinking-mode guide maps them so; a change there is a change here, not in code.
    effort_map: dict[str, Literal["off", "low", "high", "max"]] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_MAP)
    )
    backend_preference: tuple[Literal["self_hosted", "hosted"], ...] = ("self_hosted", "hosted")
    spill_to_hosted: bool = True
    reservation_output_cap: int = Field(default=32768, gt=0)
    auto_hard_chars: int = Field(default=4000, gt=0)
    classifier: Literal["model", "rule"] = "model"
    auto_pro_share: float = Field(default=0.2, ge=0, le=1)
    auto_think_share: float = Field(default=0.3, ge=0, le=1)
    shadow: ShadowMode = ShadowMode()


class Catalog(_Strict):
    version: Literal[1]
    tiers: dict[str, TierSpec]
    prices: dict[str, tuple[PricePoint, ...]]
    backends: dict[str, Annotated[HostedBackend | VllmBackend, Field(discriminator="kind")]]
    models: dict[str, ModelEntry]
    passthrough: dict[str, PassthroughModel] = {}
    routing: RoutingDefaults = RoutingDefaults()

    @model_validator(mode="after")
    def _cross_references(self) -> Catalog:
        errors: list[str] = []
        for name, points in self.prices.items():
            if not points:
                errors.append(f"prices.{name}: needs at least one price point")
            stamps = [p.effective for p in points]
            if stamps != sorted(stamps) or len(set(stamps)) != len(stamps):
                errors.append(f"prices.{name}: effective dates must be strictly increasing")
        for bname, backend in self.backends.items():
            if isinstance(backend, HostedBackend):
                for tier, hm in backend.models.items():
                    if tier not in self.tiers:
                        errors.append(f"backends.{bname}.models.{tier}: unknown tier")
                    if hm.prices not in self.prices:
                        errors.append(
                            f"backends.{bname}.models.{tier}.prices: unknown '{hm.prices}'"
                        )
            else:
                if backend.tier not in self.tiers:
                    errors.append(f"backends.{bname}.tier: unknown tier '{backend.tier}'")
                if backend.prices is not None and backend.prices not in self.prices:
                    errors.append(f"backends.{bname}.prices: unknown '{backend.prices}'")
        for mname, entry in self.models.items():
            if entry.tier != "auto" and entry.tier not in self.tiers:
                errors.append(f"models.{mname}.tier: unknown tier '{entry.tier}' (or 'auto')")
            if entry.tier != "auto" and not self.backends_for_tier(entry.tier):
                errors.append(f"models.{mname}: no backend serves tier '{entry.tier}'")
        for pname, pt in self.passthrough.items():
            if pname in self.models:
                errors.append(f"passthrough.{pname}: also declared under models")
            if pt.prices is not None and pt.prices not in self.prices:
                errors.append(f"passthrough.{pname}.prices: unknown '{pt.prices}'")
        shadow = self.routing.shadow
        if shadow.enabled:
            for what in ("strong_tier", "judge_tier"):
                tier = getattr(shadow, what)
                if tier not in self.tiers or not self.backends_for_tier(tier):
                    errors.append(f"routing.shadow.{what}: no backend serves tier '{tier}'")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    # ---- lookups ---------------------------------------------------------------------

    @property
    def strong_tier(self) -> str:
        """The tier `auto` escalates to and savings are measured against: "pro", else the last."""
        return "pro" if "pro" in self.tiers else list(self.tiers)[-1]

    def backends_for_tier(self, tier: str) -> list[str]:
        """Backend names that can serve ``tier``, in the configured preference order."""
        hosted = [
            n for n, b in self.backends.items() if isinstance(b, HostedBackend) and tier in b.models
        ]
        local = [
            n for n, b in self.backends.items() if isinstance(b, VllmBackend) and b.tier == tier
        ]
        order: list[str] = []
        for kind in self.routing.backend_preference:
            order.extend(local if kind == "self_hosted" else hosted)
        return order

    def hosted_backend_for_tier(self, tier: str) -> str | None:
        for n, b in self.backends.items():
            if isinstance(b, HostedBackend) and tier in b.models:
                return n
        return None

    def lookup_model(self, name: str) -> ModelEntry | None:
        """Exact names first, then glob patterns in file order."""
        entry = self.models.get(name)
        if entry is not None:
            return entry
        for pattern, entry in self.models.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return entry
        return None

    def public_model_names(self) -> list[str]:
        names = [n for n in self.models if not any(c in n for c in "*?[")]
        return names + list(self.passthrough)


def parse_catalog(data: Mapping[str, Any], *, source: str = "<catalog>") -> Catalog:
    """Validate a parsed YAML document; raise ConfigError with every problem found."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"invalid catalog {source}:\n" + "\n".join(lines)) from None


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, again: int) -> None:
        super().__init__(f"key {key!r} given twice in one mapping (line {first} and line {again})")


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no types
    """YAML where a key given twice in one mapping is an error (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # the base constructor reports it
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def load_catalog(path: str | Path) -> Catalog:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read catalog {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"catalog {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}): save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"catalog {p} is not valid YAML: {exc}") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"catalog {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"catalog {p} must be a mapping at the top level")
    return parse_catalog(data, source=str(p))
