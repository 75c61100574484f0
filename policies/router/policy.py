"""The ``auto`` policy: from a hardness score and the budget situation to (tier, mode).

Constraints are applied later by the routing plan (pinned models, context, FIM); this
decides what ``auto`` asks for: the cheapest option expected to be good enough. Scores
above the Pro threshold go to Pro thinking; above the thinking threshold to Flash
thinking; the rest to Flash without thinking. A score exactly on a threshold goes up in
that threshold's tie fraction, picked by ``draw`` (``calibration``). Budget pressure
pushes down: a team past its downgrade threshold gets Flash, and thinking only for the
hardest requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.options import NON_THINKING, Mode
from policies.router.calibration import Thresholds, at_or_above
from policies.routing import AutoChoice


@dataclass(frozen=True, slots=True)
class AutoInput:
    score: float
    thresholds: Thresholds
    downgrade: bool = False
    strong_tier: str = "pro"
    weak_tier: str = "flash"
    draw: float = 0.0  # in [0, 1): which side of a line a tied score falls on


def decide(inp: AutoInput) -> AutoChoice:
    s, t = inp.score, inp.thresholds
    tag = f"hard={s:.2f}"
    pro = at_or_above(s, t.pro, t.pro_tie, inp.draw)
    if inp.downgrade:
        if pro:
            why = f"{compared(s, t.pro, True)};budget-downgrade"
            return AutoChoice(inp.weak_tier, Mode(True, "high"), why, score=s)
        return AutoChoice(inp.weak_tier, NON_THINKING, f"{tag};budget-downgrade", score=s)
    if pro:
        return AutoChoice(inp.strong_tier, Mode(True, "high"), compared(s, t.pro, True), score=s)
    if at_or_above(s, t.think, t.think_tie, inp.draw):
        return AutoChoice(inp.weak_tier, Mode(True, "high"), compared(s, t.think, True), score=s)
    return AutoChoice(inp.weak_tier, NON_THINKING, compared(s, t.think, False), score=s)


def compared(score: float, line: float, up: bool) -> str:
    """``hard=0.85>=0.73``: the score against the line that decided, with as many digits as
    it takes to tell them apart (``hard=0.0412>=0.0408``, not ``0.04>=0.04``); a score
    exactly on the line went up or stayed by its tie draw (``hard=0.05=0.05(tie,up)``)."""
    if score == line:
        return f"hard={score:.2f}={line:.2f}(tie,{'up' if up else 'down'})"
    for digits in range(2, 7):
        a, b = f"{score:.{digits}f}", f"{line:.{digits}f}"
        if a != b:
            break
    return f"hard={a}{'>=' if up else '<'}{b}"


# Explicit signals that set a floor on the mode, whatever the score (``scorer.explicit_signals``).
# Tools and code are not here: they are on nearly every agent request, and the public data
# cannot show that they need thinking; they are reported in the reason only.
THINKING_SIGNALS = ("asked-to-reason", "long-context")


def apply_signals(choice: AutoChoice, signals: tuple[str, ...]) -> AutoChoice:
    """Thinking for a request that asks to reason or carries a long context."""
    lifts = [s for s in signals if s in THINKING_SIGNALS]
    if choice.mode.thinking or not lifts:
        return choice
    return AutoChoice(
        choice.tier,
        Mode(True, "high"),
        choice.reason + ";" + ";".join(lifts),
        tuple(lifts),
        choice.score,
    )
