"""Replica choice: prefix affinity with bounded load, least-loaded otherwise. Pure.

Requests that share a prompt prefix should land where that prefix is already cached.

* The prompt's leading text is cut into blocks and hashed as a chain: element ``i`` names
  blocks ``0..i`` (so two prompts share element ``i`` exactly when they share that prefix).
* A :class:`PrefixIndex` remembers, for recent chain elements, which replica served them
  last: an approximation of every replica's prefix cache as seen from this gateway. The
  replica holding the longest match of a new prompt has the most of it cached.
* Only replicas whose load stays within ``load_factor`` times the mean (plus one) are
  eligible. Among them the longest match wins (ties go to the better rendezvous rank);
  with no match anywhere, the first eligible replica in rendezvous-hash order of the
  prompt's affinity key takes it (so adding or removing a replica moves only its keys).
  A hot prefix thus spreads to a second replica, and the sessions that continue there
  follow their own longer prefixes back to it.
* Requests with no whole block go to the least-loaded replica.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["affinity", "least_loaded", "round_robin"]


@dataclass(frozen=True, slots=True)
class ReplicaView:
    name: str
    usable: bool
    in_flight: int = 0
    waiting: int = 0

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
        best = max(eligible, key=lambda i: matched.get(replicas[i].name, 0))
        if matched.get(replicas[best].name, 0) > 0:
            pick = best
            why = "prefix-match"
    rest = [j for j in ranked if j != pick]
    return [pick, *rest, *dead], why


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


class PrefixIndex:
    """Which replica last served each recent prompt prefix (bounded, least recently used).

    Holding chain element ``i`` means having served a prompt with blocks ``0..i``, so a
    replica's match length is the deepest element it holds. Entries age out after
    ``capacity`` newer ones; a replica's own cache evicting a prefix is not seen here,
    which the capacity bounds.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._owner: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def matched(self, chain: Sequence[bytes]) -> dict[str, int]:
        depth: dict[str, int] = {}
        for i, h in enumerate(chain):
            owner = self._owner.get(h)
            if owner is not None:
                depth[owner] = i + 1
        return depth

    def record(self, chain: Sequence[bytes], replica: str) -> None:
        for h in chain:
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)
