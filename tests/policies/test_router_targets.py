"""Router training targets: difficulty, gain (strong right minus weak right) and their mix,
checked against hand-computed labels."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from policies.router.data import (
    PRIOR_GAIN,
    Row,
    accuracies,
    bbh,
    gain_pairs,
    gain_targets,
)
from policies.router.train import targets, train_rows

T, F = True, False


def rows_of(table: list[tuple[bool | None, ...]], names: str, source: str = "s") -> list[Row]:
    return [
        Row(
            f"{source}/{i}",
            source,
            "g",
            f"question {i}",
            0.0,
            {m: ok for m, ok in zip(names, oks, strict=True) if ok is not None},
        )
        for i, oks in enumerate(table)
    ]


# Four options A < B < C < D. Hand count of right answers over the 12 rows:
# A 1/12, B 3/11 (B unlabelled on the last row), C 6/12, D 7/12: all six pairs differ by
# at least 0.05. Label = 0.5 + mean over labelled pairs of (stronger right - weaker right),
# pairs (A,B) (A,C) (A,D) (B,C) (B,D) (C,D), clipped to [0, 1].
FOUR = [
    ((F, F, F, T), 1.0),  # 0,0,1,0,1,1 -> +1/2
    ((T, F, F, F), 0.0),  # -1,-1,-1,0,0,0 -> -1/2
    ((F, T, F, F), 1 / 3),  # 1,0,0,-1,-1,0 -> -1/6
    ((F, F, T, F), 2 / 3),  # 0,1,0,1,0,-1 -> +1/6
    ((F, T, T, F), 0.5),  # 1,1,0,0,-1,-1 -> 0
    ((F, T, T, T), 1.0),  # 1,1,1,0,0,0 -> +1/2
    ((F, F, T, T), 1.0),  # 0,1,1,1,1,0 -> +2/3, clipped
    ((F, F, T, T), 1.0),
    ((F, F, F, T), 1.0),
    ((F, F, F, T), 1.0),
    ((F, F, F, T), 1.0),
    ((F, None, T, F), 0.5),  # only (A,C) (A,D) (C,D): 1,0,-1 -> 0 (1/6 if B counted wrong)
]


def test_accuracies_and_pairs_by_hand() -> None:
    rows = rows_of([oks for oks, _ in FOUR], "ABCD")
    acc = accuracies(rows)
    assert acc == pytest.approx({"A": 1 / 12, "B": 3 / 11, "C": 6 / 12, "D": 7 / 12})
    assert gain_pairs(acc) == [
        ("A", "B"),
        ("A", "C"),
        ("A", "D"),
        ("B", "C"),
        ("B", "D"),
        ("C", "D"),
    ]
    # a larger gap drops the close pairs: C - B = 0.227, D - C = 0.083, B - A = 0.19
    assert gain_pairs(acc, 0.2) == [("A", "C"), ("A", "D"), ("B", "C"), ("B", "D")]


def test_gain_labels_by_hand() -> None:
    rows = rows_of([oks for oks, _ in FOUR], "ABCD")
    assert gain_targets(rows) == pytest.approx([want for _, want in FOUR])


@pytest.mark.parametrize(
    ("weak_ok", "strong_ok", "want"),
    [(F, T, 1.0), (T, T, 0.5), (F, F, 0.5), (T, F, 0.0)],
)
def test_one_pair_gives_strong_right_minus_weak_right(
    weak_ok: bool, strong_ok: bool, want: float
) -> None:
    # strong right on 3 of 5, weak on 2 of 5 (rows 1-4 plus the row under test)
    base = [(F, T), (T, T), (F, F), (T, F)]
    rows = rows_of([*base, (weak_ok, strong_ok)], ["weak", "strong"])
    if accuracies(rows)["strong"] > accuracies(rows)["weak"]:
        assert gain_targets(rows)[-1] == want
    else:  # the data, not the names, decides which option is stronger
        assert gain_targets(rows)[-1] == 1.0 - want


def test_order_comes_from_the_rows_given_not_from_names() -> None:
    # columns (strong, weak): "strong" is right on 2 of 4, "weak" on 3 of 4, so the option
    # named "strong" is the weaker one of the pair
    rows = rows_of([(F, T), (F, T), (T, F), (T, T)], ["strong", "weak"])
    assert gain_pairs(accuracies(rows)) == [("strong", "weak")]
    assert gain_targets(rows) == [1.0, 1.0, 0.0, 0.5]


def test_close_options_and_rows_without_outcomes_use_the_difficulty_prior() -> None:
    close = rows_of([(T, F), (F, T)], ["a", "b"])  # equal accuracy: no pair
    plain = [Row("m/1", "math", "Algebra", "x", 0.25), Row("m/2", "math", "Algebra", "y", 1.0)]
    got = gain_targets([*close, *plain])
    assert got == pytest.approx([0.5, 0.5, 0.5 + PRIOR_GAIN * 0.25, 0.5 + PRIOR_GAIN])


def test_sources_are_ordered_separately() -> None:
    # x beats y in source "one" (2/3 against 1/3), y beats x in source "two"
    one = rows_of([(T, F), (T, F), (F, T)], ["x", "y"], "one")
    two = rows_of([(F, T), (F, T), (F, T)], ["x", "y"], "two")
    assert gain_targets([*one, *two]) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]


def test_bbh_rows_carry_direct_and_cot_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "bbh.jsonl.gz"
    recs = [
        {"id": "b/0", "task": "t", "input": "q0", "correct_direct": False, "correct_cot": True},
        {"id": "b/1", "task": "t", "input": "q1", "correct_direct": True, "correct_cot": True},
        {"id": "b/2", "task": "t", "input": "q2", "correct_direct": False, "correct_cot": False},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in recs)
    rows = list(bbh(path))
    assert [r.target for r in rows] == [0.5, 0.0, 1.0]
    assert rows[0].correct == {"direct": False, "cot": True}
    # CoT right 2/3 > direct 1/3: "does reasoning help" = CoT right minus direct right
    assert gain_targets(rows) == [1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("difficulty", [0.2, 0.8, 0.6, 0.5]),
        ("gain", [0.0, 1.0, 1.0, 0.5 + PRIOR_GAIN * 0.5]),
        ("mix", [0.1, 0.9, 0.8, 0.25 + 0.5 * (0.5 + PRIOR_GAIN * 0.5)]),
    ],
)
def test_targets(target: str, want: list[float]) -> None:
    # w right on 1 of 3, s on 2 of 3: rows give (s right - w right) = -1, 1, 1
    pair = rows_of([(T, F), (F, T), (F, T)], ["w", "s"])
    rows = [
        Row(r.id, "s", "g", r.prompt, d, r.correct)
        for r, d in zip(pair, (0.2, 0.8, 0.6), strict=True)
    ]
    rows.append(Row("plain", "math", "g", "c", 0.5))
    assert targets(rows, target) == pytest.approx(want)


def test_unknown_target_is_refused_and_the_target_is_recorded() -> None:
    rows = rows_of([(T, F), (F, T), (F, T)], ["w", "s"])
    with pytest.raises(ValueError, match="unknown target"):
        targets(rows, "helpfulness")
    assert train_rows(rows, target="gain", steps=5).meta["target"] == "gain"
