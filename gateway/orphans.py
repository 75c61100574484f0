"""A dead process's requests: what each running request would be billed if its process
died now (its in-flight journal entry, gateway/inflight.py), and settling such an entry
once a surviving process claims it.

An entry is ``{"hold": ...}`` alone while no answer has begun (a survivor releases the
hold and bills nothing), else also the ledger event the request would settle with, its key
prefix and whether it was priced at peak (for the metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.accounting import ANONYMOUS, Hold, Settlement
from gateway.inflight import hold_json, hold_of
from gateway.ledger import event_of, settlement_of
from policies.pricing import NANOS_PER_USD

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline, Prepared


def draft(pipeline: Pipeline, p: Prepared) -> dict[str, Any] | None:
    """What ``p`` would be billed if this process died now: its journal entry."""
    if p.hold is None or p.stream_finished:
        return None
    if p.answered is not None:  # answered, its settlement not run yet
        usage, status, note = p.answered, 200, "orphaned"
    elif p.stream is not None and p.stream.outcome.usage is not None:
        usage, status, note = p.stream.outcome.usage, 200, "orphaned"
    elif p.stream is not None:  # the upstream took it: its prompt and what it streamed
        usage, status, note = p.estimated(), 502, "usage=estimated;orphaned"
    else:
        # No answer has begun: the upstream may be failing, stalled or retried, and
        # nothing says it took the request. A survivor releases the hold, bills nothing.
        return {"hold": hold_json(p.hold)}
    s, peak = pipeline.settlement(p, usage, status, note=note)
    return entry_of(p, s, peak)


def entry_of(p: Prepared, s: Settlement, peak: bool) -> dict[str, Any]:
    """The journal entry that settles ``p`` as ``s``: a draft's, or (without Redis) the
    one a settled request leaves until its ledger row is written."""
    return {
        "event": event_of(s),
        "hold": hold_json(p.hold or Hold(p.request_id)),
        "key_prefix": p.caller.key_prefix,
        "peak": peak,
    }


async def settle_orphan(pipeline: Pipeline, request_id: str, entry: dict[str, Any]) -> None:
    """Settle the journal entry of a request whose process died (idempotent)."""
    hold = hold_of(request_id, entry["hold"])
    if "event" not in entry:
        await pipeline.accounting.release(ANONYMOUS, hold)
        pipeline.metrics.orphaned_settlements.labels("released").inc()
        pipeline.log.warning(
            "released the hold of a dead gateway process's request that had no answer",
            request_id=request_id,
        )
        return
    s = settlement_of(entry["event"])
    await pipeline.accounting.settle(ANONYMOUS, s, hold, orphan=True)
    pipeline.metrics.orphaned_settlements.labels("settled").inc()
    pipeline.record(s, entry.get("key_prefix"), bool(entry.get("peak")))
    pipeline.log.warning(
        "request",
        request_id=request_id,
        protocol=s.protocol,
        model=s.requested_model,
        reason=s.route_reason,
        status=s.status,
        team=s.team_id,
        output=s.output_tokens,
        cost_usd=s.cost_nanos / NANOS_PER_USD,
        orphaned=True,
    )
