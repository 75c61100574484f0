"""The bounded LRU prefix cache, table-driven."""

from __future__ import annotations

import pytest

from engines.sim.prefix_cache import PrefixCache


@pytest.mark.parametrize(
    ("capacity", "requests", "hits"),
    [
        (10, [[b"a", b"b"], [b"a", b"b", b"c"]], [0, 2]),
        (10, [[b"a", b"b"], [b"x", b"b"]], [0, 0]),  # a different first block misses all
        (10, [[b"a", b"b", b"c"], [b"a", b"x", b"c"]], [0, 1]),  # hits stop at the first miss
        (2, [[b"a", b"b"], [b"c", b"d"], [b"a", b"b"]], [0, 0, 0]),  # evicted
        (3, [[b"a", b"b"], [b"a"], [b"c", b"d"], [b"a"]], [0, 1, 0, 1]),  # LRU keeps the used a
        # tails go first (as in vLLM): b is evicted before a, so the head still hits
        (3, [[b"a", b"b"], [b"c", b"d"], [b"a", b"b"]], [0, 0, 1]),
        (0, [[b"a"], [b"a"]], [0, 0]),  # no capacity, no hits
    ],
)
def test_hits_and_lru_eviction(capacity: int, requests: list[list[bytes]], hits: list[int]) -> None:
    cache = PrefixCache(capacity)
    assert [cache.match_and_insert(r) for r in requests] == hits
    assert len(cache) <= capacity


@pytest.mark.parametrize(("capacity", "inserted", "usage"), [(4, 2, 0.5), (4, 9, 1.0), (0, 3, 0.0)])
def test_usage_is_a_share_of_capacity(capacity: int, inserted: int, usage: float) -> None:
    cache = PrefixCache(capacity)
    cache.match_and_insert([bytes([i]) for i in range(inserted)])
    assert cache.usage() == usage


def test_clear_empties_the_cache() -> None:
    cache = PrefixCache(4)
    cache.match_and_insert([b"a"])
    cache.clear()
    assert len(cache) == 0 and cache.match_and_insert([b"a"]) == 0


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        PrefixCache(-1)
