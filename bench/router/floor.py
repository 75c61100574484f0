"""The floor: is a learned generic router ever worse than prompt length on a new source?

Leave-one-source-out over every labelled public source (MMLU-Pro, MATH, GSM8K, BBH, the 11
DCRouter task families, ZeroEval MATH-L5 and CRUX; MATH and MATH-L5 are held out together).
The learned candidate is a ridge regression of the within-source difficulty (share of
models wrong, centred per source) on the task signals and the 256-d embedding, the
fallback score's column left unpenalised. Its L2 is chosen *inside* each outer fold, by an
inner leave-one-source-out over the training sources only (mean Spearman gain over the
fallback); if no setting beats the fallback there, that fold ships the fallback. Only then
is the held-out source scored: APGR per weak -> strong pair where the source has outcomes,
Spearman with its difficulty label where it has none (MATH, GSM8K).

    nice -n 15 .venv/bin/python bench/router/floor.py [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, apgr, fold_of, load, pairs_for, signals, spearman  # noqa: E402

from policies.router.scorer import EMB_GAIN  # noqa: E402

GRID = (10.0, 1.0, 0.1, 0.01)


def design(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    sig = np.array([signals(f) for f in data.feats])
    base = np.hstack([data.fallback[:, None], sig])
    base = (base - base.mean(0)) / np.where(base.std(0) > 1e-9, base.std(0), 1.0)
    return np.hstack([base, data.emb.astype(np.float64) * EMB_GAIN])


def per_source_stats(x: np.ndarray, y: np.ndarray, src: np.ndarray):  # type: ignore[no-untyped-def]
    stats = {}
    for s in np.unique(src):
        m = src == s
        xc = x[m] - x[m].mean(0)
        yc = y[m] - y[m].mean()
        n = m.sum()
        stats[str(s)] = (xc.T @ xc / n, xc.T @ yc / n)
    return stats


def solve(stats, sources, lam: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    a = sum(stats[s][0] for s in sources)
    b = sum(stats[s][1] for s in sources)
    pen = np.full(a.shape[0], lam * len(sources))
    pen[0] = 1e-9
    return np.linalg.solve(a + np.diag(pen), b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-out", default=str(ROOT / "var" / "bench" / "router_floor.json"))
    args = ap.parse_args()
    data = load()
    x = design(data)
    src = data.source
    stats = per_source_stats(x, data.target, src)
    sources = sorted(stats)
    folds = sorted({fold_of(s) for s in sources})
    in_fold = {f: [s for s in sources if fold_of(s) == f] for f in folds}
    idx_of = {s: np.flatnonzero(src == s) for s in sources}

    def inner_choice(train: list[str]) -> float | None:
        gains = {lam: [] for lam in GRID}
        for f in sorted({fold_of(s) for s in train}):
            inner_train = [s for s in train if fold_of(s) != f]
            for lam in GRID:
                w = solve(stats, inner_train, lam)
                for s in (s for s in train if fold_of(s) == f):
                    i = idx_of[s]
                    gains[lam].append(
                        spearman(x[i] @ w, data.target[i])
                        - spearman(data.fallback[i], data.target[i])
                    )
        mean = {lam: float(np.mean(v)) for lam, v in gains.items()}
        best = max(mean, key=lambda k: mean[k])
        return best if mean[best] > 0 else None

    table = []
    for f in folds:
        train = [s for s in sources if fold_of(s) != f]
        lam = inner_choice(train)
        w = solve(stats, train, lam) if lam is not None else None
        for s in in_fold[f]:
            i = idx_of[s]
            learned = x[i] @ w if w is not None else data.fallback[i]
            rows = [data.rows[j] for j in i]
            entry = {"source": s, "rows": len(i), "l2": lam}
            pairs = [
                (
                    wk,
                    st,
                    apgr(rows, learned, wk, st),
                    apgr(rows, data.length[i], wk, st),
                    apgr(rows, data.fallback[i], wk, st),
                )
                for wk, st in pairs_for(s)
            ]
            pairs = [p for p in pairs if p[2] is not None]
            if pairs:
                entry["metric"] = "APGR"
                entry["pairs"] = [f"{a} -> {b}" for a, b, *_ in pairs]
                entry["learned"] = float(np.mean([p[2] for p in pairs]))
                entry["length"] = float(np.mean([p[3] for p in pairs]))
                entry["fallback"] = float(np.mean([p[4] for p in pairs]))
            else:
                entry["metric"] = "Spearman"
                entry["learned"] = spearman(learned, data.target[i])
                entry["length"] = spearman(data.length[i], data.target[i])
                entry["fallback"] = spearman(data.fallback[i], data.target[i])
            table.append(entry)
            print(
                f"{s:32} {entry['metric']:8} l2={lam!s:6} learned {entry['learned']:.3f}  "
                f"fallback {entry['fallback']:.3f}  length {entry['length']:.3f}",
                flush=True,
            )
    worse = [e["source"] for e in table if e["learned"] < e["length"]]
    fb_worse = [e["source"] for e in table if e["fallback"] < e["length"]]
    print(f"learned below length on: {worse or 'none'}")
    print(f"fallback below length on: {fb_worse or 'none'}")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(
        json.dumps(
            {"table": table, "learned_below_length": worse, "fallback_below_length": fb_worse},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
