"""Task signals, the length fallback with its explicit signals, and the pair model.

*Task signals* describe the newest user turn only (``policies.features``): its length and
its code, math, reasoning, multi-step and constraint markers, plus what the request asks
for (tools, JSON mode, a long context). Harness text (system prompt, tool schemas, the
earlier turns) contributes nothing but the long-context flag.

*The fallback* is the score the generic router ships: the log length of the newest user
turn. No weight in it is learned. The explicit signals (asked to reason, tools, code, long
context) do not move the score; the ``auto`` policy reads them (``explicit_signals``).

*The pair model* is what ``router train --data`` learns from a team's labelled rows:
``score = a * fallback + c * knn + t[topic] + w . [signals, embedding] + b``, where ``knn``
is the mean label of the nearest labelled exemplars (cosine over the embedding), ``topic``
the public data's category a linear classifier shipped in ``topics.npz`` assigns (over the
embedding and the hashed word n-grams; ``t`` a per-topic prior of the pair's gain, shrunk
like a mean with a few pseudo-rows), ``a`` and ``c`` are
fitted freely and ``w`` with a ridge penalty chosen by cross-validation on the labelled
rows. A candidate that keeps only the fallback is always in the running, so a few noisy
labels fall back to it instead of below it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from policies.features import DENSE_NAMES, Features, hash_ngrams
from policies.router.families import shipped_families
from policies.router.npz import meta_dict, read_arrays, require

# Dense feature columns that describe the task (the newest user turn and the request).
TASK_NAMES = (
    "log_last_chars",
    "code",
    "math",
    "reasoning",
    "multi_step",
    "constraints",
    "questions",
    "numbers",
    "digit_share",
    "tools",
    "json_mode",
)
_TASK_IDX = tuple(DENSE_NAMES.index(n) for n in TASK_NAMES)
EMB_GAIN = 16.0  # unit vectors of 256 components: about unit-scale columns after this
# Lexical columns of the pair model: the task's hashed word unigrams and bigrams folded into
# LEX_DIM signed buckets, a unit vector, weighted twice the embedding (both chosen on the
# development pairs, docs/routing.md).
LEX_DIM = 4096
LEX_GAIN = 2 * EMB_GAIN
# Only the task's last LEX_CHARS characters are hashed: half the cost of the 2,000 the
# embedding reads, the same APGR on the development pairs.
LEX_CHARS = 1000
MAX_PAIR_ROWS = 4000  # rows beyond this are subsampled: the lexical fit is n x n
LONG_CONTEXT_CHARS = 64_000  # about 16k tokens of conversation
SIGNAL_NAMES = (*TASK_NAMES, "long_context")


def signals(f: Features) -> np.ndarray:
    d = f.dense
    v = [d[i] for i in _TASK_IDX]
    v.append(1.0 if f.total_chars >= LONG_CONTEXT_CHARS else 0.0)
    return np.asarray(v, dtype=np.float64)


def fallback_score(f: Features) -> float:
    """log(1 + chars of the newest user turn): the generic router's whole score.

    A learned generic score did not beat it on every held-out public source
    (``bench/router/floor.py``), and adding the explicit signals to it lowered it on
    MATH and GSM8K; so the explicit signals act on the mode instead (``explicit_signals``).
    """
    return math.log1p(f.last_user_chars)


def explicit_signals(f: Features) -> tuple[str, ...]:
    """The explicit signals a request carries: asked to reason, tools, code, long context."""
    d = f.dense
    out = []
    if d[DENSE_NAMES.index("reasoning")] > 0:
        out.append("asked-to-reason")
    if d[DENSE_NAMES.index("tools")] > 0:
        out.append("tools")
    if d[DENSE_NAMES.index("code")] > 0:
        out.append("code")
    if f.total_chars >= LONG_CONTEXT_CHARS:
        out.append("long-context")
    return tuple(out)


# The fallback mapped to [0, 1] for the policy's thresholds: 0.5 at about 400 characters.
FALLBACK_CENTER = math.log1p(400)
FALLBACK_SCALE = 1.5


def squash(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))


def fallback_probability(f: Features) -> float:
    return squash((fallback_score(f) - FALLBACK_CENTER) / FALLBACK_SCALE)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def knn_mean(query: np.ndarray, exemplars: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean label of the ``k`` most similar exemplars (dot product of unit vectors), less
    the mean label of all exemplars."""
    sims = query @ exemplars.T
    k = max(1, min(k, exemplars.shape[0]))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.asarray(labels[top].mean(axis=1) - labels.mean(), dtype=np.float64)


