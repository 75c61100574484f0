"""Shadow mode's pure parts: sampling, the judge's verdict, labels as training rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.catalog import parse_catalog
from policies.errors import ConfigError
from policies.features import from_text
from policies.router.data import jsonl_rows
from policies.router.shadow import (
    JUDGE_SYSTEM,
    Label,
    Verdict,
    answer_text,
    features_to_json,
    is_cheaper,
    judge_messages,
    parse_verdict,
    should_sample,
    stream_text,
    training_row,
)
from policies.router.train import featurize

DEMO = Path(__file__).resolve().parents[2] / "gateway" / "examples" / "demo.yaml"


@pytest.mark.parametrize(
    ("served", "strong", "cheaper"),
    [
        (("flash", False), ("pro", True), True),
        (("flash", True), ("pro", True), True),
        (("pro", False), ("pro", True), True),
        (("pro", True), ("pro", True), False),
        (("pro", False), ("pro", False), False),
        (("pro", True), ("pro", False), False),
    ],
)
def test_is_cheaper(served: tuple[str, bool], strong: tuple[str, bool], cheaper: bool) -> None:
    assert is_cheaper(*served, *strong) is cheaper


@pytest.mark.parametrize(
    ("draw", "share", "enabled", "auto", "cheaper", "sampled"),
    [
        (0.01, 0.02, True, True, True, True),
        (0.02, 0.02, True, True, True, False),  # draw in [0, 1): share is exclusive
        (0.5, 0.02, True, True, True, False),
        (0.999, 1.0, True, True, True, True),
        (0.0, 0.0, True, True, True, False),
        (0.01, 0.02, False, True, True, False),
        (0.01, 0.02, True, False, True, False),  # a pinned model says nothing of the router
        (0.01, 0.02, True, True, False, False),  # already on the strong option
    ],
)
def test_should_sample(
    draw: float, share: float, enabled: bool, auto: bool, cheaper: bool, sampled: bool
) -> None:
    assert should_sample(draw, share, enabled=enabled, auto=auto, cheaper=cheaper) is sampled


def _v(better: str, a: Any, b: Any) -> str:
    return json.dumps({"better": better, "a_acceptable": a, "b_acceptable": b})


@pytest.mark.parametrize(
    ("text", "weak_first", "expected"),
    [
        (_v("A", True, True), True, Verdict("weak", True, True)),
        (_v("A", True, True), False, Verdict("strong", True, True)),
        (_v("B", False, True), True, Verdict("strong", False, True)),
        (_v("B", False, True), False, Verdict("weak", True, False)),
        (_v("tie", False, False), True, Verdict("tie", False, False)),
        (_v("TIE", "true", "false"), True, Verdict("tie", True, False)),
        # prose and fences around it; the last object wins
        (
            "I think B.\n```json\n" + _v("b", True, True) + "\n```",
            True,
            Verdict("strong", True, True),
        ),
        (
            _v("A", True, True) + " on reflection " + _v("B", False, True),
            True,
            Verdict("strong", False, True),
        ),
        # a malformed last object falls back to an earlier well-formed one
        (_v("A", True, True) + ' {"better": "C"}', True, Verdict("weak", True, True)),
        # not verdicts
        ("", True, None),
        (None, True, None),
        ("the gateway routes each request to the cheapest option", True, None),
        (_v("C", True, True), True, None),
        (_v("A", "yes", True), True, None),
        (_v("A", 1, True), True, None),
        ('{"better": "A", "a_acceptable": true}', True, None),
        ('{"better": "A", "a_acceptable": true, "b_acceptable": true, "x": 1}', True, None),
        ('{"better": "A", "a_acceptable": true, "b_acceptable": tru}', True, None),
        # contradictions: the preferred answer unacceptable, the other acceptable
        (_v("A", False, True), True, None),
        (_v("B", True, False), True, None),
    ],
)
def test_parse_verdict(text: str | None, weak_first: bool, expected: Verdict | None) -> None:
    assert parse_verdict(text, weak_first=weak_first) == expected


@pytest.mark.parametrize(
    ("verdict", "label"),
    [
        (Verdict("weak", True, True), "weak_ok"),
        (Verdict("strong", True, True), "weak_ok"),
        (Verdict("strong", False, True), "strong_needed"),
        (Verdict("tie", False, False), "both_bad"),
    ],
)
def test_verdict_label(verdict: Verdict, label: str) -> None:
    assert verdict.label == label


def test_judge_messages_order_and_clipping() -> None:
    m = judge_messages("why?", "weak says", "strong says", weak_first=True)
    assert m[0] == {"role": "system", "content": JUDGE_SYSTEM}
    user = m[1]["content"]
    assert user.index("weak says") < user.index("strong says")
    m = judge_messages("why?", "weak says", "strong says", weak_first=False)
    assert m[1]["content"].index("strong says") < m[1]["content"].index("weak says")
    long = judge_messages("q" * 50_000, "a", "b", weak_first=True)[1]["content"]
    assert "[... truncated ...]" in long and len(long) < 9_000


def test_answer_texts() -> None:
    assert answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert answer_text({"choices": [{"message": {"content": None}}]}) == ""
    assert answer_text({"choices": []}) == ""
    events = [
        b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
        b'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
        b"data: not json\n\n",
    ]
    assert stream_text(events) == "Hello"


def _label(**kw: Any) -> Label:
    base: dict[str, Any] = {
        "request_id": "r1",
        "team_id": "team_a",
        "weak": "flash/non-thinking",
        "strong": "pro/think-high",
        "verdict": "strong_needed",
        "better": "strong",
        "weak_ok": False,
        "strong_ok": True,
        "prompt": None,
        "features": features_to_json(from_text("prove that 2+2=4 step by step")),
    }
    base.update(kw)
    return Label(**base)


@pytest.mark.parametrize(
    ("label", "has", "correct"),
    [
        (_label(), "features", {"flash/non-thinking": False, "pro/think-high": True}),
        (
            _label(prompt="hello", verdict="weak_ok", weak_ok=True),
            "prompt",
            {"flash/non-thinking": True, "pro/think-high": True},
        ),
        (_label(verdict="invalid", better=None, weak_ok=None, strong_ok=None), None, None),
        (_label(features=None), None, None),
    ],
)
def test_training_row(label: Label, has: str | None, correct: dict[str, bool] | None) -> None:
    row = training_row(label)
    if has is None:
        assert row is None
        return
    assert row is not None and has in row and row["correct"] == correct
    assert row["id"] == "r1" and row["source"] == "shadow" and row["category"] == "team_a"
    assert ("prompt" in row) != ("features" in row)


def test_exported_rows_train_like_prompt_rows(tmp_path: Path) -> None:
    """A features-only row is read back with the router's exact feature vector."""
    text = "prove that 2+2=4 step by step"
    rows = [training_row(_label()), training_row(_label(request_id="r2", prompt=text))]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = jsonl_rows(path)
    assert [r.target for r in read] == [0.5, 0.5]
    # stored features carry no task text (prompts are not stored); the rest is identical
    bare = dataclasses.replace(from_text(text), task="")
    assert read[0].features == bare and read[0].prompt == ""
    assert featurize(read)[0] == bare and featurize(read)[1] == from_text(text)


def test_features_row_validation(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "features": {"dense": [1.0], "hashed": []}}) + "\n")
    with pytest.raises(ValueError, match="dense"):
        jsonl_rows(path)


def test_catalog_shadow_section() -> None:
    data = yaml.safe_load(DEMO.read_text())
    assert parse_catalog(data).routing.shadow.enabled is False
    data["routing"]["shadow"] = {"enabled": True, "share": 0.5, "budget_nanos_per_day": 10}
    shadow = parse_catalog(data).routing.shadow
    assert (shadow.share, shadow.budget_nanos_per_day, shadow.strong_tier) == (0.5, 10, "pro")
    for bad in ({"share": 1.5}, {"budget_nanos_per_day": -1}, {"unknown": 1}):
        data["routing"]["shadow"] = {"enabled": True, **bad}
        with pytest.raises(ConfigError):
            parse_catalog(data)
    data["routing"]["shadow"] = {"enabled": True, "judge_tier": "ultra"}
    with pytest.raises(ConfigError, match="judge_tier"):
        parse_catalog(data)
