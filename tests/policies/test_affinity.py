from collections import Counter

import pytest

from policies.affinity import PrefixIndex, ReplicaView, affinity_key, order, prefix_chain


def views(loads: list[int], usable: list[bool] | None = None) -> list[ReplicaView]:
    usable = usable or [True] * len(loads)
    return [
        ReplicaView(f"r{i}", u, in_flight=load)
        for i, (load, u) in enumerate(zip(loads, usable, strict=True))
    ]


def test_same_key_same_replica_and_keys_spread() -> None:
    reps = views([0, 0, 0, 0])
    picks = Counter(order(reps, f"k{i}".encode())[0][0] for i in range(400))
    assert len(picks) == 4 and min(picks.values()) > 60
    assert {order(reps, b"same")[0][0] for _ in range(10)} == {order(reps, b"same")[0][0]}


def test_hot_key_spills_under_bounded_load() -> None:
    first, why = order(views([0, 0, 0, 0]), b"hot")
    loads = [0, 0, 0, 0]
    loads[first[0]] = 10
    second, why2 = order(views(loads), b"hot")
    assert why == "affinity" and why2 == "affinity-spill" and second[0] == first[1]


@pytest.mark.parametrize(
    ("loads", "usable", "key", "strategy", "first", "why"),
    [
        ([3, 1, 2], None, None, "affinity", 1, "least-loaded"),
        ([3, 1, 2], None, b"x", "least_loaded", 1, "least-loaded"),
        ([0, 0, 0], [False, False, True], b"x", "affinity", 2, "affinity"),
        ([0, 0], [False, False], b"x", "affinity", 0, "none-usable"),
    ],
)
def test_table(loads, usable, key, strategy, first, why) -> None:
    got, reason = order(views(loads, usable), key, strategy=strategy)
    assert got[0] == first and reason == why and sorted(got) == list(range(len(loads)))


def test_removing_a_replica_moves_only_its_keys() -> None:
    four, three = views([0, 0, 0, 0]), views([0, 0, 0])
    moved = sum(
        order(four, f"k{i}".encode())[0][0] != order(three, f"k{i}".encode())[0][0]
        and order(four, f"k{i}".encode())[0][0] != 3
        for i in range(300)
    )
    assert moved == 0


def test_affinity_key_uses_whole_leading_blocks_scoped_by_mode() -> None:
    sys_prompt = "S" * 3000
    a = affinity_key("flash/non-thinking", [sys_prompt, "question one"], 1024, 4)
    b = affinity_key("flash/non-thinking", [sys_prompt, "another question"], 1024, 4)
    c = affinity_key("flash/think-high", [sys_prompt, "question one"], 1024, 4)
    assert a == b != c and a is not None
    assert affinity_key("flash/non-thinking", ["short"], 1024, 4) is None


def test_prefix_chain_shares_exactly_the_common_leading_blocks() -> None:
    doc = "".join(chr(97 + i % 26) * 1024 for i in range(6))
    a = prefix_chain("flash/non-thinking", [doc, "x" * 2048], 1024, 64)
    b = prefix_chain("flash/non-thinking", [doc[:4096] + "Z" * 4096], 1024, 64)
    assert len(a) == 8 and len(b) == 8
    assert a[:4] == b[:4] and all(x != y for x, y in zip(a[4:], b[4:], strict=True))
    assert set(prefix_chain("flash/think-high", [doc], 1024, 64)).isdisjoint(a)
    assert len(prefix_chain("s", ["y" * 10**6], 1024, 64)) == 64  # bounded work
    assert prefix_chain("s", ["short"], 1024, 64) == []
    assert affinity_key("s", [doc], 1024, 4) == prefix_chain("s", [doc], 1024, 64)[3]


def test_prefix_index_tracks_the_deepest_holder_and_ages_out() -> None:
    idx = PrefixIndex(capacity=6)
    chain = [bytes([i]) for i in range(5)]
    idx.record(chain[:3], "r1")
    idx.record(chain, "r2")  # r2 served the longer prompt last
    assert idx.matched(chain) == {"r2": 5}
    idx.record(chain[:2], "r1")
    assert idx.matched(chain) == {"r1": 2, "r2": 5}
    idx.record([b"x", b"y", b"z"], "r3")  # 8 entries > 6: the two oldest (chain[2], [3]) go
    assert len(idx) == 6 and idx.matched(chain) == {"r1": 2, "r2": 5}
    idx.record([b"w", b"v"], "r3")  # then chain[4]
    assert idx.matched(chain) == {"r1": 2}


@pytest.mark.parametrize(
    ("loads", "matched", "first", "why"),
    [
        ([0, 0, 0], {"r2": 3, "r0": 1}, 2, "prefix-match"),  # longest match wins
        ([0, 9, 0], {"r1": 5, "r2": 1}, 2, "prefix-match"),  # deepest is overloaded: next
        ([0, 0, 0], {}, None, "affinity"),  # nothing known: rendezvous order
        ([9, 9, 0], {"r0": 4, "r1": 4}, 2, None),  # holders overloaded: plain bounded affinity
    ],
)
def test_order_prefers_the_longest_match_within_the_load_bound(
    loads: list[int], matched: dict[str, int], first: int | None, why: str | None
) -> None:
    reps = views(loads)
    idx, reason = order(reps, b"key", matched=matched)
    plain, plain_why = order(reps, b"key")
    assert reason == (why if why is not None else plain_why)
    assert idx[0] == (plain[0] if first is None else first)
    assert sorted(idx) == [0, 1, 2]
