"""A bounded prefix cache of token blocks with LRU eviction, like vLLM's prefix caching.

Blocks are named by chained hashes (block i's hash covers blocks 0..i), so a lookup only
ever matches from the start of the prompt, and a hit on block i implies the whole prefix.
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def usage(self) -> float:
        """Share of the capacity in use, 0..1."""
        return len(self._blocks) / self.capacity if self.capacity else 0.0

    def match_and_insert(self, hashes: list[bytes]) -> int:
        """How many leading blocks were cached; then all of them become most recently used.

        Blocks beyond the capacity are evicted least recently used first.
        """
        blocks = self._blocks
        hit = 0
        for h in hashes:
            if h not in blocks:
                break
            hit += 1
        # Touched tail first, so the prompt's head is the most recently used: like vLLM,
        # which frees a finished request's blocks in reverse and so evicts tails first.
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return hit

    def clear(self) -> None:
        self._blocks.clear()
