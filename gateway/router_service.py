"""The router in the request path: the shipped model, calibrated thresholds, metrics.

Per process: scores feed a ring buffer that keeps the Pro share near the catalog's
``routing.auto_pro_share`` (and thinking near ``auto_think_share``); the realised share is
exported as ``tiergate_router_pro_share``.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from gateway.metrics import Metrics
from gateway.parse import Call
from policies.catalog import Catalog
from policies.features import DENSE_NAMES
from policies.options import Mode
from policies.router import Router
from policies.router.calibration import Calibrator, Thresholds
from policies.router.policy import AutoInput, decide
from policies.routing import AutoChoice

_REASONING = DENSE_NAMES.index("reasoning")


class RouterService:
    def __init__(self, catalog: Catalog, metrics: Metrics, router: Router | None = None) -> None:
        self.router = router or Router.load_default()
        meta = self.router.model.meta
        prior = Thresholds(float(meta.get("prior_pro", 0.7)), float(meta.get("prior_think", 0.4)))
        r = catalog.routing
        self.calibrator = Calibrator(r.auto_pro_share, r.auto_think_share, prior)
        self.strong = catalog.strong_tier
        self.weak = "flash" if "flash" in catalog.tiers else list(catalog.tiers)[0]
        self.share = Gauge(
            "tiergate_router_pro_share",
            "Share of auto requests this process sent to the strong tier.",
            registry=metrics.registry,
        )
        self.target = Gauge(
            "tiergate_router_pro_share_target",
            "Configured target share of Pro calls.",
            registry=metrics.registry,
        )
        self.target.set(r.auto_pro_share)
        self.scores = Histogram(
            "tiergate_router_score",
            "Hardness scores of auto requests.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=metrics.registry,
        )

    def classify(self, catalog: Catalog, call: Call, downgrade: bool = False) -> AutoChoice:
        messages = call.body.get("messages")
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": call.last_user_text}]
        scores = self.router.score(messages, tools=call.has_tools, json_mode=call.json_mode)
        self.calibrator.observe(scores.hard)
        self.scores.observe(scores.hard)
        choice = decide(
            AutoInput(scores.hard, self.calibrator.thresholds, downgrade, self.strong, self.weak)
        )
        # An explicit request to reason ("step by step", "prove") always gets thinking.
        if not choice.mode.thinking and scores.features.dense[_REASONING] > 0:
            choice = AutoChoice(choice.tier, Mode(True, "high"), choice.reason + ";asked-to-reason")
        self.calibrator.record(choice.tier == self.strong)
        self.share.set(self.calibrator.realised_pro_share)
        return choice
