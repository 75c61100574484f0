"""Task-focused features, the fallback rule, the embedding and the pair trainer."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from policies.features import extract_features, from_text
from policies.options import NON_THINKING, Mode
from policies.router import Router, scorer
from policies.router.embed import DIM, EmbeddingUnavailable, StaticEmbedder, read_safetensor
from policies.router.families import FAMILIES, family_of, shipped_families, topic_names
from policies.router.metrics import curve
from policies.router.policy import apply_signals
from policies.router.scorer import (
    LEX_DIM,
    LONG_CONTEXT_CHARS,
    SIGNAL_NAMES,
    TOPIC_PSEUDO_ROWS,
    PairModel,
    _full_fit,
    _full_scores,
    _Inputs,
    _ridge,
    explicit_signals,
    fallback_probability,
    fallback_score,
    fit_pair,
    gain_apgr,
    lexical,
    pair_label,
    scores_of,
    shipped_topics,
    topic_onehot,
)
from policies.routing import AutoChoice

TASK = "Prove that the square root of 2 is irrational."
HARNESS = "You are a coding agent. Follow the repository rules below. " * 20
REMINDER = "<system-reminder>Todo list is empty. Do not mention this.</system-reminder>"
TOOL_RESULT = [{"type": "tool_result", "tool_use_id": "t1", "content": "exit 0"}]


@pytest.mark.parametrize(
    ("messages", "task"),
    [
        ([{"role": "user", "content": TASK}], TASK),
        # a long system prompt and tool schemas are not the task
        ([{"role": "system", "content": HARNESS}, {"role": "user", "content": TASK}], TASK),
        # an agent loop's tool results are not a new task turn
        (
            [
                {"role": "user", "content": TASK},
                {"role": "assistant", "content": "Running it."},
                {"role": "user", "content": TOOL_RESULT},
            ],
            TASK,
        ),
        # harness reminders are dropped
        ([{"role": "user", "content": [{"type": "text", "text": REMINDER + TASK}]}], TASK),
        # a harness that resends its instructions: only what the turn adds
        (
            [
                {"role": "user", "content": HARNESS + "List the files."},
                {"role": "assistant", "content": "a.py b.py"},
                {"role": "user", "content": HARNESS + TASK},
            ],
            TASK,
        ),
        # a short shared start is not a repeated harness
        (
            [
                {"role": "user", "content": "Please list the files."},
                {"role": "user", "content": "Please " + TASK},
            ],
            "Please " + TASK,
        ),
    ],
)
def test_the_task_is_the_newest_user_turn_and_what_it_adds(
    messages: list[dict[str, object]], task: str
) -> None:
    f = extract_features(messages)
    assert f.task == task
    assert fallback_score(f) == pytest.approx(fallback_score(from_text(task)))


@pytest.mark.parametrize(
    ("text", "kw", "signals"),
    [
        ("What is 2 + 2?", {}, ()),
        ("Explain why the sky is blue, step by step.", {}, ("asked-to-reason",)),
        ("Fix this:\n```\ndef f(x): return x\n```", {}, ("code",)),
        ("Summarise the file.", {"tools": True}, ("tools",)),
        ("Summarise the file.", {"total_chars": LONG_CONTEXT_CHARS}, ("long-context",)),
    ],
)
def test_explicit_signals(text: str, kw: dict[str, object], signals: tuple[str, ...]) -> None:
    assert explicit_signals(from_text(text, **kw)) == signals  # type: ignore[arg-type]


THINK = Mode(True, "high")


@pytest.mark.parametrize(
    ("mode", "signals", "want", "reason"),
    [
        (NON_THINKING, (), NON_THINKING, "r"),
        (NON_THINKING, ("asked-to-reason",), THINK, "r;asked-to-reason"),
        (NON_THINKING, ("long-context",), THINK, "r;long-context"),
        (
            NON_THINKING,
            ("asked-to-reason", "long-context"),
            THINK,
            "r;asked-to-reason;long-context",
        ),
        # tools and code alone never lift the mode (they are on most agent requests)
        (NON_THINKING, ("tools", "code"), NON_THINKING, "r"),
        (THINK, ("asked-to-reason",), THINK, "r"),
    ],
)
def test_fallback_rule_lifts_the_mode(
    mode: Mode, signals: tuple[str, ...], want: Mode, reason: str
) -> None:
    out = apply_signals(AutoChoice("flash", mode, "r"), signals)
    assert (out.tier, out.mode, out.reason) == ("flash", want, reason)


def test_the_generic_score_ignores_harness_text() -> None:
    r = Router.load_default()
    bare = r.score([{"role": "user", "content": TASK}]).hard
    wrapped = r.score(
        [{"role": "system", "content": HARNESS * 10}, {"role": "user", "content": TASK}],
        tools=True,
    ).hard
    assert bare == wrapped


@pytest.mark.parametrize(
    ("scores", "weak", "strong"),
    [
        ([0.9, 0.1, 0.5, 0.3], [0, 1, 0, 1], [1, 1, 0, 1]),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 1, 1]),
    ],
)
def test_gain_apgr_is_routellm_apgr(
    scores: list[float], weak: list[int], strong: list[int]
) -> None:
    y = np.array(strong, float) - np.array(weak, float)
    assert gain_apgr(np.array(scores), y) == pytest.approx(curve(weak, strong, scores).apgr)


def test_embedding_loads_offline_from_the_wheel() -> None:
    e = StaticEmbedder.load()
    a, b = e.embed("What is the derivative of x squared?"), e.embed("Differentiate x^2.")
    c = e.embed("Write a haiku about autumn leaves.")
    assert a.shape == (DIM,) and float(a @ a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) > float(a @ c)
    assert not e.embed("").any()
    with pytest.raises(EmbeddingUnavailable):
        StaticEmbedder.load(Path("/nonexistent"))


def test_safetensors_reader(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float16).reshape(2, 3)
    header = json.dumps(
        {"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, data.nbytes]}}
    ).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data.tobytes())
    assert (read_safetensor(path, "w") == data).all()


WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "cloud",
    "lamp",
    "table",
    "garden",
    "window",
    "paper",
]


def _synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Two topics of random length; the strong side helps on chemistry only."""
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for _ in range(n):
        chem = rng.random() < 0.5
        filler = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 60))))
        if chem:
            texts.append(f"Balance the redox reaction and compute the moles of oxidant. {filler}")
            y.append(1.0 if rng.random() < 0.6 else 0.0)
        else:
            texts.append(f"Write a cheerful birthday message for my cousin. {filler}")
            y.append(-1.0 if rng.random() < 0.1 else 0.0)
    return texts, np.array(y)


