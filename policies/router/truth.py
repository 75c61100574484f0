"""Does ``auto`` pay off? An online estimate of quality kept and cost saved against
always sending every ``auto`` request to the strong option, from shadow-mode labels.

Shadow mode replays a sample of the requests the router sent to a cheaper option on the
strong one and has a judge compare the two answers. Among those samples:
- the share ``p`` where only the strong answer was acceptable (``strong_needed``) is what
  routing cheaply lost; so *quality kept* = 1 - (share of ``auto`` requests routed cheaply)
  x ``p``: the share of ``auto`` requests answered as acceptably as always-strong would
  have answered them (a request both answers failed counts as kept);
- the strong replays' cost over the cheap answers' cost is the price ratio ``r`` of the
  cheap-routed traffic; so always-strong would have cost (strong-routed cost) + (cheap-routed
  cost) x ``r``, and *cost saved* = 1 - (actual cost) / that.
Pure arithmetic over counts the gateway keeps; no estimate before a first valid label.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tally:
    """What the estimate needs; the gateway adds to it as requests settle and labels land."""

    auto_strong: int = 0  # auto requests settled on the strong option
    auto_cheap: int = 0  # auto requests settled on a cheaper one
    auto_strong_cost: int = 0  # nano-dollars
    auto_cheap_cost: int = 0
    labelled: int = 0  # shadow samples with a valid verdict
    strong_needed: int = 0  # of which only the strong answer was acceptable
    sampled_cheap_cost: int = 0  # what the labelled samples' cheap answers cost
    sampled_strong_cost: int = 0  # what their strong replays cost

    def settled(self, strong: bool, cost: int) -> None:
        if strong:
            self.auto_strong += 1
            self.auto_strong_cost += cost
        else:
            self.auto_cheap += 1
            self.auto_cheap_cost += cost

    def labelled_sample(self, strong_needed: bool, cheap_cost: int, strong_cost: int) -> None:
        self.labelled += 1
        self.strong_needed += int(strong_needed)
        if cheap_cost > 0:  # the ratio only counts samples whose cheap cost is known
            self.sampled_cheap_cost += cheap_cost
            self.sampled_strong_cost += strong_cost


@dataclass(frozen=True, slots=True)
class Truth:
    quality_kept: float
    cost_saved: float | None  # None until a labelled sample has a known cheap cost
    strong_share: float


def estimate(t: Tally) -> Truth | None:
    total = t.auto_strong + t.auto_cheap
    if total == 0 or t.labelled == 0:
        return None
    cheap_share = t.auto_cheap / total
    kept = 1.0 - cheap_share * t.strong_needed / t.labelled
    saved = None
    if t.sampled_cheap_cost > 0:
        ratio = t.sampled_strong_cost / t.sampled_cheap_cost
        always_strong = t.auto_strong_cost + t.auto_cheap_cost * ratio
        actual = t.auto_strong_cost + t.auto_cheap_cost
        saved = 1.0 - actual / always_strong if always_strong > 0 else 0.0
    return Truth(kept, saved, t.auto_strong / total)
