"""Held-out evaluation: scores for rows the model never saw, then RouteLLM's metrics.

``cross_category`` trains one model per held-out MMLU-Pro category group (everything else,
including the other public sources, is training data) and scores the held-out rows; so
every MMLU-Pro row is scored by a model that never saw its category. ``cross_source``
trains without any MMLU-Pro row at all and scores all of them: a new source entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.features import from_text
from policies.router.data import Row
from policies.router.metrics import bootstrap, curve
from policies.router.model import LinearModel
from policies.router.train import DEFAULT_TARGET, train_rows


@dataclass(frozen=True, slots=True)
class PairResult:
    weak: str
    strong: str
    rows: int
    weak_acc: float
    strong_acc: float
    router: str
    apgr: float
    cpt50: float
    cpt80: float
    ci: dict[str, tuple[float, float]]
    pgr: tuple[float, ...]


def score_rows(model: LinearModel, rows: Sequence[Row]) -> list[float]:
    return [model.predict(r.features or from_text(r.prompt)) for r in rows]


def cross_category(
    rows: Sequence[Row],
    folds: int = 5,
    *,
    steps: int = 300,
    target: str = DEFAULT_TARGET,
    l2_hashed: float | None = None,
) -> dict[str, float]:
    groups = sorted({r.group for r in rows if r.source == "mmlu_pro"})
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    scores: dict[str, float] = {}
    for k in range(folds):
        held = [r for r in rows if r.source == "mmlu_pro" and fold_of[r.group] == k]
        train = [r for r in rows if not (r.source == "mmlu_pro" and fold_of[r.group] == k)]
        model = train_rows(train, steps=steps, target=target, l2_hashed=l2_hashed)
        scores.update(zip((r.id for r in held), score_rows(model, held), strict=True))
    return scores


def cross_source(
    rows: Sequence[Row],
    *,
    steps: int = 300,
    target: str = DEFAULT_TARGET,
    l2_hashed: float | None = None,
) -> dict[str, float]:
    model = train_rows(
        [r for r in rows if r.source != "mmlu_pro"],
        steps=steps,
        target=target,
        l2_hashed=l2_hashed,
    )
    held = [r for r in rows if r.source == "mmlu_pro"]
    return dict(zip((r.id for r in held), score_rows(model, held), strict=True))


def evaluate_pair(
    rows: Sequence[Row], scores: dict[str, float], weak: str, strong: str, *, boot: int = 200
) -> list[PairResult]:
    both = [r for r in rows if weak in r.correct and strong in r.correct and r.id in scores]
    w = [r.correct[weak] for r in both]
    s = [r.correct[strong] for r in both]
    routers = {
        "tiergate": [scores[r.id] for r in both],
        "length-only": [
            float(r.features.last_user_chars if r.features else len(r.prompt)) for r in both
        ],
        "random": [0.0] * len(both),
    }
    out = []
    for name, sc in routers.items():
        c = curve(w, s, sc)
        out.append(
            PairResult(
                weak,
                strong,
                len(both),
                float(np.mean(w)),
                float(np.mean(s)),
                name,
                c.apgr,
                c.cpt50,
                c.cpt80,
                bootstrap(w, s, sc, n=boot),
                c.pgr,
            )
        )
    return out
