"""Router: features, metrics on hand-computed cases, calibration, policy, shipped weights."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from policies.features import DENSE_NAMES, MAX_SCAN_CHARS, extract_features, from_text, hash_ngrams
from policies.options import NON_THINKING, Mode
from policies.router import Router
from policies.router.calibration import Calibrator, Thresholds
from policies.router.metrics import bootstrap, curve
from policies.router.model import LinearModel
from policies.router.policy import AutoInput, compared, decide
from policies.router.train import fit

D = {n: i for i, n in enumerate(DENSE_NAMES)}


@pytest.mark.parametrize(
    ("text", "feature", "positive"),
    [
        ("def f(x):\n    return x", "code", True),
        ("hello there", "code", False),
        ("Solve 3 + 4 = x and \\frac{1}{2}", "math", True),
        ("Explain step by step", "reasoning", True),
        ("Prove the claim", "reasoning", True),
        ("First do this, then that, finally stop", "multi_step", True),
        ("You must use exactly three words", "constraints", True),
        ("what? why?", "questions", True),
    ],
)
def test_dense_markers(text: str, feature: str, positive: bool) -> None:
    assert (from_text(text).dense[D[feature]] > 0) is positive


def test_conversation_features_and_flags() -> None:
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    f = extract_features(msgs, tools=True, json_mode=True)
    assert f.total_chars == len("be brief") + len("first question") + len("answer") + len(
        "second question"
    )
    assert f.last_user_chars == len("second question")
    assert f.dense[D["turns"]] == 0.2 and f.dense[D["tools"]] == 1 and f.dense[D["json_mode"]] == 1
    assert f.dense[D["has_system"]] == 1
    assert set(hash_ngrams("second question")) <= set(f.hashed)


def test_hashing_is_stable_and_scan_is_bounded() -> None:
    assert hash_ngrams("the quick brown fox") == hash_ngrams("the quick brown fox")
    huge = "word " * 500_000
    f = from_text(huge)
    assert f.last_user_chars == len(huge)
    assert f.hashed == from_text(huge[-MAX_SCAN_CHARS:]).hashed


def test_curve_matches_a_hand_computed_case() -> None:
    # 4 rows; weak right on rows 0,1; strong right on 0,1,2 (gap = 1 row of 4).
    weak = [True, True, False, False]
    strong = [True, True, True, False]
    perfect = [0.1, 0.2, 0.9, 0.3]  # row 2 first: PGR 1 from a 25% strong share on
    c = curve(weak, strong, perfect)
    # shares 0, .1, .2 -> k = 0, 0, 1 (round(0.8)=1): PGR 0, 0, 1, then 1 ...
    assert c.pgr[0] == 0 and c.pgr[1] == 0 and c.pgr[2] == 1 and c.pgr[-1] == 1
    assert c.apgr == pytest.approx(0.1 * 0.5 + 0.8)  # trapezoid of 0->1 on [.1,.2], then 1
    assert c.cpt50 == pytest.approx(0.15) and c.cpt80 == pytest.approx(0.18)
    worst = curve(weak, strong, [0.9, 0.8, 0.1, 0.7])  # row 2 last
    # k = round(share * 4): rows 0,1,3 up to share 0.8, all four from 0.9
    assert worst.pgr[-3] == 0 and worst.pgr[-2] == 1 and worst.apgr == pytest.approx(0.05 + 0.1)


def test_random_scores_average_half_and_bootstrap_brackets() -> None:
    rng = np.random.default_rng(1)
    w = rng.random(2000) < 0.5
    s = w | (rng.random(2000) < 0.4)
    assert curve(w, s, [0.0] * 2000).apgr == pytest.approx(0.5, abs=0.05)
    ci = bootstrap(w, s, s.astype(float) - w.astype(float), n=50)
    lo, hi = ci["apgr"]
    assert lo <= curve(w, s, s.astype(float) - w.astype(float)).apgr <= hi and lo > 0.8


def test_calibration_meets_the_target_share() -> None:
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.9, 0.8), min_samples=100)
    assert cal.thresholds == Thresholds(0.9, 0.8)
    scores = [i / 1000 for i in range(1000)]
    for s in scores:
        cal.observe(s)
    t = cal.thresholds
    assert t.pro == pytest.approx(0.8, abs=0.01) and t.think == pytest.approx(0.5, abs=0.01)
    for s in scores:
        choice = decide(AutoInput(s, t, draw=cal.draw(s)))
        cal.record(choice.tier == "pro", choice.mode.thinking)
    assert cal.realised_pro_share == pytest.approx(0.2, abs=0.01)


def _route(cal: Calibrator, scores: list[float]) -> Counter[tuple[str, bool]]:
    """Observe and decide each score as the gateway does; count (tier, thinking)."""
    out: Counter[tuple[str, bool]] = Counter()
    for s in scores:
        cal.observe(s)
        choice = decide(AutoInput(s, cal.thresholds, draw=cal.draw(s)))
        cal.record(choice.tier == "pro", choice.mode.thinking)
        out[(choice.tier, choice.mode.thinking)] += 1
    return out


# Traffic where many requests score exactly the same: the same short turn ("hi"), a few
# distinct values, a tied block in the middle. The realised shares must stay on target.
TIED = {
    "all the same": [0.05] * 3000,
    "two values": [0.05, 0.05, 0.05, 0.9] * 750,
    "tied middle": [i / 1000 for i in range(400)]
    + [0.5] * 1200
    + [0.6 + i / 1e4 for i in range(400)],
    "three values": [0.1] * 1000 + [0.3] * 1000 + [0.7] * 1000,
}


@pytest.mark.parametrize("name", TIED)
def test_tied_scores_keep_the_pro_and_thinking_shares_on_target(name: str) -> None:
    rng = np.random.default_rng(7)
    scores = [float(x) for x in rng.permutation(TIED[name])]
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.7, 0.4))
    _route(cal, scores[:600])  # warm the window
    counts = _route(cal, scores[600:])
    n = sum(counts.values())
    assert counts[("pro", True)] / n == pytest.approx(0.2, abs=0.03)
    assert counts[("flash", True)] / n == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize(("burst", "first", "then"), [(200, 0.26, 0.03), (2100, 0.35, 0.03)])
def test_a_burst_of_identical_requests_does_not_send_the_rest_of_the_traffic_to_pro(
    burst: int, first: float, then: float
) -> None:
    """Identical "hi" requests, then mixed traffic that all scores above them: the window
    is full of the burst, so its quantile alone would send nearly every mixed request to
    Pro (a proportional correction: 46% then 33% after 2,100). The aims follow what was
    sent, so within the first 150 mixed requests the share is back near the target, and
    the next 450 are on it, for Pro and for thinking."""
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.7, 0.4))
    start = _route(cal, [0.05] * burst)
    assert start[("pro", True)] <= 0.2 * burst + 1
    rng = np.random.default_rng(3)
    head = _route(cal, [float(x) for x in 0.1 + 0.9 * rng.random(150)])
    assert head[("pro", True)] / 150 < first
    tail = _route(cal, [float(x) for x in 0.1 + 0.9 * rng.random(450)])
    assert tail[("pro", True)] / 450 == pytest.approx(0.2, abs=then)
    assert tail[("flash", True)] / 450 == pytest.approx(0.3, abs=2 * then)


def test_a_burst_of_identical_high_scores_does_not_starve_the_traffic_after_it() -> None:
    """The mirror case: 2,100 identical long prompts that score above everything after
    them. The window is all burst, so only an aim near 1 reaches below it; the aim may go
    there, and the mixed traffic is back on target after a few hundred requests (with the
    aim held under twice the target it got no Pro for 1,500)."""
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.7, 0.4))
    rng = np.random.default_rng(3)
    _route(cal, [float(x) for x in 0.1 + 0.8 * rng.random(600)])
    burst = _route(cal, [0.95] * 2100)
    assert burst[("pro", True)] / 2100 == pytest.approx(0.2, abs=0.01)
    _route(cal, [float(x) for x in 0.1 + 0.8 * rng.random(300)])
    tail = _route(cal, [float(x) for x in 0.1 + 0.8 * rng.random(900)])
    assert tail[("pro", True)] / 900 == pytest.approx(0.2, abs=0.03)


def test_steady_traffic_meets_the_target_in_every_stretch() -> None:
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.7, 0.4))
    rng = np.random.default_rng(5)
    _route(cal, [float(x) for x in rng.random(2000)])
    blocks = [_route(cal, [float(x) for x in rng.random(200)]) for _ in range(40)]
    pro = np.array([b[("pro", True)] / 200 for b in blocks])
    assert pro.mean() == pytest.approx(0.2, abs=0.005) and pro.max() < 0.26


def test_only_the_decisions_of_the_lines_correct_their_aim() -> None:
    """Before the window fills, the training data's thresholds decide: what they send is
    not the lines' doing and leaves the aim alone."""
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.0, 0.0), min_samples=50)
    _route(cal, [0.5] * 49)  # all to Pro under the prior
    assert cal.thresholds == Thresholds(0.0, 0.0)
    rng = np.random.default_rng(1)
    head = _route(cal, [float(x) for x in rng.random(100)])
    assert head[("pro", True)] / 100 == pytest.approx(0.2, abs=0.05)