def test_pair_trainer_beats_length_when_the_gap_depends_on_topic() -> None:
    e = StaticEmbedder.load()
    train, y = _synthetic(300, 0)
    test, yt = _synthetic(400, 1)
    ftr, fte = [from_text(t) for t in train], [from_text(t) for t in test]
    model = fit_pair(ftr, e.embed_many(train), y)
    assert model.meta["chosen"] != "prior"
    learned = gain_apgr(scores_of(model, fte, e.embed_many(test)), yt)
    length = gain_apgr(np.array([len(t) for t in test], float), yt)
    assert learned > length + 0.15 and learned > 0.8
    again = PairModel.from_bytes(model.to_bytes())
    f0 = fte[0]
    assert again.raw(f0, e.embed(test[0])) == pytest.approx(
        model.raw(f0, e.embed(test[0])), abs=1e-3
    )


@pytest.mark.parametrize(
    "parts", ["all", "no-words", "length-only", "topic-knn", "classifier", "classifier-topic"]
)
def test_one_row_scoring_equals_the_batch_scores(parts: str) -> None:
    """``PairModel.raw`` (the request path) folds the coefficients once; it must score a
    row as ``scores_of`` (training, evaluation) does, for every part a model may use."""
    rng = np.random.default_rng(3)
    texts = ["hi", "Prove that 3+4 = 7 step by step.", "x " * 3000, "Résumé ٣ $x^2$", ""]
    feats = [from_text(t) for t in texts]
    emb = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # a topic classifier over [embedding, lexical, 1], or centroids
    width = DIM + LEX_DIM + 1 if parts.startswith("classifier") else DIM
    cents = rng.normal(size=(7, width)).astype(np.float32)
    t, s = cents.shape[0], len(SIGNAL_NAMES)
    coef = rng.normal(size=2 + t + s + DIM + (0 if parts == "no-words" else LEX_DIM))
    if parts == "length-only":
        coef[1:] = 0.0
    if parts in ("topic-knn", "classifier-topic"):
        coef[2 + t :] = 0.0  # the classifier must read the words though the model does not
    model = PairModel(
        rng.normal(size=1 + s),
        rng.uniform(0.5, 2.0, size=1 + s),
        coef,
        0.3,
        cents,
        rng.normal(size=(40, DIM)).astype(np.float32),
        rng.choice([-1.0, 0.0, 1.0], size=40),
        5,
    )
    want = scores_of(model, feats, emb)
    got = [model.raw(f, e) for f, e in zip(feats, emb, strict=True)]
    assert got == pytest.approx(list(want), rel=1e-6, abs=1e-6)
    again = PairModel.from_bytes(model.to_bytes())  # float16 on disk
    assert again.centroids.shape == cents.shape
    if parts.startswith("classifier"):
        topics = topic_onehot(emb, cents, lexical(feats))
        assert len({int(i) for i in topics.argmax(axis=1)}) > 1  # not a constant topic


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize(("alpha", "like"), [(0.02, "length"), (1e6, "alone")])
def test_a_blend_is_the_fallback_plus_a_scaled_candidate(alpha: float, like: str) -> None:
    """A blend folds into the model's linear coefficients: a vanishing weight ranks like
    the fallback, a huge one like the candidate fitted alone."""
    e = StaticEmbedder.load()
    train, y = _synthetic(300, 0)
    test, _ = _synthetic(200, 1)
    ftr, fte = [from_text(t) for t in train], [from_text(t) for t in test]
    etr, ete = e.embed_many(train), e.embed_many(test)
    blend = fit_pair(ftr, etr, y, alphas=(alpha,), margin=-1e9, lambdas=(10.0,))
    assert blend.meta["chosen"].startswith(f"prior+{alpha:g}*")
    got = scores_of(blend, fte, ete)
    if like == "length":
        want = np.array([len(f.task) for f in fte], float)
    else:
        alone = fit_pair(ftr, etr, y, alphas=(math.inf,), margin=-1e9, lambdas=(10.0,))
        assert blend.meta["chosen"].endswith(alone.meta["chosen"])
        want = scores_of(alone, fte, ete)
    assert _spearman(got, want) > (0.98 if like == "length" else 0.999)


