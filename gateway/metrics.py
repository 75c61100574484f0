"""Prometheus metrics of the gateway, on a registry owned by the app (never the global one).

Labels are bounded: option parts come from the catalog, team and key ids from what the
admin created, status is an HTTP code; never request ids, raw keys or prompt text.
Money is counted in nano-dollars so that counter totals equal the ledger's sum exactly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OPTION = ("tier", "mode", "backend")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tiergate_requests",
            "Requests answered, by protocol, option and HTTP status.",
            ("protocol", *_OPTION, "status", "team"),
            registry=r,
        )
        self.tokens = Counter(
            "tiergate_tokens",
            "Tokens billed, by kind (cache_hit, cache_miss, output, reasoning) and option.",
            ("kind", *_OPTION, "team"),
            registry=r,
        )
        self.cost = Counter(
            "tiergate_cost_nanodollars",
            "Cost of served requests in nano-dollars (divide by 1e9 for USD).",
            (*_OPTION, "team", "key", "peak"),
            registry=r,
        )
        self.hosted_equivalent = Counter(
            "tiergate_hosted_equivalent_nanodollars",
            "What the hosted API would have charged for the same tokens, in nano-dollars.",
            (*_OPTION, "team"),
            registry=r,
        )
        self.pro_equivalent = Counter(
            "tiergate_pro_equivalent_nanodollars",
            "What hosted Pro would have charged for the same tokens, in nano-dollars.",
            (*_OPTION, "team"),
            registry=r,
        )
        self.cache_saved = Counter(
            "tiergate_cache_savings_nanodollars",
            "Money cache hits saved versus paying the cache-miss price, in nano-dollars.",
            (*_OPTION, "team"),
            registry=r,
        )
        self.duration = Histogram(
            "tiergate_request_duration_seconds",
            "Time from request received to last byte sent.",
            _OPTION,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tiergate_time_to_first_token_seconds",
            "Time from request received to the first streamed token (keep-alive comments"
            " do not count).",
            _OPTION,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "tiergate_upstream_errors",
            "Upstream failures by backend and error code (retried or not).",
            ("backend", "code"),
            registry=r,
        )
        self.upstream_resends = Counter(
            "tiergate_upstream_resends",
            "Requests sent again on a fresh connection after a replica closed a kept-alive"
            " one before answering (not counted as a replica failure).",
            ("backend",),
            registry=r,
        )
        self.stale_rank_resends = Counter(
            "tiergate_stale_rank_resends",
            "Requests sent again without X-data-parallel-rank after a data-parallel replica"
            " refused the rank as out of range (it has fewer engines than last polled).",
            ("backend",),
            registry=r,
        )
        self.settlement_failures = Counter(
            "tiergate_settlement_failures",
            "Answered requests whose settlement failed: their spend is missing from budgets "
            "and the ledger (the log line 'settlement failed' carries the usage).",
            ("backend",),
            registry=r,
        )
        self.orphaned_settlements = Counter(
            "tiergate_orphaned_settlements",
            "Requests of a gateway process that died mid-request (SIGKILL, OOM), ended by"
            " another process from the in-flight journal: 'settled' with the usage last"
            " recorded, or 'released' when no answer had begun (nothing to bill).",
            ("outcome",),
            registry=r,
        )
        for outcome in ("settled", "released"):  # at 0 from the start: alerts see a rise
            self.orphaned_settlements.labels(outcome)
        self.orphans_replaced = Counter(
            "tiergate_orphaned_settlements_replaced",
            "Orphaned settlements replaced by the request's own settlement: its process had"
            " been stalled past TIERGATE_INFLIGHT_ORPHAN_S, not killed.",
            registry=r,
        )
        self.over_reservation = Counter(
            "tiergate_settled_over_reservation",
            "Requests under a budget whose billed cost came out above what was reserved for"
            " them (the upstream counted more than the prompt's bound): the budget may be"
            " overspent by the difference. Expected to stay at zero.",
            ("backend",),
            registry=r,
        )
        self.fallbacks = Counter(
            "tiergate_fallbacks",
            "Requests served by a later option of the plan after an earlier one failed.",
            ("from_backend", "to_backend"),
            registry=r,
        )
        self.spillovers = Counter(
            "tiergate_spillovers",
            "Requests planned past a backend of their tier, by that backend and why"
            " (down, saturated, context, n: more choices than the backend samples).",
            ("backend", "reason"),
            registry=r,
        )
        self.route_decisions = Counter(
            "tiergate_route_decisions",
            "Routing decisions by how the tier was chosen (pinned, alias, auto, override).",
            ("how", "tier", "mode"),
            registry=r,
        )
        self.budget_downgrades = Counter(
            "tiergate_budget_downgrades",
            "Requests the router chose for under budget pressure (a budget past its"
            " downgrade_at): Flash instead of Pro, by the tier and mode chosen.",
            ("tier", "mode"),
            registry=r,
        )
        self.rejections = Counter(
            "tiergate_rejections",
            "Requests refused before dispatch, by error code.",
            ("protocol", "code"),
            registry=r,
        )
        self.adaptations = Counter(
            "tiergate_request_adaptations",
            "Parts of requests the protocol translation replaced or left out, by what"
            " (e.g. image-as-text, server-tool-dropped).",
            ("protocol", "what"),
            registry=r,
        )
        self.budget_alerts = Counter(
            "tiergate_budget_alerts",
            "Soft budget thresholds crossed, by scope and threshold fraction.",
            ("scope", "scope_id", "threshold"),
            registry=r,
        )
        self.budget_reservations = Counter(
            "tiergate_budget_reservations",
            "Reservations of requests with budgets, by where they were made: 'lease' (this "
            "process's budget lease, no round trip) or 'redis'.",
            ("path",),
            registry=r,
        )
        budget = ("scope", "scope_id", "period")
        self.budget_limit = Gauge(
            "tiergate_budget_limit_nanodollars",
            "Configured limit of each budget in nano-dollars, set when a request settles on it.",
            budget,
            registry=r,
        )
        self.budget_spent = Gauge(
            "tiergate_budget_spent_nanodollars",
            "Spend in the budget's current window in nano-dollars, as of the last settlement.",
            budget,
            registry=r,
        )
        self.ledger_lag_events = Gauge(
            "tiergate_ledger_lag_events",
            "Settled ledger events not yet written to the database.",
            registry=r,
        )
        self.ledger_lag_seconds = Gauge(
            "tiergate_ledger_lag_seconds",
            "Age of the oldest settled ledger event not yet written to the database.",
            registry=r,
        )
        self.ledger_dead_letters = Counter(
            "tiergate_ledger_dead_letters",
            "Ledger stream entries the database refused, set aside in ledger_dead_letters.",
            registry=r,
        )
        self.redis_persistence = Gauge(
            "tiergate_redis_persistence",
            "1 when Redis, which holds settled spend until it is drained, persists to disk "
            "(AOF or RDB); 0 when a Redis restart would lose it.",
            registry=r,
        )
        self.redis_restarts = Counter(
            "tiergate_redis_restarts",
            "Redis restarts this process noticed (its run id changed).",
            registry=r,
        )
        self.degraded = Gauge(
            "tiergate_degraded",
            "1 while a component (redis) is unreachable and the gateway runs without it.",
            ("component",),
            registry=r,
        )
        self.degraded_requests = Counter(
            "tiergate_degraded_requests",
            "Requests admitted with per-process limits while a component was unreachable.",
            ("component",),
            registry=r,
        )
        self.ledger_spool_events = Gauge(
            "tiergate_ledger_spool_events",
            "Settlements held in process while Redis is unreachable, replayed when it answers.",
            registry=r,
        )
        pool = ("backend", "replica")
        self.replica_in_flight = Gauge(
            "tiergate_replica_in_flight",
            "Requests in flight per replica (gateway side).",
            pool,
            registry=r,
        )
        self.replica_up = Gauge(
            "tiergate_replica_up",
            "1 if the replica is healthy and its breaker closed.",
            pool,
            registry=r,
        )
        self.replica_waiting = Gauge(
            "tiergate_replica_waiting",
            "Requests waiting in the replica's own queue (polled).",
            pool,
            registry=r,
        )
        self.replica_breaker = Gauge(
            "tiergate_replica_breaker",
            "Circuit breaker per replica: 1 on the series of its current state"
            " (closed, half-open, open).",
            (*pool, "state"),
            registry=r,
        )
        self.pool_queued = Gauge(
            "tiergate_pool_queued",
            "Requests waiting in the gateway for a free replica slot.",
            ("backend",),
            registry=r,
        )
        self.pool_queue_wait = Histogram(
            "tiergate_pool_queue_wait_seconds",
            "Time requests waited in the gateway for a free replica slot.",
            ("backend",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_selections = Counter(
            "tiergate_replica_selections",
            "Replica choices by reason: prefix-match, affinity, affinity-spill, least-loaded,"
            " round-robin, retry.",
            (*pool, "reason"),
            registry=r,
        )
        self.in_flight = Gauge(
            "tiergate_in_flight_requests",
            "Requests being served right now.",
            registry=r,
        )
        self.shadow_requests = Counter(
            "tiergate_shadow_requests",
            "Shadow-mode samples by outcome (labelled, unparsed, over_budget, busy, failed).",
            ("outcome",),
            registry=r,
        )
        self.shadow_spend = Counter(
            "tiergate_shadow_spend_nanodollars",
            "Shadow-mode spend (strong replays and judge calls) in nano-dollars.",
            ("call", "team"),
            registry=r,
        )
        self.shadow_verdicts = Counter(
            "tiergate_shadow_verdicts",
            "Judge verdicts on shadow samples (weak_ok, strong_needed, both_bad, invalid).",
            ("verdict",),
            registry=r,
        )
