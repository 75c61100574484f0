"""Build ``policies/router/topics.npz``: one unit centroid per category of the public data.

The categories are the datasets' own (MMLU-Pro's 14 categories, MATH's 7 subjects, BBH's 27
tasks, DCRouter's 11 task families, ZeroEval's two benchmarks, GSM8K); a centroid is the
normalised mean embedding of its rows. No outcome label is read. The pair model uses the
nearest centroid as a request's topic.

    nice -n 15 .venv/bin/python bench/router/build_topics.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, load  # noqa: E402


def main() -> int:
    data = load()
    keys = np.array(
        [f"{r.source}:{r.group}" if r.group != r.source else r.source for r in data.rows]
    )
    names = sorted(set(keys.tolist()))
    cents = []
    for name in names:
        v = data.emb[keys == name].astype(np.float64).mean(axis=0)
        cents.append(v / np.linalg.norm(v))
    out = ROOT / "policies" / "router" / "topics.npz"
    np.savez_compressed(out, names=np.array(names), centroids=np.array(cents, dtype=np.float16))
    print(f"{len(names)} topics -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
