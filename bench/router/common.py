"""Shared by the router quality scripts: the public rows with their features and embeddings.

Features and embeddings of every labelled public row are computed once and cached in
``var/bench/router_rows.npz`` (about 15 s the first time).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policies.features import Features, from_text  # noqa: E402
from policies.router.data import Row, all_rows  # noqa: E402
from policies.router.embed import MAX_EMBED_CHARS, default_embedder  # noqa: E402
from policies.router.metrics import curve  # noqa: E402
from policies.router.scorer import fallback_score, signals  # noqa: E402, F401

# the public outcome data; TIERGATE_ROUTING_DATA names another copy of it
SHARED = Path(
    os.environ.get("TIERGATE_ROUTING_DATA") or ROOT.parent / "shared" / "data" / "routing"
)
CACHE = ROOT / "var" / "bench" / f"router_rows_{MAX_EMBED_CHARS}.npz"

# Weak -> strong pairs scored on each source (a pair counts where both are labelled and
# the strong side is ahead on that source).
MMLU_PAIRS = (
    ("gemini-1.5-flash-002", "gemini-1.5-pro-002"),
    ("Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"),
    ("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat"),
    ("gpt-4o-2024-05-13", "gemini-3.1-pro-preview"),
)
DCROUTER_PAIRS = (
    ("mistral-7b-instruct-v0.3", "llama-3.1-nemotron-51b-instruct"),
    ("llama3-chatqa-1.5-8b", "qwen2.5-7b-instruct"),
)
ZEROEVAL_PAIRS = (
    ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"),
    ("claude-3-haiku-20240307", "claude-3-5-sonnet-20241022"),
    ("Meta-Llama-3.1-8B-Instruct", "Meta-Llama-3.1-70B-Instruct"),
    ("Qwen2.5-7B-Instruct", "Qwen2.5-72B-Instruct"),
)
BBH_PAIRS = (("direct", "cot"),)


def pairs_for(source: str) -> tuple[tuple[str, str], ...]:
    if source == "mmlu_pro":
        return MMLU_PAIRS
    if source == "bbh":
        return BBH_PAIRS
    if source.startswith("dcrouter/"):
        return DCROUTER_PAIRS
    if source.startswith("zeroeval/"):
        return ZEROEVAL_PAIRS
    return ()


# Sources that share problems are held out together (ZeroEval MATH-L5 is MATH level 5).
FOLD_OF = {"zeroeval/math-l5": "math"}


def fold_of(source: str) -> str:
    return FOLD_OF.get(source, source)


@dataclass
class Data:
    rows: list[Row]
    feats: list[Features]
    emb: np.ndarray
    fallback: np.ndarray
    length: np.ndarray
    source: np.ndarray
    target: np.ndarray


def load() -> Data:
    rows = all_rows(SHARED)
    feats = [from_text(r.prompt) for r in rows]
    ids = np.array([r.id for r in rows])
    if CACHE.exists():
        with np.load(CACHE, allow_pickle=False) as z:
            if len(z["ids"]) == len(ids) and (z["ids"] == ids).all():
                emb = z["emb"].astype(np.float32)
            else:
                emb = None
    else:
        emb = None
    if emb is None:
        emb = default_embedder().embed_many([r.prompt for r in rows]).astype(np.float32)
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(CACHE, ids=ids, emb=emb.astype(np.float16))
    return Data(
        rows,
        feats,
        emb,
        np.array([fallback_score(f) for f in feats]),
        np.array([float(len(r.prompt)) for r in rows]),
        np.array([r.source for r in rows]),
        np.array([r.target for r in rows]),
    )


def apgr(rows: list[Row], score: np.ndarray, weak: str, strong: str) -> float | None:
    idx = [i for i, r in enumerate(rows) if weak in r.correct and strong in r.correct]
    if len(idx) < 20:
        return None
    w = np.array([rows[i].correct[weak] for i in idx], dtype=float)
    s = np.array([rows[i].correct[strong] for i in idx], dtype=float)
    if s.mean() - w.mean() < 0.02:
        return None
    return curve(w, s, score[idx]).apgr


def ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    return np.asarray((np.bincount(inv, weights=r) / counts)[inv])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
