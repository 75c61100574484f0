"""Learning a pair from N labelled rows: APGR on the held-out rows of the same source.

For each public source with per-model outcomes (MMLU-Pro; DCRouter, all task families
pooled; ZeroEval, MATH-L5 and CRUX pooled) and each of its weak -> strong pairs: N rows are
drawn at random as the team's labels (N = 100, 300, 1000, 3000 where the source has room
for a test set of at least 500), the rest are the test rows. Routers compared:
- length: the prompt length (the generic router's score);
- topic prior: the mean label of the training rows of the row's category (dataset
  metadata: MMLU-Pro category, DCRouter task, ZeroEval benchmark), shrunk to 0 with 5
  pseudo-rows;
- knn: the mean label of the sqrt(N) nearest training rows by embedding;
- pair: ``policies.router.scorer.fit_pair`` (what ``router train --data`` ships), its
  topics assigned by a topic classifier fitted on the other half of the public rows
  (``build_topics.cross_fitted_topics``): the shipped classifier has seen every public row,
  so scoring with it would flatter the pair model. ``--centroid-topics``: the nearest
  shipped centroid instead (the model before the classifier).
Mean over 3 draws (seeds 0, 1, 2).

    nice -n 15 .venv/bin/python bench/router/curves.py [--sizes 100 300 1000 3000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_topics import cross_fitted_topics  # noqa: E402
from common import (  # noqa: E402
    DCROUTER_PAIRS,
    MMLU_PAIRS,
    ROOT,
    ZEROEVAL_PAIRS,
    Data,
    load,
)

from policies.router.metrics import curve  # noqa: E402
from policies.router.scorer import (  # noqa: E402
    fit_pair,
    knn_mean,
    pair_label,
    scores_of,
    shipped_topics,
)

GROUPS = {
    "mmlu_pro": (lambda s: s == "mmlu_pro", MMLU_PAIRS),
    "dcrouter": (lambda s: s.startswith("dcrouter/"), DCROUTER_PAIRS),
    "zeroeval": (lambda s: s.startswith("zeroeval/"), ZEROEVAL_PAIRS),
}
MIN_TEST = 500
# Pairs for trying changes to the pair model; never in the reported table (GROUPS).
DEV = {
    "mmlu_pro": (
        ("Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1"),
        ("Yi-6b-Chat", "Yi-34B"),
    ),
    "dcrouter": (
        ("gemma-2-9b-it", "llama-3.1-nemotron-51b-instruct"),
        ("codegemma-7b", "llama-3.1-8b-instruct"),
    ),
    "zeroeval": (
        ("gemma-2-9b-it", "gemma-2-27b-it"),
        ("claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022"),
    ),
}
VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    # without the per-family prior (the model before it)
    "no_family": {"families": False},
    # the choosing procedure cross-validated itself (margin: the inner rule's)
    "nested": {"nested_se": 0.0},
    "nested_inner_se1": {"nested_se": 0.0, "margin": 1.0},
    "nested_m0": {"nested_se": 0.0, "margin": 0.0},
    "nested_m0_se1": {"nested_se": 1.0, "margin": 0.0},
    "nested_m1_se1": {"nested_se": 1.0, "margin": 1.0},
    "repeats3": {"repeats": 3},
    "ksqrt": {"k": 0},
    # before the blend: a candidate alone, one standard error of lead
    "switch_se1": {"alphas": (math.inf,), "margin": 1.0},
    "blend_se1": {"margin": 1.0},
    "blend_fixed_se1": {"alphas": (0.25, 0.5, 1.0, 2.0, 4.0), "margin": 1.0},
    "blend_repeats3_se1": {"repeats": 3, "margin": 1.0},
}


def run_pair(
    data: Data,
    idx: np.ndarray,
    weak: str,
    strong: str,
    n: int,
    seed: int,
    variant: str = "base",
    topics: np.ndarray | None = None,
):  # type: ignore[no-untyped-def]
    rows = [data.rows[i] for i in idx]
    keep = np.array([weak in r.correct and strong in r.correct for r in rows])
    idx = idx[keep]
    if len(idx) - n < MIN_TEST:
        return None
    perm = np.random.default_rng(seed).permutation(len(idx))
    tr, te = idx[perm[:n]], idx[perm[n:]]
    y = np.array([pair_label(data.rows[i].correct[weak], data.rows[i].correct[strong]) for i in tr])
    w = np.array([data.rows[i].correct[weak] for i in te], dtype=float)
    s = np.array([data.rows[i].correct[strong] for i in te], dtype=float)
    if s.mean() <= w.mean():
        return None
    out = {"length": curve(w, s, data.length[te]).apgr}
    groups_tr = [data.rows[i].group for i in tr]
    sums: dict[str, list[float]] = {}
    for g, v in zip(groups_tr, y, strict=True):
        sums.setdefault(g, []).append(v)
    prior = {g: sum(v) / (len(v) + 5) for g, v in sums.items()}
    topic = np.array([prior.get(data.rows[i].group, 0.0) for i in te])
    # Ties within a topic are broken by length: the prior then refines the generic score.
    out["topic"] = curve(w, s, topic + 1e-6 * data.length[te]).apgr
    k = int(max(5, min(50, round(math.sqrt(n)))))
    out["knn"] = curve(w, s, knn_mean(data.emb[te], data.emb[tr], y, k)).apgr
    kw = dict(VARIANTS[variant])
    if kw.get("k") == 0:
        kw["k"] = k
    if topics is not None:
        kw["centroids"] = shipped_topics()
        kw["topic_rows"] = topics[tr]
    model = fit_pair([data.feats[i] for i in tr], data.emb[tr], y, seed=seed, **kw)
    feats_te = [data.feats[i] for i in te]
    te_topics = None if topics is None else topics[te]
    out["pair"] = curve(w, s, scores_of(model, feats_te, data.emb[te], te_topics)).apgr
    out["chosen"] = model.meta["chosen"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS))
    ap.add_argument("--json-out", default=str(ROOT / "var" / "bench" / "router_curves.json"))
    ap.add_argument("--dev", action="store_true", help="the development pairs instead")
    ap.add_argument("--variant", choices=list(VARIANTS), default="base")
    ap.add_argument("--centroid-topics", action="store_true", help="the shipped centroids")
    args = ap.parse_args()
    data = load()
    topics = None if args.centroid_topics else cross_fitted_topics(data)
    if args.centroid_topics:
        with np.load(ROOT / "policies" / "router" / "topics.npz") as z:
            VARIANTS[args.variant] = {**VARIANTS[args.variant], "centroids": z["centroids"]}
    results = []
    for g in args.groups:
        pick, pairs = GROUPS[g]
        if args.dev:
            pairs = DEV[g]
        idx = np.flatnonzero([pick(str(s)) for s in data.source])
        for weak, strong in pairs:
            for n in args.sizes:
                runs = [
                    run_pair(data, idx, weak, strong, n, seed, args.variant, topics)
                    for seed in range(args.seeds)
                ]
                runs = [r for r in runs if r is not None]
                if not runs:
                    continue
                mean = {
                    k: float(np.mean([r[k] for r in runs]))
                    for k in ("length", "topic", "knn", "pair")
                }
                entry = {
                    "group": g,
                    "weak": weak,
                    "strong": strong,
                    "n": n,
                    **mean,
                    "chosen": [r["chosen"] for r in runs],
                }
                results.append(entry)
                print(
                    f"{g:9} {weak[:22]:>22} -> {strong[:24]:24} N={n:<5} "
                    f"length {mean['length']:.3f} topic {mean['topic']:.3f} "
                    f"knn {mean['knn']:.3f} pair {mean['pair']:.3f}  {entry['chosen']}",
                    flush=True,
                )
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
