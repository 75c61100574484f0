"""Replica choice: prefix affinity with bounded load, least-loaded otherwise. Pure.

Requests that share a prompt prefix should land where that prefix is already cached.
Each replica gets a rendezvous-hash rank for the request's affinity key (so adding or
removing a replica only moves the keys that hashed to it); the first replica in rank
order whose load stays within ``load_factor`` times the mean (plus one) takes it. A hot
prefix thus spills to its second-ranked replica instead of piling onto one; requests with
no useful prefix go to the least-loaded replica.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
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
) -> tuple[list[int], str]:
    """Indices in the order to try them, and why the first was chosen."""
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
    for pos, i in enumerate(ranked):
        if replicas[i].load < bound:
            rest = [j for j in ranked if j != i]
            return [i, *rest, *dead], "affinity" if pos == 0 else "affinity-spill"
    return by_load + dead, "least-loaded"


def affinity_key(
    scope: str, parts: Sequence[str], block_chars: int, max_blocks: int
) -> bytes | None:
    """Key from the leading whole blocks of the prompt text, scoped by tier and mode.

    Thinking and non-thinking requests render differently upstream and never share cache,
    so the mode is part of the scope. Prompts shorter than one block get no key.
    """
    need = block_chars * max_blocks
    taken: list[str] = []
    size = 0
    for p in parts:
        taken.append(p[: need - size])
        size += len(taken[-1])
        if size >= need:
            break
    blocks = size // block_chars
    if blocks == 0:
        return None
    text = "".join(taken)[: blocks * block_chars]
    return hashlib.blake2b((scope + "\0" + text).encode(), digest_size=16).digest()
