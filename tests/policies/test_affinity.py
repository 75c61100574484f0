from collections import Counter

import pytest

from policies.affinity import ReplicaView, affinity_key, order


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
