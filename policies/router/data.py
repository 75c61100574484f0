"""Training rows from the public outcome data (``shared/data/routing``) and from JSONL files.

Each row carries a soft difficulty target in [0, 1]: the share of evaluated models that got
an MMLU-Pro question wrong; the MATH level; GSM8K's reasoning-line count; BBH's
direct-answer and chain-of-thought failures. JSONL rows in the ``router eval`` format
(``{"id", "source", "prompt" | "messages" | "features", "correct": {...}}``) get the share
of listed models that were wrong; shadow-mode labels without prompt text carry the router's
feature vector instead (``features``).

Rows with per-model outcomes (MMLU-Pro's models, BBH's ``direct`` / ``cot`` answers, JSONL
``correct``) also support a *gain* target (``gain_targets``): the expected net gain of the
stronger option of a pair over the weaker one. Which option is stronger is decided by
accuracy on the rows given, so under cross-validation only training rows order the models.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.errors import json_type
from policies.features import DENSE_NAMES, HASH_DIM, Features


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    source: str
    group: str
    prompt: str
    target: float
    correct: dict[str, bool] = field(default_factory=dict)
    features: Features | None = None


class DataError(ValueError):
    """A bad input file; the message names the file and, where there is one, the line."""


# A JSON escape of a UTF-16 surrogate; only such escapes can put one in a decoded line.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(value: Any) -> Any:
    """``value`` with lone surrogates (``"\\ud800"`` escapes; a pair is one character
    already) replaced by U+FFFD, so that the text can be encoded later."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_no_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in value.items()}
    return value


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Each line of a UTF-8 (or gzipped UTF-8) file with its number, from 1; a byte order
    mark at the start is dropped. A file that cannot be read, or a line that is not UTF-8,
    raises ``DataError`` naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}:{n}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})"
                    ) from exc
    except (OSError, EOFError, zlib.error) as exc:  # EOFError, zlib.error: a broken .gz
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"cannot read {path}: {reason}") from exc


