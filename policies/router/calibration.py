"""Thresholds that meet a target share of Pro (and of thinking) calls on recent traffic.

A bounded ring buffer of recent scores; the Pro threshold is the (1 - pro_share) quantile
of it, the thinking threshold the (1 - pro_share - think_share) quantile. Until enough
scores are seen, the thresholds measured on the training data are used. Deterministic:
the same scores in the same order give the same thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Thresholds:
    pro: float
    think: float


@dataclass
class Calibrator:
    pro_share: float
    think_share: float
    prior: Thresholds
    size: int = 2048
    min_samples: int = 200
    recompute_every: int = 64
    _ring: list[float] = field(default_factory=list)
    _pos: int = 0
    _seen: int = 0
    _current: Thresholds | None = None
    _pro_calls: int = 0
    _calls: int = 0

    def observe(self, score: float) -> None:
        if len(self._ring) < self.size:
            self._ring.append(score)
        else:
            self._ring[self._pos] = score
            self._pos = (self._pos + 1) % self.size
        self._seen += 1
        if self._seen % self.recompute_every == 0 or self._current is None:
            self._current = self._compute()

    def _compute(self) -> Thresholds | None:
        if len(self._ring) < self.min_samples:
            return None
        ordered = sorted(self._ring)

        def q(share_above: float) -> float:
            i = min(len(ordered) - 1, max(0, int(round((1 - share_above) * len(ordered)))))
            return ordered[i]

        return Thresholds(
            pro=q(self.pro_share), think=q(min(1.0, self.pro_share + self.think_share))
        )

    @property
    def thresholds(self) -> Thresholds:
        return self._current or self.prior

    def record(self, pro: bool) -> None:
        self._calls += 1
        self._pro_calls += pro

    @property
    def realised_pro_share(self) -> float:
        return self._pro_calls / self._calls if self._calls else 0.0
