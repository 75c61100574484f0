"""RouteLLM's routing-quality metrics: PGR, APGR, CPT, with bootstrap confidence intervals.

Given per-row correctness of a weak and a strong model and a router score (higher = send
to strong), routing the top ``s`` share of rows to strong gives a quality; PGR is how much
of the weak-to-strong gap that recovers. APGR is the area under PGR over the strong-call
share, on 11 evenly spaced shares (0, 0.1, ..., 1) with the trapezoid rule. CPT(x) is the
smallest strong-call share whose PGR reaches x (linearly interpolated between grid points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHARES = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True, slots=True)
class Curve:
    shares: tuple[float, ...]
    pgr: tuple[float, ...]
    apgr: float
    cpt50: float
    cpt80: float


def quality_at(weak: np.ndarray, strong: np.ndarray, order: np.ndarray, share: float) -> float:
    n = len(order)
    k = int(round(share * n))
    routed = weak.copy()
    routed[order[:k]] = strong[order[:k]]
    return float(routed.mean())


def _cpt(shares: np.ndarray, pgr: np.ndarray, target: float) -> float:
    for i in range(len(shares)):
        if pgr[i] >= target:
            if i == 0:
                return float(shares[0])
            s0, s1, p0, p1 = shares[i - 1], shares[i], pgr[i - 1], pgr[i]
            return float(s0 + (target - p0) * (s1 - s0) / (p1 - p0)) if p1 != p0 else float(s1)
    return 1.0


def curve(
    weak: Sequence[bool] | np.ndarray,
    strong: Sequence[bool] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    seed: int = 0,
) -> Curve:
    w = np.asarray(weak, dtype=float)
    s = np.asarray(strong, dtype=float)
    rng = np.random.default_rng(seed)
    # Ties broken at random so a constant score behaves like a random router.
    order = np.lexsort((rng.random(len(w)), -np.asarray(score, dtype=float)))
    gap = s.mean() - w.mean()
    if gap <= 0:
        raise ValueError("the strong model is not better than the weak one on these rows")
    pgr = np.array([(quality_at(w, s, order, sh) - w.mean()) / gap for sh in SHARES])
    apgr = float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(SHARES)))
    return Curve(
        tuple(SHARES.tolist()),
        tuple(pgr.tolist()),
        apgr,
        _cpt(SHARES, pgr, 0.5),
        _cpt(SHARES, pgr, 0.8),
    )


def bootstrap(
    weak: Sequence[bool],
    strong: Sequence[bool],
    score: Sequence[float],
    *,
    n: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    w, s, sc = np.asarray(weak), np.asarray(strong), np.asarray(score, dtype=float)
    rng = np.random.default_rng(seed)
    vals: dict[str, list[float]] = {"apgr": [], "cpt50": [], "cpt80": []}
    for i in range(n):
        idx = rng.integers(0, len(w), len(w))
        if s[idx].mean() <= w[idx].mean():
            continue
        c = curve(w[idx], s[idx], sc[idx], seed=seed + i)
        vals["apgr"].append(c.apgr)
        vals["cpt50"].append(c.cpt50)
        vals["cpt80"].append(c.cpt80)
    return {
        k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
        for k, v in vals.items()
        if v
    }
