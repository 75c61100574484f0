"""Training the linear router: logistic regression with soft targets, L2, full-batch Adam.

Targets (``train_rows(..., target=...)``): ``difficulty`` (``Row.target``), ``gain`` (the
stronger option's expected net gain, ``data.gain_targets``, computed from the training rows
only) or ``mix`` (their mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.features import DENSE_NAMES, HASH_DIM, Features, from_text
from policies.router.data import Row, gain_targets
from policies.router.model import LinearModel


def featurize(rows: Sequence[Row]) -> list[Features]:
    return [r.features or from_text(r.prompt) for r in rows]


def fit(
    feats: Sequence[Features],
    targets: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    l2: float = 1e-4,
    l2_hashed: float | None = None,
    steps: int = 300,
    lr: float = 0.05,
) -> LinearModel:
    """``l2`` on every weight; ``l2_hashed``, when given, on the hashed n-gram block instead."""
    n = len(feats)
    xd = np.array([f.dense for f in feats], dtype=np.float64)
    counts = np.array([len(f.hashed) for f in feats], dtype=np.int64)
    idx = (
        np.concatenate([np.array(f.hashed, dtype=np.int64) for f in feats])
        if n
        else np.zeros(0, np.int64)
    )
    row_of = np.repeat(np.arange(n), counts)
    y = np.asarray(targets, dtype=np.float64)
    sw = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = sw / sw.sum()
    l2h = l2 if l2_hashed is None else l2_hashed
    wd = np.zeros(len(DENSE_NAMES))
    wh = np.zeros(HASH_DIM)
    m = [np.zeros_like(wd), np.zeros_like(wh)]
    v = [np.zeros_like(wd), np.zeros_like(wh)]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        z = xd @ wd + np.bincount(row_of, weights=wh[idx], minlength=n)
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        err = (p - y) * sw
        gd = xd.T @ err + l2 * wd
        gh = np.bincount(idx, weights=err[row_of], minlength=HASH_DIM) + l2h * wh
        for i, (w, g) in enumerate(((wd, gd), (wh, gh))):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            w -= lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
    return LinearModel(wd, wh, {"rows": n, "steps": steps, "l2": l2, "l2_hashed": l2h})


TARGETS = ("difficulty", "gain", "mix")
DEFAULT_TARGET = "difficulty"


def targets(rows: Sequence[Row], target: str = DEFAULT_TARGET) -> list[float]:
    if target == "difficulty":
        return [r.target for r in rows]
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    gain = gain_targets(rows)
    if target == "gain":
        return gain
    return [0.5 * r.target + 0.5 * g for r, g in zip(rows, gain, strict=True)]


def train_rows(
    rows: Sequence[Row], *, target: str = DEFAULT_TARGET, **kw: float | None
) -> LinearModel:
    """Each source weighs the same in total, whatever its row count."""
    per_source: dict[str, int] = {}
    for r in rows:
        per_source[r.source] = per_source.get(r.source, 0) + 1
    weights = [1.0 / per_source[r.source] for r in rows]
    model = fit(featurize(rows), targets(rows, target), weights=weights, **kw)  # type: ignore[arg-type]
    model.meta["target"] = target
    return model
