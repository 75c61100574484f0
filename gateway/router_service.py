"""The router in the request path: the shipped model, calibrated thresholds, metrics.

The router is the generic one (the length of the newest user turn) unless
``TIERGATE_ROUTER_WEIGHTS`` names a pair model trained on the team's labels
(``tiergate router train --data``); that one is loaded here, at start-up, with its
embedding, so no request waits for it. Per process: scores feed a ring buffer that keeps
the Pro share near the catalog's ``routing.auto_pro_share`` (and thinking near
``auto_think_share``); the realised share is exported as ``tiergate_router_pro_share``.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from gateway.logging import get_logger
from gateway.metrics import Metrics
from gateway.parse import Call
from policies.catalog import Catalog
from policies.router import Router
from policies.router.calibration import Calibrator, Thresholds
from policies.router.policy import AutoInput, apply_signals, decide
from policies.router.scorer import explicit_signals
from policies.router.truth import Tally, estimate
from policies.routing import AutoChoice

log = get_logger("tiergate.router")


class RouterService:
    def __init__(
        self,
        catalog: Catalog,
        metrics: Metrics,
        router: Router | None = None,
        source: object = None,  # where the router was loaded from, for the log
    ) -> None:
        self.router = router or Router.load_default()
        meta = self.router.meta
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
        # Which router `auto` runs, for a team to tell at a glance (and from the start-up log).
        info = Gauge(
            "tiergate_router_info",
            "The router auto uses (value 1): generic (length) or a pair model trained on labels.",
            ["kind", "weak", "strong", "chosen", "rows"],
            registry=metrics.registry,
        )
        kind = "pair" if self.router.pair is not None else "generic"
        labels = [str(meta.get(k, "")) for k in ("weak", "strong", "chosen", "rows")]
        info.labels(kind, *labels).set(1)
        log.info(
            "router",
            kind=kind,
            source=str(source) if source else "shipped",
            **{k: meta[k] for k in ("weak", "strong", "chosen", "rows") if k in meta},
        )
        self.scores = Histogram(
            "tiergate_router_score",
            "Hardness scores of auto requests.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=metrics.registry,
        )

    def classify(self, catalog: Catalog, call: Call, downgrade: bool = False) -> AutoChoice:
        """The choice for an ``auto`` request; nothing is learned from it until it is
        dispatched (``routed``): a request refused for its budget, rate or size must not
        move the lines that other teams' requests meet."""
        messages = call.body.get("messages")
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": call.last_user_text}]
        scores = self.router.score(messages, tools=call.has_tools, json_mode=call.json_mode)
        cal = self.calibrator
        choice = decide(
            AutoInput(
                scores.hard,
                cal.thresholds,
                downgrade,
                self.strong,
                self.weak,
                cal.draw(scores.hard),
            )
        )
        # An explicit request to reason ("step by step", "prove") or a long context always
        # gets thinking.
        return apply_signals(choice, explicit_signals(scores.features))

    def routed(self, choice: AutoChoice, downgrade: bool) -> None:
        """An ``auto`` request was dispatched: its score joins the window, and where the
        lines decided (no budget downgrade), where it went corrects their aim."""
        if choice.score is None:
            return
        self.calibrator.observe(choice.score)
        self.scores.observe(choice.score)
        if not downgrade:
            pro = choice.tier == self.strong
            # thinking by its score: a mode lifted by the request's own signals is not
            by_score = choice.mode.thinking and not choice.mode_signals
            self.calibrator.record(pro, by_score)
        self.share.set(self.calibrator.realised_pro_share)


class RouterTruth:
    """Online quality kept and cost saved against always-strong (``policies.router.truth``),
    from the ``auto`` requests this process settled and the shadow labels it stored.

    Exported as ``tiergate_router_quality_kept`` and ``tiergate_router_cost_saved``; both
    are NaN until a first valid shadow label (shadow mode off: always NaN)."""

    def __init__(self, metrics: Metrics) -> None:
        self.tally = Tally()
        self.kept = Gauge(
            "tiergate_router_quality_kept",
            "Estimated share of auto requests answered as acceptably as always-strong would "
            "have (shadow labels); NaN until the first label.",
            registry=metrics.registry,
        )
        self.saved = Gauge(
            "tiergate_router_cost_saved",
            "Estimated share of the always-strong cost that auto routing saved (shadow "
            "labels); NaN until the first label with a known cheap cost.",
            registry=metrics.registry,
        )
        self.kept.set(float("nan"))
        self.saved.set(float("nan"))

    def settled(self, strong: bool, cost: int) -> None:
        self.tally.settled(strong, cost)
        self._export()

    def labelled(self, strong_needed: bool, cheap_cost: int, strong_cost: int) -> None:
        self.tally.labelled_sample(strong_needed, cheap_cost, strong_cost)
        self._export()

    def _export(self) -> None:
        truth = estimate(self.tally)
        if truth is None:
            return
        self.kept.set(truth.quality_kept)
        if truth.cost_saved is not None:
            self.saved.set(truth.cost_saved)