def test_a_candidate_needs_a_clear_lead_to_replace_the_fallback() -> None:
    """With the lead required raised out of reach, the fallback ships; without any
    requirement, a learned candidate wins on topic-dependent labels."""
    e = StaticEmbedder.load()
    train, y = _synthetic(300, 0)
    f, emb = [from_text(t) for t in train], e.embed_many(train)
    assert fit_pair(f, emb, y, margin=1e6).meta["chosen"] == "prior"
    assert fit_pair(f, emb, y, margin=0.0).meta["chosen"] != "prior"


def test_the_dual_fit_is_the_column_ridge() -> None:
    """The full candidate is fitted through n x n kernels (its lexical columns outnumber
    the rows); that must be the same minimiser as the ridge over the columns."""
    rng = np.random.default_rng(0)
    n, width = 60, 90
    zb = rng.normal(size=(n, 1 + len(SIGNAL_NAMES)))
    topics = np.eye(5)[rng.integers(0, 5, size=n)]
    rest = rng.normal(size=(n, width)).astype(np.float32)
    knn, y = rng.normal(size=n), rng.normal(size=n)
    d = _Inputs(zb, topics, np.eye(n), y, (), 0, rest, rest @ rest.T, topics @ topics.T)
    rows, lam = np.arange(n), 0.5
    dual, fixed = _full_fit(d, rows, knn, lam)
    got = _full_scores(d, rows, rows, knn, lam, dual, fixed)
    x = np.hstack([zb[:, :1], knn[:, None], topics, rest])
    pen = np.array([0.0, 0.0] + [TOPIC_PSEUDO_ROWS] * 5 + [lam * n] * width)
    w, b = _ridge(x, y, pen)
    assert np.allclose(got, x @ w + b, atol=1e-4)