def test_calibration_ignores_scores_that_are_not_numbers() -> None:
    cal = Calibrator(pro_share=0.2, think_share=0.3, prior=Thresholds(0.7, 0.4), min_samples=10)
    for s in [float("nan"), float("inf")] + [i / 10 for i in range(10)]:
        cal.observe(s)
    assert cal.thresholds.pro == 0.8 and cal.thresholds.think == 0.5


def test_share_zero_sends_nothing_up_and_share_one_sends_everything() -> None:
    none = Calibrator(pro_share=0.0, think_share=0.0, prior=Thresholds(0.7, 0.4), min_samples=1)
    assert _route(none, [0.5] * 50 + [0.9] * 50)[("flash", False)] == 100
    every = Calibrator(pro_share=1.0, think_share=0.0, prior=Thresholds(0.7, 0.4), min_samples=1)
    assert _route(every, [0.5] * 50 + [0.9] * 50)[("pro", True)] == 100


@pytest.mark.parametrize(
    ("score", "downgrade", "tier", "mode"),
    [
        (0.9, False, "pro", Mode(True, "high")),
        (0.5, False, "flash", Mode(True, "high")),
        (0.1, False, "flash", NON_THINKING),
        (0.9, True, "flash", Mode(True, "high")),
        (0.5, True, "flash", NON_THINKING),
    ],
)
def test_auto_policy(score: float, downgrade: bool, tier: str, mode: Mode) -> None:
    choice = decide(AutoInput(score, Thresholds(0.7, 0.4), downgrade))
    assert (choice.tier, choice.mode) == (tier, mode)
    assert (
        choice.reason.startswith(f"hard={score:.2f}")
        and ("budget-downgrade" in choice.reason) is downgrade
    )