def _numbered(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON object on each non-blank line, with its line number; ``DataError`` for a
    line that is not JSON or not an object."""
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(value, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {json_type(value)}")
        if _SURROGATE_ESCAPE.search(line):
            value = _no_surrogates(value)
        yield n, value


def _read(path: Path) -> Iterator[dict[str, Any]]:
    for _, r in _numbered(path):
        yield r


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("{"):
        parsed = ast.literal_eval(value)
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _bool(v: Any) -> bool:
    return v is True or v == "True" or v == "true"


def mmlu_pro(path: Path) -> Iterator[Row]:
    for r in _read(path):
        correct = {k: _bool(v) for k, v in _mapping(r["correct"]).items() if v is not None}
        if not correct:
            continue
        options = r["options"] if isinstance(r["options"], list) else ast.literal_eval(r["options"])
        letters = "ABCDEFGHIJ"
        prompt = (
            r["question"] + "\n" + "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(options))
        )
        wrong = sum(not v for v in correct.values()) / len(correct)
        yield Row(r["id"], "mmlu_pro", str(r["category"]), prompt, wrong, correct)


def math_levels(path: Path) -> Iterator[Row]:
    for r in _read(path):
        yield Row(r["id"], "math", str(r["subject"]), r["problem"], (int(r["level"]) - 1) / 4)


def gsm8k(path: Path) -> Iterator[Row]:
    for r in _read(path):
        lines = int(r["n_solution_lines"])
        yield Row(r["id"], "gsm8k", "gsm8k", r["question"], min(max(lines - 1, 0), 8) / 8 * 0.6)


def bbh(path: Path) -> Iterator[Row]:
    for r in _read(path):
        direct, cot = _bool(r["correct_direct"]), _bool(r["correct_cot"])
        miss = 0.5 * (not direct) + 0.5 * (not cot)
        yield Row(r["id"], "bbh", str(r["task"]), r["input"], miss, {"direct": direct, "cot": cot})


def _share_wrong(correct: Mapping[str, bool]) -> float:
    return sum(not v for v in correct.values()) / len(correct)


def dcrouter(path: Path) -> Iterator[Row]:
    """DCRouter's task families, each its own source (``dcrouter/<task>``); multiple-choice
    stems get their options appended as a user would send them."""
    for r in _read(path):
        correct = {k: _bool(v) for k, v in _mapping(r["correct"]).items() if v is not None}
        if not correct:
            continue
        prompt = r["prompt"]
        choices = r.get("choices")
        if isinstance(choices, str) and choices.startswith("["):
            choices = ast.literal_eval(choices)
        if isinstance(choices, list) and choices:
            prompt += "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
        source = f"dcrouter/{r['source']}"
        yield Row(r["id"], source, source, prompt, _share_wrong(correct), correct)


def zeroeval(path: Path) -> Iterator[Row]:
    """ZeroEval MATH level 5 or CRUXEval-O: per-run outcomes of 43 / 51 model runs."""
    for r in _read(path):
        correct = {k: _bool(v) for k, v in _mapping(r["correct"]).items() if v is not None}
        if not correct:
            continue
        source = f"zeroeval/{r['source']}"
        yield Row(r["id"], source, source, r["prompt"], _share_wrong(correct), correct)


LOADERS = {
    "mmlu_pro_outcomes.jsonl.gz": mmlu_pro,
    "math_levels.jsonl.gz": math_levels,
    "gsm8k.jsonl.gz": gsm8k,
    "bbh_cot.jsonl.gz": bbh,
}
# Sources added for the generic prior and the floor (loaded by ``all_rows``); ``shared_rows``
# keeps the four above so that the linear model's training data is unchanged.
MORE_LOADERS = {
    "dcrouter_outcomes.jsonl.gz": dcrouter,
    "zeroeval_math_l5.jsonl.gz": zeroeval,
    "zeroeval_crux.jsonl.gz": zeroeval,
}


def shared_rows(directory: Path) -> list[Row]:
    rows: list[Row] = []
    for name, loader in LOADERS.items():
        path = directory / name
        if path.exists():
            rows.extend(loader(path))
    return rows


def all_rows(directory: Path) -> list[Row]:
    """Every public source with labels: the four of ``shared_rows`` plus DCRouter and ZeroEval."""
    rows = shared_rows(directory)
    for name, loader in MORE_LOADERS.items():
        path = directory / name
        if path.exists():
            rows.extend(loader(path))
    return rows


def prompt_of(r: dict[str, Any]) -> str:
    if isinstance(r.get("prompt"), str):
        return str(r["prompt"])
    messages = r.get("messages")
    if isinstance(messages, list):
        users = [
            m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"
        ]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise ValueError(f"row {r.get('id')!r} has neither 'prompt' nor user 'messages'")


def features_of(value: Any) -> Features:
    """A stored feature vector (``{"dense": [...], "hashed": [...], ...}``), checked."""
    if not isinstance(value, dict):
        raise ValueError("'features' must be an object with 'dense' and 'hashed'")
    dense, hashed = value.get("dense"), value.get("hashed")
    if not isinstance(dense, list) or len(dense) != len(DENSE_NAMES):
        raise ValueError(f"'features.dense' must list {len(DENSE_NAMES)} numbers")
    if not isinstance(hashed, list) or not all(
        isinstance(i, int) and 0 <= i < HASH_DIM for i in hashed
    ):
        raise ValueError(f"'features.hashed' must list slots in [0, {HASH_DIM})")
    return Features(
        tuple(float(x) for x in dense),
        tuple(sorted(set(hashed))),
        int(value.get("total_chars", 0)),
        int(value.get("last_user_chars", 0)),
    )


def _label(model: str, value: Any) -> bool:
    """An outcome in ``correct``: true/false, or 1/0 (also 1.0/0.0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"'correct' of {model!r} must be true/false or 1/0, got {json.dumps(value)}")


def _jsonl_row(r: dict[str, Any], default_source: str) -> Row:
    if "id" not in r:
        raise ValueError("row has no 'id'")
    if not isinstance(r["id"], str | int) or isinstance(r["id"], bool):
        raise ValueError(f"'id' must be a string or an integer, got {json.dumps(r['id'])}")
    raw = r.get("correct", {})
    if not isinstance(raw, dict):
        raise ValueError("'correct' must be an object mapping model names to true/false")
    correct = {str(k): _label(str(k), v) for k, v in raw.items()}
    wrong = sum(not v for v in correct.values()) / len(correct) if correct else 0.5
    if "prompt" in r and not isinstance(r["prompt"], str):
        raise ValueError(f"'prompt' must be a string, got {json_type(r['prompt'])}")
    has_text = isinstance(r.get("prompt"), str) or isinstance(r.get("messages"), list)
    features = None if has_text or "features" not in r else features_of(r["features"])
    return Row(
        str(r["id"]),
        str(r.get("source", default_source)),
        str(r.get("category", r.get("source", ""))),
        "" if features is not None else prompt_of(r),
        wrong,
        correct,
        features,
    )


def jsonl_rows(path: Path) -> list[Row]:
    """Rows of a ``router train --data`` / ``router eval`` file; ``DataError`` names the
    file and line of the first bad one."""
    rows = []
    for n, r in _numbered(path):
        try:
            rows.append(_jsonl_row(r, path.stem))
        except ValueError as exc:
            raise DataError(f"{path}:{n}: {exc}") from exc
    return rows


def unique_rows(rows: Sequence[Row]) -> tuple[list[Row], int]:
    """The rows with the first of each id kept, and how many later duplicates were dropped."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out, len(rows) - len(out)


# Gain target. A pair counts when its stronger option's accuracy exceeds the weaker one's by
# at least GAIN_MIN_GAP; a row's label is 0.5 + the mean over its labelled pairs of
# (strong right) - (weak right), clipped to [0, 1]: 0.5 = no gain, 1 = the strong option
# always fixes it. Rows without pairwise outcomes (MATH, GSM8K) are mapped from their
# difficulty d to 0.5 + PRIOR_GAIN * d. Both constants are fixed a priori, not tuned.
GAIN_MIN_GAP = 0.05
PRIOR_GAIN = 0.4


def accuracies(rows: Sequence[Row]) -> dict[str, float]:
    """Each option's share of right answers over the rows that label it."""
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    for r in rows:
        for m, ok in r.correct.items():
            seen[m] = seen.get(m, 0) + 1
            right[m] = right.get(m, 0) + int(ok)
    return {m: right[m] / seen[m] for m in seen}


def gain_pairs(acc: Mapping[str, float], min_gap: float = GAIN_MIN_GAP) -> list[tuple[str, str]]:
    """(weaker, stronger) pairs whose accuracies differ by at least ``min_gap``."""
    names = sorted(acc, key=lambda m: (acc[m], m))
    return [
        (w, s)
        for i, w in enumerate(names)
        for s in names[i + 1 :]
        if acc[s] - acc[w] >= min_gap - 1e-12
    ]


def gain_targets(rows: Sequence[Row], *, min_gap: float = GAIN_MIN_GAP) -> list[float]:
    """The gain label of every row; options are ordered per source, on these rows only."""
    out = [min(1.0, 0.5 + PRIOR_GAIN * r.target) for r in rows]
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.correct:
            by_source.setdefault(r.source, []).append(i)
    for idx in by_source.values():
        members = [rows[i] for i in idx]
        pairs = gain_pairs(accuracies(members), min_gap)
        if not pairs:
            continue
        names = sorted({m for p in pairs for m in p})
        col = {m: j for j, m in enumerate(names)}
        c = np.full((len(members), len(names)), np.nan)
        for k, r in enumerate(members):
            for m, ok in r.correct.items():
                if m in col:
                    c[k, col[m]] = float(ok)
        weak = np.array([col[w] for w, _ in pairs])
        strong = np.array([col[s] for _, s in pairs])
        diff = c[:, strong] - c[:, weak]
        labelled = ~np.isnan(diff)
        n = labelled.sum(axis=1)
        net = np.where(labelled, diff, 0.0).sum(axis=1) / np.maximum(n, 1)
        for k, i in enumerate(idx):
            if n[k]:
                out[i] = float(min(1.0, max(0.0, 0.5 + net[k])))
    return out