def test_lexical_rows_are_unit_hashed_ngrams() -> None:
    f = [from_text(t) for t in ("Balance the redox reaction", "Balance the redox reaction", "")]
    lex = lexical(f)
    assert lex.shape == (3, LEX_DIM)
    assert np.allclose(np.linalg.norm(lex[:2], axis=1), 1.0) and not lex[2].any()
    assert (lex[0] == lex[1]).all()
    # the same text taken without its n-grams (as the router takes it) gives the same row
    bare = from_text("Balance the redox reaction", ngrams=False)
    assert not bare.hashed and (lexical([bare])[0] == lex[0]).all()


def test_a_word_level_gain_is_learned() -> None:
    """The strong side helps only when a ticket names one product code; the other codes
    have the same digits, which the tokenizer splits one by one, so the embedding (a mean
    of token vectors) cannot tell them apart: the lexical columns must find it."""
    rng = np.random.default_rng(5)

    def rows(n: int) -> tuple[list[str], np.ndarray]:
        texts, y = [], []
        for _ in range(n):
            hard = rng.random() < 0.4
            product = "4417" if hard else rng.choice(["4471", "7144", "1447"])
            filler = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 40))))
            texts.append(f"Support ticket about model {product}: {filler}")
            y.append(1.0 if hard and rng.random() < 0.5 else 0.0)
        return texts, np.array(y)

    e = StaticEmbedder.load()
    train, y = rows(400)
    test, yt = rows(400)
    ftr, fte = [from_text(t) for t in train], [from_text(t) for t in test]
    model = fit_pair(ftr, e.embed_many(train), y)
    learned = gain_apgr(scores_of(model, fte, e.embed_many(test)), yt)
    length = gain_apgr(np.array([len(t) for t in test], float), yt)
    assert learned > length + 0.15, (model.meta["chosen"], learned, length)


def test_noise_labels_keep_the_fallback() -> None:
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 80)))) for _ in range(60)]
    y = rng.choice([-1.0, 0.0, 1.0], size=60)
    e = StaticEmbedder.load()
    model = fit_pair([from_text(t) for t in texts], e.embed_many(texts), y)
    assert model.meta["chosen"] == "prior"
    # the fallback model ranks exactly like the newest turn's length
    s = scores_of(model, [from_text("x" * n) for n in (10, 100, 1000)], np.zeros((3, DIM)))
    assert s[0] < s[1] < s[2]


@pytest.mark.parametrize("rows", [1, 200])
def test_a_model_that_keeps_the_fallback_predicts_as_the_generic_router(rows: int) -> None:
    """Labels with no row where one side alone was right (both always right, here), or one
    row: the saved model must be the generic router, probabilities included, however
    alike the training prompts were (their spread of lengths is tiny here)."""
    texts = [f"question {i}" for i in range(rows)]
    model = fit_pair(
        [from_text(t) for t in texts], np.zeros((rows, DIM), np.float32), np.zeros(rows)
    )
    assert model.meta["chosen"] == "prior"
    again = PairModel.from_bytes(model.to_bytes())
    for n in (1, 10, 400, 5_000, 200_000):
        f = from_text("x" * n)
        want = fallback_probability(f)
        assert model.predict(f, np.zeros(DIM)) == pytest.approx(want, abs=1e-9)
        assert again.predict(f, np.zeros(DIM)) == pytest.approx(want, abs=1e-6)


def test_the_choosing_procedure_is_checked_on_rows_it_did_not_see() -> None:
    """Picking the best of thirty choices on the folds that score them flatters the winner:
    on pure noise, with no lead required, a learned choice always wins. Cross-validating the
    procedure itself (choose on four folds, score on the fifth) vetoes most of those."""
    e = StaticEmbedder.load()
    plain, nested = 0, 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 80)))) for _ in range(150)]
        y = rng.choice([-1.0, 0.0, 0.0, 1.0], size=150)
        f, emb = [from_text(t) for t in texts], e.embed_many(texts)
        plain += fit_pair(f, emb, y, margin=0.0, nested_se=None).meta["chosen"] != "prior"
        model = fit_pair(f, emb, y, margin=0.0, nested_se=0.0)
        nested += model.meta["chosen"] != "prior"
        assert "nested:" in model.meta["cv_excess_gain"]
    assert plain == 8 and nested <= 4, (plain, nested)


@pytest.mark.parametrize(
    ("weak", "strong", "label"),
    [(False, True, 1.0), (True, False, -1.0), (True, True, 0.0), (False, False, 0.0)],
)
def test_pair_label(weak: bool, strong: bool, label: float) -> None:
    assert pair_label(weak, strong) == label


