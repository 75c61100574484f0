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
            return AutoChoice(
                inp.weak_tier, Mode(True, "high"), f"{tag}>={t.pro:.2f};budget-downgrade"
            )
        return AutoChoice(inp.weak_tier, NON_THINKING, f"{tag};budget-downgrade")
    if pro:
        return AutoChoice(inp.strong_tier, Mode(True, "high"), f"{tag}>={t.pro:.2f}")
    if at_or_above(s, t.think, t.think_tie, inp.draw):
        return AutoChoice(inp.weak_tier, Mode(True, "high"), f"{tag}>={t.think:.2f}")
    return AutoChoice(inp.weak_tier, NON_THINKING, f"{tag}<{t.think:.2f}")


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
        choice.tier, Mode(True, "high"), choice.reason + ";" + ";".join(lifts), tuple(lifts)
    )
