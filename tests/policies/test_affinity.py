import time
from collections import Counter

import pytest

from engines.vllm import EngineMetrics, PolledMetrics, Replica, parse_metrics
from policies.affinity import (
    PrefixIndex,
    ReplicaView,
    affinity_key,
    cache_blocks,
    engine_name,
    order,
    per_replica,
    pick_engine,
    prefix_chain,
)


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


C = [bytes([i]) for i in range(5)]  # one prompt's chain: C[i] covers blocks 0..i
X, Y, Z = b"x", b"y", b"z"  # elements of unrelated prompts

Op = tuple[str, str, object]


@pytest.mark.parametrize(
    ("fallback", "ops", "expect", "entries"),
    [
        # each replica holds what it was sent: both hold the shared first 3 blocks
        (64, [("rec", "r1", C[:3]), ("rec", "r2", C)], {"r1": 3, "r2": 5}, 8),
        # r1's cache (4 blocks) overflows: the tail of its prompt, C[2], goes first (as a
        # replica evicts tails first), so the head still matches 2 blocks
        (
            64,
            [("cap", "r1", 4), ("rec", "r1", C[:3]), ("rec", "r1", [X, Y]), ("rec", "r2", C)],
            {"r1": 2, "r2": 5},
            9,
        ),
        # ... while another replica's traffic never evicts r1's entries
        (
            64,
            [("cap", "r1", 4), ("rec", "r1", C[:3]), ("rec", "r2", [X, Y, Z] * 30)],
            {"r1": 3},
            6,
        ),
        # touching a chain refreshes all its elements: the unrelated X ages out instead
        (
            64,
            [("cap", "r1", 4), ("rec", "r1", C[:2]), ("rec", "r1", [X])]
            + [("rec", "r1", C[:2]), ("rec", "r1", [Y, Z])],
            {"r1": 2},
            4,
        ),
        # the same without the refresh: the prompt's tail C[1] is the oldest and goes
        (
            64,
            [("cap", "r1", 4), ("rec", "r1", C[:2]), ("rec", "r1", [X]), ("rec", "r1", [Y, Z])],
            {"r1": 1},
            4,
        ),
        # a chain longer than the cache keeps its head
        (64, [("cap", "r1", 3), ("rec", "r1", C)], {"r1": 3}, 3),
        # unknown capacity: the fallback bounds each replica; it is also the ceiling
        (3, [("rec", "r1", C)], {"r1": 3}, 3),
        (3, [("cap", "r1", 100), ("rec", "r1", C[:3]), ("rec", "r1", [X])], {"r1": 2}, 3),
        (3, [("cap", "r1", 2), ("cap", "r1", None), ("rec", "r1", C[:3])], {"r1": 3}, 3),
        # a smaller reported capacity trims at once
        (64, [("rec", "r1", C), ("cap", "r1", 2)], {"r1": 2}, 2),
        # a replica that restarted or left holds nothing
        (64, [("rec", "r1", C), ("rec", "r2", C[:2]), ("forget", "r1", None)], {"r2": 2}, 2),
        (64, [("rec", "r1", C), ("rec", "r2", C[:2]), ("retain", "", ["r1"])], {"r1": 5}, 5),
    ],
)
def test_prefix_index_models_each_replicas_bounded_cache(
    fallback: int, ops: list[Op], expect: dict[str, int], entries: int
) -> None:
    idx = PrefixIndex(capacity=fallback)
    for op, name, arg in ops:
        if op == "rec":
            idx.record(arg, name)  # type: ignore[arg-type]  # table rows carry chains
        elif op == "cap":
            idx.set_capacity(name, arg)  # type: ignore[arg-type]  # int or None
        elif op == "forget":
            idx.forget(name)
        else:
            idx.retain(arg)  # type: ignore[arg-type]  # a list of names
    assert idx.matched(C) == expect
    assert len(idx) == entries


@pytest.mark.parametrize(
    ("tokens", "chars_per_token", "blocks"),
    [
        (160 * 256, 4.0, 160),  # the benchmark's simulated replica: 160 x 256-token blocks
        (2_000_000, 4.0, 7812),
        (2_000_000, 1.5, 2929),  # Chinese text: fewer characters per token
        (100, 4.0, 1),  # at least one block
    ],
)
def test_cache_blocks_converts_tokens_to_index_blocks(
    tokens: int, chars_per_token: float, blocks: int
) -> None:
    assert cache_blocks(tokens, chars_per_token, 1024) == blocks


