"""`tiergate router train --data` on the label export shape, then `router eval --weights`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.cli_router import CliError, pair_names
from policies.features import from_text
from policies.router import Router
from policies.router.data import jsonl_rows
from policies.router.shadow import Label, features_to_json, training_row

WEAK, STRONG = "flash/non-thinking", "pro/think-high"


def _labels(n: int, seed: int, *, with_prompts: bool = True) -> list[dict[str, object]]:
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
            WEAK,
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
