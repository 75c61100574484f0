"""Replica choice: prefix affinity with bounded load, least-loaded otherwise. Pure.

Requests that share a prompt prefix should land where that prefix is already cached.

* The prompt's leading text is cut into blocks and hashed as a chain: element ``i`` names
  blocks ``0..i`` (so two prompts share element ``i`` exactly when they share that prefix).
* A :class:`PrefixIndex` keeps, per replica, the chain elements it was sent in an LRU
  bounded by that replica's KV-cache size in blocks: an approximation of each replica's
  own prefix cache (touching a chain refreshes all its elements, as the replica's LRU
  does; the replica's own evictions follow from the bound). A replica's match length is
  how many leading elements of the new prompt it plausibly still holds.
* Only replicas whose load stays within ``load_factor`` times the mean (plus one) are
  eligible. Among them the longest match wins (ties go to the lower load, then the
  emptier KV cache, then the better rendezvous rank); with no match anywhere, the first
  eligible replica in rendezvous-hash order of the prompt's affinity key takes it (so
  adding or removing a replica moves only its keys). A hot prefix thus spreads to a
  second replica, and the sessions that continue there follow their own longer prefixes
  back to it.
* Requests with no whole block go to the least-loaded replica.
* Replicas at the gateway's in-flight cap (``full``) come after every replica with a free
  slot, whatever the strategy.

Data-parallel replicas (vLLM's ``--data-parallel-size N``) run N engines, each with its own
prefix cache, and let the caller pick the engine per request (header
``X-data-parallel-rank``). The index then keeps each engine under its own name
(:func:`engine_name`); a replica's match is its best engine's (:func:`per_replica`), and
within the chosen replica :func:`pick_engine` takes the engine holding the longest cached
prefix, within the same bounded load, else the least-loaded engine.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["affinity", "least_loaded", "round_robin"]


@dataclass(frozen=True, slots=True)
class ReplicaView:
    name: str
    usable: bool
    in_flight: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # polled share of the replica's KV cache in use, 0..1
    full: bool = False  # at the gateway's in-flight cap: tried after those with a free slot

    @property
    def load(self) -> int:
        return self.in_flight + self.waiting


def _rank(key: bytes, name: str) -> bytes:
    return hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()


def order(
    replicas: Sequence[ReplicaView],
    key: bytes | None,
    *,
    strategy: Strategy = "affinity",
    load_factor: float = 1.25,
    rr: int = 0,
    matched: Mapping[str, int] | None = None,
) -> tuple[list[int], str]:
    """Indices in the order to try them, and why the first was chosen.

    ``matched`` gives, per replica name, how many leading prompt blocks it is known to hold
    (from :meth:`PrefixIndex.matched`).
    """
    live = [i for i, r in enumerate(replicas) if r.usable]
    dead = [i for i, r in enumerate(replicas) if not r.usable]
    if not live:
        return dead, "none-usable"
    if any(replicas[i].full for i in live) and not all(replicas[i].full for i in live):
        # Replicas at the in-flight cap are tried only after every one with a free slot.
        dead = [i for i in live if replicas[i].full] + dead
        live = [i for i in live if not replicas[i].full]
    if strategy == "round_robin":
        k = rr % len(live)
        return live[k:] + live[:k] + dead, "round-robin"
    by_load = sorted(live, key=lambda i: (replicas[i].load, (i - rr) % len(replicas)))
    if strategy == "least_loaded" or key is None:
        return by_load + dead, "least-loaded"
    ranked = sorted(live, key=lambda i: _rank(key, replicas[i].name))
    total = sum(replicas[i].load for i in live)
    bound = math.ceil(load_factor * (total + 1) / len(live))
    eligible = [i for i in ranked if replicas[i].load < bound]
    if not eligible:
        return by_load + dead, "least-loaded"
    why = "affinity" if eligible[0] == ranked[0] else "affinity-spill"
    pick = eligible[0]
    if matched:
        rank = {i: n for n, i in enumerate(eligible)}
        best = min(
            eligible,
            key=lambda i: (
                -matched.get(replicas[i].name, 0),
                replicas[i].load,
                replicas[i].kv_usage,
                rank[i],
            ),
        )
        if matched.get(replicas[best].name, 0) > 0:
            pick = best
            why = "prefix-match"
    rest = [j for j in ranked if j != pick]
    return [pick, *rest, *dead], why


_ENGINE_SEP = "#dp"


def engine_name(replica: str, engine: int) -> str:
    """The prefix index's name for engine (data-parallel rank) ``engine`` of a replica."""
    return f"{replica}{_ENGINE_SEP}{engine}"


def replica_of(name: str) -> str:
    """The replica an index name belongs to (itself, or the replica of an engine)."""
    return name.split(_ENGINE_SEP, 1)[0]


def per_replica(matched: Mapping[str, int]) -> dict[str, int]:
    """Matches by replica: a data-parallel replica holds what its best engine holds."""
    out: dict[str, int] = {}
    for name, n in matched.items():
        r = replica_of(name)
        out[r] = max(out.get(r, 0), n)
    return out


