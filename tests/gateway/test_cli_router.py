"""`tiergate router train --data` on the label export shape, then `router eval --weights`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.cli_router import CHEAPER, CliError, pair_names, pooled
from policies.features import from_text
from policies.router import Router
from policies.router.data import jsonl_rows
from policies.router.shadow import Label, features_to_json, training_row

WEAK, STRONG = "flash/non-thinking", "pro/think-high"


def _labels(
    n: int, seed: int, *, with_prompts: bool = True, weak: tuple[str, ...] = (WEAK,)
) -> list[dict[str, object]]:
    """Shadow-export rows: the strong side is needed on proofs, not on greetings."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hard = rng.random() < 0.5
        pad = " ".join(rng.choice(["one", "two", "three", "four"], size=int(rng.integers(1, 40))))
        prompt = (
            f"Prove the inequality for all positive reals a, b, c. {pad}"
            if hard
            else f"Say hello to my friend in a warm tone. {pad}"
        )
        strong_ok = bool(rng.random() < 0.8) if hard else True
        weak_ok = bool(rng.random() < 0.2) if hard else bool(rng.random() < 0.95)
        verdict = "weak_ok" if weak_ok else ("strong_needed" if strong_ok else "both_bad")
        label = Label(
            f"req-{seed}-{i}",
            "team-a",
            weak[i % len(weak)],  # the cheaper option auto chose
            STRONG,
            verdict,
            "tie",
            weak_ok,
            strong_ok,
            prompt if with_prompts else None,
            None if with_prompts else features_to_json(from_text(prompt)),
        )
        row = training_row(label)
        assert row is not None
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_on_the_label_export_then_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = _write(tmp_path / "labels.jsonl", _labels(300, 0))
    test = _write(tmp_path / "test.jsonl", _labels(300, 1))
    out = tmp_path / "pair.npz"
    assert main(["router", "train", "--data", str(train), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"pair {WEAK} -> {STRONG}: 300 labelled rows" in printed
    router = Router.load(out)
    assert router.pair is not None and router.meta["weak"] == WEAK
    assert router.meta["chosen"] != "prior"
    args = ["router", "eval", "--data", str(test), "--weak", WEAK, "--strong", STRONG]
    assert main([*args, "--weights", str(out), "--json", "--bootstrap", "20"]) == 0
    results = {r["router"]: r["apgr"] for r in json.loads(capsys.readouterr().out)}
    assert results["tiergate"] > results["length-only"] + 0.1


def test_train_on_feature_only_labels(tmp_path: Path) -> None:
    """Labels stored without prompt text still train (length and signals, no embedding)."""
    train = _write(tmp_path / "labels.jsonl", _labels(120, 2, with_prompts=False))
    out = tmp_path / "pair.npz"
    assert main(["router", "train", "--data", str(train), "--out", str(out)]) == 0
    assert Router.load(out).pair is not None


@pytest.mark.parametrize(
    ("correct", "given", "want"),
    [
        # two names: the one right more often is the strong side
        ([{"a": True, "b": False}, {"a": True, "b": True}], (None, None), ("b", "a")),
        ([{"x": False, "y": True}, {"x": False, "y": True}], (None, None), ("x", "y")),
        # named explicitly
        ([{"a": True, "b": False, "c": True}], ("b", "c"), ("b", "c")),
    ],
)
def test_pair_names(
    tmp_path: Path,
    correct: list[dict[str, bool]],
    given: tuple[str | None, str | None],
    want: tuple[str, str],
) -> None:
    rows = [{"id": str(i), "prompt": "q", "correct": c} for i, c in enumerate(correct)]
    assert pair_names(jsonl_rows(_write(tmp_path / "r.jsonl", rows)), *given) == want


def test_three_names_need_the_pair_named(tmp_path: Path) -> None:
    rows = [{"id": "1", "prompt": "q", "correct": {"a": True, "b": False, "c": True}}]
    with pytest.raises(CliError, match="--weak and --strong"):
        pair_names(jsonl_rows(_write(tmp_path / "r.jsonl", rows)), None, None)


CHEAP = ("flash/non-thinking", "flash/think-high", "pro/non-thinking")


def test_a_shadow_export_with_several_cheaper_options_trains_and_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shadow export compares the strong option with whichever cheaper option `auto`
    chose: those are pooled as one weak side, with no names to give."""
    train = _write(tmp_path / "labels.jsonl", _labels(300, 0, weak=CHEAP))
    test = _write(tmp_path / "test.jsonl", _labels(300, 1, weak=CHEAP))
    out = tmp_path / "pair.npz"
    assert main(["router", "train", "--data", str(train), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"the rows compare {STRONG} with 3 other option(s)" in printed
    assert f"pair {CHEAPER} -> {STRONG}: 300 labelled rows" in printed
    router = Router.load(out)
    assert (router.meta["weak"], router.meta["strong"]) == (CHEAPER, STRONG)
    assert router.meta["chosen"] != "prior"
    # the strong side alone names it, as with --weak cheaper
    assert (
        main(["router", "train", "--data", str(train), "--strong", STRONG, "--out", str(out)]) == 0
    )
    assert f"pair {CHEAPER} -> {STRONG}" in capsys.readouterr().out
    for sides in ([], ["--strong", STRONG], ["--weak", CHEAPER, "--strong", STRONG]):
        args = ["router", "eval", "--data", str(test), *sides]
        assert main([*args, "--weights", str(out), "--json", "--bootstrap", "20"]) == 0
        results = {r["router"]: r for r in json.loads(capsys.readouterr().out)}
        assert results["tiergate"]["apgr"] > results["length-only"]["apgr"] + 0.1


@pytest.mark.parametrize(
    ("correct", "weak", "strong", "want"),
    [
        # one model in every row, the others pooled
        ([{"a": True, "s": True}, {"b": False, "s": True}], None, None, ({"a", "b"}, "s")),
        ([{"a": True, "s": True}, {"b": False, "s": True}], CHEAPER, "s", ({"a", "b"}, "s")),
        # two names: pooled only when asked (--weak cheaper, or eval without --weak)
        ([{"a": True, "s": True}, {"a": False, "s": True}], None, None, (set(), None)),
        ([{"a": True, "s": True}, {"a": False, "s": True}], CHEAPER, "s", ({"a"}, "s")),
        # rows of one side only are left out of the pair, not a reason not to pool
        (
            [{"a": True, "s": True}, {"b": False, "s": True}, {"c": True}],
            None,
            None,
            ({"a", "b"}, "s"),
        ),
        ([{"a": True, "s": True}, {"b": False, "s": True}, {}], None, None, ({"a", "b"}, "s")),
        # a row with three models, no model in every row, another pair named: unchanged
        ([{"a": True, "b": True, "s": True}, {"a": True, "s": True}], None, None, (set(), None)),
        ([{"a": True, "s": True}, {"b": False, "c": True}], None, None, (set(), None)),
        ([{"a": True, "s": True}, {"b": False, "s": True}], "a", "s", (set(), None)),
    ],
)
def test_pooled(
    tmp_path: Path,
    correct: list[dict[str, bool]],
    weak: str | None,
    strong: str | None,
    want: tuple[set[str], str | None],
) -> None:
    rows = jsonl_rows(
        _write(
            tmp_path / "r.jsonl",
            [{"id": str(i), "prompt": "q", "correct": c} for i, c in enumerate(correct)],
        )
    )
    out, names = pooled(rows, weak, strong)
    assert set(names) == want[0]
    if want[1] is None:
        assert out == rows
    else:
        both = [(r, c) for r, c in zip(out, correct, strict=True) if len(c) == 2]
        assert all(set(r.correct) == {CHEAPER, want[1]} for r, _ in both)
        assert [r.correct[CHEAPER] for r, _ in both] == [
            next(v for k, v in c.items() if k != want[1]) for _, c in both
        ]
        assert {m for r in out for m in r.correct} <= {CHEAPER, want[1]}


def test_rows_without_both_sides_are_counted_not_silently_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _labels(300, 0)
    for r in rows[::3]:
        del r["correct"]
    data = _write(tmp_path / "labels.jsonl", rows)
    out = tmp_path / "pair.npz"
    assert main(["router", "train", "--data", str(data), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "pair flash/non-thinking -> pro/think-high: 200 labelled rows" in captured.out
    assert "100 of 300 row(s) do not label both" in captured.err
    args = ["router", "eval", "--data", str(data), "--weak", WEAK, "--strong", STRONG]
    assert main([*args, "--bootstrap", "0"]) == 0
    assert "100 of 300 row(s) do not label both" in capsys.readouterr().err


def test_a_shadow_export_with_rows_of_one_side_pools_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _labels(300, 0, weak=CHEAP)
    for r in rows[:7]:
        r["correct"] = {k: v for k, v in r["correct"].items() if k != STRONG}  # type: ignore[attr-defined]
    data = _write(tmp_path / "labels.jsonl", rows)
    out = tmp_path / "pair.npz"
    assert main(["router", "train", "--data", str(data), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"pair {CHEAPER} -> {STRONG}: 293 labelled rows" in captured.out
    assert "7 of 300 row(s) do not label both" in captured.err
    assert (
        main(["router", "eval", "--data", str(data), "--strong", STRONG, "--bootstrap", "0"]) == 0
    )
    assert "7 of 300 row(s) do not label both" in capsys.readouterr().err


def test_a_tie_between_the_sides_is_said_or_read_from_their_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tied = [{"a": True, "b": False}, {"a": False, "b": True}]
    rows = [{"id": str(i), "prompt": "q", "correct": c} for i, c in enumerate(tied)]
    assert pair_names(jsonl_rows(_write(tmp_path / "r.jsonl", rows)), None, None) == ("a", "b")
    assert "a and b are right equally often" in capsys.readouterr().err
    named = [{"weak": c["b"], "strong": c["a"]} for c in tied]
    rows = [{"id": str(i), "prompt": "q", "correct": c} for i, c in enumerate(named)]
    got = pair_names(jsonl_rows(_write(tmp_path / "n.jsonl", rows)), None, None)
    assert got == ("weak", "strong") and capsys.readouterr().err == ""


def test_eval_on_a_few_rows_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "few.jsonl", _labels(12, 3))
    args = ["router", "eval", "--data", str(data), "--weak", WEAK, "--strong", STRONG]
    assert main([*args, "--bootstrap", "0"]) == 0
    assert "only 12 labelled row(s)" in capsys.readouterr().err
