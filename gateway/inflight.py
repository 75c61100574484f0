"""The in-flight journal: what each running request would be billed if its process died now.

A gateway process killed with SIGKILL (or by the OOM killer) cannot settle the requests it
was serving, though the upstream billed what it generated. So every process writes, every
``interval_s``, one entry per running request with something to keep, and each stream as it
opens: the ledger event it would settle with at that moment (the prompt estimate and, for
a stream, the text streamed so far) and the budget windows it reserved in, with a
heartbeat; in Redis when the processes share one (in the database while Redis is away),
else in the database (gateway/inflight_entries.py), where the embedded default's single
process finds its previous life's entries when it comes back. Settling or
releasing a request removes its entry. An entry whose heartbeat is older than
``orphan_after_s`` belongs to a dead process: any surviving process claims it and settles
it (``usage=estimated;orphaned`` in its route reason).

Exactly once: a settlement is idempotent on the request id (the budget store's settled
marker; without Redis, the ledger row), so an entry left behind by a process that died
between settling and removing it settles to nothing. A released request (no bill) removes
its entry before releasing, and entries are written and removed by one writer per process
under a lock, so a release never leaves an entry to be billed. A process that was only
stalled past ``orphan_after_s`` (not dead) settles its requests when it resumes: that
settlement replaces the journal's, in the budgets and in the ledger row
(gateway/budgets/settle.lua); without Redis, in the ledger row (``orphan_cost``).

What a dead process's request is billed (gateway/orphans.py drafts its entry and settles
it): once its answer has begun (a stream opened), the prompt estimate as cache miss and
the text streamed up to its last write (at most ``interval_s`` behind); once answered, the
upstream's usage. Before any answer began (the upstream may have been failing, stalled or
retried), nothing: a survivor releases its hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import orjson

from gateway.accounting import Hold
from gateway.budgets.base import Window
from gateway.inflight_entries import Entries
from gateway.logging import get_logger
from gateway.tasks import stop
from policies.budget import BudgetSpec

log = get_logger("tiergate.inflight")

# A draft: the entry a running request would leave now (None: nothing to bill yet).
Draft = Callable[[], dict[str, Any] | None]


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "amount": hold.amount_nanos,
        "windows": [
            {
                "id": w.spec.id,
                "scope": w.spec.scope,
                "scope_id": w.spec.scope_id,
                "period": w.spec.period,
                "limit": w.spec.limit_nanos,
                "soft": list(w.spec.soft_thresholds),
                "start": w.start.isoformat(),
                "reset": w.reset_at.isoformat(),
            }
            for w in hold.windows
        ],
    }


def hold_of(request_id: str, data: dict[str, Any]) -> Hold:
    windows = tuple(
        Window(
            BudgetSpec(
                id=w["id"],
                scope=w["scope"],
                scope_id=w["scope_id"],
                period=w["period"],
                limit_nanos=int(w["limit"]),
                soft_thresholds=tuple(float(t) for t in w["soft"]),
            ),
            datetime.fromisoformat(w["start"]),
            datetime.fromisoformat(w["reset"]),
        )
        for w in data["windows"]
    )
    return Hold(request_id, int(data["amount"]), windows)


class InflightJournal:
    def __init__(
        self,
        entries: Entries,
        settle: Callable[[str, dict[str, Any]], Awaitable[None]],
        *,
        interval_s: float = 2.0,
        orphan_after_s: float = 60.0,
    ) -> None:
        self.entries = entries
        self._settle = settle  # (request id, payload) -> settled, idempotently
        self.interval_s = interval_s
        self.orphan_after_s = orphan_after_s
        self._drafts: dict[str, Draft] = {}
        self._written: dict[str, bytes] = {}  # what the store holds of this process's requests
        self._lock = asyncio.Lock()  # one writer: a removal never races a write
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._removals: set[str] = set()  # entries whose removal failed: retried each flush
        self._flushing: set[str] = set()  # the requests the write in progress holds
        self._swept: dict[str, float] = {}  # dead processes' requests settled here, when
        self._opening: set[str] = set()  # answers begun, their entries not written yet
        self._opened: asyncio.Task[None] | None = None  # the write that will take them
        self._writes: set[asyncio.Task[None]] = set()  # those writes, while they run

    def track(self, request_id: str, draft: Draft) -> None:
        self._drafts[request_id] = draft

    def opened(self, request_id: str) -> None:
        """The request's answer began (a stream opened): its entry is written now, not at
        the next flush up to ``interval_s`` later, so a process killed from then on leaves
        it to be billed. The write is not awaited (the stream's first byte does not wait
        for the store: that cost 0.4-0.8 ms with Redis, 2.6-3.1 ms with SQLite), and
        streams opening together share one; should it fail, the next flush writes it."""
        if request_id not in self._drafts:
            return
        self._opening.add(request_id)
        if self._opened is None:
            self._opened = task = asyncio.create_task(self._write_opened(), name="inflight-opened")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_opened(self) -> None:
        async with self._lock:
            ids, self._opening, self._opened = self._opening, set(), None
            try:
                await self._write(ids)
            except Exception as exc:  # the next flush writes them
                log.warning("in-flight entries of opened streams not written", error=repr(exc))

    async def written(self) -> None:
        """Wait for the writes of opened streams under way."""
        while self._writes:
            await asyncio.gather(*self._writes)

    async def done(self, request_id: str, settled: Draft | None = None) -> None:
        """The request settled (``settled``: its settlement as an entry) or is about to be
        released: its entry goes. A request never written and not being written (the
        common case, a short request) returns at once; one a write in progress holds waits
        for that write. Where the ledger retires entries (without Redis: the settlement
        reaches the database up to a batch interval later), a settled request's entry is
        replaced by its settlement instead, which a claim drops once the ledger has it."""
        self._drafts.pop(request_id, None)
        if request_id not in self._written and request_id not in self._flushing:
            return
        async with self._lock:
            if self._written.pop(request_id, None) is None:
                return
            entry = None
            try:
                entry = settled() if settled and self.entries.ledger_retires else None
                if entry is not None:
                    await self.entries.write(
                        {request_id: orjson.dumps(entry)}, {request_id: time.time()}
                    )
                else:
                    await self._remove([request_id])
            except Exception as exc:
                if entry is not None:
                    # The draft stays: a claim drops it once the ledger has the request,
                    # or bills it from the draft if the settlement never got there.
                    log.warning(
                        "in-flight entry not updated", request_id=request_id, error=repr(exc)
                    )
                    return
                # Removed at the next flush. Until then a settled request's entry would
                # settle to nothing; a released one's would be billed if this process died.
                self._removals.add(request_id)
                log.warning("in-flight entry not removed", request_id=request_id, error=repr(exc))

    async def adopt(self, hold: Callable[[str, dict[str, Any]], Awaitable[None]]) -> int:
        """Without Redis, at start-up: ``hold`` each entry with something to bill whose
        request the ledger lacks, so that the budgets this process rebuilt from the ledger
        count the requests a dead process was serving until a sweep settles them (else a
        restart would admit their cost twice). Returns how many."""
        count = 0
        for rid, payload in await self.entries.unbilled():
            entry = orjson.loads(payload)
            if "event" in entry:
                await hold(rid, entry)
                count += 1
        return count

    async def orphan_cost(self, request_id: str) -> int | None:
        """Without Redis: what another process billed this running request from its entry
        while this one was stalled past ``orphan_after_s`` (its settlement then replaces
        that one). Asked only of journaled requests; None on any doubt."""
        if request_id not in self._written:
            return None
        try:
            return await self.entries.orphan_cost(request_id)
        except Exception as exc:
            log.warning(
                "ledger not read for an orphan settlement", request_id=request_id, error=repr(exc)
            )
            return None

    async def _remove(self, ids: list[str]) -> None:
        await self.entries.remove(ids)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inflight-journal")

    async def close(self) -> None:
        await stop(self._task)
        await self.written()

    async def _run(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
                ticks += 1
                if ticks % 3 == 0:
                    await self.sweep()
                if self._failing:
                    log.info("in-flight journal written again")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("in-flight journal not written", error=repr(exc))
                self._failing = True

    async def flush(self) -> None:
        """Write this process's running requests (a heartbeat for each, the entry when it
        changed)."""
        async with self._lock:
            if self._removals:
                await self._remove(list(self._removals))
                self._removals.clear()
            await self._write(self._drafts)

    async def _write(self, ids: Iterable[str]) -> None:
        """Write the entries of ``ids`` that have something to keep (under the lock)."""
        now = time.time()
        wrote: dict[str, bytes] = {}
        seen: dict[str, float] = {}
        for rid in list(ids):
            draft = self._drafts.get(rid)
            if draft is None:
                continue  # ended since
            try:
                entry = draft()
            except Exception as exc:  # a request's draft must not stop the others
                log.warning("in-flight draft failed", request_id=rid, error=repr(exc))
                continue
            if entry is None or ("event" not in entry and not self.entries.keeps_holds):
                continue
            payload = orjson.dumps(entry)
            if self._written.get(rid) != payload:
                wrote[rid] = payload
            seen[rid] = now
        if not seen:
            return
        self._flushing = set(seen)  # before the first wait: done() sees them
        try:
            await self.entries.write(wrote, seen)
            self._written.update(wrote)
            for rid in seen:
                self._written.setdefault(rid, b"")
        finally:
            self._flushing = set()

    async def sweep(self, limit: int = 100) -> int:
        """Settle the entries of dead processes; returns how many were claimed."""
        now = time.time()
        found = await self.entries.claim(
            now - self.orphan_after_s, now + self.orphan_after_s, limit
        )
        count = 0
        for rid, payload in found:
            if rid in self._drafts:
                continue  # this process's own (a stalled loop): its own settle will run
            if rid in self._swept:
                continue  # settled here; its ledger row is on its way (the claim drops it then)
            try:
                await self._settle(rid, orjson.loads(payload))
            except Exception as exc:
                # Claimed for orphan_after_s: the next sweep after that tries again.
                log.error("orphaned request not settled", request_id=rid, error=repr(exc))
                continue
            if self.entries.ledger_retires:
                # Kept until its ledger row is written: should this process die before
                # that, the next claim settles it again (never twice: the ledger decides).
                self._swept[rid] = now
            else:
                await self._remove([rid])
            count += 1
        if len(self._swept) > 10_000:
            cutoff = now - 3600
            self._swept = {r: t for r, t in self._swept.items() if t > cutoff}
        return count
