"""A bounded prefix cache of token blocks with LRU eviction, like vLLM's automatic prefix caching."""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def usage(self) -> float:
        return len(self._blocks) / self.capacity if self.capacity else 0.0

    def match_and_insert(self, hashes: list[bytes]) -> int:
        """Return how many leading blocks were cached; then cache all of them (most recent)."""
        hit = 0
        for h in hashes:
            if h in self._blocks:
                hit += 1
            else:
                break
        for h in hashes:
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                self._blocks[h] = None
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hit

    def clear(self) -> None:
        self._blocks.clear()