def test_training_learns_a_separable_signal_and_round_trips() -> None:
    easy = [from_text(f"say hi to {n}") for n in ("ann", "bob", "cy", "di")] * 10
    hard = [from_text(f"prove theorem {n} step by step") for n in ("a", "b", "c", "d")] * 10
    model = fit(easy + hard, [0.0] * 40 + [1.0] * 40, steps=200)
    assert model.predict(hard[0]) > 0.8 > 0.2 > model.predict(easy[0])
    again = LinearModel.from_bytes(model.to_bytes())
    assert again.predict(hard[0]) == pytest.approx(model.predict(hard[0]), abs=1e-5)


def test_l2_on_the_hashed_block_shrinks_only_the_ngram_weights() -> None:
    easy = [from_text(f"say hi to {n}") for n in ("ann", "bob", "cy", "di")] * 10
    hard = [from_text(f"prove theorem {n} step by step") for n in ("a", "b", "c", "d")] * 10
    y = [0.0] * 40 + [1.0] * 40
    base = fit(easy + hard, y, steps=200)
    tight = fit(easy + hard, y, steps=200, l2_hashed=1.0)
    assert tight.meta["l2_hashed"] == 1.0 and base.meta["l2_hashed"] == base.meta["l2"]
    base_h, tight_h = float(np.abs(base.hashed).sum()), float(np.abs(tight.hashed).sum())
    assert tight_h < 0.5 * base_h
    # the dense block still learns the signal (reasoning markers, lengths)
    assert sum(map(abs, tight.dense)) > 0.5 * sum(map(abs, base.dense))
    assert tight.predict(hard[0]) > tight.predict(easy[0])


def test_generic_router_ranks_the_longer_task_above_small_talk() -> None:
    r = Router.load_default()
    hard = r.score(
        [
            {
                "role": "user",
                "content": (
                    "A 2.0 kg block slides down a frictionless incline of angle 30 degrees from a height of 5.0 m, then "
                    "compresses a spring of constant 400 N/m. Find the maximum compression.\nA. 0.5 m\nB. 0.7 m\nC. 1.0 m"
                ),
            }
        ]
    )
    easy = r.score([{"role": "user", "content": "Write a two-line thank-you note."}])
    assert 1.0 > hard.hard > easy.hard > 0.0
    assert r.model is None and r.pair is None  # no learned part ships (docs/routing.md)


FORBIDDEN = {
    "fastapi",
    "starlette",
    "redis",
    "sqlalchemy",
    "httpx",
    "aiohttp",
    "litellm",
    "uvicorn",
}


def test_policies_import_no_io_libraries() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_task_messages_leave_the_agent_harness_out() -> None:
    from policies.features import task_messages, task_text

    reminder = "<system-reminder>\nToday is Friday.\n</system-reminder>\n"
    env = "<environment_context>\n  <cwd>/x</cwd>\n</environment_context>"
    messages = [
        {"role": "system", "content": "You are an agent. " * 500},
        {"role": "developer", "content": "<skills_instructions>...</skills_instructions>"},
        {"role": "user", "content": env},
        {"role": "user", "content": [{"type": "text", "text": reminder + "say hi"}]},
    ]
    task = task_messages(messages)
    assert task == [
        {"role": "system", "content": ""},
        {"role": "developer", "content": ""},
        {"role": "user", "content": "say hi"},
    ]
    assert task_text("plain <b>text</b>") == "plain <b>text</b>"
    easy = extract_features(task)
    assert easy.total_chars == len("say hi") and easy.dense[DENSE_NAMES.index("has_system")] == 1


@pytest.mark.parametrize(
    ("score", "line", "up", "text"),
    [
        (0.85, 0.73, True, "hard=0.85>=0.73"),
        (0.0412, 0.0408, True, "hard=0.0412>=0.0408"),
        (0.0401, 0.0408, False, "hard=0.040<0.041"),
        (0.05, 0.05, True, "hard=0.05=0.05(tie,up)"),
        (0.05, 0.05, False, "hard=0.05=0.05(tie,down)"),
    ],
)
def test_the_reason_tells_the_score_from_the_line(
    score: float, line: float, up: bool, text: str
) -> None:
    assert compared(score, line, up) == text