def pick_engine(
    replica: str,
    loads: Sequence[int],
    matched: Mapping[str, int],
    *,
    load_factor: float = 1.25,
    rr: int = 0,
) -> tuple[int, str]:
    """The engine of a data-parallel replica to send a request to, and why.

    ``loads``: each engine's requests running and waiting, by rank; ``matched``: leading
    prompt blocks held per index name (engines as :func:`engine_name`). The engine holding
    the longest cached prefix wins if its load stays within ``load_factor`` times the
    engines' mean (plus one), as between replicas (ties: lower load, then lower rank);
    otherwise the least-loaded engine, in turn from ``rr`` on a tie.
    """
    n = len(loads)
    if n == 0:
        raise ValueError("a replica has at least one engine")
    bound = math.ceil(load_factor * (sum(loads) + 1) / n)
    depth = [matched.get(engine_name(replica, e), 0) for e in range(n)]
    eligible = [e for e in range(n) if loads[e] < bound and depth[e] > 0]
    if eligible:
        return min(eligible, key=lambda e: (-depth[e], loads[e], e)), "engine-prefix-match"
    return min(range(n), key=lambda e: (loads[e], (e - rr) % n)), "engine-least-loaded"


def prefix_chain(
    scope: str, parts: Sequence[str], block_chars: int, max_blocks: int
) -> list[bytes]:
    """Chained hashes of the prompt's leading whole blocks, scoped by tier and mode.

    Element ``i`` depends on the scope and blocks ``0..i`` only. Thinking and non-thinking
    requests render differently upstream and never share cache, so the mode is part of
    the scope. At most ``max_blocks * block_chars`` characters are read, however long the
    prompt; a prompt shorter than one block gives an empty chain.
    """
    need = block_chars * max_blocks
    taken: list[str] = []
    size = 0
    for p in parts:
        taken.append(p[: need - size])
        size += len(taken[-1])
        if size >= need:
            break
    text = "".join(taken).encode()
    chain: list[bytes] = []
    h = hashlib.blake2b(scope.encode(), digest_size=16).digest()
    for b in range(size // block_chars):
        block = text[b * block_chars : (b + 1) * block_chars]
        h = hashlib.blake2b(h + block, digest_size=16).digest()
        chain.append(h)
    return chain


def affinity_key(
    scope: str, parts: Sequence[str], block_chars: int, max_blocks: int
) -> bytes | None:
    """Rendezvous key: the chain element covering the first ``max_blocks`` whole blocks."""
    chain = prefix_chain(scope, parts, block_chars, max_blocks)
    return chain[-1] if chain else None


def cache_blocks(tokens: int, chars_per_token: float, block_chars: int) -> int:
    """A replica's KV cache of ``tokens`` tokens, in ``block_chars``-character index blocks.

    The gateway has no tokenizer; ``chars_per_token`` is the approximation (about 4 for
    English text, nearer 1.5 for Chinese). At least one block.
    """
    return max(1, int(tokens * chars_per_token) // block_chars)


class PrefixIndex:
    """Per replica, the prompt prefixes it plausibly still caches (LRU, bounded per replica).

    Each replica's chain elements sit in an LRU of its own, bounded by the replica's
    KV-cache capacity in blocks (:meth:`set_capacity`; ``capacity`` when unknown, and never
    more). Recording a chain for a replica touches all its elements, tail first, and evicts
    that replica's least recently used elements beyond its capacity, as the replica itself
    would have had to: within one prompt the tail goes first, as in vLLM (which frees a
    finished request's blocks in reverse) and in the simulator, so a prompt's head outlives
    its tail. A replica holds a prompt's first ``n`` blocks when it holds elements
    ``0..n-1``. Each engine of a data-parallel replica is a "replica" here, named by
    :func:`engine_name`, with its own cache and capacity.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._held: dict[str, OrderedDict[bytes, None]] = {}
        self._limit: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(lru) for lru in self._held.values())

    def capacity_of(self, replica: str) -> int:
        return min(self._limit.get(replica, self.capacity), self.capacity)

    def set_capacity(self, replica: str, blocks: int | None) -> None:
        """The replica's cache size in index blocks; ``None`` falls back to ``capacity``."""
        if blocks is None or blocks <= 0:
            self._limit.pop(replica, None)
        else:
            self._limit[replica] = blocks
        self._trim(replica)

    def forget(self, replica: str) -> None:
        """Drop what a replica holds, its engines' entries included (it left the pool,
        restarted with an empty cache, or changed its number of engines)."""
        self._held.pop(replica, None)
        prefix = replica + _ENGINE_SEP
        for name in [n for n in self._held if n.startswith(prefix)]:
            del self._held[name]
        for name in [n for n in self._limit if n.startswith(prefix)]:
            del self._limit[name]

    def retain(self, replicas: Iterable[str]) -> None:
        """Keep only these replicas (and their engines)."""
        keep = set(replicas)
        for name in [n for n in self._held if replica_of(n) not in keep]:
            del self._held[name]
        for name in [n for n in self._limit if replica_of(n) not in keep]:
            del self._limit[name]

    def matched(self, chain: Sequence[bytes]) -> dict[str, int]:
        depth: dict[str, int] = {}
        for name, lru in self._held.items():
            n = 0
            for h in chain:
                if h not in lru:
                    break
                n += 1
            if n:
                depth[name] = n
        return depth

    def record(self, chain: Sequence[bytes], replica: str) -> None:
        lru = self._held.setdefault(replica, OrderedDict())
        for h in reversed(chain):  # tail first: a replica evicts a prompt's tail first
            lru[h] = None
            lru.move_to_end(h)
        self._trim(replica)

    def _trim(self, replica: str) -> None:
        lru = self._held.get(replica)
        if lru is None:
            return
        cap = self.capacity_of(replica)
        while len(lru) > cap:
            lru.popitem(last=False)