_GAUGES = (
    'vllm:num_requests_running{model_name="m"} 2.0\n'
    'vllm:num_requests_waiting{model_name="m"} 3.0\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("", PolledMetrics()),
        (_GAUGES, PolledMetrics(waiting=3, running=2, kv_usage=0.5)),
        (
            _GAUGES + 'vllm:cache_config_info{block_size="256",num_gpu_blocks="160"} 1.0\n',
            PolledMetrics(waiting=3, running=2, kv_usage=0.5, cache_tokens=40960),
        ),
        (  # data parallel: one info sample per engine; each engine caches on its own
            'vllm:cache_config_info{block_size="256",engine="0",num_gpu_blocks="900"} 1.0\n'
            'vllm:cache_config_info{block_size="256",engine="1",num_gpu_blocks="1000"} 1.0\n',
            PolledMetrics(cache_tokens=256_000),
        ),
        (  # not yet profiled, or no size at all: unknown
            'vllm:cache_config_info{block_size="256",num_gpu_blocks="None"} 1.0\n'
            'vllm:cache_config_info{block_size="16"} 1.0\n',
            PolledMetrics(),
        ),
        ('vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n', PolledMetrics(kv_usage=0.25)),
        (  # data parallel: requests add up over engines, KV usage is their mean, not a sum
            "".join(
                f'vllm:num_requests_running{{engine="{e}",model_name="m"}} 2.0\n'
                f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} 1.0\n'
                f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="m"}} {u}\n'
                for e, u in enumerate((0.9, 0.5, 0.3, 0.1))
            ),
            PolledMetrics(waiting=4, running=8, kv_usage=0.45, engines=(EngineMetrics(2, 1),) * 4),
        ),
        (  # each engine's own load and cache, by rank (labels read as numbers: 10 after 9)
            "".join(
                f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {e}.0\n'
                f'vllm:cache_config_info{{block_size="16",engine="{e}",num_gpu_blocks="{e}"}} 1\n'
                for e in (10, 9)
            ),
            PolledMetrics(
                running=19,
                cache_tokens=160,
                engines=(EngineMetrics(9, 0, 144), EngineMetrics(10, 0, 160)),
            ),
        ),
    ],
)
def test_parse_metrics_reads_load_and_cache_size(text: str, expect: PolledMetrics) -> None:
    assert parse_metrics(text) == expect


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


@pytest.mark.parametrize(
    ("loads", "kv", "matched", "first"),
    [
        ([0, 3, 1], [0.0, 0.0, 0.0], {"r1": 4, "r2": 4}, 2),  # equal match: lower load
        ([1, 1, 1], [0.9, 0.2, 0.5], {"r0": 4, "r1": 4, "r2": 4}, 1),  # then emptier cache
        ([0, 3, 1], [0.0, 0.0, 0.0], {"r1": 5, "r2": 4}, 1),  # a longer match still wins
    ],
)
def test_equal_matches_go_to_the_lighter_replica(
    loads: list[int], kv: list[float], matched: dict[str, int], first: int
) -> None:
    reps = [
        ReplicaView(f"r{i}", True, in_flight=load, kv_usage=u)
        for i, (load, u) in enumerate(zip(loads, kv, strict=True))
    ]
    idx, why = order(reps, b"key", matched=matched, load_factor=2.0)
    assert (idx[0], why) == (first, "prefix-match")


@pytest.mark.parametrize(
    ("full", "strategy", "matched", "first", "last"),
    [
        # the longest match is at the gateway's cap: the best replica with a free slot
        ([True, False, False], "affinity", {"r0": 6, "r2": 2}, 2, 0),
        ([False, True, True], "least_loaded", {}, 0, None),
        ([True, False, True], "round_robin", {}, 1, None),
        # every replica full: chosen as if none were (the admission queue prevents this)
        ([True, True, True], "affinity", {"r0": 6, "r2": 2}, 0, None),
    ],
)
def test_replicas_at_the_in_flight_cap_are_tried_last(
    full: list[bool], strategy: str, matched: dict[str, int], first: int, last: int | None
) -> None:
    reps = [ReplicaView(f"r{i}", True, full=f) for i, f in enumerate(full)]
    dead = ReplicaView("r3", False)
    idx, _ = order([*reps, dead], b"key", strategy=strategy, matched=matched)  # type: ignore[arg-type]
    assert idx[0] == first and idx[-1] == 3 and sorted(idx) == [0, 1, 2, 3]
    if last is not None:
        assert idx[-2] == last


# ---- data-parallel replicas: one cache per engine ----------------------------------------


def test_engines_are_indexed_apart_and_a_replica_holds_what_its_best_engine_holds() -> None:
    idx = PrefixIndex()
    idx.record(C[:2], engine_name("r0", 0))
    idx.record(C, engine_name("r0", 3))
    idx.record(C[:1], "r1")
    matched = idx.matched(C)
    assert matched == {engine_name("r0", 0): 2, engine_name("r0", 3): 5, "r1": 1}
    assert per_replica(matched) == {"r0": 5, "r1": 1}
    idx.set_capacity(engine_name("r0", 3), 1)  # each engine has its own bound
    assert idx.matched(C)[engine_name("r0", 3)] == 1
    assert idx.matched(C)[engine_name("r0", 0)] == 2


