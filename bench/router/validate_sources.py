"""Choose the router's regularisation without looking at the held-out benchmark rows.

Each of the non-MMLU-Pro public sources (MATH, GSM8K, BBH) in turn is scored by a model
trained on the other two, with no MMLU-Pro row anywhere; the score is the Spearman rank
correlation between the model's hardness score and that source's own difficulty label.
The setting with the highest mean is the one to try on the held-out MMLU-Pro splits
(`tiergate router report --l2-hashed X`). Results: docs/routing.md.

    .venv/bin/python bench/router/validate_sources.py [--l2-hashed 1e-4 1e-3 ...] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policies.router.data import Row, shared_rows  # noqa: E402
from policies.router.evaluate import score_rows  # noqa: E402
from policies.router.train import train_rows  # noqa: E402

DEFAULT_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties given their mean rank."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / counts)[inv]


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def leave_one_source_out(rows: list[Row], l2_hashed: float, steps: int) -> dict[str, float]:
    pool = [r for r in rows if r.source != "mmlu_pro"]
    out = {}
    for source in sorted({r.source for r in pool}):
        train = [r for r in pool if r.source != source]
        held = [r for r in pool if r.source == source]
        model = train_rows(train, steps=steps, l2_hashed=l2_hashed)
        out[source] = spearman(score_rows(model, held), [r.target for r in held])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared-dir", default=str(ROOT.parent / "shared" / "data" / "routing"))
    ap.add_argument("--l2-hashed", type=float, nargs="+", default=list(DEFAULT_GRID))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json-out", default=str(ROOT / "var" / "bench" / "router_validation.json"))
    args = ap.parse_args()
    rows = shared_rows(Path(args.shared_dir))
    results = {}
    for l2h in args.l2_hashed:
        per = leave_one_source_out(rows, l2h, args.steps)
        mean = float(np.mean(list(per.values())))
        results[str(l2h)] = {"per_source": per, "mean": mean}
        cells = "  ".join(f"{s} {v:+.3f}" for s, v in per.items())
        print(f"l2_hashed {l2h:<8g} {cells}  mean {mean:+.3f}", flush=True)
    best = max(results, key=lambda k: results[k]["mean"])
    print(f"highest mean: l2_hashed {best}")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps({"results": results, "best": best}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