# ---- online truth: quality kept and cost saved against always-strong -----------------


@pytest.mark.parametrize(
    ("settled", "labels", "kept", "saved", "share"),
    [
        # nothing labelled yet: no estimate
        ([(False, 10)], [], None, None, None),
        # 3 of 4 auto requests went cheap; 1 of 2 samples needed the strong answer;
        # replays cost 5x the cheap answers: always-strong = 40 + 3 x 10 x 5 = 190
        (
            [(True, 40), (False, 10), (False, 10), (False, 10)],
            [(True, 10, 50), (False, 10, 50)],
            1 - 0.75 * 0.5,
            1 - 70 / 190,
            0.25,
        ),
        # every sample fine, all cheap, replays 4x: quality kept, three quarters saved
        ([(False, 10), (False, 10)], [(False, 10, 40)], 1.0, 0.75, 0.0),
        # a sample whose cheap cost is unknown counts for quality, not for the price ratio
        ([(False, 10)], [(True, 0, 40)], 0.0, None, 0.0),
    ],
)
def test_online_truth_estimate(
    settled: list[tuple[bool, int]],
    labels: list[tuple[bool, int, int]],
    kept: float | None,
    saved: float | None,
    share: float | None,
) -> None:
    from policies.router.truth import Tally, estimate

    t = Tally()
    for strong, cost in settled:
        t.settled(strong, cost)
    for needed, cheap, strong_cost in labels:
        t.labelled_sample(needed, cheap, strong_cost)
    got = estimate(t)
    if kept is None:
        assert got is None
        return
    assert got is not None
    assert got.quality_kept == pytest.approx(kept) and got.strong_share == pytest.approx(share)
    assert got.cost_saved == (None if saved is None else pytest.approx(saved))


def test_every_shipped_topic_has_one_family() -> None:
    m = shipped_families()
    assert m.shape == (shipped_topics().shape[0], len(FAMILIES)) and (m.sum(axis=1) == 1).all()
    assert family_of("zeroeval/crux") == family_of("dcrouter/mbpp") == "code"
    assert family_of("zeroeval/math-l5") == family_of("math:Geometry") == "math"
    assert family_of("mmlu_pro:physics") == "science" and family_of("bbh:navigate") == "logic"


def _family_rows(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rows over the 7 MATH subjects and CRUX (topic one-hots as a classifier gives them);
    the strong side helps on the code rows, whatever the subject of the others."""
    rng = np.random.default_rng(seed)
    names = topic_names()
    math_topics = [i for i, t in enumerate(names) if t.startswith("math:")]
    crux = names.index("zeroeval/crux")
    texts, y = [], []
    topics = np.zeros((n, len(names)))
    for r in range(n):
        code = rng.random() < 0.3
        t = crux if code else int(rng.choice(math_topics))
        topics[r, t] = 1.0
        texts.append(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 60)))))
        y.append(1.0 if code and rng.random() < 0.5 else -1.0 if rng.random() < 0.05 else 0.0)
    return texts, np.array(y), topics


def test_a_family_prior_is_one_weight_for_all_the_topics_of_a_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Expressed in the model's topic columns (the saved file does not change): every MATH
    subject gets the math family's weight, and code rows rank above them."""
    monkeypatch.setattr(scorer, "USES", ("prior", "family"))
    e = StaticEmbedder.load()
    texts, y, topics = _family_rows(400, 0)
    feats = [from_text(t) for t in texts]
    model = fit_pair(
        feats, e.embed_many(texts), y, topic_rows=topics, alphas=(math.inf,), margin=-1e9
    )
    assert model.meta["chosen"] == "family"
    t = shipped_topics().shape[0]
    w = model.coef[2 : 2 + t]
    fam = shipped_families()
    for f in range(fam.shape[1]):
        members = w[fam[:, f] == 1]
        assert np.allclose(members, members[0])
    names = np.flatnonzero(fam[:, FAMILIES.index("code")])
    assert w[names].min() > w[fam[:, FAMILIES.index("math")] == 1].max()
    off = fit_pair(feats, e.embed_many(texts), y, topic_rows=topics, families=False)
    assert "family" not in off.meta["cv_excess_gain"]