@pytest.mark.parametrize("op", ["forget", "retain"])
def test_a_replica_forgotten_or_dropped_loses_its_engines(op: str) -> None:
    idx = PrefixIndex()
    for e in range(4):
        idx.record(C, engine_name("r0", e))
        idx.set_capacity(engine_name("r0", e), 100)
    idx.record(C, "r1")
    idx.record(C, engine_name("r10", 0))  # another replica whose name starts alike
    if op == "forget":
        idx.forget("r0")
    else:
        idx.retain(["r1", "r10"])
    assert idx.matched(C) == {"r1": 5, engine_name("r10", 0): 5}
    assert len(idx) == 10


@pytest.mark.parametrize(
    ("loads", "depths", "rr", "engine", "why"),
    [
        ([0, 0, 0, 0], {2: 3}, 0, 2, "engine-prefix-match"),  # the engine holding it
        ([0, 0, 0, 0], {1: 2, 3: 4}, 0, 3, "engine-prefix-match"),  # the longest
        ([0, 2, 1, 0], {1: 4, 2: 4}, 0, 2, "engine-prefix-match"),  # equal: the lighter
        ([0, 9, 0, 0], {1: 4, 2: 1}, 0, 2, "engine-prefix-match"),  # overloaded: the next
        ([1, 9, 1, 1], {1: 4}, 0, 0, "engine-least-loaded"),  # only holder overloaded
        ([3, 1, 2, 5], {}, 0, 1, "engine-least-loaded"),  # nothing cached: least loaded
        ([0, 0, 0, 0], {}, 2, 2, "engine-least-loaded"),  # a tie goes in turn
        ([0, 0, 0, 0], {}, 7, 3, "engine-least-loaded"),
    ],
)
def test_pick_engine_prefers_the_cached_prefix_within_the_load_bound(
    loads: list[int], depths: dict[int, int], rr: int, engine: int, why: str
) -> None:
    matched = {engine_name("r0", e): n for e, n in depths.items()}
    matched[engine_name("r1", 0)] = 9  # another replica's engines do not count
    assert pick_engine("r0", loads, matched, rr=rr) == (engine, why)


def test_pick_engine_spreads_new_prefixes_over_idle_engines() -> None:
    picks = {pick_engine("r0", [0] * 4, {}, rr=rr)[0] for rr in range(4)}
    assert picks == {0, 1, 2, 3}


def _polled(running: list[int]) -> tuple[EngineMetrics, ...]:
    return tuple(EngineMetrics(running=n) for n in running)


def test_an_engine_is_not_loaded_by_the_request_it_has_just_finished() -> None:
    """A poll up to poll_interval_s old still shows the gateway's last request running:
    once it has ended, its engine is idle again and keeps the prefix it caches."""
    r = Replica("r0")
    slot = r.take(1)
    r.poll_started(slot.sent + 0.001)  # the poll sees it running on engine 1
    r.set_engines(_polled([0, 1, 0, 0]), slot.sent + 0.001)
    assert r.engine_loads() == [0, 1, 0, 0]
    matched = {engine_name("r0", 1): 3}
    # with one request over four engines the bound has no slack: the holder is skipped
    assert pick_engine("r0", r.engine_loads(), matched) == (0, "engine-least-loaded")
    r.give(slot)
    assert r.engine_loads() == [0, 0, 0, 0]
    assert pick_engine("r0", r.engine_loads(), matched) == (1, "engine-prefix-match")


def test_an_engine_stays_loaded_by_requests_the_poll_did_not_count() -> None:
    r = Replica("r0")
    before = r.take(2)  # in flight before the poll, still running
    t = before.sent + 0.001
    r.poll_started(t)
    r.set_engines(_polled([0, 1, 1, 0]), t)  # engine 1: another client's request
    time.sleep(0.002)
    r.give(r.take(1))  # sent to engine 1 after the poll, ended since
    assert r.engine_loads() == [0, 1, 1, 0]  # the poll never counted it
    r.take(3)
    r.take(3)
    assert r.engine_loads() == [0, 1, 1, 2]  # own requests sent since the poll


def test_a_request_ending_while_a_poll_is_under_way_is_not_counted_after_it() -> None:
    r = Replica("r0")
    slot = r.take(0)
    t = slot.sent + 0.001
    r.poll_started(t)
    r.give(slot)  # ends while the poll's answer is on its way
    r.set_engines(_polled([1, 0]), t)  # the replica counted it running
    assert r.engine_loads() == [0, 0]
    r.poll_started(t + 1)
    r.set_engines(_polled([0, 0]), t + 1)  # the next poll forgets it
    assert r.engine_loads() == [0, 0] and r.engine_done == {}