def lexical(feats: Sequence[Features]) -> np.ndarray:
    """One unit row per task: the hashed n-grams of its last LEX_CHARS characters (of
    ``Features.hashed`` for rows exported without their text) in LEX_DIM buckets, signed
    by the next bit."""
    out = np.zeros((len(feats), LEX_DIM), dtype=np.float32)
    for i, f in enumerate(feats):
        out[i] = _lexical_counts(f)
    norm = np.sqrt(np.einsum("ij,ij->i", out, out))
    norm[norm == 0] = 1.0
    return np.asarray(out / norm[:, None], dtype=np.float32)


def _lexical_counts(f: Features) -> np.ndarray:
    """``lexical``'s row before its normalisation: signed bucket counts."""
    h = np.asarray(hash_ngrams(f.task[-LEX_CHARS:]) if f.task else f.hashed, dtype=np.int64)
    if not h.size:
        return np.zeros(LEX_DIM)
    sign = 1.0 - 2.0 * ((h // LEX_DIM) % 2)
    return np.bincount(h % LEX_DIM, weights=sign, minlength=LEX_DIM)


TOPICS = "topics.npz"
TOPIC_PSEUDO_ROWS = 5.0  # a topic's prior is its mean label shrunk with this many zero rows


@lru_cache(maxsize=1)
def shipped_topics() -> np.ndarray:
    """The topic assigner of the public data's categories, shipped as float16: a linear
    classifier (topics x [DIM embedding, LEX_DIM lexical, 1]) when the file has one, else
    unit centroids (topics x DIM)."""
    data = resources.files("policies.router").joinpath(TOPICS).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        key = "classifier" if "classifier" in z else "centroids"
        return np.asarray(z[key], dtype=np.float32)


def classifies(topics: np.ndarray, emb_width: int) -> bool:
    """Whether a topic assigner is a classifier over [embedding, lexical, 1] (or centroids)."""
    return bool(topics.shape[1] == emb_width + LEX_DIM + 1)


def topic_onehot(emb: np.ndarray, topics: np.ndarray, lex: np.ndarray | None = None) -> np.ndarray:
    """One row per embedding: 1 in the column of its topic, the nearest centroid or the
    classifier's top class (which also reads ``lex``, the rows of ``lexical``)."""
    e = np.atleast_2d(np.asarray(emb, dtype=np.float32))
    out = np.zeros((e.shape[0], topics.shape[0]))
    if not topics.shape[0]:
        return out
    if classifies(topics, e.shape[1]):
        if lex is None:
            raise ValueError("a topic classifier needs the lexical rows")
        z = e @ topics[:, : e.shape[1]].T + np.atleast_2d(lex) @ topics[:, e.shape[1] : -1].T
        z += topics[:, -1]
    else:
        z = e @ topics.T
    out[np.arange(e.shape[0]), np.argmax(z, axis=1)] = 1.0
    return out


_PAIR_ARRAYS = ("mean", "scale", "coef", "scalars", "centroids", "exemplars", "labels", "meta")


def _check_shapes(z: dict[str, np.ndarray]) -> None:
    """``ValueError`` unless a pair model's arrays fit together (as ``to_bytes`` writes them)."""
    base = (1 + len(SIGNAL_NAMES),)
    cents, ex = z["centroids"], z["exemplars"]
    if z["scalars"].shape != (4,):
        raise ValueError("'scalars' must hold 4 numbers (bias, k, center, spread)")
    if z["mean"].shape != base or z["scale"].shape != base:
        raise ValueError(f"'mean' and 'scale' must hold {base[0]} numbers")
    if (
        cents.ndim != 2
        or ex.ndim != 2
        or cents.shape[1] not in (ex.shape[1], ex.shape[1] + LEX_DIM + 1)
    ):
        raise ValueError(
            "'centroids' must be a matrix as wide as 'exemplars' (or that plus "
            f"{LEX_DIM + 1} for a topic classifier)"
        )
    if z["labels"].shape != ex.shape[:1]:
        raise ValueError("'labels' must hold one number per exemplar")
    width = 2 + cents.shape[0] + len(SIGNAL_NAMES) + ex.shape[1]
    if z["coef"].shape not in ((width,), (width + LEX_DIM,)):
        raise ValueError(f"'coef' must hold {width} or {width + LEX_DIM} numbers")


@dataclass
class PairModel:
    """Linear over [fallback, knn, topic one-hot, signals, embedding]; see the module doc."""

    mean: np.ndarray  # standardisation of [fallback, signals] (1 + len(SIGNAL_NAMES))
    scale: np.ndarray
    coef: np.ndarray  # [a, c, t_topics..., w_signals..., w_embedding...]
    bias: float
    centroids: np.ndarray  # the topic assigner: topics x DIM centroids, or a classifier
    exemplars: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    k: int = 0
    center: float = 0.0  # score -> probability: squash((score - center) / spread)
    spread: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    _row: _RowWeights | None = field(default=None, init=False, repr=False, compare=False)

    def raw(self, f: Features, emb: np.ndarray) -> float:
        """``scores_of`` for one row, with the coefficients split once (``_RowWeights``):
        the request path pays for no batch bookkeeping."""
        w = self._row
        if w is None or w.coef is not self.coef:
            w = self._row = _RowWeights.of(self)
        d = f.dense
        v = [math.log1p(f.last_user_chars), *(d[i] for i in _TASK_IDX)]
        v.append(1.0 if f.total_chars >= LONG_CONTEXT_CHARS else 0.0)
        out = w.bias + float(np.asarray(v) @ w.linear)
        e = np.asarray(emb, dtype=np.float32).reshape(-1)
        # the lexical row, as its non-zero buckets (a few hundred of LEX_DIM)
        nz, lex = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if w.lex is not None or (w.topic is not None and w.classifier):
            counts = _lexical_counts(f)
            nz = np.flatnonzero(counts)
            norm = math.sqrt(float(counts[nz] @ counts[nz])) or 1.0
            # lexical() rounds the unit row to float32 before the product
            lex = (counts[nz] / norm).astype(np.float32)
        if w.topic is not None:
            if w.classifier:
                c = self.centroids
                z = c[:, : e.size] @ e + c[:, e.size + nz] @ lex + c[:, -1]
                topic = int(np.argmax(z))
            else:
                topic = int(np.argmax(self.centroids @ e))
            out += float(w.topic[topic])
        if w.emb is not None:
            out += float(e.astype(np.float64) @ w.emb)
        if w.lex is not None:
            out += float(lex.astype(np.float64) @ w.lex[nz])
        if w.knn:
            out += w.knn * float(knn_mean(e[None, :], self.exemplars, self.labels, self.k)[0])
        return out

    def predict(self, f: Features, emb: np.ndarray) -> float:
        return squash((self.raw(f, emb) - self.center) / self.spread)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = np.array([f"{k}={v}" for k, v in self.meta.items()])
        np.savez_compressed(
            buf,
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            scalars=np.array([self.bias, self.k, self.center, self.spread]),
            centroids=self.centroids.astype(np.float16),
            exemplars=self.exemplars.astype(np.float16),
            labels=self.labels.astype(np.float32),
            meta=meta,
        )
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> PairModel:
        z = read_arrays(data)
        if "coef" not in z:
            raise ValueError("not a pair model (no 'coef' array)")
        require(z, *_PAIR_ARRAYS)
        _check_shapes(z)
        bias, k, center, spread = (float(x) for x in z["scalars"])
        return PairModel(
            z["mean"],
            z["scale"],
            z["coef"],
            bias,
            z["centroids"].astype(np.float32),
            z["exemplars"].astype(np.float32),
            z["labels"].astype(np.float64),
            int(k),
            center,
            spread,
            meta_dict(z["meta"]),
        )


@dataclass(frozen=True)
class _RowWeights:
    """A pair model's coefficients arranged for one row: the standardisation folded into
    the linear weights of [fallback, signals], None for parts whose weights are all 0."""

    coef: np.ndarray  # the coefficients these were derived from
    bias: float
    linear: np.ndarray
    topic: np.ndarray | None
    emb: np.ndarray | None
    lex: np.ndarray | None
    knn: float
    classifier: bool  # the topic assigner is a classifier (it reads the lexical row)

    @staticmethod
    def of(m: PairModel) -> _RowWeights:
        c, t = m.coef, m.centroids.shape[0]
        emb_width = m.exemplars.shape[1]
        lin = np.concatenate([c[:1], c[2 + t : 2 + t + len(SIGNAL_NAMES)]]) / m.scale
        o = 2 + t + len(SIGNAL_NAMES)
        width = len(c) - o  # the embedding's, then LEX_DIM lexical weights if any
        width -= LEX_DIM if width >= LEX_DIM else 0
        w_emb = c[o : o + width] * EMB_GAIN
        w_lex = c[o + width :]
        return _RowWeights(
            c,
            m.bias - float(m.mean @ lin),
            lin,
            c[2 : 2 + t] if t and np.any(c[2 : 2 + t]) else None,
            w_emb if np.any(w_emb) else None,
            w_lex if w_lex.size and np.any(w_lex) else None,
            float(c[1]) if m.k and m.labels.size else 0.0,
            classifies(m.centroids, emb_width),
        )


# Ridge penalties tried by cross-validation (per row, on standardised columns).
LAMBDAS: tuple[float, ...] = (100.0, 30.0, 10.0, 3.0, 1.0)
CV_FOLDS = 5
MIN_CV_ROWS = 2 * CV_FOLDS  # fewer labelled rows keep the fallback (no cross-validation)
USES = ("prior", "topic", "topic+knn", "family", "full")
# Blend weights tried: the fallback plus this many standard deviations of a candidate's
# score (inf: the candidate alone, whose own length coefficient is free).
ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, math.inf)
# A candidate must lead the fallback by this many standard errors (fold-paired) to ship.
MARGIN_SE = 2.0
# The choice procedure, cross-validated itself, must lead the fallback by this many standard
# errors (None: no nested check).
NESTED_SE: float | None = None


def pair_label(weak_right: bool, strong_right: bool) -> float:
    """+1 when only the strong side is right, -1 when only the weak one is, else 0."""
    return float(strong_right) - float(weak_right)


def _design(
    zb: np.ndarray, knn: np.ndarray, topics: np.ndarray, use: str
) -> tuple[np.ndarray, np.ndarray]:
    """The columns of the topic candidates, in PairModel's order, and each one's penalty
    (the full candidate is fitted in dual form: ``_full_fit``)."""
    cols, pen = [zb[:, :1]], [0.0]
    if use == "topic+knn":
        cols.append(knn[:, None])
        pen.append(0.0)
    if use != "prior":
        cols.append(topics)
        pen += [TOPIC_PSEUDO_ROWS] * topics.shape[1]
    return np.hstack(cols), np.asarray(pen)


def _ridge(x: np.ndarray, y: np.ndarray, pen: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares with an intercept and a penalty per column (a tiny one when 0)."""
    xm, ym = x.mean(axis=0), y.mean()
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + np.diag(np.maximum(pen, 1e-6 * len(y))), xc.T @ yc)
    return w, float(ym - xm @ w)


def gain_apgr(score: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """APGR of ``score`` on rows whose label is ``strong right - weak right``.

    Routing the top share to the strong side gains the sum of their labels; PGR is that
    over the total gain, APGR its trapezoid area on 11 shares (``metrics.curve``). Rows of
    no total gain give 0.5 (the random router's value).
    """
    total = float(y.sum())
    if total <= 0 or len(y) == 0:
        return 0.5
    order = np.lexsort((np.random.default_rng(seed).random(len(y)), -score))
    cum = np.concatenate(([0.0], np.cumsum(y[order])))
    ks = np.rint(np.linspace(0.0, 1.0, 11) * len(y)).astype(int)
    pgr = cum[ks] / total
    return float(np.sum((pgr[1:] + pgr[:-1]) / 2) / 10)


def excess_gain(score: np.ndarray, y: np.ndarray) -> float:
    """Gain over a random router per row, averaged over the 11 strong-call shares: APGR's
    numerator without its division by the total gain, which is unstable on a small fold."""
    n = len(y)
    if n == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum(y[order])))
    shares = np.linspace(0.0, 1.0, 11)
    ks = np.rint(shares * n).astype(int)
    ex = (cum[ks] - shares * float(y.sum())) / n
    return float(np.sum((ex[1:] + ex[:-1]) / 2) / 10)


def _knn_from(
    sims: np.ndarray, y: np.ndarray, rows: np.ndarray, pool: np.ndarray, k: int
) -> np.ndarray:
    """Mean label of the ``k`` nearest rows of ``pool`` for each of ``rows``, less the pool's
    mean label (so that a pool's own mean, which differs from fold to fold, carries no
    signal)."""
    sub = sims[np.ix_(rows, pool)]
    kk = max(1, min(k, len(pool)))
    top = np.argpartition(-sub, kk - 1, axis=1)[:, :kk]
    return np.asarray(y[pool][top].mean(axis=1) - y[pool].mean(), dtype=np.float64)


def _cross_fitted_knn(
    sims: np.ndarray, y: np.ndarray, rows: np.ndarray, fold: np.ndarray, k: int
) -> np.ndarray:
    """kNN means of ``rows``, each from the rows (among ``rows``) outside its own fold.

    Never a leave-one-out mean: that is biased against the row's own label and lets a
    model read the label back."""
    out = np.zeros(len(rows))
    for j in np.unique(fold[rows]):
        mine = fold[rows] == j
        out[mine] = _knn_from(sims, y, rows[mine], rows[~mine], k)
    return out


@dataclass(frozen=True)
class _Inputs:
    zb: np.ndarray
    topics: np.ndarray
    sims: np.ndarray
    y: np.ndarray
    folds: tuple[np.ndarray, ...]  # one fold assignment per repeat of the cross-validation
    k: int
    rest: np.ndarray  # the full candidate's ridge columns: signals, embedding, lexical
    k_rest: np.ndarray  # rest @ rest.T
    k_topic: np.ndarray  # topics @ topics.T
    # one-hot family of each row, and topics x families (no columns: no family candidate)
    families: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    family_of: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


Folds = list[tuple[np.ndarray, np.ndarray]]  # held-out rows, their scores


def _fold_scores(d: _Inputs, use: str, lam: float) -> Folds:
    """For every fold of every repeat: its held-out rows and their candidate scores under a
    model fitted on the other folds, standardised by that model's scores on its own rows
    (so that a blend weight means the same in every fold and in the final model)."""
    return [r for fold in d.folds for r in _fold_scores_on(d, fold, use, lam)]


def _fold_scores_on(d: _Inputs, fold: np.ndarray, use: str, lam: float) -> Folds:
    """``_fold_scores`` for one fold assignment; rows of fold -1 take no part."""
    out = []
    for j in np.unique(fold[fold >= 0]):
        tr = np.flatnonzero((fold >= 0) & (fold != j))
        te = np.flatnonzero(fold == j)
        if use == "prior":
            out.append((te, d.zb[te, 0]))
            continue
        knn = np.zeros(len(d.y))
        if use in ("topic+knn", "full"):
            knn[tr] = _cross_fitted_knn(d.sims, d.y, tr, fold, d.k)
            knn[te] = _knn_from(d.sims, d.y, te, tr, d.k)
        if use == "full":
            alpha, b = _full_fit(d, tr, knn, lam)
            fit = _full_scores(d, tr, tr, knn, lam, alpha, b)
            pred = _full_scores(d, te, tr, knn, lam, alpha, b)
        else:
            x, pen = _design(d.zb, knn, d.families if use == "family" else d.topics, use)
            w, _ = _ridge(x[tr], d.y[tr], pen)
            fit, pred = x[tr] @ w, x[te] @ w
        out.append((te, (pred - fit.mean()) / (fit.std() or 1.0)))
    return out


def _full_fixed(d: _Inputs, rows: np.ndarray, knn: np.ndarray) -> np.ndarray:
    """The full candidate's unpenalised columns: intercept, length, kNN."""
    return np.column_stack([np.ones(len(rows)), d.zb[rows, 0], knn[rows]])


def _full_kernel(d: _Inputs, rows: np.ndarray, cols: np.ndarray, lam: float) -> np.ndarray:
    """Kernel of the penalised columns: topics (TOPIC_PSEUDO_ROWS) and the rest (lam * n)."""
    ix = np.ix_(rows, cols)
    return np.asarray(d.k_topic[ix] / TOPIC_PSEUDO_ROWS + d.k_rest[ix] / (lam * len(d.y)))


def _full_fit(
    d: _Inputs, tr: np.ndarray, knn: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """The full candidate on rows ``tr`` in dual form (its lexical columns outnumber the
    rows): the same minimiser as the column-wise ridge, with the intercept, length and kNN
    unpenalised. Returns the dual weights and the unpenalised coefficients."""
    a = _full_fixed(d, tr, knn)
    m = _full_kernel(d, tr, tr, lam) + np.eye(len(tr))
    sol = np.linalg.solve(m, np.column_stack([a, d.y[tr]]))
    mi_a, mi_y = sol[:, :-1], sol[:, -1]
    b = np.linalg.solve(a.T @ mi_a + 1e-9 * np.eye(a.shape[1]), a.T @ mi_y)
    return mi_y - mi_a @ b, b


def _full_scores(
    d: _Inputs,
    rows: np.ndarray,
    tr: np.ndarray,
    knn: np.ndarray,
    lam: float,
    alpha: np.ndarray,
    b: np.ndarray,
) -> np.ndarray:
    return np.asarray(_full_fixed(d, rows, knn) @ b + _full_kernel(d, rows, tr, lam) @ alpha)


def _gains(d: _Inputs, prior: Folds, cand: Folds, alpha: float) -> np.ndarray:
    """``excess_gain`` per fold of the fallback plus ``alpha`` times a candidate's score
    (the candidate alone when ``alpha`` is infinite)."""
    return np.asarray(
        [
            excess_gain(p if alpha == 0 else c if math.isinf(alpha) else p + alpha * c, d.y[te])
            for (te, p), (_, c) in zip(prior, cand, strict=True)
        ]
    )


Choice = tuple[str, float, float]  # candidate, its L2, blend weight
PRIOR: Choice = ("prior", 0.0, 0.0)


def _leads(
    d: _Inputs,
    folds: Sequence[np.ndarray],
    lambdas: Sequence[float],
    alphas: Sequence[float],
) -> tuple[np.ndarray, dict[Choice, np.ndarray]]:
    """The fallback's ``excess_gain`` per held-out fold, and every candidate and blend's
    lead over it on the same folds."""
    prior = [r for f in folds for r in _fold_scores_on(d, f, "prior", 0.0)]
    base = _gains(d, prior, prior, 0.0)
    leads: dict[Choice, np.ndarray] = {}
    for u in USES[1:]:
        if u == "family" and not d.families.shape[1]:
            continue
        for lm in lambdas if u == "full" else (0.0,):
            cand = [r for f in folds for r in _fold_scores_on(d, f, u, lm)]
            for a in alphas:
                leads[(u, lm, a)] = _gains(d, prior, cand, a) - base
    return base, leads


def _best(leads: dict[Choice, np.ndarray], margin: float) -> Choice:
    """The choice whose mean lead, less ``margin`` standard errors, is largest and above 0
    (repeats share their rows, so the standard error counts one repeat's folds)."""
    pick, best = PRIOR, 0.0
    for c, diff in leads.items():
        lead = float(diff.mean() - margin * diff.std(ddof=1) / math.sqrt(CV_FOLDS))
        if lead > best:
            pick, best = c, lead
    return pick


def _choose(
    d: _Inputs,
    lambdas: Sequence[float],
    alphas: Sequence[float],
    margin: float,
    nested_se: float | None = None,
    seed: int = 0,
) -> tuple[Choice, dict[str, float]]:
    """The candidate and blend weight whose fold-paired lead over the fallback, less
    ``margin`` standard errors, is largest; the fallback when none leads.

    Choosing the best of some thirty choices on the same folds that score them flatters the
    winner. With ``nested_se`` set, the whole procedure is cross-validated as well: on each
    outer fold it chooses from the other four (their own 5-fold split) and that choice is
    scored on the fold it did not see. The choice ships only when the procedure's own lead
    over the fallback exceeds ``nested_se`` standard errors.
    """
    if len(d.y) < MIN_CV_ROWS:
        prior = _fold_scores(d, "prior", 0.0)
        return PRIOR, {"prior": float(_gains(d, prior, prior, 0.0).mean())}
    base, leads = _leads(d, d.folds, lambdas, alphas)
    cv = {"prior": float(base.mean())}
    cv.update({_name(*c): float(base.mean() + v.mean()) for c, v in leads.items()})
    pick = _best(leads, margin)
    if nested_se is None or pick == PRIOR:
        return pick, cv
    outer, rng = d.folds[0], np.random.default_rng(seed + 7919)
    procedure = np.zeros(CV_FOLDS)
    for o in range(CV_FOLDS):
        inner = np.full(len(d.y), -1)
        seen = np.flatnonzero(outer != o)
        inner[seen] = rng.permutation(len(seen)) % CV_FOLDS
        chosen = _best(_leads(d, (inner,), lambdas, alphas)[1], margin)
        procedure[o] = 0.0 if chosen == PRIOR else leads[chosen][o]
    cv["nested"] = float(base[:CV_FOLDS].mean() + procedure.mean())
    se = procedure.std(ddof=1) / math.sqrt(CV_FOLDS)
    return (pick if procedure.mean() > nested_se * se else PRIOR), cv


def _name(use: str, lam: float, alpha: float) -> str:
    name = use + (f"(l2={lam:g})" if use == "full" else "")
    return name if math.isinf(alpha) or use == "prior" else f"prior+{alpha:g}*{name}"


def fit_pair(
    feats: Sequence[Features],
    emb: np.ndarray,
    y: Sequence[float],
    *,
    centroids: np.ndarray | None = None,
    topic_rows: np.ndarray | None = None,
    lambdas: Sequence[float] = LAMBDAS,
    seed: int = 0,
    repeats: int = 1,
    k: int | None = None,
    alphas: Sequence[float] = ALPHAS,
    margin: float = MARGIN_SE,
    nested_se: float | None = NESTED_SE,
    families: bool = True,
) -> PairModel:
    """Learn one pair from labelled rows (``y`` from ``pair_label``), prior = the fallback.

    Candidates: the fallback alone; plus a per-topic prior; plus a nearest-neighbour term
    (k = n/8, 5 to 200); plus a per-family prior (``families``: policies/router/families.py);
    plus ridge on the signals and the embedding. Each is scored by
    5-fold cross-validation on the labelled rows (``excess_gain``), alone and blended into
    the fallback; a learned choice replaces the fallback only when its lead over it, paired
    by fold, exceeds ``margin`` standard errors and the choosing procedure, cross-validated
    itself, still leads (``nested_se``), so that a few noisy labels keep the fallback.
    Nearest-neighbour terms are cross-fitted, never leave-one-out. ``topic_rows`` (one-hot,
    one row per labelled row) replaces the topics ``centroids`` would assign: the benchmarks
    pass the topics of a classifier that never saw the rows.
    """
    yv = np.asarray(y, dtype=np.float64)
    e = np.asarray(emb, dtype=np.float32).reshape(len(yv), -1)
    if len(yv) > MAX_PAIR_ROWS:
        keep = np.sort(np.random.default_rng(seed).permutation(len(yv))[:MAX_PAIR_ROWS])
        feats, e, yv = [feats[i] for i in keep], e[keep], yv[keep]
        topic_rows = None if topic_rows is None else topic_rows[keep]
    n = len(yv)
    cents = shipped_topics() if centroids is None else np.asarray(centroids, np.float32)
    base = np.array([[fallback_score(f), *signals(f)] for f in feats], dtype=np.float64)
    base = base.reshape(n, 1 + len(SIGNAL_NAMES))
    mean = base.mean(axis=0) if n else np.zeros(base.shape[1])
    scale = base.std(axis=0) if n else np.ones(base.shape[1])
    scale[scale < 1e-9] = 1.0
    zb = (base - mean) / scale
    lex = lexical(feats)
    if topic_rows is not None:
        topics = np.asarray(topic_rows, dtype=np.float64).reshape(n, cents.shape[0])
    else:
        topics = topic_onehot(e, cents, lex) if n else np.zeros((0, cents.shape[0]))
    rest = np.hstack([zb[:, 1:], e.astype(np.float64) * EMB_GAIN, lex * LEX_GAIN]).astype(
        np.float32
    )
    # Families are those of the shipped topics: none for a caller's own topic set.
    fam = shipped_families() if cents.shape[0] == shipped_families().shape[0] else None
    fam = np.zeros((cents.shape[0], 0)) if fam is None or not families else fam
    d = _Inputs(
        zb,
        topics,
        e @ e.T,
        yv,
        tuple(np.random.default_rng(seed + r).permutation(n) % CV_FOLDS for r in range(repeats)),
        k or int(max(5, min(200, n // 8))),
        rest,
        (rest @ rest.T).astype(np.float64),
        topics @ topics.T,
        topics @ fam,
        fam,
    )
    (use, lam, alpha), cv = (
        _choose(d, lambdas, alphas, margin, nested_se, seed) if n else (PRIOR, {})
    )
    width = 2 + cents.shape[0] + len(SIGNAL_NAMES) + e.shape[1]
    coef = np.zeros(width + (LEX_DIM if use == "full" else 0))
    bias = 0.0
    exemplars, labels, k = np.zeros((0, e.shape[1]), np.float32), np.zeros(0), 0
    if use == "prior":
        coef[0] = 1.0
    else:
        knn = np.zeros(n)
        if use != "topic":
            knn = _cross_fitted_knn(d.sims, yv, np.arange(n), d.folds[0], d.k)
            exemplars, labels, k = e, yv, d.k
        # every candidate as weights over the same columns, in PairModel's order
        x = np.hstack([zb[:, :1], knn[:, None], topics, rest.astype(np.float64)])
        w, bias = _final_weights(d, x, knn, use, lam)
        if not math.isinf(alpha):
            # the fallback plus alpha standard deviations of the candidate: still linear
            fit = x @ w
            gain = alpha / (float(fit.std()) or 1.0)
            w, bias = w * gain, -gain * float(fit.mean())
            w[0] += 1.0
        coef[:] = w[: len(coef)]
        coef[width:] *= LEX_GAIN  # the lexical columns were scaled by LEX_GAIN when fitted
    model = PairModel(mean, scale, coef, bias, cents, exemplars, labels, k)
    if use == "prior":
        # The generic router exactly, probabilities included: raw is the standardised
        # fallback, so undo the standardisation (the rows' spread of lengths may be tiny,
        # and every longer prompt would then look certain to need the strong side).
        model.center = (FALLBACK_CENTER - float(mean[0])) / float(scale[0])
        model.spread = FALLBACK_SCALE / float(scale[0])
    else:
        raws = scores_of(model, feats, e)
        model.center = float(np.median(raws))
        model.spread = float(raws.std()) or 1.0
    model.meta = {
        "kind": "pair",
        "rows": n,
        "chosen": _name(use, lam, alpha),
        "cv_excess_gain": ";".join(f"{name}:{v:.4f}" for name, v in cv.items()),
    }
    return model


def _final_weights(
    d: _Inputs, x: np.ndarray, knn: np.ndarray, use: str, lam: float
) -> tuple[np.ndarray, float]:
    """One candidate fitted on all rows, as weights over ``x``'s columns (length, kNN,
    topics, then the ridge columns) and a bias."""
    n, t = len(d.y), d.topics.shape[1]
    w = np.zeros(x.shape[1])
    if use == "full":
        dual, b = _full_fit(d, np.arange(n), knn, lam)
        w[:2] = b[1:]
        w[2 : 2 + t] = d.topics.T @ dual / TOPIC_PSEUDO_ROWS
        w[2 + t :] = d.rest.T.astype(np.float64) @ dual / (lam * n)
        return w, float(b[0])
    if use == "family":  # a family's weight on each of its topics: the same linear model
        xs, pen = _design(d.zb, knn, d.families, use)
        ws, bias = _ridge(xs, d.y, pen)
        w[0], w[2 : 2 + t] = ws[0], d.family_of @ ws[1:]
        return w, bias
    xs, pen = _design(d.zb, knn, d.topics, use)
    ws, bias = _ridge(xs, d.y, pen)
    w[[0, *([1] if use == "topic+knn" else []), *range(2, 2 + t)]] = ws
    return w, bias


def scores_of(
    model: PairModel,
    feats: Sequence[Features],
    emb: np.ndarray,
    topic_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Raw pair scores for many rows at once (``topic_rows``: as in ``fit_pair``)."""
    t = model.centroids.shape[0]
    base = np.array([[fallback_score(f), *signals(f)] for f in feats], dtype=np.float64)
    z = (base.reshape(len(feats), -1) - model.mean) / model.scale
    e = np.asarray(emb, dtype=np.float32).reshape(len(feats), -1)
    c = model.coef
    out = model.bias + c[0] * z[:, 0]
    if t and np.any(c[2 : 2 + t]):
        if topic_rows is None:
            lex = lexical(feats) if classifies(model.centroids, e.shape[1]) else None
            topic_rows = topic_onehot(e, model.centroids, lex)
        out = out + topic_rows @ c[2 : 2 + t]
    sig = c[2 + t : 2 + t + len(SIGNAL_NAMES)]
    out = out + z[:, 1:] @ sig
    o = 2 + t + len(SIGNAL_NAMES)
    w_emb = c[o : o + e.shape[1]]
    if np.any(w_emb):
        out = out + (e.astype(np.float64) @ w_emb) * EMB_GAIN
    w_lex = c[o + e.shape[1] :]
    if w_lex.size and np.any(w_lex):
        out = out + lexical(feats).astype(np.float64) @ w_lex
    if c[1] != 0.0 and model.k and model.labels.size:
        out = out + c[1] * knn_mean(e, model.exemplars, model.labels, model.k)
    return np.asarray(out, dtype=np.float64)
